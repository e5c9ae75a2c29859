//! The change feed's rows (`changes`, a transactional outbox): queued into the
//! batch of the transaction that makes the change, given their place in the
//! feed after commit, read in that order, and pruned after the retention.
//!
//! Order. A change's `seq` is taken when it is inserted, after its writer holds
//! the customer's row lock, so one customer's changes have increasing `seq`s.
//! On SQLite, with one writer, that is also commit order and the feed's `pos`
//! is `seq` (a generated column). On PostgreSQL transactions commit out of
//! `seq` order, so [`sequence_changes`] gives `pos` after commit, one
//! sequencer at a time (an advisory lock), to every row it can see without
//! one, in `seq` order: a row is never seen for the first time below a `pos`
//! given already, so a reader paging on `pos` misses nothing; and a
//! customer's earlier change committed before its later one took a `seq`, so
//! whenever the later is visible the earlier is too and gets the lower `pos`.

use super::batch::{Batch, Bind};
use super::{from_json, to_json, Backend, Result, Store};
use crate::domain::changes::{Change, ChangeType, NewChange};
use sqlx::{AnyConnection, Row};

/// Rows given a place per [`sequence_changes`] statement.
const SEQUENCE_ROWS: i64 = 5_000;

/// Queues `changes` of `tenant`, dated `at`, into `batch` (the transaction of
/// the change they describe).
pub fn queue_changes(batch: &mut Batch, tenant: &str, changes: &[NewChange], at: i64) {
    if changes.is_empty() {
        return;
    }
    let mut binds: Vec<Bind> = Vec::with_capacity(changes.len() * 6);
    for c in changes {
        binds.extend([
            uuid::Uuid::now_v7().to_string().into(),
            tenant.into(),
            c.kind.as_str().into(),
            c.customer_id.as_deref().into(),
            to_json(&c.data).into(),
            at.into(),
        ]);
    }
    batch.push_rows(
        "INSERT INTO changes (id, tenant_id, type, customer_id, data, at) VALUES ",
        6,
        "",
        binds,
    );
}

/// Writes `changes` now, on a transaction's connection (for the writers that
/// do not batch).
pub async fn insert_changes(
    conn: &mut AnyConnection,
    tenant: &str,
    changes: &[NewChange],
    at: i64,
) -> Result<()> {
    let mut b = Batch::new();
    queue_changes(&mut b, tenant, changes, at);
    b.run(conn).await?;
    Ok(())
}

/// Gives committed changes their place in the feed (PostgreSQL; SQLite's is
/// their `seq`), in a transaction of its own; returns how many.
pub async fn sequence_changes(store: &Store) -> Result<u64> {
    if store.backend() == Backend::Sqlite {
        return Ok(0);
    }
    let mut tx = store.begin().await?;
    let given = sequence_in(tx.conn()).await?;
    tx.commit().await?;
    Ok(given)
}

/// [`sequence_changes`] inside a transaction: the advisory lock it takes (one
/// sequencer at a time) lasts until the commit.
async fn sequence_in(conn: &mut AnyConnection) -> Result<u64> {
    sqlx::query("SELECT pg_advisory_xact_lock(7310522)")
        .execute(&mut *conn)
        .await?;
    let mut given = 0;
    loop {
        let n = sqlx::query(
            "UPDATE changes SET pos = s.p FROM ( \
               SELECT seq, (SELECT COALESCE(MAX(pos), 0) FROM changes) \
                           + ROW_NUMBER() OVER (ORDER BY seq) AS p \
               FROM changes WHERE pos IS NULL ORDER BY seq LIMIT $1) AS s \
             WHERE changes.seq = s.seq",
        )
        .bind(SEQUENCE_ROWS)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        given += n;
        if n < SEQUENCE_ROWS as u64 {
            return Ok(given);
        }
    }
}

/// Up to `limit` changes of `tenant` after `after` in the feed's order, of
/// `types` if any are given.
pub async fn changes_after(
    conn: &mut AnyConnection,
    tenant: &str,
    after: i64,
    types: &[ChangeType],
    limit: i64,
) -> Result<Vec<Change>> {
    let type_filter = if types.is_empty() {
        String::new()
    } else {
        let marks: Vec<String> = (0..types.len()).map(|i| format!("${}", i + 4)).collect();
        format!(" AND type IN ({})", marks.join(", "))
    };
    let sql = format!(
        "SELECT pos, id, type, customer_id, data, at FROM changes \
         WHERE tenant_id = $1 AND pos > $2{type_filter} ORDER BY pos LIMIT $3"
    );
    let mut q = sqlx::query(&sql).bind(tenant).bind(after).bind(limit);
    for t in types {
        q = q.bind(t.as_str());
    }
    let rows = q.fetch_all(conn).await?;
    rows.iter()
        .map(|r| {
            let kind: String = r.try_get("type")?;
            let data: String = r.try_get("data")?;
            Ok(Change {
                id: r.try_get("id")?,
                cursor: r.try_get::<i64, _>("pos")?.to_string(),
                kind: ChangeType::parse(&kind).map_err(super::StoreError::Corrupt)?,
                customer_id: r.try_get("customer_id")?,
                at: r.try_get("at")?,
                data: from_json(&data)?,
            })
        })
        .collect()
}

/// Deletes changes recorded before `recorded_before` (the database's wall
/// clock, ms), at most `limit` of them; returns how many.
pub async fn prune_changes(
    conn: &mut AnyConnection,
    recorded_before: i64,
    limit: i64,
) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM changes WHERE seq IN ( \
           SELECT seq FROM changes WHERE recorded_at < $1 ORDER BY recorded_at LIMIT $2)",
    )
    .bind(recorded_before)
    .bind(limit)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Queues `change` (a follow-up closed by a plugin's key) only if that
/// follow-up is open when the statement runs: queue it just before the close,
/// so closing a key with nothing open records nothing.
pub fn queue_change_if_open_follow_up(
    batch: &mut Batch,
    tenant: &str,
    change: &NewChange,
    plugin: &str,
    key: &str,
    at: i64,
) {
    let customer = change.customer_id.as_deref().unwrap_or_default();
    batch.push(
        "INSERT INTO changes (id, tenant_id, type, customer_id, data, at) \
         SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM follow_ups \
           WHERE tenant_id = ? AND customer_id = ? AND plugin = ? AND follow_up_key = ? AND status = 'open')"
            .into(),
        vec![
            uuid::Uuid::now_v7().to_string().into(),
            tenant.into(),
            change.kind.as_str().into(),
            customer.into(),
            to_json(&change.data).into(),
            at.into(),
            tenant.into(),
            customer.into(),
            plugin.into(),
            key.into(),
        ],
    );
}
