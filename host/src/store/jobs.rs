//! Jobs (long dry-runs, bulk rescores) and the chunks of customers that hosts
//! claim to share a job's work. On PostgreSQL a chunk is claimed with
//! `FOR UPDATE SKIP LOCKED`, so two hosts never take the same one.

use super::{from_json, to_json, Backend, Result};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    pub id: String,
    pub kind: String,
    /// `running`, `done`, `done_with_failures` (a plugin failed on some
    /// customers; the others were done) or `failed`.
    pub status: String,
    pub params: serde_json::Value,
    pub done: i64,
    pub total: i64,
    /// Customers a plugin failed on (they keep what they had).
    pub failed: i64,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub async fn create_job(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
    kind: &str,
    params: &serde_json::Value,
    total: i64,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO jobs (id, tenant_id, kind, status, params, done, total, created_at, updated_at) \
         VALUES ($1, $2, $3, 'running', $4, 0, $5, $6, $6)",
    )
    .bind(id)
    .bind(tenant)
    .bind(kind)
    .bind(to_json(params))
    .bind(total)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A job of `tenant` (another tenant's job is not found).
pub async fn job(conn: &mut AnyConnection, tenant: &str, id: &str) -> Result<Option<Job>> {
    sqlx::query("SELECT * FROM jobs WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .fetch_optional(conn)
        .await?
        .map(|r| job_from_row(&r))
        .transpose()
}

/// The tenant's newest `limit` jobs, newest first.
pub async fn jobs(conn: &mut AnyConnection, tenant: &str, limit: i64) -> Result<Vec<Job>> {
    sqlx::query(
        "SELECT * FROM jobs WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(tenant)
    .bind(limit)
    .fetch_all(conn)
    .await?
    .iter()
    .map(job_from_row)
    .collect()
}

fn job_from_row(r: &sqlx::any::AnyRow) -> Result<Job> {
    let result: Option<String> = r.try_get("result")?;
    Ok(Job {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        status: r.try_get("status")?,
        params: from_json(&r.try_get::<String, _>("params")?)?,
        done: r.try_get("done")?,
        total: r.try_get("total")?,
        failed: r.try_get("failed")?,
        result: result.map(|s| from_json(&s)).transpose()?,
        error: r.try_get("error")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// Adds to a job's progress.
pub async fn add_progress(conn: &mut AnyConnection, id: &str, done: i64, at: i64) -> Result<()> {
    sqlx::query("UPDATE jobs SET done = done + $1, updated_at = $2 WHERE id = $3")
        .bind(done)
        .bind(at)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds customers a plugin failed on to a job's count.
pub async fn add_failed(conn: &mut AnyConnection, id: &str, failed: i64) -> Result<()> {
    sqlx::query("UPDATE jobs SET failed = failed + $1 WHERE id = $2")
        .bind(failed)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends a job with its result or error; a result with customers that failed
/// ends it as `done_with_failures`.
pub async fn finish_job(
    conn: &mut AnyConnection,
    id: &str,
    result: std::result::Result<&serde_json::Value, &str>,
    at: i64,
) -> Result<()> {
    let (status, result, error) = match result {
        Ok(v) if v["failed"].as_i64().is_some_and(|n| n > 0) => {
            ("done_with_failures", Some(to_json(v)), None)
        }
        Ok(v) => ("done", Some(to_json(v)), None),
        Err(e) => ("failed", None, Some(e.to_string())),
    };
    sqlx::query(
        "UPDATE jobs SET status = $1, result = $2, error = $3, updated_at = $4 WHERE id = $5",
    )
    .bind(status)
    .bind(result)
    .bind(error)
    .bind(at)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A range of customer ids, inclusive.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub chunk: i64,
    pub first_id: String,
    pub last_id: String,
    pub customers: i64,
}

/// Cuts the tenant's customers into chunks of `size` ids and stores them for `job`.
/// Returns the number of customers.
pub async fn create_chunks(
    conn: &mut AnyConnection,
    tenant: &str,
    job: &str,
    size: usize,
) -> Result<i64> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM customers WHERE tenant_id = $1 ORDER BY id")
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
    for (n, part) in ids.chunks(size.max(1)).enumerate() {
        sqlx::query(
            "INSERT INTO job_chunks (job_id, chunk, first_id, last_id, customers, status) VALUES ($1, $2, $3, $4, $5, 'pending')",
        )
        .bind(job)
        .bind(n as i64)
        .bind(&part[0])
        .bind(&part[part.len() - 1])
        .bind(part.len() as i64)
        .execute(&mut *conn)
        .await?;
    }
    Ok(ids.len() as i64)
}

/// Claims the next pending chunk of `job` (or one whose claim is older than
/// `stale_before`, left by a host that died), inside the caller's transaction.
/// `claim` names this claim alone (a host and a fresh id): the worker renews it
/// while it works ([`renew_claim`]) and completes the chunk only if it still
/// holds it ([`complete_chunk`]).
pub async fn claim_chunk(
    conn: &mut AnyConnection,
    backend: Backend,
    job: &str,
    claim: &str,
    now: i64,
    stale_before: i64,
) -> Result<Option<Chunk>> {
    let sql = match backend {
        Backend::Postgres => {
            "SELECT chunk, first_id, last_id, customers FROM job_chunks WHERE job_id = $1 \
             AND (status = 'pending' OR (status = 'claimed' AND claimed_at < $2)) \
             ORDER BY chunk LIMIT 1 FOR UPDATE SKIP LOCKED"
        }
        // SQLite has one writer at a time: the transaction itself is the lock.
        Backend::Sqlite => {
            "SELECT chunk, first_id, last_id, customers FROM job_chunks WHERE job_id = $1 \
             AND (status = 'pending' OR (status = 'claimed' AND claimed_at < $2)) \
             ORDER BY chunk LIMIT 1"
        }
    };
    let Some(r) = sqlx::query(sql)
        .bind(job)
        .bind(stale_before)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let c = Chunk {
        chunk: r.try_get("chunk")?,
        first_id: r.try_get("first_id")?,
        last_id: r.try_get("last_id")?,
        customers: r.try_get("customers")?,
    };
    sqlx::query("UPDATE job_chunks SET status = 'claimed', claimed_by = $1, claimed_at = $2 WHERE job_id = $3 AND chunk = $4")
        .bind(claim)
        .bind(now)
        .bind(job)
        .bind(c.chunk)
        .execute(conn)
        .await?;
    Ok(Some(c))
}

/// The heartbeat of a chunk being worked on: its claim is fresh again, so no
/// host takes it for one left by a dead host. `false` if the claim was lost.
pub async fn renew_claim(
    conn: &mut AnyConnection,
    job: &str,
    chunk: i64,
    claim: &str,
    now: i64,
) -> Result<bool> {
    let q = sqlx::query("UPDATE job_chunks SET claimed_at = $1 WHERE job_id = $2 AND chunk = $3 AND claimed_by = $4 AND status = 'claimed'");
    held(conn, q.bind(now), job, chunk, claim).await
}

/// Marks a chunk done with its failures (JSON), if `claim` still holds it;
/// `false` (nothing changed) if another host took it over meanwhile, in which
/// case the caller must not keep its writes.
pub async fn complete_chunk(
    conn: &mut AnyConnection,
    job: &str,
    chunk: i64,
    claim: &str,
    failures: Option<&serde_json::Value>,
) -> Result<bool> {
    let q = sqlx::query("UPDATE job_chunks SET status = 'done', failures = $1 WHERE job_id = $2 AND chunk = $3 AND claimed_by = $4 AND status = 'claimed'");
    held(conn, q.bind(failures.map(to_json)), job, chunk, claim).await
}

/// Runs an update of a chunk (its first parameter bound) that only the claim
/// holding it may make: whether it did.
async fn held<'q>(
    conn: &mut AnyConnection,
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    job: &'q str,
    chunk: i64,
    claim: &'q str,
) -> Result<bool> {
    let r = query
        .bind(job)
        .bind(chunk)
        .bind(claim)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// The failures its chunks recorded, in chunk order, at most `limit`.
pub async fn chunk_failures(
    conn: &mut AnyConnection,
    job: &str,
    limit: usize,
) -> Result<Vec<serde_json::Value>> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT failures FROM job_chunks WHERE job_id = $1 AND failures IS NOT NULL ORDER BY chunk",
    )
    .bind(job)
    .fetch_all(conn)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        if let serde_json::Value::Array(a) = from_json(&r)? {
            out.extend(a.into_iter().take(limit - out.len()));
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// Chunks of `job` not yet done.
pub async fn chunks_left(conn: &mut AnyConnection, job: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM job_chunks WHERE job_id = $1 AND status <> 'done'",
    )
    .bind(job)
    .fetch_one(conn)
    .await?)
}

/// Running jobs of a kind with chunks left, across tenants: (job id, tenant).
pub async fn open_chunked_jobs(
    conn: &mut AnyConnection,
    kind: &str,
) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT j.id, j.tenant_id FROM jobs j WHERE j.kind = $1 AND j.status = 'running' \
         AND EXISTS (SELECT 1 FROM job_chunks c WHERE c.job_id = j.id AND c.status <> 'done')",
    )
    .bind(kind)
    .fetch_all(conn)
    .await?)
}

/// Customer ids of a tenant in `[first, last]`, in order.
pub async fn customer_ids_between(
    conn: &mut AnyConnection,
    tenant: &str,
    first: &str,
    last: &str,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM customers WHERE tenant_id = $1 AND id >= $2 AND id <= $3 ORDER BY id",
    )
    .bind(tenant)
    .bind(first)
    .bind(last)
    .fetch_all(conn)
    .await?)
}

/// The first `limit` customer ids of a tenant (the dry-run sample), or all.
pub async fn customer_ids(
    conn: &mut AnyConnection,
    tenant: &str,
    limit: Option<i64>,
) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM customers WHERE tenant_id = $1 ORDER BY id LIMIT $2")
            .bind(tenant)
            .bind(limit.unwrap_or(i64::MAX))
            .fetch_all(conn)
            .await?,
    )
}
