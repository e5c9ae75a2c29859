//! The plugin registry and hot swap over HTTP, on SQLite and PostgreSQL: upload,
//! rule sets, activation and rollback under load, dry-run, bulk rescore, the
//! circuit breaker.
//!
//! The `scorer` test plugin scores 1 + bonus in version 1.0.0 and 2 + bonus in
//! 2.0.0, with band and segment naming the version, so every answer shows which
//! version and rule set produced it.

#[macro_use]
mod common;

use common::server::{pack, send, Db, Pack, TestServer};
use common::wasm;
use reqwest::Method;
use serde_json::{json, Value};
use stagecraft::domain::{now_ms, Role};
use stagecraft_plugin::Plugin;
use std::time::{Duration, Instant};

on_both_databases!(
    uploads_are_checked_stored_once_and_listed,
    rule_sets_are_checked_by_schema_and_by_the_plugin,
    activation_really_changes_behaviour_and_rollback_restores_it,
    requests_during_activations_and_rollbacks_never_fail_or_mix_versions,
    dry_run_counts_exactly_the_customers_whose_band_changes,
    bulk_rescore_applies_the_active_rules_to_every_customer,
    a_failing_version_is_suspended_and_the_previous_one_restored,
    a_rescore_left_unfinished_by_a_dead_host_is_resumed,
    a_new_lifecycle_owner_restages_customers_as_its_dry_run_said,
    every_activation_and_rollback_is_a_row_of_its_own,
    bulk_reads_and_writes_match_the_one_customer_functions,
);

async fn upload(s: &TestServer, bytes: Vec<u8>) -> (u16, Value) {
    send(
        s.req(Method::POST, "/v1/plugins")
            .header("content-type", "application/wasm")
            .body(bytes),
    )
    .await
}

async fn customer_with_event(s: &TestServer, id: &str) -> Value {
    let (status, c) = s.post("/v1/customers", json!({ "id": id })).await;
    assert!(status == 201 || status == 409, "{c}");
    event(s, id).await
}

async fn event(s: &TestServer, id: &str) -> Value {
    let (status, o) = s
        .post(
            &format!("/v1/customers/{id}/events"),
            json!({"kind": "visit"}),
        )
        .await;
    assert_eq!(status, 201, "{o}");
    o
}

fn scorer_pack() -> Pack<'static> {
    pack("scorer")
}

async fn uploads_are_checked_stored_once_and_listed(db: Db) {
    let s = TestServer::start(db, &[scorer_pack()]).await;
    let (status, up) = upload(&s, wasm("scorer_v2")).await;
    assert_eq!(status, 201, "{up}");
    assert_eq!(
        (
            up["name"].as_str(),
            up["version"].as_str(),
            up["stored"].as_bool()
        ),
        (Some("scorer"), Some("2.0.0"), Some(true))
    );
    let (status, again) = upload(&s, wasm("scorer_v2")).await;
    assert_eq!(
        (status, again["stored"].as_bool()),
        (200, Some(false)),
        "identical bytes are a no-op"
    );

    // Other bytes under a stored name and version: 409.
    let mut other = wasm("scorer_v2");
    other.extend_from_slice(&[0, 5, 4, b'p', b'a', b'd', b'!']); // a custom section: same behaviour, other bytes
    let (status, e) = upload(&s, other).await;
    assert_eq!(status, 409, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scorer@2.0.0"),
        "{e}"
    );

    for (bytes, words) in [
        (b"hello".to_vec(), "not a WebAssembly"),
        (wasm("forbidden_import"), "acme:net/outbound"),
        (wasm("other-world"), "stagecraft:plugin/pack"),
    ] {
        let (status, e) = upload(&s, bytes).await;
        assert_eq!(status, 422, "{e}");
        let m = e["error"]["message"].as_str().unwrap();
        assert!(m.contains(words), "{m:?} should mention {words:?}");
    }
    let (status, e) = upload(&s, vec![0u8; 17 << 20]).await;
    assert_eq!(status, 413, "{e}");
    let viewer = s.token_for(Role::Viewer).await;
    let (status, _) = send(
        s.client
            .post(s.url("/v1/plugins"))
            .bearer_auth(&viewer)
            .body(wasm("scorer_v2")),
    )
    .await;
    assert_eq!(status, 403);

    let (_, list) = s.get("/v1/plugins").await;
    let scorer = &list["plugins"][0];
    assert_eq!(scorer["name"], "scorer");
    assert_eq!(scorer["active"]["version"], "1.0.0");
    let statuses: Vec<(&str, &str)> = scorer["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap(),
                v["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(statuses, [("1.0.0", "active"), ("2.0.0", "available")]);
    let (status, _) = s.get("/v1/plugins/nothing").await;
    assert_eq!(status, 404);
    s.finish().await;
}

async fn rule_sets_are_checked_by_schema_and_by_the_plugin(db: Db) {
    let s = TestServer::start(db, &[scorer_pack()]).await;
    let put = |body: Value| s.req(Method::PUT, "/v1/plugins/scorer/rules").json(&body);
    let (status, e) = send(put(json!({"bonus": "ten"}))).await;
    assert_eq!(status, 422, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("/bonus"),
        "the schema error names the field: {e}"
    );
    let (status, e) = send(put(json!({"bonus": 5000}))).await;
    assert_eq!(status, 422, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bonus must be between -1000 and 1000"),
        "the plugin's own message: {e}"
    );
    let (status, ok) = send(put(json!({"bonus": 10}))).await;
    assert_eq!(
        (status, ok["rules_version"].as_i64()),
        (201, Some(1)),
        "{ok}"
    );
    let (status, ok) = send(put(json!({"bonus": 20}))).await;
    assert_eq!(
        (status, ok["rules_version"].as_i64()),
        (201, Some(2)),
        "{ok}"
    );
    let (_, p) = s.get("/v1/plugins/scorer").await;
    assert_eq!(p["rule_sets"].as_array().unwrap().len(), 2);
    // Storing rules changes nothing until they are activated.
    let o = customer_with_event(&s, "r").await;
    assert_eq!(o["scores"]["scorer"]["value"], 1.0);
    s.finish().await;
}

async fn activation_really_changes_behaviour_and_rollback_restores_it(db: Db) {
    let s = TestServer::start(db, &[scorer_pack()]).await;
    let o = customer_with_event(&s, "c").await;
    assert_eq!(
        (
            o["scores"]["scorer"]["value"].as_f64(),
            o["scores"]["scorer"]["version"].as_str()
        ),
        (Some(1.0), Some("1.0.0"))
    );
    upload(&s, wasm("scorer_v2")).await;
    let (status, rules) = send(
        s.req(Method::PUT, "/v1/plugins/scorer/rules?version=2.0.0")
            .json(&json!({"bonus": 0.5})),
    )
    .await;
    assert_eq!(status, 201, "{rules}");

    let (status, a) = s
        .post(
            "/v1/plugins/scorer/activate",
            json!({"version": "2.0.0", "rules_version": 1}),
        )
        .await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["from"]["version"], "1.0.0");
    let o = event(&s, "c").await;
    assert_eq!(
        (
            o["scores"]["scorer"]["value"].as_f64(),
            o["scores"]["scorer"]["band"].as_str()
        ),
        (Some(2.5), Some("v2")),
        "{o}"
    );
    assert_eq!(o["segments_joined"], json!(["v2"]));
    assert_eq!(o["segments_left"], json!(["v1"]));

    let (status, r) = s
        .post(
            "/v1/plugins/scorer/rollback",
            json!({"reason": "B scores too high"}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["from"]["version"].as_str(), r["to"]["version"].as_str()),
        (Some("2.0.0"), Some("1.0.0"))
    );
    let o = event(&s, "c").await;
    assert_eq!(
        (
            o["scores"]["scorer"]["value"].as_f64(),
            o["scores"]["scorer"]["version"].as_str()
        ),
        (Some(1.0), Some("1.0.0")),
        "{o}"
    );
    // Before the first activation the plugin was not enabled: that is where the
    // next rollback goes; after that there is nothing left to roll back.
    let (status, r) = s.post("/v1/plugins/scorer/rollback", json!({})).await;
    assert_eq!((status, &r["to"]), (200, &Value::Null), "{r}");
    let (_, p) = s.get("/v1/plugins/scorer").await;
    assert!(p["active"].is_null(), "{p}");
    let o = event(&s, "c").await;
    assert!(o["scores"].get("scorer").is_none(), "not enabled: {o}");
    let (status, e) = s.post("/v1/plugins/scorer/rollback", json!({})).await;
    assert_eq!(status, 409, "{e}");
    let (status, e) = s
        .post("/v1/plugins/scorer/activate", json!({"version": "9.9.9"}))
        .await;
    assert_eq!(status, 404, "{e}");
    let agent = s.token_for(Role::Agent).await;
    let (status, _) = send(
        s.client
            .post(s.url("/v1/plugins/scorer/activate"))
            .bearer_auth(&agent)
            .json(&json!({"version": "2.0.0"})),
    )
    .await;
    assert_eq!(status, 403);

    let (_, audit) = s.get("/v1/audit").await;
    let entries: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] != "token.create")
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.starts_with(&[
            "plugin.rollback",
            "plugin.rollback",
            "plugin.activate",
            "rules.put",
            "plugin.upload"
        ]),
        "{actions:?}"
    );
    assert_eq!(
        (
            entries[0]["detail"]["from"]["version"].as_str(),
            &entries[0]["detail"]["to"]
        ),
        (Some("1.0.0"), &Value::Null),
        "the last rollback disabled the plugin"
    );
    let rb = entries[1];
    assert_eq!(
        (
            rb["detail"]["from"]["version"].as_str(),
            rb["detail"]["to"]["version"].as_str()
        ),
        (Some("2.0.0"), Some("1.0.0"))
    );
    assert!(
        rb["actor"].as_str().unwrap().starts_with("tok_"),
        "who: {rb}"
    );
    s.finish().await;
}

async fn requests_during_activations_and_rollbacks_never_fail_or_mix_versions(db: Db) {
    let s = TestServer::start(db, &[scorer_pack()]).await;
    upload(&s, wasm("scorer_v2")).await;
    for i in 0..4 {
        s.post("/v1/customers", json!({ "id": format!("load-{i}") }))
            .await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut streams = Vec::new();
    for i in 0..4 {
        let (client, url, token, stop) = (
            s.client.clone(),
            s.url(&format!("/v1/customers/load-{i}/events")),
            s.token.clone(),
            stop.clone(),
        );
        streams.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, o) = send(
                    client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({"kind": "visit"})),
                )
                .await;
                answers.push((status, o));
            }
            answers
        }));
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (status, a) = s
            .post("/v1/plugins/scorer/activate", json!({"version": "2.0.0"}))
            .await;
        assert_eq!(status, 200, "{a}");
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (status, r) = s.post("/v1/plugins/scorer/rollback", json!({})).await;
        assert_eq!(status, 200, "{r}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = std::collections::BTreeMap::new();
    for t in streams {
        for (status, o) in t.await.unwrap() {
            assert_eq!(status, 201, "a request failed during a swap: {o}");
            assert!(o["failures"].as_array().unwrap().is_empty(), "{o}");
            let sc = &o["scores"]["scorer"];
            let version = sc["version"].as_str().unwrap().to_string();
            let expected = if version == "1.0.0" {
                (1.0, "v1")
            } else {
                (2.0, "v2")
            };
            assert_eq!(
                (sc["value"].as_f64().unwrap(), sc["band"].as_str().unwrap()),
                expected,
                "an answer mixed versions: {o}"
            );
            *seen.entry(version).or_insert(0) += 1;
        }
    }
    assert!(
        seen.len() == 2,
        "both versions served during the run: {seen:?}"
    );
    s.finish().await;
}

/// The band value-tiers gives each customer under `rules`, computed natively
/// from the stored metrics: the reference the dry-run must match.
async fn native_bands(
    s: &TestServer,
    rules: &str,
    now: i64,
) -> std::collections::BTreeMap<String, String> {
    let plugin = value_tiers::ValueTiers::configure(rules).unwrap();
    let ctx = stagecraft_plugin::testing::context(now);
    let mut out = std::collections::BTreeMap::new();
    let mut conn = s.crm.store().conn().await.unwrap();
    let ids = stagecraft::store::customer_ids(&mut conn, "acme", None)
        .await
        .unwrap();
    for id in ids {
        let mut c = stagecraft::store::load_customer(
            &mut conn,
            s.crm.store().backend(),
            "acme",
            &id,
            false,
        )
        .await
        .unwrap()
        .unwrap();
        c.metrics.touchpoints_90d = stagecraft::store::touchpoints_90d(&mut conn, "acme", &id, now)
            .await
            .unwrap();
        let snap = stagecraft::domain::customer_snapshot(&c, &[]);
        let band = plugin.score(&ctx, &snap).unwrap().band.unwrap().to_string();
        out.insert(id, band);
    }
    out
}

async fn import_cdnow_sample(s: &TestServer, lines: usize) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data/cdnow/CDNOW_master.txt");
    let text = std::fs::read_to_string(path).unwrap();
    let sample: String = text
        .lines()
        .take(lines + 1)
        .map(|l| format!("{l}\n"))
        .collect();
    // Scored as of today, as the native computation it is compared with.
    let url = format!("/v1/import/cdnow?now={}", now_ms());
    let (status, r) = send(s.req(Method::POST, &url).body(sample)).await;
    assert_eq!(status, 200, "{r}");
}

const STRICT: &str = r#"{"high_min_net_cents": 20000, "high_min_purchase_days": 2, "medium_min_net_cents": 6000,
    "cost_per_order_cents": 500, "cost_per_touchpoint_cents": 300, "cost_per_complaint_cents": 5000}"#;

async fn dry_run_counts_exactly_the_customers_whose_band_changes(db: Db) {
    let s = TestServer::start(db, &[pack("value_tiers")]).await;
    import_cdnow_sample(&s, 3000).await;
    let (status, r) = send(
        s.req(Method::PUT, "/v1/plugins/value-tiers/rules")
            .header("content-type", "application/json")
            .body(STRICT),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    let now = now_ms();
    let before = native_bands(&s, value_tiers::DEFAULT_RULES, now).await;
    let after = native_bands(&s, STRICT, now).await;
    let expected = before.iter().filter(|(id, b)| after[*id] != **b).count() as i64;
    assert!(expected > 0, "the two rule sets must disagree somewhere");

    // A sample runs inline: the first N customers by id.
    let (status, d) = s
        .post(
            "/v1/plugins/value-tiers/dry-run",
            json!({"rules_version": 1, "sample": 300}),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["customers"], 300);
    let first: Vec<&String> = before.keys().take(300).collect();
    let expected_in_sample = first
        .iter()
        .filter(|id| after[**id] != before[**id])
        .count() as i64;
    assert_eq!(
        d["changed"]["bands"].as_i64(),
        Some(expected_in_sample),
        "{d}"
    );
    // The customers listed are ones whose outcome changes, not just their wording.
    let listed = d["largest"].as_array().unwrap();
    assert!(!listed.is_empty());
    for c in listed {
        let (b, a) = (&c["before"], &c["after"]);
        assert!(
            ["value", "band", "segments", "stage", "error"]
                .iter()
                .any(|k| b[k] != a[k]),
            "{c}"
        );
    }
    let (status, d) = s
        .post(
            "/v1/plugins/value-tiers/dry-run",
            json!({"rules_version": 1, "all": true, "top": 5}),
        )
        .await;
    assert_eq!(status, 202, "{d}");
    let job = d["job"].as_str().unwrap().to_string();
    let report = s.wait_for_job(&job).await;
    assert_eq!(
        report["result"]["customers"].as_i64(),
        Some(before.len() as i64)
    );
    assert_eq!(
        report["result"]["changed"]["bands"].as_i64(),
        Some(expected),
        "{report}"
    );
    assert_eq!(report["done"], report["total"]);
    let largest = report["result"]["largest"].as_array().unwrap();
    assert!(largest.len() <= 5 && !largest.is_empty());
    assert!(largest[0]["after"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r.as_str().unwrap().contains("net value")));
    // Nothing was written: the stored bands are the active rules' bands.
    let mut conn = s.crm.store().conn().await.unwrap();
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT customer_id, band FROM scores WHERE tenant_id = 'acme' ORDER BY customer_id",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert!(stored.iter().all(|(id, band)| &before[id] == band));
    // Another tenant cannot see the job.
    let other = s.other_tenant_admin().await;
    let (status, _) = send(
        s.client
            .get(s.url(&format!("/v1/jobs/{job}")))
            .bearer_auth(&other),
    )
    .await;
    assert_eq!(status, 404);
    s.finish().await;
}

async fn bulk_rescore_applies_the_active_rules_to_every_customer(db: Db) {
    let s = TestServer::start(db, &[pack("value_tiers")]).await;
    import_cdnow_sample(&s, 1500).await;
    send(
        s.req(Method::PUT, "/v1/plugins/value-tiers/rules")
            .header("content-type", "application/json")
            .body(STRICT),
    )
    .await;
    let (status, a) = s
        .post(
            "/v1/plugins/value-tiers/activate",
            json!({"version": "0.1.0", "rules_version": 1}),
        )
        .await;
    assert_eq!(status, 200, "{a}");
    let (status, j) = s.post("/v1/rescore", json!({})).await;
    assert_eq!(status, 202, "{j}");
    let done = s.wait_for_job(j["job"].as_str().unwrap()).await;
    let expected = native_bands(&s, STRICT, now_ms()).await;
    assert_eq!(done["done"].as_i64(), Some(expected.len() as i64));
    let mut conn = s.crm.store().conn().await.unwrap();
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT customer_id, band FROM scores WHERE tenant_id = 'acme' ORDER BY customer_id",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(stored.len(), expected.len());
    for (id, band) in stored {
        assert_eq!(band, expected[&id], "{id}");
    }
    let (_, segs) = s.get("/v1/analytics/segments").await;
    let total: i64 = segs["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["customers"].as_i64().unwrap())
        .sum();
    assert_eq!(
        total,
        expected.len() as i64,
        "one tier each after the rescore: {segs}"
    );
    s.finish().await;
}

/// A tenant without a lifecycle owner takes one on: the dry-run previews the
/// stages, activation plus a rescore applies exactly those, each with a stage
/// move on the timeline.
async fn a_new_lifecycle_owner_restages_customers_as_its_dry_run_said(db: Db) {
    let s = TestServer::start(db, &[pack("value_tiers")]).await;
    import_cdnow_sample(&s, 400).await;
    upload(&s, wasm("b2b_trade")).await;
    let (status, d) = s
        .post("/v1/plugins/b2b-trade/dry-run", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(status, 200, "{d}");
    let previewed = d["changed"]["stages"].as_i64().unwrap();
    assert!(previewed > 0, "{d}");
    let (status, a) = s
        .post(
            "/v1/plugins/b2b-trade/activate",
            json!({"version": "1.0.0", "owns_lifecycle": true}),
        )
        .await;
    assert_eq!(status, 200, "{a}");
    let (_, j) = s.post("/v1/rescore", json!({})).await;
    s.wait_for_job(j["job"].as_str().unwrap()).await;
    let (_, funnel) = s.get("/v1/analytics/funnel").await;
    assert_eq!(funnel["owner"], "b2b-trade");
    let staged: i64 = funnel["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["customers"].as_i64().unwrap())
        .sum();
    assert_eq!(staged, previewed, "{funnel}");
    let mut conn = s.crm.store().conn().await.unwrap();
    let moves: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM stage_moves WHERE tenant_id = 'acme' AND plugin = 'b2b-trade' AND event_id IS NULL",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(moves, previewed);
    // Segments are computed on the new stage (b2b-trade's `select` is the persona stage).
    let stale: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM memberships m JOIN customers c ON c.tenant_id = m.tenant_id AND c.id = m.customer_id \
         WHERE m.tenant_id = 'acme' AND m.plugin = 'b2b-trade' AND m.segment = 'select' AND c.stage IS NOT NULL AND c.stage <> 'persona'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(stale, 0, "no staged customer keeps the segment of no stage");
    drop(conn);
    // A second rescore moves nobody: the stages already are what the owner says.
    let (_, j) = s.post("/v1/rescore", json!({})).await;
    s.wait_for_job(j["job"].as_str().unwrap()).await;
    let mut conn = s.crm.store().conn().await.unwrap();
    let again: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM stage_moves WHERE tenant_id = 'acme'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(again, previewed);
    drop(conn);
    s.finish().await;
}

/// Scores stored as the pipeline and the rescore store them: the previous ones
/// read, the writes batched, the batch run.
async fn save_scores(
    conn: &mut sqlx::AnyConnection,
    rows: &[(String, stagecraft::store::StoredScore)],
) -> Vec<Option<(f64, Option<String>)>> {
    let mut batch = stagecraft::store::Batch::new();
    let previous = stagecraft::store::queue_scores(conn, &mut batch, "acme", rows, None)
        .await
        .unwrap();
    batch.run(conn).await.unwrap();
    previous
}

/// Memberships replaced the same way.
async fn replace_memberships(
    conn: &mut sqlx::AnyConnection,
    sets: &[stagecraft::store::SegmentSet],
    at: i64,
) -> Vec<(Vec<String>, Vec<String>)> {
    let mut batch = stagecraft::store::Batch::new();
    let changes = stagecraft::store::queue_memberships(conn, &mut batch, "acme", sets, at)
        .await
        .unwrap();
    batch.run(conn).await.unwrap();
    changes
}

/// What the rescore reads and writes a chunk at a time equals what the
/// per-customer functions read and write.
async fn bulk_reads_and_writes_match_the_one_customer_functions(db: Db) {
    use stagecraft::store::{self, RenderedReason, StoredScore};
    let s = TestServer::start(db, &[pack("value_tiers")]).await;
    import_cdnow_sample(&s, 1200).await;
    s.post(
        "/v1/customers",
        json!({"id": "zz-fields", "tags": ["b", "a"],
        "fields": {"city": "Porto", "email": "x@example.com", "size": 12}}),
    )
    .await;
    s.post("/v1/customers/zz-fields/events", json!({"kind": "visit"}))
        .await;
    let mut conn = s.crm.store().conn().await.unwrap();
    let mut ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM customers WHERE tenant_id = 'acme' ORDER BY id")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    ids.push("no-such-customer".into());
    let now = now_ms();
    let bulk = store::load_customers(&mut conn, "acme", &ids, now, 10)
        .await
        .unwrap();
    assert_eq!(bulk.len(), ids.len() - 1);
    for (c, events) in &bulk {
        let mut one =
            store::load_customer(&mut conn, s.crm.store().backend(), "acme", &c.id, false)
                .await
                .unwrap()
                .unwrap();
        one.metrics.touchpoints_90d = store::touchpoints_90d(&mut conn, "acme", &c.id, now)
            .await
            .unwrap();
        assert_eq!(c, &one, "{}", c.id);
        assert_eq!(
            events,
            &store::recent_events(&mut conn, "acme", &c.id, 10)
                .await
                .unwrap()
        );
    }
    assert!(bulk
        .iter()
        .any(|(c, _)| c.fields.len() == 3 && c.tags == ["a", "b"]));

    // Scores: a history row only where value or band changed.
    let score = |v: f64, band: &str| StoredScore {
        plugin: "bulk".into(),
        plugin_version: "1".into(),
        value: v,
        band: Some(band.into()),
        reasons: vec![],
        updated_at: now,
    };
    let rows: Vec<(String, StoredScore)> = ids[..250]
        .iter()
        .map(|id| (id.clone(), score(1.0, "a")))
        .collect();
    save_scores(&mut conn, &rows).await;
    save_scores(&mut conn, &rows).await;
    let mut changed = rows.clone();
    changed[7].1 = score(2.0, "a");
    changed[9].1 = score(1.0, "b");
    let previous = save_scores(&mut conn, &changed).await;
    assert_eq!(previous[7], Some((1.0, Some("a".to_string()))));
    assert_eq!(previous.len(), changed.len());
    let history: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM score_history WHERE plugin = 'bulk'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(history, 252);
    // Values go in as JSON text: every f64 must come back bit for bit, or each
    // rescore would see a change and write history.
    let odd = [
        0.1 + 0.2,
        1.0 / 3.0,
        -2.5e-7,
        123_456.789_012_345_6,
        5e300,
        f64::MIN_POSITIVE,
    ];
    let odd_rows: Vec<(String, StoredScore)> = odd
        .iter()
        .zip(&ids)
        .map(|(v, id)| {
            (
                id.clone(),
                StoredScore {
                    plugin: "odd".into(),
                    ..score(*v, "a")
                },
            )
        })
        .collect();
    save_scores(&mut conn, &odd_rows).await;
    let again = save_scores(&mut conn, &odd_rows).await;
    let back: Vec<f64> = again.iter().map(|p| p.as_ref().unwrap().0).collect();
    assert_eq!(back, odd);
    let odd_history: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM score_history WHERE plugin = 'odd'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(odd_history, odd.len() as i64);
    let stored = store::scores_of(&mut conn, "acme", &ids[7]).await.unwrap();
    assert!(
        stored.iter().any(|x| x.plugin == "bulk" && x.value == 2.0),
        "{stored:?}"
    );

    // Memberships: `since` stays for a segment that goes on, ended ones go.
    let reason = RenderedReason {
        code: "r".into(),
        points: 0.0,
        args: vec![],
        text: "r".into(),
    };
    let seg = |names: &[&str]| {
        names
            .iter()
            .map(|n| (n.to_string(), reason.clone()))
            .collect::<Vec<_>>()
    };
    let sets = |names: &[&str]| {
        ids[..150]
            .iter()
            .map(|id| store::SegmentSet {
                customer: id.clone(),
                plugin: "bulk".into(),
                segments: seg(names),
            })
            .collect::<Vec<_>>()
    };
    let first = replace_memberships(&mut conn, &sets(&["x", "y"]), 1000).await;
    assert_eq!(first[0], (vec!["x".to_string(), "y".to_string()], vec![]));
    let second = replace_memberships(&mut conn, &sets(&["y", "z", "z"]), 2000).await;
    assert_eq!(second[120], (vec!["z".to_string()], vec!["x".to_string()]));
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT segment, since FROM memberships WHERE plugin = 'bulk' AND customer_id = $1 ORDER BY segment",
    )
    .bind(&ids[120])
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(rows, [("y".to_string(), 1000), ("z".to_string(), 2000)]);
    let total: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM memberships WHERE plugin = 'bulk'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(total, 300);
    drop(conn);
    s.finish().await;
}

async fn a_failing_version_is_suspended_and_the_previous_one_restored(db: Db) {
    let s = TestServer::start(db, &[scorer_pack()]).await;
    upload(&s, wasm("scorer_v2")).await;
    send(
        s.req(Method::PUT, "/v1/plugins/scorer/rules?version=2.0.0")
            .json(&json!({"fail": true})),
    )
    .await;
    let (status, a) = s
        .post(
            "/v1/plugins/scorer/activate",
            json!({"version": "2.0.0", "rules_version": 1}),
        )
        .await;
    assert_eq!(status, 200, "{a}");
    s.post("/v1/customers", json!({"id": "f"})).await;
    let threshold = s.crm.packs().breaker_threshold;
    for i in 0..threshold {
        let o = event(&s, "f").await;
        assert_eq!(o["failures"][0]["plugin"], "scorer", "event {i}: {o}");
    }
    // The breaker tripped on the last failure: 1.0.0 serves again.
    let o = event(&s, "f").await;
    assert!(o["failures"].as_array().unwrap().is_empty(), "{o}");
    assert_eq!(o["scores"]["scorer"]["version"], "1.0.0");
    let (_, p) = s.get("/v1/plugins/scorer").await;
    let v2 = p["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "2.0.0")
        .unwrap()
        .clone();
    assert_eq!(v2["status"], "suspended", "{p}");
    assert!(
        v2["suspended_because"]
            .as_str()
            .unwrap()
            .contains("asked to fail"),
        "{v2}"
    );
    let (_, audit) = s.get("/v1/audit").await;
    let e = &audit["entries"][0];
    assert_eq!(
        (e["action"].as_str(), e["actor"].as_str()),
        (Some("plugin.suspend"), Some("circuit-breaker")),
        "{e}"
    );
    assert_eq!(e["detail"]["restored"]["version"], "1.0.0");
    let metrics = s.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l
                == r#"stagecraft_plugin_suspensions_total{plugin="scorer",version="2.0.0"} 1"#),
        "{metrics}"
    );
    // Every failed event was still stored, with its failure on the timeline.
    let (_, t) = s.get("/v1/customers/f/timeline").await;
    let entries = t["entries"].as_array().unwrap();
    assert_eq!(
        entries.iter().filter(|e| e["type"] == "event").count() as u32,
        threshold + 1
    );
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["type"] == "plugin_failure")
            .count() as u32,
        threshold
    );
    s.finish().await;
}

/// Two `stagecraft serve` processes on one PostgreSQL database: an activation on
/// the first is served by the second within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_on_one_host_is_served_by_another_within_a_second() {
    let Some(db) = Db::postgres() else { return };
    let s = TestServer::start(db, &[scorer_pack()]).await;
    upload(&s, wasm("scorer_v2")).await;
    let url = s.database_url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut hosts = Vec::new();
    for n in 0..2 {
        let port = common::server::free_port();
        // No periodic re-check within the test: the change must arrive by NOTIFY.
        let child = common::server::spawn_serve(
            &dir.path().join(format!("host{n}")),
            &url,
            port,
            &[("STAGECRAFT_SYNC_INTERVAL_MS", "600000")],
        );
        hosts.push((format!("http://127.0.0.1:{port}"), child));
    }
    for (base, _) in &hosts {
        common::server::wait_healthy(base).await;
    }
    s.post("/v1/customers", json!({"id": "h"})).await;
    let version_on = |base: &str| {
        let req = s
            .client
            .post(format!("{base}/v1/customers/h/events"))
            .bearer_auth(&s.token)
            .json(&json!({"kind": "visit"}));
        async move {
            let (status, o) = send(req).await;
            assert_eq!(status, 201, "{o}");
            o["scores"]["scorer"]["version"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(version_on(&hosts[1].0).await, "1.0.0");
    let (status, a) = send(
        s.client
            .post(format!("{}/v1/plugins/scorer/activate", hosts[0].0))
            .bearer_auth(&s.token)
            .json(&json!({"version": "2.0.0"})),
    )
    .await;
    assert_eq!(status, 200, "{a}");
    let activated = Instant::now();
    assert_eq!(
        version_on(&hosts[0].0).await,
        "2.0.0",
        "the activating host serves the new version at once"
    );
    loop {
        let v = version_on(&hosts[1].0).await;
        if v == "2.0.0" {
            break;
        }
        assert!(
            activated.elapsed() < Duration::from_secs(1),
            "the second host still serves {v} after a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "the second host served 2.0.0 {:?} after the activation",
        activated.elapsed()
    );
    let (status, _) = send(
        s.client
            .post(format!("{}/v1/plugins/scorer/rollback", hosts[1].0))
            .bearer_auth(&s.token)
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 200);
    let rolled = Instant::now();
    while version_on(&hosts[0].0).await != "1.0.0" {
        assert!(
            rolled.elapsed() < Duration::from_secs(1),
            "the rollback did not reach the first host within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(hosts);
    s.finish().await;
}

async fn a_rescore_left_unfinished_by_a_dead_host_is_resumed(db: Db) {
    let s = TestServer::start(db, &[pack("value_tiers")]).await;
    for i in 0..1200 {
        s.crm
            .customers()
            .create_customer(
                "acme",
                stagecraft::services::CustomerInput {
                    id: Some(format!("r{i:04}")),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let job = s
        .crm
        .jobs()
        .start_rescore("acme", "test", None)
        .await
        .unwrap();
    // A host claims the first chunk and dies before finishing it.
    let mut tx = s.crm.store().begin().await.unwrap();
    let backend = tx.backend();
    let long_ago = now_ms() - 10 * 60_000;
    let claimed =
        stagecraft::store::claim_chunk(tx.conn(), backend, &job, "dead-host", long_ago, 0)
            .await
            .unwrap()
            .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(claimed.chunk, 0);
    // Another host takes over: the stale claim is re-claimed and the job completes.
    let done = s
        .crm
        .jobs()
        .work_on_rescore("acme", &job, "live-host")
        .await
        .unwrap();
    assert_eq!(done, 1200);
    let j = s.wait_for_job(&job).await;
    assert_eq!(
        (j["done"].as_i64(), j["total"].as_i64()),
        (Some(1200), Some(1200))
    );
    let mut conn = s.crm.store().conn().await.unwrap();
    let scored: i64 =
        sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM scores WHERE tenant_id = 'acme'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(scored, 1200);
    // Closing the store waits for every checked-out connection to come back.
    drop(conn);
    s.finish().await;
}

/// The activation history keeps every step with its own actor, reason and time:
/// activate, activate, rollback, activate, rollback leaves six rows (with the
/// install's), each reason there (a rollback used to rewrite the row it returned
/// to: three rows, the first rollback's reason lost), and rollbacks still walk
/// back the way they did. A dry-run with inline rules says so.
async fn every_activation_and_rollback_is_a_row_of_its_own(db: Db) {
    let s = TestServer::start(db, &[scorer_pack()]).await;
    upload(&s, wasm("scorer_v2")).await;
    let (status, r) = send(
        s.req(Method::PUT, "/v1/plugins/scorer/rules?version=2.0.0")
            .json(&json!({"bonus": 0.5})),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    let steps = [
        ("activate", json!({"version": "2.0.0", "reason": "try v2"})),
        (
            "activate",
            json!({"version": "1.0.0", "reason": "back to v1 by hand"}),
        ),
        ("rollback", json!({"reason": "first rollback"})),
        (
            "activate",
            json!({"version": "2.0.0", "rules_version": 1, "reason": "v2 with a bonus"}),
        ),
        ("rollback", json!({"reason": "second rollback"})),
    ];
    for (what, body) in steps {
        let (status, o) = s.post(&format!("/v1/plugins/scorer/{what}"), body).await;
        assert_eq!(status, 200, "{what}: {o}");
    }
    let (_, p) = s.get("/v1/plugins/scorer").await;
    let rows = p["activations"].as_array().unwrap();
    let seen: Vec<(&str, &str, &str, Option<i64>)> = rows
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
                r["version"].as_str().unwrap(),
                r["rules_version"].as_i64(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 6, "{p}");
    assert_eq!(
        &seen[..5],
        [
            ("rollback", "second rollback", "2.0.0", None),
            ("activate", "v2 with a bonus", "2.0.0", Some(1)),
            ("rollback", "first rollback", "2.0.0", None),
            ("activate", "back to v1 by hand", "1.0.0", None),
            ("activate", "try v2", "2.0.0", None),
        ],
        "{p}"
    );
    assert_eq!(rows[0]["status"], "active", "{p}");
    assert_eq!(p["active"]["version"], "2.0.0", "{p}");
    // Rolling back on: to the install's 1.0.0, then out of service.
    let (_, r) = s.post("/v1/plugins/scorer/rollback", json!({})).await;
    assert_eq!(r["to"]["version"], "1.0.0", "{r}");
    let (_, r) = s
        .post("/v1/plugins/scorer/rollback", json!({"reason": "off"}))
        .await;
    assert_eq!(r["to"], Value::Null, "{r}");
    let (_, p) = s.get("/v1/plugins/scorer").await;
    assert_eq!(
        (
            p["activations"][0]["kind"].as_str(),
            p["activations"][0]["status"].as_str()
        ),
        (Some("disable"), Some("disabled")),
        "{p}"
    );
    assert_eq!(p["activations"].as_array().unwrap().len(), 8, "{p}");

    customer_with_event(&s, "c").await;
    let (status, d) = s
        .post(
            "/v1/plugins/scorer/dry-run",
            json!({"version": "1.0.0", "rules": {"bonus": 2}}),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["candidate_rules_inline"], true, "{d}");
    s.finish().await;
}
