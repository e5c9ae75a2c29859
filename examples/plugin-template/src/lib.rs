//! A minimal Stagecraft plugin: scores how engaged a customer has been lately.
//! Copy this folder, rename the package, change `describe` and `score`, then
//! `cargo build --release --target wasm32-wasip2` and `stagecraft plugin check`.

use serde::Deserialize;
use stagecraft_plugin::*;

/// The rule set; its JSON Schema (shown to admins, checked on every upload) is
/// derived from this struct, so the two cannot drift apart.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Engagement {
    /// Points per touchpoint in the last 90 days.
    #[schemars(range(min = 0))]
    points_per_touchpoint: f64,
    /// Score at or above which a customer is "engaged".
    engaged_at: f64,
}

impl Plugin for Engagement {
    fn describe() -> Manifest {
        Manifest::new(
            "engagement",
            "0.1.0",
            "Scores recent engagement from touchpoints",
        )
        .scoring()
        .reason(
            "touchpoints",
            "{0} touchpoints in 90 days",
            Some("90 天内 {0} 次接触"),
        )
        .rules_schema_of::<Engagement>()
        .default_rules(r#"{"points_per_touchpoint": 10, "engaged_at": 50}"#)
    }

    fn configure(json: &str) -> Result<Self, PluginError> {
        let e: Engagement = rules::parse(json)?;
        rules::ensure(
            e.points_per_touchpoint >= 0.0,
            "points_per_touchpoint must not be negative",
        )?;
        Ok(e)
    }

    fn score(&self, _ctx: &Context, c: &Customer) -> Result<Score, PluginError> {
        let n = c.metrics.touchpoints_90d as f64;
        let value = n * self.points_per_touchpoint;
        let band = if value >= self.engaged_at {
            "engaged"
        } else {
            "quiet"
        };
        Ok(Score::new(value)
            .band(band)
            .reason(Reason::new("touchpoints", value).args([n])))
    }
}

register_plugin!(Engagement);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_touchpoints_make_an_engaged_customer() {
        let p = Engagement::with_default_rules().unwrap();
        let c = Customer {
            id: "c",
            metrics: Metrics {
                touchpoints_90d: 5,
                ..Default::default()
            },
            ..Default::default()
        };
        let s = p.score(&testing::context(0), &c).unwrap();
        assert_eq!((s.value, s.band.as_deref()), (50.0, Some("engaged")));
        assert_eq!(
            testing::render(&Engagement::describe(), &s.reasons[0]),
            "5 touchpoints in 90 days"
        );
    }
}
