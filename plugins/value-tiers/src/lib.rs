//! value-tiers: sorts customers into the four return classes — high, medium, low and
//! negative return — by what they bring in against what they cost to serve.
//!
//! The score is the customer's estimated net value in currency units:
//! spend − (orders × cost per order + recent touchpoints × cost per touchpoint +
//! complaints × cost per complaint). The band then follows the thresholds of the
//! rule set; "high" also asks for repeat buying, so one big order is not enough.

use serde::Deserialize;
use stagecraft_plugin::*;

/// The rule set. Money is in cents.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Net value at or above which a customer is high return...
    #[schemars(range(min = 0))]
    pub high_min_net_cents: i64,
    /// ...provided they bought on at least this many distinct days.
    #[schemars(range(min = 1))]
    pub high_min_purchase_days: u32,
    /// Net value at or above which a customer is medium return.
    #[schemars(range(min = 0))]
    pub medium_min_net_cents: i64,
    /// What handling one order costs.
    #[schemars(range(min = 0))]
    pub cost_per_order_cents: i64,
    /// What one touchpoint (call, visit, message) in the last 90 days costs.
    #[schemars(range(min = 0))]
    pub cost_per_touchpoint_cents: i64,
    /// What handling one complaint costs.
    #[schemars(range(min = 0))]
    pub cost_per_complaint_cents: i64,
}

pub const DEFAULT_RULES: &str = r#"{
  "high_min_net_cents": 50000,
  "high_min_purchase_days": 3,
  "medium_min_net_cents": 10000,
  "cost_per_order_cents": 500,
  "cost_per_touchpoint_cents": 300,
  "cost_per_complaint_cents": 5000
}"#;

/// The four return classes, best first.
pub const BANDS: [&str; 4] = ["high", "medium", "low", "negative"];

pub struct ValueTiers {
    rules: Rules,
}

impl ValueTiers {
    /// The band and the reason for it, from net value and repeat buying.
    fn band(&self, net: i64, days: u32) -> (&'static str, Reason) {
        let r = &self.rules;
        let cents = |c: i64| c as f64 / 100.0;
        if net < 0 {
            (
                "negative",
                Reason::new("band_negative", 0.0).args([cents(net)]),
            )
        } else if net >= r.high_min_net_cents && days >= r.high_min_purchase_days {
            (
                "high",
                Reason::new("band_high", 0.0).args([
                    cents(net),
                    cents(r.high_min_net_cents),
                    days as f64,
                ]),
            )
        } else if net >= r.medium_min_net_cents {
            (
                "medium",
                Reason::new("band_medium", 0.0).args([cents(net), cents(r.medium_min_net_cents)]),
            )
        } else {
            (
                "low",
                Reason::new("band_low", 0.0).args([cents(net), cents(r.medium_min_net_cents)]),
            )
        }
    }

    fn evaluate(&self, c: &Customer) -> (Score, &'static str, Reason) {
        let m = &c.metrics;
        let r = &self.rules;
        let cost = m.orders as i64 * r.cost_per_order_cents
            + m.touchpoints_90d as i64 * r.cost_per_touchpoint_cents
            + m.complaints as i64 * r.cost_per_complaint_cents;
        let net = m.total_spend_cents - cost;
        let (band, why) = self.band(net, m.purchase_days);
        let spend = m.total_spend_cents as f64 / 100.0;
        let mut score = Score::new(net as f64 / 100.0)
            .band(band)
            .reason(Reason::new("spend", spend).args([spend, m.orders as f64]))
            .reason(Reason::new("cost_to_serve", -(cost as f64) / 100.0).args([
                cost as f64 / 100.0,
                m.orders as f64,
                m.touchpoints_90d as f64,
                m.complaints as f64,
            ]))
            .reason(Reason::new("repeat_days", 0.0).args([m.purchase_days as f64]));
        if m.complaints > 0 {
            let c = (m.complaints as i64 * r.cost_per_complaint_cents) as f64 / 100.0;
            score = score.reason(Reason::new("complaints", -c).args([m.complaints as f64]));
        }
        score = score.reason(why.clone());
        (score, band, why)
    }
}

impl Plugin for ValueTiers {
    fn describe() -> Manifest {
        Manifest::new(
            "value-tiers",
            "0.1.0",
            "High, medium, low and negative-return classes from spend, repeat buying, complaints and cost to serve",
        )
        .scoring()
        .segmentation()
        .segment("high-return", "High return")
        .segment("medium-return", "Medium return")
        .segment("low-return", "Low return")
        .segment("negative-return", "Negative return")
        .reason("spend", "spent {0} over {1} orders", Some("{1} 笔订单共消费 {0}"))
        .reason(
            "cost_to_serve",
            "estimated cost to serve {0}: {1} orders, {2} recent touchpoints, {3} complaints",
            Some("估计服务成本 {0}：{1} 笔订单、{2} 次近期接触、{3} 次投诉"),
        )
        .reason("repeat_days", "bought on {0} distinct days", Some("在 {0} 个不同日期购买"))
        .reason("complaints", "{0} complaints lower the value", Some("{0} 次投诉降低了价值"))
        .reason("band_high", "net value {0} ≥ {1} with {2} purchase days: high return", Some("净值 {0} ≥ {1}，购买天数 {2}：高回报"))
        .reason("band_medium", "net value {0} ≥ {1}: medium return", Some("净值 {0} ≥ {1}：中回报"))
        .reason("band_low", "net value {0} below {1}: low return", Some("净值 {0} 低于 {1}：低回报"))
        .reason("band_negative", "net value {0} is negative: costs more than it brings", Some("净值 {0} 为负：成本高于收益"))
        .rules_schema_of::<Rules>()
        .default_rules(DEFAULT_RULES)
    }

    fn configure(json: &str) -> Result<Self, PluginError> {
        let r: Rules = rules::parse(json)?;
        rules::ensure(
            r.high_min_net_cents >= r.medium_min_net_cents,
            "high_min_net_cents must be at least medium_min_net_cents",
        )?;
        rules::ensure(
            r.medium_min_net_cents >= 0,
            "medium_min_net_cents must not be negative",
        )?;
        rules::ensure(
            r.high_min_purchase_days >= 1,
            "high_min_purchase_days must be at least 1",
        )?;
        rules::ensure(
            r.cost_per_order_cents >= 0
                && r.cost_per_touchpoint_cents >= 0
                && r.cost_per_complaint_cents >= 0,
            "costs must not be negative",
        )?;
        Ok(ValueTiers { rules: r })
    }

    fn score(&self, _ctx: &Context, c: &Customer) -> Result<Score, PluginError> {
        if c.metrics.total_spend_cents < 0 {
            return Err(PluginError::BadInput(format!(
                "customer {} has negative total spend",
                c.id
            )));
        }
        Ok(self.evaluate(c).0)
    }

    fn segment(&self, _ctx: &Context, c: &Customer) -> Result<Vec<Membership>, PluginError> {
        let (_, band, why) = self.evaluate(c);
        let segment = match band {
            "high" => "high-return",
            "medium" => "medium-return",
            "low" => "low-return",
            _ => "negative-return",
        };
        Ok(vec![Membership::new(segment, why)])
    }
}

register_plugin!(ValueTiers);

#[cfg(test)]
mod tests {
    use super::*;
    use stagecraft_plugin::testing::{assert_reasons_declared, context, render};

    fn customer(
        orders: u32,
        days: u32,
        spend_cents: i64,
        touch: u32,
        complaints: u32,
    ) -> Customer<'static> {
        Customer {
            id: "c",
            metrics: Metrics {
                orders,
                purchase_days: days,
                total_spend_cents: spend_cents,
                touchpoints_90d: touch,
                complaints,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn band(p: &ValueTiers, c: &Customer) -> String {
        p.score(&context(0), c).unwrap().band.unwrap().into_owned()
    }

    #[test]
    fn four_classes_follow_the_default_rules() {
        let p = ValueTiers::with_default_rules().unwrap();
        // 10 orders on 6 days, $1,200: net 1200 - 50 - 6 = $1,144 → high.
        assert_eq!(band(&p, &customer(10, 6, 120_000, 2, 0)), "high");
        // Same money in one order: not repeat buying → medium, never high.
        assert_eq!(band(&p, &customer(1, 1, 120_000, 2, 0)), "medium");
        assert_eq!(band(&p, &customer(2, 2, 5_000, 0, 0)), "low");
        // Two complaints on a small spender: costs more than brings.
        assert_eq!(band(&p, &customer(2, 2, 5_000, 3, 2)), "negative");
    }

    #[test]
    fn score_is_net_value_and_reasons_add_up() {
        let p = ValueTiers::with_default_rules().unwrap();
        let s = p.score(&context(0), &customer(4, 3, 40_000, 5, 1)).unwrap();
        // cost = 4*5 + 5*3 + 1*50 = $85; net = 400 - 85 = 315.
        assert_eq!(s.value, 315.0);
        let spend: f64 = s
            .reasons
            .iter()
            .filter(|r| r.code == "spend" || r.code == "cost_to_serve")
            .map(|r| r.points)
            .sum();
        assert_eq!(spend, s.value);
        let m = ValueTiers::describe();
        assert_reasons_declared(&m, &s.reasons);
        let texts: Vec<String> = s.reasons.iter().map(|r| render(&m, r)).collect();
        assert!(
            texts.contains(&"spent 400 over 4 orders".to_string()),
            "{texts:?}"
        );
        assert!(
            texts.contains(&"net value 315 ≥ 100: medium return".to_string()),
            "{texts:?}"
        );
    }

    #[test]
    fn thresholds_come_from_the_rule_set() {
        let strict = DEFAULT_RULES.replace(
            "\"high_min_net_cents\": 50000",
            "\"high_min_net_cents\": 500000",
        );
        let p = ValueTiers::configure(&strict).unwrap();
        assert_eq!(band(&p, &customer(10, 6, 120_000, 2, 0)), "medium");
    }

    #[test]
    fn nonsense_rules_are_rejected_with_a_reason() {
        let inverted = DEFAULT_RULES.replace(
            "\"medium_min_net_cents\": 10000",
            "\"medium_min_net_cents\": 90000",
        );
        match ValueTiers::configure(&inverted) {
            Err(PluginError::BadRules(m)) => assert!(m.contains("high_min_net_cents"), "{m}"),
            other => panic!("expected BadRules, got {:?}", other.err()),
        }
        assert!(matches!(
            ValueTiers::configure("{\"nope\": 1}"),
            Err(PluginError::BadRules(_))
        ));
        assert!(matches!(
            ValueTiers::configure("not json"),
            Err(PluginError::BadRules(_))
        ));
    }

    #[test]
    fn segment_matches_band() {
        let p = ValueTiers::with_default_rules().unwrap();
        let c = customer(2, 2, 5_000, 3, 2);
        let segs = p.segment(&context(0), &c).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].segment, "negative-return");
    }

    #[test]
    fn default_rules_satisfy_the_schema_keys() {
        let schema: serde_json::Value =
            serde_json::from_str(&ValueTiers::describe().rules_schema.unwrap()).unwrap();
        let rules: serde_json::Value = serde_json::from_str(DEFAULT_RULES).unwrap();
        for k in schema["required"].as_array().unwrap() {
            assert!(
                rules.get(k.as_str().unwrap()).is_some(),
                "default rules miss {k}"
            );
        }
    }
}
