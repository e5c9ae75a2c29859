//! Webhook subscriptions and deliveries, as shared work: any host turns a
//! subscription's new changes into deliveries (taking the subscription's row:
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL, so hosts split them), claims due
//! deliveries with a lease, sends them, and writes each result only if its
//! claim still holds it. A host killed mid-delivery leaves its claim to run
//! out; the delivery is sent again (at least once), with the same message id.

use super::{Backend, Result};
use sqlx::{AnyConnection, FromRow};

/// A subscription as stored (the secrets included: the service shows them
/// only once).
#[derive(Debug, Clone, FromRow)]
pub struct WebhookRow {
    pub id: String,
    pub tenant_id: String,
    pub url: String,
    /// A JSON list of change types; empty for every type.
    pub types: String,
    pub description: Option<String>,
    pub enabled: i64,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_until: Option<i64>,
    pub cursor: i64,
    pub failing_since: Option<i64>,
    pub disabled_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const WEBHOOK_COLUMNS: &str = "id, tenant_id, url, types, description, enabled, secret, \
    previous_secret, previous_until, cursor, failing_since, disabled_reason, created_at, updated_at";

pub async fn insert_webhook(conn: &mut AnyConnection, w: &WebhookRow) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ))
    .bind(&w.id)
    .bind(&w.tenant_id)
    .bind(&w.url)
    .bind(&w.types)
    .bind(&w.description)
    .bind(w.enabled)
    .bind(&w.secret)
    .bind(&w.previous_secret)
    .bind(w.previous_until)
    .bind(w.cursor)
    .bind(w.failing_since)
    .bind(&w.disabled_reason)
    .bind(w.created_at)
    .bind(w.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes every column but the id, the tenant, the cursor and the creation time.
pub async fn update_webhook(conn: &mut AnyConnection, w: &WebhookRow) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE webhooks SET url = $1, types = $2, description = $3, enabled = $4, secret = $5, \
         previous_secret = $6, previous_until = $7, failing_since = $8, disabled_reason = $9, \
         updated_at = $10 WHERE tenant_id = $11 AND id = $12",
    )
    .bind(&w.url)
    .bind(&w.types)
    .bind(&w.description)
    .bind(w.enabled)
    .bind(&w.secret)
    .bind(&w.previous_secret)
    .bind(w.previous_until)
    .bind(w.failing_since)
    .bind(&w.disabled_reason)
    .bind(w.updated_at)
    .bind(&w.tenant_id)
    .bind(&w.id)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

pub async fn webhook(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
) -> Result<Option<WebhookRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

pub async fn webhooks(conn: &mut AnyConnection, tenant: &str) -> Result<Vec<WebhookRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant_id = $1 ORDER BY created_at, id"
    ))
    .bind(tenant)
    .fetch_all(conn)
    .await?)
}

pub async fn count_webhooks(conn: &mut AnyConnection, tenant: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(conn)
            .await?,
    )
}

/// Deletes a subscription and what it has queued.
pub async fn delete_webhook(conn: &mut AnyConnection, tenant: &str, id: &str) -> Result<bool> {
    let n = sqlx::query("DELETE FROM webhooks WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if n > 0 {
        sqlx::query("DELETE FROM deliveries WHERE webhook_id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM delivery_attempts WHERE webhook_id = $1")
            .bind(id)
            .execute(conn)
            .await?;
    }
    Ok(n > 0)
}

/// The tenant's last change in the feed (0 if none): where a new
/// subscription starts.
pub async fn last_change_pos(conn: &mut AnyConnection, tenant: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(pos) FROM changes WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(conn)
            .await?
            .unwrap_or(0),
    )
}

/// Takes up to `limit` enabled subscriptions for fanning out, each by one
/// host at a time (PostgreSQL: rows another host holds are skipped). Inside
/// a transaction.
pub async fn take_webhooks(
    conn: &mut AnyConnection,
    backend: Backend,
    limit: i64,
) -> Result<Vec<WebhookRow>> {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    Ok(sqlx::query_as(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE enabled = 1 ORDER BY id LIMIT $1{lock}"
    ))
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

pub async fn set_cursor(conn: &mut AnyConnection, id: &str, cursor: i64) -> Result<()> {
    sqlx::query("UPDATE webhooks SET cursor = $1 WHERE id = $2")
        .bind(cursor)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// A message queued for a subscription.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    pub webhook_id: &'a str,
    pub tenant_id: &'a str,
    pub message_id: &'a str,
    pub kind: &'a str,
    pub ordering: &'a str,
    pub payload: &'a str,
    pub at: i64,
}

/// Queues deliveries; one already queued (the same subscription and message)
/// is left as it is.
pub async fn queue_deliveries(conn: &mut AnyConnection, rows: &[NewDelivery<'_>]) -> Result<()> {
    let mut b = super::Batch::new();
    let mut binds = Vec::with_capacity(rows.len() * 9);
    for d in rows {
        binds.extend([
            d.webhook_id.into(),
            d.tenant_id.into(),
            d.message_id.into(),
            d.kind.into(),
            d.ordering.into(),
            d.payload.into(),
            d.at.into(),
            d.at.into(),
            "pending".into(),
        ]);
    }
    b.push_rows(
        "INSERT INTO deliveries (webhook_id, tenant_id, message_id, type, ordering, payload, \
         next_at, created_at, status) VALUES ",
        9,
        " ON CONFLICT (webhook_id, message_id) DO NOTHING",
        binds,
    );
    b.run(conn).await?;
    Ok(())
}

/// A delivery as claimed.
#[derive(Debug, Clone, FromRow)]
pub struct DueDelivery {
    pub seq: i64,
    pub webhook_id: String,
    pub tenant_id: String,
    pub message_id: String,
    pub payload: String,
    pub attempts: i64,
    pub created_at: i64,
}

/// Claims up to `limit` due deliveries for `claim` until `lease_until`: each
/// the earliest still pending of its subscription and customer, so a
/// customer's messages go one after another. Commit before sending.
pub async fn claim_deliveries(
    conn: &mut AnyConnection,
    backend: Backend,
    claim: &str,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<DueDelivery>> {
    let lock = match backend {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let sql = format!(
        "UPDATE deliveries SET claimed_by = $1, lease_until = $2 WHERE seq IN ( \
           SELECT d.seq FROM deliveries d \
           WHERE d.status = 'pending' AND d.next_at <= $3 \
             AND (d.lease_until IS NULL OR d.lease_until < $3) \
             AND EXISTS (SELECT 1 FROM webhooks w WHERE w.id = d.webhook_id AND w.enabled = 1) \
             AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.webhook_id = d.webhook_id \
               AND e.ordering = d.ordering AND e.status = 'pending' AND e.seq < d.seq) \
           ORDER BY d.next_at, d.seq LIMIT $4 {lock}) \
         RETURNING seq, webhook_id, tenant_id, message_id, payload, attempts, created_at"
    );
    Ok(sqlx::query_as(&sql)
        .bind(claim)
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// The heartbeat of a claim being sent.
pub async fn renew_deliveries(
    conn: &mut AnyConnection,
    claim: &str,
    lease_until: i64,
) -> Result<()> {
    sqlx::query("UPDATE deliveries SET lease_until = $1 WHERE claimed_by = $2")
        .bind(lease_until)
        .bind(claim)
        .execute(conn)
        .await?;
    Ok(())
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub delivery_seq: i64,
    pub webhook_id: String,
    pub at: i64,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub latency_ms: i64,
    pub response: Option<String>,
    /// `delivered`, `pending` (to be tried again at `next_at`) or `dead`.
    pub outcome: &'static str,
    pub next_at: i64,
}

/// Writes an attempt's result if `claim` still holds the delivery; returns
/// whether it did (a claim taken over after its lease ran out writes nothing:
/// the other host's attempt stands).
pub async fn record_attempt(
    conn: &mut AnyConnection,
    claim: &str,
    host: &str,
    a: &Attempt,
) -> Result<bool> {
    let done_at = (a.outcome != "pending").then_some(a.at);
    let held = sqlx::query(
        "UPDATE deliveries SET status = $1, attempts = attempts + 1, next_at = $2, \
         claimed_by = NULL, lease_until = NULL, done_at = $3, last_status = $4, last_error = $5 \
         WHERE seq = $6 AND claimed_by = $7",
    )
    .bind(a.outcome)
    .bind(a.next_at)
    .bind(done_at)
    .bind(a.status)
    .bind(&a.error)
    .bind(a.delivery_seq)
    .bind(claim)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    if held {
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_seq, webhook_id, at, status, error, latency_ms, response, host) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(a.delivery_seq)
        .bind(&a.webhook_id)
        .bind(a.at)
        .bind(a.status)
        .bind(&a.error)
        .bind(a.latency_ms)
        .bind(&a.response)
        .bind(host)
        .execute(conn)
        .await?;
    }
    Ok(held)
}

/// Marks a subscription failing since `at` if it is not already; clears it
/// with `None` (a delivery succeeded).
pub async fn set_failing(conn: &mut AnyConnection, id: &str, at: Option<i64>) -> Result<()> {
    let sql = if at.is_some() {
        "UPDATE webhooks SET failing_since = $1 WHERE id = $2 AND failing_since IS NULL"
    } else {
        "UPDATE webhooks SET failing_since = $1 WHERE id = $2 AND failing_since IS NOT NULL"
    };
    sqlx::query(sql).bind(at).bind(id).execute(conn).await?;
    Ok(())
}

/// Subscriptions failing since before `before`: to be disabled.
pub async fn failing_before(conn: &mut AnyConnection, before: i64) -> Result<Vec<WebhookRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE enabled = 1 AND failing_since < $1"
    ))
    .bind(before)
    .fetch_all(conn)
    .await?)
}

/// A delivery as the log shows it.
#[derive(Debug, Clone, FromRow)]
pub struct DeliveryRow {
    pub seq: i64,
    pub message_id: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub status: String,
    pub attempts: i64,
    pub next_at: i64,
    pub created_at: i64,
    pub done_at: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
}

/// A subscription's latest deliveries, newest first.
pub async fn deliveries(
    conn: &mut AnyConnection,
    webhook: &str,
    limit: i64,
) -> Result<Vec<DeliveryRow>> {
    Ok(sqlx::query_as(
        "SELECT seq, message_id, type, status, attempts, next_at, created_at, done_at, \
         last_status, last_error FROM deliveries WHERE webhook_id = $1 ORDER BY seq DESC LIMIT $2",
    )
    .bind(webhook)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// An attempt as the log shows it.
#[derive(Debug, Clone, FromRow)]
pub struct AttemptRow {
    pub delivery_seq: i64,
    pub at: i64,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub latency_ms: i64,
    pub response: Option<String>,
    pub host: String,
}

/// The attempts of deliveries `seqs`, oldest first.
pub async fn attempts_of(
    conn: &mut AnyConnection,
    webhook: &str,
    from_seq: i64,
) -> Result<Vec<AttemptRow>> {
    Ok(sqlx::query_as(
        "SELECT delivery_seq, at, status, error, latency_ms, response, host FROM delivery_attempts \
         WHERE webhook_id = $1 AND delivery_seq >= $2 ORDER BY seq",
    )
    .bind(webhook)
    .bind(from_seq)
    .fetch_all(conn)
    .await?)
}

/// Queues a delivery again now (a dead or delivered one is sent once more,
/// with the same message id).
pub async fn redeliver(
    conn: &mut AnyConnection,
    webhook: &str,
    seq: i64,
    now: i64,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE deliveries SET status = 'pending', next_at = $1, done_at = NULL \
         WHERE webhook_id = $2 AND seq = $3 AND status <> 'pending'",
    )
    .bind(now)
    .bind(webhook)
    .bind(seq)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

/// Deliveries waiting, and when the oldest of them was queued.
pub async fn delivery_backlog(conn: &mut AnyConnection) -> Result<(i64, Option<i64>)> {
    let row: (i64, Option<i64>) =
        sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM deliveries WHERE status = 'pending'")
            .fetch_one(conn)
            .await?;
    Ok(row)
}

/// Whether a dispatcher has anything to do now, read without taking the
/// writer (SQLite has one, and every host looks several times a second):
/// (a subscription has changes it has not queued, a delivery is due, a
/// subscription has been failing since before `failing_before`).
pub async fn dispatch_waiting(
    conn: &mut AnyConnection,
    now: i64,
    failing_before: i64,
) -> Result<(bool, bool, bool)> {
    let (new, due, failing): (i64, i64, i64) = sqlx::query_as(
        "SELECT \
           (SELECT COUNT(*) FROM (SELECT 1 FROM webhooks w WHERE w.enabled = 1 AND w.cursor < \
              (SELECT COALESCE(MAX(c.pos), 0) FROM changes c WHERE c.tenant_id = w.tenant_id) LIMIT 1) a), \
           (SELECT COUNT(*) FROM (SELECT 1 FROM deliveries WHERE status = 'pending' AND next_at <= $1 LIMIT 1) b), \
           (SELECT COUNT(*) FROM (SELECT 1 FROM webhooks WHERE enabled = 1 AND failing_since < $2 LIMIT 1) f)",
    )
    .bind(now)
    .bind(failing_before)
    .fetch_one(conn)
    .await?;
    Ok((new > 0, due > 0, failing > 0))
}
