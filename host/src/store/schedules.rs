//! Schedules per tenant (cron expressions that start jobs), and the one step
//! that runs an occurrence: [`advance_schedule`] moves `next_at` on only if it
//! is still the occurrence the caller read, inside the transaction that creates
//! the occurrence's job, so one host runs each occurrence.

use super::{Backend, Result};
use serde::Serialize;
use sqlx::AnyConnection;

/// A schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Schedule {
    pub id: String,
    /// The cron expression (UTC).
    pub cron: String,
    /// What each occurrence starts: `rescore`.
    pub kind: String,
    /// The next occurrence not yet run.
    pub next_at: i64,
    /// The occurrence last run, and the job it started.
    pub last_at: Option<i64>,
    pub last_job: Option<String>,
    /// How many occurrences ran (missed ones run once together).
    pub runs: i64,
    pub created_at: i64,
    pub created_by: String,
}

/// A schedule's row with its tenant, for the worker.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueSchedule {
    pub tenant_id: String,
    pub id: String,
    pub cron: String,
    pub kind: String,
    pub next_at: i64,
}

pub async fn create_schedule(conn: &mut AnyConnection, tenant: &str, s: &Schedule) -> Result<()> {
    sqlx::query(
        "INSERT INTO schedules (id, tenant_id, cron, kind, next_at, runs, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5, 0, $6, $7)",
    )
    .bind(&s.id)
    .bind(tenant)
    .bind(&s.cron)
    .bind(&s.kind)
    .bind(s.next_at)
    .bind(s.created_at)
    .bind(&s.created_by)
    .execute(conn)
    .await?;
    Ok(())
}

const COLUMNS: &str = "id, cron, kind, next_at, last_at, last_job, runs, created_at, created_by";

/// The tenant's schedules, oldest first.
pub async fn schedules(conn: &mut AnyConnection, tenant: &str) -> Result<Vec<Schedule>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE tenant_id = $1 ORDER BY created_at, id"
    ))
    .bind(tenant)
    .fetch_all(conn)
    .await?)
}

pub async fn schedule(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
) -> Result<Option<Schedule>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Deletes a schedule; `false` if the tenant has none with that id.
pub async fn delete_schedule(conn: &mut AnyConnection, tenant: &str, id: &str) -> Result<bool> {
    Ok(
        sqlx::query("DELETE FROM schedules WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(conn)
            .await?
            .rows_affected()
            == 1,
    )
}

/// The schedule due soonest at `now` (any tenant), locked for the caller's
/// transaction on PostgreSQL (others skip it).
pub async fn next_due_schedule(
    conn: &mut AnyConnection,
    backend: Backend,
    now: i64,
) -> Result<Option<DueSchedule>> {
    let lock = match backend {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    Ok(sqlx::query_as(&format!(
        "SELECT tenant_id, id, cron, kind, next_at FROM schedules WHERE next_at <= $1 \
         ORDER BY next_at LIMIT 1 {lock}"
    ))
    .bind(now)
    .fetch_optional(conn)
    .await?)
}

/// Records that the occurrence `ran` (the one last due) started `job`, and sets
/// the next to `next`, if `s.next_at` is still what the caller read: `false`
/// if another host ran it first (the caller rolls back).
pub async fn advance_schedule(
    conn: &mut AnyConnection,
    s: &DueSchedule,
    ran: i64,
    job: &str,
    next: i64,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE schedules SET next_at = $1, last_at = $2, last_job = $3, runs = runs + 1 \
         WHERE tenant_id = $4 AND id = $5 AND next_at = $6",
    )
    .bind(next)
    .bind(ran)
    .bind(job)
    .bind(&s.tenant_id)
    .bind(&s.id)
    .bind(s.next_at)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}
