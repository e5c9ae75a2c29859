//! The change feed (`GET /v1/changes`): every change to a customer, a
//! follow-up or a plugin is recorded in the transaction that made it, and a
//! client following `next` hears of each committed change once, in order, of
//! none that rolled back, and of no sensitive value.

#[macro_use]
mod common;

use common::server::{pack, send, Db, Pack, TestServer};
use serde_json::{json, Value};
use stagecraft::domain::now_ms;
use stagecraft::pipeline::{record_events, EventInput, EventJob};
use std::collections::{BTreeMap, HashSet};

on_both_databases!(
    the_feed_tells_every_committed_change_in_order,
    an_event_whose_transaction_rolls_back_records_no_change,
    a_reader_following_the_feed_during_concurrent_writes_misses_nothing,
    the_feed_keeps_changes_for_the_retention,
);

const DAY: i64 = 86_400_000;

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

/// Every change after `after`, following `next` `limit` at a time; and the
/// last `next`.
async fn read_all(s: &TestServer, query: &str, limit: usize) -> (Vec<Value>, String) {
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = s
            .get(&format!("/v1/changes?limit={limit}&after={after}{query}"))
            .await;
        assert_eq!(status, 200, "{page}");
        let changes = page["changes"].as_array().unwrap();
        assert!(changes.len() <= limit, "{page}");
        all.extend(changes.iter().cloned());
        after = page["next"].as_str().unwrap().to_string();
        if page["more"] != true {
            return (all, after);
        }
    }
}

fn types_of(changes: &[Value], customer: &str) -> Vec<String> {
    changes
        .iter()
        .filter(|c| c["customer_id"] == customer)
        .map(|c| c["type"].as_str().unwrap().to_string())
        .collect()
}

async fn the_feed_tells_every_committed_change_in_order(db: Db) {
    let s = TestServer::start(db, &standard_packs()).await;
    let now = now_ms();
    let (status, c) = s
        .post(
            "/v1/customers",
            json!({"id": "acme-gmbh", "name": "ACME GmbH",
                   "fields": {"industry": "wholesale", "email": "buyer@acme.example"}}),
        )
        .await;
    assert_eq!(status, 201, "{c}");
    let (status, o) = s
        .post(
            "/v1/customers/acme-gmbh/events",
            json!({"kind": "inquiry", "at": now - 30 * DAY, "fields": {"question": "MOQ?"}}),
        )
        .await;
    assert_eq!(status, 201, "{o}");
    let inquiry = o["event_id"].as_str().unwrap().to_string();
    let (status, o) = s
        .post(
            "/v1/customers/acme-gmbh/events",
            json!({"kind": "order", "at": now - 20 * DAY, "amount_cents": 30_000}),
        )
        .await;
    assert_eq!(status, 201, "{o}");
    assert_eq!(o["scores"]["value-tiers"]["band"], "medium", "{o}");
    let (status, u) = s
        .patch(
            "/v1/customers/acme-gmbh",
            json!({"name": "ACME Trading GmbH", "fields": {"email": "ceo@acme.example"},
                   "add_tags": ["vip"]}),
        )
        .await;
    assert_eq!(status, 200, "{u}");
    let (_, fu) = s.get("/v1/customers/acme-gmbh").await;
    let open = fu["follow_ups"][0]["id"]
        .as_i64()
        .expect("an open follow-up");
    let (status, d) = s
        .post(
            &format!("/v1/customers/acme-gmbh/follow-ups/{open}/done"),
            json!({}),
        )
        .await;
    assert!(status < 300, "{status} {d}");

    // Read two at a time: the pages join into one run, in order.
    let (all, last) = read_all(&s, "", 2).await;
    let (one_page, _) = read_all(&s, "", 1000).await;
    assert_eq!(all, one_page, "paging changes nothing");
    let types = types_of(&all, "acme-gmbh");
    assert_eq!(types[0], "customer.created", "{types:?}");
    let pos = |t: &str, pred: &dyn Fn(&Value) -> bool| {
        all.iter()
            .position(|c| c["type"] == t && pred(&c["data"]))
            .unwrap_or_else(|| panic!("no {t} in {all:#?}"))
    };
    let prospect = pos("customer.stage_changed", &|d| d["to"] == "prospect");
    let first = pos("customer.stage_changed", &|d| d["to"] == "first-purchase");
    assert!(prospect < first, "stages in the order they happened");
    assert_eq!(all[prospect]["data"]["event_id"], inquiry.as_str());
    assert_eq!(all[prospect]["data"]["plugin"], "b2b-trade");
    let band = pos("customer.band_changed", &|d| d["to"] == "medium");
    assert_eq!(all[band]["data"]["plugin"], "value-tiers");
    pos("customer.segment_joined", &|d| d["segment"] == "acquire");
    pos("follow_up.created", &|d| {
        d["note"] == "Answer their question: MOQ?"
    });
    pos("customer.tag_added", &|d| d["tag"] == "vip");
    let updated = pos("customer.updated", &|_| true);
    let changed = &all[updated]["data"]["changed"];
    assert_eq!(changed, &json!(["name", "fields.email"]), "{changed}");
    assert_eq!(all[updated]["data"]["name"], "ACME Trading GmbH");
    let done = pos("follow_up.done", &|d| d["by"] == "user");
    assert_eq!(all[done]["data"]["follow_up_id"], open);
    assert_eq!(done, all.len() - 1, "the last change is the last made");

    // Sensitive values are in no change, not even the customer's creation.
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains("acme.example"), "{text}");
    let created = pos("customer.created", &|_| true);
    assert_eq!(
        all[created]["data"]["fields"],
        json!({"industry": "wholesale"})
    );
    // The packs' activations when the server started come first.
    assert_eq!(all[0]["type"], "plugin.activated", "{all:#?}");

    // Ids are unique; cursors increase; nothing after the last.
    let ids: HashSet<&str> = all.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len());
    let cursors: Vec<i64> = all
        .iter()
        .map(|c| c["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    assert_eq!(last, cursors.last().unwrap().to_string());
    let (status, end) = s.get(&format!("/v1/changes?after={last}")).await;
    assert_eq!(status, 200);
    assert_eq!(end, json!({"changes": [], "next": last, "more": false}));

    // A filter on types keeps the order.
    let (stages, _) = read_all(&s, "&types=customer.stage_changed", 1).await;
    let to: Vec<&str> = stages
        .iter()
        .map(|c| c["data"]["to"].as_str().unwrap())
        .collect();
    assert_eq!(to, ["prospect", "first-purchase"]);

    // Errors name the problem.
    for (q, says) in [
        ("types=customer.deleted", "customer.deleted"),
        ("after=abc", "abc"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
    ] {
        let (status, e) = s.get(&format!("/v1/changes?{q}")).await;
        assert_eq!(status, 422, "{q}: {e}");
        assert!(e.to_string().contains(says), "{q}: {e}");
    }

    // Activation and rollback are changes of the tenant, with no customer.
    let (status, a) = s
        .post(
            "/v1/plugins/value-tiers/activate",
            json!({"version": "0.1.0", "reason": "again"}),
        )
        .await;
    assert!(status < 300, "{status} {a}");
    let (status, r) = s
        .post(
            "/v1/plugins/value-tiers/rollback",
            json!({"reason": "oops"}),
        )
        .await;
    assert!(status < 300, "{status} {r}");
    let (status, page) = s.get(&format!("/v1/changes?after={last}")).await;
    assert_eq!(status, 200, "{page}");
    let kinds: Vec<&str> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["plugin.activated", "plugin.rolled_back"], "{page}");
    assert_eq!(page["changes"][1]["data"]["reason"], "oops");
    assert!(page["changes"][0].get("customer_id").is_none(), "{page}");
    s.finish().await;
}

async fn an_event_whose_transaction_rolls_back_records_no_change(db: Db) {
    let s = TestServer::start(db, &standard_packs()).await;
    let (status, _) = s.post("/v1/customers", json!({"id": "c1"})).await;
    assert_eq!(status, 201);
    let (before, next) = read_all(&s, "", 100).await;
    assert_eq!(types_of(&before, "c1"), ["customer.created"]);

    let now = now_ms();
    let record = |commit: bool| {
        let s = &s;
        async move {
            let event = EventInput {
                kind: "order".into(),
                amount_cents: Some(30_000),
                ..Default::default()
            };
            let job = EventJob::new(
                s.crm.tenant_packs("acme"),
                "acme",
                "c1",
                event.validate(now).unwrap(),
                None,
                now,
            );
            let mut tx = s.crm.store().begin().await.unwrap();
            let o = record_events(&mut tx, &[job])
                .await
                .unwrap()
                .pop()
                .unwrap()
                .unwrap();
            assert_eq!(o.scores["value-tiers"].band.as_deref(), Some("medium"));
            if commit {
                tx.commit().await.unwrap();
            }
            // Dropped uncommitted: rolled back.
        }
    };
    record(false).await;
    let (status, page) = s.get(&format!("/v1/changes?after={next}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        page["changes"],
        json!([]),
        "a rolled-back event left {page}"
    );
    let (_, c) = s.get("/v1/customers/c1").await;
    assert_eq!(c["metrics"]["orders"], 0, "{c}");

    // The same event committed: its changes are there.
    record(true).await;
    let (after, _) = read_all(&s, "", 100).await;
    let types = types_of(&after[before.len()..], "c1");
    assert!(
        types.contains(&"customer.band_changed".to_string())
            && types.contains(&"customer.stage_changed".to_string()),
        "{types:?}"
    );
    s.finish().await;
}

/// Writers commit out of order (PostgreSQL: many at once), while a reader
/// follows the feed: at the end it has read every change once, and each
/// customer's in the order they were made.
async fn a_reader_following_the_feed_during_concurrent_writes_misses_nothing(db: Db) {
    let s = TestServer::start(db, &[pack("value_tiers")]).await;
    const CUSTOMERS: usize = 12;
    const TAGS: usize = 8;
    for i in 0..CUSTOMERS {
        let (status, _) = s
            .post("/v1/customers", json!({"id": format!("c{i}")}))
            .await;
        assert_eq!(status, 201);
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let writers = async {
        let mut tasks = Vec::new();
        let s = &s;
        for i in 0..CUSTOMERS {
            let req = move |n: usize| {
                s.req(reqwest::Method::PATCH, &format!("/v1/customers/c{i}"))
                    .json(&json!({"add_tags": [format!("t{n}")]}))
            };
            tasks.push(async move {
                // One customer's tags one after another: t0, t1, ...
                for n in 0..TAGS {
                    let (status, b) = send(req(n)).await;
                    assert_eq!(status, 200, "{b}");
                }
            });
        }
        futures::future::join_all(tasks).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let reader = async {
        let mut seen: Vec<Value> = Vec::new();
        let mut after = String::new();
        loop {
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            let (status, page) = s
                .get(&format!(
                    "/v1/changes?types=customer.tag_added&limit=7&after={after}"
                ))
                .await;
            assert_eq!(status, 200, "{page}");
            seen.extend(page["changes"].as_array().unwrap().iter().cloned());
            after = page["next"].as_str().unwrap().to_string();
            if finished && page["more"] != true {
                return seen;
            }
        }
    };
    let ((), seen) = tokio::join!(writers, reader);
    assert_eq!(seen.len(), CUSTOMERS * TAGS, "every change read once");
    let ids: HashSet<&str> = seen.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), seen.len(), "none read twice");
    let mut per_customer: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in &seen {
        per_customer
            .entry(c["customer_id"].as_str().unwrap())
            .or_default()
            .push(c["data"]["tag"].as_str().unwrap());
    }
    let in_order: Vec<String> = (0..TAGS).map(|n| format!("t{n}")).collect();
    for (customer, tags) in per_customer {
        assert_eq!(tags, in_order, "{customer}'s changes out of order");
    }
    s.finish().await;
}

async fn the_feed_keeps_changes_for_the_retention(db: Db) {
    let s = TestServer::start(db, &[]).await;
    for id in ["a", "b"] {
        let (status, _) = s.post("/v1/customers", json!({"id": id})).await;
        assert_eq!(status, 201);
    }
    // Within a day: kept.
    let kept = s
        .crm
        .clone()
        .with_change_retention(std::time::Duration::from_secs(86_400));
    assert_eq!(kept.changes().prune().await.unwrap(), 0);
    let (all, _) = read_all(&s, "", 100).await;
    assert_eq!(all.len(), 2);
    // Recorded longer ago than the retention: deleted.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let short = s
        .crm
        .clone()
        .with_change_retention(std::time::Duration::from_millis(10));
    assert_eq!(short.changes().prune().await.unwrap(), 2);
    let (all, _) = read_all(&s, "", 100).await;
    assert_eq!(all, Vec::<Value>::new());
    s.finish().await;
}

/// PostgreSQL commits transactions out of the order they wrote in: a change
/// written first but committed last is still read, after the one committed
/// before it, by a reader whose cursor has passed the other. (On SQLite one
/// writer at a time makes write order commit order.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_after_a_later_one_is_not_passed_over_postgres() {
    use stagecraft::domain::changes::{ChangeType, NewChange};
    let Some(db) = Db::postgres() else { return };
    let s = TestServer::start(db, &[]).await;
    let (_, next) = read_all(&s, "", 100).await;
    let change = |id: &str| {
        vec![NewChange::customer(
            ChangeType::TagAdded,
            id,
            json!({"tag": id}),
        )]
    };
    let store = s.crm.store();
    let mut first = store.begin().await.unwrap();
    stagecraft::store::insert_changes(first.conn(), "acme", &change("first"), 1)
        .await
        .unwrap();
    let mut second = store.begin().await.unwrap();
    stagecraft::store::insert_changes(second.conn(), "acme", &change("second"), 2)
        .await
        .unwrap();
    second.commit().await.unwrap();
    let (status, page) = s.get(&format!("/v1/changes?after={next}")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        types_of(page["changes"].as_array().unwrap(), "second").len(),
        1
    );
    let next = page["next"].as_str().unwrap().to_string();
    first.commit().await.unwrap();
    let (_, page) = s.get(&format!("/v1/changes?after={next}")).await;
    let got: Vec<&Value> = page["changes"].as_array().unwrap().iter().collect();
    assert_eq!(
        got.len(),
        1,
        "the change committed last was passed over: {page}"
    );
    assert_eq!(got[0]["customer_id"], "first");
    s.finish().await;
}
