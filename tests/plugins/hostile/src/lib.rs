//! A plugin that misbehaves on purpose, for the sandbox tests. Its rule set picks
//! the misbehaviour: `{"mode": "trap" | "loop" | "grow" | "recurse" | "recurse-wasm" |
//! "flood" |
//! "bad-stage" | "bad-reason" | "snoop" | "leak" | "remember" | "ok", "value": 1.0}`.
//! `leak` writes the customer's `email` (when granted) everywhere it can reach the
//! host: its log, stdout, stderr, an error message and a panic.
//! Text modes return what a database or a screen must never get: `nul-error` (an
//! error message with NUL), `nul-band`, `rtl-band` (a right-to-left override),
//! `nul-note` (a follow-up note with NUL), `huge-error` (an 8 MB error message).
//! For bulk jobs: `fail-one` traps while scoring a customer whose id starts with
//! `bad` (failing the whole batch call), `slow` spends `value` million loop
//! iterations on each customer it scores. Growth: on every event `tagger` adds
//! 64 new tags, `fielder` sets 64 new fields, `reminder` schedules 30 follow-ups.
//!
//! Its *manifest* is picked by [`MANIFEST_MODE`], 32 bytes of the binary that a
//! test overwrites in a copy of the built component (the manifest may not depend
//! on rules): `normal`, `cyclic-schema`, `not-a-schema`, `bad-defaults`,
//! `many-stages`, `huge-template`, `long-version`, `markup-label`, `pattern-schema`.

use serde::Deserialize;
use stagecraft_plugin::*;

/// The manifest variant: a marker, then the mode padded with spaces to 32 bytes.
/// `tests/common` replaces the 32 bytes after the marker in a copy of the wasm.
#[used]
static MANIFEST_MODE: [u8; 56] = *b"STAGECRAFT-HOSTILE-MANIFEST:normal                      ";

fn manifest_mode() -> String {
    // Read through a volatile load, so the compiler cannot fold the constant.
    let bytes: [u8; 56] = unsafe { std::ptr::read_volatile(&MANIFEST_MODE) };
    String::from_utf8_lossy(&bytes[28..]).trim().to_string()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The manifest every variant starts from.
fn base_manifest(version: &'static str) -> Manifest {
    Manifest::new("hostile", version, "Misbehaves on purpose")
        .scoring()
        .segmentation()
        .lifecycle()
        .stage("start", "Start", None, 0)
        .stage("end", "End", None, 1)
        .segment("all", "Everyone")
        .reads(Reads {
            fields: true,
            ..Default::default()
        })
        .wants_field("email")
        .reason("ok", "value {0}", None)
        .reason("snoop", "env {0}, file {1}, clock {2}, random {3}", None)
        .default_rules(r#"{"mode": "ok", "value": 1.0}"#)
}

#[derive(Deserialize)]
struct Hostile {
    mode: String,
    #[serde(default)]
    value: f64,
}

#[allow(unconditional_recursion)]
fn recurse(n: u64, pad: &mut [u8; 256]) -> u64 {
    pad[(n % 256) as usize] = n as u8;
    let mut next = *pad;
    recurse(std::hint::black_box(n + 1), &mut next) + next[0] as u64
}

/// Recursion with nothing in linear memory: overflows the wasm stack itself.
#[allow(unconditional_recursion)]
fn recurse_wasm(n: u64) -> u64 {
    recurse_wasm(std::hint::black_box(n + 1)).wrapping_add(n)
}

/// What `remember` tries to carry from one instance to the next: a counter in
/// initialised data, a page of zero-initialised data, and the heap.
static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static mut SCRATCH: [u8; 65536] = [0; 65536];

/// `remember`: what this instance found left over, as a number. 0 means a clean
/// instance; 1, 2, 4 say the counter, the zeroed page or the heap was dirty. Then it
/// dirties all three, for the next instance to find.
fn remember() -> f64 {
    const MARK: u8 = 0xA5;
    let mut found = 0;
    if CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) != 0 {
        found |= 1;
    }
    // SAFETY: plugins are single-threaded; nothing else touches SCRATCH.
    let scratch = unsafe { &mut *std::ptr::addr_of_mut!(SCRATCH) };
    if scratch.iter().any(|&b| b != 0) {
        found |= 2;
    }
    scratch.fill(MARK);
    // A large allocation comes from fresh pages at the top of the heap, which the
    // allocator trusts to be zero; a leftover from a past instance would show here.
    let heap = vec![0u8; 1 << 20];
    if heap.iter().any(|&b| b != 0) {
        found |= 4;
    }
    let mut heap = std::mem::ManuallyDrop::new(heap);
    heap.fill(MARK);
    found as f64
}

fn email_of(c: &Customer) -> String {
    c.fields
        .get("email")
        .and_then(|v| v.as_text())
        .unwrap_or("(none)")
        .to_string()
}

impl Hostile {
    fn misbehave(&self) {
        match self.mode.as_str() {
            "trap" => panic!("hostile plugin panics on purpose"),
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse-wasm" => {
                std::hint::black_box(recurse_wasm(0));
            }
            "recurse" => {
                let mut pad = [0u8; 256];
                std::hint::black_box(recurse(0, &mut pad));
            }
            _ => {}
        }
    }
}

impl Plugin for Hostile {
    fn describe() -> Manifest {
        let m = base_manifest("0.1.0");
        match manifest_mode().as_str() {
            "cyclic-schema" => m.rules_schema(
                r##"{"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}"##,
            ),
            "not-a-schema" => m.rules_schema(r#"{"type": 12}"#),
            "bad-defaults" => m.rules_schema(
                r#"{"type": "object", "properties": {"mode": {"enum": ["trap", "loop"]}}}"#,
            ),
            "many-stages" => (0..1_000).fold(m, |m, i| {
                m.stage(leak(format!("s{i}")), leak("x".repeat(100)), None, i)
            }),
            "huge-template" => m.reason("huge", leak("{0}".repeat(100_000)), None),
            "long-version" => {
                let mut m = m;
                m.version = leak(format!("1.0.0-{}", "a".repeat(900_000)));
                m
            }
            "markup-label" => m.segment("html", "<img src=x onerror=alert(1)>"),
            "pattern-schema" => m.rules_schema(
                r#"{"type": "object", "properties": {"mode": {"type": "string"}, "note": {"type": "string", "pattern": "^(a+)+$"}}}"#,
            ),
            _ => m,
        }
    }

    fn configure(rules: &str) -> Result<Self, PluginError> {
        let h: Hostile = rules::parse(rules)?;
        if h.mode == "trap-configure" {
            panic!("hostile plugin panics while configuring");
        }
        Ok(h)
    }

    fn score(&self, ctx: &Context, c: &Customer) -> Result<Score, PluginError> {
        self.misbehave();
        if self.mode == "fail-one" && c.id.starts_with("bad") {
            panic!("hostile plugin fails on {}", c.id);
        }
        if self.mode == "slow" {
            let mut x: u64 = 0;
            for i in 0..(self.value.max(0.0) as u64) * 1_000_000 {
                x = std::hint::black_box(x.wrapping_add(i));
            }
            std::hint::black_box(x);
        }
        match self.mode.as_str() {
            "leak" => Err(PluginError::Failed(format!("cannot score {}", email_of(c)))),
            "nul-error" => Err(PluginError::Failed("cannot\0score".into())),
            "huge-error" => Err(PluginError::Failed("x".repeat(8 << 20))),
            "nul-band" => Ok(Score::new(1.0).band("gold\0")),
            "rtl-band" => Ok(Score::new(1.0).band("gold\u{202E}dlog")),
            "bad-reason" => Ok(Score::new(1.0).reason(Reason::new("undeclared", 1.0))),
            "snoop" => {
                let env = std::env::vars().count() as f64;
                let file = std::fs::read("/etc/passwd").is_ok() as u8 as f64;
                let clock = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as f64)
                    .unwrap_or(-1.0);
                // A HashMap's RandomState seeds itself from the host's randomness.
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u8(1);
                let random = (h.finish() >> 12) as f64;
                let _ = ctx;
                Ok(Score::new(0.0)
                    .reason(Reason::new("snoop", 0.0).args([env, file, clock, random])))
            }
            "remember" => {
                let found = remember();
                Ok(Score::new(found).reason(Reason::new("ok", found).args([found])))
            }
            // Reports the fields it was given: how many, and whether `email` is one.
            "fields" => Ok(Score::new(c.fields.len() as f64)
                .band(if c.fields.get("email").is_some() {
                    "sees-email"
                } else {
                    "no-email"
                })
                .reason(Reason::new("ok", 0.0).args([c.fields.len() as f64]))),
            _ => Ok(Score::new(self.value)
                .band("ok")
                .reason(Reason::new("ok", self.value).args([self.value]))),
        }
    }

    fn segment(&self, _ctx: &Context, c: &Customer) -> Result<Vec<Membership>, PluginError> {
        self.misbehave();
        if self.mode == "leak" {
            panic!("leaking {}", email_of(c));
        }
        Ok(vec![Membership::new("all", Reason::new("ok", 0.0))])
    }

    fn on_event(
        &self,
        _ctx: &Context,
        c: &Customer,
        e: &Event,
    ) -> Result<Vec<Action>, PluginError> {
        self.misbehave();
        if self.mode == "leak" {
            let email = email_of(c);
            log(LogLevel::Warn, &format!("the email is {email}"));
            println!("stdout: {email}");
            eprintln!("stderr: {email}");
        }
        match self.mode.as_str() {
            "bad-stage" => Ok(vec![Action::MoveToStage {
                stage: "nowhere".into(),
                reason: Reason::new("ok", 0.0),
            }]),
            "flood" => Ok((0..200_000)
                .map(|i| Action::AddTag(format!("t{i}").into()))
                .collect()),
            "nul-note" => Ok(vec![Action::ScheduleFollowUp {
                due_in_hours: 1,
                note: "call\0back".into(),
            }]),
            "nul-error" => Err(PluginError::Failed("no\0event".into())),
            "tagger" => Ok((0..64)
                .map(|i| Action::AddTag(format!("t{}-{i}", e.at).into()))
                .collect()),
            "fielder" => Ok((0..64)
                .map(|i| Action::SetField {
                    key: format!("f{}_{i}", e.at).into(),
                    value: FieldValue::Number(i as f64),
                })
                .collect()),
            "reminder" => Ok((0..30)
                .map(|i| Action::ScheduleFollowUp {
                    due_in_hours: i + 1,
                    note: "again".into(),
                })
                .collect()),
            _ => Ok(vec![Action::MoveToStage {
                stage: "end".into(),
                reason: Reason::new("ok", 0.0),
            }]),
        }
    }
}

register_plugin!(Hostile);
