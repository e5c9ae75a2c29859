//! What plugins describe and return, in the host's own types: manifests,
//! reasons, scores, memberships, actions. The runtime converts each contract
//! version's WIT types into these.

use serde::{Deserialize, Serialize};

/// Severity of a plugin's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// An error a plugin reported about one customer, an event or its rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum PluginError {
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("bad rules: {0}")]
    BadRules(String),
    #[error("failed: {0}")]
    Failed(String),
}

impl PluginError {
    /// The same error with its message passed through `f`.
    pub fn map_message(self, f: impl FnOnce(&str) -> String) -> Self {
        match self {
            PluginError::BadInput(m) => PluginError::BadInput(f(&m)),
            PluginError::BadRules(m) => PluginError::BadRules(f(&m)),
            PluginError::Failed(m) => PluginError::Failed(f(&m)),
        }
    }
}

/// A reason as the plugin returned it: a catalogue code, points and arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reason {
    pub code: String,
    pub points: f64,
    pub args: Vec<f64>,
}

/// A language the host renders reason texts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    En,
    Zh,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub value: f64,
    pub band: Option<String>,
    pub reasons: Vec<Reason>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    pub segment: String,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum FieldValue {
    Text(String),
    Number(f64),
    Boolean(bool),
    Time(i64),
}

/// A change a plugin proposes; the pipeline validates it before applying it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", content = "with", rename_all = "snake_case")]
pub enum Action {
    MoveToStage {
        stage: String,
        reason: Reason,
    },
    AddTag(String),
    RemoveTag(String),
    SetField {
        key: String,
        value: FieldValue,
    },
    /// An unkeyed follow-up due `due_in_hours` after the call's `now` (0.1.0 and on).
    ScheduleFollowUp {
        due_in_hours: u32,
        note: String,
    },
    /// Opens, or updates while open, this plugin's follow-up with `key` (0.2.0).
    FollowUp {
        key: String,
        due: i64,
        note: String,
    },
    /// Closes this plugin's open follow-up with `key`, if any (0.2.0).
    CloseFollowUp {
        key: String,
    },
    /// Sets (`Some`) or cancels (`None`) this plugin's one pending wake for the
    /// customer (0.2.0).
    WakeAt {
        at: Option<i64>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stage {
    pub id: String,
    pub label: String,
    pub label_zh: Option<String>,
    pub rank: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SegmentDef {
    pub id: String,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReasonText {
    pub code: String,
    pub en: String,
    pub zh: Option<String>,
}

/// Which optional parts of a customer a plugin reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reads {
    pub tags: bool,
    pub segments: bool,
    pub fields: bool,
    pub events: bool,
}

impl Reads {
    pub const ALL: Reads = Reads {
        tags: true,
        segments: true,
        fields: true,
        events: true,
    };
}

/// A plugin's self-description, as validated at load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    pub scoring: bool,
    pub segmentation: bool,
    pub lifecycle: bool,
    pub reads: Reads,
    pub stages: Vec<Stage>,
    pub segments: Vec<SegmentDef>,
    pub reasons: Vec<ReasonText>,
    pub rules_schema: Option<String>,
    pub default_rules: String,
    pub wants_fields: Vec<String>,
}

impl Manifest {
    /// The text of `reason` in `lang`, with `{0}`, `{1}`... and `{points}` filled in.
    /// Falls back to English when there is no Chinese text, and to the bare code
    /// when the code is not in the catalogue (validation prevents that for scores).
    /// The text is at most [`MAX_RENDERED`](super::text::MAX_RENDERED) bytes
    /// whatever the template and arguments (a template of `{0}`s with a huge
    /// argument would otherwise make a response of megabytes).
    pub fn render(&self, reason: &Reason, lang: Lang) -> String {
        use super::text::{cut, MAX_RENDERED};
        let Some(t) = self.reasons.iter().find(|t| t.code == reason.code) else {
            return reason.code.clone();
        };
        let template = match lang {
            Lang::Zh => t.zh.as_deref().unwrap_or(&t.en),
            Lang::En => &t.en,
        };
        cut(
            stagecraft_plugin::render::template(template, reason.points, &reason.args),
            MAX_RENDERED,
        )
    }

    pub fn has_reason(&self, code: &str) -> bool {
        self.reasons.iter().any(|t| t.code == code)
    }

    pub fn has_segment(&self, id: &str) -> bool {
        self.segments.iter().any(|s| s.id == id)
    }

    pub fn has_stage(&self, id: &str) -> bool {
        self.stages.iter().any(|s| s.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "t".into(),
            version: "1.0.0".into(),
            description: String::new(),
            scoring: true,
            segmentation: false,
            lifecycle: false,
            reads: Reads::default(),
            stages: vec![],
            segments: vec![],
            reasons: vec![ReasonText {
                code: "spend".into(),
                en: "spent {0} in {1} orders ({points} pts)".into(),
                zh: Some("{1} 笔订单消费 {0}".into()),
            }],
            rules_schema: None,
            default_rules: "{}".into(),
            wants_fields: vec![],
        }
    }

    #[test]
    fn renders_in_both_languages() {
        let m = manifest();
        let r = Reason {
            code: "spend".into(),
            points: 12.5,
            args: vec![400.0, 4.0],
        };
        assert_eq!(m.render(&r, Lang::En), "spent 400 in 4 orders (12.50 pts)");
        assert_eq!(m.render(&r, Lang::Zh), "4 笔订单消费 400");
    }

    #[test]
    fn missing_args_and_unknown_codes_stay_visible() {
        let m = manifest();
        let r = Reason {
            code: "spend".into(),
            points: 0.0,
            args: vec![1.0],
        };
        assert_eq!(m.render(&r, Lang::En), "spent 1 in {1} orders (0 pts)");
        let unknown = Reason {
            code: "mystery".into(),
            points: 0.0,
            args: vec![],
        };
        assert_eq!(m.render(&unknown, Lang::En), "mystery");
    }

    #[test]
    fn rendering_is_bounded_whatever_the_template_and_args() {
        let mut m = manifest();
        m.reasons[0].en = "{0}".repeat(170);
        let r = Reason {
            code: "spend".into(),
            points: 0.0,
            args: vec![1.7e308],
        };
        let text = m.render(&r, Lang::En);
        assert!(
            text.len() <= crate::domain::text::MAX_RENDERED,
            "{}",
            text.len()
        );
        assert!(text.ends_with('…'));
    }
}
