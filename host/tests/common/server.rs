//! A real Stagecraft server on a loopback socket, over a fresh SQLite file or a
//! fresh PostgreSQL database, for the API tests.
//!
//! PostgreSQL tests read `STAGECRAFT_TEST_POSTGRES_URL` (a server URL whose user
//! may create databases; `.ci/run` sets it). Unset: those tests say so and skip.
//! Set but unreachable: they fail.

use super::{test_limits, wasm_path};
use serde_json::Value;
use stagecraft::cli::service;
use stagecraft::domain::time::Clock;
use stagecraft::domain::Role;
use stagecraft::packs::Packs;
use stagecraft::runtime::Runtime;
use stagecraft::store::Store;
use stagecraft::Crm;
use std::path::PathBuf;

pub const PG_ENV: &str = "STAGECRAFT_TEST_POSTGRES_URL";

#[derive(Debug, Clone)]
pub enum Db {
    Sqlite,
    Postgres(String),
}

impl Db {
    /// The PostgreSQL server to test against, if configured.
    pub fn postgres() -> Option<Db> {
        match std::env::var(PG_ENV) {
            Ok(url) if !url.is_empty() => Some(Db::Postgres(url)),
            _ => {
                eprintln!("SKIPPED: {PG_ENV} is not set, so this PostgreSQL test did not run");
                None
            }
        }
    }
}

pub struct TestServer {
    pub base: String,
    pub token: String,
    pub tenant: String,
    pub crm: Crm,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
    url: String,
    pg: Option<(String, String)>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A plugin to enable: the wasm file stem and an optional rule set.
pub struct Pack<'a> {
    pub stem: &'a str,
    pub rules: Option<&'a str>,
    pub owns_lifecycle: bool,
}

pub fn pack(stem: &str) -> Pack<'_> {
    Pack {
        stem,
        rules: None,
        owns_lifecycle: false,
    }
}

async fn fresh_database(db: &Db, dir: &std::path::Path) -> (String, Option<(String, String)>) {
    match db {
        Db::Sqlite => (format!("sqlite:{}", dir.join("test.db").display()), None),
        Db::Postgres(server) => {
            sqlx::any::install_default_drivers();
            let name = format!("stagecraft_test_{}", uuid::Uuid::new_v4().simple());
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(server)
                .await
                .unwrap_or_else(|e| {
                    panic!("{PG_ENV} is set but PostgreSQL at {server} is unreachable: {e}")
                });
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            let base = server.rsplit_once('/').map(|(b, _)| b).unwrap_or(server);
            (format!("{base}/{name}"), Some((server.clone(), name)))
        }
    }
}

impl TestServer {
    pub async fn start(db: Db, packs: &[Pack<'_>]) -> TestServer {
        TestServer::start_with_clock(db, packs, Clock::system()).await
    }

    /// A server on `clock`, which the test moves (`crm.clock().advance(...)`);
    /// its wake and schedule workers run as a real server's do.
    pub async fn start_with_clock(db: Db, packs: &[Pack<'_>], clock: Clock) -> TestServer {
        TestServer::start_inner(db, packs, clock, true).await
    }

    /// A server that fires no wakes and runs no schedules: the processes a
    /// test starts beside it do.
    pub async fn start_idle(db: Db, packs: &[Pack<'_>]) -> TestServer {
        TestServer::start_inner(db, packs, Clock::system(), false).await
    }

    /// A server whose `Crm` is set up by `configure` before it serves (and
    /// whose workers run).
    pub async fn start_configured(
        db: Db,
        packs: &[Pack<'_>],
        configure: impl FnOnce(Crm) -> Crm,
    ) -> TestServer {
        TestServer::start_inner_with(db, packs, Clock::system(), true, configure).await
    }

    async fn start_inner(db: Db, packs: &[Pack<'_>], clock: Clock, waker: bool) -> TestServer {
        TestServer::start_inner_with(db, packs, clock, waker, |c| c).await
    }

    async fn start_inner_with(
        db: Db,
        packs: &[Pack<'_>],
        clock: Clock,
        waker: bool,
        configure: impl FnOnce(Crm) -> Crm,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let (url, pg) = fresh_database(&db, dir.path()).await;
        let store = Store::connect(&url).await.unwrap();
        let db_url = url.clone();
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache");
        let runtime = Runtime::new(test_limits(), Some(cache)).unwrap();
        let crm = configure(Crm::with_clock(store, Packs::new(runtime), clock));
        let tenant = "acme".to_string();
        let token = crm
            .tokens()
            .create(&tenant, "test", Role::Admin, "test")
            .await
            .unwrap()
            .token;
        for p in packs {
            let rules = p.rules.map(str::to_string);
            service::install_plugin(
                &crm,
                &tenant,
                &wasm_path(p.stem),
                rules,
                true,
                p.owns_lifecycle,
            )
            .await
            .unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let serving = crm.clone();
        let task = tokio::spawn(async move {
            let workers = waker.then(|| [serving.wakes().run(), serving.schedules().run()]);
            stagecraft::http::serve(listener, serving, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
            for w in workers.into_iter().flatten() {
                w.abort();
            }
        });
        TestServer {
            base,
            token,
            tenant,
            crm,
            client: reqwest::Client::new(),
            _dir: dir,
            url: db_url,
            pg,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Waits (at most two minutes) until no wake is due: the server's worker
    /// fired every one whose time has come.
    pub async fn wait_for_due_wakes(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let due: i64 = {
                let mut conn = self.crm.store().conn().await.unwrap();
                sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM wakes WHERE due_at <= $1")
                    .bind(self.crm.clock().now())
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap()
            };
            if due == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{due} wakes still due"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The database the server uses (for other processes to share it).
    pub fn database_url(&self) -> &str {
        &self.url
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the admin token.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        send(self.req(reqwest::Method::POST, path).json(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        send(self.req(reqwest::Method::PUT, path).json(&body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        send(self.req(reqwest::Method::PATCH, path).json(&body)).await
    }

    /// Waits (up to two minutes) for a job to be done; panics if it failed.
    pub async fn wait_for_job(&self, job: &str) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let (status, j) = self.get(&format!("/v1/jobs/{job}")).await;
            assert_eq!(status, 200, "{j}");
            match j["status"].as_str() {
                Some("done" | "done_with_failures") => return j,
                Some("failed") => panic!("job failed: {j}"),
                _ => {}
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job did not finish: {j}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A token of another tenant's admin (`globex`): what tenant-isolation tests
    /// ask with.
    pub async fn other_tenant_admin(&self) -> String {
        self.crm
            .tokens()
            .create("globex", "test", Role::Admin, "other")
            .await
            .unwrap()
            .token
    }

    /// The server's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A token of another role for the same tenant.
    pub async fn token_for(&self, role: Role) -> String {
        self.crm
            .tokens()
            .create(&self.tenant, "test", role, "test")
            .await
            .unwrap()
            .token
    }

    /// Stops the server and drops its PostgreSQL database.
    pub async fn finish(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.crm.store().close().await;
        if let Some((server, name)) = self.pg.take() {
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&server)
                .await
                .unwrap();
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

/// Sends a request; returns the status and the JSON body (`Null` if none).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("request reaches the server");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    (status, body)
}

/// A child process killed when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `base` answers /healthz (at most 30 s).
pub async fn wait_healthy(base: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{base} did not become healthy"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `stagecraft serve` process on `url`, listening on `port`, with extra environment.
pub fn spawn_serve(
    data_dir: &std::path::Path,
    url: &str,
    port: u16,
    env: &[(&str, &str)],
) -> KillOnDrop {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    c.arg("--data-dir")
        .arg(data_dir)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            url,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    KillOnDrop(c.spawn().unwrap())
}
