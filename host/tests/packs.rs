//! The vertical packs as built components, through the whole pipeline over HTTP.

#[macro_use]
mod common;

use common::server::{pack, Db, TestServer};
use serde_json::{json, Value};
use stagecraft::model::now_ms;

const DAY: i64 = 86_400_000;

on_both_databases!(a_price_sensitive_gym_member_at_risk_is_offered_a_group_plan);

async fn post_event(s: &TestServer, id: &str, body: Value) -> Value {
    let (status, o) = s.post(&format!("/v1/customers/{id}/events"), body).await;
    assert_eq!(status, 201, "{o}");
    o
}

async fn a_price_sensitive_gym_member_at_risk_is_offered_a_group_plan(db: Db) {
    let s = TestServer::start(db, &[pack("fitness_studio")]).await;
    let now = now_ms();
    let (status, c) = s
        .post("/v1/customers", json!({"id": "mia", "created_at": now - 300 * DAY, "fields": {"price_sensitive": true}}))
        .await;
    assert_eq!(status, 201, "{c}");
    for days_ago in [44, 40, 36] {
        post_event(
            &s,
            "mia",
            json!({"kind": "class", "at": now - days_ago * DAY}),
        )
        .await;
    }
    let (_, c) = s.get("/v1/customers/mia").await;
    assert_eq!(c["fields"]["avg_visit_gap_days"], 4.0, "{c}");
    assert!(c["tags"].as_array().unwrap().is_empty());

    let o = post_event(&s, "mia", json!({"kind": "payment-missed"})).await;
    let score = &o["scores"]["fitness-studio"];
    assert_eq!(
        (score["value"].as_f64(), score["band"].as_str()),
        (Some(60.0), Some("high")),
        "{o}"
    );
    let reasons: Vec<&str> = score["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "last visit 36 days ago, usually every 4 days",
            "1 missed payments"
        ]
    );
    assert_eq!(o["tags_added"], json!(["offer:group-plan"]));
    assert!(
        o["follow_ups"][0]["note"]
            .as_str()
            .unwrap()
            .starts_with("Offer a group plan"),
        "{o}"
    );
    assert_eq!(o["segments_joined"], json!(["at-risk"]));

    // Back in class: the risk falls, and no second offer is made.
    let o = post_event(&s, "mia", json!({"kind": "class"})).await;
    assert_eq!(o["scores"]["fitness-studio"]["band"], "medium", "{o}");
    assert_eq!(o["tags_added"], json!([]));
    assert_eq!(o["segments_left"], json!(["at-risk"]));
    s.finish().await;
}
