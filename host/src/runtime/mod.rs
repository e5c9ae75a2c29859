//! # The plugin runtime
//!
//! Loads Stagecraft plugins (WebAssembly components of the `stagecraft:plugin/plugin`
//! world, see `wit/plugin.wit`) and calls them inside a sandbox. It knows wasmtime
//! and nothing of SQL or HTTP.
//!
//! ```no_run
//! use stagecraft::runtime::{CallContext, Limits, Runtime};
//! use stagecraft_plugin::{Customer, Metrics};
//!
//! let runtime = Runtime::new(Limits::default(), Some(".stagecraft/cache".into()))?;
//! let plugin = runtime.load(&std::fs::read("value_tiers.wasm")?)?;
//! println!("{} {}", plugin.manifest().name, plugin.manifest().version);
//!
//! let customers = vec![Customer { id: "c1", metrics: Metrics { orders: 3, ..Default::default() }, ..Default::default() }];
//! let ctx = CallContext { now: 1_700_000_000_000, tenant: "acme".into() };
//! let mut session = plugin.session(&ctx, None)?;   // fresh instance, default rules
//! for score in session.score(&ctx, &customers)? {
//!     println!("{score:?}");
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## How it is built, and why
//! - **One [`wasmtime::Engine`]** with the pooling allocator: instance slots are
//!   reserved up front, so a fresh instance costs a few microseconds. Every batch
//!   or event gets a **fresh instance** ([`LoadedPlugin::session`]); nothing a
//!   plugin keeps in memory survives to the next request or tenant.
//! - **Compile once:** a component is compiled once per sha256 and cached on disk
//!   ([`cache`]); its `InstancePre` (imports resolved and type-checked) is kept in
//!   the [`LoadedPlugin`] and reused for every instance.
//! - **Deadlines:** epoch interruption with a background ticker; each call gets
//!   [`Limits::call_deadline`]. A plugin that loops forever traps with
//!   [`RuntimeError::Deadline`]. Optional fuel ([`Limits::fuel`]) gives a budget that
//!   does not depend on machine load, for when dry-runs must match live runs exactly.
//! - **Memory:** a [`sandbox::MemoryCap`] limiter refuses growth past
//!   [`Limits::memory_bytes`]; the call fails with [`RuntimeError::MemoryLimit`].
//! - **Imports:** only our `host` interface and the WASI interfaces a Rust guest
//!   links by default, wired to an empty, deterministic context ([`sandbox`]).
//!   Anything else (sockets, HTTP, ...) is refused at load, naming the import.
//! - **Bindings:** [`bindings`] is the one `bindgen!` site; the rest of the host sees
//!   the domain types of [`types`].
//! - **Outputs are proposals:** results are checked against the manifest (declared
//!   reason codes, segments, stages) and size bounds before anyone sees them.
//! - **Budgets for what the author controls** ([`budget`], [`schema`]): the code
//!   is measured by parsing before anything is compiled, and one component is
//!   compiled at a time; the manifest's counts, lengths and texts are bounded; the
//!   rules schema is checked and compiled once, without recursion or backtracking
//!   regexes; text a plugin returns carries no control characters; messages are
//!   cleaned and cut. Nothing of a refused component is kept, in memory or on disk:
//!   its compiled code is cached only when [`LoadedPlugin::keep_compiled`] says so.

pub mod budget;
pub mod cache;
pub mod contract;
pub mod sandbox;
pub mod schema;

pub use crate::domain::plugin::*;
pub use crate::domain::text::{is_reason_code, is_slug, is_valid_tag};
pub use contract::Version;

use contract::{Bindings, Pre};
use sandbox::PluginState;
use stagecraft_plugin::snapshot::{self, Customer, Event};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

/// How often the epoch ticker advances; deadlines are rounded up to it.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Bounds on what a plugin may return, so that a hostile plugin cannot flood the host.
pub const MAX_REASONS: usize = 32;
pub const MAX_MEMBERSHIPS: usize = 64;
pub const MAX_ACTIONS: usize = 64;
pub use crate::domain::text::MAX_TAG;
pub use crate::domain::MAX_TEXT;

/// Limits applied to every plugin call.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock budget of one call (a whole batch counts as one call).
    pub call_deadline: Duration,
    /// Linear memory an instance may grow to.
    pub memory_bytes: usize,
    /// Optional instruction budget per call (deterministic, unlike the deadline).
    pub fuel: Option<u64>,
    /// Instances that may exist at once (pooling allocator slots).
    pub max_instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_deadline: Duration::from_secs(2),
            memory_bytes: 64 << 20,
            fuel: None,
            max_instances: 256,
        }
    }
}

/// What can go wrong loading or calling a plugin.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("not a WebAssembly binary: the file does not start with the wasm magic bytes")]
    NotWasm,
    #[error("a core WebAssembly module, not a component: build the plugin for wasm32-wasip2")]
    NotComponent,
    #[error("not a Stagecraft plugin: it does not export {} (it exports: {})", Version::expected(), .0)]
    WrongWorld(String),
    #[error("imports {0}, which Stagecraft does not grant to plugins")]
    ForbiddenImport(String),
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error("the component's code is over the budget: {0}")]
    TooBig(String),
    #[error("invalid manifest: {0}")]
    BadManifest(String),
    #[error("plugin {plugin} trapped: {message}")]
    Trap { plugin: String, message: String },
    #[error("plugin {plugin} went over its time budget of {budget_ms} ms")]
    Deadline { plugin: String, budget_ms: u128 },
    #[error("plugin {plugin} went over its memory cap of {cap_mib} MiB")]
    MemoryLimit { plugin: String, cap_mib: usize },
    #[error("plugin {plugin}: {error}")]
    Plugin { plugin: String, error: PluginError },
    #[error("plugin {plugin} returned an invalid result: {message}")]
    BadOutput { plugin: String, message: String },
    #[error("plugin {plugin} cannot be called again after a failure in this instance")]
    Poisoned { plugin: String },
    #[error("all plugin instance slots are in use ({0}); try again shortly")]
    Busy(u32),
    #[error("could not encode the customer snapshot: {0}")]
    Snapshot(String),
    #[error("engine: {0}")]
    Engine(String),
}

impl RuntimeError {
    /// Whether the plugin misbehaved (as opposed to being rejected at load).
    #[cfg(any(test, feature = "test-support"))]
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            RuntimeError::Trap { .. }
                | RuntimeError::Deadline { .. }
                | RuntimeError::MemoryLimit { .. }
                | RuntimeError::BadOutput { .. }
                | RuntimeError::Poisoned { .. }
        )
    }
}

/// The inputs of a call that do not come from the customer.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// Evaluation time, ms since the Unix epoch. The plugin's only clock.
    pub now: i64,
    pub tenant: String,
}

struct Inner {
    engine: Engine,
    linker: Linker<PluginState>,
    limits: Limits,
    cache: Option<cache::ComponentCache>,
    /// Compiling is the one step whose time and memory the author's code decides;
    /// one at a time, so that concurrent uploads cannot multiply it.
    compiling: std::sync::Mutex<()>,
    stop_ticker: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    /// Stops the ticker and waits for it, so that its clone of the engine is gone
    /// and the engine (with the instance pool, which keeps components' code and
    /// memory images mapped) is released here, when the runtime is, and not a
    /// tick later on the ticker's thread. A test that replaced a cached file after
    /// dropping its runtime was faulted (SIGBUS) by that late release.
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The plugin runtime: an engine, a linker with the granted imports, limits and a
/// cache. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl Runtime {
    /// Builds the engine. `cache_dir` keeps compiled components across restarts.
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> Result<Self, RuntimeError> {
        let engine_err = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(limits.max_instances)
            .total_core_instances(limits.max_instances * 16)
            .total_memories(limits.max_instances * 2)
            .total_tables(limits.max_instances * 4)
            .total_stacks(limits.max_instances)
            .max_memory_size(limits.memory_bytes)
            // A Rust plugin has a handful of core instances; a Python one built with
            // componentize-py has ~40 (the interpreter and its shims).
            .max_core_instances_per_component(64)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            // Reset a freed slot in place instead of handing its pages back to the
            // kernel: PAGEMAP_SCAN (Linux 6.7+) finds the pages the instance wrote
            // and zeroes only those, up to the bound below, so the next instance in
            // the slot takes no page faults. Without it (`Auto`: older kernels) the
            // first 2 MiB are zeroed whole, slower than faulting (BENCHMARKS.md). A fresh configured instance went from 24.4 to 7.9 µs with these
            // four settings (BENCHMARKS.md). The price is RSS: a slot that was used
            // keeps up to 2 MiB of memory and 64 KiB of tables resident.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            // What is not kept is returned in batches, one madvise for many slots.
            .decommit_batch_size(16);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            // Plugins are synchronous; skipping the component-model-async machinery
            // makes every call cheaper (measured ~1 µs → ~0.3 µs for an empty call).
            .concurrency_support(false)
            .epoch_interruption(true)
            .consume_fuel(limits.fuel.is_some())
            .max_wasm_stack(512 * 1024)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(engine_err)?;

        let mut linker = Linker::<PluginState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_err)?;
        contract::add_to_linker(&mut linker).map_err(engine_err)?;

        let cache = match cache_dir {
            Some(dir) => Some(
                cache::ComponentCache::new(dir, &engine)
                    .map_err(|e| RuntimeError::Engine(format!("compiled-component cache: {e}")))?,
            ),
            None => None,
        };

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop_ticker.clone();
            std::thread::Builder::new()
                .name("stagecraft-epoch".into())
                .spawn(move || {
                    // Parked rather than asleep, so that dropping the runtime wakes
                    // it; a park may end early, so a tick waits out its full length.
                    while !stop.load(Ordering::Relaxed) {
                        let tick = Instant::now() + EPOCH_TICK;
                        while let Some(left) = tick.checked_duration_since(Instant::now()) {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            std::thread::park_timeout(left);
                        }
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| RuntimeError::Engine(format!("epoch ticker: {e}")))?
        };
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                linker,
                limits,
                cache,
                compiling: std::sync::Mutex::new(()),
                stop_ticker,
                ticker: Some(ticker),
            }),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Checks, compiles (or takes from the cache) and describes a plugin.
    ///
    /// Rejected, each with a message naming the problem: bytes that are not wasm, a
    /// core module, code over the [`budget`], a component that does not export our
    /// `pack` interface (another world), one that imports anything not granted, one
    /// whose manifest is invalid or over its budget, whose rules schema is unusable,
    /// or whose own default rules its schema or its `configure` refuses.
    ///
    /// The compiled code is not written to the on-disk cache here: a caller that
    /// keeps the plugin says so with [`LoadedPlugin::keep_compiled`].
    pub fn load(&self, bytes: &[u8]) -> Result<LoadedPlugin, RuntimeError> {
        check_binary(bytes)?;
        budget::check_code(bytes)?;
        let digest = cache::digest(bytes);
        let engine = &self.inner.engine;
        let (component, cached) = match self
            .inner
            .cache
            .as_ref()
            .and_then(|c| c.get(engine, &digest))
        {
            Some(c) => (c, true),
            None => {
                let _one_at_a_time = self
                    .inner
                    .compiling
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let c = Component::new(engine, bytes)
                    .map_err(|e| RuntimeError::Invalid(format!("{e:#}")))?;
                (c, false)
            }
        };
        let version = check_world(engine, &component)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| RuntimeError::Invalid(format!("{e:#}")))?;
        let pre = Pre::new(version, pre).map_err(|e| {
            RuntimeError::WrongWorld(format!("{} with other types: {e:#}", version.pack_export()))
        })?;

        let mut plugin = LoadedPlugin {
            runtime: self.clone(),
            digest: digest.clone(),
            size: bytes.len(),
            component,
            cached,
            version,
            pre,
            label: Arc::from(format!("sha256:{}", &digest[..12])),
            manifest: None,
            rules_schema: None,
        };
        let ctx = CallContext {
            now: 0,
            tenant: String::new(),
        };
        let manifest: Manifest = {
            let mut s = plugin.instantiate(&ctx)?;
            s.guarded(|b, st| b.describe(st))?
        };
        validate_manifest(&manifest)?;
        let rules_schema = match &manifest.rules_schema {
            Some(text) => Some(Arc::new(
                schema::RulesSchema::compile(text).map_err(RuntimeError::BadManifest)?,
            )),
            None => None,
        };
        if let Some(schema) = &rules_schema {
            let defaults: serde_json::Value = serde_json::from_str(&manifest.default_rules)
                .map_err(|e| RuntimeError::BadManifest(format!("default rules: {e}")))?;
            schema.check(&defaults).map_err(|e| {
                RuntimeError::BadManifest(format!(
                    "the default rules do not fit the plugin's own rules schema: {e}"
                ))
            })?;
        }
        plugin.label = Arc::from(format!("{}@{}", manifest.name, manifest.version));
        plugin.manifest = Some(manifest);
        plugin.rules_schema = rules_schema;
        // A plugin must accept its own default rules, or nobody can enable it.
        plugin.session(&ctx, None).map_err(|e| match e {
            RuntimeError::Plugin { error, .. } => RuntimeError::BadManifest(format!(
                "the plugin rejects its own default rules: {error}"
            )),
            other => other,
        })?;
        Ok(plugin)
    }
}

fn check_binary(bytes: &[u8]) -> Result<(), RuntimeError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(RuntimeError::NotWasm);
    }
    // Bytes 4..8: version (u16) and layer (u16); layer 1 is a component.
    match bytes[6..8] {
        [0, 0] => Err(RuntimeError::NotComponent),
        [1, 0] => Ok(()),
        _ => Err(RuntimeError::Invalid(
            "unknown WebAssembly binary layer".into(),
        )),
    }
}

/// Refuses imports beyond the grant, and finds the contract version whose
/// `pack` the component exports.
fn check_world(engine: &Engine, component: &Component) -> Result<Version, RuntimeError> {
    let ty = component.component_type();
    let forbidden: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .filter(|n| !sandbox::import_allowed(n))
        .collect();
    if !forbidden.is_empty() {
        return Err(RuntimeError::ForbiddenImport(forbidden.join(", ")));
    }
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let Some(version) = Version::of_exports(exports.iter().map(String::as_str)) else {
        let list = if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        };
        return Err(RuntimeError::WrongWorld(list));
    };
    Ok(version)
}

fn validate_manifest(m: &Manifest) -> Result<(), RuntimeError> {
    use crate::domain::text::{label_problem, text_problem};
    use budget::*;
    let bad = |msg: String| Err(RuntimeError::BadManifest(msg));
    if !is_slug(&m.name, 64) {
        return bad(format!(
            "name {:?} must be 1-64 characters of [a-z0-9-_]",
            truncate_for_message(&m.name)
        ));
    }
    let v = &m.version;
    if v.len() > MAX_VERSION || semver::Version::parse(v).is_err() {
        return bad(format!(
            "version {:?} is not a semantic version like 1.2.3 of at most {MAX_VERSION} bytes",
            truncate_for_message(v)
        ));
    }
    if let Some(p) = text_problem(&m.description, MAX_DESCRIPTION) {
        return bad(format!("the description {p}"));
    }
    if !(m.scoring || m.segmentation || m.lifecycle) {
        return bad("declares no capability (scoring, segmentation or lifecycle)".into());
    }
    if m.lifecycle && m.stages.is_empty() {
        return bad("owns the lifecycle but declares no stages".into());
    }
    for (what, n, max) in [
        ("stages", m.stages.len(), MAX_STAGES),
        ("segments", m.segments.len(), MAX_SEGMENT_DEFS),
        ("reason codes", m.reasons.len(), MAX_REASON_TEXTS),
        ("wanted fields", m.wants_fields.len(), MAX_WANTS_FIELDS),
    ] {
        if n > max {
            return bad(format!("{n} {what}, at most {max}"));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for s in &m.stages {
        if !is_slug(&s.id, 64) || !seen.insert(("stage", s.id.as_str())) {
            return bad(format!(
                "stage id {:?} is malformed or repeated",
                truncate_for_message(&s.id)
            ));
        }
        for label in std::iter::once(&s.label).chain(&s.label_zh) {
            if let Some(p) = label_problem(label, MAX_LABEL) {
                return bad(format!("the label of stage {} {p}", s.id));
            }
        }
    }
    for s in &m.segments {
        if !is_slug(&s.id, 64) || !seen.insert(("segment", s.id.as_str())) {
            return bad(format!(
                "segment id {:?} is malformed or repeated",
                truncate_for_message(&s.id)
            ));
        }
        if let Some(p) = label_problem(&s.label, MAX_LABEL) {
            return bad(format!("the label of segment {} {p}", s.id));
        }
    }
    for r in &m.reasons {
        if !is_reason_code(&r.code) || !seen.insert(("reason", r.code.as_str())) {
            return bad(format!(
                "reason code {:?} is malformed (1-64 characters of [a-z0-9_.:-]) or repeated",
                truncate_for_message(&r.code)
            ));
        }
        for t in std::iter::once(&r.en).chain(&r.zh) {
            if let Some(p) = text_problem(t, MAX_TEMPLATE) {
                return bad(format!("the text of reason {} {p}", r.code));
            }
        }
    }
    for f in &m.wants_fields {
        if !is_slug(f, 64) {
            return bad(format!(
                "wanted field {:?} is not 1-64 characters of [a-z0-9_-]",
                truncate_for_message(f)
            ));
        }
    }
    if m.default_rules.len() > MAX_DEFAULT_RULES {
        return bad(format!(
            "default rules are {} bytes, at most {MAX_DEFAULT_RULES}",
            m.default_rules.len()
        ));
    }
    if serde_json::from_str::<serde_json::Value>(&m.default_rules).is_err() {
        return bad("default rules are not valid JSON".into());
    }
    Ok(())
}

/// A checked, compiled plugin, ready to instantiate.
pub struct LoadedPlugin {
    runtime: Runtime,
    digest: String,
    size: usize,
    component: Component,
    /// Whether the compiled code came from (so is already in) the on-disk cache.
    cached: bool,
    /// The contract version the component implements.
    version: Version,
    pre: Pre,
    label: Arc<str>,
    manifest: Option<Manifest>,
    rules_schema: Option<Arc<schema::RulesSchema>>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("label", &self.label)
            .field("digest", &self.digest)
            .finish()
    }
}

impl LoadedPlugin {
    pub fn manifest(&self) -> &Manifest {
        self.manifest
            .as_ref()
            .expect("manifest is set by Runtime::load")
    }
    /// The contract version the component implements (`0.1.0`, `0.2.0`).
    pub fn contract(&self) -> Version {
        self.version
    }
    /// Hex sha256 of the component bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }
    pub fn size(&self) -> usize {
        self.size
    }
    /// `name@version`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Writes the compiled code to the on-disk cache (if the runtime has one), so
    /// that a restart does not compile it again. Called by whoever keeps the plugin
    /// (a stored version); a refused upload never gets here and leaves no file.
    pub fn keep_compiled(&self) {
        if self.cached {
            return;
        }
        if let Some(cache) = &self.runtime.inner.cache {
            if let Err(e) = cache.put(&self.digest, &self.component) {
                tracing::warn!("could not cache compiled component {}: {e:#}", self.digest);
            }
        }
    }

    fn instantiate(&self, ctx: &CallContext) -> Result<Session<'_>, RuntimeError> {
        let limits = &self.runtime.inner.limits;
        let state = PluginState::new(self.label.clone(), ctx.now, limits.memory_bytes);
        let mut store = Store::new(&self.runtime.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        let mut session = Session {
            plugin: self,
            store,
            bindings: None,
            failed: false,
        };
        let pre = self.pre.clone();
        let bindings = session.run(|st| pre.instantiate(st)).map_err(|e| match e {
            RuntimeError::Trap { plugin, message } => RuntimeError::Trap {
                plugin,
                message: format!("at start: {message}"),
            },
            other => other,
        });
        session.bindings = Some(bindings?);
        Ok(session)
    }

    /// A fresh instance configured with `rules` (the manifest's defaults if `None`).
    /// Use one session for one batch or one event.
    pub fn session(
        &self,
        ctx: &CallContext,
        rules: Option<&str>,
    ) -> Result<Session<'_>, RuntimeError> {
        let mut s = self.instantiate(ctx)?;
        let rules = rules.unwrap_or(&self.manifest().default_rules).to_string();
        let configured = s.guarded(|b, st| b.configure(st, &rules))?;
        configured.map_err(|e| s.plugin_error(e))?;
        Ok(s)
    }

    /// Checks a rule set against the plugin's rules schema, if it declares one;
    /// the error lists where it does not fit.
    pub fn check_rules_schema(&self, rules: &serde_json::Value) -> Result<(), String> {
        match &self.rules_schema {
            Some(schema) => schema.check(rules),
            None => Ok(()),
        }
    }

    /// Checks a rule set by configuring a fresh instance with it.
    pub fn check_rules(&self, rules: &str) -> Result<(), RuntimeError> {
        self.session(
            &CallContext {
                now: 0,
                tenant: String::new(),
            },
            Some(rules),
        )
        .map(|_| ())
    }
}

/// One plugin instance, configured, for a batch or an event.
pub struct Session<'p> {
    plugin: &'p LoadedPlugin,
    store: Store<PluginState>,
    bindings: Option<Bindings>,
    failed: bool,
}

impl Session<'_> {
    /// Whether the instance can take another call: not after a failure, whose
    /// instance may be in any state.
    pub fn usable(&self) -> bool {
        !self.failed && self.bindings.is_some()
    }

    /// Values (of sensitive fields this plugin was granted) that must not reach
    /// the host log or an error message: they are replaced by `[withheld]`.
    pub fn withhold(&mut self, values: impl IntoIterator<Item = String>) {
        self.store.data_mut().withhold(values);
    }

    fn arm(&mut self) {
        let limits = &self.plugin.runtime.inner.limits;
        let ticks = limits
            .call_deadline
            .as_millis()
            .div_ceil(EPOCH_TICK.as_millis())
            .max(1) as u64;
        // +1: the current tick may be about to end.
        self.store.set_epoch_deadline(ticks + 1);
        if let Some(fuel) = limits.fuel {
            // Fuel is only enabled on the engine when configured, so this cannot fail.
            let _ = self.store.set_fuel(fuel);
        }
    }

    /// Runs one call into the guest with its bindings; see [`Session::run`].
    fn guarded<R>(
        &mut self,
        f: impl FnOnce(&Bindings, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, RuntimeError> {
        let Some(b) = self.bindings.take() else {
            return Err(RuntimeError::Poisoned {
                plugin: self.plugin.label.to_string(),
            });
        };
        let r = self.run(|st| f(&b, st));
        self.bindings = Some(b);
        r
    }

    /// Runs guest code with a fresh deadline and turns any failure into a
    /// [`RuntimeError`] that says what happened. After a failure the instance is
    /// not used again: its memory may be in any state.
    fn run<R>(
        &mut self,
        f: impl FnOnce(&mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, RuntimeError> {
        let plugin = self.plugin.label.to_string();
        if self.failed {
            return Err(RuntimeError::Poisoned { plugin });
        }
        self.arm();
        let result = f(&mut self.store);
        let said = self.store.data_mut().drain_stdio();
        result.map_err(|e| {
            self.failed = true;
            let limits = &self.plugin.runtime.inner.limits;
            if self.store.data().limiter.refused {
                return RuntimeError::MemoryLimit {
                    plugin,
                    cap_mib: limits.memory_bytes >> 20,
                };
            }
            let budget_ms = limits.call_deadline.as_millis();
            if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some()
            {
                return RuntimeError::Busy(limits.max_instances);
            }
            match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) | Some(Trap::OutOfFuel) => {
                    RuntimeError::Deadline { plugin, budget_ms }
                }
                Some(trap) => {
                    let mut message = trap.to_string();
                    if let Some(line) = said {
                        message.push_str(&format!(" (the plugin said: {line})"));
                    }
                    RuntimeError::Trap {
                        plugin,
                        message: crate::domain::text::clean_message(&message),
                    }
                }
                None => RuntimeError::Trap {
                    plugin,
                    message: crate::domain::text::clean_message(
                        &self.store.data().redact(&format!("{:#}", e.root_cause())),
                    ),
                },
            }
        })
    }

    fn bad_output(&self, message: String) -> RuntimeError {
        RuntimeError::BadOutput {
            plugin: self.plugin.label.to_string(),
            message: crate::domain::text::clean_message(&self.store.data().redact(&message)),
        }
    }

    fn plugin_error(&self, e: PluginError) -> RuntimeError {
        RuntimeError::Plugin {
            plugin: self.plugin.label.to_string(),
            error: self.redact_error(e),
        }
    }

    /// A plugin's error as the host keeps it: withheld values replaced, control
    /// characters cleaned and cut to [`budget::MAX_MESSAGE`] bytes, like a trap's.
    fn redact_error(&self, e: PluginError) -> PluginError {
        e.map_message(|m| crate::domain::text::clean_message(&self.store.data().redact(m)))
    }

    /// Scores a batch: one result per customer, in order. A customer the plugin
    /// could not score, or whose score breaks the rules of the manifest, gets an
    /// error of its own; the others are unaffected.
    pub fn score(
        &mut self,
        ctx: &CallContext,
        batch: &[Customer<'_>],
    ) -> Result<Vec<Result<Score, PluginError>>, RuntimeError> {
        self.score_encoded(
            ctx,
            &encode_batch(batch, self.plugin.manifest().reads)?,
            batch.len(),
        )
    }

    /// Like [`Session::score`], for a batch already encoded (see [`encode_batch`]).
    // The generated binding takes `&Vec<u8>` for `list<u8>`.
    #[allow(clippy::ptr_arg)]
    pub fn score_encoded(
        &mut self,
        ctx: &CallContext,
        snapshot: &Vec<u8>,
        count: usize,
    ) -> Result<Vec<Result<Score, PluginError>>, RuntimeError> {
        let out = self
            .guarded(|b, st| b.score(st, ctx.now, &ctx.tenant, snapshot))?
            .map_err(|e| self.plugin_error(e))?;
        if out.len() != count {
            return Err(self.bad_output(format!("{} scores for {count} customers", out.len())));
        }
        let m = self.plugin.manifest();
        Ok(out
            .into_iter()
            .map(|r| {
                r.and_then(|s| check_score(m, s))
                    .map_err(|e| self.redact_error(e))
            })
            .collect())
    }

    /// The segments of each customer of a batch, in order.
    pub fn segment(
        &mut self,
        ctx: &CallContext,
        batch: &[Customer<'_>],
    ) -> Result<Vec<Result<Vec<Membership>, PluginError>>, RuntimeError> {
        let snapshot = encode_batch(batch, self.plugin.manifest().reads)?;
        let out = self
            .guarded(|b, st| b.segment(st, ctx.now, &ctx.tenant, &snapshot))?
            .map_err(|e| self.plugin_error(e))?;
        if out.len() != batch.len() {
            return Err(self.bad_output(format!(
                "{} segment lists for {} customers",
                out.len(),
                batch.len()
            )));
        }
        let m = self.plugin.manifest();
        Ok(out
            .into_iter()
            .map(|r| {
                r.and_then(|ms| check_memberships(m, ms))
                    .map_err(|e| self.redact_error(e))
            })
            .collect())
    }

    /// The actions the plugin proposes for an event just recorded for `customer`.
    /// Actions that break the manifest (undeclared stage, malformed tag, too many)
    /// fail the whole call: the pipeline applies all of a plugin's actions or none.
    pub fn on_event(
        &mut self,
        ctx: &CallContext,
        customer: &Customer<'_>,
        event: &Event<'_>,
    ) -> Result<Vec<Action>, RuntimeError> {
        let reads = self.plugin.manifest().reads;
        let c = encode_customer(customer, reads)?;
        let e = snapshot::encode_event(event).map_err(|e| RuntimeError::Snapshot(e.0))?;
        let actions = self
            .guarded(|b, st| b.on_event(st, ctx.now, &ctx.tenant, &c, &e))?
            .map_err(|e| self.plugin_error(e))?;
        check_actions(self.plugin.manifest(), ctx.now, &actions).map_err(|m| self.bad_output(m))?;
        Ok(actions)
    }

    /// The actions the plugin proposes when a wake it asked for is due
    /// (`ctx.now` is the wake's time). Checked like [`Session::on_event`]'s.
    pub fn on_wake(
        &mut self,
        ctx: &CallContext,
        customer: &Customer<'_>,
    ) -> Result<Vec<Action>, RuntimeError> {
        let c = encode_customer(customer, self.plugin.manifest().reads)?;
        let actions = self
            .guarded(|b, st| b.on_wake(st, ctx.now, &ctx.tenant, &c))?
            .map_err(|e| self.plugin_error(e))?;
        check_actions(self.plugin.manifest(), ctx.now, &actions).map_err(|m| self.bad_output(m))?;
        Ok(actions)
    }
}

fn check_reason(m: &Manifest, r: &Reason) -> Result<(), PluginError> {
    if !m.has_reason(&r.code) {
        return Err(PluginError::Failed(format!(
            "reason code {:?} is not declared in the manifest",
            r.code
        )));
    }
    if !r.points.is_finite() || r.args.len() > 16 || r.args.iter().any(|a| !a.is_finite()) {
        return Err(PluginError::Failed(format!(
            "reason {:?} has non-finite numbers or too many args",
            r.code
        )));
    }
    Ok(())
}

fn check_score(m: &Manifest, s: Score) -> Result<Score, PluginError> {
    if !s.value.is_finite() {
        return Err(PluginError::Failed("score is not a finite number".into()));
    }
    if s.reasons.len() > MAX_REASONS {
        return Err(PluginError::Failed(format!(
            "{} reasons, at most {MAX_REASONS} allowed",
            s.reasons.len()
        )));
    }
    if let Some(b) = &s.band {
        if let Some(p) = crate::domain::text::label_problem(b, MAX_TAG) {
            return Err(PluginError::Failed(format!(
                "band {:?} {p}",
                truncate_for_message(b)
            )));
        }
    }
    for r in &s.reasons {
        check_reason(m, r)?;
    }
    Ok(s)
}

fn check_memberships(m: &Manifest, ms: Vec<Membership>) -> Result<Vec<Membership>, PluginError> {
    if ms.len() > MAX_MEMBERSHIPS {
        return Err(PluginError::Failed(format!(
            "{} segments, at most {MAX_MEMBERSHIPS} allowed",
            ms.len()
        )));
    }
    for x in &ms {
        if !m.has_segment(&x.segment) {
            return Err(PluginError::Failed(format!(
                "segment {:?} is not declared in the manifest",
                x.segment
            )));
        }
        check_reason(m, &x.reason)?;
    }
    Ok(ms)
}

fn check_actions(m: &Manifest, now: i64, actions: &[Action]) -> Result<(), String> {
    let horizon = now.saturating_add(crate::domain::HORIZON_MS);
    let check_key = |key: &str| {
        if is_reason_code(key) {
            Ok(())
        } else {
            Err(format!(
                "follow-up key {:?} is not 1-64 characters of [a-z0-9_.:-]",
                truncate_for_message(key)
            ))
        }
    };
    if actions.len() > MAX_ACTIONS {
        return Err(format!(
            "{} actions, at most {MAX_ACTIONS} allowed",
            actions.len()
        ));
    }
    for a in actions {
        match a {
            Action::MoveToStage { stage, reason } => {
                if !m.lifecycle {
                    return Err(
                        "moves a stage but does not declare the lifecycle capability".into(),
                    );
                }
                if !m.has_stage(stage) {
                    return Err(format!(
                        "stage {stage:?} is not in the plugin's stage graph"
                    ));
                }
                check_reason(m, reason).map_err(|e| e.to_string())?;
            }
            Action::AddTag(t) | Action::RemoveTag(t) => {
                if !is_valid_tag(t) {
                    return Err(format!(
                        "tag {:?} is not 1-64 characters of [a-z0-9:_-]",
                        truncate_for_message(t)
                    ));
                }
            }
            Action::SetField { key, value } => {
                if !is_slug(key, 64) {
                    return Err(format!(
                        "field key {:?} is not 1-64 characters of [a-z0-9_-]",
                        truncate_for_message(key)
                    ));
                }
                if let FieldValue::Text(t) = value {
                    if let Some(p) = crate::domain::text::text_problem(t, MAX_TEXT) {
                        return Err(format!("field {key} {p}"));
                    }
                }
                if let FieldValue::Number(n) = value {
                    if !n.is_finite() {
                        return Err(format!("field {key} is not a finite number"));
                    }
                }
            }
            Action::ScheduleFollowUp { due_in_hours, note } => {
                if note.len() > MAX_TEXT || *due_in_hours > 24 * 366 * 2 {
                    return Err(
                        "follow-up note over 1024 bytes or due more than two years ahead".into(),
                    );
                }
                if let Some(p) = crate::domain::text::text_problem(note, MAX_TEXT) {
                    return Err(format!("the follow-up note {p}"));
                }
            }
            Action::FollowUp { key, due, note } => {
                check_key(key)?;
                if *due > horizon {
                    return Err(format!(
                        "follow-up {key} is due more than two years after now"
                    ));
                }
                if let Some(p) = crate::domain::text::text_problem(note, MAX_TEXT) {
                    return Err(format!("the note of follow-up {key} {p}"));
                }
            }
            Action::CloseFollowUp { key } => check_key(key)?,
            Action::WakeAt { at: Some(at) } if *at > horizon => {
                return Err("asks to be woken more than two years after now".into());
            }
            Action::WakeAt { .. } => {}
        }
    }
    Ok(())
}

fn truncate_for_message(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Encodes a batch with only the parts `reads` allows.
pub fn encode_batch(batch: &[Customer<'_>], reads: Reads) -> Result<Vec<u8>, RuntimeError> {
    let view: Vec<Customer<'_>> = batch.iter().map(|c| restrict(c, reads)).collect();
    snapshot::encode_batch(&view).map_err(|e| RuntimeError::Snapshot(e.0))
}

fn encode_customer(c: &Customer<'_>, reads: Reads) -> Result<Vec<u8>, RuntimeError> {
    snapshot::encode_customer(&restrict(c, reads)).map_err(|e| RuntimeError::Snapshot(e.0))
}

/// A shallow copy of `c` without the parts the plugin does not read.
fn restrict<'a>(c: &Customer<'a>, reads: Reads) -> Customer<'a> {
    Customer {
        id: c.id,
        stage: c.stage,
        source: c.source,
        created_at: c.created_at,
        metrics: c.metrics,
        tags: if reads.tags {
            c.tags.clone()
        } else {
            Vec::new()
        },
        segments: if reads.segments {
            c.segments.clone()
        } else {
            Vec::new()
        },
        fields: if reads.fields {
            c.fields.clone()
        } else {
            Default::default()
        },
        events: if reads.events {
            c.events.clone()
        } else {
            Vec::new()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "pack".into(),
            version: "1.2.3".into(),
            description: String::new(),
            scoring: true,
            segmentation: false,
            lifecycle: true,
            reads: Reads::default(),
            stages: vec![Stage {
                id: "lead".into(),
                label: "Lead".into(),
                label_zh: None,
                rank: 0,
            }],
            segments: vec![],
            reasons: vec![ReasonText {
                code: "r".into(),
                en: "r".into(),
                zh: None,
            }],
            rules_schema: None,
            default_rules: "{}".into(),
            wants_fields: vec![],
        }
    }

    fn rejects(change: impl FnOnce(&mut Manifest), expected: &str) {
        let mut m = manifest();
        change(&mut m);
        match validate_manifest(&m) {
            Err(RuntimeError::BadManifest(msg)) => assert!(msg.contains(expected), "{msg}"),
            other => panic!("expected BadManifest containing {expected:?}, got {other:?}"),
        }
    }

    #[test]
    fn manifest_rules() {
        assert!(validate_manifest(&manifest()).is_ok());
        rejects(|m| m.name = "Bad Name".into(), "name");
        rejects(|m| m.version = "1.2".into(), "semantic version");
        rejects(
            |m| (m.scoring, m.lifecycle) = (false, false),
            "no capability",
        );
        rejects(|m| m.stages.clear(), "declares no stages");
        rejects(|m| m.stages.push(m.stages[0].clone()), "repeated");
        rejects(|m| m.default_rules = "{".into(), "default rules");
    }

    #[test]
    fn actions_are_checked_against_the_manifest() {
        let m = manifest();
        let reason = Reason {
            code: "r".into(),
            points: 0.0,
            args: vec![],
        };
        let ok = vec![
            Action::MoveToStage {
                stage: "lead".into(),
                reason: reason.clone(),
            },
            Action::AddTag("promo:spring".into()),
            Action::SetField {
                key: "churn_risk".into(),
                value: FieldValue::Number(0.3),
            },
            Action::ScheduleFollowUp {
                due_in_hours: 48,
                note: "ask about the sample".into(),
            },
            Action::FollowUp {
                key: "lapse:check-in".into(),
                due: NOW + 3_600_000,
                note: "call before the plan lapses".into(),
            },
            Action::CloseFollowUp {
                key: "welcome".into(),
            },
            Action::WakeAt {
                at: Some(NOW + crate::domain::HORIZON_MS),
            },
            Action::WakeAt { at: Some(NOW - 1) },
            Action::WakeAt { at: None },
        ];
        assert_eq!(check_actions(&m, NOW, &ok), Ok(()));
        let bad = |a: Action| check_actions(&m, NOW, &[a]).unwrap_err();
        assert!(bad(Action::WakeAt {
            at: Some(NOW + crate::domain::HORIZON_MS + 1)
        })
        .contains("two years"));
        assert!(bad(Action::FollowUp {
            key: "Not A Key".into(),
            due: NOW,
            note: String::new()
        })
        .contains("follow-up key"));
        assert!(bad(Action::CloseFollowUp { key: String::new() }).contains("follow-up key"));
        assert!(bad(Action::FollowUp {
            key: "k".into(),
            due: NOW + crate::domain::HORIZON_MS + 1,
            note: String::new()
        })
        .contains("two years"));
        assert!(bad(Action::FollowUp {
            key: "k".into(),
            due: NOW,
            note: "a\0b".into()
        })
        .contains("NUL"));
        assert!(bad(Action::MoveToStage {
            stage: "vip".into(),
            reason: reason.clone()
        })
        .contains("\"vip\""));
        assert!(bad(Action::AddTag("Has Space".into())).contains("tag"));
        assert!(bad(Action::AddTag("x".repeat(65))).contains("tag"));
        assert!(bad(Action::SetField {
            key: "n".into(),
            value: FieldValue::Number(f64::NAN)
        })
        .contains("finite"));
        assert!(bad(Action::ScheduleFollowUp {
            due_in_hours: 1,
            note: "x".repeat(2000)
        })
        .contains("1024"));
        let undeclared = Reason {
            code: "nope".into(),
            points: 0.0,
            args: vec![],
        };
        assert!(bad(Action::MoveToStage {
            stage: "lead".into(),
            reason: undeclared
        })
        .contains("not declared"));
        let many: Vec<Action> = (0..65).map(|i| Action::AddTag(format!("t{i}"))).collect();
        assert!(check_actions(&m, NOW, &many)
            .unwrap_err()
            .contains("65 actions"));
    }

    const NOW: i64 = 1_780_000_000_000;

    #[test]
    fn binary_sniffing() {
        assert!(matches!(
            check_binary(b"hello world"),
            Err(RuntimeError::NotWasm)
        ));
        assert!(matches!(
            check_binary(b"\0asm\x01\0\0\0"),
            Err(RuntimeError::NotComponent)
        ));
        assert!(check_binary(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn restricting_a_snapshot_drops_what_the_plugin_does_not_read() {
        use stagecraft_plugin::snapshot::{decode_batch, Fields, Value};
        let c = Customer {
            id: "c",
            tags: vec!["vip"],
            segments: vec!["s"],
            fields: Fields(vec![("k", Value::Number(1.0))]),
            events: vec![Event {
                kind: "order",
                at: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        let none = encode_batch(std::slice::from_ref(&c), Reads::default()).unwrap();
        let got = decode_batch(&none).unwrap();
        assert!(
            got[0].tags.is_empty()
                && got[0].segments.is_empty()
                && got[0].fields.is_empty()
                && got[0].events.is_empty()
        );
        let all = encode_batch(std::slice::from_ref(&c), Reads::ALL).unwrap();
        assert_eq!(decode_batch(&all).unwrap()[0], c);
        assert!(none.len() < all.len());
    }
}
