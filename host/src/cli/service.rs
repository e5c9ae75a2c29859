//! The commands that work on a database: `serve`, `demo`, `import`, `token`,
//! `plugin install`.

use crate::domain::Role;
use crate::packs::Packs;
use crate::runtime::{Limits, Runtime};
use crate::services::import::ImportReport;
use crate::services::Crm;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Settings for a database-backed command, from flags, environment and an
/// optional TOML config file, in that order of precedence.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DbArgs {
    /// Database URL: `sqlite:path/to/file.db` or `postgres://user@host/db`.
    /// Defaults to `sqlite:<data-dir>/stagecraft.db`.
    #[arg(long, env = "STAGECRAFT_DATABASE_URL")]
    pub database_url: Option<String>,
    /// TOML file with `listen`, `database_url` and `data_dir`.
    #[arg(long, env = "STAGECRAFT_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// How many days the change feed keeps changes (default 30).
    pub change_retention_days: Option<u32>,
}

/// The settings after flags, environment, the config file and defaults are
/// merged: the one place a command's configuration is read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub database_url: String,
    pub data_dir: PathBuf,
    /// Failures in a row after which a plugin version is suspended (`serve --breaker-failures`).
    pub breaker_failures: u32,
    /// How long a bulk job's chunk claim lasts without its heartbeat before
    /// another host takes the chunk over (`STAGECRAFT_CHUNK_LEASE_MS`, default 60 s).
    pub chunk_lease: std::time::Duration,
    /// How often a host re-reads what every tenant runs besides PostgreSQL's
    /// notifications (`STAGECRAFT_SYNC_INTERVAL_MS`, default 250 ms; the tests
    /// stretch it to prove the notifications alone suffice).
    pub sync_interval: std::time::Duration,
    /// How long a claim on due wakes lasts without its heartbeat: how long the
    /// wakes a killed host held wait for another (`STAGECRAFT_WAKE_LEASE_MS`,
    /// default 30 s).
    pub wake_lease: std::time::Duration,
    /// How long the change feed keeps changes (`change_retention_days` in the
    /// config file or `STAGECRAFT_CHANGE_RETENTION_DAYS`, default 30 days).
    pub change_retention: std::time::Duration,
    /// Where webhooks may go (`STAGECRAFT_WEBHOOK_ALLOW`: address ranges allowed
    /// although internal; `STAGECRAFT_WEBHOOK_ALLOW_HTTP=1`).
    pub webhook_egress: crate::services::webhooks::egress::Egress,
    /// How deliveries are tried (`STAGECRAFT_WEBHOOK_TIMEOUT_MS`,
    /// `STAGECRAFT_WEBHOOK_RETRY_MS` for the first retry's delay,
    /// `STAGECRAFT_WEBHOOK_LEASE_MS`).
    pub webhook_policy: crate::services::webhooks::DeliveryPolicy,
}

/// A number of days, 1 to 3650.
fn days(v: &str) -> Result<std::time::Duration, String> {
    match v.trim().parse::<u64>() {
        Ok(d) if (1..=3650).contains(&d) => Ok(std::time::Duration::from_secs(d * 24 * 3600)),
        _ => Err(format!("must be a number of days from 1 to 3650: {v:?}")),
    }
}

/// Milliseconds from the environment variable `name`, if set; an unreadable
/// value is an error that names the variable.
fn env_ms(name: &str) -> anyhow::Result<Option<std::time::Duration>> {
    match std::env::var(name) {
        Ok(v) => {
            let ms: u64 = v
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("{name} must be milliseconds: {v:?}"))?;
            Ok(Some(std::time::Duration::from_millis(ms)))
        }
        Err(_) => Ok(None),
    }
}

impl Settings {
    /// Settings for a data directory and database URL, every other value at
    /// its default or from the environment.
    pub fn for_database(
        listen: String,
        database_url: String,
        data_dir: PathBuf,
    ) -> anyhow::Result<Settings> {
        Ok(Settings {
            listen,
            database_url,
            data_dir,
            breaker_failures: crate::packs::DEFAULT_BREAKER_THRESHOLD,
            chunk_lease: env_ms("STAGECRAFT_CHUNK_LEASE_MS")?
                .unwrap_or(crate::services::jobs::CHUNK_LEASE)
                .max(std::time::Duration::from_millis(100)),
            sync_interval: env_ms("STAGECRAFT_SYNC_INTERVAL_MS")?
                .unwrap_or(crate::services::SYNC_INTERVAL),
            wake_lease: env_ms("STAGECRAFT_WAKE_LEASE_MS")?
                .unwrap_or(crate::services::wakes::LEASE)
                .max(std::time::Duration::from_millis(100)),
            webhook_egress: crate::services::webhooks::egress::Egress::from_env()
                .map_err(|e| anyhow::anyhow!(e))?,
            webhook_policy: {
                let mut p = crate::services::webhooks::DeliveryPolicy::default();
                if let Some(t) = env_ms("STAGECRAFT_WEBHOOK_TIMEOUT_MS")? {
                    p.timeout = t.max(std::time::Duration::from_millis(100));
                }
                if let Some(t) = env_ms("STAGECRAFT_WEBHOOK_RETRY_MS")? {
                    p.first_delay = t;
                }
                if let Some(t) = env_ms("STAGECRAFT_WEBHOOK_LEASE_MS")? {
                    p.lease = t.max(std::time::Duration::from_millis(100));
                }
                p
            },
            change_retention: match std::env::var("STAGECRAFT_CHANGE_RETENTION_DAYS") {
                Ok(v) => {
                    days(&v).map_err(|e| anyhow::anyhow!("STAGECRAFT_CHANGE_RETENTION_DAYS {e}"))?
                }
                Err(_) => crate::services::changes::RETENTION,
            },
        })
    }
}

impl Settings {
    pub fn resolve(
        db: &DbArgs,
        listen: Option<String>,
        data_dir: &Path,
        data_dir_given: bool,
    ) -> anyhow::Result<Settings> {
        let file: ConfigFile = match &db.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            }
            None => ConfigFile::default(),
        };
        let data_dir = if data_dir_given {
            data_dir.to_path_buf()
        } else {
            file.data_dir.unwrap_or_else(|| data_dir.to_path_buf())
        };
        let database_url = db
            .database_url
            .clone()
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite:{}", data_dir.join("stagecraft.db").display()));
        let mut settings = Settings::for_database(
            listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:8080".into()),
            database_url,
            data_dir,
        )?;
        if let (Some(d), Err(_)) = (
            file.change_retention_days,
            std::env::var("STAGECRAFT_CHANGE_RETENTION_DAYS"),
        ) {
            settings.change_retention =
                days(&d.to_string()).map_err(|e| anyhow::anyhow!("change_retention_days {e}"))?;
        }
        Ok(settings)
    }
}

/// Opens the store and loads every tenant's enabled plugins.
pub async fn open(settings: &Settings) -> anyhow::Result<Crm> {
    std::fs::create_dir_all(&settings.data_dir)?;
    let runtime = Runtime::new(Limits::default(), Some(settings.data_dir.join("cache")))?;
    let mut packs = Packs::new(runtime);
    packs.breaker_threshold = settings.breaker_failures.max(1);
    let crm = Crm::connect(&settings.database_url, packs)
        .await?
        .with_chunk_lease(settings.chunk_lease)
        .with_wake_lease(settings.wake_lease)
        .with_change_retention(settings.change_retention)
        .with_webhooks(
            settings.webhook_egress.clone(),
            settings.webhook_policy.clone(),
        )
        .with_sync_interval(settings.sync_interval);
    crm.load_all().await?;
    Ok(crm)
}

/// Serves until Ctrl-C.
pub async fn serve(crm: Crm, listen: &str, banner: Option<String>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(address = %addr, "stagecraft listening on http://{addr}");
    if let Some(b) = banner {
        // Whoever started us may have stopped reading: a closed stdout must not stop the server.
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{b}").and_then(|_| std::io::stdout().flush());
    }
    // Follow changes made by other hosts, and share bulk work, due wakes and
    // schedules with them.
    let watcher = crm.watch();
    let helper = crm.jobs().help_with_jobs();
    let waker = crm.wakes().run();
    let scheduler = crm.schedules().run();
    let pruner = crm.changes().run();
    let dispatcher = crm.webhooks().run(crate::services::jobs::host_id());
    let _stop = AbortOnDrop(vec![watcher, helper, waker, scheduler, pruner, dispatcher]);
    crate::http::serve(listener, crm, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

/// Stores a plugin component for a tenant and, with `enable`, enables it.
pub async fn install_plugin(
    crm: &Crm,
    tenant: &str,
    file: &Path,
    rules: Option<String>,
    enable: bool,
    owns_lifecycle: bool,
) -> anyhow::Result<Value> {
    let wasm =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let rules: Option<Value> = match &rules {
        Some(r) => Some(
            serde_json::from_str(r)
                .map_err(|e| anyhow::anyhow!("the rule set is not JSON: {e}"))?,
        ),
        None => None,
    };
    let done = crm
        .registry()
        .install(tenant, "cli", wasm, rules.as_ref(), enable, owns_lifecycle)
        .await?;
    let u = &done.uploaded;
    Ok(json!({
        "name": u.name, "version": u.version, "digest": u.digest,
        "stored": u.stored, "enabled": done.enabled, "rules_version": done.rules_version,
    }))
}

/// Which importer a file goes to.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ImportKind {
    Customers,
    Events,
    Cdnow,
}

/// Imports a file with a progress bar (drawn only on a terminal).
pub async fn import_file(
    crm: &Crm,
    tenant: &str,
    kind: ImportKind,
    file: &Path,
    now: Option<i64>,
) -> anyhow::Result<ImportReport> {
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let len = f.metadata().await?.len();
    let bar = indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("progress template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("importing {}", file.display()));
    let reader = bar.wrap_async_read(f);
    let quiet = |_| {};
    let report = match kind {
        ImportKind::Customers => {
            crm.imports()
                .import_customers(tenant, reader, &quiet)
                .await?
        }
        ImportKind::Events => {
            crm.imports()
                .import_events(tenant, reader, now, &quiet)
                .await?
        }
        ImportKind::Cdnow => {
            crm.imports()
                .import_cdnow(tenant, reader, now, &quiet)
                .await?
        }
    };
    bar.finish_and_clear();
    Ok(report)
}

/// `stagecraft demo`: a fresh SQLite database with a demo tenant, the given
/// packs enabled, the CDNOW sample imported; prints the URL and an admin token
/// and serves.
pub async fn demo(
    data_dir: &Path,
    listen: &str,
    packs: &[PathBuf],
    cdnow: Option<&Path>,
    cdnow_lines: Option<usize>,
) -> anyhow::Result<()> {
    let dir = data_dir.join("demo");
    for f in ["stagecraft.db", "stagecraft.db-wal", "stagecraft.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let settings = Settings::for_database(
        listen.to_string(),
        format!("sqlite:{}", dir.join("stagecraft.db").display()),
        dir,
    )?;
    let crm = open(&settings).await?;
    let tenant = "demo";
    let token = crm
        .tokens()
        .create(tenant, "cli", Role::Admin, crate::demo::DEMO_AGENT)
        .await?;
    let mut lifecycle_taken = false;
    for p in packs {
        let out = install_plugin(&crm, tenant, p, None, true, !lifecycle_taken).await?;
        let owns = crm
            .tenant_packs(tenant)
            .lifecycle_owner()
            .is_some_and(|o| o.name() == out["name"]);
        lifecycle_taken |= owns;
        eprintln!(
            "enabled {}@{}",
            out["name"].as_str().unwrap_or("?"),
            out["version"].as_str().unwrap_or("?")
        );
    }
    if let Some(file) = cdnow {
        let sample = settings.data_dir.join("cdnow-sample.txt");
        let file = match cdnow_lines {
            Some(n) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
                let head: String = text.lines().take(n + 1).map(|l| format!("{l}\n")).collect();
                std::fs::write(&sample, head)?;
                sample.as_path()
            }
            None => file,
        };
        // Each order is evaluated at its own time, so what it causes (follow-ups,
        // wakes) is due in 1997-98 as it would have been; the wakes then fire
        // at once and bring every customer to today.
        let report = import_file(&crm, tenant, ImportKind::Cdnow, file, None).await?;
        eprintln!(
            "imported {} CDNOW orders ({} rows, {} errors)",
            report.imported, report.rows, report.error_count
        );
    }
    let n = crate::demo::load_stories(&crm, tenant).await?;
    eprintln!("recorded {n} events of the demo stories (every stage and segment of the packs)");
    let listener_addr = listen.to_string();
    let banner = format!(
        "\nStagecraft demo is ready.\n  URL:   http://{listener_addr}\n  token: {}\n\nOpen the URL in a browser and sign in with the token, or try:\n  curl -H 'Authorization: Bearer {}' http://{listener_addr}/v1/analytics/segments\n",
        token.token, token.token
    );
    serve(crm, listen, Some(banner)).await
}

/// 1998-07-01T00:00:00Z, the day after the CDNOW data ends: the `now` to
/// score CDNOW as of its own end (`?now=` of an import, a rescore, a dry-run).
pub const DEMO_NOW: i64 = 899_251_200_000;

/// Aborts background tasks when the server stops.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Runs a bulk rescore of `tenant` here, with a progress bar; returns the job.
pub async fn rescore(crm: &Crm, tenant: &str) -> anyhow::Result<Value> {
    let job = crm.jobs().start_rescore(tenant, "cli", None).await?;
    let total = { crm.jobs().job(tenant, &job).await?.map_or(0, |j| j.total) };
    let bar = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "rescoring [{bar:40}] {pos}/{len} customers {per_sec} eta {eta}",
        )
        .expect("progress template")
        .progress_chars("=> "),
    );
    let work = {
        let (crm, tenant, job) = (crm.clone(), tenant.to_string(), job.clone());
        tokio::spawn(async move {
            crm.jobs()
                .work_on_rescore(&tenant, &job, &crate::services::jobs::host_id())
                .await
        })
    };
    // Progress comes from the job row: other hosts may be doing part of the work.
    loop {
        let j = { crm.jobs().job(tenant, &job).await? };
        if let Some(j) = &j {
            bar.set_position(j.done as u64);
            if j.status != "running" {
                break;
            }
        }
        if work.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if work.is_finished() && j.as_ref().is_some_and(|j| j.done >= j.total) {
            break;
        }
    }
    work.await??;
    bar.finish_and_clear();
    Ok(json!(crm.jobs().job(tenant, &job).await?))
}
