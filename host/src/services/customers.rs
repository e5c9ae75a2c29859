//! Customers: what clients send to create and change them (checked here), the
//! customer view, lists, timelines and follow-ups.

use super::{invalid, CrmError};
use crate::domain::changes::{ChangeType, NewChange};
use crate::domain::text::text_problem;
use crate::domain::{
    self, field_value_from_json, time::Clock, CustomerRecord, FieldEntry, ALWAYS_SENSITIVE,
};
use crate::packs::Packs;
use crate::pipeline::PipelineError;
use crate::runtime::{is_valid_tag, Reason};
use crate::store::{self, NewCustomer, StageMove, Store};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

/// A customer as a client creates it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerInput {
    /// Your id for the customer; one is generated if absent.
    #[serde(default)]
    #[schema(pattern = "^[!-.0-~]{1,128}$")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Where the customer came from: `web`, `referral`, `event`, `rep-visit`...
    #[serde(default)]
    pub source: Option<String>,
    /// The agent who looks after the customer (their follow-ups make that
    /// agent's work list): 1-64 characters, as the agent's token is labelled.
    #[serde(default)]
    pub owner: Option<String>,
    /// ms since the epoch or an RFC 3339 time; defaults to now.
    #[serde(default, deserialize_with = "crate::domain::time::de_time")]
    pub created_at: Option<i64>,
    #[serde(default)]
    pub fields: BTreeMap<String, Json>,
    /// Field keys to withhold from plugins (phone, email and national_id always are).
    #[serde(default)]
    pub sensitive: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Changes to a customer; absent parts stay as they are.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    /// The agent who looks after the customer; `""` leaves them with none.
    #[serde(default)]
    pub owner: Option<String>,
    /// `null` removes a field.
    #[serde(default)]
    pub fields: BTreeMap<String, Json>,
    #[serde(default)]
    pub sensitive: Vec<String>,
    #[serde(default)]
    pub add_tags: Vec<String>,
    #[serde(default)]
    pub remove_tags: Vec<String>,
    /// Move to this stage by hand (it must be in the lifecycle owner's graph).
    #[serde(default)]
    pub stage: Option<String>,
}

/// The figures the host keeps for a customer, as the API shows them (the
/// SDK's `Metrics`, which plugins read; described here for `/openapi.json`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct MetricsDoc {
    /// Orders placed.
    orders: u32,
    /// Distinct days with at least one order.
    purchase_days: u32,
    /// Sum of order amounts, in cents.
    total_spend_cents: i64,
    first_order_at: Option<i64>,
    last_order_at: Option<i64>,
    last_contact_at: Option<i64>,
    complaints: u32,
    referrals: u32,
    /// Touchpoints (any event) in the 90 days before now.
    touchpoints_90d: u32,
}

/// An agent's work list (see [`Customers::work_list`]).
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct WorkList {
    /// Whose list: `null` for customers nobody looks after.
    pub owner: Option<String>,
    /// The clock's now the parts are cut at.
    pub now: i64,
    pub overdue: Vec<store::WorkItem>,
    pub due_today: Vec<store::WorkItem>,
    pub later: Vec<store::WorkItem>,
}

/// Everything about a customer, for the API.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CustomerView {
    pub id: String,
    pub name: Option<String>,
    pub source: Option<String>,
    pub stage: Option<String>,
    /// The agent who looks after the customer.
    pub owner: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    #[schema(value_type = MetricsDoc)]
    pub metrics: stagecraft_plugin::snapshot::Metrics,
    pub fields: BTreeMap<String, Json>,
    pub sensitive_fields: Vec<String>,
    pub tags: Vec<String>,
    pub segments: Vec<store::SegmentMembership>,
    pub scores: BTreeMap<String, store::StoredScore>,
    pub follow_ups: Vec<store::FollowUp>,
    /// Plugins' pending wakes (contract 0.2.0), soonest first.
    pub wakes: Vec<store::Wake>,
}

/// Free text a client sends (a name): at most [`domain::MAX_TEXT`] bytes, no NUL or
/// other control characters (newline and tab aside), whichever way it arrives.
fn check_text(what: &str, v: &Option<String>) -> Result<(), CrmError> {
    match v.as_deref().and_then(|s| text_problem(s, domain::MAX_TEXT)) {
        Some(p) => Err(invalid(format!("{what} {p}"))),
        None => Ok(()),
    }
}

fn check_tags(tags: &[String]) -> Result<(), CrmError> {
    if tags.len() > domain::MAX_TAGS {
        return Err(invalid(format!("at most {} tags", domain::MAX_TAGS)));
    }
    match tags.iter().find(|t| !is_valid_tag(t)) {
        Some(t) => Err(invalid(format!(
            "tag {:?} must be 1-64 characters of a-z, 0-9, :, _ and -",
            t.chars().take(40).collect::<String>()
        ))),
        None => Ok(()),
    }
}

/// The per-customer caps on tags and fields, for a patch of `current`: only
/// growth past a cap is refused (a customer over it from before can shrink).
fn check_customer_caps(
    current: &CustomerRecord,
    patch: &CustomerPatch,
    set: &[FieldEntry],
) -> Result<(), CrmError> {
    let mut tags: std::collections::BTreeSet<&str> =
        current.tags.iter().map(String::as_str).collect();
    tags.extend(patch.add_tags.iter().map(String::as_str));
    for t in &patch.remove_tags {
        tags.remove(t.as_str());
    }
    let mut fields: std::collections::BTreeSet<&str> =
        current.fields.iter().map(|f| f.key.as_str()).collect();
    fields.extend(set.iter().map(|f| f.key.as_str()));
    for (k, v) in &patch.fields {
        if v.is_null() {
            fields.remove(k.as_str());
        }
    }
    for (what, before, after, cap) in [
        (
            "tags",
            current.tags.len(),
            tags.len(),
            domain::MAX_CUSTOMER_TAGS,
        ),
        (
            "fields",
            current.fields.len(),
            fields.len(),
            domain::MAX_CUSTOMER_FIELDS,
        ),
    ] {
        if after > cap && after > before {
            return Err(invalid(format!(
                "the customer would have {after} {what}, at most {cap}"
            )));
        }
    }
    Ok(())
}

fn field_entries(
    fields: &BTreeMap<String, Json>,
    sensitive: &[String],
) -> Result<Vec<FieldEntry>, CrmError> {
    if fields.len() > domain::MAX_FIELDS {
        return Err(invalid(format!("at most {} fields", domain::MAX_FIELDS)));
    }
    let mut out = Vec::new();
    for (k, v) in fields {
        if !domain::is_slug(k) {
            return Err(invalid(format!(
                "field key {:?} must be 1-64 characters of a-z, 0-9, _ and -",
                k.chars().take(40).collect::<String>()
            )));
        }
        if v.is_null() {
            continue;
        }
        out.push(FieldEntry {
            key: k.clone(),
            value: field_value_from_json(k, v).map_err(invalid)?,
            sensitive: sensitive.contains(k) || ALWAYS_SENSITIVE.contains(&k.as_str()),
        });
    }
    Ok(out)
}

/// Checks a customer input and gives it an id if it has none.
pub(crate) fn validate_customer(input: CustomerInput, now: i64) -> Result<NewCustomer, CrmError> {
    let id = input
        .id
        .clone()
        .unwrap_or_else(|| format!("c_{}", uuid::Uuid::now_v7().simple()));
    if !domain::is_customer_id(&id) {
        return Err(invalid(format!(
            "id {:?} must be 1-128 printable ASCII characters without /",
            id.chars().take(40).collect::<String>()
        )));
    }
    check_text("name", &input.name)?;
    if let Some(s) = &input.source {
        if !domain::is_slug(s) {
            return Err(invalid(
                "source must be 1-64 characters of a-z, 0-9, _ and -",
            ));
        }
    }
    check_tags(&input.tags)?;
    check_owner(input.owner.as_deref().filter(|o| !o.is_empty()))?;
    Ok(NewCustomer {
        id,
        name: input.name,
        source: input.source,
        owner: input.owner.filter(|o| !o.is_empty()),
        created_at: input.created_at.unwrap_or(now),
        fields: field_entries(&input.fields, &input.sensitive)?,
        tags: input.tags,
    })
}

/// An owner is an agent's name as their token is labelled: 1-64 bytes of text.
fn check_owner(owner: Option<&str>) -> Result<(), CrmError> {
    match owner.and_then(|o| text_problem(o, 64)) {
        Some(p) => Err(invalid(format!("owner {p}"))),
        None => Ok(()),
    }
}

/// Customers: their profiles, views, lists, timelines and follow-ups.
#[derive(Clone, Debug)]
pub struct Customers {
    store: Store,
    packs: Packs,
    /// The one clock (see [`Clock`]).
    clock: Clock,
}

impl Customers {
    pub(crate) fn new(store: Store, packs: Packs, clock: Clock) -> Customers {
        Customers {
            store,
            packs,
            clock,
        }
    }

    /// Creates a customer; returns its id.
    pub async fn create_customer(
        &self,
        tenant: &str,
        input: CustomerInput,
    ) -> Result<String, CrmError> {
        let c = validate_customer(input, self.clock.now())?;
        let id = c.id.clone();
        let mut tx = self.store.begin().await?;
        insert_customer(&mut tx, tenant, &c).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Applies a patch in one transaction.
    pub async fn update_customer(
        &self,
        tenant: &str,
        id: &str,
        patch: CustomerPatch,
    ) -> Result<(), CrmError> {
        check_text("name", &patch.name)?;
        if let Some(s) = &patch.source {
            if !domain::is_slug(s) {
                return Err(invalid(
                    "source must be 1-64 characters of a-z, 0-9, _ and -",
                ));
            }
        }
        check_tags(&patch.add_tags)?;
        check_tags(&patch.remove_tags)?;
        check_owner(patch.owner.as_deref().filter(|o| !o.is_empty()))?;
        let set = field_entries(&patch.fields, &patch.sensitive)?;
        let owner = self.packs.for_tenant(tenant);
        let owner = owner.lifecycle_owner();
        if let Some(stage) = &patch.stage {
            match owner {
                Some(o) if !o.plugin.manifest().has_stage(stage) => {
                    return Err(invalid(format!(
                        "stage {stage:?} is not in the stage graph of {}",
                        o.name()
                    )))
                }
                None if !domain::is_slug(stage) => {
                    return Err(invalid(
                        "stage must be 1-64 characters of a-z, 0-9, _ and -",
                    ))
                }
                _ => {}
            }
        }
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let backend = tx.backend();
        let current = store::load_customer(tx.conn(), backend, tenant, id, true)
            .await?
            .ok_or_else(|| PipelineError::UnknownCustomer(id.to_string()))?;
        check_customer_caps(&current, &patch, &set)?;
        store::update_profile(
            tx.conn(),
            tenant,
            id,
            patch.name.as_deref(),
            patch.source.as_deref(),
            now,
        )
        .await?;
        if let Some(o) = &patch.owner {
            let mut b = store::Batch::new();
            store::queue_owner(
                &mut b,
                tenant,
                id,
                Some(o.as_str()).filter(|o| !o.is_empty()),
            );
            b.run(tx.conn()).await?;
        }
        for f in &set {
            store::set_field(tx.conn(), tenant, id, f).await?;
        }
        for (k, v) in &patch.fields {
            if v.is_null() {
                store::remove_field(tx.conn(), tenant, id, k).await?;
            }
        }
        let mut changes = Vec::new();
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for t in &patch.add_tags {
            if store::add_tag(tx.conn(), tenant, id, t).await? {
                added.push(t.clone());
            }
        }
        for t in &patch.remove_tags {
            if store::remove_tag(tx.conn(), tenant, id, t).await? {
                removed.push(t.clone());
            }
        }
        changes.extend(crate::pipeline::tags_changed(id, &added, &removed, None));
        if let Some(stage) = &patch.stage {
            if current.stage.as_deref() != Some(stage.as_str()) {
                let mv = StageMove {
                    from: current.stage.clone(),
                    to: stage.clone(),
                    reason: Reason {
                        code: "manual".into(),
                        points: 0.0,
                        args: vec![],
                    },
                    reason_text: "moved by hand".into(),
                    plugin: "manual".into(),
                    plugin_version: "-".into(),
                };
                store::move_stage(tx.conn(), tenant, id, &mv, None, now).await?;
                changes.push(crate::pipeline::stage_changed(id, &mv, None));
            }
        }
        if let Some(updated) = profile_updated(id, &current, &patch, &set) {
            changes.insert(0, updated);
        }
        store::insert_changes(tx.conn(), tenant, &changes, now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn customer_view(&self, tenant: &str, id: &str) -> Result<CustomerView, CrmError> {
        let mut conn = self.store.conn().await?;
        let backend = self.store.backend();
        let c: CustomerRecord = store::load_customer(&mut conn, backend, tenant, id, false)
            .await?
            .ok_or_else(|| PipelineError::UnknownCustomer(id.to_string()))?;
        let mut metrics = c.metrics;
        metrics.touchpoints_90d =
            store::touchpoints_90d(&mut conn, tenant, id, self.clock.now()).await?;
        Ok(CustomerView {
            id: c.id,
            name: c.name,
            source: c.source,
            stage: c.stage,
            owner: c.owner,
            created_at: c.created_at,
            updated_at: c.updated_at,
            metrics,
            fields: c
                .fields
                .iter()
                .map(|f| (f.key.clone(), domain::field_value_to_json(&f.value)))
                .collect(),
            sensitive_fields: c
                .fields
                .iter()
                .filter(|f| f.sensitive)
                .map(|f| f.key.clone())
                .collect(),
            tags: c.tags,
            segments: store::memberships_of(&mut conn, tenant, id).await?,
            scores: store::scores_of(&mut conn, tenant, id)
                .await?
                .into_iter()
                .map(|s| (s.plugin.clone(), s))
                .collect(),
            follow_ups: store::open_follow_ups(&mut conn, tenant, id).await?,
            wakes: store::wakes_of(&mut conn, tenant, id).await?,
        })
    }

    /// A page of customers that match `filter`.
    pub async fn list(
        &self,
        tenant: &str,
        filter: &store::CustomerFilter,
    ) -> Result<Vec<store::CustomerSummary>, CrmError> {
        let mut conn = self.store.conn().await?;
        Ok(store::list_customers(&mut conn, tenant, filter).await?)
    }

    /// A customer's timeline, newest first; `None` if there is no such customer.
    pub async fn timeline(
        &self,
        tenant: &str,
        id: &str,
        limit: i64,
    ) -> Result<Option<Vec<store::TimelineEntry>>, CrmError> {
        let mut conn = self.store.conn().await?;
        if !store::customer_exists(&mut conn, tenant, id).await? {
            return Ok(None);
        }
        Ok(Some(store::timeline(&mut conn, tenant, id, limit).await?))
    }

    /// An agent's work list: the open follow-ups of the customers `owner`
    /// looks after (`None`: of customers nobody looks after), due before
    /// `due_before` if given, in three parts by the clock: overdue, due today
    /// (UTC), later; soonest first, at most `limit` in all.
    pub async fn work_list(
        &self,
        tenant: &str,
        owner: Option<&str>,
        due_before: Option<i64>,
        limit: i64,
    ) -> Result<WorkList, CrmError> {
        let now = self.clock.now();
        let end_of_today = (domain::day_of(now) + 1) * stagecraft_plugin::snapshot::DAY_MS;
        let mut conn = self.store.conn().await?;
        let items = store::work_list(&mut conn, tenant, owner, due_before, limit).await?;
        let mut list = WorkList {
            owner: owner.map(str::to_string),
            now,
            ..Default::default()
        };
        for i in items {
            match i.due_at {
                d if d < now => list.overdue.push(i),
                d if d < end_of_today => list.due_today.push(i),
                _ => list.later.push(i),
            }
        }
        Ok(list)
    }

    /// Moves an open follow-up's due time to `until` (which must be later than
    /// now); `false` if there is no such open follow-up.
    pub async fn snooze_follow_up(
        &self,
        tenant: &str,
        id: &str,
        follow_up: i64,
        until: i64,
    ) -> Result<bool, CrmError> {
        if until <= self.clock.now() {
            return Err(invalid("a follow-up is snoozed until a time after now"));
        }
        let mut conn = self.store.conn().await?;
        Ok(store::snooze_follow_up(&mut conn, tenant, id, follow_up, until).await?)
    }

    /// Marks an open follow-up done; `false` if there is no such open follow-up.
    pub async fn complete_follow_up(
        &self,
        tenant: &str,
        id: &str,
        follow_up: i64,
    ) -> Result<bool, CrmError> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        if !store::complete_follow_up(tx.conn(), tenant, id, follow_up, now).await? {
            return Ok(false);
        }
        let done = NewChange::customer(
            ChangeType::FollowUpDone,
            id,
            json!({ "follow_up_id": follow_up, "by": "user" }),
        );
        store::insert_changes(tx.conn(), tenant, &[done], now).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Inserts a new customer and records `customer.created`: the one way a
/// customer is made (the API, the importers).
pub(crate) async fn insert_customer(
    tx: &mut store::Tx,
    tenant: &str,
    c: &NewCustomer,
) -> Result<(), store::StoreError> {
    let created = NewChange::customer(
        ChangeType::CustomerCreated,
        &c.id,
        json!({
            "name": c.name,
            "source": c.source,
            "owner": c.owner,
            "tags": c.tags,
            "fields": public_fields(&c.fields),
        }),
    );
    store::insert_customer(tx.conn(), tenant, c).await?;
    store::insert_changes(tx.conn(), tenant, &[created], c.created_at).await?;
    Ok(())
}

/// The fields a change record may show: those not sensitive, by key.
fn public_fields(fields: &[FieldEntry]) -> BTreeMap<String, Json> {
    fields
        .iter()
        .filter(|f| !f.sensitive && !ALWAYS_SENSITIVE.contains(&f.key.as_str()))
        .map(|f| (f.key.clone(), domain::field_value_to_json(&f.value)))
        .collect()
}

/// The record of a profile update: the keys it changed (`name`, `source`,
/// `owner`, `fields.<key>`) and their new values, sensitive fields by key
/// only; `None` if the patch changed none of them (tags and the stage have
/// records of their own).
fn profile_updated(
    id: &str,
    current: &domain::CustomerRecord,
    patch: &CustomerPatch,
    set: &[FieldEntry],
) -> Option<NewChange> {
    let mut changed: Vec<String> = Vec::new();
    let mut values = serde_json::Map::new();
    let mut profile = |key: &str, new: Option<&str>, old: Option<&str>| {
        if let Some(new) = new {
            let new = Some(new).filter(|v| !v.is_empty());
            if new != old {
                changed.push(key.to_string());
                values.insert(key.to_string(), json!(new));
            }
        }
    };
    profile("name", patch.name.as_deref(), current.name.as_deref());
    profile("source", patch.source.as_deref(), current.source.as_deref());
    profile("owner", patch.owner.as_deref(), current.owner.as_deref());
    let mut fields = serde_json::Map::new();
    for f in set {
        let was = current.fields.iter().find(|c| c.key == f.key);
        if was.is_some_and(|w| w.value == f.value && w.sensitive == f.sensitive) {
            continue;
        }
        changed.push(format!("fields.{}", f.key));
        let sensitive = f.sensitive
            || was.is_some_and(|w| w.sensitive)
            || ALWAYS_SENSITIVE.contains(&f.key.as_str());
        if !sensitive {
            fields.insert(f.key.clone(), domain::field_value_to_json(&f.value));
        }
    }
    for (k, v) in &patch.fields {
        if v.is_null() && current.fields.iter().any(|c| &c.key == k) {
            changed.push(format!("fields.{k}"));
            fields.insert(k.clone(), Json::Null);
        }
    }
    if changed.is_empty() {
        return None;
    }
    values.insert("fields".into(), Json::Object(fields));
    values.insert("changed".into(), json!(changed));
    Some(NewChange::customer(
        ChangeType::CustomerUpdated,
        id,
        Json::Object(values),
    ))
}
