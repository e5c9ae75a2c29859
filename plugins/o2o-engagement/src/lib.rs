//! O2O services and apparel retail: engagement.
//!
//! - **Seed users** (source `seed`, or the field `seed: true`) are their own segment.
//! - **Activation**: a customer is `activated` after `activate_after` (3) good
//!   experiences (an `experience` event rated 4–5 of 5).
//! - **Endangered**: a bad experience (rated 1–2, or a complaint) makes a customer
//!   `endangered` for `endangered_days`, tags them and asks staff to rescue them;
//!   a good experience afterwards clears it.
//! - **Dormant**: no contact for `dormant_days`; a dormant customer who comes back
//!   is tagged `reactivated` and welcomed with a follow-up.
//! - **Preference tags**: engagement events (`email-click`, `push-open`,
//!   `social-like`, `content-view`) with a `topic` field (`promotions`,
//!   `product-news`, `industry-info`) are counted per topic; a topic engaged with
//!   `preference_min` times becomes a tag `pref:<topic>`, so outreach matches.
//! - **In time** (contract 0.2.0): after every event and wake it asks to be
//!   woken when something changes with time alone — the day the customer would
//!   go dormant, their endangered window ends, or their recency rank drops — so
//!   a silent customer is `dormant` on day `dormant_days` without an event.
//!   Follow-ups are keyed (`rescue`, `welcome-back`): repeated causes update
//!   one, and they close when stale (a good experience after a rescue call was
//!   asked for, the endangered window or a welcome gone by).
//! - **RFM score**: recency, frequency and monetary value, each 1–5 from the rule
//!   set's thresholds; the score is R·100 + F·10 + M (e.g. 545) and the band names
//!   the group (champions, loyal, promising, needs-attention, hibernating).

use serde::Deserialize;
use stagecraft_plugin::*;

pub const TOPICS: [&str; 3] = ["promotions", "product-news", "industry-info"];

pub const DEFAULT_RULES: &str = r#"{
  "activate_after": 3,
  "endangered_days": 30,
  "dormant_days": 90,
  "engagement_kinds": ["email-click", "push-open", "social-like", "content-view"],
  "preference_min": 2,
  "recency_days": [30, 60, 120, 240],
  "frequency_orders": [2, 3, 5, 8],
  "monetary_cents": [5000, 15000, 40000, 100000],
  "rescue_follow_up_hours": 24,
  "welcome_back_follow_up_hours": 48
}"#;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct O2oEngagement {
    #[schemars(range(min = 1))]
    activate_after: u32,
    #[schemars(range(min = 1))]
    endangered_days: i64,
    #[schemars(range(min = 1))]
    dormant_days: i64,
    engagement_kinds: Vec<String>,
    #[schemars(range(min = 1))]
    preference_min: u32,
    /// Days since the last order at which R drops from 5 to 4, 4 to 3, 3 to 2, 2 to 1.
    recency_days: [f64; 4],
    /// Orders at which F rises from 1 to 2, 2 to 3, 3 to 4, 4 to 5.
    frequency_orders: [f64; 4],
    /// Spend at which M rises from 1 to 2, ... 4 to 5.
    monetary_cents: [f64; 4],
    #[schemars(range(min = 1))]
    rescue_follow_up_hours: u32,
    #[schemars(range(min = 1))]
    welcome_back_follow_up_hours: u32,
}

fn number(c: &Customer, key: &str) -> f64 {
    c.fields.get(key).and_then(|v| v.as_number()).unwrap_or(0.0)
}

fn time(c: &Customer, key: &str) -> Option<Timestamp> {
    match c.fields.get(key) {
        Some(Value::Time(t)) => Some(t),
        _ => None,
    }
}

fn ascending(t: &[f64; 4]) -> bool {
    t.windows(2).all(|w| w[0] < w[1])
}

/// 1 + how many thresholds `x` reaches (1..=5).
fn rank_up(x: f64, thresholds: &[f64; 4]) -> u32 {
    1 + thresholds.iter().filter(|t| x >= **t).count() as u32
}

fn pref_key(topic: &str) -> String {
    format!("topic_{}", topic.replace('-', "_"))
}

impl O2oEngagement {
    fn rfm(&self, now: Timestamp, m: &Metrics) -> (u32, u32, u32, f64) {
        let since = m
            .last_order_at
            .map(|t| (now - t) as f64 / DAY_MS as f64)
            .unwrap_or(f64::INFINITY);
        let r = if m.orders == 0 {
            1
        } else {
            6 - rank_up(since, &self.recency_days)
        };
        let f = rank_up(m.orders as f64, &self.frequency_orders).min(5);
        let mo = rank_up(m.total_spend_cents as f64, &self.monetary_cents);
        (r, f, mo, since)
    }

    fn endangered(&self, now: Timestamp, c: &Customer) -> Option<f64> {
        let bad = time(c, "last_bad_experience_at")?;
        let days = (now - bad) as f64 / DAY_MS as f64;
        let recovered = time(c, "last_good_experience_at").is_some_and(|g| g > bad);
        (days <= self.endangered_days as f64 && !recovered).then_some(days.floor().max(0.0))
    }

    /// The next time after `now` at which a segment or the RFM score changes
    /// with time alone.
    fn next_change(&self, now: Timestamp, c: &Customer) -> Option<Timestamp> {
        let day = |d: f64| (d * DAY_MS as f64).ceil() as i64;
        let m = &c.metrics;
        let mut at = Vec::new();
        if let Some(last) = m.last_contact_at {
            at.push(last + day(self.dormant_days as f64));
        }
        if self.endangered(now, c).is_some() {
            if let Some(bad) = time(c, "last_bad_experience_at") {
                // Endangered while at most `endangered_days` old.
                at.push(bad + day(self.endangered_days as f64) + 1);
            }
        }
        if let (Some(last), true) = (m.last_order_at, m.orders > 0) {
            at.extend(self.recency_days.iter().map(|d| last + day(*d)));
        }
        at.into_iter().filter(|&t| t > now).min()
    }

    /// What it asks after an event or a wake: stale follow-ups closed, the next wake.
    fn keep_current(&self, now: Timestamp, c: &Customer, actions: &mut Vec<Action>) {
        if self.endangered(now, c).is_none() {
            actions.push(Action::CloseFollowUp("rescue".into()));
        }
        let idle = c
            .metrics
            .last_contact_at
            .map(|l| (now - l) as f64 / DAY_MS as f64);
        if idle.is_some_and(|d| d >= self.dormant_days as f64) {
            actions.push(Action::CloseFollowUp("welcome-back".into()));
        }
        actions.push(Action::WakeAt(self.next_change(now, c)));
    }

    fn dormant_days_before(&self, c: &Customer, e: &Event) -> Option<f64> {
        // The newest earlier event: the snapshot's events include this one.
        let previous = c
            .events
            .iter()
            .filter(|x| x.at < e.at)
            .map(|x| x.at)
            .max()?;
        let gap = (e.at - previous) as f64 / DAY_MS as f64;
        (gap >= self.dormant_days as f64).then_some(gap.floor())
    }
}

impl Plugin for O2oEngagement {
    fn describe() -> Manifest {
        Manifest::new(
            "o2o-engagement",
            "1.0.0",
            "O2O and apparel retail: activation after good experiences, endangered and dormant customers, preference tags, RFM",
        )
        .scoring()
        .segmentation()
        .reads(Reads { tags: true, fields: true, events: true, ..Default::default() })
        .segment("seed", "Seed users")
        .segment("activated", "Activated: three good experiences")
        .segment("endangered", "Endangered after a bad experience")
        .segment("dormant", "Dormant")
        .reason("recency", "R{0}: last order {1} days ago", Some("R{0}：{1} 天前最后下单"))
        .reason("recency_none", "R1: no order yet", Some("R1：尚未下单"))
        .reason("frequency", "F{0}: {1} orders", Some("F{0}：{1} 笔订单"))
        .reason("monetary", "M{0}: spent {1}", Some("M{0}：消费 {1}"))
        .reason("seed", "a seed user", Some("种子用户"))
        .reason("activated", "{0} good experiences", Some("{0} 次良好体验"))
        .reason("endangered", "a bad experience {0} days ago", Some("{0} 天前有一次不良体验"))
        .reason("dormant", "no contact for {0} days", Some("{0} 天没有接触"))
        .rules_schema_of::<O2oEngagement>()
        .default_rules(DEFAULT_RULES)
    }

    fn configure(json: &str) -> Result<Self, PluginError> {
        let r: O2oEngagement = rules::parse(json)?;
        rules::ensure(ascending(&r.recency_days), "recency_days must be ascending")?;
        rules::ensure(
            ascending(&r.frequency_orders),
            "frequency_orders must be ascending",
        )?;
        rules::ensure(
            ascending(&r.monetary_cents),
            "monetary_cents must be ascending",
        )?;
        rules::ensure(r.activate_after >= 1, "activate_after must be at least 1")?;
        Ok(r)
    }

    fn score(&self, ctx: &Context, c: &Customer) -> Result<Score, PluginError> {
        let m = &c.metrics;
        let (r, f, mo, since) = self.rfm(ctx.now, m);
        let band = match (r, f) {
            (4..=5, 4..=5) => "champions",
            (_, 4..=5) => "loyal",
            (4..=5, _) => "promising",
            (3, _) => "needs-attention",
            _ => "hibernating",
        };
        let recency = if m.orders == 0 {
            Reason::new("recency_none", 1.0)
        } else {
            Reason::new("recency", r as f64).args([r as f64, since.floor()])
        };
        Ok(Score::new((r * 100 + f * 10 + mo) as f64)
            .band(band)
            .reason(recency)
            .reason(Reason::new("frequency", f as f64).args([f as f64, m.orders as f64]))
            .reason(
                Reason::new("monetary", mo as f64)
                    .args([mo as f64, m.total_spend_cents as f64 / 100.0]),
            ))
    }

    fn segment(&self, ctx: &Context, c: &Customer) -> Result<Vec<Membership>, PluginError> {
        let mut out = Vec::new();
        if c.source == Some("seed") || matches!(c.fields.get("seed"), Some(Value::Boolean(true))) {
            out.push(Membership::new("seed", Reason::new("seed", 0.0)));
        }
        let good = number(c, "good_experiences");
        if good >= self.activate_after as f64 {
            out.push(Membership::new(
                "activated",
                Reason::new("activated", 0.0).args([good]),
            ));
        }
        if let Some(days) = self.endangered(ctx.now, c) {
            out.push(Membership::new(
                "endangered",
                Reason::new("endangered", 0.0).args([days]),
            ));
        }
        if let Some(last) = c.metrics.last_contact_at {
            let idle = ((ctx.now - last) as f64 / DAY_MS as f64).floor();
            if idle >= self.dormant_days as f64 {
                out.push(Membership::new(
                    "dormant",
                    Reason::new("dormant", 0.0).args([idle]),
                ));
            }
        }
        Ok(out)
    }

    fn on_wake(&self, ctx: &Context, c: &Customer) -> Result<Vec<Action>, PluginError> {
        let mut actions = Vec::new();
        self.keep_current(ctx.now, c, &mut actions);
        Ok(actions)
    }

    fn on_event(&self, ctx: &Context, c: &Customer, e: &Event) -> Result<Vec<Action>, PluginError> {
        let mut actions = Vec::new();
        let rating = e.fields.get("rating").and_then(|v| v.as_number());
        let good = e.kind == "experience" && rating.is_some_and(|r| r >= 4.0);
        let bad =
            e.kind == "complaint" || (e.kind == "experience" && rating.is_some_and(|r| r <= 2.0));
        if good {
            let n = number(c, "good_experiences") + 1.0;
            actions.push(Action::SetField {
                key: "good_experiences".into(),
                value: FieldValue::Number(n),
            });
            actions.push(Action::SetField {
                key: "last_good_experience_at".into(),
                value: FieldValue::Time(e.at),
            });
            if n >= self.activate_after as f64 && !c.has_tag("activated") {
                actions.push(Action::AddTag("activated".into()));
            }
            if c.has_tag("endangered") {
                actions.push(Action::RemoveTag("endangered".into()));
            }
            actions.push(Action::CloseFollowUp("rescue".into()));
        }
        if bad {
            actions.push(Action::SetField {
                key: "last_bad_experience_at".into(),
                value: FieldValue::Time(e.at),
            });
            if !c.has_tag("endangered") {
                actions.push(Action::AddTag("endangered".into()));
            }
            let what = e
                .fields
                .get("note")
                .and_then(|v| v.as_text())
                .unwrap_or("their bad experience");
            actions.push(Action::FollowUp {
                key: "rescue".into(),
                due: e.at.max(ctx.now) + self.rescue_follow_up_hours as i64 * 3_600_000,
                note: format!(
                    "Rescue: call about {}",
                    what.chars().take(200).collect::<String>()
                ),
            });
        }
        if let Some(gap) = self.dormant_days_before(c, e) {
            actions.push(Action::AddTag("reactivated".into()));
            actions.push(Action::FollowUp {
                key: "welcome-back".into(),
                due: e.at.max(ctx.now) + self.welcome_back_follow_up_hours as i64 * 3_600_000,
                note: format!(
                    "Welcome back after {gap} days: thank them and ask what brought them back"
                ),
            });
        }
        if self.engagement_kinds.iter().any(|k| k == e.kind) {
            if let Some(topic) = e.fields.get("topic").and_then(|v| v.as_text()) {
                if let Some(topic) = TOPICS.iter().find(|t| **t == topic) {
                    let key = pref_key(topic);
                    let n = number(c, &key) + 1.0;
                    actions.push(Action::SetField {
                        key: key.into(),
                        value: FieldValue::Number(n),
                    });
                    let tag = format!("pref:{topic}");
                    if n >= self.preference_min as f64 && !c.has_tag(&tag) {
                        actions.push(Action::AddTag(tag.into()));
                    }
                }
            }
        }
        // Closing what this event made stale must not undo what it opened.
        let opened: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::FollowUp { key, .. } => Some(key.to_string()),
                _ => None,
            })
            .collect();
        let mut later = Vec::new();
        self.keep_current(ctx.now.max(e.at), c, &mut later);
        actions.extend(later.into_iter().filter(
            |a| !matches!(a, Action::CloseFollowUp(k) if opened.iter().any(|o| o == k.as_ref())),
        ));
        Ok(actions)
    }
}

register_plugin!(O2oEngagement);

#[cfg(test)]
mod tests {
    use super::*;
    use stagecraft_plugin::testing::{assert_reasons_declared, context, render};

    const NOW: i64 = 1_732_406_400_000;

    fn plugin() -> O2oEngagement {
        O2oEngagement::with_default_rules().unwrap()
    }

    fn rated(rating: f64) -> Event<'static> {
        Event {
            kind: "experience",
            at: NOW,
            fields: Fields(vec![("rating", Value::Number(rating))]),
            ..Default::default()
        }
    }

    fn segments(c: &Customer) -> Vec<String> {
        plugin()
            .segment(&context(NOW), c)
            .unwrap()
            .iter()
            .map(|m| m.segment.to_string())
            .collect()
    }

    #[test]
    fn the_third_good_experience_activates() {
        let mut c = Customer {
            id: "c",
            ..Default::default()
        };
        c.fields = Fields(vec![("good_experiences", Value::Number(2.0))]);
        let a = plugin().on_event(&context(NOW), &c, &rated(5.0)).unwrap();
        assert!(a.contains(&Action::SetField {
            key: "good_experiences".into(),
            value: FieldValue::Number(3.0)
        }));
        assert!(a.contains(&Action::AddTag("activated".into())));
        c.fields = Fields(vec![("good_experiences", Value::Number(3.0))]);
        assert_eq!(segments(&c), ["activated"]);
        // Two are not enough.
        c.fields = Fields(vec![("good_experiences", Value::Number(1.0))]);
        assert!(!plugin()
            .on_event(&context(NOW), &c, &rated(4.0))
            .unwrap()
            .contains(&Action::AddTag("activated".into())));
    }

    #[test]
    fn a_bad_experience_endangers_and_asks_for_a_rescue_until_a_good_one() {
        let c = Customer {
            id: "c",
            ..Default::default()
        };
        let a = plugin().on_event(&context(NOW), &c, &rated(1.0)).unwrap();
        assert!(a.contains(&Action::AddTag("endangered".into())));
        assert!(a.iter().any(|x| matches!(x, Action::FollowUp { key, due, note } if key == "rescue" && *due == NOW + 24 * 3_600_000 && note.starts_with("Rescue"))));
        let bad = Customer {
            id: "c",
            fields: Fields(vec![(
                "last_bad_experience_at",
                Value::Time(NOW - 3 * DAY_MS),
            )]),
            tags: vec!["endangered"],
            ..Default::default()
        };
        assert_eq!(segments(&bad), ["endangered"]);
        let a = plugin().on_event(&context(NOW), &bad, &rated(5.0)).unwrap();
        assert!(a.contains(&Action::RemoveTag("endangered".into())));
        let recovered = Customer {
            fields: Fields(vec![
                ("last_bad_experience_at", Value::Time(NOW - 3 * DAY_MS)),
                ("last_good_experience_at", Value::Time(NOW - DAY_MS)),
            ]),
            ..bad
        };
        assert!(segments(&recovered).is_empty());
    }

    #[test]
    fn a_dormant_customer_who_returns_is_welcomed_back() {
        let c = Customer {
            id: "c",
            events: vec![
                Event {
                    kind: "visit",
                    at: NOW,
                    ..Default::default()
                },
                Event {
                    kind: "order",
                    at: NOW - 120 * DAY_MS,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let e = Event {
            kind: "visit",
            at: NOW,
            ..Default::default()
        };
        let a = plugin().on_event(&context(NOW), &c, &e).unwrap();
        assert!(a.contains(&Action::AddTag("reactivated".into())));
        assert!(a.iter().any(|x| matches!(x, Action::FollowUp { key, note, .. } if key == "welcome-back" && note.starts_with("Welcome back after 120 days"))));
        let idle = Customer {
            id: "d",
            metrics: Metrics {
                last_contact_at: Some(NOW - 100 * DAY_MS),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(segments(&idle), ["dormant"]);
    }

    #[test]
    fn a_customer_is_woken_the_day_they_would_go_dormant_and_rescue_closes_when_stale() {
        // Last order 10 days ago, last contact today: recency drops at 30 days
        // after the order, dormancy at 90 after the contact.
        let c = Customer {
            metrics: Metrics {
                orders: 1,
                last_order_at: Some(NOW - 10 * DAY_MS),
                last_contact_at: Some(NOW),
                ..Default::default()
            },
            ..Default::default()
        };
        let e = Event {
            kind: "message",
            at: NOW,
            ..Default::default()
        };
        let a = plugin().on_event(&context(NOW), &c, &e).unwrap();
        assert_eq!(a.last(), Some(&Action::WakeAt(Some(NOW + 20 * DAY_MS))));
        // Then at each recency step (60 days after the order), then dormancy.
        let w = plugin().on_wake(&context(NOW + 20 * DAY_MS), &c).unwrap();
        assert_eq!(w.last(), Some(&Action::WakeAt(Some(NOW + 50 * DAY_MS))));
        assert!(w.contains(&Action::CloseFollowUp("rescue".into())), "{w:?}");
        let w = plugin().on_wake(&context(NOW + 50 * DAY_MS), &c).unwrap();
        assert_eq!(w.last(), Some(&Action::WakeAt(Some(NOW + 90 * DAY_MS))));
        // Dormant on day 90: the welcome is stale; next, recency at 120 days.
        let w = plugin().on_wake(&context(NOW + 90 * DAY_MS), &c).unwrap();
        assert!(
            w.contains(&Action::CloseFollowUp("welcome-back".into())),
            "{w:?}"
        );
        assert_eq!(w.last(), Some(&Action::WakeAt(Some(NOW + 110 * DAY_MS))));
    }

    #[test]
    fn engagement_with_a_topic_becomes_a_preference_tag() {
        let e = Event {
            kind: "email-click",
            at: NOW,
            fields: Fields(vec![("topic", Value::Text("promotions"))]),
            ..Default::default()
        };
        let first = plugin()
            .on_event(&context(NOW), &Customer::default(), &e)
            .unwrap();
        assert_eq!(
            first[0],
            Action::SetField {
                key: "topic_promotions".into(),
                value: FieldValue::Number(1.0)
            }
        );
        assert!(!first.iter().any(|a| matches!(a, Action::AddTag(_))));
        let once = Customer {
            fields: Fields(vec![("topic_promotions", Value::Number(1.0))]),
            ..Default::default()
        };
        let second = plugin().on_event(&context(NOW), &once, &e).unwrap();
        assert!(second.contains(&Action::AddTag("pref:promotions".into())));
        let odd = Event {
            kind: "email-click",
            at: NOW,
            fields: Fields(vec![("topic", Value::Text("cats"))]),
            ..Default::default()
        };
        assert!(!plugin()
            .on_event(&context(NOW), &Customer::default(), &odd)
            .unwrap()
            .iter()
            .any(|a| matches!(a, Action::SetField { .. } | Action::AddTag(_))));
    }

    #[test]
    fn rfm_scores_recency_frequency_and_money() {
        let m = Metrics {
            orders: 6,
            total_spend_cents: 45_000,
            last_order_at: Some(NOW - 10 * DAY_MS),
            ..Default::default()
        };
        let s = plugin()
            .score(
                &context(NOW),
                &Customer {
                    metrics: m,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!((s.value, s.band.as_deref()), (544.0, Some("champions")));
        let texts: Vec<String> = s
            .reasons
            .iter()
            .map(|r| render(&O2oEngagement::describe(), r))
            .collect();
        assert_eq!(
            texts,
            [
                "R5: last order 10 days ago",
                "F4: 6 orders",
                "M4: spent 450"
            ]
        );
        assert_reasons_declared(&O2oEngagement::describe(), &s.reasons);
        let old = Metrics {
            orders: 1,
            total_spend_cents: 2_000,
            last_order_at: Some(NOW - 300 * DAY_MS),
            ..Default::default()
        };
        let s = plugin()
            .score(
                &context(NOW),
                &Customer {
                    metrics: old,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!((s.value, s.band.as_deref()), (111.0, Some("hibernating")));
        let none = plugin().score(&context(NOW), &Customer::default()).unwrap();
        assert_eq!(
            render(&O2oEngagement::describe(), &none.reasons[0]),
            "R1: no order yet"
        );
    }

    #[test]
    fn seed_users_are_a_segment() {
        let c = Customer {
            source: Some("seed"),
            ..Default::default()
        };
        assert_eq!(segments(&c), ["seed"]);
    }

    #[test]
    fn thresholds_must_ascend() {
        let bad = DEFAULT_RULES.replace("[30, 60, 120, 240]", "[30, 20, 120, 240]");
        let Err(PluginError::BadRules(m)) = O2oEngagement::configure(&bad) else {
            panic!("accepted")
        };
        assert!(m.contains("recency_days"), "{m}");
    }
}
