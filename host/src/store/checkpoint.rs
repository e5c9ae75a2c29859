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
//!
//! A WAL starts again from its beginning only when it was copied to its end and
//! no reader is using it at the moment a writer begins. On a busy server some
//! reader always is (eight read connections taking turns), so it only grew: a 30 s
//! ingest bench left a 1.6–2.2 GB WAL beside a 60–120 MB database, and every append
//! went to fresh file space. Past [`RESTART_AT`] frames the task therefore asks
//! for a `RESTART` checkpoint: SQLite holds new writers back while the readers
//! still in the WAL finish (new ones read the database file), so that the next
//! write starts the WAL over. Its wait is bounded by [`RESTART_WAIT`], after
//! which it gives up until the next round, so a long read never stalls the
//! writer for longer.

use sqlx::{AnyConnection, Connection, Executor, Row};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How long after a commit the WAL is copied: commits in between share the
/// copy, and a page written by several of them is copied once.
pub(super) const EVERY: Duration = Duration::from_millis(200);

/// WAL frames (pages) past which the WAL is made to start over: 64 MiB of
/// 4 KiB pages, about a second of the ingest bench's writes.
pub(super) const RESTART_AT: i64 = 16_384;

/// The longest a `RESTART` checkpoint holds the writer back waiting for readers.
pub(super) const RESTART_WAIT: Duration = Duration::from_millis(100);

/// The writer's side of the checkpointer: [`Checkpoints::committed`] after each
/// commit. Dropping the last clone of the store stops the task.
#[derive(Debug)]
pub(super) struct Checkpoints {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Shared {
    wake: Notify,
    stop: AtomicBool,
    /// Checkpoints run so far, and of them those that started the WAL over.
    done: AtomicU64,
    restarts: AtomicU64,
}

impl Checkpoints {
    /// Starts checkpointing on `conn`, a connection of its own, making the WAL
    /// start over past `restart_at` frames ([`RESTART_AT`]).
    pub(super) async fn start(
        mut conn: AnyConnection,
        restart_at: i64,
    ) -> sqlx::Result<Checkpoints> {
        conn.execute(format!("PRAGMA busy_timeout = {}", RESTART_WAIT.as_millis()).as_str())
            .await?;
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(run(shared.clone(), conn, restart_at));
        Ok(Checkpoints {
            shared,
            task: Mutex::new(Some(task)),
        })
    }

    /// A write transaction committed: its pages are to be copied.
    pub(super) fn committed(&self) {
        self.shared.wake.notify_one();
    }

    /// Checkpoints run so far, and how many of them started the WAL over.
    pub(super) fn done(&self) -> (u64, u64) {
        (
            self.shared.done.load(Relaxed),
            self.shared.restarts.load(Relaxed),
        )
    }

    /// Stops the task and closes its connection.
    pub(super) async fn close(&self) {
        self.stop();
        let task = self.task.lock().expect("checkpoint task").take();
        if let Some(task) = task {
            let _ = task.await;
        }
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

async fn run(shared: Arc<Shared>, mut conn: AnyConnection, restart_at: i64) {
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
        let frames = match checkpoint(&mut conn, "PASSIVE").await {
            Ok(frames) => frames,
            Err(e) => {
                tracing::warn!("WAL checkpoint failed: {e}");
                continue;
            }
        };
        shared.done.fetch_add(1, Relaxed);
        if frames >= restart_at {
            match checkpoint(&mut conn, "RESTART").await {
                Ok(_) => {
                    shared.restarts.fetch_add(1, Relaxed);
                }
                // SQLITE_BUSY: a reader outlasted RESTART_WAIT; next round.
                Err(e) => tracing::debug!("WAL restart put off: {e}"),
            }
        }
    }
    let _ = conn.close().await;
}

/// Runs a checkpoint of `mode`; the frames the WAL held. A `RESTART` that
/// could not finish waiting for readers is an error.
async fn checkpoint(conn: &mut AnyConnection, mode: &str) -> sqlx::Result<i64> {
    let row = sqlx::query(&format!("PRAGMA wal_checkpoint({mode})"))
        .fetch_one(&mut *conn)
        .await?;
    let busy: i64 = row.try_get(0)?;
    if busy != 0 && mode != "PASSIVE" {
        return Err(sqlx::Error::Protocol(format!(
            "{mode} checkpoint busy: readers still in the WAL"
        )));
    }
    row.try_get(1)
}

#[cfg(test)]
mod tests {
    use super::super::tests::commit_one;
    use super::super::{sqlite_connection, Store};
    use super::*;
    use std::str::FromStr;
    use std::time::Instant;

    async fn open(url: &str) -> AnyConnection {
        sqlx::any::install_default_drivers();
        let options = sqlx::any::AnyConnectOptions::from_str(url).unwrap();
        sqlite_connection(&options).await.unwrap()
    }

    /// Readers that overlap, so that some reader is always in the WAL: the
    /// writer alone would never find the moment to start it over.
    #[tokio::test]
    async fn a_wal_that_readers_never_all_leave_still_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let url = format!("sqlite:{}?mode=rwc", path.display());
        let mut writer = open(&url).await;
        writer
            .execute("PRAGMA wal_autocheckpoint = 0; CREATE TABLE pages (b BLOB)")
            .await
            .unwrap();
        let checkpoints = Checkpoints::start(open(&url).await, 64).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let readers = {
            let (mut a, mut b, stop) = (open(&url).await, open(&url).await, stop.clone());
            tokio::spawn(async move {
                a.execute("BEGIN; SELECT COUNT(*) FROM pages")
                    .await
                    .unwrap();
                while !stop.load(Relaxed) {
                    // b begins before a ends, then the other way round.
                    b.execute("BEGIN; SELECT COUNT(*) FROM pages")
                        .await
                        .unwrap();
                    a.execute("COMMIT").await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    a.execute("BEGIN; SELECT COUNT(*) FROM pages")
                        .await
                        .unwrap();
                    b.execute("COMMIT").await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                a.execute("COMMIT").await.unwrap();
            })
        };
        let writes = 300;
        for _ in 0..writes {
            writer
                .execute("INSERT INTO pages VALUES (zeroblob(4000))")
                .await
                .unwrap();
            checkpoints.committed();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.store(true, Relaxed);
        readers.await.unwrap();
        let wal = std::fs::metadata(dir.path().join("r.db-wal"))
            .unwrap()
            .len();
        let (done, restarts) = checkpoints.done();
        assert!(
            restarts >= 1,
            "{done} checkpoints, none started the WAL over"
        );
        // Every insert wrote at least one 4 KiB page to the WAL.
        assert!(
            wal < writes * 4096 / 2,
            "the WAL holds {wal} bytes after {writes} inserts"
        );
        checkpoints.close().await;
    }

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
            commit_one(&store, "INSERT INTO pages VALUES (zeroblob(4000))").await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        // The file grows while the checkpoint copies, before it is counted.
        while std::fs::metadata(&path).unwrap().len() < before + 50 * 4000
            || store.checkpoints_done().0 == 0
        {
            assert!(
                Instant::now() < deadline,
                "the WAL was not copied into the file: {} bytes, {} checkpoints",
                std::fs::metadata(&path).unwrap().len(),
                store.checkpoints_done().0
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store.close().await;
    }
}
