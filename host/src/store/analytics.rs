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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentSize {
    pub plugin: String,
    pub segment: String,
    pub customers: i64,
}

pub async fn segment_sizes(conn: &mut AnyConnection, tenant: &str) -> Result<Vec<SegmentSize>> {
    sqlx::query(
        "SELECT plugin, segment, CAST(COUNT(*) AS BIGINT) AS n FROM memberships WHERE tenant_id = $1 \
         GROUP BY plugin, segment ORDER BY plugin, segment",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| {
        Ok(SegmentSize {
            plugin: r.try_get("plugin")?,
            segment: r.try_get("segment")?,
            customers: r.try_get("n")?,
        })
    })
    .collect()
}

/// How one plugin's scores are spread.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreDistribution {
    pub plugin: String,
    pub customers: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Customers per band (`null` for scores without a band).
    pub bands: Vec<(Option<String>, i64)>,
}

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
        });
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
