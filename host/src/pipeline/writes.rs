//! What the plugins' outputs change on a customer ([`effects`]), and those
//! changes queued as the writes of one batch.

use super::*;

/// What the plugins' outputs for one customer change, in the order they apply
/// (see [`effects`]): what a live event, a rescore and a dry-run all derive from
/// [`evaluate`]'s outputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Effects {
    /// Each move of the lifecycle owner that changes the stage, in order.
    pub(crate) stage_moves: Vec<StageMove>,
    /// Net: tags the customer gains and loses.
    pub(crate) tags_added: Vec<String>,
    pub(crate) tags_removed: Vec<String>,
    /// Every field set, in order (a later value of a key wins).
    pub(crate) fields_set: Vec<FieldEntry>,
    pub(crate) follow_ups: Vec<FollowUpScheduled>,
    pub(crate) follow_ups_closed: Vec<FollowUpClosed>,
    /// At most one per plugin: its last request.
    pub(crate) wakes: Vec<WakeSet>,
    pub(crate) scores: Vec<StoredScore>,
    /// (plugin, its segments with reasons).
    pub(crate) segments: Vec<(String, Vec<(String, RenderedReason)>)>,
}

/// The effects of the plugins' outputs on a customer stored as `before`.
pub(crate) fn effects(before: &CustomerRecord, outputs: &[PluginOutput], now: i64) -> Effects {
    let mut fx = Effects::default();
    let mut stage = before.stage.clone();
    let mut tags = before.tags.clone();
    for o in outputs {
        for a in &o.actions {
            match a {
                Action::MoveToStage { stage: to, reason } if o.owns_lifecycle => {
                    if stage.as_deref() == Some(to.as_str()) {
                        continue;
                    }
                    fx.stage_moves.push(StageMove {
                        from: stage.clone(),
                        to: to.clone(),
                        reason: reason.clone(),
                        reason_text: render(&o.pack, reason).text,
                        plugin: o.name.clone(),
                        plugin_version: o.version.clone(),
                    });
                    stage = Some(to.clone());
                }
                Action::MoveToStage { .. } => {}
                Action::AddTag(t) => {
                    if !tags.contains(t) {
                        tags.push(t.clone());
                        if !fx.tags_removed.contains(t) {
                            fx.tags_added.push(t.clone());
                        }
                        fx.tags_removed.retain(|x| x != t);
                    }
                }
                Action::RemoveTag(t) => {
                    if tags.contains(t) {
                        tags.retain(|x| x != t);
                        if !fx.tags_added.contains(t) {
                            fx.tags_removed.push(t.clone());
                        }
                        fx.tags_added.retain(|x| x != t);
                    }
                }
                Action::SetField { key, value } => fx.fields_set.push(FieldEntry {
                    key: key.clone(),
                    value: value.clone(),
                    sensitive: false,
                }),
                Action::ScheduleFollowUp { due_in_hours, note } => {
                    fx.follow_ups.push(FollowUpScheduled {
                        due_at: now + *due_in_hours as i64 * 3_600_000,
                        note: note.clone(),
                        plugin: o.name.clone(),
                        key: None,
                    })
                }
                Action::FollowUp { key, due, note } => {
                    // A later proposal with the same key in one answer wins.
                    fx.follow_ups
                        .retain(|f| !(f.plugin == o.name && f.key.as_deref() == Some(key)));
                    fx.follow_ups_closed
                        .retain(|c| !(c.plugin == o.name && c.key == *key));
                    fx.follow_ups.push(FollowUpScheduled {
                        due_at: *due,
                        note: note.clone(),
                        plugin: o.name.clone(),
                        key: Some(key.clone()),
                    })
                }
                Action::CloseFollowUp { key } => {
                    fx.follow_ups
                        .retain(|f| !(f.plugin == o.name && f.key.as_deref() == Some(key)));
                    fx.follow_ups_closed.push(FollowUpClosed {
                        plugin: o.name.clone(),
                        key: key.clone(),
                    })
                }
                Action::WakeAt { at } => {
                    fx.wakes.retain(|w| w.plugin != o.name);
                    fx.wakes.push(WakeSet {
                        plugin: o.name.clone(),
                        due_at: *at,
                    })
                }
            }
        }
        if let Some(s) = &o.score {
            fx.scores.push(s.clone());
        }
        if let Some(segments) = &o.segments {
            fx.segments.push((o.name.clone(), segments.clone()));
        }
    }
    fx
}

/// Queues everything one event's plugins caused, and the event, in `writes`, and
/// says what it caused. What a write would tell (was a tag there?) is known from
/// the reads.
pub(super) fn queue_writes(
    writes: &mut store::Batch,
    job: &EventJob,
    inputs: Inputs,
    outputs: Vec<PluginOutput>,
    failures: Vec<FailureReport>,
) -> EventOutcome {
    let EventJob {
        tenant,
        customer_id,
        event,
        idempotency_key,
        now,
        ..
    } = job;
    let (tenant, customer_id, now) = (tenant.as_str(), customer_id.as_str(), *now);
    let Inputs {
        customer: before,
        stored_metrics,
        scores_before,
        segments_before,
        ..
    } = inputs;
    let mut outcome = EventOutcome {
        event_id: event.id.clone(),
        customer_id: customer_id.to_string(),
        failures,
        ..Default::default()
    };
    let ev_id = Some(event.id.as_str());
    store::queue_metrics(writes, tenant, customer_id, &stored_metrics, now);
    let mut fx = effects(&before, &outputs, now);
    queue_effects(
        writes,
        tenant,
        customer_id,
        &mut fx,
        ev_id,
        now,
        &mut outcome,
    );
    let scores: Vec<(String, StoredScore)> = fx
        .scores
        .into_iter()
        .map(|s| (customer_id.to_string(), s))
        .collect();
    let segment_sets: Vec<store::SegmentSet> = fx
        .segments
        .into_iter()
        .map(|(plugin, segments)| store::SegmentSet {
            customer: customer_id.to_string(),
            plugin,
            segments,
        })
        .collect();
    // Every plugin's scores and segments in a few statements of the batch, over
    // what was read before the plugins ran.
    let previous = store::queue_scores_over(writes, tenant, scores_before, &scores, ev_id);
    changes::queue_band_changes(writes, tenant, &scores, &previous, ev_id, now);
    for ((_, s), prev) in scores.iter().zip(previous) {
        outcome.scores.insert(
            s.plugin.clone(),
            ScoreChange {
                version: s.plugin_version.clone(),
                value: s.value,
                band: s.band.clone(),
                previous_value: prev.as_ref().map(|p| p.0),
                previous_band: prev.and_then(|p| p.1),
                reasons: s.reasons.clone(),
            },
        );
    }
    let memberships =
        store::queue_memberships_over(writes, tenant, segments_before, &segment_sets, now);
    changes::queue_segment_changes(writes, tenant, &segment_sets, &memberships, ev_id, now);
    for (joined, left) in memberships {
        outcome.segments_joined.extend(joined);
        outcome.segments_left.extend(left);
    }
    queue_failures(writes, tenant, customer_id, &outcome.failures, ev_id, now);
    let body = json!(outcome);
    store::queue_event(
        writes,
        tenant,
        customer_id,
        event,
        idempotency_key.as_deref(),
        &body,
        now,
    );
    outcome
}

/// Queues what `fx` changes on a customer but its scores and segments (which
/// the caller writes over what it read): stage moves, tags, fields, follow-ups
/// opened, updated and closed, wakes; and says so in `outcome`, taking those
/// parts out of `fx`. `event_id` names the event that caused them, if one did.
pub(crate) fn queue_effects(
    writes: &mut store::Batch,
    tenant: &str,
    customer_id: &str,
    fx: &mut Effects,
    ev_id: Option<&str>,
    now: i64,
    outcome: &mut EventOutcome,
) {
    let mut changes = Vec::new();
    for mv in &fx.stage_moves {
        store::queue_stage_moves(writes, tenant, &[(customer_id, mv)], ev_id, now);
        changes.push(changes::stage_changed(customer_id, mv, ev_id));
        outcome.stage = Some(StageChange {
            from: mv.from.clone(),
            to: mv.to.clone(),
            reason: mv.reason_text.clone(),
            plugin: mv.plugin.clone(),
        });
    }
    for t in &fx.tags_added {
        store::queue_add_tag(writes, tenant, customer_id, t);
    }
    for t in &fx.tags_removed {
        store::queue_remove_tag(writes, tenant, customer_id, t);
    }
    changes.extend(changes::tags_changed(
        customer_id,
        &fx.tags_added,
        &fx.tags_removed,
        ev_id,
    ));
    outcome.tags_added = std::mem::take(&mut fx.tags_added);
    outcome.tags_removed = std::mem::take(&mut fx.tags_removed);
    for f in &fx.fields_set {
        store::queue_field(writes, tenant, customer_id, f);
        outcome
            .fields_set
            .insert(f.key.clone(), domain::field_value_to_json(&f.value));
    }
    // Per plugin and key an answer either closes or opens (updates): `effects`
    // keeps its last word, so the order of these writes does not matter.
    for c in &fx.follow_ups_closed {
        let done = changes::follow_up_closed(customer_id, c, ev_id);
        store::queue_change_if_open_follow_up(writes, tenant, &done, &c.plugin, &c.key, now);
        store::queue_close_follow_up(writes, tenant, customer_id, &c.plugin, &c.key, now);
    }
    outcome.follow_ups_closed = std::mem::take(&mut fx.follow_ups_closed);
    for f in std::mem::take(&mut fx.follow_ups) {
        store::queue_follow_up(
            writes,
            tenant,
            customer_id,
            f.due_at,
            &f.note,
            Some(&f.plugin),
            f.key.as_deref(),
            ev_id,
            now,
        );
        changes.push(changes::follow_up_created(customer_id, &f, ev_id));
        outcome.follow_ups.push(f);
    }
    store::queue_changes(writes, tenant, &changes, now);
    for w in &fx.wakes {
        store::queue_wake(writes, tenant, customer_id, &w.plugin, w.due_at, ev_id, now);
    }
    outcome.wakes = std::mem::take(&mut fx.wakes);
}

/// Queues the records of plugins' failures on a customer's timeline.
pub(crate) fn queue_failures(
    writes: &mut store::Batch,
    tenant: &str,
    customer_id: &str,
    failures: &[FailureReport],
    ev_id: Option<&str>,
    now: i64,
) {
    for f in failures {
        let pf = PluginFailure {
            plugin: f.plugin.clone(),
            plugin_version: f.version.clone(),
            kind: f.kind.clone(),
            message: f.message.clone(),
        };
        store::queue_failure(writes, tenant, customer_id, &pf, ev_id, now);
    }
}
