//! Customer lifetime value with the standard probabilistic models.
//!
//! - **BG/NBD** (Fader, Hardie & Lee 2005, "Counting your customers the easy
//!   way"): from a customer's repeat purchases `x`, the time of the last one `t_x`
//!   and their age `T`, the probability they are still active and how many
//!   purchases to expect in the next `horizon_days`.
//! - **Gamma-Gamma** (Fader, Hardie & Lee 2005, "RFM and CLV"): the expected spend
//!   per purchase, shrinking the customer's own mean towards the population's.
//!
//! CLV = expected purchases × expected spend per purchase × `margin`. Repeat
//! purchases are counted per distinct purchase day (`purchase_days − 1`), time is
//! in days, and the customer's mean spend is per purchase day. Parameters come from
//! the rule set; the defaults are the published CDNOW estimates (BG/NBD: r 0.243,
//! α 4.414 weeks = 30.898 days, a 0.793, b 2.426; Gamma-Gamma: p 6.25, q 3.74,
//! v 15.44 dollars).

use serde::Deserialize;
use stagecraft_plugin::*;

pub const DEFAULT_RULES: &str = r#"{
  "r": 0.243, "alpha": 30.898, "a": 0.793, "b": 2.426,
  "p": 6.25, "q": 3.74, "v": 1544,
  "horizon_days": 365,
  "margin": 1.0,
  "high_value_cents": 20000,
  "likely_lost_below": 0.3
}"#;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Clv {
    /// BG/NBD shape.
    #[schemars(extend("exclusiveMinimum" = 0))]
    r: f64,
    /// BG/NBD scale, in days.
    #[schemars(extend("exclusiveMinimum" = 0))]
    alpha: f64,
    #[schemars(extend("exclusiveMinimum" = 0))]
    a: f64,
    #[schemars(extend("exclusiveMinimum" = 0))]
    b: f64,
    /// Gamma-Gamma shape.
    #[schemars(extend("exclusiveMinimum" = 0))]
    p: f64,
    #[schemars(extend("exclusiveMinimum" = 1))]
    q: f64,
    /// Gamma-Gamma scale, in cents.
    #[schemars(extend("exclusiveMinimum" = 0))]
    v: f64,
    #[serde(default = "default_horizon")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    horizon_days: f64,
    #[serde(default = "default_margin")]
    #[schemars(range(min = 0, max = 1))]
    margin: f64,
    #[serde(default)]
    #[schemars(range(min = 0))]
    high_value_cents: f64,
    #[serde(default = "default_lost")]
    #[schemars(range(min = 0, max = 1))]
    likely_lost_below: f64,
}

fn default_horizon() -> f64 {
    365.0
}
fn default_margin() -> f64 {
    1.0
}
fn default_lost() -> f64 {
    0.3
}

/// A customer as the models see them: repeat purchase days `x`, days from the
/// first purchase to the last `t_x`, days from the first purchase to now `t`, and
/// the mean spend per purchase day `m` (cents).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub x: f64,
    pub t_x: f64,
    pub t: f64,
    pub m: f64,
}

impl Summary {
    /// From the host's metrics; `None` for a customer who has not bought yet.
    pub fn of(now: Timestamp, m: &Metrics) -> Option<Summary> {
        let (first, last) = (m.first_order_at?, m.last_order_at?);
        let day = DAY_MS as f64;
        let days = m.purchase_days.max(1) as f64;
        Some(Summary {
            x: days - 1.0,
            t_x: ((last - first) as f64 / day).floor(),
            t: ((now - first) as f64 / day).floor().max(0.0),
            m: m.total_spend_cents as f64 / days,
        })
    }
}

/// Gauss's hypergeometric function ₂F₁(a, b; c; z) for 0 ≤ z < 1, by its series.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let (mut term, mut sum) = (1.0, 1.0);
    for k in 0..100_000 {
        let k = k as f64;
        term *= (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z;
        sum += term;
        if term.abs() < 1e-15 * sum.abs() {
            break;
        }
    }
    sum
}

impl Clv {
    /// The odds ratio that appears in both BG/NBD formulas (0 without repeats).
    fn dropout_odds(&self, s: &Summary) -> f64 {
        if s.x == 0.0 {
            return 0.0;
        }
        (self.a / (self.b + s.x - 1.0))
            * ((self.alpha + s.t) / (self.alpha + s.t_x)).powf(self.r + s.x)
    }

    /// P(alive | x, t_x, T).
    pub fn p_alive(&self, s: &Summary) -> f64 {
        1.0 / (1.0 + self.dropout_odds(s))
    }

    /// E[Y(horizon) | x, t_x, T]: purchases expected in the next `horizon` days.
    pub fn expected_purchases(&self, s: &Summary, horizon: f64) -> f64 {
        let (r, alpha, a, b) = (self.r, self.alpha, self.a, self.b);
        let z = horizon / (alpha + s.t + horizon);
        let f = hyp2f1(r + s.x, b + s.x, a + b + s.x - 1.0, z);
        let head = (a + b + s.x - 1.0) / (a - 1.0);
        let inner = 1.0 - ((alpha + s.t) / (alpha + s.t + horizon)).powf(r + s.x) * f;
        head * inner / (1.0 + self.dropout_odds(s))
    }

    /// E[M | x, m]: the expected spend per purchase, in cents.
    pub fn expected_spend(&self, s: &Summary) -> f64 {
        let (p, q, v) = (self.p, self.q, self.v);
        let weight = p * s.x / (p * s.x + q - 1.0);
        (1.0 - weight) * (v * p / (q - 1.0)) + weight * s.m
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Plugin for Clv {
    fn describe() -> Manifest {
        Manifest::new(
            "clv",
            "1.0.0",
            "Customer lifetime value: BG/NBD for activity and purchases ahead, Gamma-Gamma for spend per purchase",
        )
        .scoring()
        .segmentation()
        .segment("high-value", "Expected to bring the most")
        .segment("likely-lost", "Probably no longer active")
        .segment("one-time", "Bought on one day only")
        .reason("p_alive", "{0}% likely still active", Some("仍活跃的概率 {0}%"))
        .reason("expected_purchases", "{0} purchases expected in the next {1} days", Some("未来 {1} 天预计购买 {0} 次"))
        .reason("expected_spend", "{0} expected per purchase", Some("每次购买预计 {0}"))
        .reason("no_purchase", "no purchase yet", Some("尚未购买"))
        .reason("one_day", "bought on one day only", Some("仅在一天购买"))
        .rules_schema_of::<Clv>()
        .default_rules(DEFAULT_RULES)
    }

    fn configure(json: &str) -> Result<Self, PluginError> {
        let c: Clv = rules::parse(json)?;
        for (name, x) in [
            ("r", c.r),
            ("alpha", c.alpha),
            ("a", c.a),
            ("b", c.b),
            ("p", c.p),
            ("v", c.v),
        ] {
            rules::ensure(
                x.is_finite() && x > 0.0,
                format!("{name} must be a positive number"),
            )?;
        }
        rules::ensure(
            c.a != 1.0,
            "a must not be exactly 1 (the expected-purchases formula divides by a - 1)",
        )?;
        rules::ensure(
            c.q > 1.0,
            "q must be above 1 for expected spend to be finite",
        )?;
        rules::ensure(c.horizon_days > 0.0, "horizon_days must be positive")?;
        rules::ensure(
            (0.0..=1.0).contains(&c.margin),
            "margin must be between 0 and 1",
        )?;
        Ok(c)
    }

    fn score(&self, ctx: &Context, c: &Customer) -> Result<Score, PluginError> {
        let Some(s) = Summary::of(ctx.now, &c.metrics) else {
            return Ok(Score::new(0.0)
                .band("none")
                .reason(Reason::new("no_purchase", 0.0)));
        };
        let alive = self.p_alive(&s);
        let purchases = self.expected_purchases(&s, self.horizon_days);
        let spend = self.expected_spend(&s);
        let clv = purchases * spend * self.margin / 100.0;
        let band = if clv * 100.0 >= self.high_value_cents {
            "high"
        } else if alive < self.likely_lost_below {
            "lost"
        } else {
            "standard"
        };
        Ok(Score::new(round2(clv))
            .band(band)
            .reason(Reason::new("p_alive", 0.0).args([(alive * 100.0).round()]))
            .reason(
                Reason::new("expected_purchases", round2(purchases))
                    .args([round2(purchases), self.horizon_days]),
            )
            .reason(
                Reason::new("expected_spend", round2(spend / 100.0)).args([round2(spend / 100.0)]),
            ))
    }

    fn segment(&self, ctx: &Context, c: &Customer) -> Result<Vec<Membership>, PluginError> {
        let Some(s) = Summary::of(ctx.now, &c.metrics) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let alive = self.p_alive(&s);
        let purchases = self.expected_purchases(&s, self.horizon_days);
        let clv = purchases * self.expected_spend(&s) * self.margin;
        if s.x == 0.0 {
            out.push(Membership::new("one-time", Reason::new("one_day", 0.0)));
        }
        if clv >= self.high_value_cents && self.high_value_cents > 0.0 {
            out.push(Membership::new(
                "high-value",
                Reason::new("expected_purchases", 0.0).args([round2(purchases), self.horizon_days]),
            ));
        }
        if alive < self.likely_lost_below {
            out.push(Membership::new(
                "likely-lost",
                Reason::new("p_alive", 0.0).args([(alive * 100.0).round()]),
            ));
        }
        Ok(out)
    }
}

register_plugin!(Clv);

#[cfg(test)]
mod tests {
    use super::*;
    use stagecraft_plugin::testing::{assert_reasons_declared, context};

    fn weekly() -> Clv {
        // The published parameters in weeks, to check against the paper's figures.
        Clv::configure(&DEFAULT_RULES.replace("\"alpha\": 30.898", "\"alpha\": 4.414")).unwrap()
    }

    #[test]
    fn matches_the_published_example() {
        // Fader, Hardie & Lee (2005), CDNOW: x = 2, t_x = 30.43, T = 38.86 weeks
        // expects 1.226 purchases in the next 39 weeks; lifetimes gives 1.226028
        // and P(alive) 0.726579 for the same customer.
        let s = Summary {
            x: 2.0,
            t_x: 30.43,
            t: 38.86,
            m: 0.0,
        };
        let m = weekly();
        assert!((m.expected_purchases(&s, 39.0) - 1.226028174767135).abs() < 1e-9);
        assert!((m.p_alive(&s) - 0.72657857).abs() < 1e-7);
    }

    #[test]
    fn matches_lifetimes_on_cdnow() {
        let text = include_str!("../reference/cdnow_reference.csv");
        let m = Clv::with_default_rules().unwrap();
        let mut n = 0;
        for line in text.lines().skip(1) {
            let c: Vec<f64> = line
                .split(',')
                .skip(1)
                .map(|v| v.parse().unwrap())
                .collect();
            let s = Summary {
                x: c[0],
                t_x: c[1],
                t: c[2],
                m: c[3],
            };
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
            assert!(
                close(m.p_alive(&s), c[4]),
                "{line}: p_alive {}",
                m.p_alive(&s)
            );
            assert!(
                close(m.expected_purchases(&s, 365.0), c[5]),
                "{line}: expected {}",
                m.expected_purchases(&s, 365.0)
            );
            assert!(
                close(m.expected_spend(&s), c[6]),
                "{line}: spend {}",
                m.expected_spend(&s)
            );
            n += 1;
        }
        assert_eq!(n, 2357);
    }

    #[test]
    fn scores_say_why() {
        let now = 899_251_200_000; // 1998-07-01
        let metrics = Metrics {
            orders: 5,
            purchase_days: 4,
            total_spend_cents: 20_000,
            first_order_at: Some(now - 500 * DAY_MS),
            last_order_at: Some(now - 20 * DAY_MS),
            ..Default::default()
        };
        let s = Clv::with_default_rules()
            .unwrap()
            .score(
                &context(now),
                &Customer {
                    metrics,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(s.value > 0.0);
        assert_reasons_declared(&Clv::describe(), &s.reasons);
        let none = Clv::with_default_rules()
            .unwrap()
            .score(&context(now), &Customer::default())
            .unwrap();
        assert_eq!(none.band.as_deref(), Some("none"));
    }

    #[test]
    fn parameters_that_break_the_model_are_refused() {
        let bad = DEFAULT_RULES.replace("\"a\": 0.793", "\"a\": -1");
        assert!(
            matches!(Clv::configure(&bad), Err(PluginError::BadRules(m)) if m.contains("a must be a positive number"))
        );
    }
}
