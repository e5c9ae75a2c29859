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
    common::server::spawn_serve(dir, url, port, &[])
}

const EVENTS: usize = 400;
const STREAMS: usize = 4;

async fn a_server_killed_mid_stream_loses_no_acknowledged_event(db: Db) {
    let s = TestServer::start(db, &[pack("value_tiers")]).await;
    s.post("/v1/customers", json!({"id": "k"})).await;
    let dir = tempfile::tempdir().unwrap();
    let port = common::server::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = spawn_server(dir.path(), s.database_url(), port);
    wait_healthy(&base).await;

    // Four clients send their share of the events, each with its own key, until the
    // server dies under them.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut streams = Vec::new();
    for stream in 0..STREAMS {
        let (client, token, base, acked) = (
            s.client.clone(),
            s.token.clone(),
            base.clone(),
            acked.clone(),
        );
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
    assert!(
        acked.len() < EVENTS,
        "the kill came before the end of the stream"
    );

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

    let mut conn = s.crm.store().conn().await.unwrap();
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM events WHERE tenant_id = 'acme' AND customer_id = 'k'",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(keys.len(), EVENTS, "every event exactly once");
    let distinct: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), EVENTS);
    let (_, c) = s.get("/v1/customers/k").await;
    let recomputed =
        stagecraft::store::recompute_metrics(&mut conn, "acme", "k", stagecraft::domain::now_ms())
            .await
            .unwrap();
    assert_eq!(c["metrics"], json!(recomputed), "nothing half-applied");
    assert_eq!(c["metrics"]["orders"], EVENTS);
    let spend: i64 = (0..EVENTS as i64).map(|i| 100 + i).sum();
    assert_eq!(c["metrics"]["total_spend_cents"], spend);
    eprintln!(
        "killed after {} of {EVENTS} acknowledged; all {EVENTS} present once after retries",
        acked.len()
    );
    drop(conn);
    s.finish().await;
}

/// A TCP relay to PostgreSQL that can be cut and restored, to make the database
/// go away under a running server.
struct Relay {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    async fn start(port: u16, upstream: String) -> Relay {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    Ok((mut inbound, _)) = listener.accept() => {
                        let upstream = upstream.clone();
                        links.spawn(async move {
                            if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            }
                        });
                    }
                }
            }
            // Dropping the set aborts every open link: the server's connections die.
            links.abort_all();
        });
        Relay {
            port,
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn cut(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// PostgreSQL goes away under a running server: requests fail fast with 503 and a
/// clear JSON error, nothing is half-stored, and the server recovers by itself
/// when the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_gives_503_and_the_server_recovers() {
    let Some(db) = Db::postgres() else { return };
    let s = TestServer::start(db, &[pack("value_tiers")]).await;
    s.post("/v1/customers", json!({"id": "d"})).await;
    let url = s.database_url().to_string();
    let rest = url.strip_prefix("postgres://").unwrap();
    let (auth_host, db_name) = rest.split_once('/').unwrap();
    let (user, host) = auth_host
        .rsplit_once('@')
        .map(|(u, h)| (format!("{u}@"), h))
        .unwrap_or((String::new(), auth_host));
    let mut relay = Relay::start(0, host.to_string()).await;
    let port = relay.port;
    let relayed = format!("postgres://{user}127.0.0.1:{port}/{db_name}");

    let store = stagecraft::store::Store::connect(&relayed).await.unwrap();
    let runtime = stagecraft::runtime::Runtime::new(common::test_limits(), None).unwrap();
    let crm = stagecraft::Crm::new(store, stagecraft::packs::Packs::new(runtime));
    crm.packs().reload(crm.store(), None).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(stagecraft::http::serve(
        listener,
        crm.clone(),
        std::future::pending(),
    ));
    let get = |path: &str| send(s.client.get(format!("{base}{path}")).bearer_auth(&s.token));
    assert_eq!(get("/v1/customers/d").await.0, 200);

    relay.cut().await;
    let started = std::time::Instant::now();
    let (status, e) = send(
        s.client
            .post(format!("{base}/v1/customers/d/events"))
            .bearer_auth(&s.token)
            .json(&json!({"kind": "order", "amount_cents": 100})),
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("database is unavailable"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "fails within the pool's acquire timeout"
    );
    let (status, h) = send(s.client.get(format!("{base}/healthz"))).await;
    assert_eq!(status, 503, "{h}");

    let _relay = Relay::start(port, host.to_string()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if get("/v1/customers/d").await.0 == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not recover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, c) = get("/v1/customers/d").await;
    assert_eq!(
        c["metrics"]["orders"], 0,
        "the failed event left nothing behind: {c}"
    );
    crm.store().close().await;
    s.finish().await;
}

/// Two hosts on one PostgreSQL write events for the same customer at once: no
/// lost update (the metrics are exact) and a consistent stage history (each move
/// starts where the previous one ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_writing_one_customer_lose_no_update() {
    let Some(db) = Db::postgres() else { return };
    let packs = [
        common::server::Pack {
            stem: "b2b_trade",
            rules: None,
            owns_lifecycle: true,
        },
        pack("value_tiers"),
    ];
    let s = TestServer::start(db, &packs).await;
    s.post("/v1/customers", json!({"id": "shared"})).await;
    let dir = tempfile::tempdir().unwrap();
    let mut hosts = Vec::new();
    for n in 0..2 {
        let port = common::server::free_port();
        let child = spawn_server(&dir.path().join(format!("h{n}")), s.database_url(), port);
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&base).await;
        hosts.push((base, child));
    }
    let now = stagecraft::domain::now_ms();
    let mut tasks = Vec::new();
    for (n, (base, _)) in hosts.iter().enumerate() {
        for lane in 0..2 {
            let (client, token, base) = (s.client.clone(), s.token.clone(), base.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..25i64 {
                    let day = (n as i64 * 50 + lane * 25 + i) % 40;
                    let body = json!({"kind": "order", "amount_cents": 1_000, "at": now - (day + 1) * 86_400_000});
                    let (status, o) = send(client.post(format!("{base}/v1/customers/shared/events")).bearer_auth(&token).json(&body)).await;
                    assert_eq!(status, 201, "{o}");
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, c) = s.get("/v1/customers/shared").await;
    assert_eq!(c["metrics"]["orders"], 100);
    assert_eq!(c["metrics"]["purchase_days"], 40);
    assert_eq!(c["metrics"]["total_spend_cents"], 100_000);
    let mut conn = s.crm.store().conn().await.unwrap();
    let recomputed = stagecraft::store::recompute_metrics(
        &mut conn,
        "acme",
        "shared",
        stagecraft::domain::now_ms(),
    )
    .await
    .unwrap();
    assert_eq!(c["metrics"], json!(recomputed));
    let moves: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT from_stage, to_stage FROM stage_moves WHERE tenant_id = 'acme' AND customer_id = 'shared' ORDER BY seq",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert!(!moves.is_empty());
    for w in moves.windows(2) {
        assert_eq!(
            w[1].0.as_deref(),
            Some(w[0].1.as_str()),
            "a move starts where the last ended: {moves:?}"
        );
    }
    assert_eq!(moves.last().unwrap().1, c["stage"].as_str().unwrap());
    drop(conn);
    drop(hosts);
    s.finish().await;
}

/// Two `stagecraft serve` processes share a rescore on one PostgreSQL; the one
/// that started it is killed (SIGKILL) in the middle of its work. The other takes
/// the dead host's chunk over when its lease runs out (no heartbeat renews it),
/// and every chunk is done exactly once: the job ends with `done == total`, every
/// customer scored. A chunk completes only under the claim that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_rescore_leaves_its_chunk_to_another_done_once() {
    let Some(db) = Db::postgres() else { return };
    let s = TestServer::start(
        db,
        &[common::server::Pack {
            stem: "hostile",
            rules: Some(r#"{"mode": "slow", "value": 20}"#),
            owns_lifecycle: false,
        }],
    )
    .await;
    const N: usize = 1500;
    for i in 0..N {
        s.crm
            .customers()
            .create_customer(
                "acme",
                stagecraft::services::CustomerInput {
                    id: Some(format!("r{i:04}")),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let lease = [("STAGECRAFT_CHUNK_LEASE_MS", "1500")];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_a, port_b) = (common::server::free_port(), common::server::free_port());
    let mut a = common::server::spawn_serve(dir_a.path(), s.database_url(), port_a, &lease);
    let _b = common::server::spawn_serve(dir_b.path(), s.database_url(), port_b, &lease);
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    common::server::wait_healthy(&base_a).await;
    common::server::wait_healthy(&base_b).await;
    let (status, o) = send(
        s.client
            .post(format!("{base_a}/v1/rescore"))
            .bearer_auth(&s.token),
    )
    .await;
    assert_eq!(status, 202, "{o}");
    let job = o["job"].as_str().unwrap().to_string();
    let progress = |base: String| {
        let (client, token, job) = (s.client.clone(), s.token.clone(), job.clone());
        async move {
            send(
                client
                    .get(format!("{base}/v1/jobs/{job}"))
                    .bearer_auth(&token),
            )
            .await
            .1
        }
    };
    // Kill the host that started it once some work is done and some is left.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let j = progress(base_b.clone()).await;
        let done = j["done"].as_i64().unwrap_or(0);
        if done > 0 && done < N as i64 {
            break;
        }
        assert!(
            done < N as i64,
            "the job ended before a host could be killed: {j}"
        );
        assert!(std::time::Instant::now() < deadline, "no progress: {j}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let j = loop {
        let j = progress(base_b.clone()).await;
        if j["status"] != "running" {
            break j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job did not finish: {j}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        (
            j["status"].as_str(),
            j["done"].as_i64(),
            j["total"].as_i64()
        ),
        (Some("done"), Some(N as i64), Some(N as i64)),
        "each chunk counted once: {j}"
    );
    let mut conn = s.crm.store().conn().await.unwrap();
    let scored: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM scores WHERE tenant_id = 'acme' AND plugin = 'hostile'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let chunks: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, CAST(COUNT(*) AS BIGINT) FROM job_chunks WHERE job_id = $1 GROUP BY status",
    )
    .bind(&job)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    assert_eq!(scored, N as i64);
    assert_eq!(chunks, vec![("done".to_string(), 3)]);
    s.finish().await;
}
