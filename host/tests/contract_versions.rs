//! Contract versions side by side. The packs were built once with the 0.1.0 SDK
//! and kept as components (`tests/fixtures/contract-0.1.0/`); the host runs them
//! beside the packs as built now (0.2.0), and they answer exactly as they did
//! before the upgrade: `outputs.json` beside them holds what they answered then
//! (scores, segments and on-event actions over 240 generated customers and
//! events), written with `STAGECRAFT_BLESS=1` while the 0.2.0 builds still
//! answered the same, which the blessing run checks.

mod common;

use serde_json::{json, Value};
use stagecraft::runtime::{CallContext, LoadedPlugin, Version};
use stagecraft_plugin::snapshot::{Customer, Event, Fields, Metrics, Value as V};
use std::path::PathBuf;

const PACKS: [&str; 5] = [
    "value_tiers",
    "b2b_trade",
    "fitness_studio",
    "o2o_engagement",
    "clv",
];
const NOW: i64 = 1_780_000_000_000;
const DAY: i64 = 86_400_000;
const KINDS: [&str; 14] = [
    "order",
    "visit",
    "class",
    "inquiry",
    "quote",
    "sample",
    "contract",
    "membership",
    "payment-missed",
    "experience",
    "complaint",
    "referral",
    "check-in",
    "message",
];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/contract-0.1.0")
}

fn fixture(stem: &str) -> Vec<u8> {
    let path = fixtures().join(format!("{stem}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Customer `i`: varied metrics, tags, fields and stages, deterministic.
fn customer(i: i64, ids: &[String]) -> Customer<'_> {
    let orders = (i % 7) as u32;
    let last = NOW - ((i * 37) % 420) * DAY;
    let tags: &[&[&str]] = &[&[], &["vip"], &["lapsed"], &["price-sensitive", "vip"]];
    let stages = [
        None,
        Some("lead"),
        Some("customer"),
        Some("member"),
        Some("active"),
    ];
    Customer {
        id: &ids[i as usize],
        stage: stages[(i % 5) as usize],
        source: [None, Some("web"), Some("seed"), Some("referral")][(i % 4) as usize],
        created_at: NOW - (400 + (i * 13) % 600) * DAY,
        metrics: Metrics {
            orders,
            purchase_days: orders.min((i % 5) as u32),
            total_spend_cents: (i * 7_919) % 250_000 - if i % 11 == 0 { 30_000 } else { 0 },
            first_order_at: (orders > 0).then_some(last - ((i * 17) % 300) * DAY),
            last_order_at: (orders > 0).then_some(last),
            last_contact_at: Some(NOW - ((i * 11) % 120) * DAY),
            complaints: (i % 3) as u32,
            referrals: (i % 4 == 1) as u32,
            touchpoints_90d: ((i * 5) % 17) as u32,
        },
        tags: tags[(i % 4) as usize].to_vec(),
        segments: vec![],
        fields: Fields(vec![
            ("price_sensitive", V::Boolean(i % 2 == 0)),
            ("visits_per_week", V::Number((i % 6) as f64)),
            ("joined_at", V::Time(NOW - (i % 900) * DAY)),
        ]),
        events: vec![],
    }
}

/// The event customer `i` gets, of every kind in turn.
fn event(i: i64) -> Event<'static> {
    let kind = KINDS[(i % KINDS.len() as i64) as usize];
    Event {
        kind,
        channel: Some(["web", "store", "phone"][(i % 3) as usize]),
        at: NOW - (i % 5) * 3_600_000,
        amount_cents: (kind == "order").then_some((i * 1_234) % 90_000),
        fields: Fields(vec![
            (
                "role",
                V::Text(["buyer", "engineer", "owner"][(i % 3) as usize]),
            ),
            ("question", V::Text("delivery time?")),
            ("rating", V::Number((i % 5 + 1) as f64)),
            ("topic", V::Text("price")),
            ("ends_at", V::Time(NOW + (i % 60) * DAY)),
        ]),
    }
}

/// What a plugin answers over the generated customers, as JSON.
fn outputs(plugin: &LoadedPlugin) -> Value {
    let ctx = CallContext {
        now: NOW,
        tenant: "acme".into(),
    };
    let ids: Vec<String> = (0..240).map(|i| format!("c{i}")).collect();
    let customers: Vec<Customer> = (0..240).map(|i| customer(i, &ids)).collect();
    let m = plugin.manifest();
    let scores: Vec<Value> = if m.scoring {
        let mut s = plugin.session(&ctx, None).unwrap();
        s.score(&ctx, &customers)
            .unwrap()
            .into_iter()
            .map(|r| json!(r.map_err(|e| e.to_string())))
            .collect()
    } else {
        vec![]
    };
    let segments: Vec<Value> = if m.segmentation {
        let mut s = plugin.session(&ctx, None).unwrap();
        s.segment(&ctx, &customers)
            .unwrap()
            .into_iter()
            .map(|r| json!(r.map_err(|e| e.to_string())))
            .collect()
    } else {
        vec![]
    };
    let actions: Vec<Value> = customers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut s = plugin.session(&ctx, None).unwrap();
            json!(s
                .on_event(&ctx, c, &event(i as i64))
                .map_err(|e| e.to_string()))
        })
        .collect();
    json!({ "manifest": m, "scores": scores, "segments": segments, "actions": actions })
}

#[test]
fn the_kept_0_1_0_builds_load_as_0_1_0_beside_the_0_2_0_builds() {
    let rt = common::runtime();
    for stem in PACKS {
        let old = rt.load(&fixture(stem)).unwrap();
        let new = common::load(&rt, stem);
        assert_eq!(
            (old.contract(), new.contract()),
            (Version::V0_1, Version::V0_2),
            "{stem}"
        );
        assert_eq!(old.manifest().name, new.manifest().name);
    }
    // The Python port is built from source against 0.1.0 on every run.
    assert_eq!(
        common::load(&rt, "value_tiers_py").contract(),
        Version::V0_1
    );
}

#[test]
fn the_kept_0_1_0_builds_answer_as_before_the_upgrade() {
    let rt = common::runtime();
    let golden_path = fixtures().join("outputs.json");
    let mut got = serde_json::Map::new();
    for stem in PACKS {
        got.insert(stem.to_string(), outputs(&rt.load(&fixture(stem)).unwrap()));
    }
    let got = Value::Object(got);
    if std::env::var_os("STAGECRAFT_BLESS").is_some() {
        // Blessing is only honest while the packs as built now answer the same.
        for stem in PACKS {
            assert_eq!(
                got[stem],
                outputs(&common::load(&rt, stem)),
                "{stem}: the 0.2.0 build answers differently"
            );
        }
        std::fs::write(&golden_path, serde_json::to_string(&got).unwrap() + "\n").unwrap();
    }
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(&golden_path).unwrap()).unwrap();
    for stem in PACKS {
        let (g, w) = (&got[stem], &want[stem]);
        assert!(
            w["scores"].as_array().unwrap().len() + w["segments"].as_array().unwrap().len() > 0,
            "{stem}: the golden outputs are empty"
        );
        assert_eq!(g, w, "{stem} answers differently from before the upgrade");
    }
}

/// Every version the host runs has its WIT under `wit/<version>/` (the released
/// `wit/plugin.wit` stays, as 0.1.0), and the SDK carries a copy of the newest
/// one (it builds outside this repository).
#[test]
fn each_version_has_its_wit_and_the_sdk_carries_the_newest() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut folders: Vec<String> = std::fs::read_dir(root.join("wit"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    folders.sort();
    let versions: Vec<&str> = Version::ALL.iter().map(|v| v.as_str()).collect();
    assert_eq!(folders, versions);
    for v in Version::ALL {
        let wit = std::fs::read_to_string(root.join(format!("wit/{v}/plugin.wit"))).unwrap();
        assert!(
            wit.contains(&format!("package stagecraft:plugin@{v};")),
            "wit/{v} declares another version"
        );
    }
    // The released path of 0.1.0 stays where integrators found it.
    assert_eq!(
        std::fs::read_to_string(root.join("wit/plugin.wit")).unwrap(),
        std::fs::read_to_string(root.join("wit/0.1.0/plugin.wit")).unwrap(),
        "wit/plugin.wit is the released 0.1.0 contract and must not change"
    );
    let newest = Version::ALL.last().unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("plugins/sdk/wit/plugin.wit")).unwrap(),
        std::fs::read_to_string(root.join(format!("wit/{newest}/plugin.wit"))).unwrap(),
        "plugins/sdk/wit/plugin.wit must be a copy of wit/{newest}/plugin.wit"
    );
}
