//! What contract 0.2.0 adds, through the API on a real server: keyed follow-ups
//! that are updated instead of duplicated and closed by their key, and the one
//! pending wake per plugin and customer that a later request replaces and
//! `none` cancels (`tests/plugins/reminder`).

#[macro_use]
mod common;

use common::server::{pack, Db, TestServer};
use serde_json::{json, Value};
use stagecraft::domain::now_ms;

on_both_databases!(keyed_follow_ups_are_updated_and_closed_and_a_wake_is_replaced_then_cancelled);

const DAY: i64 = 86_400_000;

async fn post_event(s: &TestServer, body: Value) -> (Value, i64, i64) {
    let before = now_ms();
    let (status, o) = s.post("/v1/customers/ana/events", body).await;
    assert_eq!(status, 201, "{o}");
    (o, before, now_ms())
}

async fn view(s: &TestServer) -> Value {
    let (status, c) = s.get("/v1/customers/ana").await;
    assert_eq!(status, 200, "{c}");
    c
}

/// (key, note) of the open follow-ups, by key.
fn open(c: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = c["follow_ups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["plugin"], "reminder", "{f}");
            (
                f["key"].as_str().unwrap().to_string(),
                f["note"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn keyed_follow_ups_are_updated_and_closed_and_a_wake_is_replaced_then_cancelled(db: Db) {
    let s = TestServer::start(db, &[pack("reminder")]).await;
    let (status, c) = s.post("/v1/customers", json!({"id": "ana"})).await;
    assert_eq!(status, 201, "{c}");

    // A visit: the follow-up `check-in` two days on, a wake 45 days on.
    let (o, t0, t1) = post_event(&s, json!({"kind": "visit"})).await;
    assert_eq!(o["follow_ups"][0]["key"], "check-in", "{o}");
    let due = o["follow_ups"][0]["due_at"].as_i64().unwrap();
    assert!((t0 + 2 * DAY..=t1 + 2 * DAY).contains(&due), "{o}");
    let wake = o["wakes"][0]["due_at"].as_i64().unwrap();
    assert!((t0 + 45 * DAY..=t1 + 45 * DAY).contains(&wake), "{o}");
    assert_eq!(o["wakes"][0]["plugin"], "reminder");

    // Another visit moves both instead of adding a second of either.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let (o, _, _) = post_event(&s, json!({"kind": "visit"})).await;
    let c = view(&s).await;
    assert_eq!(c["follow_ups"].as_array().unwrap().len(), 1, "{c}");
    assert_eq!(c["follow_ups"][0]["due_at"], o["follow_ups"][0]["due_at"]);
    assert!(c["follow_ups"][0]["due_at"].as_i64().unwrap() > due);
    let wakes = c["wakes"].as_array().unwrap();
    assert_eq!(wakes.len(), 1, "{c}");
    assert_eq!(wakes[0]["due_at"], o["wakes"][0]["due_at"]);
    assert!(wakes[0]["due_at"].as_i64().unwrap() > wake);

    // One answer naming `check-in` twice: its last word counts.
    let (o, _, _) = post_event(&s, json!({"kind": "complaint"})).await;
    assert_eq!(o["follow_ups"].as_array().unwrap().len(), 2, "{o}");
    assert_eq!(
        open(&view(&s).await),
        [
            ("check-in".to_string(), "second".to_string()),
            ("sorry".to_string(), "apologise".to_string())
        ]
    );

    // An order closes `check-in` by its key and cancels the wake.
    let (o, _, _) = post_event(&s, json!({"kind": "order", "amount_cents": 1200})).await;
    assert_eq!(
        o["follow_ups_closed"],
        json!([{"plugin": "reminder", "key": "check-in"}])
    );
    assert_eq!(o["wakes"], json!([{"plugin": "reminder", "due_at": null}]));
    let c = view(&s).await;
    assert_eq!(open(&c), [("sorry".to_string(), "apologise".to_string())]);
    assert_eq!(c["wakes"], json!([]), "{c}");

    // A visit after the close opens `check-in` anew.
    post_event(&s, json!({"kind": "visit"})).await;
    assert_eq!(open(&view(&s).await).len(), 2);
    s.finish().await;
}
