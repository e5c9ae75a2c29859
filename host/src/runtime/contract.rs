//! The contract versions this host runs, and the only place generated bindings
//! live. Each released version's WIT is kept under `wit/<version>/`; each gets a
//! `bindgen!` module here whose types are converted to the domain's at once, so
//! the rest of the host never sees a generated type and never asks which
//! version a plugin targets.
//!
//! A component says which version it implements by the name of its export
//! (`stagecraft:plugin/pack@0.1.0` or `@0.2.0`); [`Version::of_exports`] picks
//! the bindings by it. The linker carries the `host` interface of every version,
//! so a 0.1.0 component stored years ago instantiates exactly as it did.
//!
//! Adding a version: copy the newest `wit/<v>/` to a new folder and change it,
//! add a module below with its `bindgen!`, a [`Version`] variant, and the arms
//! of [`Pre`] and [`Bindings`]; conversions shared by every version come from
//! the `conversions!` macro.

use super::sandbox::PluginState;
use crate::domain::plugin::{
    Action, FieldValue, Level, Manifest, Membership, PluginError, Reads, Reason, ReasonText, Score,
    SegmentDef, Stage,
};
use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::Store;

/// A contract version the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_1,
    V0_2,
}

impl Version {
    /// Every version, oldest first.
    pub const ALL: [Version; 2] = [Version::V0_1, Version::V0_2];

    /// `0.1.0`, `0.2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_1 => "0.1.0",
            Version::V0_2 => "0.2.0",
        }
    }

    /// The interface a plugin of this version exports.
    pub fn pack_export(self) -> String {
        format!("stagecraft:plugin/pack@{}", self.as_str())
    }

    /// The interfaces of this version a plugin may import.
    pub fn imports(self) -> [String; 2] {
        [
            format!("stagecraft:plugin/host@{}", self.as_str()),
            format!("stagecraft:plugin/types@{}", self.as_str()),
        ]
    }

    /// The version whose `pack` a component exports (the newest, should it
    /// export several).
    pub fn of_exports<'a>(exports: impl IntoIterator<Item = &'a str> + Clone) -> Option<Version> {
        Version::ALL
            .into_iter()
            .rev()
            .find(|v| exports.clone().into_iter().any(|e| e == v.pack_export()))
    }

    /// `stagecraft:plugin/pack@0.1.0 or @0.2.0`, for messages.
    pub fn expected() -> String {
        let versions: Vec<String> = Version::ALL
            .iter()
            .map(|v| format!("@{}", v.as_str()))
            .collect();
        format!("stagecraft:plugin/pack{}", versions.join(" or "))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "plugin",
    });
}

pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/0.2.0",
        world: "plugin",
    });
}

/// Adds the `host` interface of every version to the linker.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    v0_1::Plugin::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |s| s)?;
    v0_2::Plugin::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |s| s)?;
    Ok(())
}

/// A component's imports resolved and type-checked against its version.
#[derive(Clone)]
pub enum Pre {
    V0_1(v0_1::PluginPre<PluginState>),
    V0_2(v0_2::PluginPre<PluginState>),
}

impl Pre {
    pub fn new(version: Version, pre: InstancePre<PluginState>) -> wasmtime::Result<Pre> {
        Ok(match version {
            Version::V0_1 => Pre::V0_1(v0_1::PluginPre::new(pre)?),
            Version::V0_2 => Pre::V0_2(v0_2::PluginPre::new(pre)?),
        })
    }

    pub fn instantiate(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Pre::V0_1(p) => Bindings::V0_1(p.instantiate(store)?),
            Pre::V0_2(p) => Bindings::V0_2(p.instantiate(store)?),
        })
    }
}

/// An instance's exports, whatever its version, speaking domain types.
pub enum Bindings {
    V0_1(v0_1::Plugin),
    V0_2(v0_2::Plugin),
}

/// A call's result: the outer error is the sandbox's (a trap, a deadline), the
/// inner one the plugin's own.
pub type Called<T> = wasmtime::Result<Result<T, PluginError>>;

/// Runs the same call on whichever version's bindings, converting what it
/// returns (`$conv` gets the version's types module as `w`).
macro_rules! on_version {
    ($self:expr, |$p:ident, $w:ident| $call:expr) => {
        match $self {
            Bindings::V0_1($p) => {
                #[allow(unused_imports)]
                use v0_1::stagecraft::plugin::types as $w;
                let $p = $p.stagecraft_plugin_pack();
                $call
            }
            Bindings::V0_2($p) => {
                #[allow(unused_imports)]
                use v0_2::stagecraft::plugin::types as $w;
                let $p = $p.stagecraft_plugin_pack();
                $call
            }
        }
    };
}

impl Bindings {
    pub fn describe(&self, st: &mut Store<PluginState>) -> wasmtime::Result<Manifest> {
        on_version!(self, |p, w| Ok(p.call_describe(st)?.into()))
    }

    pub fn configure(&self, st: &mut Store<PluginState>, rules: &str) -> Called<()> {
        on_version!(self, |p, w| Ok(p
            .call_configure(st, rules)?
            .map_err(Into::into)))
    }

    // The generated bindings take `&Vec<u8>` for `list<u8>`.
    #[allow(clippy::ptr_arg)]
    pub fn score(
        &self,
        st: &mut Store<PluginState>,
        now: i64,
        tenant: &str,
        batch: &Vec<u8>,
    ) -> Called<Vec<Result<Score, PluginError>>> {
        on_version!(self, |p, w| {
            let ctx = w::Context {
                now,
                tenant: tenant.to_string(),
            };
            Ok(p.call_score(st, &ctx, batch)?.map_err(Into::into).map(|v| {
                v.into_iter()
                    .map(|r| r.map(Into::into).map_err(Into::into))
                    .collect()
            }))
        })
    }

    #[allow(clippy::ptr_arg)]
    pub fn segment(
        &self,
        st: &mut Store<PluginState>,
        now: i64,
        tenant: &str,
        batch: &Vec<u8>,
    ) -> Called<Vec<Result<Vec<Membership>, PluginError>>> {
        on_version!(self, |p, w| {
            let ctx = w::Context {
                now,
                tenant: tenant.to_string(),
            };
            Ok(p.call_segment(st, &ctx, batch)?
                .map_err(Into::into)
                .map(|v| {
                    v.into_iter()
                        .map(|r| {
                            r.map(|ms| ms.into_iter().map(Into::into).collect())
                                .map_err(Into::into)
                        })
                        .collect()
                }))
        })
    }

    #[allow(clippy::ptr_arg)]
    pub fn on_event(
        &self,
        st: &mut Store<PluginState>,
        now: i64,
        tenant: &str,
        customer: &Vec<u8>,
        event: &Vec<u8>,
    ) -> Called<Vec<Action>> {
        on_version!(self, |p, w| {
            let ctx = w::Context {
                now,
                tenant: tenant.to_string(),
            };
            Ok(p.call_on_event(st, &ctx, customer, event)?
                .map_err(Into::into)
                .map(|v| v.into_iter().map(Into::into).collect()))
        })
    }

    /// `on-wake`, from 0.2.0. A 0.1.0 plugin cannot ask for a wake, so it is
    /// never woken; if it were, it would have nothing to say.
    #[allow(clippy::ptr_arg)]
    pub fn on_wake(
        &self,
        st: &mut Store<PluginState>,
        now: i64,
        tenant: &str,
        customer: &Vec<u8>,
    ) -> Called<Vec<Action>> {
        match self {
            Bindings::V0_1(_) => Ok(Ok(Vec::new())),
            Bindings::V0_2(p) => {
                use v0_2::stagecraft::plugin::types as w;
                let ctx = w::Context {
                    now,
                    tenant: tenant.to_string(),
                };
                Ok(p.stagecraft_plugin_pack()
                    .call_on_wake(st, &ctx, customer)?
                    .map_err(Into::into)
                    .map(|v| v.into_iter().map(Into::into).collect()))
            }
        }
    }
}

/// The conversions every version shares (its types module as `$w`, its host
/// interface as `$h`).
macro_rules! conversions {
    ($w:path, $h:path) => {
        use $w as w;
        use $h as h;

        impl From<h::Level> for Level {
            fn from(l: h::Level) -> Self {
                match l {
                    h::Level::Debug => Level::Debug,
                    h::Level::Info => Level::Info,
                    h::Level::Warn => Level::Warn,
                    h::Level::Error => Level::Error,
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

        impl From<w::Value> for FieldValue {
            fn from(v: w::Value) -> Self {
                match v {
                    w::Value::Text(s) => FieldValue::Text(s),
                    w::Value::Number(n) => FieldValue::Number(n),
                    w::Value::Boolean(b) => FieldValue::Boolean(b),
                    w::Value::Time(t) => FieldValue::Time(t),
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
    };
}

/// `From<w::Action>` for a version's `w`: the variants every version has, and
/// the version's own (`$extra` match arms).
macro_rules! action_conversion {
    ($($extra:tt)*) => {
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
                        value: f.value.into(),
                    },
                    w::Action::ScheduleFollowUp(f) => Action::ScheduleFollowUp {
                        due_in_hours: f.due_in_hours,
                        note: f.note,
                    },
                    $($extra)*
                }
            }
        }
    };
}

mod v0_1_conversions {
    use super::*;
    conversions!(
        super::v0_1::stagecraft::plugin::types,
        super::v0_1::stagecraft::plugin::host
    );
    action_conversion!();
}

mod v0_2_conversions {
    use super::*;
    conversions!(
        super::v0_2::stagecraft::plugin::types,
        super::v0_2::stagecraft::plugin::host
    );
    action_conversion!(
        w::Action::FollowUp(f) => Action::FollowUp {
            key: f.key,
            due: f.due,
            note: f.note,
        },
        w::Action::CloseFollowUp(key) => Action::CloseFollowUp { key },
        w::Action::WakeAt(at) => Action::WakeAt { at },
    );
}
