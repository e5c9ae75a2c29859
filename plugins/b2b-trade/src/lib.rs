//! B2B trade: the eight-stage customer formation.
//!
//! persona (猜想客户) → prospect (预期客户) → first purchase (首次成交客户) →
//! repeat purchase (重复购买客户) → long-term (长期客户) → advocate (拥护者客户) →
//! strategic partner (战略合作客户) → partner (合伙人: agent, distributor or shareholder).
//!
//! Stages move forward on evidence in the events: a qualifying inquiry, the first
//! order, a second purchase day, sustained buying over months (never "long-term"
//! on one purchase), a loyalty signal, referrals, a partner contract. A customer
//! who stops ordering steps back one stage, with the reason said. Every stage
//! change schedules a follow-up on the stage's cadence; an inquiry schedules one
//! that names the question to answer. Segments are the four management
//! dimensions: select, acquire, retain, expand.
//!
//! In time (contract 0.2.0): a buyer is woken when their reorder is due on the
//! stage's cadence (a keyed `reorder` follow-up asks staff to reach out, closed
//! by the next order) and when they would lapse (the step back happens then,
//! not at their next event). The stage's follow-up has the key `stage`, so a
//! stage left behind leaves no follow-up; an inquiry's has the key `inquiry`.

use serde::Deserialize;
use stagecraft_plugin::*;
use std::collections::BTreeMap;

/// Stage ids in order of rank.
pub const STAGES: [&str; 8] = [
    "persona",
    "prospect",
    "first-purchase",
    "repeat",
    "long-term",
    "advocate",
    "strategic",
    "partner",
];

pub const DEFAULT_RULES: &str = r#"{
  "inquiry_kinds": ["inquiry", "quote-request", "sample-request"],
  "long_term_min_purchase_days": 4,
  "long_term_min_months": 6,
  "loyalty_kinds": ["exclusive-agreement", "testimonial"],
  "strategic_min_referrals": 1,
  "partner_roles": ["agent", "distributor", "shareholder"],
  "lapse_days": 180,
  "cadence_days": {"persona": 30, "prospect": 3, "first-purchase": 7, "repeat": 14,
                   "long-term": 30, "advocate": 30, "strategic": 14, "partner": 7}
}"#;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct B2bTrade {
    /// Event kinds that count as a qualifying inquiry.
    inquiry_kinds: Vec<String>,
    #[schemars(range(min = 2))]
    long_term_min_purchase_days: u32,
    #[schemars(range(min = 1))]
    long_term_min_months: u32,
    /// Event kinds that signal a customer buys only this brand.
    loyalty_kinds: Vec<String>,
    #[schemars(range(min = 1))]
    strategic_min_referrals: u32,
    partner_roles: Vec<String>,
    /// No order for this long steps a customer back; null: never.
    #[schemars(range(min = 1))]
    lapse_days: Option<u32>,
    #[schemars(extend("additionalProperties" = {"type": "integer", "minimum": 1}))]
    cadence_days: BTreeMap<String, u32>,
}

fn rank(stage: Option<&str>) -> Option<usize> {
    stage.and_then(|s| STAGES.iter().position(|x| *x == s))
}

impl B2bTrade {
    /// The furthest stage the evidence supports, with its reason.
    fn earned(&self, c: &Customer, e: &Event) -> (usize, Reason) {
        let m = &c.metrics;
        if e.kind == "contract" {
            if let Some(role) = e.fields.get("role").and_then(|v| v.as_text()) {
                if self.partner_roles.iter().any(|r| r == role) {
                    return (7, Reason::new("contract", 0.0));
                }
            }
        }
        if m.referrals >= self.strategic_min_referrals && m.orders > 0 {
            return (6, Reason::new("referrals", 0.0).args([m.referrals as f64]));
        }
        if self.loyalty_kinds.iter().any(|k| k == e.kind) && m.purchase_days >= 2 {
            return (5, Reason::new("loyalty", 0.0));
        }
        let span_days = match (m.first_order_at, m.last_order_at) {
            (Some(f), Some(l)) => (l - f) / DAY_MS,
            _ => 0,
        };
        if m.purchase_days >= self.long_term_min_purchase_days
            && span_days >= self.long_term_min_months as i64 * 30
        {
            let months = (span_days / 30) as f64;
            return (
                4,
                Reason::new("long-term", 0.0).args([m.purchase_days as f64, months]),
            );
        }
        if m.purchase_days >= 2 {
            return (
                3,
                Reason::new("repeat-order", 0.0).args([m.purchase_days as f64]),
            );
        }
        if m.orders >= 1 {
            return (2, Reason::new("first-order", 0.0));
        }
        if self.inquiry_kinds.iter().any(|k| k == e.kind) {
            return (1, Reason::new("inquiry", 0.0));
        }
        (0, Reason::new("first-contact", 0.0))
    }

    fn cadence_hours(&self, stage: &str) -> u32 {
        self.cadence_days.get(stage).copied().unwrap_or(30) * 24
    }

    fn follow_up(&self, key: &'static str, now: Timestamp, stage: &str, note: String) -> Action {
        Action::FollowUp {
            key: key.into(),
            due: now + self.cadence_hours(stage) as i64 * 3_600_000,
            note,
        }
    }

    /// The next time after `now` at which the buyer is due a reorder on the
    /// cadence of `stage`, or would lapse.
    fn next_change(&self, now: Timestamp, stage: Option<usize>, c: &Customer) -> Option<Timestamp> {
        let last = c.metrics.last_order_at?;
        let stage = stage?;
        let mut at = vec![last + self.cadence_hours(STAGES[stage]) as i64 * 3_600_000];
        if let Some(days) = self.lapse_days {
            if (3..=5).contains(&stage) {
                at.push(last + days as i64 * DAY_MS);
            }
        }
        at.into_iter().filter(|&t| t > now).min()
    }

    /// The step back of a buyer who stopped ordering, if due at `now`.
    fn lapse(&self, now: Timestamp, current: usize, c: &Customer) -> Option<(usize, Reason)> {
        let (days, last) = (self.lapse_days?, c.metrics.last_order_at?);
        let idle = (now - last) / DAY_MS;
        (idle >= days as i64 && (3..=5).contains(&current))
            .then(|| (current - 1, Reason::new("lapsed", 0.0).args([idle as f64])))
    }
}

impl Plugin for B2bTrade {
    fn describe() -> Manifest {
        Manifest::new(
            "b2b-trade",
            "1.0.0",
            "B2B trade: the eight-stage customer formation with follow-up cadence and the four management dimensions",
        )
        .lifecycle()
        .segmentation()
        // Tags: to clear `lapsed` when the customer orders again.
        .reads(Reads { tags: true, ..Default::default() })
        .stage("persona", "Persona", Some("猜想客户"), 0)
        .stage("prospect", "Prospect", Some("预期客户"), 1)
        .stage("first-purchase", "First purchase", Some("首次成交客户"), 2)
        .stage("repeat", "Repeat purchase", Some("重复购买客户"), 3)
        .stage("long-term", "Long-term customer", Some("长期客户"), 4)
        .stage("advocate", "Advocate", Some("拥护者客户"), 5)
        .stage("strategic", "Strategic partner", Some("战略合作客户"), 6)
        .stage("partner", "Partner", Some("合伙人"), 7)
        .segment("select", "Select: personas worth pursuing")
        .segment("acquire", "Acquire: prospects to win")
        .segment("retain", "Retain: buying customers to keep")
        .segment("expand", "Expand: advocates and partners to grow with")
        .reason("first-contact", "first recorded contact", Some("首次接触"))
        .reason("inquiry", "a qualifying inquiry", Some("有效询盘"))
        .reason("first-order", "placed a first order", Some("首次下单"))
        .reason("repeat-order", "bought on {0} different days", Some("在 {0} 个不同日期购买"))
        .reason("long-term", "bought on {0} days over {1} months", Some("{1} 个月内在 {0} 个日期购买"))
        .reason("loyalty", "loyalty signal: buys only this brand", Some("忠诚信号：只购买本品牌"))
        .reason("referrals", "referred {0} new customers", Some("推荐了 {0} 位新客户"))
        .reason("contract", "signed a partner contract", Some("签订合伙协议"))
        .reason("lapsed", "no order for {0} days", Some("{0} 天未下单"))
        .reason("dimension", "stage rank {0}", Some("阶段等级 {0}"))
        .rules_schema_of::<B2bTrade>()
        .default_rules(DEFAULT_RULES)
    }

    fn configure(json: &str) -> Result<Self, PluginError> {
        let r: B2bTrade = rules::parse(json)?;
        rules::ensure(
            r.long_term_min_purchase_days >= 2,
            "long_term_min_purchase_days must be at least 2: long-term is never one purchase",
        )?;
        rules::ensure(
            r.long_term_min_months >= 1,
            "long_term_min_months must be at least 1",
        )?;
        rules::ensure(
            r.strategic_min_referrals >= 1,
            "strategic_min_referrals must be at least 1",
        )?;
        rules::ensure(
            r.lapse_days != Some(0),
            "lapse_days must be at least 1 (or null)",
        )?;
        if let Some(k) = r
            .cadence_days
            .keys()
            .find(|k| !STAGES.contains(&k.as_str()))
        {
            return Err(PluginError::BadRules(format!(
                "cadence_days names an unknown stage {k:?}"
            )));
        }
        rules::ensure(
            r.cadence_days.values().all(|d| (1..=365).contains(d)),
            "cadence_days must be 1-365",
        )?;
        Ok(r)
    }

    fn on_event(&self, ctx: &Context, c: &Customer, e: &Event) -> Result<Vec<Action>, PluginError> {
        let mut actions = Vec::new();
        let current = rank(c.stage);
        let (earned, reason) = self.earned(c, e);
        let mut target = current.map_or(earned, |r| r.max(earned));
        let mut why = reason;
        // A lapse steps back one stage; contracts and referrals do not lapse.
        if e.kind != "order" && !c.tags.contains(&"lapsed") {
            if let Some((back, reason)) = self.lapse(ctx.now, target, c) {
                target = back;
                why = reason;
                actions.push(Action::AddTag("lapsed".into()));
            }
        }
        if e.kind == "order" {
            if c.tags.contains(&"lapsed") {
                actions.push(Action::RemoveTag("lapsed".into()));
            }
            actions.push(Action::CloseFollowUp("reorder".into()));
        }
        if Some(target) != current {
            let stage = STAGES[target];
            actions.push(Action::MoveToStage {
                stage: stage.into(),
                reason: why,
            });
            actions.push(self.follow_up(
                "stage",
                ctx.now,
                stage,
                format!("Follow up with a {stage} customer"),
            ));
            if target == 7 {
                if let Some(role) = e.fields.get("role").and_then(|v| v.as_text()) {
                    actions.push(Action::AddTag(format!("partner:{role}").into()));
                }
            }
        }
        if self.inquiry_kinds.iter().any(|k| k == e.kind) {
            let note = match e.fields.get("question").and_then(|v| v.as_text()) {
                Some(q) => format!(
                    "Answer their question: {}",
                    q.chars().take(200).collect::<String>()
                ),
                None => "Answer their inquiry".to_string(),
            };
            actions.push(self.follow_up("inquiry", ctx.now, "prospect", note));
        }
        actions.push(Action::WakeAt(self.next_change(ctx.now, Some(target), c)));
        Ok(actions)
    }

    fn on_wake(&self, ctx: &Context, c: &Customer) -> Result<Vec<Action>, PluginError> {
        let mut actions = Vec::new();
        let Some(mut stage) = rank(c.stage) else {
            return Ok(actions);
        };
        let last = c.metrics.last_order_at;
        if !c.tags.contains(&"lapsed") {
            if let Some((back, reason)) = self.lapse(ctx.now, stage, c) {
                stage = back;
                actions.push(Action::MoveToStage {
                    stage: STAGES[back].into(),
                    reason,
                });
                actions.push(Action::AddTag("lapsed".into()));
                actions.push(self.follow_up(
                    "stage",
                    ctx.now,
                    STAGES[back],
                    format!("Follow up with a {} customer", STAGES[back]),
                ));
            } else if let Some(last) = last {
                let cadence = self.cadence_hours(STAGES[stage]) as i64 * 3_600_000;
                if ctx.now - last >= cadence {
                    actions.push(Action::FollowUp {
                        key: "reorder".into(),
                        due: ctx.now,
                        note: format!(
                            "No reorder for {} days (their cadence: {} days): reach out",
                            (ctx.now - last) / DAY_MS,
                            cadence / DAY_MS
                        ),
                    });
                }
            }
        }
        actions.push(Action::WakeAt(self.next_change(ctx.now, Some(stage), c)));
        Ok(actions)
    }

    fn segment(&self, _ctx: &Context, c: &Customer) -> Result<Vec<Membership>, PluginError> {
        let r = rank(c.stage).unwrap_or(0);
        let dimension = match r {
            0 => "select",
            1 => "acquire",
            2..=4 => "retain",
            _ => "expand",
        };
        Ok(vec![Membership::new(
            dimension,
            Reason::new("dimension", 0.0).args([r as f64]),
        )])
    }
}

register_plugin!(B2bTrade);

#[cfg(test)]
mod tests {
    use super::*;
    use stagecraft_plugin::testing::{assert_reasons_declared, context, render};

    const NOW: i64 = 1_732_406_400_000;

    fn plugin() -> B2bTrade {
        B2bTrade::with_default_rules().unwrap()
    }

    fn ev(kind: &str) -> Event<'_> {
        Event {
            kind,
            at: NOW,
            ..Default::default()
        }
    }

    fn customer(stage: Option<&'static str>, m: Metrics) -> Customer<'static> {
        Customer {
            id: "c",
            stage,
            metrics: m,
            ..Default::default()
        }
    }

    fn moves(actions: &[Action]) -> Vec<(String, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::MoveToStage { stage, reason } => {
                    Some((stage.to_string(), render(&B2bTrade::describe(), reason)))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_first_contact_makes_a_persona_and_an_inquiry_a_prospect() {
        let p = plugin();
        let a = p
            .on_event(
                &context(NOW),
                &customer(None, Metrics::default()),
                &ev("visit"),
            )
            .unwrap();
        assert_eq!(
            moves(&a),
            [("persona".into(), "first recorded contact".into())]
        );
        let a = p
            .on_event(
                &context(NOW),
                &customer(Some("persona"), Metrics::default()),
                &ev("inquiry"),
            )
            .unwrap();
        assert_eq!(
            moves(&a),
            [("prospect".into(), "a qualifying inquiry".into())]
        );
    }

    #[test]
    fn an_inquiry_schedules_a_follow_up_naming_the_question() {
        let e = Event {
            kind: "inquiry",
            at: NOW,
            fields: Fields(vec![("question", Value::Text("MOQ for 40ft container?"))]),
            ..Default::default()
        };
        let a = plugin()
            .on_event(
                &context(NOW),
                &customer(Some("prospect"), Metrics::default()),
                &e,
            )
            .unwrap();
        assert!(a.contains(&Action::FollowUp {
            key: "inquiry".into(),
            due: NOW + 72 * 3_600_000,
            note: "Answer their question: MOQ for 40ft container?".into()
        }));
    }

    #[test]
    fn a_buyer_is_woken_for_the_reorder_then_steps_back_when_they_lapse() {
        let m = Metrics {
            orders: 3,
            purchase_days: 3,
            last_order_at: Some(NOW),
            first_order_at: Some(NOW - 60 * DAY_MS),
            ..Default::default()
        };
        let c = customer(Some("repeat"), m);
        let a = plugin().on_event(&context(NOW), &c, &ev("order")).unwrap();
        assert!(a.contains(&Action::CloseFollowUp("reorder".into())));
        // Repeat buyers' cadence: 14 days.
        assert_eq!(a.last(), Some(&Action::WakeAt(Some(NOW + 14 * DAY_MS))));
        let w = plugin().on_wake(&context(NOW + 14 * DAY_MS), &c).unwrap();
        assert!(w.iter().any(|x| matches!(x, Action::FollowUp { key, note, .. } if key == "reorder" && note == "No reorder for 14 days (their cadence: 14 days): reach out")), "{w:?}");
        assert_eq!(w.last(), Some(&Action::WakeAt(Some(NOW + 180 * DAY_MS))));
        let w = plugin().on_wake(&context(NOW + 180 * DAY_MS), &c).unwrap();
        assert_eq!(
            moves(&w),
            [("first-purchase".into(), "no order for 180 days".into())]
        );
        assert!(w.contains(&Action::AddTag("lapsed".into())));
        assert_eq!(w.last(), Some(&Action::WakeAt(None)));
    }

    #[test]
    fn one_purchase_is_never_long_term_however_large() {
        let m = Metrics {
            orders: 1,
            purchase_days: 1,
            total_spend_cents: 100_000_000,
            first_order_at: Some(NOW - 400 * DAY_MS),
            last_order_at: Some(NOW),
            ..Default::default()
        };
        let a = plugin()
            .on_event(&context(NOW), &customer(Some("prospect"), m), &ev("order"))
            .unwrap();
        assert_eq!(moves(&a)[0].0, "first-purchase");
    }

    #[test]
    fn sustained_buying_over_months_makes_a_long_term_customer() {
        let m = Metrics {
            orders: 5,
            purchase_days: 4,
            first_order_at: Some(NOW - 200 * DAY_MS),
            last_order_at: Some(NOW),
            ..Default::default()
        };
        let a = plugin()
            .on_event(&context(NOW), &customer(Some("repeat"), m), &ev("order"))
            .unwrap();
        assert_eq!(
            moves(&a),
            [("long-term".into(), "bought on 4 days over 6 months".into())]
        );
        // The same four days within two months: still only repeat.
        let short = Metrics {
            first_order_at: Some(NOW - 60 * DAY_MS),
            ..m
        };
        let a = plugin()
            .on_event(
                &context(NOW),
                &customer(Some("repeat"), short),
                &ev("order"),
            )
            .unwrap();
        assert!(moves(&a).is_empty());
    }

    #[test]
    fn a_partner_contract_makes_a_partner_and_tags_the_role() {
        let e = Event {
            kind: "contract",
            at: NOW,
            fields: Fields(vec![("role", Value::Text("distributor"))]),
            ..Default::default()
        };
        let m = Metrics {
            orders: 3,
            purchase_days: 3,
            ..Default::default()
        };
        let a = plugin()
            .on_event(&context(NOW), &customer(Some("repeat"), m), &e)
            .unwrap();
        assert_eq!(moves(&a)[0].0, "partner");
        assert!(a.contains(&Action::AddTag("partner:distributor".into())));
    }

    #[test]
    fn referrals_make_a_strategic_partner() {
        let m = Metrics {
            orders: 2,
            purchase_days: 2,
            referrals: 1,
            ..Default::default()
        };
        let a = plugin()
            .on_event(&context(NOW), &customer(Some("repeat"), m), &ev("referral"))
            .unwrap();
        assert_eq!(
            moves(&a),
            [("strategic".into(), "referred 1 new customers".into())]
        );
    }

    #[test]
    fn a_lapsed_customer_steps_back_with_the_reason() {
        let m = Metrics {
            orders: 6,
            purchase_days: 5,
            first_order_at: Some(NOW - 500 * DAY_MS),
            last_order_at: Some(NOW - 200 * DAY_MS),
            ..Default::default()
        };
        let a = plugin()
            .on_event(&context(NOW), &customer(Some("long-term"), m), &ev("call"))
            .unwrap();
        assert_eq!(
            moves(&a),
            [("repeat".into(), "no order for 200 days".into())]
        );
        assert!(a.contains(&Action::AddTag("lapsed".into())));
        let never: B2bTrade = B2bTrade::configure(
            &DEFAULT_RULES.replace("\"lapse_days\": 180", "\"lapse_days\": null"),
        )
        .unwrap();
        assert!(moves(
            &never
                .on_event(&context(NOW), &customer(Some("long-term"), m), &ev("call"))
                .unwrap()
        )
        .is_empty());
    }

    #[test]
    fn stages_never_move_back_without_a_lapse() {
        let a = plugin()
            .on_event(
                &context(NOW),
                &customer(Some("advocate"), Metrics::default()),
                &ev("visit"),
            )
            .unwrap();
        assert!(moves(&a).is_empty());
    }

    #[test]
    fn segments_follow_the_four_dimensions() {
        let p = plugin();
        let seg = |s| {
            p.segment(&context(NOW), &customer(s, Metrics::default()))
                .unwrap()[0]
                .segment
                .to_string()
        };
        assert_eq!(
            [
                seg(None),
                seg(Some("prospect")),
                seg(Some("long-term")),
                seg(Some("partner"))
            ],
            ["select", "acquire", "retain", "expand"]
        );
    }

    #[test]
    fn rules_that_would_make_one_purchase_long_term_are_rejected() {
        let bad = DEFAULT_RULES.replace(
            "\"long_term_min_purchase_days\": 4",
            "\"long_term_min_purchase_days\": 1",
        );
        let Err(PluginError::BadRules(m)) = B2bTrade::configure(&bad) else {
            panic!("accepted")
        };
        assert!(m.contains("never one purchase"), "{m}");
    }

    #[test]
    fn every_reason_is_declared() {
        let m = Metrics {
            orders: 5,
            purchase_days: 4,
            referrals: 1,
            first_order_at: Some(0),
            last_order_at: Some(NOW),
            ..Default::default()
        };
        let a = plugin()
            .on_event(&context(NOW), &customer(None, m), &ev("order"))
            .unwrap();
        let reasons: Vec<Reason> = a
            .into_iter()
            .filter_map(|a| match a {
                Action::MoveToStage { reason, .. } => Some(reason),
                _ => None,
            })
            .collect();
        assert_reasons_declared(&B2bTrade::describe(), &reasons);
    }
}
