//! Events (touchpoints, orders, complaints, referrals...), plugin failures, the
//! metrics computed from events, and the timeline.

use super::batch::part;
use super::customers::{customer_from_parts, queue_customer_reads, PART_CUSTOMER};
use super::{from_json, to_json, Backend, Batch, Result, ScoresBefore, SegmentsBefore, StoreError};
use crate::domain::{
    day_of, field_value_from_json, field_value_to_json, CustomerRecord, EventRecord,
};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use stagecraft_plugin::snapshot::DAY_MS;

/// An event already recorded under an idempotency key: its id and the response it got.
pub async fn event_by_key(
    conn: &mut AnyConnection,
    tenant: &str,
    key: &str,
) -> Result<Option<(String, String, serde_json::Value)>> {
    let row = sqlx::query(
        "SELECT id, customer_id, outcome FROM events WHERE tenant_id = $1 AND idempotency_key = $2",
    )
    .bind(tenant)
    .bind(key)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok((
            r.try_get("id")?,
            r.try_get("customer_id")?,
            from_json(&r.try_get::<String, _>("outcome")?)?,
        ))
    })
    .transpose()
}

// The `part` of each row an event's reads give (see `Batch::fetch`); the
// customer's own parts are in `customers.rs`, numbered 1-4.
const PART_REPLAY: i64 = 0;
const PART_COUNTS: i64 = 5;
const PART_RECENT: i64 = 6;
const PART_SCORE: i64 = 7;

/// What an event reads before its plugins run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventReads {
    /// The event already recorded under the idempotency key: its customer and
    /// the response it was given.
    pub replay: Option<(String, serde_json::Value)>,
    /// The customer with fields, tags and segments; `None` if there is none.
    pub customer: Option<CustomerRecord>,
    /// The customer's `rev` (see [`still_as_read`]), read before the rest of
    /// the customer: a writer that changed any of it after this read changed
    /// the `rev` too.
    pub rev: Option<i64>,
    /// Events of any kind in the 90 days up to `now`.
    pub touchpoints_90d: u32,
    /// Whether the customer has an order on the UTC day of the event.
    pub ordered_that_day: bool,
    /// The customer's follow-ups not yet done (plugins may add only so many).
    pub open_follow_ups: u32,
    /// The customer's latest events, newest first.
    pub recent: Vec<EventRecord>,
    /// The customer's stored scores.
    pub scores: ScoresBefore,
    /// The customer's segments.
    pub segments: SegmentsBefore,
}

/// One event's reads in a group: whose customer, under which idempotency key,
/// when it happened and the time its plugins are told.
#[derive(Debug, Clone, Copy)]
pub struct EventRead<'a> {
    pub tenant: &'a str,
    pub customer: &'a str,
    pub key: Option<&'a str>,
    pub at: i64,
    pub now: i64,
}

/// Marks where one event's rows start in a group's reads (see [`group_event_reads`]).
const PART_NEXT_EVENT: i64 = -1;

/// Reads what one event needs, all at once: the answer already given under its
/// key, the customer, its counts, its `recent` latest events, its scores and
/// segments. On SQLite that is one round trip, where the statements one by one
/// were six more (~40 µs each). On PostgreSQL the customer's row stays locked
/// until the transaction ends.
pub async fn event_reads(
    conn: &mut AnyConnection,
    backend: Backend,
    read: EventRead<'_>,
    recent: i64,
) -> Result<EventReads> {
    let mut reads = group_event_reads(conn, backend, &[read], recent).await?;
    Ok(reads.pop().expect("one event's reads"))
}

/// [`event_reads`] for several events at once, in one query on SQLite: a group
/// committed in one transaction (`crate::services::group_commit`). The events must be of
/// different customers, since none sees what another writes. Each event's
/// statements are preceded by a one-row marker, so the rows split back into
/// events however many rows each statement gave.
pub async fn group_event_reads(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[EventRead<'_>],
    recent: i64,
) -> Result<Vec<EventReads>> {
    let mut reads = Batch::new();
    let marked = events.len() > 1;
    for e in events {
        if marked {
            reads.push(
                format!("SELECT CAST({PART_NEXT_EVENT} AS BIGINT) AS part"),
                vec![],
            );
        }
        queue_event_reads(&mut reads, backend, e, recent);
    }
    let rows = reads.fetch(conn).await?;
    let mut per_event: Vec<&[AnyRow]> = Vec::with_capacity(events.len());
    if marked {
        let mut starts = Vec::with_capacity(events.len() + 1);
        for (i, r) in rows.iter().enumerate() {
            if part(r)? == PART_NEXT_EVENT {
                starts.push(i + 1);
            }
        }
        if starts.len() != events.len() {
            return Err(StoreError::Corrupt(format!(
                "{} of {} events' reads came back",
                starts.len(),
                events.len()
            )));
        }
        starts.push(rows.len() + 1);
        per_event.extend(starts.windows(2).map(|w| &rows[w[0]..w[1] - 1]));
    } else {
        per_event.push(&rows);
    }
    per_event
        .into_iter()
        .zip(events)
        .map(|(rows, e)| event_reads_from_rows(rows, e.customer))
        .collect()
}

/// Whether each event's earlier reads ([`event_reads`] on a read connection),
/// given with the customer's `rev` they saw, are still what the writer would
/// read: its customer's `rev` is the same,
/// and no event has been recorded under its idempotency key since. One
/// statement for them all, where reading everything again under the writer
/// took ~230 µs an event (BENCHMARKS.md).
pub async fn still_as_read(
    conn: &mut AnyConnection,
    reads: &[(EventRead<'_>, i64)],
) -> Result<Vec<bool>> {
    if reads.is_empty() {
        return Ok(Vec::new());
    }
    let rows = vec!["(CAST(? AS BIGINT), ?, ?, CAST(? AS BIGINT), ?)"; reads.len()].join(", ");
    let mut batch = Batch::new();
    let mut binds = Vec::with_capacity(reads.len() * 5);
    for (i, (r, rev)) in reads.iter().enumerate() {
        binds.extend([
            (i as i64).into(),
            r.tenant.into(),
            r.customer.into(),
            (*rev).into(),
            r.key.into(),
        ]);
    }
    batch.push(
        format!(
            "SELECT CAST(0 AS BIGINT) AS part, v.column1 AS i, CAST(CASE WHEN c.rev = v.column4 \
               AND NOT EXISTS (SELECT 1 FROM events e WHERE e.tenant_id = v.column2 AND e.idempotency_key = v.column5) \
               THEN 1 ELSE 0 END AS BIGINT) AS same \
             FROM (VALUES {rows}) AS v LEFT JOIN customers c ON c.tenant_id = v.column2 AND c.id = v.column3"
        ),
        binds,
    );
    let mut same = vec![false; reads.len()];
    for r in batch.fetch(conn).await? {
        let i: i64 = r.try_get("i")?;
        let slot = same
            .get_mut(i as usize)
            .ok_or_else(|| StoreError::Corrupt(format!("no event {i} was checked")))?;
        *slot = r.try_get::<i64, _>("same")? == 1;
    }
    Ok(same)
}

fn queue_event_reads(reads: &mut Batch, backend: Backend, e: &EventRead<'_>, recent: i64) {
    let EventRead {
        tenant,
        customer,
        key,
        at,
        now,
    } = *e;
    if let Some(key) = key {
        reads.push(
            format!(
                "SELECT CAST({PART_REPLAY} AS BIGINT) AS part, customer_id, outcome FROM events \
                 WHERE tenant_id = ? AND idempotency_key = ?"
            ),
            vec![tenant.into(), key.into()],
        );
    }
    queue_customer_reads(reads, backend, tenant, customer, true);
    reads.push(
        format!(
            "SELECT CAST({PART_COUNTS} AS BIGINT) AS part, \
               (SELECT COUNT(*) FROM events WHERE tenant_id = ? AND customer_id = ? AND at > ? AND at <= ?) AS touchpoints, \
               (SELECT COUNT(*) FROM (SELECT 1 FROM events WHERE tenant_id = ? AND customer_id = ? \
                 AND kind = 'order' AND day = ? LIMIT 1) o) AS orders, \
               (SELECT COUNT(*) FROM follow_ups WHERE tenant_id = ? AND customer_id = ? \
                 AND status = 'open') AS open_follow_ups"
        ),
        vec![
            tenant.into(),
            customer.into(),
            (now - 90 * DAY_MS).into(),
            now.into(),
            tenant.into(),
            customer.into(),
            day_of(at).into(),
            tenant.into(),
            customer.into(),
        ],
    );
    reads.push(
        format!(
            "SELECT CAST({PART_RECENT} AS BIGINT) AS part, id, kind, channel, at, amount_cents, fields \
             FROM events WHERE tenant_id = ? AND customer_id = ? ORDER BY at DESC, seq DESC LIMIT ?"
        ),
        vec![tenant.into(), customer.into(), recent.into()],
    );
    reads.push(
        format!(
            "SELECT CAST({PART_SCORE} AS BIGINT) AS part, plugin, value, band FROM scores \
             WHERE tenant_id = ? AND customer_id = ?"
        ),
        vec![tenant.into(), customer.into()],
    );
}

fn event_reads_from_rows(rows: &[AnyRow], customer: &str) -> Result<EventReads> {
    let mut out = EventReads::default();
    if let Some((c, segments)) = customer_from_parts(rows)? {
        out.customer = Some(c);
        out.segments = segments;
    }
    for r in rows {
        match part(r)? {
            PART_REPLAY => {
                let outcome = from_json(&r.try_get::<String, _>("outcome")?)?;
                out.replay = Some((r.try_get("customer_id")?, outcome));
            }
            PART_CUSTOMER => out.rev = Some(r.try_get("rev")?),
            PART_COUNTS => {
                out.touchpoints_90d = r.try_get::<i64, _>("touchpoints")? as u32;
                out.ordered_that_day = r.try_get::<i64, _>("orders")? > 0;
                out.open_follow_ups = r.try_get::<i64, _>("open_follow_ups")? as u32;
            }
            PART_RECENT => out.recent.push(event_from_row(r)?),
            PART_SCORE => {
                out.scores.insert(
                    (customer.to_string(), r.try_get("plugin")?),
                    (r.try_get("value")?, r.try_get("band")?),
                );
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Queues the insert of an event with its outcome (the response it was given, kept
/// for idempotent replays) in `batch`.
pub fn queue_event(
    batch: &mut Batch,
    tenant: &str,
    customer: &str,
    e: &EventRecord,
    idempotency_key: Option<&str>,
    outcome: &serde_json::Value,
    recorded_at: i64,
) {
    let fields: serde_json::Map<String, serde_json::Value> = e
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), field_value_to_json(v)))
        .collect();
    batch.push_rows(
        "INSERT INTO events (id, tenant_id, customer_id, kind, channel, at, day, amount_cents, fields, \
         idempotency_key, outcome, recorded_at) VALUES ",
        12,
        "",
        vec![
            (&e.id).into(),
            tenant.into(),
            customer.into(),
            (&e.kind).into(),
            (&e.channel).into(),
            e.at.into(),
            day_of(e.at).into(),
            e.amount_cents.into(),
            to_json(&fields).into(),
            idempotency_key.into(),
            to_json(outcome).into(),
            recorded_at.into(),
        ],
    );
}

pub(super) fn event_from_row(r: &sqlx::any::AnyRow) -> Result<EventRecord> {
    let fields: serde_json::Map<String, serde_json::Value> =
        from_json(&r.try_get::<String, _>("fields")?)?;
    Ok(EventRecord {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        channel: r.try_get("channel")?,
        at: r.try_get("at")?,
        amount_cents: r.try_get("amount_cents")?,
        fields: fields
            .iter()
            .filter_map(|(k, v)| field_value_from_json(k, v).ok().map(|v| (k.clone(), v)))
            .collect(),
    })
}

/// The customer's latest `limit` events, newest first.
pub async fn recent_events(
    conn: &mut AnyConnection,
    tenant: &str,
    customer: &str,
    limit: i64,
) -> Result<Vec<EventRecord>> {
    sqlx::query(
        "SELECT id, kind, channel, at, amount_cents, fields FROM events WHERE tenant_id = $1 AND customer_id = $2 \
         ORDER BY at DESC, seq DESC LIMIT $3",
    )
    .bind(tenant)
    .bind(customer)
    .bind(limit)
    .fetch_all(conn)
    .await?
    .iter()
    .map(event_from_row)
    .collect()
}

/// Touchpoints (events of any kind) in the 90 days up to `now`.
pub async fn touchpoints_90d(
    conn: &mut AnyConnection,
    tenant: &str,
    customer: &str,
    now: i64,
) -> Result<u32> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE tenant_id = $1 AND customer_id = $2 AND at > $3 AND at <= $4",
    )
    .bind(tenant)
    .bind(customer)
    .bind(now - 90 * DAY_MS)
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(n as u32)
}

/// The metrics computed from scratch from the raw events, as of `now`. The stored,
/// incrementally kept metrics must always equal this (the tests check it).
#[cfg(any(test, feature = "test-support"))]
pub async fn recompute_metrics(
    conn: &mut AnyConnection,
    tenant: &str,
    customer: &str,
    now: i64,
) -> Result<stagecraft_plugin::snapshot::Metrics> {
    let r = sqlx::query(
        "SELECT \
           CAST(COALESCE(SUM(CASE WHEN kind = 'order' THEN 1 ELSE 0 END), 0) AS BIGINT) AS orders, \
           CAST(COUNT(DISTINCT CASE WHEN kind = 'order' THEN day END) AS BIGINT) AS purchase_days, \
           CAST(COALESCE(SUM(CASE WHEN kind = 'order' THEN COALESCE(amount_cents, 0) ELSE 0 END), 0) AS BIGINT) AS spend, \
           MIN(CASE WHEN kind = 'order' THEN at END) AS first_order_at, \
           MAX(CASE WHEN kind = 'order' THEN at END) AS last_order_at, \
           MAX(at) AS last_contact_at, \
           CAST(COALESCE(SUM(CASE WHEN kind = 'complaint' THEN 1 ELSE 0 END), 0) AS BIGINT) AS complaints, \
           CAST(COALESCE(SUM(CASE WHEN kind = 'referral' THEN 1 ELSE 0 END), 0) AS BIGINT) AS referrals \
         FROM events WHERE tenant_id = $1 AND customer_id = $2",
    )
    .bind(tenant)
    .bind(customer)
    .fetch_one(&mut *conn)
    .await?;
    Ok(stagecraft_plugin::snapshot::Metrics {
        orders: r.try_get::<i64, _>("orders")? as u32,
        purchase_days: r.try_get::<i64, _>("purchase_days")? as u32,
        total_spend_cents: r.try_get("spend")?,
        first_order_at: r.try_get("first_order_at")?,
        last_order_at: r.try_get("last_order_at")?,
        last_contact_at: r.try_get("last_contact_at")?,
        complaints: r.try_get::<i64, _>("complaints")? as u32,
        referrals: r.try_get::<i64, _>("referrals")? as u32,
        touchpoints_90d: touchpoints_90d(conn, tenant, customer, now).await?,
    })
}

/// A plugin failure, kept on the customer's timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginFailure {
    pub plugin: String,
    pub plugin_version: String,
    /// `trap`, `deadline`, `memory`, `bad_output`, `plugin_error`, ...
    pub kind: String,
    pub message: String,
}

/// Queues the record of a plugin's failure in `batch`.
pub fn queue_failure(
    batch: &mut Batch,
    tenant: &str,
    customer: &str,
    f: &PluginFailure,
    event_id: Option<&str>,
    at: i64,
) {
    batch.push_rows(
        "INSERT INTO plugin_failures (tenant_id, customer_id, plugin, plugin_version, kind, message, event_id, at) \
         VALUES ",
        8,
        "",
        vec![
            tenant.into(),
            customer.into(),
            (&f.plugin).into(),
            (&f.plugin_version).into(),
            (&f.kind).into(),
            (&f.message).into(),
            event_id.into(),
            at.into(),
        ],
    );
}

/// One entry of a customer's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TimelineEntry {
    Event {
        at: i64,
        id: String,
        kind: String,
        channel: Option<String>,
        amount_cents: Option<i64>,
        fields: serde_json::Value,
    },
    StageMove {
        at: i64,
        from: Option<String>,
        to: String,
        /// The reason in words (English; `?lang=zh` re-renders it).
        reason: String,
        /// The reason as the plugin gave it: code, points, args.
        reason_detail: serde_json::Value,
        plugin: String,
        plugin_version: String,
        event_id: Option<String>,
    },
    ScoreChange {
        at: i64,
        plugin: String,
        plugin_version: String,
        value: f64,
        band: Option<String>,
        reasons: Vec<super::RenderedReason>,
        event_id: Option<String>,
    },
    FollowUp {
        at: i64,
        due_at: i64,
        note: String,
        status: String,
        plugin: Option<String>,
    },
    PluginFailure {
        at: i64,
        plugin: String,
        plugin_version: String,
        kind: String,
        message: String,
        event_id: Option<String>,
    },
    /// A plugin's wake fired (contract 0.2.0): no event, time passed. `at` is
    /// when it was due, which is the `now` the plugins were told; what it caused
    /// is listed with the same time.
    Wake {
        at: i64,
        /// The plugin that asked to be woken.
        plugin: String,
        /// When it was asked for.
        set_at: i64,
        /// When a host got to it, and which.
        fired_at: i64,
        host: String,
    },
}

impl TimelineEntry {
    pub fn at(&self) -> i64 {
        match self {
            TimelineEntry::Event { at, .. }
            | TimelineEntry::StageMove { at, .. }
            | TimelineEntry::ScoreChange { at, .. }
            | TimelineEntry::FollowUp { at, .. }
            | TimelineEntry::PluginFailure { at, .. }
            | TimelineEntry::Wake { at, .. } => *at,
        }
    }
}

/// The customer's timeline, newest first, at most `limit` entries.
pub async fn timeline(
    conn: &mut AnyConnection,
    tenant: &str,
    customer: &str,
    limit: i64,
) -> Result<Vec<TimelineEntry>> {
    let mut out = Vec::new();
    let q = |sql: &'static str| sqlx::query(sql).bind(tenant).bind(customer).bind(limit);
    for r in q(
        "SELECT id, kind, channel, at, amount_cents, fields FROM events \
                WHERE tenant_id = $1 AND customer_id = $2 ORDER BY at DESC, seq DESC LIMIT $3",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        out.push((
            0,
            TimelineEntry::Event {
                at: r.try_get("at")?,
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                channel: r.try_get("channel")?,
                amount_cents: r.try_get("amount_cents")?,
                fields: from_json(&r.try_get::<String, _>("fields")?)?,
            },
        ));
    }
    for r in q("SELECT from_stage, to_stage, reason, plugin, plugin_version, event_id, at FROM stage_moves \
                WHERE tenant_id = $1 AND customer_id = $2 ORDER BY at DESC, seq DESC LIMIT $3")
    .fetch_all(&mut *conn)
    .await?
    {
        let (detail, text): (serde_json::Value, String) = from_json(&r.try_get::<String, _>("reason")?)?;
        out.push((
            1,
            TimelineEntry::StageMove {
                at: r.try_get("at")?,
                from: r.try_get("from_stage")?,
                to: r.try_get("to_stage")?,
                reason: text,
                reason_detail: detail,
                plugin: r.try_get("plugin")?,
                plugin_version: r.try_get("plugin_version")?,
                event_id: r.try_get("event_id")?,
            },
        ));
    }
    for r in q(
        "SELECT plugin, plugin_version, value, band, reasons, event_id, at FROM score_history \
                WHERE tenant_id = $1 AND customer_id = $2 ORDER BY at DESC, seq DESC LIMIT $3",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        out.push((
            2,
            TimelineEntry::ScoreChange {
                at: r.try_get("at")?,
                plugin: r.try_get("plugin")?,
                plugin_version: r.try_get("plugin_version")?,
                value: r.try_get("value")?,
                band: r.try_get("band")?,
                reasons: from_json(&r.try_get::<String, _>("reasons")?)?,
                event_id: r.try_get("event_id")?,
            },
        ));
    }
    for r in q("SELECT due_at, note, status, plugin, created_at FROM follow_ups \
                WHERE tenant_id = $1 AND customer_id = $2 ORDER BY created_at DESC, seq DESC LIMIT $3")
    .fetch_all(&mut *conn)
    .await?
    {
        out.push((
            3,
            TimelineEntry::FollowUp {
                at: r.try_get("created_at")?,
                due_at: r.try_get("due_at")?,
                note: r.try_get("note")?,
                status: r.try_get("status")?,
                plugin: r.try_get("plugin")?,
            },
        ));
    }
    for r in q(
        "SELECT plugin, plugin_version, kind, message, event_id, at FROM plugin_failures \
                WHERE tenant_id = $1 AND customer_id = $2 ORDER BY at DESC, seq DESC LIMIT $3",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        out.push((
            4,
            TimelineEntry::PluginFailure {
                at: r.try_get("at")?,
                plugin: r.try_get("plugin")?,
                plugin_version: r.try_get("plugin_version")?,
                kind: r.try_get("kind")?,
                message: r.try_get("message")?,
                event_id: r.try_get("event_id")?,
            },
        ));
    }
    for r in q(
        "SELECT plugin, due_at, set_at, fired_at, host FROM wake_log \
                WHERE tenant_id = $1 AND customer_id = $2 ORDER BY due_at DESC, seq DESC LIMIT $3",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        out.push((
            0,
            TimelineEntry::Wake {
                at: r.try_get("due_at")?,
                plugin: r.try_get("plugin")?,
                set_at: r.try_get("set_at")?,
                fired_at: r.try_get("fired_at")?,
                host: r.try_get("host")?,
            },
        ));
    }
    // Newest first; at the same instant, what an event or a wake caused is
    // listed above it.
    out.sort_by(|(ka, a), (kb, b)| b.at().cmp(&a.at()).then(kb.cmp(ka)));
    out.truncate(limit as usize);
    Ok(out.into_iter().map(|(_, e)| e).collect())
}
