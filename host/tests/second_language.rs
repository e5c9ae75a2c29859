//! The contract is language-neutral: value-tiers ported to Python
//! (`plugins/value-tiers-py`, built with componentize-py by `cargo xtask plugins`)
//! loads through the same checks and scores exactly like the Rust build.

mod common;

use common::*;
use stagecraft::runtime::{Lang, Limits};
use stagecraft_plugin::snapshot::{Customer, Metrics};
use std::time::Duration;

fn population() -> Vec<Customer<'static>> {
    (0..200u32)
        .map(|i| Customer {
            id: "c",
            metrics: Metrics {
                orders: i * 3 % 11,
                purchase_days: i * 2 % 7,
                total_spend_cents: (i as i64 * 37_123) % 260_000,
                touchpoints_90d: i % 5,
                complaints: (i % 9 == 3) as u32 * (i % 4 + 1) * 4,
                ..Default::default()
            },
            ..Default::default()
        })
        .collect()
}

#[test]
fn the_python_port_scores_and_segments_exactly_like_the_rust_pack() {
    // CPython in wasm needs more room than a Rust plugin.
    let rt = runtime_with(Limits {
        call_deadline: Duration::from_secs(10),
        memory_bytes: 256 << 20,
        fuel: None,
        max_instances: 8,
    });
    let py = load(&rt, "value_tiers_py");
    let rust = load(&rt, "value_tiers");
    assert_eq!(py.manifest().name, "value-tiers-py");
    assert_eq!(
        py.manifest().reasons,
        rust.manifest().reasons,
        "the same reason catalogue, English and Chinese"
    );
    let batch = population();
    let ctx = ctx(1_732_406_400_000);
    let (ps, rs) = (
        py.session(&ctx, None).unwrap().score(&ctx, &batch).unwrap(),
        rust.session(&ctx, None)
            .unwrap()
            .score(&ctx, &batch)
            .unwrap(),
    );
    let mut bands = std::collections::BTreeSet::new();
    for (p, r) in ps.iter().zip(&rs) {
        let (p, r) = (p.as_ref().unwrap(), r.as_ref().unwrap());
        assert_eq!(p, r);
        let texts =
            |m: &stagecraft::runtime::Manifest, s: &stagecraft::runtime::Score| -> Vec<String> {
                s.reasons.iter().map(|x| m.render(x, Lang::Zh)).collect()
            };
        assert_eq!(texts(py.manifest(), p), texts(rust.manifest(), r));
        bands.insert(p.band.clone().unwrap());
    }
    assert_eq!(
        bands.len(),
        4,
        "the population covers every class: {bands:?}"
    );
    let (pg, rg) = (
        py.session(&ctx, None)
            .unwrap()
            .segment(&ctx, &batch)
            .unwrap(),
        rust.session(&ctx, None)
            .unwrap()
            .segment(&ctx, &batch)
            .unwrap(),
    );
    assert_eq!(pg, rg);
    // Its own rule checks answer as the plugin's error, not a trap.
    let err = py
        .check_rules(r#"{"high_min_net_cents": 1}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing or not a whole number"), "{err}");
}
