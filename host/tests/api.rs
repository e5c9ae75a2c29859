//! The HTTP API over a real socket, the same suite against SQLite and PostgreSQL.
//! Plugins are the real components built from `plugins/` and `tests/plugins/`.

#[macro_use]
mod common;

use common::server::{pack, send, Db, Pack, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use stagecraft::domain::{now_ms, Role};
use stagecraft::store;

const DAY: i64 = 86_400_000;

on_both_databases!(
    times_are_taken_as_rfc_3339_strings_or_milliseconds,
    a_customer_moves_through_stages_with_scores_segments_and_reasons,
    stored_metrics_always_equal_a_recomputation_from_events,
    concurrent_events_for_one_customer_lose_no_update,
    an_idempotency_key_records_an_event_once,
    a_failing_plugin_is_contained_and_the_event_still_stored,
    invalid_input_gets_a_json_error_and_stores_nothing,
    csv_import_keeps_good_rows_and_reports_bad_ones_by_line,
    cdnow_import_matches_the_file_and_feeds_analytics,
    customers_list_filters_and_pages,
    roles_and_tenants_are_enforced,
    customers_can_be_updated_by_hand,
    a_lapsed_customer_steps_back_and_returns_with_an_order,
    follow_ups_are_listed_until_marked_done,
    reasons_can_be_read_in_chinese,
    openapi_lists_every_route,
);

fn standard_packs() -> Vec<Pack<'static>> {
    vec![
        Pack {
            stem: "b2b_trade",
            rules: None,
            owns_lifecycle: true,
        },
        pack("value_tiers"),
    ]
}

async fn create(s: &TestServer, body: Value) -> Value {
    let (status, c) = s.post("/v1/customers", body).await;
    assert_eq!(status, 201, "{c}");
    c
}

async fn event(s: &TestServer, id: &str, body: Value) -> Value {
    let (status, o) = s.post(&format!("/v1/customers/{id}/events"), body).await;
    assert_eq!(status, 201, "{o}");
    o
}

async fn timeline_len(s: &TestServer, id: &str) -> usize {
    let (status, t) = s
        .get(&format!("/v1/customers/{id}/timeline?limit=1000"))
        .await;
    assert_eq!(status, 200, "{t}");
    t["entries"].as_array().unwrap().len()
}

async fn a_customer_moves_through_stages_with_scores_segments_and_reasons(db: Db) {
    let s = TestServer::start(db, &standard_packs()).await;
    let now = now_ms();
    let c = create(
        &s,
        json!({"id": "acme-gmbh", "name": "ACME GmbH", "source": "web",
                              "fields": {"industry": "wholesale", "email": "buyer@acme.example"}}),
    )
    .await;
    assert_eq!(c["sensitive_fields"], json!(["email"]));

    let o = event(
        &s,
        "acme-gmbh",
        json!({"kind": "inquiry", "channel": "web", "at": now - 30 * DAY,
                                          "fields": {"question": "MOQ for 40ft?"}}),
    )
    .await;
    assert_eq!(o["stage"]["to"], "prospect", "{o}");
    assert_eq!(o["stage"]["reason"], "a qualifying inquiry");
    assert!(
        o["follow_ups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["note"] == "Answer their question: MOQ for 40ft?"),
        "{o}"
    );
    // No orders yet and a touchpoint to pay for: negative return.
    assert_eq!(o["segments_joined"], json!(["acquire", "negative-return"]));

    let o = event(
        &s,
        "acme-gmbh",
        json!({"kind": "order", "at": now - 20 * DAY, "amount_cents": 30_000}),
    )
    .await;
    assert_eq!(o["stage"]["to"], "first-purchase");
    assert_eq!(o["scores"]["value-tiers"]["band"], "medium", "{o}");
    assert!(
        o["segments_joined"]
            .as_array()
            .unwrap()
            .contains(&json!("medium-return")),
        "{o}"
    );

    event(
        &s,
        "acme-gmbh",
        json!({"kind": "order", "at": now - 10 * DAY, "amount_cents": 20_000}),
    )
    .await;
    let o = event(
        &s,
        "acme-gmbh",
        json!({"kind": "order", "at": now - DAY, "amount_cents": 25_000}),
    )
    .await;
    assert_eq!(o["scores"]["value-tiers"]["band"], "high", "{o}");
    assert_eq!(o["scores"]["value-tiers"]["previous_band"], "medium");
    assert!(o["segments_left"]
        .as_array()
        .unwrap()
        .contains(&json!("medium-return")));

    let (_, c) = s.get("/v1/customers/acme-gmbh").await;
    assert_eq!(c["stage"], "repeat");
    assert_eq!(c["metrics"]["orders"], 3);
    assert_eq!(c["metrics"]["purchase_days"], 3);
    assert_eq!(c["metrics"]["total_spend_cents"], 75_000);
    assert_eq!(c["metrics"]["touchpoints_90d"], 4);
    let reasons = c["scores"]["value-tiers"]["reasons"].as_array().unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| r["text"] == "bought on 3 distinct days"),
        "{reasons:?}"
    );
    let segs: Vec<&str> = c["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["segment"].as_str().unwrap())
        .collect();
    assert_eq!(segs, ["retain", "high-return"]);

    let (_, t) = s.get("/v1/customers/acme-gmbh/timeline").await;
    let entries = t["entries"].as_array().unwrap();
    let stage_moves: Vec<&str> = entries
        .iter()
        .filter(|e| e["type"] == "stage_move")
        .map(|e| e["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        stage_moves,
        ["repeat", "first-purchase", "prospect"],
        "newest first"
    );
    assert!(entries
        .iter()
        .any(|e| e["type"] == "score_change" && e["band"] == "high"));
    assert_eq!(entries.iter().filter(|e| e["type"] == "event").count(), 4);
    s.finish().await;
}

async fn stored_metrics_always_equal_a_recomputation_from_events(db: Db) {
    let s = TestServer::start(db, &[pack("value_tiers")]).await;
    create(&s, json!({"id": "m"})).await;
    let now = now_ms();
    // Out of order, several orders on one day, every kind that counts.
    let kinds = [
        "order",
        "visit",
        "order",
        "complaint",
        "referral",
        "order",
        "inquiry",
        "order",
    ];
    let mut seed = 7u64;
    for i in 0..40 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let kind = kinds[(seed >> 33) as usize % kinds.len()];
        let days_ago = ((seed >> 40) % 200) as i64;
        let mut body = json!({"kind": kind, "at": now - days_ago * DAY - (i * 1000)});
        if kind == "order" {
            body["amount_cents"] = json!((seed >> 20) % 50_000);
        }
        event(&s, "m", body).await;
        let mut conn = s.crm.store().conn().await.unwrap();
        let recomputed = store::recompute_metrics(&mut conn, "acme", "m", now_ms())
            .await
            .unwrap();
        let (_, c) = s.get("/v1/customers/m").await;
        assert_eq!(c["metrics"], json!(recomputed), "after event {i}");
    }
    s.finish().await;
}

async fn concurrent_events_for_one_customer_lose_no_update(db: Db) {
    let s = TestServer::start(db, &standard_packs()).await;
    create(&s, json!({"id": "busy"})).await;
    let now = now_ms();
    let mut tasks = Vec::new();
    for i in 0..40i64 {
        let req = s
            .req(Method::POST, "/v1/customers/busy/events")
            .json(&json!({"kind": "order", "amount_cents": 100, "at": now - (i % 10) * DAY}));
        tasks.push(tokio::spawn(common::server::send(req)));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let (_, c) = s.get("/v1/customers/busy").await;
    assert_eq!(c["metrics"]["orders"], 40);
    assert_eq!(c["metrics"]["purchase_days"], 10);
    assert_eq!(c["metrics"]["total_spend_cents"], 4000);
    s.finish().await;
}

async fn an_idempotency_key_records_an_event_once(db: Db) {
    let s = TestServer::start(db, &[pack("value_tiers")]).await;
    create(&s, json!({"id": "a"})).await;
    create(&s, json!({"id": "b"})).await;
    let post = |id: &str| {
        s.req(Method::POST, &format!("/v1/customers/{id}/events"))
            .header("Idempotency-Key", "order-123")
            .json(&json!({"kind": "order", "amount_cents": 5000}))
    };
    let (first, o1) = common::server::send(post("a")).await;
    let (second, o2) = common::server::send(post("a")).await;
    assert_eq!((first, second), (201, 200));
    assert_eq!(o1["event_id"], o2["event_id"]);
    assert_eq!(o2["replayed"], true);
    let (_, c) = s.get("/v1/customers/a").await;
    assert_eq!(c["metrics"]["orders"], 1);
    let (status, e) = common::server::send(post("b")).await;
    assert_eq!(status, 409, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("order-123"));
    s.finish().await;
}

async fn a_failing_plugin_is_contained_and_the_event_still_stored(db: Db) {
    let packs = [
        pack("value_tiers"),
        Pack {
            stem: "hostile",
            rules: Some(r#"{"mode": "trap"}"#),
            owns_lifecycle: false,
        },
    ];
    let s = TestServer::start(db, &packs).await;
    create(&s, json!({"id": "x"})).await;
    let o = event(&s, "x", json!({"kind": "order", "amount_cents": 1000})).await;
    let failures = o["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{o}");
    assert_eq!(failures[0]["plugin"], "hostile");
    assert_eq!(failures[0]["kind"], "trap");
    assert!(
        failures[0]["message"]
            .as_str()
            .unwrap()
            .contains("panics on purpose"),
        "{o}"
    );
    // The healthy plugin still ran; the failing one changed nothing.
    assert!(o["scores"]["value-tiers"].is_object());
    assert!(o["scores"].get("hostile").is_none());
    let (_, c) = s.get("/v1/customers/x").await;
    assert_eq!(c["metrics"]["orders"], 1);
    assert!(
        c["stage"].is_null(),
        "the failing plugin's stage move was not applied"
    );
    let (_, t) = s.get("/v1/customers/x/timeline").await;
    let entries = t["entries"].as_array().unwrap();
    assert!(entries
        .iter()
        .any(|e| e["type"] == "event" && e["kind"] == "order"));
    assert!(entries.iter().any(|e| e["type"] == "plugin_failure"
        && e["plugin"] == "hostile"
        && e["event_id"] == o["event_id"]));
    // And it is counted, next to the healthy plugin's run and the request itself.
    let metrics = s.metrics_text().await;
    for line in [
        r#"stagecraft_plugin_calls_total{outcome="trap",plugin="hostile",version="0.1.0"} 1"#,
        r#"stagecraft_plugin_calls_total{outcome="ok",plugin="value-tiers",version="0.1.0"} 1"#,
        r#"stagecraft_http_requests_total{method="POST",route="/v1/customers/{id}/events",status="201"} 1"#,
        "stagecraft_events_ingested_total 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "/metrics lacks {line}:\n{metrics}"
        );
    }
    assert!(metrics.contains("stagecraft_plugin_call_seconds_bucket{plugin=\"hostile\""));
    s.finish().await;
}

async fn invalid_input_gets_a_json_error_and_stores_nothing(db: Db) {
    let s = TestServer::start(db, &[pack("value_tiers")]).await;
    create(&s, json!({"id": "v"})).await;
    let before = timeline_len(&s, "v").await;
    let events = "/v1/customers/v/events";
    let raw = |body: &'static str| {
        s.req(Method::POST, events)
            .header("content-type", "application/json")
            .body(body)
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str, &str)> = vec![
        (raw("{\"kind\": "), 400, "bad_json", "EOF"),
        (raw("{\"kind\": 5}"), 400, "invalid_body", "kind"),
        (
            raw("{\"kind\": \"visit\", \"colour\": 1}"),
            400,
            "invalid_body",
            "colour",
        ),
        (
            s.req(Method::POST, events).body("kind=visit"),
            400,
            "bad_content_type",
            "application/json",
        ),
        (
            s.req(Method::POST, events).json(&json!({"kind": "Order!"})),
            422,
            "validation_failed",
            "kind",
        ),
        (
            s.req(Method::POST, events).json(&json!({"kind": "order"})),
            422,
            "validation_failed",
            "amount_cents",
        ),
        (
            s.req(Method::POST, events)
                .json(&json!({"kind": "order", "amount_cents": -5})),
            422,
            "validation_failed",
            "negative",
        ),
        (
            s.req(Method::POST, events)
                .json(&json!({"kind": "visit", "at": now_ms() + 5 * DAY})),
            422,
            "validation_failed",
            "future",
        ),
        (
            s.req(Method::POST, events)
                .json(&json!({"kind": "visit", "fields": {"x": [1]}})),
            422,
            "validation_failed",
            "field x",
        ),
        (
            s.req(Method::POST, "/v1/customers/nobody/events")
                .json(&json!({"kind": "visit"})),
            404,
            "not_found",
            "nobody",
        ),
        (
            s.req(Method::POST, events)
                .header("content-type", "application/json")
                .body(format!(
                    "{{\"kind\": \"visit\", \"fields\": {{\"note\": \"{}\"}}}}",
                    "x".repeat(2 << 20)
                )),
            413,
            "body_too_large",
            "larger",
        ),
        (
            s.client.post(s.url(events)).json(&json!({"kind": "visit"})),
            401,
            "unauthorized",
            "token",
        ),
        (
            s.client
                .post(s.url(events))
                .bearer_auth("sc_wrong")
                .json(&json!({"kind": "visit"})),
            401,
            "unauthorized",
            "token",
        ),
        (
            s.req(Method::POST, "/v1/customers")
                .json(&json!({"id": "v"})),
            409,
            "conflict",
            "already exists",
        ),
        (
            s.req(Method::POST, "/v1/customers")
                .json(&json!({"id": "t", "tags": ["Bad Tag"]})),
            422,
            "validation_failed",
            "tag",
        ),
        (
            s.req(Method::GET, "/v1/customers?limit=abc"),
            400,
            "bad_query",
            "limit",
        ),
        (
            s.req(Method::GET, "/v1/nothing-here"),
            404,
            "not_found",
            "route",
        ),
    ];
    for (i, (req, status, code, words)) in cases.into_iter().enumerate() {
        let (got, body) = common::server::send(req).await;
        assert_eq!(got, status, "case {i}: {body}");
        assert_eq!(body["error"]["code"], code, "case {i}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(words),
            "case {i}: {message:?} should mention {words:?}"
        );
    }
    assert_eq!(timeline_len(&s, "v").await, before, "nothing was stored");
    let (_, c) = s.get("/v1/customers/v").await;
    assert_eq!(c["metrics"]["last_contact_at"], Value::Null);
    let (status, _) = s.get("/v1/customers/t").await;
    assert_eq!(status, 404, "the customer with a bad tag was not created");
    s.finish().await;
}

async fn csv_import_keeps_good_rows_and_reports_bad_ones_by_line(db: Db) {
    let s = TestServer::start(db, &standard_packs()).await;
    let customers = "id,name,source,tags,industry,employees\n\
                     c1,One,web,vip;wholesale,retail,12\n\
                     c2,Two,Not A Slug,,retail,3\n\
                     c3,\"Three, Ltd\",referral,,\"b2b\",40\n\
                     c4,Four,web\n\
                     ,NoId,web,,x,1\n";
    let (status, r) = send_csv(&s, "/v1/import/customers", customers).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (
            r["rows"].as_u64(),
            r["imported"].as_u64(),
            r["error_count"].as_u64()
        ),
        (Some(5), Some(2), Some(3)),
        "{r}"
    );
    let lines: Vec<u64> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 5, 6]);
    let (_, c3) = s.get("/v1/customers/c3").await;
    assert_eq!(
        (c3["name"].as_str(), c3["fields"]["employees"].as_f64()),
        (Some("Three, Ltd"), Some(40.0))
    );

    let events = "customer_id,kind,at,amount,idempotency_key,sku\n\
                  c1,order,2024-03-01,120.50,k1,A-1\n\
                  c1,order,yesterday,10,k2,A-2\n\
                  ghost,order,2024-03-02,5,k3,A-3\n\
                  c3,visit,2024-03-03T10:00:00Z,,k4,\n\
                  c1,order,2024-03-01,120.50,k1,A-1\n";
    let (status, r) = send_csv(&s, "/v1/import/events", events).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (
            r["imported"].as_u64(),
            r["already_present"].as_u64(),
            r["error_count"].as_u64()
        ),
        (Some(2), Some(1), Some(2)),
        "{r}"
    );
    let errors = r["errors"].as_array().unwrap();
    assert_eq!(errors[0]["line"], 3);
    assert!(errors[0]["message"].as_str().unwrap().contains("yesterday"));
    assert_eq!(errors[1]["line"], 4);
    assert!(errors[1]["message"].as_str().unwrap().contains("ghost"));
    let (_, c1) = s.get("/v1/customers/c1").await;
    assert_eq!(c1["metrics"]["total_spend_cents"], 12_050);
    assert_eq!(c1["stage"], "first-purchase");

    let (status, r) = send_csv(&s, "/v1/import/events", "who,what\nx,y\n").await;
    assert_eq!(status, 422, "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("customer_id"));
    s.finish().await;
}

async fn send_csv(s: &TestServer, path: &str, body: &'static str) -> (u16, Value) {
    common::server::send(
        s.req(Method::POST, path)
            .header("content-type", "text/csv")
            .body(body),
    )
    .await
}

async fn cdnow_import_matches_the_file_and_feeds_analytics(db: Db) {
    let s = TestServer::start(db, &standard_packs()).await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data/cdnow/CDNOW_master.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    // The first 2,000 order lines, and the figures computed straight from them.
    let sample: String = text.lines().take(2001).map(|l| format!("{l}\n")).collect();
    let rows: Vec<Vec<&str>> = sample
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let mut ids: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    ids.sort();
    ids.dedup();
    let cents: i64 = rows
        .iter()
        .map(|r| (r[3].parse::<f64>().unwrap() * 100.0).round() as i64)
        .sum();

    let url = format!(
        "/v1/import/cdnow?now={}",
        stagecraft::cli::service::DEMO_NOW
    );
    let (status, r) = common::server::send(s.req(Method::POST, &url).body(sample.clone())).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (
            r["rows"].as_u64(),
            r["imported"].as_u64(),
            r["error_count"].as_u64()
        ),
        (Some(2000), Some(2000), Some(0)),
        "{r}"
    );

    let mut conn = s.crm.store().conn().await.unwrap();
    let (n_customers, spend): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT), CAST(SUM(spend_cents) AS BIGINT) FROM customers WHERE tenant_id = 'acme'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!((n_customers, spend), (ids.len() as i64, cents));

    let (_, seg) = s.get("/v1/analytics/segments").await;
    let tiers: i64 = seg["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["plugin"] == "value-tiers")
        .map(|x| x["customers"].as_i64().unwrap())
        .sum();
    assert_eq!(
        tiers,
        ids.len() as i64,
        "every customer is in exactly one value tier: {seg}"
    );
    let (_, funnel) = s.get("/v1/analytics/funnel").await;
    assert_eq!(funnel["owner"], "b2b-trade");
    let staged: i64 = funnel["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["customers"].as_i64().unwrap())
        .sum();
    assert_eq!(staged, ids.len() as i64, "{funnel}");
    let (_, scores) = s.get("/v1/analytics/scores").await;
    assert_eq!(scores["scores"][0]["customers"], ids.len());
    // The histogram is the stored scores in ten equal buckets from min to max.
    let d = &scores["scores"][0];
    let values: Vec<f64> =
        sqlx::query_scalar("SELECT value FROM scores WHERE tenant_id = 'acme' AND plugin = $1")
            .bind(d["plugin"].as_str().unwrap())
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    let (lo, hi) = (d["min"].as_f64().unwrap(), d["max"].as_f64().unwrap());
    let width = (hi - lo) / 10.0;
    let expected: Vec<usize> = (0..10)
        .map(|i| {
            let from = lo + width * i as f64;
            let to = if i == 9 {
                hi
            } else {
                lo + width * (i + 1) as f64
            };
            values
                .iter()
                .filter(|&&v| v >= from && (v < to || (i == 9 && v <= to)))
                .count()
        })
        .collect();
    assert_eq!(expected.iter().sum::<usize>(), ids.len());
    assert_eq!(d["histogram"], json!(expected), "{d}");

    // The same file again adds nothing.
    let (_, again) = common::server::send(s.req(Method::POST, &url).body(sample)).await;
    assert_eq!(
        (
            again["imported"].as_u64(),
            again["already_present"].as_u64()
        ),
        (Some(0), Some(2000)),
        "{again}"
    );
    s.finish().await;
}

async fn customers_list_filters_and_pages(db: Db) {
    let s = TestServer::start(db, &standard_packs()).await;
    for i in 0..7 {
        let tags = if i % 2 == 0 {
            json!(["even"])
        } else {
            json!([])
        };
        create(&s, json!({"id": format!("k{i}"), "tags": tags})).await;
    }
    event(&s, "k3", json!({"kind": "inquiry"})).await;
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(a) => format!("/v1/customers?limit=3&after={a}"),
            None => "/v1/customers?limit=3".to_string(),
        };
        let (_, page) = s.get(&path).await;
        seen.extend(
            page["customers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string()),
        );
        next = page["next"].as_str().map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    assert_eq!(seen, ["k0", "k1", "k2", "k3", "k4", "k5", "k6"]);
    let ids = |v: &Value| -> Vec<String> {
        v["customers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(&s.get("/v1/customers?tag=even").await.1),
        ["k0", "k2", "k4", "k6"]
    );
    assert_eq!(ids(&s.get("/v1/customers?stage=prospect").await.1), ["k3"]);
    assert_eq!(ids(&s.get("/v1/customers?segment=acquire").await.1), ["k3"]);

    // Text search: a piece of the id or name, any case; LIKE's wildcards are literal.
    s.patch(
        "/v1/customers/k5",
        json!({"name": "Mueller & Sons 50%_off"}),
    )
    .await;
    assert_eq!(ids(&s.get("/v1/customers?q=MUELLER").await.1), ["k5"]);
    assert_eq!(ids(&s.get("/v1/customers?q=50%25_").await.1), ["k5"]);
    assert_eq!(ids(&s.get("/v1/customers?q=%25").await.1), ["k5"]);
    assert_eq!(ids(&s.get("/v1/customers?q=K6").await.1), ["k6"]);
    // Scores: bounds on one plugin's score or any.
    let k3 = s.get("/v1/customers/k3").await.1;
    let v = k3["scores"]["value-tiers"]["value"].as_f64().unwrap();
    event(&s, "k1", json!({"kind": "inquiry"})).await;
    assert_eq!(
        ids(&s
            .get("/v1/customers?score_plugin=value-tiers&min_score=-1e12")
            .await
            .1),
        ["k1", "k3"],
        "only scored customers"
    );
    let around = ids(&s
        .get(&format!("/v1/customers?min_score={v}&max_score={v}"))
        .await
        .1);
    assert!(around.contains(&"k3".to_string()), "{around:?}");
    assert_eq!(
        ids(&s.get("/v1/customers?min_score=1e12").await.1),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(&s
            .get("/v1/customers?score_plugin=nope&min_score=-1e12")
            .await
            .1),
        Vec::<String>::new()
    );
    let (status, e) = s.get("/v1/customers?min_score=NaN").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("bad_query")),
        "{e}"
    );
    s.finish().await;
}

/// `/openapi.json` is served and every operation it describes exists: called
/// without a token, none answers "no such route" or 405.
async fn openapi_lists_every_route(db: Db) {
    let s = TestServer::start(db, &[]).await;
    let (status, doc) = send(s.client.get(s.url("/openapi.json"))).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{}", paths.len());
    for (template, item) in paths {
        let path = template
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for (method, op) in item.as_object().unwrap() {
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
            // Every 2xx JSON body is a named schema that clients can generate
            // types from (an untyped `Object` was the rule before).
            for (code, r) in op["responses"].as_object().unwrap() {
                if !code.starts_with('2') {
                    continue;
                }
                if let Some(schema) = r["content"]["application/json"].get("schema") {
                    let name = schema["$ref"].as_str().unwrap_or_else(|| {
                        panic!(
                            "{method} {template} {code}: the body is not a named schema: {schema}"
                        )
                    });
                    let name = name.rsplit('/').next().unwrap();
                    assert!(
                        doc["components"]["schemas"][name]["type"] == "object"
                            || doc["components"]["schemas"][name].get("oneOf").is_some(),
                        "{method} {template} {code}: {name} is not described"
                    );
                }
            }
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = s.client.request(m, s.url(&path)).send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            assert_ne!(status, 405, "{method} {template}");
            assert!(!body.contains("no such route"), "{method} {template}");
            if op.get("security").is_some() {
                assert_eq!(status, 401, "{method} {template} needs a token");
            }
        }
    }
    s.finish().await;
}

async fn roles_and_tenants_are_enforced(db: Db) {
    let s = TestServer::start(db, &[]).await;
    create(&s, json!({"id": "secret"})).await;
    let viewer = s.token_for(Role::Viewer).await;
    let (status, _) = common::server::send(
        s.client
            .get(s.url("/v1/customers/secret"))
            .bearer_auth(&viewer),
    )
    .await;
    assert_eq!(status, 200);
    let (status, e) = common::server::send(
        s.client
            .post(s.url("/v1/customers/secret/events"))
            .bearer_auth(&viewer)
            .json(&json!({"kind": "visit"})),
    )
    .await;
    assert_eq!(status, 403, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("agent"));
    let (status, _) =
        common::server::send(s.client.get(s.url("/v1/audit")).bearer_auth(&viewer)).await;
    assert_eq!(status, 403);
    let (status, audit) = s.get("/v1/audit").await;
    assert_eq!(status, 200);
    assert!(audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "token.create"));

    let other = s.other_tenant_admin().await;
    for path in ["/v1/customers/secret", "/v1/customers/secret/timeline"] {
        let (status, e) = common::server::send(s.client.get(s.url(path)).bearer_auth(&other)).await;
        assert_eq!(status, 404, "{path}: {e}");
    }
    let (_, list) =
        common::server::send(s.client.get(s.url("/v1/customers")).bearer_auth(&other)).await;
    assert_eq!(list["customers"], json!([]));
    let (status, health) = common::server::send(s.client.get(s.url("/healthz"))).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    s.finish().await;
}

async fn customers_can_be_updated_by_hand(db: Db) {
    let s = TestServer::start(db, &standard_packs()).await;
    create(
        &s,
        json!({"id": "p", "name": "Old", "fields": {"phone": "+49 30 1234"}}),
    )
    .await;
    let (status, c) = s
        .patch(
            "/v1/customers/p",
            json!({"name": "New", "fields": {"phone": null, "tier_note": "gold"},
                                         "add_tags": ["vip"], "stage": "advocate"}),
        )
        .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(
        (c["name"].as_str(), c["stage"].as_str()),
        (Some("New"), Some("advocate"))
    );
    assert_eq!(c["fields"], json!({"tier_note": "gold"}));
    assert_eq!(c["tags"], json!(["vip"]));
    let (status, e) = s
        .patch("/v1/customers/p", json!({"stage": "nowhere"}))
        .await;
    assert_eq!(status, 422, "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("b2b-trade"));
    let (_, t) = s.get("/v1/customers/p/timeline").await;
    assert!(t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "stage_move" && e["plugin"] == "manual"));
    s.finish().await;
}

/// The curl walkthrough in `examples/` runs as written against a real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_walkthrough_runs_as_documented() {
    let s = TestServer::start(Db::Sqlite, &standard_packs()).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/walkthrough.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .env("STAGECRAFT_URL", &s.base)
        .env("STAGECRAFT_TOKEN", &s.token)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        r#""to":"prospect""#,
        "Answer their question: Price for 500 units, FOB Hamburg?",
        r#""to":"first-purchase""#,
        r#""band":"medium""#,
        r#""to":"repeat""#,
        r#""band":"high""#,
        r#""replayed":true"#,
        r#""sensitive_fields":["email"]"#,
        r#""type":"stage_move""#,
        r#""owner":"b2b-trade""#,
        "首次下单",
    ] {
        assert!(
            text.contains(expected),
            "the walkthrough output lacks {expected}:\n{text}"
        );
    }
    s.finish().await;
}

async fn a_lapsed_customer_steps_back_and_returns_with_an_order(db: Db) {
    let s = TestServer::start(db, &standard_packs()).await;
    create(&s, json!({"id": "old"})).await;
    let now = now_ms();
    for days_ago in [400, 330, 260, 200] {
        event(
            &s,
            "old",
            json!({"kind": "order", "amount_cents": 10_000, "at": now - days_ago * DAY}),
        )
        .await;
    }
    let (_, c) = s.get("/v1/customers/old").await;
    assert_eq!(c["stage"], "long-term");
    let o = event(&s, "old", json!({"kind": "call", "channel": "phone"})).await;
    assert_eq!(o["stage"]["to"], "repeat", "{o}");
    assert_eq!(o["stage"]["reason"], "no order for 200 days");
    assert_eq!(o["tags_added"], json!(["lapsed"]));
    let o = event(&s, "old", json!({"kind": "order", "amount_cents": 10_000})).await;
    assert_eq!(o["tags_removed"], json!(["lapsed"]), "{o}");
    assert_eq!(o["stage"]["to"], "long-term");
    s.finish().await;
}

async fn follow_ups_are_listed_until_marked_done(db: Db) {
    let s = TestServer::start(db, &standard_packs()).await;
    create(&s, json!({"id": "fu"})).await;
    event(
        &s,
        "fu",
        json!({"kind": "inquiry", "fields": {"question": "Do you ship to Oslo?"}}),
    )
    .await;
    let (_, c) = s.get("/v1/customers/fu").await;
    let open = c["follow_ups"].as_array().unwrap();
    assert_eq!(open.len(), 2, "{c}");
    let answer = open
        .iter()
        .find(|f| f["note"] == "Answer their question: Do you ship to Oslo?")
        .unwrap();
    let path = format!("/v1/customers/fu/follow-ups/{}/done", answer["id"]);
    let (status, c) = s.post(&path, json!({})).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["follow_ups"].as_array().unwrap().len(), 1);
    let (status, e) = s.post(&path, json!({})).await;
    assert_eq!(status, 404, "done twice: {e}");
    let (status, _) = s
        .post("/v1/customers/other/follow-ups/1/done", json!({}))
        .await;
    assert_eq!(status, 404);
    let (_, t) = s.get("/v1/customers/fu/timeline").await;
    assert!(t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "follow_up" && e["status"] == "done"));
    s.finish().await;
}

async fn reasons_can_be_read_in_chinese(db: Db) {
    let s = TestServer::start(db, &standard_packs()).await;
    create(&s, json!({"id": "zh"})).await;
    event(&s, "zh", json!({"kind": "inquiry"})).await;
    event(&s, "zh", json!({"kind": "order", "amount_cents": 30_000})).await;
    let (_, c) = s.get("/v1/customers/zh?lang=zh").await;
    let texts: Vec<&str> = c["scores"]["value-tiers"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert!(texts.contains(&"在 1 个不同日期购买"), "{texts:?}");
    let seg = c["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["plugin"] == "b2b-trade")
        .unwrap();
    assert_eq!(seg["reason"]["text"], "阶段等级 2");
    let (_, t) = s.get("/v1/customers/zh/timeline?lang=zh").await;
    let moves: Vec<&str> = t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "stage_move")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(moves, ["首次下单", "有效询盘"]);
    let (_, en) = s.get("/v1/customers/zh/timeline").await;
    assert!(en["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["reason"] == "placed a first order"));
    let (status, e) = s.get("/v1/customers/zh?lang=fr").await;
    assert_eq!(status, 400, "{e}");
    s.finish().await;
}

/// `at` and `created_at` take an RFC 3339 time or a date as well as milliseconds
/// (`"at": "2026-01-10T10:00:00Z"` used to be refused); a string that is no time
/// is a 400 that says what is expected; an impossible date is not a time.
async fn times_are_taken_as_rfc_3339_strings_or_milliseconds(db: Db) {
    let s = TestServer::start(db, &[]).await;
    let (status, o) = s
        .post(
            "/v1/customers",
            json!({"id": "t", "created_at": "2025-03-01"}),
        )
        .await;
    assert_eq!(status, 201, "{o}");
    let (_, c) = s.get("/v1/customers/t").await;
    assert_eq!(c["created_at"], 1_740_787_200_000i64, "{c}");
    for (at, ms) in [
        (json!("2026-01-10T10:00:00Z"), 1_768_039_200_000i64),
        (json!("2026-01-10T18:00:00.250+08:00"), 1_768_039_200_250),
        (json!(1_768_039_200_000i64), 1_768_039_200_000),
    ] {
        let (status, o) = s
            .post("/v1/customers/t/events", json!({"kind": "visit", "at": at}))
            .await;
        assert_eq!(status, 201, "{at}: {o}");
        let (_, t) = s.get("/v1/customers/t/timeline").await;
        let event = t["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "event" && e["id"] == o["event_id"])
            .unwrap_or_else(|| panic!("{t}"));
        assert_eq!(event["at"], ms, "{at}: {event}");
    }
    for bad in ["yesterday", "2024-02-30", "2026-01-10T10:00:00"] {
        let (status, o) = s
            .post(
                "/v1/customers/t/events",
                json!({"kind": "visit", "at": bad}),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {o}");
        assert!(
            o["error"]["message"].as_str().unwrap().contains("RFC 3339"),
            "{bad}: {o}"
        );
    }
    s.finish().await;
}
