//! Counts for the analytics routes: the stage funnel, segment sizes and score
//! distributions. Everything is computed in the database.

use super::Result;
use serde::Serialize;
use sqlx::{AnyConnection, Row};

/// Customers per stage (`None`: no stage yet).
pub async fn stage_counts(
    conn: &mut AnyConnection,
    tenant: &str,
) -> Result<Vec<(Option<String>, i64)>> {
    sqlx::query(
        "SELECT stage, CAST(COUNT(*) AS BIGINT) AS n FROM customers WHERE tenant_id = $1 GROUP BY stage",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("stage")?, r.try_get("n")?)))
    .collect()
}

/// Members per (plugin, segment).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct SegmentSize {
    pub plugin: String,
    pub segment: String,
    pub customers: i64,
}

pub async fn segment_sizes(conn: &mut AnyConnection, tenant: &str) -> Result<Vec<SegmentSize>> {
    Ok(sqlx::query_as(
        "SELECT plugin, segment, CAST(COUNT(*) AS BIGINT) AS customers FROM memberships \
         WHERE tenant_id = $1 GROUP BY plugin, segment ORDER BY plugin, segment",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?)
}

/// How one plugin's scores are spread.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ScoreDistribution {
    pub plugin: String,
    pub customers: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Customers per band (`null` for scores without a band).
    pub bands: Vec<(Option<String>, i64)>,
    /// Customers per equal-width bucket from `min` to `max` ([`HISTOGRAM_BUCKETS`]
    /// of them; the last includes `max`; one bucket when all scores are equal).
    pub histogram: Vec<i64>,
}

pub const HISTOGRAM_BUCKETS: usize = 10;

pub async fn score_distributions(
    conn: &mut AnyConnection,
    tenant: &str,
) -> Result<Vec<ScoreDistribution>> {
    let mut out: Vec<ScoreDistribution> = Vec::new();
    for r in sqlx::query(
        "SELECT plugin, CAST(COUNT(*) AS BIGINT) AS n, MIN(value) AS lo, MAX(value) AS hi, AVG(value) AS mean \
         FROM scores WHERE tenant_id = $1 GROUP BY plugin ORDER BY plugin",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?
    {
        out.push(ScoreDistribution {
            plugin: r.try_get("plugin")?,
            customers: r.try_get("n")?,
            min: r.try_get("lo")?,
            max: r.try_get("hi")?,
            mean: r.try_get("mean")?,
            bands: Vec::new(),
            histogram: Vec::new(),
        });
    }
    for d in &mut out {
        d.histogram = histogram(conn, tenant, &d.plugin, d.min, d.max).await?;
    }
    for r in sqlx::query(
        "SELECT plugin, band, CAST(COUNT(*) AS BIGINT) AS n FROM scores WHERE tenant_id = $1 \
         GROUP BY plugin, band ORDER BY plugin, band",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?
    {
        let plugin: String = r.try_get("plugin")?;
        if let Some(d) = out.iter_mut().find(|d| d.plugin == plugin) {
            d.bands.push((r.try_get("band")?, r.try_get("n")?));
        }
    }
    Ok(out)
}

/// Customers per bucket, by conditional aggregation (one portable statement;
/// bucket edges are bound as numbers).
async fn histogram(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
    min: f64,
    max: f64,
) -> Result<Vec<i64>> {
    let n = if max > min { HISTOGRAM_BUCKETS } else { 1 };
    let width = (max - min) / n as f64;
    let columns: Vec<String> = (0..n)
        .map(|i| {
            let (lo, hi) = (3 + 2 * i, 4 + 2 * i);
            let upper = if i + 1 == n { "<=" } else { "<" };
            format!("CAST(SUM(CASE WHEN value >= ${lo} AND value {upper} ${hi} THEN 1 ELSE 0 END) AS BIGINT) AS b{i}")
        })
        .collect();
    let sql = format!(
        "SELECT {} FROM scores WHERE tenant_id = $1 AND plugin = $2",
        columns.join(", ")
    );
    let mut q = sqlx::query(&sql).bind(tenant).bind(plugin);
    for i in 0..n {
        let lo = min + width * i as f64;
        let hi = if i + 1 == n {
            max
        } else {
            min + width * (i + 1) as f64
        };
        q = q.bind(lo).bind(hi);
    }
    let row = q.fetch_one(conn).await?;
    (0..n)
        .map(|i| Ok(row.try_get::<Option<i64>, _>(i)?.unwrap_or(0)))
        .collect()
}

/// Open follow-ups due at or before `until`.
pub async fn follow_ups_due(conn: &mut AnyConnection, tenant: &str, until: i64) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM follow_ups WHERE tenant_id = $1 AND status = 'open' AND due_at <= $2",
    )
    .bind(tenant)
    .bind(until)
    .fetch_one(conn)
    .await?)
}
