//! The built value-tiers component behaves exactly like the same code compiled
//! natively, honours its rule set, and is compiled once then taken from the cache.

mod common;

use common::*;
use stagecraft::runtime::{Lang, PluginError, RuntimeError};
use stagecraft_plugin::{Customer, Metrics, Plugin};
use value_tiers::ValueTiers;

fn population() -> Vec<Customer<'static>> {
    let ids: &'static [&'static str] =
        &["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"];
    ids.iter()
        .enumerate()
        .map(|(i, id)| Customer {
            id,
            metrics: Metrics {
                orders: (i * 3 % 11) as u32,
                purchase_days: (i * 2 % 7) as u32,
                total_spend_cents: (i as i64 * 37_000) % 160_000,
                touchpoints_90d: (i % 5) as u32,
                complaints: (i % 4 == 3) as u32 * 30,
                ..Default::default()
            },
            ..Default::default()
        })
        .collect()
}

#[test]
fn wasm_and_native_agree_on_every_score_and_segment() {
    let rt = runtime();
    let p = load(&rt, "value_tiers");
    let batch = population();
    let wasm_scores = p
        .session(&ctx(0), None)
        .unwrap()
        .score(&ctx(0), &batch)
        .unwrap();
    let wasm_segments = p
        .session(&ctx(0), None)
        .unwrap()
        .segment(&ctx(0), &batch)
        .unwrap();
    let native = ValueTiers::with_default_rules().unwrap();
    let nctx = stagecraft_plugin::testing::context(0);
    let mut bands = std::collections::BTreeSet::new();
    for ((c, ws), wseg) in batch.iter().zip(wasm_scores).zip(wasm_segments) {
        let ws = ws.unwrap();
        let ns = native.score(&nctx, c).unwrap();
        assert_eq!(ws.value, ns.value, "{}", c.id);
        assert_eq!(ws.band.as_deref(), ns.band.as_deref(), "{}", c.id);
        let codes: Vec<&str> = ws.reasons.iter().map(|r| r.code.as_str()).collect();
        let ncodes: Vec<&str> = ns.reasons.iter().map(|r| r.code.as_ref()).collect();
        assert_eq!(codes, ncodes);
        let nseg = native.segment(&nctx, c).unwrap();
        assert_eq!(wseg.unwrap()[0].segment, nseg[0].segment);
        bands.insert(ws.band.unwrap());
    }
    // The population is built to cover all four classes.
    assert_eq!(bands.len(), 4, "{bands:?}");
}

#[test]
fn the_rule_set_changes_the_bands() {
    let rt = runtime();
    let p = load(&rt, "value_tiers");
    let c = vec![Customer {
        id: "x",
        metrics: Metrics {
            orders: 5,
            purchase_days: 5,
            total_spend_cents: 60_000,
            ..Default::default()
        },
        ..Default::default()
    }];
    let default = p
        .session(&ctx(0), None)
        .unwrap()
        .score(&ctx(0), &c)
        .unwrap();
    assert_eq!(default[0].as_ref().unwrap().band.as_deref(), Some("high"));
    let strict = value_tiers::DEFAULT_RULES.replace(
        "\"high_min_net_cents\": 50000",
        "\"high_min_net_cents\": 90000",
    );
    let out = p
        .session(&ctx(0), Some(&strict))
        .unwrap()
        .score(&ctx(0), &c)
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap().band.as_deref(), Some("medium"));
}

#[test]
fn a_bad_rule_set_is_rejected_with_the_plugins_own_message() {
    let rt = runtime();
    let p = load(&rt, "value_tiers");
    let inverted = value_tiers::DEFAULT_RULES.replace(
        "\"medium_min_net_cents\": 10000",
        "\"medium_min_net_cents\": 90000",
    );
    match p.check_rules(&inverted) {
        Err(RuntimeError::Plugin {
            plugin,
            error: PluginError::BadRules(m),
        }) => {
            assert_eq!(plugin, "value-tiers@0.1.0");
            assert_eq!(
                m,
                "high_min_net_cents must be at least medium_min_net_cents"
            );
        }
        other => panic!("expected BadRules, got {other:?}"),
    }
    assert!(p.check_rules(value_tiers::DEFAULT_RULES).is_ok());
}

#[test]
fn reasons_render_in_english_and_chinese() {
    let rt = runtime();
    let p = load(&rt, "value_tiers");
    let c = vec![Customer {
        id: "x",
        metrics: Metrics {
            orders: 4,
            purchase_days: 3,
            total_spend_cents: 40_000,
            ..Default::default()
        },
        ..Default::default()
    }];
    let s = p
        .session(&ctx(0), None)
        .unwrap()
        .score(&ctx(0), &c)
        .unwrap()
        .remove(0)
        .unwrap();
    let spend = s.reasons.iter().find(|r| r.code == "spend").unwrap();
    assert_eq!(
        p.manifest().render(spend, Lang::En),
        "spent 400 over 4 orders"
    );
    assert_eq!(p.manifest().render(spend, Lang::Zh), "4 笔订单共消费 400");
}

#[test]
fn a_component_is_compiled_once_and_then_loaded_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = wasm("value_tiers");
    let rt =
        stagecraft::runtime::Runtime::new(test_limits(), Some(dir.path().to_path_buf())).unwrap();
    let first = rt.load(&bytes).unwrap();
    // Loading alone writes nothing (a refused upload must leave no file); the
    // code is cached when its owner keeps the plugin.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    first.keep_compiled();
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let name = entries[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(first.digest()) && name.ends_with(".cwasm"),
        "{name}"
    );

    // A new runtime (a restarted host) takes it from disk: corrupt the entry's
    // contents and the load still succeeds by recompiling, replacing the entry.
    let rt2 =
        stagecraft::runtime::Runtime::new(test_limits(), Some(dir.path().to_path_buf())).unwrap();
    assert_eq!(rt2.load(&bytes).unwrap().digest(), first.digest());
    // That host stops before its entry is damaged. A host maps the file (the code,
    // and the memory image its instance slots keep for reuse), and a mapped file
    // cut short under a live process faults it (SIGBUS) when it touches those
    // pages: cutting it while `rt2` lived made this test fail now and then.
    drop(rt2);
    std::fs::write(&entries[0], b"garbage").unwrap();
    let rt3 =
        stagecraft::runtime::Runtime::new(test_limits(), Some(dir.path().to_path_buf())).unwrap();
    let third = rt3.load(&bytes).unwrap();
    assert_eq!(third.manifest().name, "value-tiers");
    third.keep_compiled();
    assert!(
        std::fs::metadata(&entries[0]).unwrap().len() > 1000,
        "the corrupt entry was not replaced"
    );
}

#[test]
fn many_sequential_sessions_reuse_pool_slots() {
    // More sessions than the pool has slots (16): instances are freed as sessions drop.
    let rt = runtime();
    let p = load(&rt, "value_tiers");
    for _ in 0..100 {
        let out = p
            .session(&ctx(0), None)
            .unwrap()
            .score(&ctx(0), &population())
            .unwrap();
        assert_eq!(out.len(), 12);
    }
}
