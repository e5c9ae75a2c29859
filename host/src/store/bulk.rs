//! Set-at-a-time reads and writes for bulk work (rescore, dry-run): a chunk of
//! customers in a handful of statements rather than a handful per customer.
//! Each statement costs a round trip (for SQLite, to sqlx's worker thread), and
//! that, not the plugins, is what bulk work spends its time on.
//!
//! A chunk is one statement per table, not one per 64 rows (~250 statements for
//! 500 customers before). Lists of ids go in as one JSON parameter (`json_each`
//! in SQLite, `json_array_elements_text` in PostgreSQL). Rows go in as multi-row
//! `VALUES` with plain `?` placeholders in SQLite: sqlx's SQLite driver looks a
//! named `$n` up by name, a cost quadratic in their number; and rows passed as
//! JSON would be parsed once per column (2.3x slower with a score's ~600 bytes
//! of reasons, measured with SQLite alone).
//!
//! The results are the same as the one-customer functions give
//! (`load_customer` + `touchpoints_90d` + `recent_events`); the writers serve
//! both bulk work and the event pipeline, which stores every plugin's scores and
//! segments of one customer at once. `host/tests/registry.rs` checks a rescore
//! against a native computation.

use super::batch::{question_rows, Batch, Bind};
use super::customers::{customer_from_row, field_from_row};
use super::events::event_from_row;
use super::{to_json, RenderedReason, Result, StageMove, StoredScore};
use crate::domain::{CustomerRecord, EventRecord};
use sqlx::{AnyConnection, Row};
use stagecraft_plugin::snapshot::DAY_MS;
use std::collections::{HashMap, HashSet};

/// Rows per multi-row statement: a rescore chunk's rows in one statement.
const ROWS_PER_INSERT: usize = super::batch::MAX_ROWS;

/// A JSON array of strings `$n` as a subquery, for `x IN (...)`.
pub(super) fn json_list(conn: &AnyConnection, n: usize) -> String {
    if is_postgres(conn) {
        format!("SELECT value FROM json_array_elements_text(${n}::json) AS l(value)")
    } else {
        format!("SELECT value FROM json_each(${n})")
    }
}

fn is_postgres(conn: &AnyConnection) -> bool {
    conn.backend_name() == "PostgreSQL"
}

/// The customers `ids` (those that exist, in the order given), each with its
/// fields, tags, segments, 90-day touchpoints as of `now`, and its `recent`
/// latest events (newest first): six statements for the whole chunk, the ids
/// passed as one JSON parameter.
pub async fn load_customers(
    conn: &mut AnyConnection,
    tenant: &str,
    ids: &[String],
    now: i64,
    recent: i64,
) -> Result<Vec<(CustomerRecord, Vec<EventRecord>)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let list = json_list(conn, 2);
    let ids_json = to_json(&ids);
    let mut by_id: HashMap<String, (CustomerRecord, Vec<EventRecord>)> = HashMap::new();

    let sql = format!("SELECT * FROM customers WHERE tenant_id = $1 AND id IN ({list})");
    for row in by_ids(&sql, tenant, &ids_json)
        .fetch_all(&mut *conn)
        .await?
    {
        let c = customer_from_row(&row)?;
        by_id.insert(c.id.clone(), (c, Vec::new()));
    }

    let sql = format!(
        "SELECT customer_id, key, value, sensitive FROM customer_fields \
         WHERE tenant_id = $1 AND customer_id IN ({list})"
    );
    for row in by_ids(&sql, tenant, &ids_json)
        .fetch_all(&mut *conn)
        .await?
    {
        let id: String = row.try_get("customer_id")?;
        if let Some((c, _)) = by_id.get_mut(&id) {
            c.fields.push(field_from_row(&row)?);
        }
    }

    let sql = format!(
        "SELECT customer_id, tag FROM customer_tags WHERE tenant_id = $1 AND customer_id IN ({list})"
    );
    for row in by_ids(&sql, tenant, &ids_json)
        .fetch_all(&mut *conn)
        .await?
    {
        let id: String = row.try_get("customer_id")?;
        if let Some((c, _)) = by_id.get_mut(&id) {
            c.tags.push(row.try_get("tag")?);
        }
    }

    let sql = format!(
        "SELECT customer_id, segment FROM memberships WHERE tenant_id = $1 AND customer_id IN ({list})"
    );
    for row in by_ids(&sql, tenant, &ids_json)
        .fetch_all(&mut *conn)
        .await?
    {
        let id: String = row.try_get("customer_id")?;
        if let Some((c, _)) = by_id.get_mut(&id) {
            c.segments.push(row.try_get("segment")?);
        }
    }

    let sql = format!(
        "SELECT customer_id, CAST(COUNT(*) AS BIGINT) AS n FROM events \
         WHERE tenant_id = $1 AND customer_id IN ({list}) AND at > $3 AND at <= $4 GROUP BY customer_id"
    );
    for row in by_ids(&sql, tenant, &ids_json)
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
         WHERE rn <= $3 ORDER BY customer_id, rn"
    );
    for row in by_ids(&sql, tenant, &ids_json)
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

/// `sql` with the tenant as `$1` and the JSON list of ids as `$2`.
fn by_ids<'q>(
    sql: &'q str,
    tenant: &'q str,
    ids_json: &'q str,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(sql).bind(tenant).bind(ids_json)
}

/// Distinct values of `items`, in first-seen order.
fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    items.filter(|i| seen.insert(*i)).collect()
}

/// The rows `select` reads, filtered by tenant and by the distinct customers and
/// plugins of `pairs`. The cross
/// product may name pairs not asked for; callers match rows back by (customer, plugin).
async fn rows_of_pairs<'a>(
    conn: &mut AnyConnection,
    select: &str,
    tenant: &str,
    pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) -> Result<Vec<sqlx::any::AnyRow>> {
    let sql = format!(
        "{select} WHERE tenant_id = $1 AND customer_id IN ({}) AND plugin IN ({})",
        json_list(conn, 2),
        json_list(conn, 3)
    );
    Ok(sqlx::query(&sql)
        .bind(tenant)
        .bind(to_json(&distinct(pairs.clone().map(|(c, _)| c))))
        .bind(to_json(&distinct(pairs.map(|(_, p)| p))))
        .fetch_all(conn)
        .await?)
}

/// Stored scores, (value, band) by (customer, plugin).
pub type ScoresBefore = HashMap<(String, String), (f64, Option<String>)>;
/// Current segments by (customer, plugin).
pub type SegmentsBefore = HashMap<(String, String), Vec<String>>;

/// Stores scores (`(customer, score)`, each (customer, plugin) at most once), with
/// a history row (naming `event_id`, if any) only where the value or band changed.
/// Returns each row's previous (value, band), in order: the event pipeline stores
/// every plugin's score of one customer at once, a rescore one plugin's of many.
/// It reads the previous scores now, in one statement, and leaves the writes (two
/// statements for up to a thousand rows) in `batch`, which the caller runs with
/// its other writes later in the same transaction.
pub async fn queue_scores(
    conn: &mut AnyConnection,
    batch: &mut Batch,
    tenant: &str,
    rows: &[(String, StoredScore)],
    event_id: Option<&str>,
) -> Result<Vec<Option<(f64, Option<String>)>>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut before = ScoresBefore::new();
    let pairs = rows.iter().map(|(id, s)| (id.as_str(), s.plugin.as_str()));
    for r in rows_of_pairs(
        conn,
        "SELECT customer_id, plugin, value, band FROM scores",
        tenant,
        pairs,
    )
    .await?
    {
        before.insert(
            (r.try_get("customer_id")?, r.try_get("plugin")?),
            (r.try_get("value")?, r.try_get("band")?),
        );
    }
    Ok(queue_scores_over(batch, tenant, before, rows, event_id))
}

/// [`queue_scores`] over `before`, the stored scores the caller has read already
/// (at least those of `rows`' customers and plugins).
pub fn queue_scores_over(
    batch: &mut Batch,
    tenant: &str,
    mut before: ScoresBefore,
    rows: &[(String, StoredScore)],
    event_id: Option<&str>,
) -> Vec<Option<(f64, Option<String>)>> {
    // Large rows (a score's rendered reasons are ~600 bytes) go in as bound
    // values, not JSON: SQLite would parse the JSON row once per column.
    let reasons: Vec<String> = rows.iter().map(|(_, s)| to_json(&s.reasons)).collect();
    if !rows.is_empty() {
        let mut binds = Vec::with_capacity(rows.len() * 8);
        for ((id, s), r) in rows.iter().zip(&reasons) {
            binds.extend(score_binds(tenant, id, s, r));
            binds.push(s.updated_at.into());
        }
        batch.push_rows(
            "INSERT INTO scores (tenant_id, customer_id, plugin, plugin_version, value, band, reasons, updated_at) \
             VALUES ",
            8,
            " ON CONFLICT (tenant_id, customer_id, plugin) DO UPDATE SET \
             plugin_version = excluded.plugin_version, value = excluded.value, band = excluded.band, \
             reasons = excluded.reasons, updated_at = excluded.updated_at",
            binds,
        );
    }

    let previous: Vec<Option<(f64, Option<String>)>> = rows
        .iter()
        .map(|(id, s)| before.remove(&(id.clone(), s.plugin.clone())))
        .collect();
    let changed: Vec<usize> = (0..rows.len())
        .filter(|&i| {
            let s = &rows[i].1;
            previous[i]
                .as_ref()
                .is_none_or(|(v, b)| *v != s.value || *b != s.band)
        })
        .collect();
    if !changed.is_empty() {
        let mut binds = Vec::with_capacity(changed.len() * 9);
        for &i in &changed {
            let (id, s) = &rows[i];
            binds.extend(score_binds(tenant, id, s, &reasons[i]));
            binds.extend([event_id.into(), s.updated_at.into()]);
        }
        batch.push_rows(
            "INSERT INTO score_history (tenant_id, customer_id, plugin, plugin_version, value, band, reasons, event_id, at) \
             VALUES ",
            9,
            "",
            binds,
        );
    }
    previous
}

/// The columns a score row and its history row share, in their order: tenant,
/// customer, plugin, version, value, band, reasons (as JSON).
fn score_binds(tenant: &str, id: &str, s: &StoredScore, reasons: &str) -> [Bind; 7] {
    [
        tenant.into(),
        id.into(),
        (&s.plugin).into(),
        (&s.plugin_version).into(),
        s.value.into(),
        (&s.band).into(),
        reasons.into(),
    ]
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
/// Returns each row's (joined, left) segments, in order. Reads the current
/// memberships now and leaves the writes in `batch`, as [`queue_scores`] does.
pub async fn queue_memberships(
    conn: &mut AnyConnection,
    batch: &mut Batch,
    tenant: &str,
    rows: &[SegmentSet],
    at: i64,
) -> Result<Vec<(Vec<String>, Vec<String>)>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut before = SegmentsBefore::new();
    let pairs = rows
        .iter()
        .map(|r| (r.customer.as_str(), r.plugin.as_str()));
    for r in rows_of_pairs(
        conn,
        "SELECT customer_id, plugin, segment FROM memberships",
        tenant,
        pairs,
    )
    .await?
    {
        before
            .entry((r.try_get("customer_id")?, r.try_get("plugin")?))
            .or_default()
            .push(r.try_get("segment")?);
    }
    Ok(queue_memberships_over(batch, tenant, before, rows, at))
}

/// [`queue_memberships`] over `before`, the memberships the caller has read
/// already (at least those of `rows`' customers and plugins).
pub fn queue_memberships_over(
    batch: &mut Batch,
    tenant: &str,
    mut before: SegmentsBefore,
    rows: &[SegmentSet],
    at: i64,
) -> Vec<(Vec<String>, Vec<String>)> {
    let mut changes = Vec::with_capacity(rows.len());
    // (customer, plugin, segment) rows to delete.
    let mut ended: Vec<(&str, &str, String)> = Vec::new();
    for row in rows {
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
        let mut binds = Vec::with_capacity(ended.len() * 4);
        for (id, plugin, segment) in &ended {
            binds.extend([
                tenant.into(),
                (*id).into(),
                (*plugin).into(),
                segment.into(),
            ]);
        }
        batch.push_rows(
            "DELETE FROM memberships WHERE (tenant_id, customer_id, plugin, segment) IN (VALUES ",
            4,
            ")",
            binds,
        );
    }
    // One row per (customer, plugin, segment), even if a plugin named a segment twice.
    let mut seen: HashSet<(&str, &str, &str)> = HashSet::new();
    let mut now: Vec<(&str, &str, &str, String)> = Vec::new();
    for row in rows {
        for (s, reason) in &row.segments {
            if seen.insert((&row.customer, &row.plugin, s)) {
                now.push((&row.customer, &row.plugin, s, to_json(reason)));
            }
        }
    }
    if !now.is_empty() {
        let mut binds = Vec::with_capacity(now.len() * 6);
        for (id, plugin, s, reason) in &now {
            binds.extend([
                tenant.into(),
                (*id).into(),
                (*plugin).into(),
                (*s).into(),
                reason.into(),
                at.into(),
            ]);
        }
        batch.push_rows(
            "INSERT INTO memberships (tenant_id, customer_id, plugin, segment, reason, since) VALUES ",
            6,
            " ON CONFLICT (tenant_id, customer_id, plugin, segment) DO UPDATE SET reason = excluded.reason",
            binds,
        );
    }
    changes
}

/// Moves customers (each at most once) to new stages, with a history row each
/// naming `event_id`, if any: two statements for up to a thousand moves, in one
/// round trip on SQLite.
pub async fn move_stages(
    conn: &mut AnyConnection,
    tenant: &str,
    moves: &[(&str, &StageMove)],
    event_id: Option<&str>,
    at: i64,
) -> Result<()> {
    let mut batch = Batch::new();
    queue_stage_moves(&mut batch, tenant, moves, event_id, at);
    batch.run(conn).await?;
    Ok(())
}

/// Queues [`move_stages`] in `batch`.
pub fn queue_stage_moves(
    batch: &mut Batch,
    tenant: &str,
    moves: &[(&str, &StageMove)],
    event_id: Option<&str>,
    at: i64,
) {
    for part in moves.chunks(ROWS_PER_INSERT) {
        // `UPDATE ... FROM (VALUES ...)`: both databases name the columns
        // column1, ...; every value is in the rows, so placeholders run in order.
        let sql = format!(
            "UPDATE customers SET stage = v.column3, updated_at = v.column4, rev = customers.rev + 1 \
             FROM (VALUES {}) AS v \
             WHERE customers.tenant_id = v.column1 AND customers.id = v.column2",
            question_rows(part.len(), 4)
        );
        let mut binds = Vec::with_capacity(part.len() * 4);
        for (id, m) in part {
            binds.extend([tenant.into(), (*id).into(), (&m.to).into(), at.into()]);
        }
        batch.push(sql, binds);

        let sql = format!(
            "INSERT INTO stage_moves (tenant_id, customer_id, from_stage, to_stage, reason, plugin, plugin_version, event_id, at) \
             VALUES {}",
            question_rows(part.len(), 9)
        );
        let mut binds = Vec::with_capacity(part.len() * 9);
        for (id, m) in part {
            binds.extend([
                tenant.into(),
                (*id).into(),
                (&m.from).into(),
                (&m.to).into(),
                to_json(&(&m.reason, &m.reason_text)).into(),
                (&m.plugin).into(),
                (&m.plugin_version).into(),
                event_id.into(),
                at.into(),
            ]);
        }
        batch.push(sql, binds);
    }
}

/// Queues a bump of the customers' `rev` (see `migrations/*/0004_customer_rev.sql`),
/// for a transaction that changes their scores, segments, tags or fields with no
/// update of their own row: one statement for up to a thousand customers.
pub fn queue_bump_revs(batch: &mut Batch, tenant: &str, ids: &[&str]) {
    if ids.is_empty() {
        return;
    }
    let binds = ids
        .iter()
        .flat_map(|id| [Bind::from(tenant), Bind::from(*id)])
        .collect();
    batch.push_rows(
        "UPDATE customers SET rev = rev + 1 WHERE (tenant_id, id) IN (VALUES ",
        2,
        ")",
        binds,
    );
}
