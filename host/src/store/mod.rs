//! The customer store: SQLite (embedded, WAL) or PostgreSQL, through one code path.
//!
//! Queries are written once in the SQL both databases accept (`$1` parameters,
//! `ON CONFLICT`, `RETURNING`, `CAST(... AS BIGINT)`) and run through sqlx's `Any`
//! driver; only the migrations differ (`migrations/sqlite`, `migrations/postgres`),
//! and the bulk statements of [`bulk`], which spell lists and placeholders per
//! database for speed.
//!
//! Writes go through [`Tx`]. On PostgreSQL a writer locks the customer's row
//! (`SELECT ... FOR UPDATE`), so two hosts writing the same customer serialise.
//! SQLite has one writer at a time anyway; [`Store::begin`] takes an in-process
//! lock first and then `BEGIN IMMEDIATE`, so a transaction never fails half-way
//! to upgrade its read lock, whichever process holds the file. Every write
//! transaction runs on the same connection: a commit by one connection empties
//! the page cache of the others, and a writer that re-reads its pages from the
//! file each time was a large part of an event's cost.
//!
//! This module knows SQL and nothing of HTTP or plugins.

mod analytics;
mod auth;
mod batch;
mod bulk;
mod customers;
mod events;
mod jobs;
mod plugins;

pub use analytics::*;
pub use auth::*;
pub use batch::Batch;
pub use bulk::*;
pub use customers::*;
pub use events::*;
pub use jobs::*;
pub use plugins::*;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Executor};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database URL {0:?} is not sqlite:... or postgres://...")]
    BadUrl(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            other => StoreError::Database(other),
        }
    }
}

impl StoreError {
    /// Whether this is a unique-constraint violation (a duplicate key).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Database(d)) if d.is_unique_violation())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A connection pool with the schema migrated.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// SQLite only: the one connection write transactions run on.
    writer: Option<AnyPool>,
    backend: Backend,
    url: String,
    /// SQLite only: one writer at a time, taken before `BEGIN`.
    write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
    writes: Arc<WriteStats>,
}

/// How long committed write transactions took, from taking the writer to their
/// commit. SQLite has one writer, so their sum over a stretch of time says how busy
/// it was: the ingest bench prints it, because that is what bounds the event rate.
#[derive(Debug, Default)]
pub struct WriteStats {
    committed: std::sync::atomic::AtomicU64,
    held_ns: std::sync::atomic::AtomicU64,
}

impl WriteStats {
    /// Transactions committed so far, and the time they held the writer in all.
    pub fn totals(&self) -> (u64, std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.committed.load(Relaxed),
            std::time::Duration::from_nanos(self.held_ns.load(Relaxed)),
        )
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Store {
    /// Connects to `url` (`sqlite:path/to.db` or `postgres://...`), creating a
    /// SQLite file if needed, and applies the migrations.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let url = if rest.contains('?') || rest.contains(":memory:") {
                url.to_string()
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        let options =
            AnyConnectOptions::from_str(&url).map_err(|_| StoreError::BadUrl(url.clone()))?;
        let pool_options = || {
            AnyPoolOptions::new()
                .acquire_timeout(Duration::from_secs(5))
                // A SQLite file does not drop a connection; the check before each
                // use would be one more round trip to sqlx's worker thread.
                .test_before_acquire(backend == Backend::Postgres)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            // WAL: readers never wait for the writer. NORMAL sync is durable
                            // across a process crash (only power loss can cost the last commits).
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; \
                                 PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;",
                            )
                            .await?;
                        }
                        Ok(())
                    })
                })
        };
        let pool = pool_options()
            .max_connections(match backend {
                Backend::Sqlite => 8,
                Backend::Postgres => 16,
            })
            .connect_with(options.clone())
            .await?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&pool).await?,
        }
        // An in-memory database exists once per connection: it cannot have a writer apart.
        let writer = if backend == Backend::Sqlite && !url.contains(":memory:") {
            Some(
                pool_options()
                    .max_connections(1)
                    .connect_with(options)
                    .await?,
            )
        } else {
            None
        };
        Ok(Store {
            pool,
            writer,
            backend,
            url: url.clone(),
            write_lock: (backend == Backend::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(()))),
            writes: Arc::default(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL the store was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Counts of the write transactions committed through this store (and its clones).
    pub fn write_stats(&self) -> &WriteStats {
        &self.writes
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<Tx> {
        let guard = match &self.write_lock {
            Some(l) => Some(l.clone().lock_owned().await),
            None => None,
        };
        // IMMEDIATE takes SQLite's write lock up front: another process writing the
        // same file (the CLI beside a server) then waits (busy_timeout) instead of
        // failing later when a read-then-write transaction cannot upgrade.
        let tx = match self.backend {
            Backend::Sqlite => {
                let pool = self.writer.as_ref().unwrap_or(&self.pool);
                pool.begin_with("BEGIN IMMEDIATE").await?
            }
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(Tx {
            tx,
            backend: self.backend,
            _guard: guard,
            began: std::time::Instant::now(),
            stats: self.writes.clone(),
        })
    }

    /// Whether writes run on a connection of their own (a SQLite file), so that
    /// reads on [`Store::conn`] do not wait for the writer.
    pub fn reads_apart_from_writer(&self) -> bool {
        self.writer.is_some()
    }

    /// A connection for reads.
    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>> {
        Ok(self.pool.acquire().await?)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        if let Some(w) = &self.writer {
            w.close().await;
        }
        self.pool.close().await
    }
}

/// A write transaction. Dropping it without [`Tx::commit`] rolls everything back.
pub struct Tx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// When the writer was taken (SQLite) or the transaction began.
    began: std::time::Instant,
    stats: Arc<WriteStats>,
}

impl Tx {
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
    pub fn backend(&self) -> Backend {
        self.backend
    }
    pub async fn commit(self) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        self.tx.commit().await?;
        let held = self.began.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.stats.held_ns.fetch_add(held, Relaxed);
        self.stats.committed.fetch_add(1, Relaxed);
        Ok(())
    }
}

/// JSON text for a column.
fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("store values serialise")
}

/// A JSON column back into its type.
fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{e}: {s:.80}")))
}
