//! Broken and hostile plugins are contained: each failure is reported as what it
//! is, within the deadline, and the runtime goes on serving the next call.

mod common;

use common::*;
use stagecraft::runtime::{PluginError, RuntimeError};
use stagecraft_plugin::{Customer, Event, Metrics};
use std::time::{Duration, Instant};

fn customers() -> Vec<Customer<'static>> {
    (0..3)
        .map(|i| Customer {
            id: ["a", "b", "c"][i],
            metrics: Metrics {
                orders: i as u32,
                total_spend_cents: 1000 * i as i64,
                ..Default::default()
            },
            ..Default::default()
        })
        .collect()
}

fn rules(mode: &str) -> String {
    format!(r#"{{"mode": "{mode}", "value": 7.0}}"#)
}

/// After any failure, the same runtime still serves a well-behaved call.
fn still_serves(rt: &stagecraft::runtime::Runtime) {
    let tiers = load(rt, "value_tiers");
    let out = tiers
        .session(&ctx(0), None)
        .unwrap()
        .score(&ctx(0), &customers())
        .unwrap();
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|r| r.is_ok()));
    let hostile = load(rt, "hostile");
    let ok = hostile
        .session(&ctx(0), Some(&rules("ok")))
        .unwrap()
        .score(&ctx(0), &customers())
        .unwrap();
    assert_eq!(ok[0].as_ref().unwrap().value, 7.0);
}

/// Freed instance slots are reset in place and reused (pagemap scan, pages kept
/// resident): nothing one instance wrote — initialised data, zeroed data, the heap —
/// may be there for the next. `remember` reports what it finds, then dirties it all.
#[test]
fn nothing_an_instance_writes_is_there_for_the_next() {
    let rt = runtime();
    let p = load(&rt, "hostile");
    for round in 0..50 {
        let out = p
            .session(&ctx(0), Some(&rules("remember")))
            .unwrap()
            .score(&ctx(0), &customers()[..2])
            .unwrap();
        let found: Vec<f64> = out.iter().map(|s| s.as_ref().unwrap().value).collect();
        // The second customer, in the same instance, does see the first's marks:
        // proof that `remember` detects them.
        assert_eq!(found, [0.0, 3.0], "round {round}");
    }
}

#[test]
fn a_trap_is_reported_with_the_plugins_panic_message() {
    let rt = runtime();
    let p = load(&rt, "hostile");
    let err = p
        .session(&ctx(0), Some(&rules("trap")))
        .unwrap()
        .score(&ctx(0), &customers())
        .unwrap_err();
    match &err {
        RuntimeError::Trap { plugin, message } => {
            assert_eq!(plugin, "hostile@0.1.0");
            assert!(message.contains("panics on purpose"), "{message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(err.is_fault());
    still_serves(&rt);
}

#[test]
fn an_infinite_loop_is_stopped_at_the_deadline() {
    let rt = runtime();
    let p = load(&rt, "hostile");
    let started = Instant::now();
    let err = p
        .session(&ctx(0), Some(&rules("loop")))
        .unwrap()
        .score(&ctx(0), &customers())
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, RuntimeError::Deadline { budget_ms: 500, .. }),
        "{err:?}"
    );
    // A correctness bound, not a benchmark: the call ends near its 500 ms budget,
    // not never. The slack absorbs a loaded machine.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    still_serves(&rt);
}

#[test]
fn memory_growth_past_the_cap_is_stopped() {
    let rt = runtime();
    let p = load(&rt, "hostile");
    let err = p
        .session(&ctx(0), Some(&rules("grow")))
        .unwrap()
        .segment(&ctx(0), &customers())
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::MemoryLimit { cap_mib: 32, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "plugin hostile@0.1.0 went over its memory cap of 32 MiB"
    );
    still_serves(&rt);
}

#[test]
fn deep_recursion_traps_in_the_guest_not_the_host() {
    let rt = runtime();
    let p = load(&rt, "hostile");
    // Frames on the wasm stack: wasmtime's stack limit stops it.
    let err = p
        .session(&ctx(0), Some(&rules("recurse-wasm")))
        .unwrap()
        .score(&ctx(0), &customers())
        .unwrap_err();
    match &err {
        RuntimeError::Trap { message, .. } => {
            assert!(message.contains("call stack exhausted"), "{message}")
        }
        other => panic!("expected a stack-overflow trap, got {other:?}"),
    }
    // Frames on Rust's shadow stack in linear memory: it runs off the bottom of
    // memory, which the bounds check stops.
    let err = p
        .session(&ctx(0), Some(&rules("recurse")))
        .unwrap()
        .score(&ctx(0), &customers())
        .unwrap_err();
    match &err {
        RuntimeError::Trap { message, .. } => {
            assert!(message.contains("out of bounds memory access"), "{message}")
        }
        other => panic!("expected an out-of-bounds trap, got {other:?}"),
    }
    still_serves(&rt);
}

#[test]
fn a_failed_instance_is_never_called_again() {
    let rt = runtime();
    let p = load(&rt, "hostile");
    let mut s = p.session(&ctx(0), Some(&rules("trap"))).unwrap();
    assert!(s.score(&ctx(0), &customers()).is_err());
    assert!(matches!(
        s.score(&ctx(0), &customers()),
        Err(RuntimeError::Poisoned { .. })
    ));
}

#[test]
fn a_panic_while_configuring_is_a_trap_not_a_rules_error() {
    let rt = runtime();
    let p = load(&rt, "hostile");
    let err = p
        .session(&ctx(0), Some(&rules("trap-configure")))
        .err()
        .expect("must fail");
    assert!(matches!(err, RuntimeError::Trap { .. }), "{err:?}");
    still_serves(&rt);
}

#[test]
fn undeclared_reason_codes_fail_that_customer_only() {
    let rt = runtime();
    let p = load(&rt, "hostile");
    let out = p
        .session(&ctx(0), Some(&rules("bad-reason")))
        .unwrap()
        .score(&ctx(0), &customers())
        .unwrap();
    assert_eq!(out.len(), 3);
    for r in out {
        match r {
            Err(PluginError::Failed(m)) => assert!(m.contains("\"undeclared\""), "{m}"),
            other => panic!("expected a per-customer error, got {other:?}"),
        }
    }
}

#[test]
fn a_stage_outside_the_graph_is_refused() {
    let rt = runtime();
    let p = load(&rt, "hostile");
    let c = &customers()[0];
    let e = Event {
        kind: "visit",
        at: 1,
        ..Default::default()
    };
    let err = p
        .session(&ctx(0), Some(&rules("bad-stage")))
        .unwrap()
        .on_event(&ctx(0), c, &e)
        .unwrap_err();
    match err {
        RuntimeError::BadOutput { message, .. } => {
            assert!(message.contains("\"nowhere\""), "{message}")
        }
        other => panic!("expected BadOutput, got {other:?}"),
    }
    // The well-behaved mode moves to a declared stage.
    let ok = p
        .session(&ctx(0), Some(&rules("ok")))
        .unwrap()
        .on_event(&ctx(0), c, &e)
        .unwrap();
    assert_eq!(ok.len(), 1);
}

#[test]
fn a_flood_of_actions_is_refused() {
    let rt = runtime();
    let p = load(&rt, "hostile");
    let c = &customers()[0];
    let e = Event {
        kind: "visit",
        at: 1,
        ..Default::default()
    };
    let err = p
        .session(&ctx(0), Some(&rules("flood")))
        .unwrap()
        .on_event(&ctx(0), c, &e)
        .unwrap_err();
    match err {
        RuntimeError::BadOutput { message, .. } => {
            assert!(message.contains("200000 actions"), "{message}")
        }
        // Building 200,000 tags may instead hit the memory cap; both are contained.
        RuntimeError::MemoryLimit { .. } => {}
        other => panic!("expected BadOutput, got {other:?}"),
    }
    still_serves(&rt);
}

#[test]
fn plugins_see_no_environment_files_clock_or_randomness() {
    let rt = runtime();
    let p = load(&rt, "hostile");
    let now = 1_732_406_400_000;
    let snoop = |tenant: &str| {
        let c = stagecraft::runtime::CallContext {
            now,
            tenant: tenant.into(),
        };
        let out = p
            .session(&c, Some(&rules("snoop")))
            .unwrap()
            .score(&c, &customers()[..1])
            .unwrap();
        out[0].as_ref().unwrap().reasons[0].args.clone()
    };
    std::env::set_var("STAGECRAFT_SECRET", "hunter2");
    let a = snoop("acme");
    assert_eq!(a[0], 0.0, "environment variables visible to the plugin");
    assert_eq!(a[1], 0.0, "the plugin could read a host file");
    assert_eq!(
        a[2], now as f64,
        "the plugin's clock is not the call's `now`"
    );
    // Randomness is seeded identically for every instance: replays are exact.
    let b = snoop("other-tenant");
    assert_eq!(a[3], b[3], "randomness differs between instances");
}

#[test]
fn running_out_of_instance_slots_is_reported_as_busy_not_as_a_fault() {
    let rt = runtime(); // 16 slots
    let p = load(&rt, "value_tiers");
    let held: Vec<_> = (0..16).map(|_| p.session(&ctx(0), None).unwrap()).collect();
    let err = p.session(&ctx(0), None).err().expect("the pool is full");
    assert!(matches!(err, RuntimeError::Busy(16)), "{err:?}");
    assert!(!err.is_fault());
    drop(held);
    assert!(p.session(&ctx(0), None).is_ok());
}
