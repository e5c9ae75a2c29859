//! Time as a trigger (contract 0.2.0): a pack's wakes fire through the one
//! evaluation path when the clock reaches them, with no event and no rescore,
//! and the timeline says which plugin's timer woke the customer. The clock is
//! the server's own, moved by the test: no sleeping for 46 days.

#[macro_use]
mod common;

use common::server::{Db, Pack, TestServer};
use serde_json::{json, Value};
use stagecraft::domain::time::Clock;

on_both_databases!(a_member_lapses_on_the_configured_day_and_a_visit_moves_the_wake);

const DAY: i64 = 86_400_000;
/// 2026-01-05T00:00:00Z.
const T0: i64 = 1_767_571_200_000;
const RULES: &str = r#"{"visit_kinds":["visit","class"],"gap_smoothing":0.3,"default_gap_days":7,"overdue_points_per_gap":20,"max_overdue_points":40,"missed_payment_points":20,"ending_within_days":30,"ending_points":20,"ended_points":30,"at_risk_from":50,"loyal_below":20,"loyal_min_days":180,"new_within_days":30,"lapsed_after_days":45,"offer":"group-plan","offer_follow_up_hours":24}"#;

async fn customer(s: &TestServer, id: &str) -> Value {
    let (status, c) = s.get(&format!("/v1/customers/{id}")).await;
    assert_eq!(status, 200, "{c}");
    c
}

fn segments(c: &Value) -> Vec<String> {
    c["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["segment"].as_str().unwrap().to_string())
        .collect()
}

/// Waits (at most 30 s of real time) until `done` holds for the customer.
async fn until(s: &TestServer, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let c = customer(s, id).await;
        if done(&c) {
            return c;
        }
        assert!(std::time::Instant::now() < deadline, "never {what}: {c}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn a_member_lapses_on_the_configured_day_and_a_visit_moves_the_wake(db: Db) {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").try_init();
    let fitness = Pack {
        stem: "fitness_studio",
        rules: Some(RULES),
        owns_lifecycle: false,
    };
    let s = TestServer::start_with_clock(db, &[fitness], Clock::at(T0)).await;
    for id in ["mia", "leo"] {
        let (status, c) = s.post("/v1/customers", json!({ "id": id })).await;
        assert_eq!(status, 201, "{c}");
        let (status, o) = s
            .post(
                &format!("/v1/customers/{id}/events"),
                json!({"kind": "visit"}),
            )
            .await;
        assert_eq!(status, 201, "{o}");
        // The next change with time alone: 14 days on, when the risk of a
        // member who usually comes weekly reaches `loyal_below`.
        assert_eq!(
            o["wakes"],
            json!([{"plugin": "fitness-studio", "due_at": T0 + 14 * DAY}])
        );
    }
    let mia = customer(&s, "mia").await;
    assert_eq!(segments(&mia), ["new"]);

    // Day 40: Leo comes again, which moves his wakes on; Mia does not.
    s.crm.clock().set(T0 + 40 * DAY);
    let (status, o) = s
        .post("/v1/customers/leo/events", json!({"kind": "visit"}))
        .await;
    assert_eq!(status, 201, "{o}");
    let leo_wake = o["wakes"][0]["due_at"].as_i64().unwrap();
    assert!(leo_wake > T0 + 46 * DAY, "{o}");

    // Day 46, with no event and no rescore: Mia lapsed on day 45.
    s.crm.clock().set(T0 + 46 * DAY);
    let mia = until(&s, "mia", "lapsed", |c| segments(c) == ["lapsed"]).await;
    assert_eq!(mia["wakes"], json!([]), "no change ahead but a visit");
    let lapsed = &mia["segments"][0];
    assert_eq!(lapsed["since"], T0 + 45 * DAY, "{mia}");
    assert_eq!(
        lapsed["reason"]["text"],
        "last visit 45 days ago, usually every 7 days"
    );
    let follow_ups: Vec<&Value> = mia["follow_ups"].as_array().unwrap().iter().collect();
    assert_eq!(follow_ups.len(), 1, "{mia}");
    assert_eq!(follow_ups[0]["key"], "win-back");
    assert_eq!(follow_ups[0]["due_at"], T0 + 46 * DAY);

    // The timeline names each timer and the plugin that set it; the lapse is
    // the newest, at the time it was due.
    let (status, t) = s.get("/v1/customers/mia/timeline").await;
    assert_eq!(status, 200, "{t}");
    let wakes: Vec<i64> = t["entries"]
        .as_array()
        .unwrap_or_else(|| t.as_array().expect("a list"))
        .iter()
        .filter(|e| e["type"] == "wake")
        .map(|e| {
            assert_eq!(e["plugin"], "fitness-studio", "{e}");
            e["at"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(wakes, [T0 + 45 * DAY, T0 + 30 * DAY, T0 + 14 * DAY], "{t}");

    // Leo came on day 40: not lapsed, his wake still ahead and unfired.
    let leo = customer(&s, "leo").await;
    assert!(!segments(&leo).contains(&"lapsed".to_string()), "{leo}");
    assert_eq!(leo["wakes"][0]["due_at"], leo_wake, "{leo}");
    s.finish().await;
}
