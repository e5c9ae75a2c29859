//! What a plugin instance sees: an empty, deterministic WASI, a log, a memory cap.

use super::contract::{v0_1, v0_2, Version};
use crate::domain::plugin::Level;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

/// WASI interfaces a plugin may import. A Rust guest built for `wasm32-wasip2` links
/// these through `std` even when it uses none; they are wired to an empty context:
/// no preopened directories, no environment, no arguments, stdin closed, a wall
/// clock stuck at the call's `now`, a monotonic clock stuck at zero and a seeded
/// random generator. Versions are matched by interface, `@0.2.*`.
pub const ALLOWED_WASI: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];

/// Whether a component may import `name` (e.g. `wasi:cli/stderr@0.2.3`).
pub fn import_allowed(name: &str) -> bool {
    if Version::ALL
        .iter()
        .any(|v| v.imports().iter().any(|i| i == name))
    {
        return true;
    }
    let (iface, version) = name.split_once('@').unwrap_or((name, ""));
    version.starts_with("0.2.") && ALLOWED_WASI.contains(&iface)
}

/// Bytes of guest stdout/stderr kept per instance; the rest is dropped.
const STDIO_CAPACITY: usize = 64 * 1024;
/// Log lines a plugin may write through `host.log` per instance.
const MAX_LOG_LINES: u32 = 100;
/// Characters of one log line kept.
const MAX_LOG_LINE: usize = 1024;

struct FixedWallClock(Duration);

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

struct FrozenMonotonicClock;

impl HostMonotonicClock for FrozenMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Caps linear memory and remembers that it had to refuse, so that a failed call
/// can be reported as "over its memory cap" rather than as an anonymous trap.
pub struct MemoryCap {
    pub max_bytes: usize,
    pub refused: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = true;
            // Trap rather than let the guest see a failed grow: Rust guests abort
            // anyway, and a trap carries a clear cause.
            return Err(wasmtime::Error::msg(format!(
                "memory cap of {} bytes reached (asked for {desired})",
                self.max_bytes
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The state of one plugin instance's store.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryCap,
    stderr: MemoryOutputPipe,
    stdout: MemoryOutputPipe,
    seen: [usize; 2],
    label: Arc<str>,
    log_lines: u32,
    /// Values of sensitive fields this instance was granted: never written to
    /// the host log or into an error message (see [`PluginState::redact`]).
    secrets: Vec<String>,
}

impl PluginState {
    pub fn new(label: Arc<str>, now_ms: i64, memory_bytes: usize) -> Self {
        use rand::SeedableRng;
        let stderr = MemoryOutputPipe::new(STDIO_CAPACITY);
        let stdout = MemoryOutputPipe::new(STDIO_CAPACITY);
        let wall = Duration::from_millis(now_ms.max(0) as u64);
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .stdout(stdout.clone())
            .wall_clock(FixedWallClock(wall))
            .monotonic_clock(FrozenMonotonicClock)
            .secure_random(rand::rngs::StdRng::seed_from_u64(0x5747_4543))
            .insecure_random(rand::rngs::StdRng::seed_from_u64(0x5747_4543))
            .insecure_random_seed(0x5747_4543)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        PluginState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap {
                max_bytes: memory_bytes,
                refused: false,
            },
            stderr,
            stdout,
            seen: [0, 0],
            label,
            log_lines: 0,
            secrets: Vec::new(),
        }
    }

    /// Adds values that must not leave the instance through its log or errors.
    pub fn withhold(&mut self, values: impl IntoIterator<Item = String>) {
        self.secrets
            .extend(values.into_iter().filter(|v| !v.trim().is_empty()));
    }

    /// `text` with every withheld value replaced by `[withheld]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "[withheld]");
            }
        }
        out
    }

    /// Sends what the guest wrote to stdout and stderr since the last call to the
    /// host log. Returns the last Rust panic message on stderr, if any, so that a
    /// trap can say what the plugin said.
    pub fn drain_stdio(&mut self) -> Option<String> {
        let mut panic = None;
        for (i, (name, pipe)) in [("stdout", &self.stdout), ("stderr", &self.stderr)]
            .into_iter()
            .enumerate()
        {
            let bytes = pipe.contents();
            if bytes.len() <= self.seen[i] {
                continue;
            }
            let text = String::from_utf8_lossy(&bytes[self.seen[i]..]).into_owned();
            self.seen[i] = bytes.len();
            let mut lines = text.lines().filter(|l| !l.trim().is_empty()).peekable();
            while let Some(line) = lines.next() {
                let line = self.redact(line);
                tracing::warn!(plugin = %self.label, stream = name, "{}", truncate(&line, MAX_LOG_LINE));
                // Rust prints "thread '...' panicked at FILE:LINE:COL:" then the message.
                if name == "stderr" && line.contains("panicked at") {
                    if let Some(msg) = lines.peek() {
                        panic = Some(truncate(&self.redact(msg), MAX_LOG_LINE).to_string());
                    }
                }
            }
        }
        panic
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl v0_1::stagecraft::plugin::types::Host for PluginState {}
impl v0_2::stagecraft::plugin::types::Host for PluginState {}

impl v0_1::stagecraft::plugin::host::Host for PluginState {
    fn log(&mut self, level: v0_1::stagecraft::plugin::host::Level, message: String) {
        self.log(level.into(), message)
    }
}

impl v0_2::stagecraft::plugin::host::Host for PluginState {
    fn log(&mut self, level: v0_2::stagecraft::plugin::host::Level, message: String) {
        self.log(level.into(), message)
    }
}

impl PluginState {
    /// `host.log`, whatever the plugin's contract version.
    fn log(&mut self, level: Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            if self.log_lines == MAX_LOG_LINES + 1 {
                tracing::warn!(plugin = %self.label, "plugin log limit reached; further lines dropped");
            }
            return;
        }
        let message = self.redact(&message);
        let message = truncate(&message, MAX_LOG_LINE);
        match level {
            Level::Debug => tracing::debug!(plugin = %self.label, "{message}"),
            Level::Info => tracing::info!(plugin = %self.label, "{message}"),
            Level::Warn => tracing::warn!(plugin = %self.label, "{message}"),
            Level::Error => tracing::error!(plugin = %self.label, "{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_policy() {
        assert!(import_allowed("wasi:cli/stderr@0.2.3"));
        assert!(import_allowed("wasi:random/insecure-seed@0.2.0"));
        assert!(import_allowed("stagecraft:plugin/host@0.1.0"));
        assert!(!import_allowed("wasi:sockets/tcp@0.2.3"));
        assert!(!import_allowed("wasi:http/outgoing-handler@0.2.3"));
        assert!(!import_allowed("wasi:cli/stderr@0.3.0"));
        assert!(import_allowed("stagecraft:plugin/host@0.2.0"));
        assert!(import_allowed("stagecraft:plugin/types@0.2.0"));
        assert!(!import_allowed("stagecraft:plugin/host@0.3.0"));
        assert!(!import_allowed("stagecraft:plugin/host@1.0.0"));
    }
}
