//! Faults: the server is killed with SIGKILL in the middle of a stream of events,
//! on SQLite and on PostgreSQL. After a restart, every event that got a success is
//! there exactly once (clients retry the others with the same idempotency key), and
//! nothing is half-applied: the customer's metrics equal a recomputation.

#[macro_use]
mod common;

use common::server::{pack, send, wait_healthy, Db, KillOnDrop, TestServer};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

on_both_databases!(a_server_killed_mid_stream_loses_no_acknowledged_event);

fn spawn_server(dir: &std::path::Path, url: &str, port: u16) -> KillOnDrop {
    KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_stagecraft"))
            .arg("--data-dir")
            .arg(dir)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database-url", url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

const EVENTS: usize = 400;
const STREAMS: usize = 4;

async fn a_server_killed_mid_stream_loses_no_acknowledged_event(db: Db) {
    let s = TestServer::start(db, &[pack("value_tiers")]).await;
    s.post("/v1/customers", json!({"id": "k"})).await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = spawn_server(dir.path(), s.database_url(), port);
    wait_healthy(&base).await;

    // Four clients send their share of the events, each with its own key, until the
    // server dies under them.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut streams = Vec::new();
    for stream in 0..STREAMS {
        let (client, token, base, acked) = (s.client.clone(), s.token.clone(), base.clone(), acked.clone());
        streams.push(tokio::spawn(async move {
            for i in (stream..EVENTS).step_by(STREAMS) {
                let req = client
                    .post(format!("{base}/v1/customers/k/events"))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", format!("ev-{i}"))
                    .timeout(Duration::from_secs(5))
                    .json(&json!({"kind": "order", "amount_cents": 100 + i as i64}));
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        acked.lock().unwrap().insert(i);
                    }
                    _ => break,
                }
            }
        }));
    }
    // Kill it once a fair part of the stream is through.
    while acked.lock().unwrap().len() < EVENTS / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    for t in streams {
        t.await.unwrap();
    }
    let acked: BTreeSet<usize> = acked.lock().unwrap().clone();
    assert!(acked.len() < EVENTS, "the kill came before the end of the stream");

    // Restart; the clients retry everything not acknowledged, with the same keys.
    let _server = spawn_server(dir.path(), s.database_url(), port);
    wait_healthy(&base).await;
    for i in 0..EVENTS {
        if acked.contains(&i) {
            continue;
        }
        let (status, o) = send(
            s.client
                .post(format!("{base}/v1/customers/k/events"))
                .bearer_auth(&s.token)
                .header("Idempotency-Key", format!("ev-{i}"))
                .json(&json!({"kind": "order", "amount_cents": 100 + i as i64})),
        )
        .await;
        assert!(status == 201 || status == 200, "retry {i}: {status} {o}");
    }

    let mut conn = s.crm.store.conn().await.unwrap();
    let keys: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM events WHERE tenant_id = 'acme' AND customer_id = 'k'")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), EVENTS, "every event exactly once");
    let distinct: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), EVENTS);
    let (_, c) = s.get("/v1/customers/k").await;
    let recomputed = stagecraft::store::recompute_metrics(&mut conn, "acme", "k", stagecraft::model::now_ms()).await.unwrap();
    assert_eq!(c["metrics"], json!(recomputed), "nothing half-applied");
    assert_eq!(c["metrics"]["orders"], EVENTS);
    let spend: i64 = (0..EVENTS as i64).map(|i| 100 + i).sum();
    assert_eq!(c["metrics"]["total_spend_cents"], spend);
    eprintln!("killed after {} of {EVENTS} acknowledged; all {EVENTS} present once after retries", acked.len());
    drop(conn);
    s.finish().await;
}
