//! # The plugin runtime
//!
//! Loads Stagecraft plugins (WebAssembly components of the `stagecraft:plugin/plugin`
//! world, see `wit/<version>/plugin.wit`) and calls them inside a sandbox. It knows wasmtime
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
//! - **Contract versions:** [`contract`] holds one `bindgen!` module per released
//!   WIT version (0.1.0, 0.2.0) and converts each to the domain's types; the
//!   loader picks the version by the component's export, and nothing else in
//!   the host knows which version a plugin targets.
//! - **Outputs are proposals:** results are checked against the manifest (declared
//!   reason codes, segments, stages) and size bounds before anyone sees them.
//! - **Budgets for what the author controls** ([`budget`], [`schema`]): the code
//!   is measured by parsing before anything is compiled, and one component is
//!   compiled at a time; the manifest's counts, lengths and texts are bounded; the
//!   rules schema is checked and compiled once, without recursion or backtracking
//!   regexes; text a plugin returns carries no control characters; messages are
//!   cleaned and cut. Nothing of a refused component is kept, in memory or on disk:
//!   its compiled code is cached only when [`LoadedPlugin::keep_compiled`] says so.
//!
//! ## Where things are
//! `mod.rs` the engine, limits and errors; `load.rs` checking, compiling and
//! describing a component ([`LoadedPlugin`]); `session.rs` an instance and its
//! guarded calls ([`Session`]); `checks.rs` the checks of what plugins return;
//! `encode.rs` customers as a plugin may read them; `contract.rs` the contract
//! versions; `sandbox.rs` what an instance sees; `budget.rs` and `schema.rs`
//! the budgets for what authors control; `cache.rs` compiled code on disk.

pub mod budget;
pub mod cache;
mod checks;
pub mod contract;
mod encode;
mod load;
pub mod sandbox;
pub mod schema;
mod session;

pub use encode::encode_batch;
pub use load::LoadedPlugin;
pub use session::Session;

pub use crate::domain::plugin::*;
pub use crate::domain::text::{is_reason_code, is_slug, is_valid_tag};
pub use contract::Version;

use sandbox::PluginState;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

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
}

#[cfg(test)]
mod tests {
    use super::checks::*;
    use super::encode::*;
    use super::load::*;
    use super::*;
    use stagecraft_plugin::snapshot::{Customer, Event};

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
