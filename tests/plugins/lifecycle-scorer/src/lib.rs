//! Test plugin `lifecycle-scorer`: a third-party pack that owns the lifecycle and
//! whose score depends on what its own `on-event` did, so that any difference
//! between the live path, the dry-run and the rescore shows.
//!
//! - `on-event`: a customer silent for more than `lose_after_days` moves to `lost`
//!   and loses the `hot` tag; otherwise one with an order is `active`, else a
//!   `lead`; `hot_orders` orders or more add the `hot` tag.
//! - `score`: by stage (lead 5, active 10 + orders, lost 0) plus 3 for `hot`;
//!   the band is the stage. `segment`: `hot-active` for hot active customers.

use serde::Deserialize;
use stagecraft_plugin::*;

const DAY_MS: i64 = 86_400_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rules {
    lose_after_days: i64,
    hot_orders: u32,
}

impl Plugin for Rules {
    fn describe() -> Manifest {
        Manifest::new(
            "lifecycle-scorer",
            "1.0.0",
            "Test plugin: stage- and tag-dependent scores",
        )
        .scoring()
        .segmentation()
        .lifecycle()
        .reads(Reads {
            tags: true,
            ..Default::default()
        })
        .stage("lead", "Lead", None, 0)
        .stage("active", "Active", None, 1)
        .stage("lost", "Lost", None, 2)
        .segment("hot-active", "Hot and active")
        .reason("silent", "silent for {0} days", None)
        .reason("ordered", "{0} orders", None)
        .reason("contact", "in contact", None)
        .reason("stage", "stage points {0}", None)
        .reason("hot", "hot customer", None)
        .rules_schema(
            r#"{"type": "object", "additionalProperties": false,
                    "required": ["lose_after_days", "hot_orders"],
                    "properties": {"lose_after_days": {"type": "integer", "minimum": 1},
                                   "hot_orders": {"type": "integer", "minimum": 1}}}"#,
        )
        .default_rules(r#"{"lose_after_days": 30, "hot_orders": 3}"#)
    }

    fn configure(rules: &str) -> Result<Self, PluginError> {
        rules::parse(rules)
    }

    fn on_event(
        &self,
        ctx: &Context,
        c: &Customer,
        _e: &Event,
    ) -> Result<Vec<Action>, PluginError> {
        let m = &c.metrics;
        let silent_days = m.last_contact_at.map_or(0, |t| (ctx.now - t) / DAY_MS);
        let mut actions = Vec::new();
        if silent_days > self.lose_after_days {
            actions.push(Action::MoveToStage {
                stage: "lost".into(),
                reason: Reason::new("silent", 0.0).args([silent_days as f64]),
            });
            actions.push(Action::RemoveTag("hot".into()));
            return Ok(actions);
        }
        let (stage, reason) = if m.orders > 0 {
            (
                "active",
                Reason::new("ordered", 0.0).args([m.orders as f64]),
            )
        } else {
            ("lead", Reason::new("contact", 0.0))
        };
        actions.push(Action::MoveToStage {
            stage: stage.into(),
            reason,
        });
        if m.orders >= self.hot_orders {
            actions.push(Action::AddTag("hot".into()));
        }
        Ok(actions)
    }

    fn score(&self, _ctx: &Context, c: &Customer) -> Result<Score, PluginError> {
        let stage = c.stage.unwrap_or("lead");
        let points = match stage {
            "active" => 10.0 + c.metrics.orders as f64,
            "lost" => 0.0,
            _ => 5.0,
        };
        let mut s = Score::new(points)
            .band(stage.to_string())
            .reason(Reason::new("stage", points).args([points]));
        if c.tags.contains(&"hot") {
            s = Score::new(points + 3.0)
                .band(stage.to_string())
                .reason(Reason::new("stage", points).args([points]))
                .reason(Reason::new("hot", 3.0));
        }
        Ok(s)
    }

    fn segment(&self, _ctx: &Context, c: &Customer) -> Result<Vec<Membership>, PluginError> {
        Ok(if c.stage == Some("active") && c.tags.contains(&"hot") {
            vec![Membership::new("hot-active", Reason::new("hot", 0.0))]
        } else {
            vec![]
        })
    }
}

register_plugin!(Rules);
