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
//! file each time was a large part of an event's cost. That connection never
//! copies the WAL into the database file; [`checkpoint`] does, beside it.
//!
//! This module knows SQL and nothing of HTTP or plugins.

mod analytics;
mod auth;
mod batch;
mod bulk;
mod changes;
mod checkpoint;
mod customers;
mod events;
mod jobs;
mod plugins;
mod readers;
mod schedules;
mod wakes;
mod webhooks;

pub use analytics::*;
pub use auth::*;
pub use batch::Batch;
pub use bulk::*;
pub use changes::*;
pub use customers::*;
pub use events::*;
pub use jobs::*;
pub use plugins::*;
pub use readers::ReadConn;
pub use schedules::*;
pub use wakes::*;
pub use webhooks::*;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyTransactionManager};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, TransactionManager};
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

/// Every SQLite connection's settings. WAL: readers never wait for the writer.
/// NORMAL sync is durable across a process crash (only power loss can cost the
/// last commits).
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
     PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; \
     PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;";

/// A SQLite connection of the store's own, outside sqlx's pool, with
/// [`SQLITE_PRAGMAS`] set.
async fn sqlite_connection(options: &AnyConnectOptions) -> Result<AnyConnection> {
    let mut c = AnyConnection::connect_with(options).await?;
    c.execute(SQLITE_PRAGMAS).await?;
    Ok(c)
}

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
    /// SQLite file only: the one connection write transactions run on, held
    /// apart from the pool (see [`Store::begin`]); `None` inside once closed.
    writer: Option<Arc<tokio::sync::Mutex<Option<AnyConnection>>>>,
    /// SQLite file only: connections for the short reads every request makes,
    /// held apart from the pool ([`readers`], [`Store::short_read_conn`]).
    readers: Option<Arc<readers::Readers>>,
    backend: Backend,
    url: String,
    /// SQLite in memory: one writer at a time, taken before `BEGIN`.
    write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
    writes: Arc<WriteStats>,
    /// SQLite file only: copies the WAL into the file off the writer.
    checkpoints: Option<Arc<checkpoint::Checkpoints>>,
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
                            conn.execute(SQLITE_PRAGMAS).await?;
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
            .await
            .map_err(|e| match backend {
                // SQLite's own message ("unable to open database file") names
                // no file.
                Backend::Sqlite => {
                    let path = url
                        .trim_start_matches("sqlite:")
                        .split('?')
                        .next()
                        .unwrap_or("");
                    StoreError::Unavailable(format!("cannot open the SQLite database {path}: {e}"))
                }
                Backend::Postgres => e.into(),
            })?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&pool).await?,
        }
        // An in-memory database exists once per connection: it cannot have a writer apart.
        let (writer, checkpoints, readers) = if backend == Backend::Sqlite
            && !url.contains(":memory:")
        {
            let checkpointer = sqlite_connection(&options).await?;
            // The writer leaves checkpoints to [`checkpoint`].
            let mut writer = sqlite_connection(&options).await?;
            writer.execute("PRAGMA wal_autocheckpoint = 0").await?;
            (
                Some(Arc::new(tokio::sync::Mutex::new(Some(writer)))),
                Some(Arc::new(
                    checkpoint::Checkpoints::start(checkpointer, checkpoint::RESTART_AT).await?,
                )),
                Some(Arc::new(readers::Readers::new(options))),
            )
        } else {
            (None, None, None)
        };
        let write_lock = (backend == Backend::Sqlite && writer.is_none())
            .then(|| Arc::new(tokio::sync::Mutex::new(())));
        Ok(Store {
            pool,
            writer,
            readers,
            backend,
            url: url.clone(),
            write_lock,
            writes: Arc::default(),
            checkpoints,
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
    ///
    /// On a SQLite file it runs on the one writer connection, which stays out
    /// of sqlx's pool: the pool checks every connection given back to it with a
    /// round trip to its worker thread (`ping`) in a task of its own, and the
    /// next transaction waited for both, one more trip per group of events on
    /// the writer's path. A transaction that is dropped uncommitted queues its
    /// `ROLLBACK` on that connection before it lets go, as sqlx's own does.
    pub async fn begin(&self) -> Result<Tx> {
        // IMMEDIATE takes SQLite's write lock up front: another process writing the
        // same file (the CLI beside a server) then waits (busy_timeout) instead of
        // failing later when a read-then-write transaction cannot upgrade.
        if let Some(writer) = &self.writer {
            let mut conn = writer.clone().lock_owned().await;
            let c = conn
                .as_mut()
                .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
            AnyTransactionManager::begin(c, Some("BEGIN IMMEDIATE".into())).await?;
            return Ok(self.tx(TxConn::Writer { conn, open: true }, None));
        }
        let guard = match &self.write_lock {
            Some(l) => Some(l.clone().lock_owned().await),
            None => None,
        };
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(self.tx(TxConn::Pooled(Some(tx)), guard))
    }

    fn tx(&self, conn: TxConn, guard: Option<tokio::sync::OwnedMutexGuard<()>>) -> Tx {
        Tx {
            conn,
            backend: self.backend,
            _guard: guard,
            began: std::time::Instant::now(),
            stats: self.writes.clone(),
            checkpoints: self.checkpoints.clone(),
        }
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

    /// A connection for a read that takes a millisecond or so, made by every
    /// request (its token, an event's reads): on a SQLite file, one the store
    /// keeps apart from the pool, which skips the pool's round trip when it is
    /// given back ([`readers`]). Anything that may read for long (a search, an
    /// export) takes [`Store::conn`]: a read cancelled mid-statement leaves its
    /// connection busy until the statement ends, and a kept connection goes
    /// back for the next short read at once.
    pub async fn short_read_conn(&self) -> Result<ReadConn> {
        match &self.readers {
            Some(r) => r.get().await,
            None => Ok(ReadConn::pooled(self.pool.acquire().await?)),
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// WAL checkpoints run off the writer so far, and of them those that
    /// started the WAL over (SQLite file; 0 otherwise).
    pub fn checkpoints_done(&self) -> (u64, u64) {
        self.checkpoints.as_ref().map_or((0, 0), |c| c.done())
    }

    pub async fn close(&self) {
        if let Some(c) = &self.checkpoints {
            c.close().await;
        }
        if let Some(w) = &self.writer {
            if let Some(conn) = w.lock().await.take() {
                let _ = conn.close().await;
            }
        }
        if let Some(r) = &self.readers {
            r.close().await;
        }
        // The pool's close waits for every checked-out connection to come back;
        // one its owner still holds (a task that outlives the store) would hold
        // the shutdown for ever. Those are closed when they are dropped.
        if tokio::time::timeout(std::time::Duration::from_secs(5), self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!("closing the store: connections still in use after 5 s; not waiting");
        }
    }
}

/// A write transaction. Dropping it without [`Tx::commit`] rolls everything back.
pub struct Tx {
    conn: TxConn,
    backend: Backend,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// When the writer was taken (SQLite) or the transaction began.
    began: std::time::Instant,
    stats: Arc<WriteStats>,
    checkpoints: Option<Arc<checkpoint::Checkpoints>>,
}

enum TxConn {
    /// A SQLite file's writer connection, held while the transaction is `open`.
    Writer {
        conn: tokio::sync::OwnedMutexGuard<Option<AnyConnection>>,
        open: bool,
    },
    /// Taken out when committed.
    Pooled(Option<sqlx::Transaction<'static, sqlx::Any>>),
}

impl Tx {
    pub fn conn(&mut self) -> &mut AnyConnection {
        match &mut self.conn {
            TxConn::Writer { conn, .. } => conn.as_mut().expect("taken only when closed"),
            TxConn::Pooled(tx) => tx.as_mut().expect("taken only when committed"),
        }
    }
    pub fn backend(&self) -> Backend {
        self.backend
    }
    pub async fn commit(mut self) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        match &mut self.conn {
            TxConn::Writer { conn, open } => {
                AnyTransactionManager::commit(conn.as_mut().expect("taken only when closed"))
                    .await?;
                *open = false;
            }
            TxConn::Pooled(tx) => {
                let tx = tx.take().expect("committed once");
                tx.commit().await?;
            }
        }
        let held = self.began.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.stats.held_ns.fetch_add(held, Relaxed);
        self.stats.committed.fetch_add(1, Relaxed);
        if let Some(c) = &self.checkpoints {
            c.committed();
        }
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let TxConn::Writer { conn, open: true } = &mut self.conn {
            if let Some(c) = conn.as_mut() {
                AnyTransactionManager::start_rollback(c);
            }
        }
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Runs `sql` in a write transaction of its own and commits it.
    pub(in crate::store) async fn commit_one(store: &Store, sql: &str) {
        let mut tx = store.begin().await.unwrap();
        sqlx::query(sql).execute(tx.conn()).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn count(store: &Store) -> i64 {
        let mut conn = store.conn().await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_database_that_cannot_be_opened_is_named() {
        let e = Store::connect("sqlite:/no-such-dir-stagecraft/sub/crm.db")
            .await
            .expect_err("no such directory")
            .to_string();
        assert!(e.contains("/no-such-dir-stagecraft/sub/crm.db"), "{e}");
    }

    /// The writer's connection is held apart from the pool, so rolling back a
    /// dropped transaction is the store's own work, not sqlx's.
    #[tokio::test]
    async fn a_write_transaction_dropped_uncommitted_leaves_nothing_and_the_writer_usable() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("w.db").display());
        let store = Store::connect(&url).await.unwrap();
        commit_one(&store, "CREATE TABLE t (x BIGINT)").await;

        let mut tx = store.begin().await.unwrap();
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(tx.conn())
            .await
            .unwrap();
        drop(tx);
        // Dropped while its statement runs: a request whose client hung up.
        let busy = store.clone();
        let cancelled = tokio::spawn(async move {
            let mut tx = busy.begin().await.unwrap();
            sqlx::query("INSERT INTO t VALUES (2)")
                .execute(tx.conn())
                .await
                .unwrap();
            std::future::pending::<()>().await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        cancelled.abort();
        let _ = cancelled.await;

        commit_one(&store, "INSERT INTO t VALUES (3)").await;
        assert_eq!(count(&store).await, 1, "only the committed row is kept");
        store.close().await;
        assert!(matches!(
            store.begin().await.err(),
            Some(StoreError::Unavailable(_))
        ));
    }
}
