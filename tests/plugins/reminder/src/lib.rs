//! Test plugin `reminder`, contract 0.2.0: what a gym's pack does in time.
//!
//! - a `visit` opens (or moves) the keyed follow-up `check-in`, due
//!   `check_in_days` after the visit, and asks to be woken `lapse_days` after it;
//! - an `order` closes `check-in` and cancels the wake;
//! - a `complaint` asks for the follow-up `check-in` twice and `sorry` once in
//!   one answer (the last word per key counts);
//! - an `assign` sets the field `owner` (the customer's owner) to its `agent`;
//! - when woken, it tags the customer `lapsed` and opens `win-back`.

use serde::Deserialize;
use stagecraft_plugin::*;

const DAY_MS: i64 = 86_400_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rules {
    check_in_days: i64,
    lapse_days: i64,
}

impl Plugin for Rules {
    fn describe() -> Manifest {
        Manifest::new("reminder", "1.0.0", "Test plugin: follow-ups and wakes")
            .scoring()
            .reads(Reads {
                tags: true,
                ..Default::default()
            })
            .reason("lapsed", "lapsed", None)
            .reason("fine", "fine", None)
            .default_rules(r#"{"check_in_days": 2, "lapse_days": 45}"#)
    }

    fn configure(rules: &str) -> Result<Self, PluginError> {
        rules::parse(rules)
    }

    fn score(&self, _ctx: &Context, c: &Customer) -> Result<Score, PluginError> {
        Ok(if c.tags.contains(&"lapsed") {
            Score::new(0.0)
                .band("lapsed")
                .reason(Reason::new("lapsed", 0.0))
        } else {
            Score::new(1.0)
                .band("fine")
                .reason(Reason::new("fine", 1.0))
        })
    }

    fn on_event(
        &self,
        ctx: &Context,
        _c: &Customer,
        e: &Event,
    ) -> Result<Vec<Action>, PluginError> {
        Ok(match e.kind {
            "visit" => vec![
                Action::RemoveTag("lapsed".into()),
                Action::FollowUp {
                    key: "check-in".into(),
                    due: ctx.now + self.check_in_days * DAY_MS,
                    note: format!("check in after the visit of day {}", ctx.now / DAY_MS),
                },
                Action::WakeAt(Some(ctx.now + self.lapse_days * DAY_MS)),
            ],
            "assign" => match e.fields.get("agent").and_then(|v| v.as_text()) {
                Some(agent) => vec![Action::SetField {
                    key: "owner".into(),
                    value: FieldValue::Text(agent.to_string()),
                }],
                None => vec![],
            },
            "order" => vec![
                Action::CloseFollowUp("check-in".into()),
                Action::WakeAt(None),
            ],
            "complaint" => vec![
                Action::FollowUp {
                    key: "check-in".into(),
                    due: ctx.now + DAY_MS,
                    note: "first".into(),
                },
                Action::FollowUp {
                    key: "sorry".into(),
                    due: ctx.now,
                    note: "apologise".into(),
                },
                Action::FollowUp {
                    key: "check-in".into(),
                    due: ctx.now + 2 * DAY_MS,
                    note: "second".into(),
                },
            ],
            _ => vec![],
        })
    }

    fn on_wake(&self, ctx: &Context, _c: &Customer) -> Result<Vec<Action>, PluginError> {
        Ok(vec![
            Action::AddTag("lapsed".into()),
            Action::FollowUp {
                key: "win-back".into(),
                due: ctx.now,
                note: "lapsed: offer a free class".into(),
            },
        ])
    }
}

register_plugin!(Rules);
