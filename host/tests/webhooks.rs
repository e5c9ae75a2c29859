//! Webhooks: a subscription hears of every change, signed as Standard
//! Webhooks (a real receiver verifies each signature with the
//! `standardwebhooks` crate), each customer's changes in order, once each
//! however often the receiver failed, and never at an internal address the
//! operator did not allow.

#[macro_use]
mod common;

use common::server::{Db, Pack, TestServer};
use serde_json::{json, Value};
use stagecraft::domain::now_ms;
use stagecraft::services::webhooks::egress::{parse_ranges, Egress};
use stagecraft::services::webhooks::DeliveryPolicy;
use stagecraft::Crm;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

on_both_databases!(
    the_b2b_walk_reaches_the_receiver_signed_and_in_order,
    a_receiver_down_for_30_s_then_back_gets_every_change_once_in_order,
    internal_destinations_are_refused_at_registration_and_at_delivery,
    a_host_killed_mid_delivery_loses_nothing,
);

/// What a `stagecraft serve` process needs to deliver to the local receiver
/// quickly.
const SERVE_ENV: [(&str, &str); 4] = [
    ("STAGECRAFT_WEBHOOK_ALLOW", "127.0.0.0/8"),
    ("STAGECRAFT_WEBHOOK_ALLOW_HTTP", "1"),
    ("STAGECRAFT_WEBHOOK_LEASE_MS", "1000"),
    ("STAGECRAFT_WEBHOOK_RETRY_MS", "100"),
];

/// `n` customers by one import: `n` `customer.created` changes.
async fn import_customers(s: &TestServer, n: usize) {
    let mut csv = String::from("id\n");
    for i in 0..n {
        csv.push_str(&format!("k{i:05}\n"));
    }
    let (status, r) = common::server::send(
        s.req(reqwest::Method::POST, "/v1/import/customers")
            .body(csv),
    )
    .await;
    assert_eq!(status, 200, "{r}");
}

async fn scalar(s: &TestServer, sql: &str) -> i64 {
    let mut conn = s.crm.store().conn().await.unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut *conn).await.unwrap()
}

/// A `stagecraft serve` process is killed (SIGKILL) while deliveries are in
/// flight; another started on the same database sends what is left once the
/// dead one's lease runs out: every change reaches the receiver, each id
/// accepted once (a message the dead host sent may come again, with the same
/// `webhook-id`: at least once).
async fn a_host_killed_mid_delivery_loses_nothing(db: Db) {
    const N: usize = 600;
    let s = TestServer::start_configured(db, &[], local).await;
    let receiver = Receiver::default();
    let port = receiver.start().await;
    let w = subscribe(&s, &format!("http://127.0.0.1:{port}/hook"), json!([])).await;
    {
        let mut r = receiver.inner.lock().unwrap();
        r.secrets.push(w["secret"].as_str().unwrap().into());
        r.delay = Duration::from_millis(300);
    }
    import_customers(&s, N).await;
    let dir = tempfile::tempdir().unwrap();
    let mut first = common::server::spawn_serve(
        dir.path(),
        s.database_url(),
        common::server::free_port(),
        &SERVE_ENV,
    );
    // Killed once a chunk is written, while it holds a claim on the next.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let delivered = scalar(
            &s,
            "SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'",
        )
        .await;
        let held = scalar(
            &s,
            "SELECT COUNT(*) FROM deliveries WHERE claimed_by IS NOT NULL",
        )
        .await;
        if delivered > 0 && held > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery written with another in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let in_flight = scalar(
        &s,
        "SELECT COUNT(*) FROM deliveries WHERE claimed_by IS NOT NULL",
    )
    .await;
    assert!(receiver.count() < N, "the kill came before the end");
    assert!(
        in_flight > 0,
        "nothing was in flight: the lease went untested"
    );
    let _second = common::server::spawn_serve(
        dir.path(),
        s.database_url(),
        common::server::free_port(),
        &SERVE_ENV,
    );
    wait_for(
        "every change after the restart",
        Duration::from_secs(180),
        || receiver.count() >= N,
    )
    .await;
    assert_eq!(receiver.count(), N);
    assert_eq!(receiver.inner.lock().unwrap().bad_signatures, 0);
    let hosts = scalar(&s, "SELECT COUNT(DISTINCT host) FROM delivery_attempts").await;
    assert_eq!(hosts, 2, "both processes delivered");
    s.finish().await;
}

/// Two hosts on one PostgreSQL share 10,000 deliveries: each delivered, none
/// twice on the success path, both hosts working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_deliver_ten_thousand_changes_each_once_postgres() {
    const N: usize = 10_000;
    let Some(db) = Db::postgres() else { return };
    let s = TestServer::start_configured(db, &[], local).await;
    let receiver = Receiver::default();
    let port = receiver.start().await;
    let w = subscribe(&s, &format!("http://127.0.0.1:{port}/hook"), json!([])).await;
    receiver
        .inner
        .lock()
        .unwrap()
        .secrets
        .push(w["secret"].as_str().unwrap().into());
    import_customers(&s, N).await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _a = common::server::spawn_serve(
        a.path(),
        s.database_url(),
        common::server::free_port(),
        &SERVE_ENV,
    );
    let _b = common::server::spawn_serve(
        b.path(),
        s.database_url(),
        common::server::free_port(),
        &SERVE_ENV,
    );
    wait_for("ten thousand deliveries", Duration::from_secs(300), || {
        receiver.count() >= N
    })
    .await;
    let seen = {
        let r = receiver.inner.lock().unwrap();
        (r.ids.len(), r.repeats, r.bad_signatures)
    };
    assert_eq!(seen, (N, 0, 0), "(accepted, repeats, bad signatures)");
    let hosts = scalar(&s, "SELECT COUNT(DISTINCT host) FROM delivery_attempts").await;
    assert_eq!(hosts, 2, "both hosts delivered");
    s.finish().await;
}

const DAY: i64 = 86_400_000;

/// A webhook receiver on 127.0.0.1 that verifies every signature.
#[derive(Clone, Default)]
struct Receiver {
    inner: Arc<Mutex<Received>>,
}

#[derive(Default)]
struct Received {
    /// Every secret it accepts signatures of.
    secrets: Vec<String>,
    /// Messages accepted, in arrival order: (webhook-id, body).
    accepted: Vec<(String, Value)>,
    /// How many requests arrived, bad signatures, repeats of an accepted id.
    requests: usize,
    bad_signatures: usize,
    repeats: usize,
    /// Answer 503 until then.
    down_until: Option<Instant>,
    /// Signature headers seen last.
    last_signature: String,
    /// The ids accepted (for a quick look-up).
    ids: std::collections::HashSet<String>,
    /// Held this long before answering (deliveries in flight).
    delay: Duration,
}

impl Receiver {
    /// Starts it; returns its port.
    async fn start(&self) -> u16 {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, StatusCode};
        let state = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    let delay = state.inner.lock().unwrap().delay;
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut r = state.inner.lock().unwrap();
                    r.requests += 1;
                    if r.down_until.is_some_and(|t| Instant::now() < t) {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let verified = r.secrets.iter().any(|s| {
                        standardwebhooks::Webhook::new(s)
                            .unwrap()
                            .verify(&body, &headers)
                            .is_ok()
                    });
                    if !verified {
                        r.bad_signatures += 1;
                        return StatusCode::UNAUTHORIZED;
                    }
                    r.last_signature = headers["webhook-signature"].to_str().unwrap().into();
                    let id = headers["webhook-id"].to_str().unwrap().to_string();
                    if !r.ids.insert(id.clone()) {
                        r.repeats += 1;
                        return StatusCode::OK;
                    }
                    let body: Value = serde_json::from_slice(&body).unwrap();
                    r.accepted.push((id, body));
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    }

    fn accepted(&self) -> Vec<(String, Value)> {
        self.inner.lock().unwrap().accepted.clone()
    }

    fn count(&self) -> usize {
        self.inner.lock().unwrap().ids.len()
    }
}

/// Loopback and plain http allowed (the receiver is local), retries quick.
fn local(crm: Crm) -> Crm {
    let egress = Egress {
        allow: parse_ranges("127.0.0.0/8").unwrap(),
        allow_http: true,
        ..Default::default()
    };
    let policy = DeliveryPolicy {
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
        poll: Duration::from_millis(50),
        ..Default::default()
    };
    crm.with_webhooks(egress, policy)
}

fn b2b() -> Vec<Pack<'static>> {
    vec![
        Pack {
            stem: "b2b_trade",
            rules: None,
            owns_lifecycle: true,
        },
        common::server::pack("value_tiers"),
    ]
}

async fn subscribe(s: &TestServer, url: &str, types: Value) -> Value {
    let (status, w) = s
        .post("/v1/webhooks", json!({"url": url, "types": types}))
        .await;
    assert_eq!(status, 201, "{w}");
    assert!(w["secret"].as_str().unwrap().starts_with("whsec_"), "{w}");
    w
}

/// Every change after `after` in the feed.
async fn feed_after(s: &TestServer, after: &str) -> Vec<Value> {
    let (status, page) = s
        .get(&format!("/v1/changes?limit=1000&after={after}"))
        .await;
    assert_eq!(status, 200, "{page}");
    page["changes"].as_array().unwrap().clone()
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_event(s: &TestServer, id: &str, body: Value) {
    let (status, o) = s.post(&format!("/v1/customers/{id}/events"), body).await;
    assert_eq!(status, 201, "{o}");
}

async fn the_b2b_walk_reaches_the_receiver_signed_and_in_order(db: Db) {
    let s = TestServer::start_configured(db, &b2b(), local).await;
    let receiver = Receiver::default();
    let port = receiver.start().await;
    let w = subscribe(&s, &format!("http://127.0.0.1:{port}/hook"), json!([])).await;
    receiver
        .inner
        .lock()
        .unwrap()
        .secrets
        .push(w["secret"].as_str().unwrap().into());
    let (_, start) = s.get("/v1/changes?limit=1000").await;
    let start = start["next"].as_str().unwrap().to_string();
    let dispatcher = s.crm.webhooks().run("host-a".into());

    // The b2b persona: an inquiry, then orders; two buyers side by side.
    let now = now_ms();
    for id in ["acme", "globex"] {
        let (status, _) = s.post("/v1/customers", json!({"id": id})).await;
        assert_eq!(status, 201);
    }
    for id in ["acme", "globex"] {
        post_event(
            &s,
            id,
            json!({"kind": "inquiry", "at": now - 40 * DAY, "fields": {"question": "MOQ?"}}),
        )
        .await;
    }
    for (i, days) in [30, 20, 10, 1].into_iter().enumerate() {
        for id in ["acme", "globex"] {
            post_event(
                &s,
                id,
                json!({"kind": "order", "at": now - days * DAY - i as i64, "amount_cents": 30_000}),
            )
            .await;
        }
    }
    let feed = feed_after(&s, &start).await;
    assert!(feed.len() > 10, "{feed:#?}");
    wait_for("every change delivered", Duration::from_secs(60), || {
        receiver.accepted().len() >= feed.len()
    })
    .await;
    let got = receiver.accepted();
    let (bad, repeats) = {
        let r = receiver.inner.lock().unwrap();
        (r.bad_signatures, r.repeats)
    };
    assert_eq!(bad, 0, "every signature verifies");
    assert_eq!(repeats, 0, "nothing delivered twice on the success path");
    assert_eq!(got.len(), feed.len());
    // Each message is the change, under the change's id.
    for (id, body) in &got {
        assert_eq!(body["data"]["id"], id.as_str(), "{body}");
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
    }
    // Per customer, stage changes arrive in the order they were made.
    let stages = |msgs: Vec<&Value>, customer: &str| -> Vec<String> {
        msgs.into_iter()
            .filter(|c| c["type"] == "customer.stage_changed" && c["customer_id"] == customer)
            .map(|c| c["data"]["to"].as_str().unwrap().to_string())
            .collect()
    };
    for customer in ["acme", "globex"] {
        let made = stages(feed.iter().collect(), customer);
        let arrived = stages(got.iter().map(|(_, b)| &b["data"]).collect(), customer);
        assert!(made.len() >= 2, "{made:?}");
        assert_eq!(arrived, made, "{customer}");
    }

    // The delivery log shows each, delivered at the first attempt.
    let wid = w["id"].as_str().unwrap();
    let (status, log) = s
        .get(&format!("/v1/webhooks/{wid}/deliveries?limit=200"))
        .await;
    assert_eq!(status, 200, "{log}");
    let deliveries = log["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), feed.len());
    assert!(deliveries.iter().all(|d| d["status"] == "delivered"
        && d["attempt_log"][0]["status"] == 200
        && d["attempt_log"][0]["host"] == "host-a"));
    let metrics = s.metrics_text().await;
    assert!(
        metrics.contains(&format!(
            "stagecraft_webhook_deliveries_total{{outcome=\"delivered\"}} {}",
            feed.len()
        )),
        "{metrics}"
    );

    // A test message; then a rotated secret signs beside the old one.
    let (status, t) = s.post(&format!("/v1/webhooks/{wid}/test"), json!({})).await;
    assert_eq!(status, 202, "{t}");
    let test_id = t["message_id"].as_str().unwrap().to_string();
    wait_for("the test message", Duration::from_secs(30), || {
        receiver.accepted().iter().any(|(id, _)| *id == test_id)
    })
    .await;
    let (status, rotated) = s
        .post(&format!("/v1/webhooks/{wid}/rotate-secret"), json!({}))
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["secret"], w["secret"]);
    assert!(rotated["previous_secret_until"].as_i64().unwrap() > now_ms());
    let (status, t) = s.post(&format!("/v1/webhooks/{wid}/test"), json!({})).await;
    assert_eq!(status, 202, "{t}");
    let test_id = t["message_id"].as_str().unwrap().to_string();
    wait_for("a message after rotation", Duration::from_secs(30), || {
        receiver.accepted().iter().any(|(id, _)| *id == test_id)
    })
    .await;
    // Signed with both: a receiver on either secret accepts it.
    let sig = receiver.inner.lock().unwrap().last_signature.clone();
    assert_eq!(sig.split(' ').count(), 2, "{sig}");
    // The messages are described in /openapi.json (OpenAPI 3.1 `webhooks`).
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, 200);
    let body = &doc["webhooks"]["change"]["post"]["requestBody"]["content"]["application/json"];
    assert_eq!(
        body["schema"]["$ref"],
        "#/components/schemas/WebhookPayload"
    );
    let payload = &doc["components"]["schemas"]["WebhookPayload"];
    assert!(payload["properties"]["data"].is_object(), "{payload}");
    let (status, list) = s.get("/v1/webhooks").await;
    assert_eq!(status, 200);
    assert!(
        list.to_string().find("whsec_").is_none(),
        "secrets are shown once: {list}"
    );
    dispatcher.abort();
    s.finish().await;
}

async fn a_receiver_down_for_30_s_then_back_gets_every_change_once_in_order(db: Db) {
    let s = TestServer::start_configured(db, &b2b(), local).await;
    let receiver = Receiver::default();
    let port = receiver.start().await;
    let w = subscribe(
        &s,
        &format!("http://127.0.0.1:{port}/hook"),
        json!([
            "customer.stage_changed",
            "customer.band_changed",
            "customer.created"
        ]),
    )
    .await;
    {
        let mut r = receiver.inner.lock().unwrap();
        r.secrets.push(w["secret"].as_str().unwrap().into());
        r.down_until = Some(Instant::now() + Duration::from_secs(30));
    }
    let dispatcher = s.crm.webhooks().run("host-a".into());
    let now = now_ms();
    for c in 0..3 {
        let id = format!("c{c}");
        let (status, _) = s.post("/v1/customers", json!({"id": id})).await;
        assert_eq!(status, 201);
        post_event(&s, &id, json!({"kind": "inquiry", "at": now - 40 * DAY})).await;
        for d in [30, 20, 5] {
            post_event(
                &s,
                &id,
                json!({"kind": "order", "at": now - d * DAY, "amount_cents": 40_000}),
            )
            .await;
        }
    }
    let wanted: Vec<Value> = feed_after(&s, "")
        .await
        .into_iter()
        .filter(|c| {
            [
                "customer.stage_changed",
                "customer.band_changed",
                "customer.created",
            ]
            .contains(&c["type"].as_str().unwrap())
        })
        .collect();
    // While it is down, attempts fail and are retried (backoff up to 1 s here).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(receiver.accepted().is_empty());
    assert!(receiver.inner.lock().unwrap().requests >= 3);
    wait_for(
        "every change after the outage",
        Duration::from_secs(90),
        || receiver.accepted().len() >= wanted.len(),
    )
    .await;
    let got = receiver.accepted();
    assert_eq!(got.len(), wanted.len(), "each webhook-id accepted once");
    assert_eq!(receiver.inner.lock().unwrap().bad_signatures, 0);
    // Per customer, the order they were made in.
    let per = |msgs: Vec<&Value>| {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for c in msgs {
            m.entry(c["customer_id"].as_str().unwrap().to_string())
                .or_default()
                .push(c["id"].as_str().unwrap().to_string());
        }
        m
    };
    assert_eq!(
        per(got.iter().map(|(_, b)| &b["data"]).collect()),
        per(wanted.iter().collect())
    );
    // The log shows the failed attempts before the success.
    let wid = w["id"].as_str().unwrap();
    let (_, log) = s
        .get(&format!("/v1/webhooks/{wid}/deliveries?limit=200"))
        .await;
    let first = log["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["message_id"] == wanted[0]["id"])
        .unwrap()
        .clone();
    assert_eq!(first["status"], "delivered", "{first}");
    let attempts = first["attempt_log"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{first}");
    assert_eq!(attempts[0]["status"], 503, "{first}");
    assert_eq!(attempts.last().unwrap()["status"], 200, "{first}");
    let (_, hook) = s.get(&format!("/v1/webhooks/{wid}")).await;
    assert_eq!(
        hook["failing_since"],
        Value::Null,
        "a success clears it: {hook}"
    );
    dispatcher.abort();
    s.finish().await;
}

async fn internal_destinations_are_refused_at_registration_and_at_delivery(db: Db) {
    // The API allows loopback (and names `internal.example` 10.0.0.1 and
    // `receiver.internal` 127.0.0.1); a dispatcher with the default policy
    // (plain http allowed, nothing internal) delivers.
    let receiver = Receiver::default();
    let port = receiver.start().await;
    let names = HashMap::from([
        (
            "internal.example".to_string(),
            vec!["10.0.0.1".parse().unwrap()],
        ),
        (
            "receiver.internal".to_string(),
            vec!["127.0.0.1".parse().unwrap()],
        ),
    ]);
    let strict = Egress {
        allow_http: true,
        names: names.clone(),
        ..Default::default()
    };
    let s = TestServer::start_configured(db, &[], |crm| {
        crm.with_webhooks(strict.clone(), DeliveryPolicy::default())
    })
    .await;
    for (url, says) in [
        (format!("http://127.0.0.1:{port}/hook"), "loopback"),
        (
            "https://169.254.169.254/latest/meta-data".to_string(),
            "link-local",
        ),
        ("https://internal.example/hook".to_string(), "10.0.0.1"),
        (format!("http://receiver.internal:{port}/hook"), "127.0.0.1"),
    ] {
        let (status, e) = s
            .post("/v1/webhooks", json!({"url": url, "types": []}))
            .await;
        assert_eq!(status, 422, "{url}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(says),
            "{url}: {e}"
        );
    }
    let (status, e) = s
        .post(
            "/v1/webhooks",
            json!({"url": "https://93.184.216.34/x", "types": ["customer.deleted"]}),
        )
        .await;
    assert_eq!(status, 422, "{e}");

    // Registered where it was allowed then; delivered by a host that does not
    // allow it: refused on the address the name resolves to, nothing sent.
    let lenient = s.crm.clone().with_webhooks(
        Egress {
            allow: parse_ranges("127.0.0.0/8").unwrap(),
            allow_http: true,
            names,
        },
        DeliveryPolicy::default(),
    );
    let w = lenient
        .webhooks()
        .create(
            "acme",
            "test",
            serde_json::from_value(json!({"url": format!("http://receiver.internal:{port}/hook")}))
                .unwrap(),
        )
        .await
        .unwrap();
    receiver
        .inner
        .lock()
        .unwrap()
        .secrets
        .push(w.secret.clone().unwrap());
    let (status, _) = s.post("/v1/customers", json!({"id": "c1"})).await;
    assert_eq!(status, 201);
    assert!(s.crm.webhooks().work("strict-host").await.unwrap() >= 1);
    let (_, log) = s.get(&format!("/v1/webhooks/{}/deliveries", w.id)).await;
    let d = &log["deliveries"][0];
    assert_eq!(d["status"], "pending", "{log}");
    let error = d["attempt_log"][0]["error"].as_str().unwrap();
    assert!(error.contains("127.0.0.1 is a loopback address"), "{error}");
    assert_eq!(
        receiver.inner.lock().unwrap().requests,
        0,
        "nothing reached it"
    );
    s.finish().await;
}

/// On SQLite every write waits for the one writer, and every host's
/// dispatcher looks several times a second: with nothing to send it only
/// reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_dispatcher_takes_no_write_transaction() {
    let s = TestServer::start_configured(Db::Sqlite, &[], local).await;
    let (status, _) = s.post("/v1/customers", json!({"id": "c1"})).await;
    assert_eq!(status, 201);
    let commits = || s.crm.store().write_stats().totals().0;
    let before = commits();
    for _ in 0..5 {
        assert_eq!(s.crm.webhooks().work("idle").await.unwrap(), 0);
    }
    assert_eq!(commits(), before, "no subscription: nothing written");
    // With a subscription that has heard everything, still nothing.
    let receiver = Receiver::default();
    let port = receiver.start().await;
    subscribe(&s, &format!("http://127.0.0.1:{port}/hook"), json!([])).await;
    let before = commits();
    for _ in 0..5 {
        s.crm.webhooks().work("idle").await.unwrap();
    }
    assert_eq!(commits(), before, "nothing new: nothing written");
    s.finish().await;
}
