//! Set-at-a-time reads and writes for bulk work (rescore, dry-run): a chunk of
//! customers in a handful of statements rather than a handful per customer.
//! Each statement costs a round trip (for SQLite, to sqlx's worker thread), and
//! that, not the plugins, is what bulk work spends its time on.
//!
//! The results are the same as the one-customer functions give
//! (`load_customer` + `touchpoints_90d` + `recent_events`, `save_score`,
//! `replace_memberships`); `host/tests/registry.rs` checks a rescore against a
//! native computation.

use super::customers::{customer_from_row, field_from_row};
use super::events::event_from_row;
use super::{to_json, RenderedReason, Result, StoredScore};
use crate::model::{CustomerRecord, EventRecord};
use sqlx::{AnyConnection, Row};
use stagecraft_plugin::snapshot::DAY_MS;
use std::collections::HashMap;

/// Rows per multi-row statement: well under both databases' parameter limits,
/// and short enough that binding (quadratic in sqlx's SQLite driver) stays cheap.
const ROWS_PER_STATEMENT: usize = 64;
/// Rows per multi-row INSERT (each row binds 6-8 parameters).
const INSERT_ROWS: usize = 24;

/// `$first, $first+1, ...` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sql` with the tenant as `$1` and `ids` as `$2...`.
fn with_ids<'q>(
    sql: &'q str,
    tenant: &'q str,
    ids: &'q [String],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    ids.iter()
        .fold(sqlx::query(sql).bind(tenant), |q, id| q.bind(id))
}

/// `($1, ..., $width), ($width+1, ...)` for `rows` rows of a multi-row INSERT.
fn value_rows(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|i| format!("({})", placeholders(1 + i * width, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The customers `ids` (those that exist, in the order given), each with its
/// fields, tags, segments, 90-day touchpoints as of `now`, and its `recent`
/// latest events (newest first): six statements for the whole chunk.
pub async fn load_customers(
    conn: &mut AnyConnection,
    tenant: &str,
    ids: &[String],
    now: i64,
    recent: i64,
) -> Result<Vec<(CustomerRecord, Vec<EventRecord>)>> {
    if ids.len() > ROWS_PER_STATEMENT {
        // sqlx binds `$n` parameters by name, a cost that grows with the square of
        // their number: long lists go in parts.
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(ROWS_PER_STATEMENT) {
            out.extend(Box::pin(load_customers(conn, tenant, part, now, recent)).await?);
        }
        return Ok(out);
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let list = placeholders(2, ids.len());
    let mut by_id: HashMap<String, (CustomerRecord, Vec<EventRecord>)> = HashMap::new();

    let sql = format!("SELECT * FROM customers WHERE tenant_id = $1 AND id IN ({list})");
    for row in with_ids(&sql, tenant, ids).fetch_all(&mut *conn).await? {
        let c = customer_from_row(&row)?;
        by_id.insert(c.id.clone(), (c, Vec::new()));
    }

    let sql = format!(
        "SELECT customer_id, key, value, sensitive FROM customer_fields \
         WHERE tenant_id = $1 AND customer_id IN ({list}) ORDER BY customer_id, key"
    );
    for row in with_ids(&sql, tenant, ids).fetch_all(&mut *conn).await? {
        let id: String = row.try_get("customer_id")?;
        if let Some((c, _)) = by_id.get_mut(&id) {
            c.fields.push(field_from_row(&row)?);
        }
    }

    let sql = format!(
        "SELECT customer_id, tag FROM customer_tags WHERE tenant_id = $1 AND customer_id IN ({list}) \
         ORDER BY customer_id, tag"
    );
    for row in with_ids(&sql, tenant, ids).fetch_all(&mut *conn).await? {
        let id: String = row.try_get("customer_id")?;
        if let Some((c, _)) = by_id.get_mut(&id) {
            c.tags.push(row.try_get("tag")?);
        }
    }

    let sql = format!(
        "SELECT customer_id, segment FROM memberships WHERE tenant_id = $1 AND customer_id IN ({list})"
    );
    for row in with_ids(&sql, tenant, ids).fetch_all(&mut *conn).await? {
        let id: String = row.try_get("customer_id")?;
        if let Some((c, _)) = by_id.get_mut(&id) {
            c.segments.push(row.try_get("segment")?);
        }
    }

    let n = ids.len();
    let sql = format!(
        "SELECT customer_id, CAST(COUNT(*) AS BIGINT) AS n FROM events \
         WHERE tenant_id = $1 AND customer_id IN ({list}) AND at > ${} AND at <= ${} GROUP BY customer_id",
        n + 2,
        n + 3
    );
    for row in with_ids(&sql, tenant, ids)
        .bind(now - 90 * DAY_MS)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?
    {
        let id: String = row.try_get("customer_id")?;
        if let Some((c, _)) = by_id.get_mut(&id) {
            c.metrics.touchpoints_90d = row.try_get::<i64, _>("n")? as u32;
        }
    }

    let sql = format!(
        "SELECT customer_id, id, kind, channel, at, amount_cents, fields FROM ( \
           SELECT customer_id, id, kind, channel, at, amount_cents, fields, \
                  ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY at DESC, seq DESC) AS rn \
           FROM events WHERE tenant_id = $1 AND customer_id IN ({list})) latest \
         WHERE rn <= ${} ORDER BY customer_id, rn",
        n + 2
    );
    for row in with_ids(&sql, tenant, ids)
        .bind(recent)
        .fetch_all(&mut *conn)
        .await?
    {
        let id: String = row.try_get("customer_id")?;
        if let Some((_, events)) = by_id.get_mut(&id) {
            events.push(event_from_row(&row)?);
        }
    }

    Ok(ids
        .iter()
        .filter_map(|id| by_id.remove(id))
        .map(|(mut c, ev)| {
            c.segments.sort();
            c.segments.dedup();
            (c, ev)
        })
        .collect())
}

/// Stores one plugin's scores for many customers (`(customer, score)`, every
/// score of the same plugin), with a history row only where the value or band
/// changed, as [`super::save_score`] does for one.
pub async fn save_scores(
    conn: &mut AnyConnection,
    tenant: &str,
    rows: &[(String, StoredScore)],
) -> Result<()> {
    for part in rows.chunks(INSERT_ROWS) {
        let plugin = &part[0].1.plugin;
        debug_assert!(part.iter().all(|(_, s)| &s.plugin == plugin));
        let sql = format!(
            "SELECT customer_id, value, band FROM scores WHERE tenant_id = $1 AND plugin = $2 \
             AND customer_id IN ({})",
            placeholders(3, part.len())
        );
        let mut q = sqlx::query(&sql).bind(tenant).bind(plugin);
        for (id, _) in part {
            q = q.bind(id);
        }
        let mut before: HashMap<String, (f64, Option<String>)> = HashMap::new();
        for r in q.fetch_all(&mut *conn).await? {
            before.insert(
                r.try_get("customer_id")?,
                (r.try_get("value")?, r.try_get("band")?),
            );
        }
        let reasons: Vec<String> = part.iter().map(|(_, s)| to_json(&s.reasons)).collect();

        let values = value_rows(part.len(), 8);
        let sql = format!(
            "INSERT INTO scores (tenant_id, customer_id, plugin, plugin_version, value, band, reasons, updated_at) \
             VALUES {values} ON CONFLICT (tenant_id, customer_id, plugin) DO UPDATE SET \
             plugin_version = excluded.plugin_version, value = excluded.value, band = excluded.band, \
             reasons = excluded.reasons, updated_at = excluded.updated_at"
        );
        let mut q = sqlx::query(&sql);
        for ((id, s), r) in part.iter().zip(&reasons) {
            q = q
                .bind(tenant)
                .bind(id)
                .bind(&s.plugin)
                .bind(&s.plugin_version)
                .bind(s.value)
                .bind(&s.band)
                .bind(r)
                .bind(s.updated_at);
        }
        q.execute(&mut *conn).await?;

        let changed: Vec<usize> = (0..part.len())
            .filter(|&i| {
                let (id, s) = &part[i];
                before
                    .get(id)
                    .is_none_or(|(v, b)| *v != s.value || *b != s.band)
            })
            .collect();
        if changed.is_empty() {
            continue;
        }
        let values = value_rows(changed.len(), 8);
        let sql = format!(
            "INSERT INTO score_history (tenant_id, customer_id, plugin, plugin_version, value, band, reasons, at) \
             VALUES {values}"
        );
        let mut q = sqlx::query(&sql);
        for &i in &changed {
            let (id, s) = &part[i];
            q = q
                .bind(tenant)
                .bind(id)
                .bind(&s.plugin)
                .bind(&s.plugin_version)
                .bind(s.value)
                .bind(&s.band)
                .bind(&reasons[i])
                .bind(s.updated_at);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Sets one plugin's segments of many customers (`(customer, segments)`), as
/// [`super::replace_memberships`] does for one: memberships that end are
/// deleted, `since` stays for those that go on, reasons follow the latest.
pub async fn replace_memberships_of_many(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
    rows: &[(String, Vec<(String, RenderedReason)>)],
    at: i64,
) -> Result<()> {
    for part in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT customer_id, segment FROM memberships WHERE tenant_id = $1 AND plugin = $2 \
             AND customer_id IN ({})",
            placeholders(3, part.len())
        );
        let mut q = sqlx::query(&sql).bind(tenant).bind(plugin);
        for (id, _) in part {
            q = q.bind(id);
        }
        let mut left: Vec<(String, String)> = Vec::new();
        for r in q.fetch_all(&mut *conn).await? {
            let (id, segment): (String, String) =
                (r.try_get("customer_id")?, r.try_get("segment")?);
            let stays = part
                .iter()
                .any(|(c, segs)| *c == id && segs.iter().any(|(s, _)| *s == segment));
            if !stays {
                left.push((id, segment));
            }
        }
        if !left.is_empty() {
            let pairs = (0..left.len())
                .map(|i| {
                    format!(
                        "(customer_id = ${} AND segment = ${})",
                        3 + 2 * i,
                        4 + 2 * i
                    )
                })
                .collect::<Vec<_>>()
                .join(" OR ");
            let sql = format!(
                "DELETE FROM memberships WHERE tenant_id = $1 AND plugin = $2 AND ({pairs})"
            );
            let mut q = sqlx::query(&sql).bind(tenant).bind(plugin);
            for (id, segment) in &left {
                q = q.bind(id).bind(segment);
            }
            q.execute(&mut *conn).await?;
        }
        // One row per (customer, segment), even if a plugin named a segment twice.
        let mut now: Vec<(&str, &str, String)> = Vec::new();
        for (id, segs) in part {
            for (s, reason) in segs {
                if !now.iter().any(|(c, x, _)| c == id && x == s) {
                    now.push((id, s, to_json(reason)));
                }
            }
        }
        for chunk in now.chunks(INSERT_ROWS) {
            let values = value_rows(chunk.len(), 6);
            let sql = format!(
                "INSERT INTO memberships (tenant_id, customer_id, plugin, segment, reason, since) VALUES {values} \
                 ON CONFLICT (tenant_id, customer_id, plugin, segment) DO UPDATE SET reason = excluded.reason"
            );
            let mut q = sqlx::query(&sql);
            for (id, s, reason) in chunk {
                q = q
                    .bind(tenant)
                    .bind(*id)
                    .bind(plugin)
                    .bind(*s)
                    .bind(reason)
                    .bind(at);
            }
            q.execute(&mut *conn).await?;
        }
    }
    Ok(())
}
