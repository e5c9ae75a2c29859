// The scorer test plugin, shared by scorer (1.0.0) and scorer-v2 (2.0.0): each
// crate defines VERSION and BASE, then includes this file. The score is BASE plus
// the rules' `bonus`, its band and segment name the version, so a test can tell
// which version (and rule set) answered, and whether an answer mixed them.
// `{"fail": true}` makes every call fail, for the circuit-breaker tests.

use serde::Deserialize;
use stagecraft_plugin::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scorer {
    #[serde(default)]
    bonus: f64,
    #[serde(default)]
    fail: bool,
}

impl Plugin for Scorer {
    fn describe() -> Manifest {
        Manifest::new("scorer", VERSION, "Test plugin: a fixed score per version")
            .scoring()
            .segmentation()
            .segment("v1", "Scored by 1.0.0")
            .segment("v2", "Scored by 2.0.0")
            .reason("base", "base {0} plus bonus {1}", None)
            .rules_schema(
                r#"{"type": "object", "additionalProperties": false,
                    "properties": {"bonus": {"type": "number"}, "fail": {"type": "boolean"}}}"#,
            )
            .default_rules(r#"{"bonus": 0}"#)
    }

    fn configure(rules: &str) -> Result<Self, PluginError> {
        let s: Scorer = rules::parse(rules)?;
        rules::ensure(s.bonus.abs() <= 1000.0, "bonus must be between -1000 and 1000")?;
        Ok(s)
    }

    fn score(&self, _ctx: &Context, _c: &Customer) -> Result<Score, PluginError> {
        if self.fail {
            return Err(PluginError::Failed("asked to fail".into()));
        }
        Ok(Score::new(BASE + self.bonus)
            .band(if BASE == 1.0 { "v1" } else { "v2" })
            .reason(Reason::new("base", BASE).args([BASE, self.bonus])))
    }

    fn segment(&self, _ctx: &Context, _c: &Customer) -> Result<Vec<Membership>, PluginError> {
        let seg = if BASE == 1.0 { "v1" } else { "v2" };
        Ok(vec![Membership::new(seg, Reason::new("base", BASE).args([BASE, self.bonus]))])
    }
}

register_plugin!(Scorer);
