//! Roles and tenants, route by route: viewer reads; agent also writes customers
//! and events; integrator also uploads plugins, stores rules, dry-runs and
//! rescores; admin also activates, rolls back, reads the audit log and manages
//! tokens. A token of another tenant gets 404 for anything of this one, and a
//! revoked token stops working at once.

#[macro_use]
mod common;

use common::server::{pack, send, Db, TestServer};
use common::wasm;
use reqwest::Method;
use serde_json::{json, Value};
use stagecraft::domain::Role;

on_both_databases!(every_route_checks_the_role_and_the_tenant);

/// The role table above and the OpenAPI document describe the same operations:
/// a new route is documented (utoipa-axum registers both at once) and must be
/// added to the table, so it cannot escape the role and tenant checks.
#[test]
fn the_role_table_covers_every_documented_operation() {
    let (_, doc) = stagecraft::http::api();
    let doc = serde_json::to_value(&doc).unwrap();
    let matches = |template: &str, path: &str| {
        let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
        t.len() == p.len()
            && t.iter()
                .zip(&p)
                .all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}')))
    };
    let table = routes("job-1");
    let mut documented = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("security").is_none() {
                continue; // health, metrics: no token, no tenant
            }
            let method = method.to_uppercase();
            documented.push((method.clone(), template.clone()));
            assert!(
                table
                    .iter()
                    .any(|r| r.0.as_str() == method && matches(template, &r.1)),
                "{method} {template} is documented but missing from the role table"
            );
        }
    }
    for r in &table {
        assert!(
            documented
                .iter()
                .any(|(m, t)| m == r.0.as_str() && matches(t, &r.1)),
            "{} {} is in the role table but not documented",
            r.0,
            r.1
        );
    }
    assert_eq!(documented.len(), table.len());
}

/// (method, path, body, the least role that may call it)
fn routes(job: &str) -> Vec<(Method, String, Option<Value>, Role)> {
    use Role::*;
    let j = |v: Value| Some(v);
    vec![
        (Method::GET, "/v1/customers".into(), None, Viewer),
        (Method::GET, "/v1/me".into(), None, Viewer),
        (Method::GET, "/v1/customers/c1".into(), None, Viewer),
        (
            Method::GET,
            "/v1/customers/c1/timeline".into(),
            None,
            Viewer,
        ),
        (Method::GET, "/v1/analytics/funnel".into(), None, Viewer),
        (Method::GET, "/v1/analytics/segments".into(), None, Viewer),
        (Method::GET, "/v1/analytics/scores".into(), None, Viewer),
        (Method::GET, "/v1/plugins".into(), None, Viewer),
        (Method::GET, "/v1/plugins/value-tiers".into(), None, Viewer),
        (Method::GET, format!("/v1/jobs/{job}"), None, Viewer),
        (Method::GET, "/v1/jobs".into(), None, Viewer),
        (Method::GET, "/v1/schedules".into(), None, Viewer),
        (Method::GET, "/v1/changes".into(), None, Viewer),
        (Method::GET, "/v1/webhooks".into(), None, Integrator),
        (
            Method::POST,
            "/v1/webhooks".into(),
            j(json!({"url": "https://93.184.216.34/hook"})),
            Integrator,
        ),
        (Method::GET, "/v1/webhooks/wh_none".into(), None, Integrator),
        (
            Method::PATCH,
            "/v1/webhooks/wh_none".into(),
            j(json!({"enabled": false})),
            Integrator,
        ),
        (
            Method::DELETE,
            "/v1/webhooks/wh_none".into(),
            None,
            Integrator,
        ),
        (
            Method::POST,
            "/v1/webhooks/wh_none/rotate-secret".into(),
            None,
            Integrator,
        ),
        (
            Method::GET,
            "/v1/webhooks/wh_none/deliveries".into(),
            None,
            Integrator,
        ),
        (
            Method::POST,
            "/v1/webhooks/wh_none/deliveries/1/redeliver".into(),
            None,
            Integrator,
        ),
        (
            Method::POST,
            "/v1/webhooks/wh_none/test".into(),
            None,
            Integrator,
        ),
        (Method::GET, "/v1/schedules/sch-none".into(), None, Viewer),
        (Method::GET, "/v1/follow-ups".into(), None, Agent),
        (
            Method::POST,
            "/v1/customers/c1/follow-ups/999999/snooze".into(),
            j(json!({"until": "2099-01-01T00:00:00Z"})),
            Agent,
        ),
        (
            Method::POST,
            "/v1/schedules".into(),
            j(json!({"cron": "0 3 * * *"})),
            Admin,
        ),
        (Method::DELETE, "/v1/schedules/sch-none".into(), None, Admin),
        (Method::POST, "/v1/customers".into(), j(json!({})), Agent),
        (
            Method::PATCH,
            "/v1/customers/c1".into(),
            j(json!({"add_tags": ["vip"]})),
            Agent,
        ),
        (
            Method::POST,
            "/v1/customers/c1/events".into(),
            j(json!({"kind": "visit"})),
            Agent,
        ),
        (
            Method::POST,
            "/v1/customers/c1/follow-ups/999999/done".into(),
            j(json!({})),
            Agent,
        ),
        (Method::POST, "/v1/import/customers".into(), None, Agent),
        (
            Method::PUT,
            "/v1/plugins/value-tiers/rules".into(),
            j(
                json!({"high_min_net_cents": 50000, "high_min_purchase_days": 3, "medium_min_net_cents": 10000, "cost_per_order_cents": 500, "cost_per_touchpoint_cents": 300, "cost_per_complaint_cents": 5000}),
            ),
            Integrator,
        ),
        (
            Method::POST,
            "/v1/plugins/value-tiers/dry-run".into(),
            j(json!({"sample": 5})),
            Integrator,
        ),
        (Method::POST, "/v1/rescore".into(), j(json!({})), Integrator),
        (Method::POST, "/v1/plugins".into(), None, Integrator),
        (
            Method::POST,
            "/v1/plugins/value-tiers/activate".into(),
            j(json!({"version": "0.1.0"})),
            Admin,
        ),
        (
            Method::POST,
            "/v1/plugins/value-tiers/rollback".into(),
            j(json!({})),
            Admin,
        ),
        (
            Method::PUT,
            "/v1/plugins/value-tiers/grants".into(),
            j(json!({"fields": []})),
            Admin,
        ),
        (Method::GET, "/v1/audit".into(), None, Admin),
        (
            Method::DELETE,
            "/v1/tokens/no-such-token".into(),
            None,
            Admin,
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            j(json!({"role": "viewer"})),
            Admin,
        ),
    ]
}

async fn call(
    s: &TestServer,
    token: &str,
    (method, path, body, _): &(Method, String, Option<Value>, Role),
) -> (u16, Value) {
    let mut req = s
        .client
        .request(method.clone(), s.url(path))
        .bearer_auth(token);
    req = match (body, path.as_str()) {
        (Some(b), _) => req.json(b),
        (None, "/v1/import/customers") => req.body("id\nfrom-import\n"),
        (None, "/v1/plugins") if *method == Method::POST => req.body(wasm("value_tiers")),
        (None, _) => req,
    };
    send(req).await
}

async fn every_route_checks_the_role_and_the_tenant(db: Db) {
    let s = TestServer::start(db, &[pack("value_tiers")]).await;
    s.post("/v1/customers", json!({"id": "c1"})).await;
    let (_, j) = s
        .post("/v1/plugins/value-tiers/dry-run", json!({"all": true}))
        .await;
    let job = j["job"].as_str().unwrap().to_string();
    let table = routes(&job);
    for role in [Role::Viewer, Role::Agent, Role::Integrator, Role::Admin] {
        let token = s.token_for(role).await;
        for r in &table {
            let (status, body) = call(&s, &token, r).await;
            if role < r.3 {
                assert_eq!(status, 403, "{role:?} {} {}: {body}", r.0, r.1);
                assert_eq!(body["error"]["code"], "forbidden");
            } else {
                assert!(
                    status != 403 && status != 401,
                    "{role:?} {} {}: {status} {body}",
                    r.0,
                    r.1
                );
            }
        }
    }

    // Another tenant's admin: 404 for this tenant's things, empty lists otherwise.
    let other = s.other_tenant_admin().await;
    // (Skipping the upload: globex uploading its own value-tiers would be legitimate
    // and would make the plugin routes below its own.)
    for r in table
        .iter()
        .filter(|r| !(r.0 == Method::POST && r.1 == "/v1/plugins"))
    {
        let (status, body) = call(&s, &other, r).await;
        let own = matches!(
            r.1.as_str(),
            "/v1/customers"
                | "/v1/me"
                | "/v1/plugins"
                | "/v1/audit"
                | "/v1/tokens"
                | "/v1/rescore"
                | "/v1/import/customers"
                | "/v1/jobs"
                | "/v1/schedules"
                | "/v1/changes"
                | "/v1/webhooks"
                | "/v1/follow-ups"
        ) || r.1.starts_with("/v1/analytics");
        if own {
            // Routes on the caller's own tenant: they act there and show nothing of acme.
            assert!(status < 500, "{} {}: {status} {body}", r.0, r.1);
            match (r.0.as_str(), r.1.as_str()) {
                ("GET", "/v1/customers") => assert_eq!(body["customers"], json!([]), "{body}"),
                ("GET", "/v1/plugins") => assert_eq!(body["plugins"], json!([]), "{body}"),
                ("GET", "/v1/jobs") => assert_eq!(body["jobs"], json!([]), "{body}"),
                ("GET", "/v1/changes") => assert_eq!(body["changes"], json!([]), "{body}"),
                ("GET", "/v1/webhooks") => assert_eq!(body["webhooks"], json!([]), "{body}"),
                ("GET", "/v1/follow-ups") => assert_eq!(body["overdue"], json!([]), "{body}"),
                ("GET", "/v1/analytics/segments") => {
                    assert_eq!(body["segments"], json!([]), "{body}")
                }
                ("GET", "/v1/audit") => assert!(body["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|e| e["target"] != "value-tiers@0.1.0")),
                _ => {}
            }
        } else {
            assert_eq!(status, 404, "{} {} from another tenant: {body}", r.0, r.1);
        }
    }

    // A revoked token stops at once; tokens are stored hashed.
    let (status, t) = s
        .post("/v1/tokens", json!({"role": "agent", "label": "temp"}))
        .await;
    assert_eq!(status, 201, "{t}");
    let secret = t["token"].as_str().unwrap().to_string();
    assert_eq!(
        send(s.client.get(s.url("/v1/customers")).bearer_auth(&secret))
            .await
            .0,
        200
    );
    let (status, _) = send(s.req(
        Method::DELETE,
        &format!("/v1/tokens/{}", t["id"].as_str().unwrap()),
    ))
    .await;
    assert_eq!(status, 200);
    let (status, e) = send(s.client.get(s.url("/v1/customers")).bearer_auth(&secret)).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let mut conn = s.crm.store().conn().await.unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT hash FROM tokens")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|h| h.len() == 64 && *h != secret && !h.starts_with("sc_")),
        "only hashes are stored"
    );
    drop(conn);
    s.finish().await;
}
