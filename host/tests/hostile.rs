//! Hostile plugins behind the HTTP API, on SQLite and PostgreSQL: for each kind of
//! misbehaviour the request still succeeds, the event is stored with the failure
//! on the timeline and in the response, a metric counts it, another tenant served
//! at the same time sees nothing of it, and the server goes on serving.

#[macro_use]
mod common;

use common::server::{pack, send, Db, Pack, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use stagecraft::domain::Role;

on_both_databases!(every_kind_of_misbehaviour_is_contained_and_recorded);

/// (mode, the failure kind the response reports, words its message contains).
/// Under heavy load (a build on the other core) the deadline may stop a plugin
/// before it reaches its own failure; that is contained too, so `deadline` is
/// accepted for every mode, with its own message.
/// The last five return text a database or a screen must never get (NUL, control
/// or invisible characters, an 8 MB message): on PostgreSQL a NUL used to answer
/// 500 with the event lost and the breaker never told (docs/SECURITY.md, Budgets).
const CASES: [(&str, &str, &str); 13] = [
    ("trap", "trap", "panics on purpose"),
    ("loop", "deadline", "time budget"),
    ("grow", "memory", "memory cap"),
    ("recurse", "trap", ""),
    ("recurse-wasm", "trap", "call stack exhausted"),
    ("flood", "bad_output", "actions, at most 64"),
    ("bad-stage", "bad_output", "not in the plugin's stage graph"),
    ("bad-reason", "plugin_error", "not declared in the manifest"),
    ("nul-error", "plugin_error", "\u{FFFD}"),
    ("nul-band", "plugin_error", "NUL"),
    ("rtl-band", "plugin_error", "U+202E"),
    ("nul-note", "bad_output", "NUL"),
    ("huge-error", "plugin_error", "bytes cut"),
];

async fn every_kind_of_misbehaviour_is_contained_and_recorded(db: Db) {
    for (mode, kind, words) in CASES {
        let rules = format!(r#"{{"mode": "{mode}"}}"#);
        let packs = [
            pack("value_tiers"),
            Pack {
                stem: "hostile",
                rules: Some(&rules),
                owns_lifecycle: true,
            },
        ];
        let s = TestServer::start(db.clone(), &packs).await;
        // A second tenant with a healthy pack, served at the same time.
        let other = s.other_tenant_admin().await;
        stagecraft::cli::service::install_plugin(
            &s.crm,
            "globex",
            &common::wasm_path("value_tiers"),
            None,
            true,
            false,
        )
        .await
        .unwrap();
        let other_post =
            |path: &str, body: Value| s.client.post(s.url(path)).bearer_auth(&other).json(&body);
        send(other_post("/v1/customers", json!({"id": "calm"}))).await;
        s.post("/v1/customers", json!({"id": "victim"})).await;

        let hostile = s.post(
            "/v1/customers/victim/events",
            json!({"kind": "order", "amount_cents": 1000}),
        );
        let calm = send(other_post(
            "/v1/customers/calm/events",
            json!({"kind": "order", "amount_cents": 1000}),
        ));
        let ((status, o), (calm_status, calm_o)) = tokio::join!(hostile, calm);
        assert_eq!(status, 201, "{mode}: {o}");
        assert!(
            o.to_string().len() < 16 << 10,
            "{mode}: the response is {} bytes",
            o.to_string().len()
        );
        let f = o["failures"].as_array().unwrap();
        assert_eq!(f.len(), 1, "{mode}: {o}");
        let got = f[0]["kind"].as_str().unwrap();
        let (kind, words) = if got == "deadline" {
            ("deadline", "time budget")
        } else {
            (kind, words)
        };
        assert_eq!(
            (f[0]["plugin"].as_str(), got),
            (Some("hostile"), kind),
            "{mode}: {o}"
        );
        let message = f[0]["message"].as_str().unwrap();
        assert!(message.contains(words), "{mode}: {message}");
        assert!(
            !message.contains('\0') && message.len() <= 1200,
            "{mode}: {message:?}"
        );
        assert!(
            o["scores"]["value-tiers"].is_object(),
            "{mode}: the healthy pack still scored"
        );
        assert!(
            o["stage"].is_null() && o["tags_added"] == json!([]),
            "{mode}: nothing of the hostile plugin applied: {o}"
        );
        assert_eq!(calm_status, 201, "{mode}: {calm_o}");
        assert!(
            calm_o["failures"].as_array().unwrap().is_empty(),
            "{mode}: the other tenant is untouched: {calm_o}"
        );

        let (_, t) = s.get("/v1/customers/victim/timeline").await;
        let entries = t["entries"].as_array().unwrap();
        assert!(
            entries
                .iter()
                .any(|e| e["type"] == "event" && e["id"] == o["event_id"]),
            "{mode}: the event is stored"
        );
        assert!(
            entries
                .iter()
                .any(|e| e["type"] == "plugin_failure" && e["kind"] == kind),
            "{mode}: the failure is on the timeline"
        );
        let metrics = s.metrics_text().await;
        let counted = format!(
            r#"stagecraft_plugin_calls_total{{outcome="{kind}",plugin="hostile",version="0.1.0"}} 1"#
        );
        assert!(
            metrics.lines().any(|l| l == counted),
            "{mode}: /metrics lacks {counted}"
        );
        let (_, p) = s.get("/v1/plugins/hostile").await;
        let health = &p["versions"][0]["health"];
        assert!(
            health["failures"].as_u64() >= Some(1),
            "{mode}: the circuit breaker counts it: {p}"
        );
        let (_, c) = s.get("/v1/customers/victim").await;
        assert!(!c.to_string().contains("\\u0000"), "{mode}: {c}");
        let (status, h) = send(s.client.get(s.url("/healthz"))).await;
        assert_eq!(
            (status, h["status"].as_str()),
            (200, Some("ok")),
            "{mode}: still serving"
        );
        s.finish().await;
    }
}

/// A plugin that looks for files, the environment, a clock or randomness finds
/// none of them: no files, no variables, the clock stopped at the call's `now`, and
/// randomness that is the same on every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snooping_plugin_sees_no_files_env_clock_or_randomness() {
    let rules = r#"{"mode": "snoop"}"#;
    let s = TestServer::start(
        Db::Sqlite,
        &[Pack {
            stem: "hostile",
            rules: Some(rules),
            owns_lifecycle: true,
        }],
    )
    .await;
    s.post("/v1/customers", json!({"id": "s"})).await;
    let mut randoms = Vec::new();
    for _ in 0..2 {
        let (status, o) = send(
            s.req(Method::POST, "/v1/customers/s/events")
                .json(&json!({"kind": "visit"})),
        )
        .await;
        assert_eq!(status, 201, "{o}");
        let args = o["scores"]["hostile"]["reasons"][0]["args"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(args[0], 0.0, "no environment variables: {o}");
        assert_eq!(args[1], 0.0, "no files: {o}");
        randoms.push(args[3].clone());
        let now = stagecraft::domain::now_ms() as f64;
        let clock = args[2].as_f64().unwrap();
        assert!(
            (now - clock).abs() < 60_000.0,
            "the clock reads the call's now: {clock} vs {now}"
        );
    }
    assert_eq!(
        randoms[0], randoms[1],
        "randomness is seeded the same for the same inputs"
    );
    s.finish().await;
}

/// A sensitive field reaches a plugin only when its manifest asks for it and an
/// admin granted it for the tenant; the grant names fields, never values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensitive_field_reaches_a_plugin_only_when_granted() {
    let rules = r#"{"mode": "fields"}"#;
    let s = TestServer::start(
        Db::Sqlite,
        &[Pack {
            stem: "hostile",
            rules: Some(rules),
            owns_lifecycle: true,
        }],
    )
    .await;
    s.post("/v1/customers", json!({"id": "p", "fields": {"email": "ana@example.com", "phone": "+1 555", "city": "Porto"}})).await;
    let band = |o: &Value| o["scores"]["hostile"]["band"].as_str().unwrap().to_string();
    let visit = || s.post("/v1/customers/p/events", json!({"kind": "visit"}));
    let (_, o) = visit().await;
    assert_eq!(
        (band(&o), o["scores"]["hostile"]["value"].as_f64()),
        ("no-email".into(), Some(1.0)),
        "only city: {o}"
    );

    let (status, e) = s
        .put("/v1/plugins/hostile/grants", json!({"fields": ["phone"]}))
        .await;
    assert_eq!(status, 422, "phone is not asked for: {e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("asks for: email"),
        "{e}"
    );
    let agent = s.token_for(Role::Agent).await;
    let (status, _) = send(
        s.client
            .put(s.url("/v1/plugins/hostile/grants"))
            .bearer_auth(&agent)
            .json(&json!({"fields": ["email"]})),
    )
    .await;
    assert_eq!(status, 403);

    let (status, g) = s
        .put("/v1/plugins/hostile/grants", json!({"fields": ["email"]}))
        .await;
    assert_eq!(status, 200, "{g}");
    let (_, o) = visit().await;
    assert_eq!(
        (band(&o), o["scores"]["hostile"]["value"].as_f64()),
        ("sees-email".into(), Some(2.0)),
        "city and email, never phone: {o}"
    );
    let (_, audit) = s.get("/v1/audit").await;
    let text = audit.to_string();
    assert!(
        text.contains("plugin.grant_fields") && !text.contains("ana@example.com"),
        "{audit}"
    );

    let (_, _) = s
        .put("/v1/plugins/hostile/grants", json!({"fields": []}))
        .await;
    let (_, o) = visit().await;
    assert_eq!(
        band(&o),
        "no-email",
        "a withdrawn grant takes effect at once"
    );
    s.finish().await;
}
