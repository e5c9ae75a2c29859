//! Event ingest over HTTP, swaps under load, and bulk import — measured, printed
//! with their targets, never asserted (this machine is shared and noisy).
//!
//! A real server (the same `http::serve` the binary runs) on a loopback socket
//! with a real SQLite file (and PostgreSQL when `STAGECRAFT_TEST_POSTGRES_URL` is
//! set), and a bounded load generator in the same process: `CONCURRENCY`
//! clients posting events for a fixed time. Run by `cargo xtask bench`:
//!   cargo bench -p stagecraft --bench ingest [-- --quick]

/// mimalloc rather than glibc's malloc, as the server has it (see main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use reqwest::Client;
use serde_json::json;
use stagecraft::cli::service::install_plugin;
use stagecraft::domain::Role;
use stagecraft::packs::Packs;
use stagecraft::runtime::{Limits, Runtime};
use stagecraft::store::{Backend, Store};
use stagecraft::Crm;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TENANT: &str = "bench";
const CUSTOMERS: usize = 2_000;
const CONCURRENCY: usize = 16;

struct Server {
    crm: Crm,
    base: String,
    token: String,
    serving: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Stops serving and closes the store, so that a later phase's memory
    /// figures do not carry this server's connections and page caches.
    async fn finish(self) {
        self.serving.abort();
        let _ = self.serving.await;
        self.crm.store().close().await;
    }
}

fn wasm(stem: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release")
        .join(format!("{stem}.wasm"))
}

/// A server on `database` with `packs` (file stem, owns the lifecycle) enabled.
async fn start(database: &Database, packs: &[(&str, bool)]) -> Server {
    start_with(database, packs, true).await
}

/// [`start`], with group commit (SQLite) on or off.
async fn start_with(database: &Database, packs: &[(&str, bool)], group_commit: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = database.fresh(dir.path()).await;
    let store = Store::connect(&url).await.unwrap();
    let runtime = Runtime::new(Limits::default(), Some(dir.path().join("cache"))).unwrap();
    let crm = Crm::new(store, Packs::new(runtime));
    let crm = if group_commit {
        crm
    } else {
        crm.with_group_commit(false)
    };
    let token = crm
        .tokens()
        .create(TENANT, "test", Role::Admin, "bench")
        .await
        .unwrap()
        .token;
    for (stem, owns) in packs {
        install_plugin(&crm, TENANT, &wasm(stem), None, true, *owns)
            .await
            .unwrap();
    }
    for i in 0..CUSTOMERS {
        crm.customers()
            .create_customer(
                TENANT,
                serde_json::from_value(json!({"id": format!("c{i:05}"), "source": "web"})).unwrap(),
            )
            .await
            .unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let serving = crm.clone();
    let serving = tokio::spawn(async move {
        stagecraft::http::serve(listener, serving, std::future::pending())
            .await
            .unwrap()
    });
    Server {
        crm,
        base,
        token,
        serving,
        _dir: dir,
    }
}

enum Database {
    Sqlite,
    Postgres(String),
}

/// The PostgreSQL databases the run made, dropped when it ends.
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Drops the databases the run made. Their servers have closed their stores
/// by then; `FORCE` ends any connection still open rather than fail.
async fn drop_databases(server: &str) {
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(server)
        .await
        .expect("PostgreSQL reachable");
    let names: Vec<String> = std::mem::take(&mut *CREATED.lock().unwrap());
    for name in names {
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

impl Database {
    fn name(&self) -> &'static str {
        match self {
            Database::Sqlite => "SQLite",
            Database::Postgres(_) => "PostgreSQL",
        }
    }
    async fn fresh(&self, dir: &Path) -> String {
        match self {
            Database::Sqlite => format!("sqlite:{}", dir.join("bench.db").display()),
            Database::Postgres(server) => {
                sqlx::any::install_default_drivers();
                let name = format!("stagecraft_bench_{}", uuid::Uuid::new_v4().simple());
                let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(server)
                    .await
                    .expect("PostgreSQL reachable");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                CREATED.lock().unwrap().push(name.clone());
                let base = server.rsplit_once('/').map(|(b, _)| b).unwrap_or(server);
                format!("{base}/{name}")
            }
        }
    }
}

struct Load {
    ok: u64,
    failed: u64,
    seconds: f64,
    latencies_us: Vec<u32>,
    /// Write transactions committed during the run, and how long they held the writer.
    writes: (u64, Duration),
}

impl Load {
    fn per_second(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
    /// The share of the run the writer was held, the mean hold per
    /// transaction, and events per transaction (group commit puts several in one).
    fn writer(&self) -> (f64, f64, f64) {
        let (n, held) = self.writes;
        (
            held.as_secs_f64() / self.seconds,
            held.as_secs_f64() * 1e6 / n.max(1) as f64,
            self.ok as f64 / n.max(1) as f64,
        )
    }
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// `CONCURRENCY` clients posting events (visits, inquiries, orders) to random
/// customers until `stop` is set or `duration` passes.
async fn load(
    store: &Store,
    base: &str,
    token: &str,
    duration: Duration,
    stop: Arc<AtomicBool>,
) -> Load {
    let writes_before = store.write_stats().totals();
    let client = Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let started = Instant::now();
    let seq = Arc::new(AtomicU64::new(0));
    // Keys of their own per run: a warm-up on the same server used `load-0`... too.
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let (client, base, token, stop, seq, run) = (
            client.clone(),
            base.to_string(),
            token.to_string(),
            stop.clone(),
            seq.clone(),
            run.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::new());
            let mut x = 0x9E37_79B9u64 ^ (w as u64 * 7919);
            while started.elapsed() < duration && !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let customer = format!("c{:05}", x % CUSTOMERS as u64);
                let body = match x % 10 {
                    0..=5 => json!({"kind": "visit", "channel": "web"}),
                    6..=7 => json!({"kind": "inquiry", "channel": "web"}),
                    _ => json!({"kind": "order", "amount_cents": 1000 + (x % 50_000) as i64}),
                };
                let t = Instant::now();
                let r = client
                    .post(format!("{base}/v1/customers/{customer}/events"))
                    .bearer_auth(&token)
                    .header("idempotency-key", format!("load-{run}-{n}"))
                    .json(&body)
                    .send()
                    .await;
                let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                match r {
                    Ok(r) if r.status().is_success() => {
                        ok += 1;
                        lat.push(us);
                    }
                    Ok(r) => {
                        failed += 1;
                        if failed <= 3 {
                            eprintln!(
                                "  failed after {:?}: {} {}",
                                started.elapsed(),
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        if failed <= 3 {
                            eprintln!("  failed: {e}");
                        }
                    }
                }
            }
            (ok, failed, lat)
        }));
    }
    let mut out = Load {
        ok: 0,
        failed: 0,
        seconds: 0.0,
        latencies_us: Vec::new(),
        writes: (0, Duration::ZERO),
    };
    for t in tasks {
        let (ok, failed, lat) = t.await.unwrap();
        out.ok += ok;
        out.failed += failed;
        out.latencies_us.extend(lat);
    }
    out.seconds = started.elapsed().as_secs_f64();
    out.latencies_us.sort_unstable();
    let writes_after = store.write_stats().totals();
    out.writes = (
        writes_after.0 - writes_before.0,
        writes_after.1 - writes_before.1,
    );
    out
}

/// This process's resident memory, in MiB.
fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// A `/proc/self/status` memory line (`VmRSS:`, `VmHWM:`), in MiB.
fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// A load on `s` for `duration`, after a 2 s warm-up on the same server, so
/// that the figures are of a server running, not starting: its pools' first
/// connections opened within the measured run, and on SQLite that alone put a
/// few ms on p99 (2026-11-30: 20.5 ms with the warm-up against 22–27 ms without).
async fn measure(s: Server, duration: Duration) -> Load {
    let warm_up = duration.min(Duration::from_secs(2));
    let stop = || Arc::new(AtomicBool::new(false));
    load(s.crm.store(), &s.base, &s.token, warm_up, stop()).await;
    if s.crm.store().backend() == Backend::Postgres {
        // A database in use has statistics: autovacuum analyzes a table once a
        // tenth of it changed, but looks at most once a minute. Without them,
        // on a fresh database, the plans cached for the first statements took
        // the wrong index (an idempotency key looked up by scanning all the
        // tenant's events) for the whole run.
        let mut conn = s.crm.store().conn().await.unwrap();
        sqlx::query("ANALYZE").execute(&mut *conn).await.unwrap();
    }
    let l = load(s.crm.store(), &s.base, &s.token, duration, stop()).await;
    s.finish().await;
    l
}

async fn ingest(database: &Database, duration: Duration) {
    let name = database.name();
    let none = measure(start(database, &[]).await, duration).await;
    let two = start(database, &[("b2b_trade", true), ("value_tiers", false)]).await;
    let packs = measure(two, duration).await;
    // SQLite: the same with a transaction per event, side by side. (PostgreSQL
    // has no group commit: BENCHMARKS.md has the trial.)
    let alone = match database {
        Database::Sqlite => {
            let none = measure(start_with(database, &[], false).await, duration).await;
            let two = start_with(
                database,
                &[("b2b_trade", true), ("value_tiers", false)],
                false,
            )
            .await;
            Some((none, measure(two, duration).await))
        }
        Database::Postgres(_) => None,
    };
    println!();
    println!("event ingest over HTTP, {name}, {CONCURRENCY} clients, {CUSTOMERS} customers, {duration:?} each");
    println!(
        "{:<44} {:>10} {:>9} {:>9} {:>8} {:>12} {:>10} {:>8}",
        "", "events/s", "p50 ms", "p99 ms", "failed", "writer busy", "us/write", "ev/write"
    );
    let mut rows = vec![("no plugin", &none), ("b2b-trade + value-tiers", &packs)];
    if let Some((none_alone, two_alone)) = &alone {
        rows.push(("no plugin, no group commit", none_alone));
        rows.push(("b2b-trade + value-tiers, no group commit", two_alone));
    }
    for (label, l) in rows {
        let (busy, per_tx, events_per_tx) = l.writer();
        println!(
            "{label:<44} {:>10.0} {:>9.2} {:>9.2} {:>8} {:>11.0}% {:>10.0} {:>8.1}",
            l.per_second(),
            l.percentile_ms(0.5),
            l.percentile_ms(0.99),
            l.failed,
            busy * 100.0,
            per_tx,
            events_per_tx
        );
    }
    println!("  (writer busy: the share of the run that write transactions held the writer, from taking it to their commit; SQLite has one writer, PostgreSQL runs them side by side and may pass 100%. us/write: per transaction; ev/write: events per transaction, more than 1 where group commit (SQLite) put several in one)");
    if let Some((none_alone, two_alone)) = &alone {
        println!(
            "  group commit: {:.2}x the events/s of a transaction per event with no plugin, {:.2}x with two packs",
            none.per_second() / none_alone.per_second(),
            packs.per_second() / two_alone.per_second()
        );
    }
    let cost = 1.0 - packs.per_second() / none.per_second();
    println!(
        "targets ({name}): >= 2,000 events/s -> {:.0}, {}; p99 <= 25 ms -> {:.2} ms, {}; plugin cost <= 30% -> {:.0}%, {}",
        packs.per_second(),
        verdict(packs.per_second() >= 2000.0),
        packs.percentile_ms(0.99),
        verdict(packs.percentile_ms(0.99) <= 25.0),
        cost * 100.0,
        verdict(cost <= 0.30)
    );
}

/// Activate/roll back a rule set while the load runs: no request may fail, and
/// memory after many swaps stays near memory after a few.
async fn swaps_under_load(swaps: usize) {
    let s = start(
        &Database::Sqlite,
        &[("b2b_trade", true), ("value_tiers", false)],
    )
    .await;
    let http = Client::new();
    let rules = json!({"high_min_net_cents": 20000, "high_min_purchase_days": 2, "medium_min_net_cents": 5000,
                       "cost_per_order_cents": 500, "cost_per_touchpoint_cents": 300, "cost_per_complaint_cents": 5000});
    let r = http
        .put(format!("{}/v1/plugins/value-tiers/rules", s.base))
        .bearer_auth(&s.token)
        .json(&rules)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let load_task = {
        let (stop, base, token) = (stop.clone(), s.base.clone(), s.token.clone());
        let store = s.crm.store().clone();
        tokio::spawn(
            async move { load(&store, &base, &token, Duration::from_secs(3600), stop).await },
        )
    };
    // The load warms up first, as in the ingest runs: 1,000 swaps take a few
    // seconds on a fast day, and measured from the load's first millisecond
    // "after 10 swaps" was a server still growing into the load (its
    // connections, buffers and allocator arenas), not one that swapped less.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut swap_failures, mut rss_10, mut slowest) = (0u64, f64::NAN, Duration::ZERO);
    let mut sqlite_10 = f64::NAN;
    let started = Instant::now();
    for i in 0..swaps {
        let t = Instant::now();
        let r = if i % 2 == 0 {
            http.post(format!("{}/v1/plugins/value-tiers/activate", s.base))
                .bearer_auth(&s.token)
                .json(&json!({"version": "0.1.0", "rules_version": 1}))
                .send()
                .await
        } else {
            http.post(format!("{}/v1/plugins/value-tiers/rollback", s.base))
                .bearer_auth(&s.token)
                .json(&json!({"reason": "bench"}))
                .send()
                .await
        };
        slowest = slowest.max(t.elapsed());
        if !r.is_ok_and(|r| r.status().is_success()) {
            swap_failures += 1;
        }
        if i + 1 == 10 {
            rss_10 = rss_mib();
            sqlite_10 = sqlite_heap_mib();
        }
    }
    let swap_seconds = started.elapsed().as_secs_f64();
    let rss_end = rss_mib();
    let sqlite_end = sqlite_heap_mib();
    stop.store(true, Ordering::Relaxed);
    let l = load_task.await.unwrap();
    let growth = rss_end / rss_10 - 1.0;
    // SQLite's page caches fill as the events of the load grow the database; what a
    // swap could leak (instances, compiled code, rule sets) is the rest.
    let rest_growth = (rss_end - sqlite_end) / (rss_10 - sqlite_10) - 1.0;
    println!();
    println!("swaps under load (SQLite, {CONCURRENCY} clients posting events): {swaps} swaps (activate/rollback) in {swap_seconds:.1} s, slowest {:.0} ms",
        slowest.as_secs_f64() * 1e3);
    println!(
        "events during the swaps and the 2 s before: {} ok ({:.0}/s, p99 {:.2} ms), {} failed; swaps failed: {swap_failures}",
        l.ok,
        l.per_second(),
        l.percentile_ms(0.99),
        l.failed
    );
    println!(
        "targets: zero failed requests -> {}, {}; RSS after {swaps} swaps within 10% of after 10 -> {rss_10:.0} -> {rss_end:.0} MiB ({:+.1}%), {}",
        l.failed + swap_failures,
        verdict(l.failed + swap_failures == 0),
        growth * 100.0,
        verdict(growth <= 0.10)
    );
    println!(
        "  of which SQLite's heap (page caches): {sqlite_10:.0} -> {sqlite_end:.0} MiB; the rest: {:.0} -> {:.0} MiB ({:+.1}%), {}",
        rss_10 - sqlite_10,
        rss_end - sqlite_end,
        rest_growth * 100.0,
        verdict(rest_growth <= 0.10)
    );
    s.finish().await;
}

/// What SQLite has allocated (all connections of the process), in MiB.
fn sqlite_heap_mib() -> f64 {
    // SAFETY: a read of SQLite's global allocation counter; no connection is touched.
    unsafe { libsqlite3_sys::sqlite3_memory_used() as f64 / (1024.0 * 1024.0) }
}

/// Bulk import through the same pipeline as the API, with two packs enabled.
async fn import(generated_orders: usize) {
    let cdnow =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/cdnow/CDNOW_master.txt");
    let s = start(
        &Database::Sqlite,
        &[("b2b_trade", true), ("value_tiers", false)],
    )
    .await;
    let file = tokio::fs::File::open(&cdnow).await.unwrap();
    let t = Instant::now();
    let r = s
        .crm
        .imports()
        .import_cdnow(TENANT, file, Some(899_251_200_000), &|_| {})
        .await
        .unwrap();
    let cdnow_s = t.elapsed().as_secs_f64();
    s.finish().await;
    // Generated orders in the CDNOW format: 20 orders each for generated customers.
    let mut text = String::with_capacity(generated_orders * 32);
    for i in 0..generated_orders {
        let day = 1 + (i % 28);
        let month = 1 + (i / 20 % 12);
        text.push_str(&format!(
            "g{:07} 1997{month:02}{day:02} {} {}.{:02}\n",
            i / 20,
            1 + i % 3,
            5 + i % 90,
            i % 100
        ));
    }
    let s2 = start(
        &Database::Sqlite,
        &[("b2b_trade", true), ("value_tiers", false)],
    )
    .await;
    let t = Instant::now();
    let g = s2
        .crm
        .imports()
        .import_cdnow(TENANT, text.as_bytes(), Some(899_251_200_000), &|_| {})
        .await
        .unwrap();
    let gen_s = t.elapsed().as_secs_f64();
    s2.finish().await;
    println!();
    println!("import (SQLite, b2b-trade + value-tiers run on every order)");
    println!(
        "CDNOW in full: {} rows in {cdnow_s:.1} s = {:.0} rows/s ({} errors)",
        r.rows,
        r.rows as f64 / cdnow_s,
        r.error_count
    );
    println!(
        "generated orders: {} rows in {gen_s:.1} s = {:.0} rows/s ({} errors)",
        g.rows,
        g.rows as f64 / gen_s,
        g.error_count
    );
}

/// Resets this process's peak RSS (VmHWM) so that a phase can read its own.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_mib() -> f64 {
    status_mib("VmHWM:")
}

/// Bulk rescore of `n` generated customers (three orders each) by value-tiers and
/// clv, results written back; beside it the floor: one plain SQL statement that
/// writes the same score rows.
/// `n` customers `<prefix>0000000`.. of the bench tenant, generated in SQL (a
/// recursive counter), with realistic spreads of orders and spend: three
/// purchase days each.
async fn generate_customers(conn: &mut sqlx::AnyConnection, n: usize, prefix: &str) {
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $1 - 1) \
         INSERT INTO customers (tenant_id, id, source, created_at, updated_at, orders, purchase_days, spend_cents, \
                                first_order_at, last_order_at, last_contact_at, complaints, referrals) \
         SELECT $2, $3 || printf('%07d', i), 'web', 850000000000, 850000000000, 3, 3, 3000 + (i * 7919) % 90000, \
                860000000000 + (i % 97) * 86400000, 890000000000 - (i % 89) * 86400000, 890000000000, (i % 17 = 0), 0 FROM n",
    )
    .bind(n as i64)
    .bind(TENANT)
    .bind(prefix)
    .execute(conn)
    .await
    .unwrap();
}

async fn rescore(n: usize) {
    let s = start(&Database::Sqlite, &[("value_tiers", false), ("clv", false)]).await;
    let mut conn = s.crm.store().conn().await.unwrap();
    let t = Instant::now();
    generate_customers(&mut conn, n, "g").await;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $1 - 1), k(j) AS (VALUES (0), (1), (2)) \
         INSERT INTO events (id, tenant_id, customer_id, kind, channel, at, day, amount_cents, fields, outcome, recorded_at) \
         SELECT printf('e%07d-%d', i, j), $2, printf('g%07d', i), 'order', 'web', \
                860000000000 + (i % 97) * 86400000 + j * (i % 13 + 1) * 864000000, \
                (860000000000 + (i % 97) * 86400000 + j * (i % 13 + 1) * 864000000) / 86400000, \
                1000 + (i * 7919 + j * 104729) % 30000, '{}', '{}', 890000000000 FROM n, k",
    )
    .bind(n as i64)
    .bind(TENANT)
    .execute(&mut *conn)
    .await
    .unwrap();
    let generated = t.elapsed().as_secs_f64();
    drop(conn);

    reset_peak();
    let t = Instant::now();
    let job = s
        .crm
        .jobs()
        .start_rescore(TENANT, "bench", None)
        .await
        .unwrap();
    let done = s
        .crm
        .jobs()
        .work_on_rescore(TENANT, &job, "bench")
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let peak = peak_mib();

    // The floor: the rows the rescore wrote (every score, history row and
    // membership, byte for byte), written again by plain SQL under another
    // tenant in one transaction: what storing them costs with nothing computed.
    let mut conn = s.crm.store().conn().await.unwrap();
    let t = Instant::now();
    let mut written = 0;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .unwrap();
    for sql in [
        "INSERT INTO scores (tenant_id, customer_id, plugin, plugin_version, value, band, reasons, updated_at) \
         SELECT 'floor', customer_id, plugin, plugin_version, value, band, reasons, updated_at FROM scores WHERE tenant_id = $1",
        "INSERT INTO score_history (tenant_id, customer_id, plugin, plugin_version, value, band, reasons, event_id, at) \
         SELECT 'floor', customer_id, plugin, plugin_version, value, band, reasons, event_id, at FROM score_history WHERE tenant_id = $1",
        "INSERT INTO memberships (tenant_id, customer_id, plugin, segment, reason, since) \
         SELECT 'floor', customer_id, plugin, segment, reason, since FROM memberships WHERE tenant_id = $1",
    ] {
        written += sqlx::query(sql)
            .bind(TENANT)
            .execute(&mut *conn)
            .await
            .unwrap()
            .rows_affected();
    }
    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
    let floor = t.elapsed().as_secs_f64();
    let rate = done as f64 / secs;
    println!();
    println!("bulk rescore (SQLite): {n} generated customers, 3 orders each (generated in {generated:.1} s), value-tiers + clv");
    println!(
        "rescore: {done} customers in {secs:.1} s = {rate:.0} customers/s, peak RSS {peak:.0} MiB; plain SQL writing the same {written} rows: {floor:.2} s ({:.0} customers/s)",
        done as f64 / floor
    );
    println!(
        "targets: >= 50,000 customers/s -> {rate:.0}, {}; within 3x of the SQL floor -> {:.1}x, {}; peak memory < 500 MB -> {peak:.0} MiB, {}",
        verdict(rate >= 50_000.0),
        secs / floor,
        verdict(secs <= 3.0 * floor),
        verdict(peak < 500.0)
    );
    drop(conn);
    s.finish().await;
}

/// A burst of wakes due at once (a million at midnight) worked by the host's
/// wake worker while an ingest load runs: the wakes' rate, plugins included,
/// and the load's p99 against the same load on the same server idle.
async fn wakes(n: usize, duration: Duration) {
    let s = start(&Database::Sqlite, &[("value_tiers", false), ("clv", false)]).await;
    let mut conn = s.crm.store().conn().await.unwrap();
    let t = Instant::now();
    // Customers with three purchase days each, as the rescore phase makes them,
    // and each a pending wake of clv, due far ahead for now.
    generate_customers(&mut conn, n, "w").await;
    sqlx::query(
        "INSERT INTO wakes (tenant_id, customer_id, plugin, due_at, set_at) \
         SELECT tenant_id, id, 'clv', 4102444800000, 890000000000 FROM customers WHERE tenant_id = $1 AND id LIKE 'w%'",
    )
    .bind(TENANT)
    .execute(&mut *conn)
    .await
    .unwrap();
    let generated = t.elapsed().as_secs_f64();
    drop(conn);
    let stop = || Arc::new(AtomicBool::new(false));
    // Warm, then the load on the idle server.
    load(
        s.crm.store(),
        &s.base,
        &s.token,
        Duration::from_secs(2),
        stop(),
    )
    .await;
    let idle = load(s.crm.store(), &s.base, &s.token, duration, stop()).await;

    // Midnight: every wake due at once. First the worker alone...
    let due_now = |store: Store| async move {
        let mut conn = store.conn().await.unwrap();
        sqlx::query(
            "INSERT INTO wakes (tenant_id, customer_id, plugin, due_at, set_at) \
             SELECT tenant_id, id, 'clv', $1, $1 FROM customers WHERE tenant_id = $2 AND id LIKE 'w%' \
             ON CONFLICT (tenant_id, customer_id, plugin) DO UPDATE SET due_at = excluded.due_at",
        )
        .bind(stagecraft::domain::now_ms() - 1_000)
        .bind(TENANT)
        .execute(&mut *conn)
        .await
        .unwrap();
    };
    due_now(s.crm.store().clone()).await;
    let t = Instant::now();
    let alone = s.crm.wakes().fire_due("bench").await.unwrap();
    let alone_secs = t.elapsed().as_secs_f64();
    // ...then every customer's wake due at once again, while the load runs.
    due_now(s.crm.store().clone()).await;
    let t = Instant::now();
    let worker = {
        let crm = s.crm.clone();
        tokio::spawn(async move { crm.wakes().fire_due("bench").await.unwrap() })
    };
    let done = Arc::new(AtomicBool::new(false));
    let busy = {
        let (store, base, token, done) = (
            s.crm.store().clone(),
            s.base.clone(),
            s.token.clone(),
            done.clone(),
        );
        // As long as the burst lasts (bounded by ten loads' time).
        tokio::spawn(async move { load(&store, &base, &token, duration * 10, done).await })
    };
    let fired = worker.await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let during = busy.await.unwrap();
    let rate = fired as f64 / secs;
    println!();
    println!("a burst of wakes (SQLite): {n} customers (generated in {generated:.1} s), each a clv wake due at once; value-tiers + clv score and segment each; an ingest load of {CONCURRENCY} clients beside it");
    println!(
        "wakes alone: {alone} fired in {alone_secs:.1} s = {:.0} customers/s",
        alone as f64 / alone_secs
    );
    println!(
        "wakes beside the load: {fired} fired in {secs:.1} s = {rate:.0} customers/s; ingest p99 {:.2} ms during the burst ({:.0} events/s) against {:.2} ms idle ({:.0} events/s): {:.2}x",
        during.percentile_ms(0.99),
        during.per_second(),
        idle.percentile_ms(0.99),
        idle.per_second(),
        during.percentile_ms(0.99) / idle.percentile_ms(0.99)
    );
    println!(
        "targets: >= 20,000 customers/s -> {rate:.0}, {}; ingest p99 within 2x of idle -> {:.2}x, {}",
        verdict(rate >= 20_000.0),
        during.percentile_ms(0.99) / idle.percentile_ms(0.99),
        verdict(during.percentile_ms(0.99) <= 2.0 * idle.percentile_ms(0.99))
    );
    s.finish().await;
}

fn main() {
    // `cargo bench` passes `--bench`; `--quick` shortens every phase.
    let quick = std::env::args().any(|a| a == "--quick");
    // The server's errors, so that a failed request in the table has its cause.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::ERROR)
        .with_writer(std::io::stderr)
        .init();
    let duration = Duration::from_secs(if quick { 8 } else { 30 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // `BENCH_ONLY=rescore,import` runs just those phases.
    let only = std::env::var("BENCH_ONLY").ok();
    let want = |phase: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|p| p == phase))
    };
    runtime.block_on(async {
        if want("ingest") {
            ingest(&Database::Sqlite, duration).await;
            if let Ok(pg) = std::env::var("STAGECRAFT_TEST_POSTGRES_URL") {
                ingest(&Database::Postgres(pg.clone()), duration).await;
                drop_databases(&pg).await;
            }
        }
        if want("swaps") {
            swaps_under_load(if quick { 100 } else { 1000 }).await;
        }
        if want("rescore") {
            rescore(if quick { 20_000 } else { 1_000_000 }).await;
        }
        if want("import") {
            import(if quick { 20_000 } else { 1_000_000 }).await;
        }
        if want("wakes") {
            wakes(if quick { 50_000 } else { 1_000_000 }, duration).await;
        }
        if want("webhooks") {
            webhooks(duration, if quick { 10_000 } else { 100_000 }).await;
        }
    });
}

/// A local receiver that answers 200 to every POST and counts them.
async fn counting_receiver() -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, count)
}

/// `s`'s application allowed to deliver to the local receiver, with a
/// subscription of `TENANT` to every change there.
async fn subscribe_all(s: &Server, url: &str) -> Crm {
    use stagecraft::services::webhooks::{egress, DeliveryPolicy};
    let crm = s.crm.clone().with_webhooks(
        egress::Egress {
            allow: egress::parse_ranges("127.0.0.0/8").unwrap(),
            allow_http: true,
            ..Default::default()
        },
        DeliveryPolicy::default(),
    );
    crm.webhooks()
        .create(
            TENANT,
            "bench",
            serde_json::from_value(json!({"url": url})).unwrap(),
        )
        .await
        .unwrap();
    crm
}

/// Issue 22: ingest with one subscription to every change type (its
/// dispatcher delivering to a local receiver as the load runs) against the
/// same without, alternated; then the dispatcher alone on `n` queued changes.
async fn webhooks(duration: Duration, n: usize) {
    let packs = [("b2b_trade", true), ("value_tiers", false)];
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut delivered = 0;
    for _ in 0..2 {
        without.push(measure(start(&Database::Sqlite, &packs).await, duration).await);
        let s = start(&Database::Sqlite, &packs).await;
        let (url, count) = counting_receiver().await;
        let crm = subscribe_all(&s, &url).await;
        let dispatcher = crm.webhooks().run("bench".into());
        with.push(measure(s, duration).await);
        dispatcher.abort();
        delivered += count.load(Ordering::Relaxed);
    }
    let mean =
        |ls: &[Load], f: &dyn Fn(&Load) -> f64| ls.iter().map(f).sum::<f64>() / ls.len() as f64;
    let (w_rate, w_p99) = (
        mean(&with, &|l| l.per_second()),
        mean(&with, &|l| l.percentile_ms(0.99)),
    );
    let (n_rate, n_p99) = (
        mean(&without, &|l| l.per_second()),
        mean(&without, &|l| l.percentile_ms(0.99)),
    );
    println!();
    println!("ingest with a webhook subscription to every change type, SQLite, b2b-trade + value-tiers, {duration:?} each, alternated twice");
    println!("{:<36} {:>10} {:>9}", "", "events/s", "p99 ms");
    println!("{:<36} {:>10.0} {:>9.2}", "no subscription", n_rate, n_p99);
    println!(
        "{:<36} {:>10.0} {:>9.2}",
        "one subscription, all types", w_rate, w_p99
    );
    println!(
        "  runs: without {:?}, with {:?} events/s; {delivered} deliveries made during the loads",
        without
            .iter()
            .map(|l| l.per_second().round())
            .collect::<Vec<_>>(),
        with.iter()
            .map(|l| l.per_second().round())
            .collect::<Vec<_>>()
    );
    let cost = 1.0 - w_rate / n_rate;
    println!(
        "target: within 15% of ingest without subscriptions -> {:.1}% slower, {}",
        cost * 100.0,
        verdict(cost <= 0.15)
    );

    // The dispatcher alone: `n` changes queued (an import of `n` customers),
    // then delivered.
    let s = start(&Database::Sqlite, &[]).await;
    let (url, count) = counting_receiver().await;
    let crm = subscribe_all(&s, &url).await;
    let mut csv = String::from("id\n");
    for i in 0..n {
        csv.push_str(&format!("w{i:07}\n"));
    }
    crm.imports()
        .import_customers(TENANT, csv.as_bytes(), &|_| {})
        .await
        .unwrap();
    let started = Instant::now();
    let dispatcher = crm.webhooks().run("bench".into());
    while (count.load(Ordering::Relaxed) as usize) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    dispatcher.abort();
    let rate = n as f64 / seconds;
    println!();
    println!("webhook dispatcher alone, SQLite: {n} changes to one local receiver in {seconds:.2} s = {rate:.0} deliveries/s (chunks of 256 sent at once, each signed)");
    println!(
        "target: >= 2,000 deliveries/s -> {rate:.0}, {}",
        verdict(rate >= 2000.0)
    );
    s.finish().await;
}
