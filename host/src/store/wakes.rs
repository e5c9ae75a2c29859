//! The timers plugins set (`wake-at`, contract 0.2.0), as shared work: any host
//! claims due wakes with a lease, works them, and removes each in the same
//! transaction as what it caused, so a wake fires exactly once however many
//! hosts work and whichever of them dies.
//!
//! - [`claim_wakes`] takes up to `limit` due wakes whose lease is free or ran
//!   out (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so hosts claim different rows
//!   side by side; SQLite: the one writer is the lock);
//! - [`renew_wakes`] is the heartbeat of a claim being worked;
//! - [`take_wakes`] deletes, inside the transaction that writes what they caused,
//!   the wakes the claim still holds: a wake replaced meanwhile (a new request
//!   clears the claim) or taken over by another host after the lease ran out is
//!   not returned, and its results are not written.

use super::{Batch, Result};
use crate::store::Backend;
use sqlx::AnyConnection;
use std::collections::{HashMap, HashSet};

/// A due wake as claimed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, sqlx::FromRow)]
pub struct DueWake {
    pub tenant_id: String,
    pub customer_id: String,
    pub plugin: String,
    pub due_at: i64,
    pub set_at: i64,
}

/// Claims up to `limit` wakes due at `now` (soonest first) that no live lease
/// holds, for `claim` until `lease_until`. Commit before working on them.
pub async fn claim_wakes(
    conn: &mut AnyConnection,
    backend: Backend,
    claim: &str,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<DueWake>> {
    let lock = match backend {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let sql = format!(
        "UPDATE wakes SET claimed_by = $1, lease_until = $2 \
         WHERE (tenant_id, customer_id, plugin) IN ( \
           SELECT tenant_id, customer_id, plugin FROM wakes \
           WHERE due_at <= $3 AND (lease_until IS NULL OR lease_until < $3) \
           ORDER BY due_at LIMIT $4 {lock}) \
         RETURNING tenant_id, customer_id, plugin, due_at, set_at"
    );
    Ok(sqlx::query_as(&sql)
        .bind(claim)
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// The heartbeat of a claim: its lease runs until `lease_until`. Returns how
/// many wakes it still holds.
pub async fn renew_wakes(conn: &mut AnyConnection, claim: &str, lease_until: i64) -> Result<u64> {
    Ok(
        sqlx::query("UPDATE wakes SET lease_until = $1 WHERE claimed_by = $2")
            .bind(lease_until)
            .bind(claim)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

/// Lets go of a claimed wake without firing it (another wake of the same
/// customer is worked first); it is due again at once.
pub async fn release_wake(conn: &mut AnyConnection, claim: &str, w: &DueWake) -> Result<()> {
    sqlx::query(
        "UPDATE wakes SET claimed_by = NULL, lease_until = NULL \
         WHERE claimed_by = $1 AND tenant_id = $2 AND customer_id = $3 AND plugin = $4",
    )
    .bind(claim)
    .bind(&w.tenant_id)
    .bind(&w.customer_id)
    .bind(&w.plugin)
    .execute(conn)
    .await?;
    Ok(())
}

/// Lets go of every wake `claim` holds (its work failed): they are due again
/// at once, for any host, instead of after the lease.
pub async fn release_claim(conn: &mut AnyConnection, claim: &str) -> Result<u64> {
    Ok(
        sqlx::query("UPDATE wakes SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = $1")
            .bind(claim)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

/// Deletes the wakes `claim` still holds and returns them: those, and only
/// those, are fired by the caller's transaction.
pub async fn take_wakes(conn: &mut AnyConnection, claim: &str) -> Result<Vec<DueWake>> {
    Ok(sqlx::query_as(
        "DELETE FROM wakes WHERE claimed_by = $1 \
         RETURNING tenant_id, customer_id, plugin, due_at, set_at",
    )
    .bind(claim)
    .fetch_all(conn)
    .await?)
}

/// Queues the record that `w` fired, on `host`, at `fired_at`.
pub fn queue_wake_fired(batch: &mut Batch, w: &DueWake, fired_at: i64, host: &str) {
    batch.push_rows(
        "INSERT INTO wake_log (tenant_id, customer_id, plugin, due_at, set_at, fired_at, host) VALUES ",
        7,
        "",
        vec![
            (&w.tenant_id).into(),
            (&w.customer_id).into(),
            (&w.plugin).into(),
            w.due_at.into(),
            w.set_at.into(),
            fired_at.into(),
            host.into(),
        ],
    );
}

/// The `rev` of each of the customers `ids` that exists: read before a wake's
/// customer is loaded, so that [`bump_revs_if_unchanged`] can tell whether
/// anything changed it between that read and the write.
pub async fn customer_revs(
    conn: &mut AnyConnection,
    tenant: &str,
    ids: &[String],
) -> Result<HashMap<String, i64>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT id, rev FROM customers WHERE tenant_id = $1 AND id IN ({})",
        super::bulk::json_list(conn, 2)
    );
    let rows: Vec<(String, i64)> = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(serde_json::to_string(ids).expect("strings serialise"))
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Locks the customers `read` (id and the `rev` read before their evaluation)
/// by bumping their `rev`, and returns those whose `rev` was still the one
/// read: what was computed for the others is stale (an event or another wake
/// changed them since) and must not be written.
pub async fn bump_revs_if_unchanged(
    conn: &mut AnyConnection,
    tenant: &str,
    read: &[(&str, i64)],
) -> Result<HashSet<String>> {
    if read.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<&str> = read.iter().map(|(id, _)| *id).collect();
    let sql = format!(
        "UPDATE customers SET rev = rev + 1 WHERE tenant_id = $1 AND id IN ({}) RETURNING id, rev",
        super::bulk::json_list(conn, 2)
    );
    let bumped: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(&sql)
        .bind(tenant)
        .bind(serde_json::to_string(&ids).expect("strings serialise"))
        .fetch_all(conn)
        .await?
        .into_iter()
        .collect();
    Ok(read
        .iter()
        .filter(|(id, rev)| bumped.get(*id) == Some(&(rev + 1)))
        .map(|(id, _)| id.to_string())
        .collect())
}
