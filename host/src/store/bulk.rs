//! Set-at-a-time reads and writes for bulk work (rescore, dry-run): a chunk of
//! customers in a handful of statements rather than a handful per customer.
//! Each statement costs a round trip (for SQLite, to sqlx's worker thread), and
//! that, not the plugins, is what bulk work spends its time on.
//!
//! The results are the same as the one-customer functions give
//! (`load_customer` + `touchpoints_90d` + `recent_events`); the writers serve
//! both bulk work and the event pipeline, which stores every plugin's scores and
//! segments of one customer at once. `host/tests/registry.rs` checks a rescore
//! against a native computation.

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
         WHERE tenant_id = $1 AND customer_id IN ({list})"
    );
    for row in with_ids(&sql, tenant, ids).fetch_all(&mut *conn).await? {
        let id: String = row.try_get("customer_id")?;
        if let Some((c, _)) = by_id.get_mut(&id) {
            c.fields.push(field_from_row(&row)?);
        }
    }

    let sql = format!(
        "SELECT customer_id, tag FROM customer_tags WHERE tenant_id = $1 AND customer_id IN ({list})"
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
            // Byte order, as `load_customer` gives, whatever the database's collation.
            c.fields.sort_by(|a, b| a.key.cmp(&b.key));
            c.tags.sort();
            c.segments.sort();
            c.segments.dedup();
            (c, ev)
        })
        .collect())
}

/// Distinct values of `items`, in first-seen order.
fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// `tenant_id = $1 AND customer_id IN (...) AND plugin IN (...)` for the distinct
/// customers and plugins of a chunk, and the query binding them. The cross product
/// may name pairs the chunk lacks; callers match rows back by (customer, plugin).
fn by_customer_and_plugin<'q>(
    select: &str,
    tenant: &'q str,
    customers: &[&'q str],
    plugins: &[&'q str],
) -> (String, Vec<&'q str>) {
    let sql = format!(
        "{select} WHERE tenant_id = $1 AND customer_id IN ({}) AND plugin IN ({})",
        placeholders(2, customers.len()),
        placeholders(2 + customers.len(), plugins.len())
    );
    let mut binds = vec![tenant];
    binds.extend(customers);
    binds.extend(plugins);
    (sql, binds)
}

/// Stores scores (`(customer, score)`, each (customer, plugin) at most once), with
/// a history row (naming `event_id`, if any) only where the value or band changed.
/// Returns each row's previous (value, band), in order: the event pipeline stores
/// every plugin's score of one customer at once, a rescore one plugin's of many.
pub async fn save_scores(
    conn: &mut AnyConnection,
    tenant: &str,
    rows: &[(String, StoredScore)],
    event_id: Option<&str>,
) -> Result<Vec<Option<(f64, Option<String>)>>> {
    let mut previous = Vec::with_capacity(rows.len());
    for part in rows.chunks(INSERT_ROWS) {
        let (sql, binds) = by_customer_and_plugin(
            "SELECT customer_id, plugin, value, band FROM scores",
            tenant,
            &distinct(part.iter().map(|(id, _)| id.as_str())),
            &distinct(part.iter().map(|(_, s)| s.plugin.as_str())),
        );
        let mut before: HashMap<(String, String), (f64, Option<String>)> = HashMap::new();
        let q = binds.iter().fold(sqlx::query(&sql), |q, b| q.bind(*b));
        for r in q.fetch_all(&mut *conn).await? {
            before.insert(
                (r.try_get("customer_id")?, r.try_get("plugin")?),
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

        let first = previous.len();
        previous.extend(
            part.iter()
                .map(|(id, s)| before.remove(&(id.clone(), s.plugin.clone()))),
        );
        let changed: Vec<usize> = (0..part.len())
            .filter(|&i| {
                let s = &part[i].1;
                previous[first + i]
                    .as_ref()
                    .is_none_or(|(v, b)| *v != s.value || *b != s.band)
            })
            .collect();
        if changed.is_empty() {
            continue;
        }
        let values = value_rows(changed.len(), 9);
        let sql = format!(
            "INSERT INTO score_history (tenant_id, customer_id, plugin, plugin_version, value, band, reasons, event_id, at) \
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
                .bind(event_id)
                .bind(s.updated_at);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(previous)
}

/// The segments one plugin puts one customer in.
#[derive(Debug, Clone)]
pub struct SegmentSet {
    pub customer: String,
    pub plugin: String,
    pub segments: Vec<(String, RenderedReason)>,
}

/// Sets segments (each (customer, plugin) at most once): memberships that end
/// are deleted, `since` stays for those that go on, reasons follow the latest.
/// Returns each row's (joined, left) segments, in order.
pub async fn replace_memberships(
    conn: &mut AnyConnection,
    tenant: &str,
    rows: &[SegmentSet],
    at: i64,
) -> Result<Vec<(Vec<String>, Vec<String>)>> {
    let mut changes = Vec::with_capacity(rows.len());
    for part in rows.chunks(ROWS_PER_STATEMENT) {
        let (sql, binds) = by_customer_and_plugin(
            "SELECT customer_id, plugin, segment FROM memberships",
            tenant,
            &distinct(part.iter().map(|r| r.customer.as_str())),
            &distinct(part.iter().map(|r| r.plugin.as_str())),
        );
        let mut before: HashMap<(String, String), Vec<String>> = HashMap::new();
        let q = binds.iter().fold(sqlx::query(&sql), |q, b| q.bind(*b));
        for r in q.fetch_all(&mut *conn).await? {
            before
                .entry((r.try_get("customer_id")?, r.try_get("plugin")?))
                .or_default()
                .push(r.try_get("segment")?);
        }
        // (customer, plugin, segment) rows to delete.
        let mut ended: Vec<(&str, &str, String)> = Vec::new();
        for row in part {
            let was = before
                .remove(&(row.customer.clone(), row.plugin.clone()))
                .unwrap_or_default();
            let is = |s: &String| row.segments.iter().any(|(x, _)| x == s);
            let left: Vec<String> = was.iter().filter(|s| !is(s)).cloned().collect();
            let mut joined: Vec<String> = Vec::new();
            for (s, _) in &row.segments {
                if !was.contains(s) && !joined.contains(s) {
                    joined.push(s.clone());
                }
            }
            ended.extend(
                left.iter()
                    .map(|s| (row.customer.as_str(), row.plugin.as_str(), s.clone())),
            );
            changes.push((joined, left));
        }
        if !ended.is_empty() {
            let triples = (0..ended.len())
                .map(|i| {
                    format!(
                        "(customer_id = ${} AND plugin = ${} AND segment = ${})",
                        2 + 3 * i,
                        3 + 3 * i,
                        4 + 3 * i
                    )
                })
                .collect::<Vec<_>>()
                .join(" OR ");
            let sql = format!("DELETE FROM memberships WHERE tenant_id = $1 AND ({triples})");
            let mut q = sqlx::query(&sql).bind(tenant);
            for (id, plugin, segment) in &ended {
                q = q.bind(*id).bind(*plugin).bind(segment);
            }
            q.execute(&mut *conn).await?;
        }
        // One row per (customer, plugin, segment), even if a plugin named a segment twice.
        let mut now: Vec<(&str, &str, &str, String)> = Vec::new();
        for row in part {
            for (s, reason) in &row.segments {
                if !now
                    .iter()
                    .any(|(c, p, x, _)| *c == row.customer && *p == row.plugin && x == s)
                {
                    now.push((&row.customer, &row.plugin, s, to_json(reason)));
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
            for (id, plugin, s, reason) in chunk {
                q = q
                    .bind(tenant)
                    .bind(*id)
                    .bind(*plugin)
                    .bind(*s)
                    .bind(reason)
                    .bind(at);
            }
            q.execute(&mut *conn).await?;
        }
    }
    Ok(changes)
}
