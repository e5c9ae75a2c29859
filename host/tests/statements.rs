//! How many SQL statements an event costs, and that its write transaction shows in
//! the store's write statistics (which the ingest bench reads). Each statement is a
//! round trip (for SQLite, to sqlx's worker thread), and those round trips, not the
//! plugins, bound the ingest rate (BENCHMARKS.md). Counted from sqlx's own statement
//! log, so a change that goes back to a statement per score or segment fails here,
//! not only in a benchmark.
//! Its own test binary: the count needs the process-wide tracing subscriber.

#[allow(unused_macros)]
#[macro_use]
mod common;

use common::server::{pack, Db, Pack, TestServer};
use serde_json::json;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Every statement sqlx ran, in the order they finished.
static STATEMENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Recorder;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        struct Sql(String);
        impl Visit for Sql {
            fn record_str(&mut self, f: &Field, v: &str) {
                if f.name() == "db.statement" {
                    self.0 = v.to_string();
                }
            }
            fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
                if f.name() == "db.statement" && self.0.is_empty() {
                    self.0 = format!("{v:?}");
                }
            }
        }
        let mut sql = Sql(String::new());
        event.record(&mut sql);
        STATEMENTS.lock().unwrap().push(sql.0);
    }
}

/// The statements since `mark`, without the background pollers' (plugin sets
/// changed by another host, jobs to resume).
fn since(mark: usize) -> Vec<String> {
    STATEMENTS.lock().unwrap()[mark..]
        .iter()
        .filter(|s| !s.contains("tenant_generations") && !s.contains("jobs"))
        .cloned()
        .collect()
}

#[tokio::test]
async fn an_event_with_two_packs_costs_a_bounded_number_of_statements_and_events_together_share_them(
) {
    tracing_subscriber::registry().with(Recorder).init();
    let b2b = Pack {
        stem: "b2b_trade",
        rules: None,
        owns_lifecycle: true,
    };
    let s = TestServer::start(Db::Sqlite, &[b2b, pack("value_tiers")]).await;
    s.post("/v1/customers", json!({"id": "c1"})).await;
    let (status, _) = s
        .post("/v1/customers/c1/events", json!({"kind": "visit"}))
        .await;
    assert_eq!(status, 201);

    let mark = STATEMENTS.lock().unwrap().len();
    let (committed_before, held_before) = s.crm.store().write_stats().totals();
    let started = std::time::Instant::now();
    let events = [
        json!({"kind": "visit"}),
        json!({"kind": "inquiry"}),
        json!({"kind": "order", "amount_cents": 5000}),
        json!({"kind": "visit"}),
        json!({"kind": "order", "amount_cents": 700}),
    ];
    let mut acted = 0;
    for e in &events {
        let (status, o) = s.post("/v1/customers/c1/events", e.clone()).await;
        assert_eq!(status, 201, "{o}");
        assert!(o["scores"]["value-tiers"]["value"].is_number(), "{o}");
        let moved = o["stage"].is_object();
        let followed = o["follow_ups"].as_array().is_some_and(|f| !f.is_empty());
        acted += (moved || followed) as usize;
    }
    // b2b-trade moves the stage or schedules a follow-up on some of these: their
    // writes are among those counted below.
    assert!(acted > 0, "no event caused an action");
    let ran = since(mark);
    // Each event: the token; one query with every read (the customer with its
    // fields, tags and segments, its counts, its recent events, the previous
    // scores) before the writer is taken, for the plugins to run on; under the
    // writer, one small query to check the customer's `rev` says nothing changed
    // since; and one with every write (metrics, the plugins' actions, scores,
    // history, memberships, the event): 4 on 2026-11-30, where reading
    // everything again under the writer had been the check. The actions one by
    // one made it 4.0, the reads too 9.4, the writes too 13.8; before the
    // pipeline wrote through the bulk writers it was 18.4. A debug build (the
    // tests) also reads everything again under the writer, to catch a writer
    // that forgot to bump a `rev`: one more.
    let debug = cfg!(debug_assertions) as usize;
    let per_event = ran.len() as f64 / events.len() as f64;
    assert_eq!(
        per_event,
        (4 + debug) as f64,
        "statements per event:\n{}",
        ran.join("\n")
    );
    // On SQLite the reads are one multi-statement query, and so are the writes.
    let one_query = |parts: &[&str]| {
        ran.iter()
            .filter(|q| parts.iter().all(|part| q.contains(part)))
            .count()
    };
    let reads = one_query(&[
        "FROM customers WHERE",
        "FROM customer_tags",
        "ORDER BY at DESC",
        "FROM scores",
    ]);
    assert_eq!(reads, (1 + debug) * events.len(), "{}", ran.join("\n"));
    let checks = one_query(&["LEFT JOIN customers c", "idempotency_key"]);
    assert_eq!(checks, events.len(), "{}", ran.join("\n"));
    let writes = one_query(&[
        "UPDATE customers SET orders",
        "INSERT INTO scores",
        "INSERT INTO events",
    ]);
    assert_eq!(writes, events.len(), "{}", ran.join("\n"));
    // The write statistics the ingest bench reads: one committed transaction per
    // event, each holding the writer for some of the time the events took; a
    // request that fails (an unknown customer) rolls back and is not counted.
    let (status, _) = s
        .post("/v1/customers/nobody/events", json!({"kind": "visit"}))
        .await;
    assert_eq!(status, 404);
    let (committed, held) = s.crm.store().write_stats().totals();
    assert_eq!(committed - committed_before, events.len() as u64);
    let held = held - held_before;
    assert!(
        held > std::time::Duration::ZERO && held < started.elapsed(),
        "{held:?}"
    );

    // Events posted together, for different customers, share transactions
    // (group commit): fewer write queries and commits than events, and every
    // event answered and counted.
    const TOGETHER: usize = 64;
    for i in 0..TOGETHER {
        s.post("/v1/customers", json!({"id": format!("g{i}")}))
            .await;
    }
    let mark = STATEMENTS.lock().unwrap().len();
    let (committed_before, _) = s.crm.store().write_stats().totals();
    let mut posts = Vec::new();
    for i in 0..TOGETHER {
        let req = s
            .req(reqwest::Method::POST, &format!("/v1/customers/g{i}/events"))
            .json(&json!({"kind": "order", "amount_cents": 100 + i}));
        posts.push(tokio::spawn(common::server::send(req)));
    }
    for p in posts {
        let (status, o) = p.await.unwrap();
        assert_eq!(status, 201, "{o}");
        assert!(o["scores"]["value-tiers"]["value"].is_number(), "{o}");
    }
    let ran = since(mark);
    let writes = ran
        .iter()
        .filter(|q| q.contains("INSERT INTO events"))
        .count();
    let (committed, _) = s.crm.store().write_stats().totals();
    let transactions = (committed - committed_before) as usize;
    assert!(
        writes < TOGETHER && transactions < TOGETHER,
        "{TOGETHER} events in {writes} write queries and {transactions} transactions"
    );
    // A group writes each table in one multi-row statement, not one per event
    // (`Batch::push_rows`): a group's SQL is new text, each statement prepared anew.
    let inserts: usize = ran
        .iter()
        .map(|q| q.matches("INSERT INTO events").count())
        .sum();
    let updates: usize = ran
        .iter()
        .map(|q| q.matches("UPDATE customers SET orders").count())
        .sum();
    assert_eq!((inserts, updates), (writes, writes), "{}", ran.join("\n"));
    for i in 0..TOGETHER {
        let (_, c) = s.get(&format!("/v1/customers/g{i}")).await;
        assert_eq!(c["metrics"]["orders"], 1, "{c}");
        assert_eq!(c["metrics"]["total_spend_cents"], 100 + i, "{c}");
    }
    s.finish().await;
}
