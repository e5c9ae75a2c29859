//! # stagecraft-plugin: write a Stagecraft plugin in a page of Rust
//!
//! A Stagecraft plugin is a WebAssembly component that scores customers, puts them in
//! segments and moves them between lifecycle stages for one industry. This crate hides
//! the generated component bindings: you implement [`Plugin`] — only the methods your
//! pack needs, the rest have defaults — and call [`register_plugin!`] once.
//!
//! ```
//! use stagecraft_plugin::*;
//!
//! #[derive(serde::Deserialize)]
//! struct BigSpenders { threshold_cents: i64 }
//!
//! impl Plugin for BigSpenders {
//!     fn describe() -> Manifest {
//!         Manifest::new("big-spenders", "0.1.0", "Flags customers who spend a lot")
//!             .scoring()
//!             .reason("spend", "spent {0} cents, threshold {1}", Some("消费 {0} 分，门槛 {1}"))
//!             .default_rules(r#"{"threshold_cents": 10000}"#)
//!     }
//!     fn configure(rules: &str) -> Result<Self, PluginError> {
//!         rules::parse(rules)
//!     }
//!     fn score(&self, _ctx: &Context, c: &Customer) -> Result<Score, PluginError> {
//!         let spend = c.metrics.total_spend_cents;
//!         let value = if spend >= self.threshold_cents { 1.0 } else { 0.0 };
//!         Ok(Score::new(value).reason(Reason::new("spend", value).args([spend as f64, self.threshold_cents as f64])))
//!     }
//! }
//!
//! register_plugin!(BigSpenders);
//!
//! // Plugins are plain Rust natively, so `cargo test` tests them directly:
//! let p = BigSpenders::configure(r#"{"threshold_cents": 100}"#).unwrap();
//! let c = Customer { id: "c1", metrics: Metrics { total_spend_cents: 500, ..Default::default() }, ..Default::default() };
//! assert_eq!(p.score(&testing::context(0), &c).unwrap().value, 1.0);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm` under
//! `target/wasm32-wasip2/release/` is the component to upload.
//!
//! Rules of the sandbox: you get `ctx.now` and the data in the snapshot, nothing
//! else — no clock, randomness, files, network or environment. Whatever you return
//! is a proposal the host checks: stage ids must be in your manifest, tags are
//! lower-case `[a-z0-9:_-]` up to 64 characters, and sizes are bounded.

pub mod snapshot;

/// `#[derive(JsonSchema)]` for rule-set types (see [`Manifest::rules_schema_of`]).
pub use schemars::{self, JsonSchema};

pub use snapshot::{Customer, Event, Fields, Metrics, Timestamp, Value, DAY_MS};

use std::borrow::Cow;

/// What the host tells the plugin about a call.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The moment of evaluation; use it instead of a clock.
    pub now: Timestamp,
    /// The tenant the plugin runs for.
    pub tenant: &'a str,
}

/// An error a plugin returns instead of a result.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginError {
    /// The customer or event cannot be evaluated.
    BadInput(String),
    /// The rule set is invalid.
    BadRules(String),
    /// Anything else.
    Failed(String),
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginError::BadInput(m) => write!(f, "bad input: {m}"),
            PluginError::BadRules(m) => write!(f, "bad rules: {m}"),
            PluginError::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

impl std::error::Error for PluginError {}

/// Why a score or a move is what it is. `code` names an entry of the manifest's
/// reason catalogue, whose text the host renders with `args` in place of `{0}`, `{1}`...
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    pub code: Cow<'static, str>,
    pub points: f64,
    pub args: Vec<f64>,
}

impl Reason {
    pub fn new(code: impl Into<Cow<'static, str>>, points: f64) -> Self {
        Reason {
            code: code.into(),
            points,
            args: Vec::new(),
        }
    }
    /// The numbers the reason's text refers to as `{0}`, `{1}`...
    pub fn args(mut self, args: impl IntoIterator<Item = f64>) -> Self {
        self.args = args.into_iter().collect();
        self
    }
}

/// A score for one customer.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub value: f64,
    pub band: Option<Cow<'static, str>>,
    pub reasons: Vec<Reason>,
}

impl Score {
    pub fn new(value: f64) -> Self {
        Score {
            value,
            band: None,
            reasons: Vec::new(),
        }
    }
    pub fn band(mut self, band: impl Into<Cow<'static, str>>) -> Self {
        self.band = Some(band.into());
        self
    }
    pub fn reason(mut self, r: Reason) -> Self {
        self.reasons.push(r);
        self
    }
}

/// A segment a customer belongs to, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub segment: Cow<'static, str>,
    pub reason: Reason,
}

impl Membership {
    pub fn new(segment: impl Into<Cow<'static, str>>, reason: Reason) -> Self {
        Membership {
            segment: segment.into(),
            reason,
        }
    }
}

/// A value a plugin sets on a customer field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Text(String),
    Number(f64),
    Boolean(bool),
    Time(Timestamp),
}

/// A change a plugin proposes.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    MoveToStage {
        stage: Cow<'static, str>,
        reason: Reason,
    },
    AddTag(Cow<'static, str>),
    RemoveTag(Cow<'static, str>),
    SetField {
        key: Cow<'static, str>,
        value: FieldValue,
    },
    /// A follow-up due `due_in_hours` after `ctx.now`; each one is new.
    /// Prefer [`Action::FollowUp`], which has a key.
    ScheduleFollowUp {
        due_in_hours: u32,
        note: String,
    },
    /// Opens the follow-up `key` for staff, due at `due` (derive it from
    /// `ctx.now`); while it is open, proposing it again updates it instead of
    /// adding a second one. `key` is `[a-z0-9_.:-]`, 1-64 bytes.
    FollowUp {
        key: Cow<'static, str>,
        due: Timestamp,
        note: String,
    },
    /// Closes this plugin's open follow-up `key`, if there is one (say, when
    /// the customer came back on their own).
    CloseFollowUp(Cow<'static, str>),
    /// Asks to be woken for this customer at a time: [`Plugin::on_wake`] is
    /// called then. One pending wake per customer: a later request replaces
    /// it, `None` cancels it. At most two years after `ctx.now`; a time at or
    /// before it is due at once.
    WakeAt(Option<Timestamp>),
}

/// A lifecycle stage of the plugin's stage graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub id: &'static str,
    pub label: &'static str,
    pub label_zh: Option<&'static str>,
    pub rank: u32,
}

/// A segment the plugin may assign.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentDef {
    pub id: &'static str,
    pub label: &'static str,
}

/// The text of a reason code.
#[derive(Debug, Clone, PartialEq)]
pub struct ReasonText {
    pub code: &'static str,
    pub en: &'static str,
    pub zh: Option<&'static str>,
}

/// Which optional parts of a customer the plugin reads.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reads {
    pub tags: bool,
    pub segments: bool,
    pub fields: bool,
    pub events: bool,
}

/// A plugin's self-description. Build it with the chained methods.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
    pub scoring: bool,
    pub segmentation: bool,
    pub lifecycle: bool,
    pub reads: Reads,
    pub stages: Vec<Stage>,
    pub segments: Vec<SegmentDef>,
    pub reasons: Vec<ReasonText>,
    /// JSON Schema of the rule set: derive it from the rules struct with
    /// [`Manifest::rules_schema_of`], so the two cannot drift apart.
    pub rules_schema: Option<String>,
    pub default_rules: &'static str,
    pub wants_fields: Vec<&'static str>,
}

impl Manifest {
    pub fn new(name: &'static str, version: &'static str, description: &'static str) -> Self {
        Manifest {
            name,
            version,
            description,
            scoring: false,
            segmentation: false,
            lifecycle: false,
            reads: Reads::default(),
            stages: Vec::new(),
            segments: Vec::new(),
            reasons: Vec::new(),
            rules_schema: None,
            default_rules: "{}",
            wants_fields: Vec::new(),
        }
    }
    /// The plugin implements `score`.
    pub fn scoring(mut self) -> Self {
        self.scoring = true;
        self
    }
    /// The plugin implements `segment`; declare its segments with [`Manifest::segment`].
    pub fn segmentation(mut self) -> Self {
        self.segmentation = true;
        self
    }
    /// The plugin owns a stage graph; declare it with [`Manifest::stage`].
    pub fn lifecycle(mut self) -> Self {
        self.lifecycle = true;
        self
    }
    pub fn reads(mut self, reads: Reads) -> Self {
        self.reads = reads;
        self
    }
    pub fn stage(
        mut self,
        id: &'static str,
        label: &'static str,
        label_zh: Option<&'static str>,
        rank: u32,
    ) -> Self {
        self.stages.push(Stage {
            id,
            label,
            label_zh,
            rank,
        });
        self
    }
    pub fn segment(mut self, id: &'static str, label: &'static str) -> Self {
        self.segments.push(SegmentDef { id, label });
        self
    }
    /// Adds a reason code with its English text and optionally its Chinese text.
    pub fn reason(
        mut self,
        code: &'static str,
        en: &'static str,
        zh: Option<&'static str>,
    ) -> Self {
        self.reasons.push(ReasonText { code, en, zh });
        self
    }
    /// The rule set's JSON Schema, derived from the type `configure` reads
    /// (`#[derive(Deserialize, JsonSchema)]`): required fields, unknown fields
    /// refused, ranges from `#[schemars(range(min = ..))]`, doc comments as
    /// descriptions.
    pub fn rules_schema_of<T: schemars::JsonSchema>(mut self) -> Self {
        let schema = schemars::schema_for!(T);
        self.rules_schema = Some(serde_json::to_string(&schema).expect("a schema serialises"));
        self
    }

    /// The rule set's JSON Schema, written by hand.
    pub fn rules_schema(mut self, schema: impl Into<String>) -> Self {
        self.rules_schema = Some(schema.into());
        self
    }
    pub fn default_rules(mut self, rules: &'static str) -> Self {
        self.default_rules = rules;
        self
    }
    pub fn wants_field(mut self, key: &'static str) -> Self {
        self.wants_fields.push(key);
        self
    }
}

/// A Stagecraft plugin. Implement what your pack does; the defaults do nothing.
///
/// A fresh instance is created for every batch or event, so `configure` runs before
/// the calls and state never leaks from one call (or tenant) to the next.
pub trait Plugin: Sized + 'static {
    /// Describes the plugin: name, version, stages, segments, reason texts, rules.
    fn describe() -> Manifest;

    /// Builds the plugin from its JSON rule set; reject nonsense with `BadRules`.
    fn configure(rules: &str) -> Result<Self, PluginError>;

    /// Scores one customer.
    fn score(&self, _ctx: &Context, _customer: &Customer) -> Result<Score, PluginError> {
        Err(PluginError::Failed("this plugin does not score".into()))
    }

    /// The segments one customer belongs to.
    fn segment(
        &self,
        _ctx: &Context,
        _customer: &Customer,
    ) -> Result<Vec<Membership>, PluginError> {
        Ok(Vec::new())
    }

    /// Reacts to an event just recorded for the customer.
    fn on_event(
        &self,
        _ctx: &Context,
        _customer: &Customer,
        _event: &Event,
    ) -> Result<Vec<Action>, PluginError> {
        Ok(Vec::new())
    }

    /// Called when a wake this plugin asked for ([`Action::WakeAt`]) is due:
    /// no event happened, time passed. `ctx.now` is the time the wake was due.
    /// The host scores and segments the customer afterwards, as after an event.
    fn on_wake(&self, _ctx: &Context, _customer: &Customer) -> Result<Vec<Action>, PluginError> {
        Ok(Vec::new())
    }

    /// Builds the plugin from the manifest's default rules.
    fn with_default_rules() -> Result<Self, PluginError> {
        Self::configure(Self::describe().default_rules)
    }
}

/// How a reason's text is rendered from its template: the host renders what
/// customers and staff see with this very function, and
/// [`testing::render`] lets a pack's tests see the same.
pub mod render {
    /// `template` with `{0}`, `{1}`... replaced by `args` and `{points}` by
    /// `points`, in one pass; a placeholder with no value stays as written.
    pub fn template(template: &str, points: f64, args: &[f64]) -> String {
        let mut out = String::with_capacity(template.len() + 16);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                out.push_str(&rest[open..]);
                return out;
            };
            let key = &after[..close];
            let value = if key == "points" {
                Some(points)
            } else {
                key.parse::<usize>().ok().and_then(|i| args.get(i).copied())
            };
            match value {
                Some(v) => out.push_str(&number(v)),
                None => {
                    out.push('{');
                    out.push_str(key);
                    out.push('}');
                }
            }
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        out
    }

    /// Whole numbers print without decimals, others with two.
    pub fn number(x: f64) -> String {
        if x.fract() == 0.0 && x.abs() < 1e15 {
            format!("{}", x as i64)
        } else {
            format!("{x:.2}")
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn placeholders() {
            assert_eq!(
                super::template("{0} orders, {points} pts", 2.5, &[3.0]),
                "3 orders, 2.50 pts"
            );
            assert_eq!(super::template("{1} {x} {", 0.0, &[1.0]), "{1} {x} {");
        }
    }
}

/// Rule-set helpers.
pub mod rules {
    use super::PluginError;

    /// Parses a JSON rule set into `T`, turning serde's message into `BadRules`.
    pub fn parse<T: serde::de::DeserializeOwned>(rules: &str) -> Result<T, PluginError> {
        serde_json::from_str(rules).map_err(|e| PluginError::BadRules(e.to_string()))
    }

    /// Fails with `BadRules(message)` unless `ok`.
    pub fn ensure(ok: bool, message: impl Into<String>) -> Result<(), PluginError> {
        if ok {
            Ok(())
        } else {
            Err(PluginError::BadRules(message.into()))
        }
    }
}

/// Writes to the host's log (natively: to stderr).
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use __private::wit::stagecraft::plugin::host::{log, Level};
        let level = match level {
            LogLevel::Debug => Level::Debug,
            LogLevel::Info => Level::Info,
            LogLevel::Warn => Level::Warn,
            LogLevel::Error => Level::Error,
        };
        log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// Helpers for testing plugins natively with `cargo test`.
pub mod testing {
    use super::*;

    /// A context at `now` for the tenant `test`.
    pub fn context(now: Timestamp) -> Context<'static> {
        Context {
            now,
            tenant: "test",
        }
    }

    /// Renders a reason with the manifest's English text, as the host would.
    pub fn render(manifest: &Manifest, reason: &Reason) -> String {
        let text = manifest
            .reasons
            .iter()
            .find(|r| r.code == reason.code)
            .map(|r| r.en)
            .unwrap_or_else(|| panic!("reason code {:?} is not in the manifest", reason.code));
        render_template(text, reason)
    }

    /// Replaces `{0}`, `{1}`... and `{points}` in `template`.
    pub fn render_template(template: &str, reason: &Reason) -> String {
        crate::render::template(template, reason.points, &reason.args)
    }

    /// Checks what the host checks of a manifest: every reason code a score uses is
    /// declared. Call it from your tests on representative outputs.
    pub fn assert_reasons_declared(manifest: &Manifest, reasons: &[Reason]) {
        for r in reasons {
            assert!(
                manifest.reasons.iter().any(|t| t.code == r.code),
                "reason code {:?} is not declared in the manifest",
                r.code
            );
        }
    }
}

/// Registers `$plugin` (a type implementing [`Plugin`]) as the component's export.
/// Natively it expands to nothing, so the same crate is unit-testable with `cargo test`.
#[macro_export]
macro_rules! register_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __StagecraftExport = $crate::__private::Adapter<$plugin>;
            $crate::__private::wit::__export_stagecraft_plugin!(__StagecraftExport with_types_in $crate::__private::wit);
        };
    };
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __private;
