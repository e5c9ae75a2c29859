//! One evaluation path: what a dry-run reports is what the live path stored
//! (its "before") and exactly what activating the candidate and rescoring writes
//! (its "after"), for a pack whose score depends on the stage and the tag its own
//! `on-event` sets (`tests/plugins/lifecycle-scorer`). Checked over generated
//! customers and rule sets (proptest), on a real server and SQLite file.
//!
//! It failed before dry-run and rescore ran plugins the live way: the dry-run
//! scored the customer as stored and moved the stage apart, the rescore moved
//! the stage before scoring and never applied tags.

mod common;

use common::server::{send, Db, Pack, TestServer};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const DAY: i64 = 86_400_000;

/// A generated customer: orders placed, and days since the last contact.
#[derive(Debug, Clone)]
struct Shape {
    orders: u32,
    silent_days: i64,
}

fn shapes() -> impl Strategy<Value = Vec<Shape>> {
    prop::collection::vec(
        (0u32..6, 0i64..60).prop_map(|(orders, silent_days)| Shape {
            orders,
            silent_days,
        }),
        1..12,
    )
}

fn rules() -> impl Strategy<Value = Value> {
    (1i64..50, 1u32..6).prop_map(|(lose_after_days, hot_orders)| {
        json!({"lose_after_days": lose_after_days, "hot_orders": hot_orders})
    })
}

/// What a rescore or an event leaves on a customer, for the pack under test, in
/// the dry-run's terms: (value, band, segments, stage, tags).
type State = (
    Option<f64>,
    Option<String>,
    Vec<String>,
    Option<String>,
    Vec<String>,
);

fn stored(c: &Value) -> State {
    let s = &c["scores"]["lifecycle-scorer"];
    let mut segments: Vec<String> = c["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["plugin"] == "lifecycle-scorer")
        .map(|m| m["segment"].as_str().unwrap().to_string())
        .collect();
    segments.sort();
    let mut tags: Vec<String> = c["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    (
        s["value"].as_f64(),
        s["band"].as_str().map(str::to_string),
        segments,
        c["stage"].as_str().map(str::to_string),
        tags,
    )
}

fn reported(v: &Value) -> State {
    let mut segments: Vec<String> = v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    segments.sort();
    let tags: Vec<String> = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    (
        v["value"].as_f64(),
        v["band"].as_str().map(str::to_string),
        segments,
        v["stage"].as_str().map(str::to_string),
        tags,
    )
}

async fn all_states(s: &TestServer, n: usize) -> BTreeMap<String, State> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let id = format!("c{i:02}");
        let (status, c) = s.get(&format!("/v1/customers/{id}")).await;
        assert_eq!(status, 200, "{c}");
        out.insert(id, stored(&c));
    }
    out
}

async fn dry_run_equals_rescore_equals_live(shapes: Vec<Shape>, before: Value, after: Value) {
    let rules = before.to_string();
    let s = TestServer::start(
        Db::Sqlite,
        &[Pack {
            stem: "lifecycle_scorer",
            rules: Some(&rules),
            owns_lifecycle: true,
        }],
    )
    .await;
    let now = stagecraft::domain::now_ms();
    for (i, shape) in shapes.iter().enumerate() {
        let id = format!("c{i:02}");
        let (status, o) = s.post("/v1/customers", json!({"id": id})).await;
        assert_eq!(status, 201, "{o}");
        // Orders first, a day apart, the last contact `silent_days` ago: the
        // live path evaluates each as it arrives, with the rules active now.
        let last = now - shape.silent_days * DAY;
        for k in (0..shape.orders).rev() {
            let (status, o) = s
                .post(
                    &format!("/v1/customers/{id}/events"),
                    json!({"kind": "order", "amount_cents": 1000, "at": last - (k as i64 + 1) * DAY}),
                )
                .await;
            assert_eq!(status, 201, "{o}");
        }
        let (status, o) = s
            .post(
                &format!("/v1/customers/{id}/events"),
                json!({"kind": "visit", "at": last}),
            )
            .await;
        assert_eq!(status, 201, "{o}");
    }
    let live = all_states(&s, shapes.len()).await;

    let (status, report) = s
        .post(
            "/v1/plugins/lifecycle-scorer/dry-run",
            json!({"rules": after, "top": 200}),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    let listed: BTreeMap<String, (State, State)> = report["largest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["customer_id"].as_str().unwrap().to_string(),
                (reported(&d["before"]), reported(&d["after"])),
            )
        })
        .collect();
    for (id, (before_v, _)) in &listed {
        assert_eq!(
            before_v, &live[id],
            "{id}: the dry-run's 'before' is what the live path stored"
        );
    }

    let (status, o) = s
        .put("/v1/plugins/lifecycle-scorer/rules", after.clone())
        .await;
    assert_eq!(status, 201, "{o}");
    let (status, o) = s
        .post(
            "/v1/plugins/lifecycle-scorer/activate",
            json!({"version": "1.0.0", "rules_version": o["rules_version"]}),
        )
        .await;
    assert_eq!(status, 200, "{o}");
    let (status, o) = s.post("/v1/rescore", json!({})).await;
    assert_eq!(status, 202, "{o}");
    let job = s.wait_for_job(o["job"].as_str().unwrap()).await;
    assert_eq!(job["status"], "done", "{job}");
    let rescored = all_states(&s, shapes.len()).await;
    for (id, state) in &rescored {
        match listed.get(id) {
            Some((_, after_v)) => assert_eq!(
                state, after_v,
                "{id}: the rescore wrote what the dry-run said ({report})"
            ),
            None => assert_eq!(
                state, &live[id],
                "{id}: the dry-run said nothing changes, and the rescore changed it"
            ),
        }
    }
    let _ = send(s.client.get(s.url("/healthz"))).await;
    s.finish().await;
}

proptest! {
    // Each case starts a server and records a few dozen events: a few cases.
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    #[test]
    fn a_dry_run_shows_what_activation_and_a_rescore_write(
        shapes in shapes(),
        before in rules(),
        after in rules(),
    ) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(dry_run_equals_rescore_equals_live(shapes, before, after));
    }
}
