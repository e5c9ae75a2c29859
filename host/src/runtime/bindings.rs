//! The one `bindgen!` site. Everything else in the host uses the domain types of
//! [`super::types`]; the generated types do not leave this module.

use crate::domain::plugin::{
    Action, FieldValue, Level, Manifest, Membership, PluginError, Reads, Reason, ReasonText, Score,
    SegmentDef, Stage,
};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});

pub use self::stagecraft::plugin::host::Level as WitLevel;
use self::stagecraft::plugin::types as w;
pub use exports::stagecraft::plugin::pack::Context as WitContext;

/// The interface a plugin must export, with its version.
pub const PACK_EXPORT: &str = "stagecraft:plugin/pack@0.1.0";
/// The host interface the plugin may import.
pub const HOST_IMPORT: &str = "stagecraft:plugin/host@0.1.0";
/// The types-only interface of the contract.
pub const TYPES_IMPORT: &str = "stagecraft:plugin/types@0.1.0";

impl From<WitLevel> for Level {
    fn from(l: WitLevel) -> Self {
        match l {
            WitLevel::Debug => Level::Debug,
            WitLevel::Info => Level::Info,
            WitLevel::Warn => Level::Warn,
            WitLevel::Error => Level::Error,
        }
    }
}

impl From<w::PluginError> for PluginError {
    fn from(e: w::PluginError) -> Self {
        match e {
            w::PluginError::BadInput(m) => PluginError::BadInput(m),
            w::PluginError::BadRules(m) => PluginError::BadRules(m),
            w::PluginError::Failed(m) => PluginError::Failed(m),
        }
    }
}

impl From<w::Reason> for Reason {
    fn from(r: w::Reason) -> Self {
        Reason {
            code: r.code,
            points: r.points,
            args: r.args,
        }
    }
}

impl From<w::CustomerScore> for Score {
    fn from(s: w::CustomerScore) -> Self {
        Score {
            value: s.value,
            band: s.band,
            reasons: s.reasons.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<w::Membership> for Membership {
    fn from(m: w::Membership) -> Self {
        Membership {
            segment: m.segment,
            reason: m.reason.into(),
        }
    }
}

impl From<w::Action> for Action {
    fn from(a: w::Action) -> Self {
        match a {
            w::Action::MoveToStage(m) => Action::MoveToStage {
                stage: m.stage,
                reason: m.reason.into(),
            },
            w::Action::AddTag(t) => Action::AddTag(t),
            w::Action::RemoveTag(t) => Action::RemoveTag(t),
            w::Action::SetField(f) => Action::SetField {
                key: f.key,
                value: match f.value {
                    w::Value::Text(s) => FieldValue::Text(s),
                    w::Value::Number(n) => FieldValue::Number(n),
                    w::Value::Boolean(b) => FieldValue::Boolean(b),
                    w::Value::Time(t) => FieldValue::Time(t),
                },
            },
            w::Action::ScheduleFollowUp(f) => Action::ScheduleFollowUp {
                due_in_hours: f.due_in_hours,
                note: f.note,
            },
        }
    }
}

impl From<w::Manifest> for Manifest {
    fn from(m: w::Manifest) -> Self {
        Manifest {
            name: m.name,
            version: m.version,
            description: m.description,
            scoring: m.capabilities.contains(w::Capabilities::SCORING),
            segmentation: m.capabilities.contains(w::Capabilities::SEGMENTATION),
            lifecycle: m.capabilities.contains(w::Capabilities::LIFECYCLE),
            reads: Reads {
                tags: m.reads.contains(w::Reads::TAGS),
                segments: m.reads.contains(w::Reads::SEGMENTS),
                fields: m.reads.contains(w::Reads::FIELDS),
                events: m.reads.contains(w::Reads::EVENTS),
            },
            stages: m
                .stages
                .into_iter()
                .map(|s| Stage {
                    id: s.id,
                    label: s.label,
                    label_zh: s.label_zh,
                    rank: s.rank,
                })
                .collect(),
            segments: m
                .segments
                .into_iter()
                .map(|s| SegmentDef {
                    id: s.id,
                    label: s.label,
                })
                .collect(),
            reasons: m
                .reasons
                .into_iter()
                .map(|r| ReasonText {
                    code: r.code,
                    en: r.en,
                    zh: r.zh,
                })
                .collect(),
            rules_schema: m.rules_schema,
            default_rules: m.default_rules,
            wants_fields: m.wants_fields,
        }
    }
}
