//! A SQLite file's connections for short reads, kept by the store instead of
//! sqlx's pool ([`super::Store::short_read_conn`]).
//!
//! sqlx's pool checks every connection given back to it with a round trip to
//! the connection's worker thread (`ping`), in a task spawned for it. A request
//! that posts an event takes a read connection twice (its token, its event's
//! reads), so it paid two more round trips and two more tasks than its queries
//! need; on 2 cores those trips are a large part of an event's cost
//! (BENCHMARKS.md). The ping is there for drivers whose half-read answers stay
//! in a socket; a SQLite connection's worker runs one command at a time and
//! finishes (or resets) each statement before the next, and an unfinished
//! transaction queues its own rollback when dropped, so a connection is reusable
//! as soon as it is given back. The price: a read cancelled mid-statement is
//! given back while its worker still runs the statement, and the next taker
//! waits for it to end; hence short reads only. PostgreSQL and in-memory SQLite
//! keep sqlx's pool.

use super::{Result, StoreError};
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, Connection};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most this many read connections.
pub(super) const MAX: usize = 8;

/// How long a read waits for a connection before it fails as unavailable, as
/// the pool's `acquire_timeout`.
const WAIT: Duration = Duration::from_secs(5);

/// The idle connections, and a permit per connection in use or to be opened.
pub(super) struct Readers {
    options: AnyConnectOptions,
    idle: Mutex<Vec<AnyConnection>>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers").finish_non_exhaustive()
    }
}

/// A read connection; given back when dropped.
pub struct ReadConn {
    conn: Conn,
}

enum Conn {
    Kept {
        conn: Option<AnyConnection>,
        home: Arc<Readers>,
        _permit: OwnedSemaphorePermit,
    },
    Pooled(sqlx::pool::PoolConnection<sqlx::Any>),
}

impl Readers {
    pub(super) fn new(options: AnyConnectOptions) -> Readers {
        Readers {
            options,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(MAX)),
        }
    }

    /// An idle connection, or a new one while fewer than [`MAX`] are open.
    pub(super) async fn get(self: &Arc<Self>) -> Result<ReadConn> {
        let permit = tokio::time::timeout(WAIT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!("no read connection free within {WAIT:?}"))
            })?
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        let idle = self.idle.lock().expect("read connections").pop();
        let conn = match idle {
            Some(c) => c,
            None => super::sqlite_connection(&self.options).await?,
        };
        Ok(ReadConn {
            conn: Conn::Kept {
                conn: Some(conn),
                home: self.clone(),
                _permit: permit,
            },
        })
    }

    /// Closes the idle connections; those in use close when given back.
    pub(super) async fn close(&self) {
        self.permits.close();
        let idle = std::mem::take(&mut *self.idle.lock().expect("read connections"));
        for c in idle {
            let _ = c.close().await;
        }
    }
}

impl ReadConn {
    pub(super) fn pooled(c: sqlx::pool::PoolConnection<sqlx::Any>) -> ReadConn {
        ReadConn {
            conn: Conn::Pooled(c),
        }
    }
}

impl std::ops::Deref for ReadConn {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match &self.conn {
            Conn::Kept { conn, .. } => conn.as_ref().expect("given back only when dropped"),
            Conn::Pooled(c) => c,
        }
    }
}

impl std::ops::DerefMut for ReadConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.conn {
            Conn::Kept { conn, .. } => conn.as_mut().expect("given back only when dropped"),
            Conn::Pooled(c) => c,
        }
    }
}

impl Drop for ReadConn {
    fn drop(&mut self) {
        if let Conn::Kept { conn, home, .. } = &mut self.conn {
            // Given back before the permit: the next taker finds it idle.
            if let Some(c) = conn.take() {
                if !home.permits.is_closed() {
                    home.idle.lock().expect("read connections").push(c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;
    use sqlx::TransactionManager;

    #[tokio::test]
    async fn read_connections_are_bounded_given_back_clean_and_refused_once_closed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("r.db").display());
        let store = Store::connect(&url).await.unwrap();
        let conn = || store.short_read_conn();

        // At most MAX open; one more waits until one is given back.
        let mut held = Vec::new();
        for _ in 0..MAX {
            held.push(conn().await.unwrap());
        }
        let waiting = tokio::time::timeout(Duration::from_millis(200), conn()).await;
        assert!(waiting.is_err(), "a read connection past {MAX} was opened");
        held.pop();
        let mut c = tokio::time::timeout(Duration::from_secs(5), conn())
            .await
            .expect("a connection given back is taken again")
            .unwrap();
        drop(held);

        // A read transaction dropped open is rolled back before the next user.
        let mut tx = c.begin().await.unwrap();
        sqlx::query("SELECT COUNT(*) FROM customers")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        drop(tx);
        drop(c);
        // A read cancelled mid-statement leaves its connection usable.
        let busy = store.clone();
        let cancelled = tokio::spawn(async move {
            let mut c = busy.short_read_conn().await.unwrap();
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
                 WHERE i < 2000000) SELECT COUNT(*) FROM n",
            )
            .fetch_one(&mut *c)
            .await
            .unwrap();
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        cancelled.abort();
        let _ = cancelled.await;
        let mut held = Vec::new();
        for _ in 0..MAX {
            held.push(conn().await.unwrap());
        }
        for c in &mut held {
            assert_eq!(
                sqlx::any::AnyTransactionManager::get_transaction_depth(c),
                0
            );
            let one: i64 = sqlx::query_scalar("SELECT 1")
                .fetch_one(&mut **c)
                .await
                .unwrap();
            assert_eq!(one, 1);
        }
        drop(held);

        store.close().await;
        assert!(matches!(conn().await, Err(StoreError::Unavailable(_))));
    }
}
