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

/// The hostile test component with its manifest variant `mode` (see
/// `tests/plugins/hostile`): the 28 bytes after its marker replaced, so that each
/// variant is a component of its own, with its own digest.
pub fn hostile_manifest(mode: &str) -> Vec<u8> {
    const MARKER: &[u8] = b"STAGECRAFT-HOSTILE-MANIFEST:";
    assert!(mode.len() <= 28);
    let mut bytes = wasm("hostile");
    let at = bytes
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .expect("the hostile component carries its manifest marker")
        + MARKER.len();
    let padded = format!("{mode:<28}");
    bytes[at..at + 28].copy_from_slice(padded.as_bytes());
    bytes
}

/// A valid component with one more core module appended that is never
/// instantiated: `functions` empty functions, as a compile bomb carries them.
pub fn with_extra_module(component: &[u8], functions: u32) -> Vec<u8> {
    fn leb(mut v: u32, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u32, out);
        out.extend_from_slice(body);
    }
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module);
    let mut funcs = Vec::new();
    leb(functions, &mut funcs);
    funcs.extend(std::iter::repeat_n(0u8, functions as usize));
    section(3, &funcs, &mut module);
    let mut code = Vec::new();
    leb(functions, &mut code);
    for _ in 0..functions {
        code.extend([2, 0, 0x0b]);
    }
    section(10, &code, &mut module);
    let mut out = component.to_vec();
    // Section 1 of a component: a core module.
    section(1, &module, &mut out);
    out
}
