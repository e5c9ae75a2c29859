//! The change feed: the records every write path leaves in `changes` (see
//! [`crate::domain::changes`]), read a page at a time after a cursor, and
//! pruned after the retention (default [`RETENTION`]).

use super::{invalid, CrmError};
use crate::domain::changes::{Change, ChangeType};
use crate::store::{self, Store};
use std::time::Duration;

/// How long changes are kept by default: 30 days.
pub const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Changes deleted per statement when pruning: a host prunes in steps, and
/// writers wait at most one step.
const PRUNE_STEP: i64 = 10_000;

/// How often a host prunes the feed.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// A page of the feed.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ChangePage {
    pub changes: Vec<Change>,
    /// Pass as `after` for the next page: the last change's cursor, or the
    /// `after` given when there was nothing new (so a client polls with it).
    pub next: String,
    /// Whether more changes are waiting now (ask again at once).
    pub more: bool,
}

/// The change feed of every tenant.
#[derive(Clone, Debug)]
pub struct Changes {
    store: Store,
    retention: Duration,
}

impl Changes {
    pub(crate) fn new(store: Store) -> Changes {
        Changes {
            store,
            retention: RETENTION,
        }
    }

    pub(crate) fn set_retention(&mut self, retention: Duration) {
        self.retention = retention;
    }

    /// How long changes are kept.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Up to `limit` (1-1000) of `tenant`'s changes after the cursor `after`
    /// (from the oldest kept when `None`), of the `types` named (all when
    /// empty).
    pub async fn list(
        &self,
        tenant: &str,
        after: Option<&str>,
        types: &[String],
        limit: i64,
    ) -> Result<ChangePage, CrmError> {
        if !(1..=1000).contains(&limit) {
            return Err(invalid("limit must be between 1 and 1000"));
        }
        let after_pos = match after {
            None | Some("") => 0,
            Some(c) => c.parse::<i64>().ok().filter(|p| *p >= 0).ok_or_else(|| {
                invalid(format!(
                    "after {c:?} is not a cursor of this feed (pass a `next` or a change's `cursor`)"
                ))
            })?,
        };
        let types = types
            .iter()
            .flat_map(|t| t.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(ChangeType::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        self.sequence().await?;
        let mut conn = self.store.conn().await?;
        let mut changes =
            store::changes_after(&mut conn, tenant, after_pos, &types, limit + 1).await?;
        let more = changes.len() as i64 > limit;
        changes.truncate(limit as usize);
        let next = changes
            .last()
            .map(|c| c.cursor.clone())
            .unwrap_or_else(|| after_pos.to_string());
        Ok(ChangePage {
            changes,
            next,
            more,
        })
    }

    /// Gives committed changes their place in the feed (PostgreSQL).
    pub async fn sequence(&self) -> Result<u64, CrmError> {
        Ok(store::sequence_changes(&self.store).await?)
    }

    /// This host's housekeeping: prunes what the retention lets go of, at start
    /// and every [`PRUNE_EVERY`], until the task is aborted.
    pub fn run(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match this.prune().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(pruned = n, "changes older than the retention deleted"),
                    Err(e) => tracing::warn!("pruning the change feed: {e}"),
                }
                tokio::time::sleep(PRUNE_EVERY).await;
            }
        })
    }

    /// Deletes the changes recorded longer ago than the retention; returns how
    /// many. Any host may run it: deleting is the same whoever does it.
    pub async fn prune(&self) -> Result<u64, CrmError> {
        // `recorded_at` is the database's wall clock (a change dated by the
        // movable clock, say 1998 for an import, is kept as long as any).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let before = now - self.retention.as_millis() as i64;
        let mut pruned = 0;
        loop {
            let mut tx = self.store.begin().await?;
            let n = store::prune_changes(tx.conn(), before, PRUNE_STEP).await?;
            tx.commit().await?;
            pruned += n;
            if n < PRUNE_STEP as u64 {
                return Ok(pruned);
            }
        }
    }
}
