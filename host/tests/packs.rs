//! The vertical packs as built components, through the whole pipeline over HTTP.

#[macro_use]
mod common;

use common::server::{pack, Db, TestServer};
use serde_json::{json, Value};
use stagecraft::model::now_ms;

const DAY: i64 = 86_400_000;

on_both_databases!(
    a_price_sensitive_gym_member_at_risk_is_offered_a_group_plan,
    an_o2o_customer_is_activated_endangered_and_tagged_by_preference,
);

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

async fn an_o2o_customer_is_activated_endangered_and_tagged_by_preference(db: Db) {
    let s = TestServer::start(db, &[pack("o2o_engagement")]).await;
    let (status, c) = s
        .post("/v1/customers", json!({"id": "lin", "source": "seed"}))
        .await;
    assert_eq!(status, 201, "{c}");
    let click =
        json!({"kind": "email-click", "channel": "email", "fields": {"topic": "promotions"}});
    let o = post_event(&s, "lin", click.clone()).await;
    assert_eq!(o["segments_joined"], json!(["seed"]), "{o}");
    let o = post_event(&s, "lin", click).await;
    assert_eq!(o["tags_added"], json!(["pref:promotions"]), "{o}");
    for i in 0..3 {
        let o = post_event(
            &s,
            "lin",
            json!({"kind": "experience", "fields": {"rating": 5}}),
        )
        .await;
        if i == 2 {
            assert_eq!(o["tags_added"], json!(["activated"]), "{o}");
            assert_eq!(o["segments_joined"], json!(["activated"]));
        }
    }
    let o = post_event(
        &s,
        "lin",
        json!({"kind": "experience", "fields": {"rating": 1, "note": "a torn jacket"}}),
    )
    .await;
    assert_eq!(o["tags_added"], json!(["endangered"]), "{o}");
    assert_eq!(
        o["follow_ups"][0]["note"],
        "Rescue: call about a torn jacket"
    );
    assert_eq!(o["segments_joined"], json!(["endangered"]));
    let o = post_event(&s, "lin", json!({"kind": "order", "amount_cents": 45_000})).await;
    let rfm = &o["scores"]["o2o-engagement"];
    assert_eq!(
        (rfm["value"].as_f64(), rfm["band"].as_str()),
        (Some(514.0), Some("promising")),
        "{o}"
    );
    s.finish().await;
}

/// The clv component over the whole CDNOW data set (23,570 customers, every order
/// to June 1998, evaluated on 1 July 1998), in batches: the same value for every
/// customer as the pack compiled natively, whose formulas are checked against
/// lifetimes and the published figures in the pack's own tests.
#[test]
fn clv_runs_over_the_full_cdnow_data_set_as_it_does_natively() {
    use stagecraft_plugin::snapshot::{Customer, Metrics};
    use stagecraft_plugin::Plugin;
    use std::collections::BTreeMap;
    const NOW: i64 = 899_251_200_000;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data/cdnow/CDNOW_master.txt");
    let text = std::fs::read_to_string(path).unwrap();
    // customer -> day -> cents
    let mut days: BTreeMap<&str, BTreeMap<i64, i64>> = BTreeMap::new();
    let mut orders: BTreeMap<&str, u32> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split_whitespace().collect();
        let at = stagecraft::import::parse_time(c[1]).unwrap();
        let cents = (c[3].parse::<f64>().unwrap() * 100.0).round() as i64;
        *days.entry(c[0]).or_default().entry(at).or_default() += cents;
        *orders.entry(c[0]).or_default() += 1;
    }
    assert_eq!(days.len(), 23_570);
    let customers: Vec<Customer> = days
        .iter()
        .map(|(id, d)| Customer {
            id,
            created_at: *d.keys().next().unwrap(),
            metrics: Metrics {
                orders: orders[id],
                purchase_days: d.len() as u32,
                total_spend_cents: d.values().sum(),
                first_order_at: d.keys().next().copied(),
                last_order_at: d.keys().last().copied(),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect();
    let rt = common::runtime();
    let plugin = common::load(&rt, "clv");
    let ctx = common::ctx(NOW);
    let native = clv::Clv::with_default_rules().unwrap();
    let nctx = stagecraft_plugin::testing::context(NOW);
    let started = std::time::Instant::now();
    let mut total = 0.0;
    for chunk in customers.chunks(1000) {
        let scores = plugin
            .session(&ctx, None)
            .unwrap()
            .score(&ctx, chunk)
            .unwrap();
        for (c, s) in chunk.iter().zip(scores) {
            let s = s.unwrap();
            assert_eq!(s.value, native.score(&nctx, c).unwrap().value, "{}", c.id);
            total += s.value;
        }
    }
    eprintln!(
        "clv: 23,570 CDNOW customers in {:?}; expected value over the next year {total:.0}",
        started.elapsed()
    );
    assert!(total > 0.0);
}
