//! SQLite's WAL copied into the database file on a connection of its own.
//!
//! By default the connection whose commit takes the WAL past 1,000 pages copies
//! them into the database file and syncs it, inside that COMMIT. On a server
//! that connection is the one writer ([`super::Store::begin`]), so every event
//! waiting for it waited for the copy too: the checkpoint was 11.5 % of the
//! writer thread's time in a profile of the ingest bench (BENCHMARKS.md). The
//! writer therefore runs with `wal_autocheckpoint = 0`, and a task here runs a
//! `PASSIVE` checkpoint, which waits for neither the writer nor the readers,
//! [`EVERY`] after a commit. Durability is unchanged: a commit is in the WAL
//! when it returns either way, and a checkpoint syncs the WAL before copying.
//! If readers keep the WAL from being copied to its end, it grows until they
//! let go, as it did before.

use sqlx::AnyPool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How long after a commit the WAL is copied: commits in between share the
/// copy, and a page written by several of them is copied once.
pub(super) const EVERY: Duration = Duration::from_millis(200);

/// The writer's side of the checkpointer: [`Checkpoints::committed`] after each
/// commit. Dropping the last clone of the store stops the task.
#[derive(Debug)]
pub(super) struct Checkpoints {
    shared: Arc<Shared>,
    pool: AnyPool,
}

#[derive(Debug, Default)]
struct Shared {
    wake: Notify,
    stop: AtomicBool,
    /// Checkpoints run so far.
    done: AtomicU64,
}

impl Checkpoints {
    /// Starts checkpointing on `pool` (one connection of its own).
    pub(super) fn start(pool: AnyPool) -> Checkpoints {
        let shared = Arc::new(Shared::default());
        tokio::spawn(run(shared.clone(), pool.clone()));
        Checkpoints { shared, pool }
    }

    /// A write transaction committed: its pages are to be copied.
    pub(super) fn committed(&self) {
        self.shared.wake.notify_one();
    }

    /// Checkpoints run so far.
    pub(super) fn done(&self) -> u64 {
        self.shared.done.load(Relaxed)
    }

    pub(super) async fn close(&self) {
        self.stop();
        self.pool.close().await;
    }

    fn stop(&self) {
        self.shared.stop.store(true, Relaxed);
        self.shared.wake.notify_one();
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn run(shared: Arc<Shared>, pool: AnyPool) {
    loop {
        shared.wake.notified().await;
        if shared.stop.load(Relaxed) {
            break;
        }
        tokio::time::sleep(EVERY).await;
        if shared.stop.load(Relaxed) {
            break;
        }
        // (busy, frames in the WAL, frames copied); a busy or partial copy is
        // taken up again after the next commit.
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            Ok(_) => {
                shared.done.fetch_add(1, Relaxed);
            }
            Err(e) => tracing::warn!("WAL checkpoint failed: {e}"),
        }
    }
    pool.close().await;
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn the_wal_reaches_the_database_file_without_the_writer_copying_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store = Store::connect(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        let mut tx = store.begin().await.unwrap();
        let auto: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(tx.conn())
            .await
            .unwrap();
        assert_eq!(auto, 0, "the writer must leave checkpoints alone");
        sqlx::query("CREATE TABLE pages (b BLOB)")
            .execute(tx.conn())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        // ~100 WAL pages: far under SQLite's own 1,000-page threshold, so no
        // connection would copy them on its own.
        for _ in 0..50 {
            let mut tx = store.begin().await.unwrap();
            sqlx::query("INSERT INTO pages VALUES (zeroblob(4000))")
                .execute(tx.conn())
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&path).unwrap().len() < before + 50 * 4000 {
            assert!(
                Instant::now() < deadline,
                "the WAL was not copied into the file: {} bytes, {} checkpoints",
                std::fs::metadata(&path).unwrap().len(),
                store.checkpoints_done()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(store.checkpoints_done() >= 1);
        store.close().await;
    }
}
