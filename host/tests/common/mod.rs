//! Shared by the integration tests: where the built plugins are, and a runtime.
#![allow(dead_code)]

use stagecraft::runtime::{CallContext, Limits, LoadedPlugin, Runtime};
use std::path::PathBuf;
use std::time::Duration;

/// The component built by `cargo xtask plugins` for crate file stem `stem`.
pub fn wasm_path(stem: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let path = target
        .join("wasm32-wasip2/release")
        .join(format!("{stem}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first with `cargo xtask plugins` (or run `cargo xtask test`)",
        path.display()
    );
    path
}

pub fn wasm(stem: &str) -> Vec<u8> {
    std::fs::read(wasm_path(stem)).unwrap()
}

/// Small limits so tests are quick and many runtimes fit side by side.
pub fn test_limits() -> Limits {
    Limits {
        call_deadline: Duration::from_millis(500),
        memory_bytes: 32 << 20,
        fuel: None,
        max_instances: 16,
    }
}

pub fn runtime() -> Runtime {
    runtime_with(test_limits())
}

pub fn runtime_with(limits: Limits) -> Runtime {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache");
    Runtime::new(limits, Some(cache)).unwrap()
}

pub fn load(rt: &Runtime, stem: &str) -> LoadedPlugin {
    rt.load(&wasm(stem))
        .unwrap_or_else(|e| panic!("loading {stem}: {e}"))
}

pub fn ctx(now: i64) -> CallContext {
    CallContext {
        now,
        tenant: "acme".into(),
    }
}
pub mod server;

/// Runs each named async test `fn(Db)` twice: against SQLite, and against
/// PostgreSQL when `STAGECRAFT_TEST_POSTGRES_URL` is set (see `server`).
#[allow(unused_macros)]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = super::Db::postgres() {
                        super::$name(db).await
                    }
                }
            )*
        }
    };
}
