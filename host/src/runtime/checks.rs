//! What a plugin returns is a proposal: reasons, scores, memberships and
//! actions checked against its manifest and the budgets before anyone sees them.

use super::*;

pub(super) fn check_reason(m: &Manifest, r: &Reason) -> Result<(), PluginError> {
    if !m.has_reason(&r.code) {
        return Err(PluginError::Failed(format!(
            "reason code {:?} is not declared in the manifest",
            r.code
        )));
    }
    if !r.points.is_finite() || r.args.len() > 16 || r.args.iter().any(|a| !a.is_finite()) {
        return Err(PluginError::Failed(format!(
            "reason {:?} has non-finite numbers or too many args",
            r.code
        )));
    }
    Ok(())
}

pub(super) fn check_score(m: &Manifest, s: Score) -> Result<Score, PluginError> {
    if !s.value.is_finite() {
        return Err(PluginError::Failed("score is not a finite number".into()));
    }
    if s.reasons.len() > MAX_REASONS {
        return Err(PluginError::Failed(format!(
            "{} reasons, at most {MAX_REASONS} allowed",
            s.reasons.len()
        )));
    }
    if let Some(b) = &s.band {
        if let Some(p) = crate::domain::text::label_problem(b, MAX_TAG) {
            return Err(PluginError::Failed(format!(
                "band {:?} {p}",
                truncate_for_message(b)
            )));
        }
    }
    for r in &s.reasons {
        check_reason(m, r)?;
    }
    Ok(s)
}

pub(super) fn check_memberships(
    m: &Manifest,
    ms: Vec<Membership>,
) -> Result<Vec<Membership>, PluginError> {
    if ms.len() > MAX_MEMBERSHIPS {
        return Err(PluginError::Failed(format!(
            "{} segments, at most {MAX_MEMBERSHIPS} allowed",
            ms.len()
        )));
    }
    for x in &ms {
        if !m.has_segment(&x.segment) {
            return Err(PluginError::Failed(format!(
                "segment {:?} is not declared in the manifest",
                x.segment
            )));
        }
        check_reason(m, &x.reason)?;
    }
    Ok(ms)
}

pub(super) fn check_actions(m: &Manifest, now: i64, actions: &[Action]) -> Result<(), String> {
    let horizon = now.saturating_add(crate::domain::HORIZON_MS);
    let check_key = |key: &str| {
        if is_reason_code(key) {
            Ok(())
        } else {
            Err(format!(
                "follow-up key {:?} is not 1-64 characters of [a-z0-9_.:-]",
                truncate_for_message(key)
            ))
        }
    };
    if actions.len() > MAX_ACTIONS {
        return Err(format!(
            "{} actions, at most {MAX_ACTIONS} allowed",
            actions.len()
        ));
    }
    for a in actions {
        match a {
            Action::MoveToStage { stage, reason } => {
                if !m.lifecycle {
                    return Err(
                        "moves a stage but does not declare the lifecycle capability".into(),
                    );
                }
                if !m.has_stage(stage) {
                    return Err(format!(
                        "stage {stage:?} is not in the plugin's stage graph"
                    ));
                }
                check_reason(m, reason).map_err(|e| e.to_string())?;
            }
            Action::AddTag(t) | Action::RemoveTag(t) => {
                if !is_valid_tag(t) {
                    return Err(format!(
                        "tag {:?} is not 1-64 characters of [a-z0-9:_-]",
                        truncate_for_message(t)
                    ));
                }
            }
            Action::SetField { key, value } => {
                if !is_slug(key, 64) {
                    return Err(format!(
                        "field key {:?} is not 1-64 characters of [a-z0-9_-]",
                        truncate_for_message(key)
                    ));
                }
                if let FieldValue::Text(t) = value {
                    if let Some(p) = crate::domain::text::text_problem(t, MAX_TEXT) {
                        return Err(format!("field {key} {p}"));
                    }
                }
                if let FieldValue::Number(n) = value {
                    if !n.is_finite() {
                        return Err(format!("field {key} is not a finite number"));
                    }
                }
            }
            Action::ScheduleFollowUp { due_in_hours, note } => {
                if note.len() > MAX_TEXT || *due_in_hours > 24 * 366 * 2 {
                    return Err(
                        "follow-up note over 1024 bytes or due more than two years ahead".into(),
                    );
                }
                if let Some(p) = crate::domain::text::text_problem(note, MAX_TEXT) {
                    return Err(format!("the follow-up note {p}"));
                }
            }
            Action::FollowUp { key, due, note } => {
                check_key(key)?;
                if *due > horizon {
                    return Err(format!(
                        "follow-up {key} is due more than two years after now"
                    ));
                }
                if let Some(p) = crate::domain::text::text_problem(note, MAX_TEXT) {
                    return Err(format!("the note of follow-up {key} {p}"));
                }
            }
            Action::CloseFollowUp { key } => check_key(key)?,
            Action::WakeAt { at: Some(at) } if *at > horizon => {
                return Err("asks to be woken more than two years after now".into());
            }
            Action::WakeAt { .. } => {}
        }
    }
    Ok(())
}

pub(super) fn truncate_for_message(s: &str) -> String {
    s.chars().take(40).collect()
}
