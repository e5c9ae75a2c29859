//! Follow-ups as an agent's work: customers have an owner (set by the API, an
//! import's `owner` column or a plugin's `owner` field), and
//! `GET /v1/follow-ups` is the owner's list — overdue, due today, later —
//! which they work through with done and snooze.

#[macro_use]
mod common;

use common::server::{send, Db, Pack, TestServer};
use serde_json::{json, Value};
use stagecraft::domain::time::Clock;
use stagecraft::domain::Role;

on_both_databases!(an_agent_s_work_list_has_the_follow_ups_of_their_customers_by_when_due);

const DAY: i64 = 86_400_000;
/// 2026-01-05T00:00:00Z.
const T0: i64 = 1_767_571_200_000;

/// (customer, follow-up number) in one part of a work list.
fn part(list: &Value, name: &str) -> Vec<(String, i64)> {
    list[name]
        .as_array()
        .unwrap_or_else(|| panic!("no {name}: {list}"))
        .iter()
        .map(|i| {
            (
                i["customer_id"].as_str().unwrap().to_string(),
                i["id"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn customers(list: &Value, name: &str) -> Vec<String> {
    part(list, name).into_iter().map(|(c, _)| c).collect()
}

async fn an_agent_s_work_list_has_the_follow_ups_of_their_customers_by_when_due(db: Db) {
    // The reminder: a visit opens `check-in` two days on; `assign` sets `owner`.
    let reminder = Pack {
        stem: "reminder",
        rules: None,
        owns_lifecycle: false,
    };
    let s = TestServer::start_with_clock(db, &[reminder], Clock::at(T0 - 3 * DAY)).await;
    let ana = s
        .crm
        .tokens()
        .create(&s.tenant, "test", Role::Agent, "ana")
        .await
        .unwrap()
        .token;
    let as_ana = |path: &str| s.client.get(s.url(path)).bearer_auth(&ana);

    // Owners by the API, an import column, and a plugin's field.
    for (id, owner) in [("c1", Some("ana")), ("c3", Some("bo")), ("c4", None)] {
        let (status, c) = s
            .post("/v1/customers", json!({"id": id, "owner": owner}))
            .await;
        assert_eq!(status, 201, "{c}");
    }
    let csv = "id,name,owner\nc2,Cleo,ana\n";
    let (status, r) = send(
        s.req(reqwest::Method::POST, "/v1/import/customers")
            .body(csv),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let (status, c) = s.post("/v1/customers", json!({"id": "c5"})).await;
    assert_eq!(status, 201, "{c}");
    let (status, o) = s
        .post(
            "/v1/customers/c5/events",
            json!({"kind": "assign", "fields": {"agent": "ana"}}),
        )
        .await;
    assert_eq!(status, 201, "{o}");
    for (id, owner) in [("c1", "ana"), ("c2", "ana"), ("c3", "bo"), ("c5", "ana")] {
        let (_, c) = s.get(&format!("/v1/customers/{id}")).await;
        assert_eq!(c["owner"], owner, "{c}");
    }
    let (status, e) = s
        .patch("/v1/customers/c4", json!({"owner": "x".repeat(65)}))
        .await;
    assert_eq!(status, 422, "{e}");

    // Visits three days ago (due yesterday), two days ago at 02:00 (due today
    // at 02:00, an hour after the list is asked for), and today (due in two days).
    let visit = |id: &'static str| {
        let s = &s;
        async move {
            let (status, o) = s
                .post(
                    &format!("/v1/customers/{id}/events"),
                    json!({"kind": "visit"}),
                )
                .await;
            assert_eq!(status, 201, "{o}");
        }
    };
    visit("c1").await;
    s.crm.clock().set(T0 - 2 * DAY + 2 * 3_600_000);
    visit("c2").await;
    s.crm.clock().set(T0 + 3_600_000);
    for id in ["c3", "c4", "c5"] {
        visit(id).await;
    }

    let (status, list) = send(as_ana("/v1/follow-ups")).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["owner"], "ana", "`me` is the agent the token is for");
    assert_eq!(customers(&list, "overdue"), ["c1"], "{list}");
    assert_eq!(customers(&list, "due_today"), ["c2"], "{list}");
    assert_eq!(customers(&list, "later"), ["c5"], "{list}");
    assert_eq!(list["due_today"][0]["customer_name"], "Cleo");
    assert_eq!(list["due_today"][0]["key"], "check-in");

    // Another agent's list, and the customers nobody looks after.
    let (_, bo) = send(as_ana("/v1/follow-ups?owner=bo")).await;
    assert_eq!(customers(&bo, "later"), ["c3"], "{bo}");
    let (_, none) = send(as_ana("/v1/follow-ups?owner=none")).await;
    assert_eq!(customers(&none, "later"), ["c4"], "{none}");
    let (_, before) = send(as_ana("/v1/follow-ups?due_before=2026-01-06T12:00:00Z")).await;
    assert_eq!(
        (
            customers(&before, "overdue"),
            customers(&before, "due_today"),
            customers(&before, "later")
        ),
        (vec!["c1".to_string()], vec!["c2".to_string()], vec![]),
        "{before}"
    );

    // Snooze the overdue one to the day after tomorrow; mark today's done.
    let (c1, n1) = part(&list, "overdue")[0].clone();
    let (c2, n2) = part(&list, "due_today")[0].clone();
    let snooze = |body: Value| {
        let s = &s;
        let (c1, ana) = (c1.clone(), ana.clone());
        async move {
            send(
                s.client
                    .post(s.url(&format!("/v1/customers/{c1}/follow-ups/{n1}/snooze")))
                    .bearer_auth(&ana)
                    .json(&body),
            )
            .await
        }
    };
    let (status, e) = snooze(json!({"until": T0 - DAY})).await;
    assert_eq!(status, 422, "snoozed into the past: {e}");
    let (status, c) = snooze(json!({"until": "2026-01-07T09:00:00Z"})).await;
    assert_eq!(status, 200, "{c}");
    let (status, c) = send(
        s.client
            .post(s.url(&format!("/v1/customers/{c2}/follow-ups/{n2}/done")))
            .bearer_auth(&ana),
    )
    .await;
    assert_eq!(status, 200, "{c}");
    let (_, list) = send(as_ana("/v1/follow-ups")).await;
    assert!(
        part(&list, "overdue").is_empty() && part(&list, "due_today").is_empty(),
        "{list}"
    );
    assert_eq!(customers(&list, "later"), ["c5", "c1"], "{list}");
    assert_eq!(list["later"][1]["due_at"], T0 + 2 * DAY + 9 * 3_600_000);

    // A viewer has no work list.
    let viewer = s.token_for(Role::Viewer).await;
    let (status, _) = send(s.client.get(s.url("/v1/follow-ups")).bearer_auth(&viewer)).await;
    assert_eq!(status, 403);
    s.finish().await;
}
