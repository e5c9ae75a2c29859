//! Customers, their fields, tags, segments, scores and follow-ups.

use super::batch::part;
use super::{from_json, to_json, Backend, Batch, Result, SegmentsBefore, StoreError};
use crate::domain::Reason;
use crate::domain::{CustomerRecord, FieldEntry};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use stagecraft_plugin::snapshot::Metrics;

/// A customer to create.
#[derive(Debug, Clone, Default)]
pub struct NewCustomer {
    pub id: String,
    pub name: Option<String>,
    pub source: Option<String>,
    pub owner: Option<String>,
    pub created_at: i64,
    pub fields: Vec<FieldEntry>,
    pub tags: Vec<String>,
}

/// Inserts a customer; a duplicate id is a conflict.
pub async fn insert_customer(
    conn: &mut AnyConnection,
    tenant: &str,
    c: &NewCustomer,
) -> Result<()> {
    let r = sqlx::query(
        "INSERT INTO customers (tenant_id, id, name, source, created_at, updated_at, owner) \
         VALUES ($1, $2, $3, $4, $5, $5, $6) ON CONFLICT (tenant_id, id) DO NOTHING",
    )
    .bind(tenant)
    .bind(&c.id)
    .bind(&c.name)
    .bind(&c.source)
    .bind(c.created_at)
    .bind(&c.owner)
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!(
            "customer {} already exists",
            c.id
        )));
    }
    for f in &c.fields {
        set_field(conn, tenant, &c.id, f).await?;
    }
    for t in &c.tags {
        add_tag(conn, tenant, &c.id, t).await?;
    }
    Ok(())
}

/// Whether the customer exists.
pub async fn customer_exists(conn: &mut AnyConnection, tenant: &str, id: &str) -> Result<bool> {
    Ok(
        sqlx::query("SELECT 1 FROM customers WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(conn)
            .await?
            .is_some(),
    )
}

/// Loads a customer with fields, tags and segments. With `lock` (inside a
/// transaction on PostgreSQL) the row stays locked until the transaction ends.
pub async fn load_customer(
    conn: &mut AnyConnection,
    backend: Backend,
    tenant: &str,
    id: &str,
    lock: bool,
) -> Result<Option<CustomerRecord>> {
    let mut reads = Batch::new();
    queue_customer_reads(&mut reads, backend, tenant, id, lock);
    Ok(customer_from_parts(&reads.fetch(conn).await?)?.map(|(c, _)| c))
}

// The `part` of each row a customer's reads give (see `Batch::fetch`).
pub(super) const PART_CUSTOMER: i64 = 1;
const PART_FIELD: i64 = 2;
const PART_TAG: i64 = 3;
const PART_SEGMENT: i64 = 4;

/// Queues the reads of a customer: the row, then fields, tags and memberships in
/// one statement. They come back unsorted: sorting here gives byte order whatever
/// the database's collation, and SQLite's planner, given an ORDER BY, may walk the
/// tenant-wide segment index instead of this customer's rows.
pub(super) fn queue_customer_reads(
    reads: &mut Batch,
    backend: Backend,
    tenant: &str,
    id: &str,
    lock: bool,
) {
    let lock = if lock && backend == Backend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    reads.push(
        format!(
            "SELECT CAST({PART_CUSTOMER} AS BIGINT) AS part, * FROM customers \
             WHERE tenant_id = ? AND id = ?{lock}"
        ),
        vec![tenant.into(), id.into()],
    );
    reads.push(
        format!(
            "SELECT CAST({PART_FIELD} AS BIGINT) AS part, key, value, sensitive FROM customer_fields \
               WHERE tenant_id = ? AND customer_id = ? \
             UNION ALL SELECT CAST({PART_TAG} AS BIGINT), tag, NULL, CAST(0 AS BIGINT) FROM customer_tags \
               WHERE tenant_id = ? AND customer_id = ? \
             UNION ALL SELECT CAST({PART_SEGMENT} AS BIGINT), segment, plugin, CAST(0 AS BIGINT) FROM memberships \
               WHERE tenant_id = ? AND customer_id = ?"
        ),
        [tenant, id].repeat(3).into_iter().map(Into::into).collect(),
    );
}

/// The customer in `rows` read by [`queue_customer_reads`] (rows of other parts
/// are passed over), and their segments by (customer, plugin).
pub(super) fn customer_from_parts(
    rows: &[AnyRow],
) -> Result<Option<(CustomerRecord, SegmentsBefore)>> {
    let mut customer = None;
    for r in rows {
        if part(r)? == PART_CUSTOMER {
            customer = Some(customer_from_row(r)?);
        }
    }
    let Some(mut c) = customer else {
        return Ok(None);
    };
    let mut by_plugin = SegmentsBefore::new();
    for r in rows {
        match part(r)? {
            PART_FIELD => c.fields.push(field_from_row(r)?),
            PART_TAG => c.tags.push(r.try_get("key")?),
            PART_SEGMENT => {
                let segment: String = r.try_get("key")?;
                by_plugin
                    .entry((c.id.clone(), r.try_get("value")?))
                    .or_default()
                    .push(segment.clone());
                c.segments.push(segment);
            }
            _ => {}
        }
    }
    c.fields.sort_by(|a, b| a.key.cmp(&b.key));
    c.tags.sort();
    c.segments.sort();
    c.segments.dedup();
    Ok(Some((c, by_plugin)))
}

/// A customer row (`SELECT *`), without fields, tags and segments.
pub(super) fn customer_from_row(row: &sqlx::any::AnyRow) -> Result<CustomerRecord> {
    let metrics = Metrics {
        orders: row.try_get::<i64, _>("orders")? as u32,
        purchase_days: row.try_get::<i64, _>("purchase_days")? as u32,
        total_spend_cents: row.try_get("spend_cents")?,
        first_order_at: row.try_get("first_order_at")?,
        last_order_at: row.try_get("last_order_at")?,
        last_contact_at: row.try_get("last_contact_at")?,
        complaints: row.try_get::<i64, _>("complaints")? as u32,
        referrals: row.try_get::<i64, _>("referrals")? as u32,
        touchpoints_90d: 0,
    };
    Ok(CustomerRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        source: row.try_get("source")?,
        stage: row.try_get("stage")?,
        owner: row.try_get("owner")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        metrics,
        fields: Vec::new(),
        tags: Vec::new(),
        segments: Vec::new(),
    })
}

/// A `customer_fields` row (`key`, `value`, `sensitive`).
pub(super) fn field_from_row(r: &sqlx::any::AnyRow) -> Result<FieldEntry> {
    let value: serde_json::Value = from_json(&r.try_get::<String, _>("value")?)?;
    Ok(FieldEntry {
        key: r.try_get("key")?,
        value: crate::domain::field_value_from_json("stored", &value)
            .map_err(StoreError::Corrupt)?,
        sensitive: r.try_get::<i64, _>("sensitive")? != 0,
    })
}

/// Queues the write of a customer's stored metrics in `batch`. It bumps the
/// customer's `rev`, which covers the event's other writes in the transaction
/// (its row, scores, segments, tags and fields).
pub fn queue_metrics(batch: &mut Batch, tenant: &str, id: &str, m: &Metrics, at: i64) {
    // Multi-row (`UPDATE ... FROM (VALUES ...)`, as `queue_stage_moves`): a
    // group of events updates its customers in one statement.
    batch.push_rows(
        "UPDATE customers SET orders = v.column3, purchase_days = v.column4, spend_cents = v.column5, \
         first_order_at = v.column6, last_order_at = v.column7, last_contact_at = v.column8, \
         complaints = v.column9, referrals = v.column10, updated_at = v.column11, rev = customers.rev + 1 \
         FROM (VALUES ",
        11,
        ") AS v WHERE customers.tenant_id = v.column1 AND customers.id = v.column2",
        vec![
            tenant.into(),
            id.into(),
            (m.orders as i64).into(),
            (m.purchase_days as i64).into(),
            m.total_spend_cents.into(),
            m.first_order_at.into(),
            m.last_order_at.into(),
            m.last_contact_at.into(),
            (m.complaints as i64).into(),
            (m.referrals as i64).into(),
            at.into(),
        ],
    );
}

/// Sets (`Some`) or clears (`None`) the customer's owner, in `batch`.
pub fn queue_owner(batch: &mut Batch, tenant: &str, id: &str, owner: Option<&str>) {
    batch.push(
        "UPDATE customers SET owner = ?, rev = rev + 1 WHERE tenant_id = ? AND id = ?".into(),
        vec![owner.into(), tenant.into(), id.into()],
    );
}

/// Changes name and source; `None` leaves a value as it is. It bumps the
/// customer's `rev`, which covers the fields, tags and stage an edit changes in
/// the same transaction.
pub async fn update_profile(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
    name: Option<&str>,
    source: Option<&str>,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE customers SET name = COALESCE($1, name), source = COALESCE($2, source), updated_at = $3, \
         rev = rev + 1 WHERE tenant_id = $4 AND id = $5",
    )
    .bind(name)
    .bind(source)
    .bind(at)
    .bind(tenant)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_field(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
    f: &FieldEntry,
) -> Result<()> {
    let mut batch = Batch::new();
    queue_field(&mut batch, tenant, id, f);
    batch.run(conn).await?;
    Ok(())
}

/// The field that is the customer's owner: a plugin (or a client) setting it
/// to text sets the owner, to anything else clears it.
pub const OWNER_FIELD: &str = "owner";

/// Queues [`set_field`] in `batch` (the field [`OWNER_FIELD`] sets the owner).
pub fn queue_field(batch: &mut Batch, tenant: &str, id: &str, f: &FieldEntry) {
    if f.key == OWNER_FIELD {
        let owner = match &f.value {
            crate::domain::FieldValue::Text(t) if !t.is_empty() && t.len() <= 64 => {
                Some(t.as_str())
            }
            _ => None,
        };
        return queue_owner(batch, tenant, id, owner);
    }
    batch.push(
        "INSERT INTO customer_fields (tenant_id, customer_id, key, value, sensitive) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (tenant_id, customer_id, key) DO UPDATE SET value = excluded.value, \
         sensitive = CASE WHEN customer_fields.sensitive = 1 THEN 1 ELSE excluded.sensitive END"
            .into(),
        vec![
            tenant.into(),
            id.into(),
            (&f.key).into(),
            to_json(&crate::domain::field_value_to_json(&f.value)).into(),
            (f.sensitive as i64).into(),
        ],
    );
}

pub async fn remove_field(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
    key: &str,
) -> Result<()> {
    sqlx::query(
        "DELETE FROM customer_fields WHERE tenant_id = $1 AND customer_id = $2 AND key = $3",
    )
    .bind(tenant)
    .bind(id)
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds a tag; returns whether it was new.
pub async fn add_tag(conn: &mut AnyConnection, tenant: &str, id: &str, tag: &str) -> Result<bool> {
    let mut batch = Batch::new();
    queue_add_tag(&mut batch, tenant, id, tag);
    Ok(batch.run(conn).await? > 0)
}

/// Queues [`add_tag`] in `batch`.
pub fn queue_add_tag(batch: &mut Batch, tenant: &str, id: &str, tag: &str) {
    batch.push(
        "INSERT INTO customer_tags (tenant_id, customer_id, tag) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
            .into(),
        vec![tenant.into(), id.into(), tag.into()],
    );
}

/// Removes a tag; returns whether it was there.
pub async fn remove_tag(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
    tag: &str,
) -> Result<bool> {
    let mut batch = Batch::new();
    queue_remove_tag(&mut batch, tenant, id, tag);
    Ok(batch.run(conn).await? > 0)
}

/// Queues [`remove_tag`] in `batch`.
pub fn queue_remove_tag(batch: &mut Batch, tenant: &str, id: &str, tag: &str) {
    batch.push(
        "DELETE FROM customer_tags WHERE tenant_id = ? AND customer_id = ? AND tag = ?".into(),
        vec![tenant.into(), id.into(), tag.into()],
    );
}

/// A stage change and why it happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageMove {
    pub from: Option<String>,
    pub to: String,
    pub reason: Reason,
    /// The reason in words.
    pub reason_text: String,
    /// The plugin that moved it, or `manual` for a person.
    pub plugin: String,
    pub plugin_version: String,
}

pub async fn move_stage(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
    m: &StageMove,
    event_id: Option<&str>,
    at: i64,
) -> Result<()> {
    super::move_stages(conn, tenant, &[(id, m)], event_id, at).await
}

/// A score as stored, with its reasons already in words.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StoredScore {
    pub plugin: String,
    pub plugin_version: String,
    pub value: f64,
    pub band: Option<String>,
    pub reasons: Vec<RenderedReason>,
    pub updated_at: i64,
}

/// A reason with its text.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RenderedReason {
    pub code: String,
    pub points: f64,
    pub args: Vec<f64>,
    pub text: String,
}

fn score_from_row(r: &sqlx::any::AnyRow) -> Result<StoredScore> {
    Ok(StoredScore {
        plugin: r.try_get("plugin")?,
        plugin_version: r.try_get("plugin_version")?,
        value: r.try_get("value")?,
        band: r.try_get("band")?,
        reasons: from_json(&r.try_get::<String, _>("reasons")?)?,
        updated_at: r.try_get("updated_at")?,
    })
}

pub async fn scores_of(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
) -> Result<Vec<StoredScore>> {
    sqlx::query(
        "SELECT plugin, plugin_version, value, band, reasons, updated_at FROM scores \
         WHERE tenant_id = $1 AND customer_id = $2 ORDER BY plugin",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(conn)
    .await?
    .iter()
    .map(score_from_row)
    .collect()
}

/// A segment a customer is in, and why.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SegmentMembership {
    pub plugin: String,
    pub segment: String,
    pub reason: RenderedReason,
    pub since: i64,
}

pub async fn memberships_of(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
) -> Result<Vec<SegmentMembership>> {
    sqlx::query(
        "SELECT plugin, segment, reason, since FROM memberships WHERE tenant_id = $1 AND customer_id = $2 \
         ORDER BY plugin, segment",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| {
        Ok(SegmentMembership {
            plugin: r.try_get("plugin")?,
            segment: r.try_get("segment")?,
            reason: from_json(&r.try_get::<String, _>("reason")?)?,
            since: r.try_get("since")?,
        })
    })
    .collect()
}

/// A reminder for staff to contact a customer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct FollowUp {
    #[sqlx(rename = "seq")]
    pub id: i64,
    pub due_at: i64,
    pub note: String,
    pub status: String,
    pub plugin: Option<String>,
    /// The plugin's key for it (contract 0.2.0), if it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[sqlx(rename = "follow_up_key")]
    pub key: Option<String>,
    pub created_at: i64,
}

/// Queues a follow-up for staff, due at `due_at`, in `batch`. With a `key`, an
/// open follow-up of the same plugin and key is updated instead (due time,
/// note, and the event that last asked for it).
#[allow(clippy::too_many_arguments)]
pub fn queue_follow_up(
    batch: &mut Batch,
    tenant: &str,
    id: &str,
    due_at: i64,
    note: &str,
    plugin: Option<&str>,
    key: Option<&str>,
    event_id: Option<&str>,
    at: i64,
) {
    batch.push(
        "INSERT INTO follow_ups (tenant_id, customer_id, due_at, note, status, plugin, follow_up_key, event_id, created_at) \
         VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?) \
         ON CONFLICT (tenant_id, customer_id, plugin, follow_up_key) \
           WHERE status = 'open' AND follow_up_key IS NOT NULL \
         DO UPDATE SET due_at = excluded.due_at, note = excluded.note, event_id = excluded.event_id"
            .into(),
        vec![
            tenant.into(),
            id.into(),
            due_at.into(),
            note.into(),
            plugin.into(),
            key.into(),
            event_id.into(),
            at.into(),
        ],
    );
}

/// Queues the closing of `plugin`'s open follow-up with `key`, if there is one.
pub fn queue_close_follow_up(
    batch: &mut Batch,
    tenant: &str,
    id: &str,
    plugin: &str,
    key: &str,
    at: i64,
) {
    batch.push(
        "UPDATE follow_ups SET status = 'closed', done_at = ? \
         WHERE tenant_id = ? AND customer_id = ? AND plugin = ? AND follow_up_key = ? AND status = 'open'"
            .into(),
        vec![at.into(), tenant.into(), id.into(), plugin.into(), key.into()],
    );
}

/// Queues `plugin`'s one pending wake for the customer: set (replacing any
/// earlier one, and any claim on it) or, with `None`, cancelled.
pub fn queue_wake(
    batch: &mut Batch,
    tenant: &str,
    id: &str,
    plugin: &str,
    due_at: Option<i64>,
    event_id: Option<&str>,
    at: i64,
) {
    match due_at {
        Some(due) => batch.push(
            "INSERT INTO wakes (tenant_id, customer_id, plugin, due_at, set_at, event_id) \
             VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (tenant_id, customer_id, plugin) DO UPDATE SET due_at = excluded.due_at, \
               set_at = excluded.set_at, event_id = excluded.event_id, claimed_by = NULL, lease_until = NULL"
                .into(),
            vec![
                tenant.into(),
                id.into(),
                plugin.into(),
                due.into(),
                at.into(),
                event_id.into(),
            ],
        ),
        None => batch.push(
            "DELETE FROM wakes WHERE tenant_id = ? AND customer_id = ? AND plugin = ?".into(),
            vec![tenant.into(), id.into(), plugin.into()],
        ),
    }
}

/// A plugin's pending wake for a customer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Wake {
    pub plugin: String,
    pub due_at: i64,
    pub set_at: i64,
}

/// The customer's pending wakes, soonest first.
pub async fn wakes_of(conn: &mut AnyConnection, tenant: &str, id: &str) -> Result<Vec<Wake>> {
    Ok(sqlx::query_as(
        "SELECT plugin, due_at, set_at FROM wakes WHERE tenant_id = $1 AND customer_id = $2 \
         ORDER BY due_at, plugin",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(conn)
    .await?)
}

/// Marks an open follow-up of a customer done; `false` if there is no such open one.
pub async fn complete_follow_up(
    conn: &mut AnyConnection,
    tenant: &str,
    customer: &str,
    id: i64,
    at: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE follow_ups SET status = 'done', done_at = $1 \
         WHERE tenant_id = $2 AND customer_id = $3 AND seq = $4 AND status = 'open'",
    )
    .bind(at)
    .bind(tenant)
    .bind(customer)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    if r.rows_affected() == 0 {
        return Ok(false);
    }
    // An event reads how many follow-ups are open (plugins may add only so
    // many): its reads ahead of the writer are stale now.
    sqlx::query("UPDATE customers SET rev = rev + 1 WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(customer)
        .execute(conn)
        .await?;
    Ok(true)
}

pub async fn open_follow_ups(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
) -> Result<Vec<FollowUp>> {
    Ok(sqlx::query_as(
        "SELECT seq, due_at, note, status, plugin, follow_up_key, created_at FROM follow_ups \
         WHERE tenant_id = $1 AND customer_id = $2 AND status = 'open' ORDER BY due_at",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(conn)
    .await?)
}

/// Filters for the customer list.
#[derive(Debug, Clone, Default)]
pub struct CustomerFilter {
    pub stage: Option<String>,
    pub segment: Option<String>,
    pub tag: Option<String>,
    /// A case-insensitive piece of the id or the name.
    pub text: Option<String>,
    /// Only customers with a score within these bounds (of `score_plugin`, or any plugin).
    pub score_plugin: Option<String>,
    pub min_score: Option<f64>,
    pub max_score: Option<f64>,
    /// Only customers whose id sorts after this one (the cursor).
    pub after: Option<String>,
    pub limit: i64,
}

/// A row of the customer list.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct CustomerSummary {
    pub id: String,
    pub name: Option<String>,
    pub stage: Option<String>,
    pub source: Option<String>,
    pub orders: i64,
    pub spend_cents: i64,
    pub updated_at: i64,
}

/// Customers in id order, filtered, at most `limit`.
/// `%piece%` in lower case, with LIKE's own characters escaped.
fn like_pattern(piece: &str) -> String {
    let mut p = String::from("%");
    for ch in piece.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(ch);
    }
    p.push('%');
    p
}

pub async fn list_customers(
    conn: &mut AnyConnection,
    tenant: &str,
    f: &CustomerFilter,
) -> Result<Vec<CustomerSummary>> {
    // Every filter is optional: `$n IS NULL OR ...` keeps one statement for all cases.
    Ok(sqlx::query_as(
        "SELECT c.id, c.name, c.stage, c.source, c.orders, c.spend_cents, c.updated_at FROM customers c \
         WHERE c.tenant_id = $1 \
         AND ($2 IS NULL OR c.stage = $2) \
         AND ($3 IS NULL OR EXISTS (SELECT 1 FROM memberships m WHERE m.tenant_id = c.tenant_id AND m.customer_id = c.id AND m.segment = $3)) \
         AND ($4 IS NULL OR EXISTS (SELECT 1 FROM customer_tags t WHERE t.tenant_id = c.tenant_id AND t.customer_id = c.id AND t.tag = $4)) \
         AND ($5 IS NULL OR c.id > $5) \
         AND ($7 IS NULL OR LOWER(c.id) LIKE $7 ESCAPE '\\' OR LOWER(COALESCE(c.name, '')) LIKE $7 ESCAPE '\\') \
         AND ($8 = 0 OR EXISTS (SELECT 1 FROM scores s WHERE s.tenant_id = c.tenant_id AND s.customer_id = c.id \
              AND ($9 IS NULL OR s.plugin = $9) AND s.value >= $10 AND s.value <= $11)) \
         ORDER BY c.id LIMIT $6",
    )
    .bind(tenant)
    .bind(&f.stage)
    .bind(&f.segment)
    .bind(&f.tag)
    .bind(&f.after)
    .bind(f.limit)
    .bind(f.text.as_deref().map(like_pattern))
    .bind(i64::from(
        f.min_score.is_some() || f.max_score.is_some() || f.score_plugin.is_some(),
    ))
    .bind(&f.score_plugin)
    .bind(f.min_score.unwrap_or(f64::MIN))
    .bind(f.max_score.unwrap_or(f64::MAX))
    .fetch_all(conn)
    .await?)
}

/// An open follow-up on an agent's work list, with its customer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct WorkItem {
    /// The follow-up's number (for `done` and `snooze`).
    #[sqlx(rename = "seq")]
    pub id: i64,
    pub customer_id: String,
    pub customer_name: Option<String>,
    pub owner: Option<String>,
    pub due_at: i64,
    pub note: String,
    pub plugin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[sqlx(rename = "follow_up_key")]
    pub key: Option<String>,
    pub created_at: i64,
}

/// The open follow-ups of the customers `owner` looks after (`None`: of those
/// nobody looks after), due before `due_before` if given, soonest first.
pub async fn work_list(
    conn: &mut AnyConnection,
    tenant: &str,
    owner: Option<&str>,
    due_before: Option<i64>,
    limit: i64,
) -> Result<Vec<WorkItem>> {
    let who = match owner {
        Some(_) => "c.owner = $2",
        None => "c.owner IS NULL AND CAST($2 AS TEXT) IS NULL",
    };
    Ok(sqlx::query_as(&format!(
        "SELECT f.seq, f.customer_id, c.name AS customer_name, c.owner, f.due_at, f.note, f.plugin, \
                f.follow_up_key, f.created_at \
         FROM follow_ups f JOIN customers c ON c.tenant_id = f.tenant_id AND c.id = f.customer_id \
         WHERE f.tenant_id = $1 AND f.status = 'open' AND {who} AND f.due_at < $3 \
         ORDER BY f.due_at, f.seq LIMIT $4"
    ))
    .bind(tenant)
    .bind(owner)
    .bind(due_before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Moves an open follow-up's due time; `false` if there is no such open one.
pub async fn snooze_follow_up(
    conn: &mut AnyConnection,
    tenant: &str,
    customer: &str,
    id: i64,
    until: i64,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE follow_ups SET due_at = $1 \
         WHERE tenant_id = $2 AND customer_id = $3 AND seq = $4 AND status = 'open'",
    )
    .bind(until)
    .bind(tenant)
    .bind(customer)
    .bind(id)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}
