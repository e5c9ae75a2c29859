//! The CRM's operations, shared by the HTTP API and the command line: customers,
//! events through the pipeline, and the customer view.

use crate::group_commit::GroupCommit;
use crate::model::{
    self, field_value_from_json, now_ms, CustomerRecord, FieldEntry, ALWAYS_SENSITIVE,
};
use crate::packs::Packs;
use crate::pipeline::{self, EventInput, EventJob, EventOutcome, PipelineError};
use crate::runtime::budget::text_problem;
use crate::runtime::{is_valid_tag, Reason};
use crate::store::{self, Backend, NewCustomer, StageMove, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The store and the enabled plugins: everything a request needs.
#[derive(Clone, Debug)]
pub struct Crm {
    pub store: Store,
    pub packs: Packs,
    /// SQLite: events that arrive together are recorded in one transaction.
    group_commit: Option<Arc<GroupCommit>>,
    /// How long a bulk job's chunk claim lasts without its heartbeat.
    chunk_lease: std::time::Duration,
}

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
    /// ms since the epoch or an RFC 3339 time; defaults to now.
    #[serde(default, deserialize_with = "crate::import::de_time")]
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

/// Everything about a customer, for the API.
#[derive(Debug, Clone, Serialize)]
pub struct CustomerView {
    pub id: String,
    pub name: Option<String>,
    pub source: Option<String>,
    pub stage: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub metrics: stagecraft_plugin::snapshot::Metrics,
    pub fields: BTreeMap<String, Json>,
    pub sensitive_fields: Vec<String>,
    pub tags: Vec<String>,
    pub segments: Vec<store::SegmentMembership>,
    pub scores: BTreeMap<String, store::StoredScore>,
    pub follow_ups: Vec<store::FollowUp>,
}

#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A fault of the host itself (a task that panicked), not of the request.
    #[error("{0}")]
    Internal(String),
}

fn invalid(m: impl Into<String>) -> CrmError {
    CrmError::Pipeline(PipelineError::Invalid(m.into()))
}

/// Free text a client sends (a name): at most [`model::MAX_TEXT`] bytes, no NUL or
/// other control characters (newline and tab aside), whichever way it arrives.
fn check_text(what: &str, v: &Option<String>) -> Result<(), CrmError> {
    match v.as_deref().and_then(|s| text_problem(s, model::MAX_TEXT)) {
        Some(p) => Err(invalid(format!("{what} {p}"))),
        None => Ok(()),
    }
}

fn check_tags(tags: &[String]) -> Result<(), CrmError> {
    if tags.len() > model::MAX_TAGS {
        return Err(invalid(format!("at most {} tags", model::MAX_TAGS)));
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
            model::MAX_CUSTOMER_TAGS,
        ),
        (
            "fields",
            current.fields.len(),
            fields.len(),
            model::MAX_CUSTOMER_FIELDS,
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
    if fields.len() > model::MAX_FIELDS {
        return Err(invalid(format!("at most {} fields", model::MAX_FIELDS)));
    }
    let mut out = Vec::new();
    for (k, v) in fields {
        if !model::is_slug(k) {
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
    if !model::is_customer_id(&id) {
        return Err(invalid(format!(
            "id {:?} must be 1-128 printable ASCII characters without /",
            id.chars().take(40).collect::<String>()
        )));
    }
    check_text("name", &input.name)?;
    if let Some(s) = &input.source {
        if !model::is_slug(s) {
            return Err(invalid(
                "source must be 1-64 characters of a-z, 0-9, _ and -",
            ));
        }
    }
    check_tags(&input.tags)?;
    Ok(NewCustomer {
        id,
        name: input.name,
        source: input.source,
        created_at: input.created_at.unwrap_or(now),
        fields: field_entries(&input.fields, &input.sensitive)?,
        tags: input.tags,
    })
}

impl Crm {
    pub fn new(store: Store, packs: Packs) -> Crm {
        let group_commit = (store.backend() == Backend::Sqlite).then(Arc::default);
        Crm {
            store,
            packs,
            group_commit,
            chunk_lease: crate::registry::CHUNK_LEASE,
        }
    }

    /// Sets how long a bulk job's chunk claim lasts without its heartbeat
    /// (default [`crate::registry::CHUNK_LEASE`]); the heartbeat renews it every quarter.
    pub fn with_chunk_lease(mut self, lease: std::time::Duration) -> Crm {
        self.chunk_lease = lease;
        self
    }

    pub fn chunk_lease(&self) -> std::time::Duration {
        self.chunk_lease
    }

    /// Turns group commit on or off (it is on for SQLite, off for PostgreSQL,
    /// whose transactions run side by side). The ingest bench compares the two.
    pub fn with_group_commit(mut self, on: bool) -> Crm {
        self.group_commit = on.then(Arc::default);
        self
    }

    /// Creates a customer; returns its id.
    pub async fn create_customer(
        &self,
        tenant: &str,
        input: CustomerInput,
    ) -> Result<String, CrmError> {
        let c = validate_customer(input, now_ms())?;
        let id = c.id.clone();
        let mut tx = self.store.begin().await?;
        store::insert_customer(tx.conn(), tenant, &c).await?;
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
            if !model::is_slug(s) {
                return Err(invalid(
                    "source must be 1-64 characters of a-z, 0-9, _ and -",
                ));
            }
        }
        check_tags(&patch.add_tags)?;
        check_tags(&patch.remove_tags)?;
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
                None if !model::is_slug(stage) => {
                    return Err(invalid(
                        "stage must be 1-64 characters of a-z, 0-9, _ and -",
                    ))
                }
                _ => {}
            }
        }
        let now = now_ms();
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
        for f in &set {
            store::set_field(tx.conn(), tenant, id, f).await?;
        }
        for (k, v) in &patch.fields {
            if v.is_null() {
                store::remove_field(tx.conn(), tenant, id, k).await?;
            }
        }
        for t in &patch.add_tags {
            store::add_tag(tx.conn(), tenant, id, t).await?;
        }
        for t in &patch.remove_tags {
            store::remove_tag(tx.conn(), tenant, id, t).await?;
        }
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
            }
        }
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
        metrics.touchpoints_90d = store::touchpoints_90d(&mut conn, tenant, id, now_ms()).await?;
        Ok(CustomerView {
            id: c.id,
            name: c.name,
            source: c.source,
            stage: c.stage,
            created_at: c.created_at,
            updated_at: c.updated_at,
            metrics,
            fields: c
                .fields
                .iter()
                .map(|f| (f.key.clone(), model::field_value_to_json(&f.value)))
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
        })
    }

    /// Records one event in its own transaction and runs the plugins on it.
    /// `now` is what plugins are told (the current time unless replaying history).
    pub async fn record_event(
        &self,
        tenant: &str,
        customer_id: &str,
        input: &EventInput,
        idempotency_key: Option<&str>,
        now: Option<i64>,
    ) -> Result<EventOutcome, CrmError> {
        if let Some(k) = idempotency_key {
            model::check_idempotency_key(k).map_err(invalid)?;
        }
        let wall = now_ms();
        let event = input.validate(wall)?;
        let now = now.unwrap_or(wall);
        let packs = self.packs.for_tenant(tenant);
        let job = EventJob::new(
            packs.clone(),
            tenant,
            customer_id,
            event,
            idempotency_key,
            now,
        );
        let outcome = match &self.group_commit {
            Some(g) => {
                // The plugins run before the event joins the queue, beside the
                // other requests' and outside the writer's hold.
                let ahead = pipeline::evaluate_ahead(&self.store, &job).await;
                let job = EventJob {
                    ahead: ahead.map(Arc::new),
                    ..job
                };
                self.record_grouped(g, job).await?
            }
            None => self.record_alone(job).await?,
        };
        if !outcome.replayed {
            for p in &packs.packs {
                let failure = outcome.failures.iter().find(|f| f.plugin == p.name());
                self.record_health(tenant, p, failure.map(|f| f.message.as_str()))
                    .await;
            }
        }
        Ok(outcome)
    }

    /// Records one event in a transaction of its own.
    pub(crate) async fn record_alone(&self, job: EventJob) -> Result<EventOutcome, CrmError> {
        let mut tx = self.store.begin().await?;
        let key = job.idempotency_key.as_deref();
        match pipeline::record_one(&mut tx, &job).await {
            Ok(o) if o.replayed => Ok(o),
            Ok(o) => match tx.commit().await {
                Ok(()) => Ok(o),
                Err(e) => self.replay_on_race(&job.tenant, key, e).await,
            },
            Err(PipelineError::Store(e)) => {
                drop(tx);
                self.replay_on_race(&job.tenant, key, e).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Two requests with one idempotency key raced and the other won: answer
    /// with what it stored.
    async fn replay_on_race(
        &self,
        tenant: &str,
        key: Option<&str>,
        e: StoreError,
    ) -> Result<EventOutcome, CrmError> {
        if let (Some(key), true) = (key, e.is_unique_violation()) {
            let mut conn = self.store.conn().await?;
            if let Some((_, _, outcome)) = store::event_by_key(&mut conn, tenant, key).await? {
                let mut o: EventOutcome = serde_json::from_value(outcome)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                o.replayed = true;
                return Ok(o);
            }
        }
        Err(e.into())
    }

    /// A tenant, an admin token and an audit line: what `stagecraft token create` does.
    pub async fn create_token(
        &self,
        tenant: &str,
        role: model::Role,
        label: &str,
    ) -> Result<store::NewToken, CrmError> {
        let mut tx = self.store.begin().await?;
        store::ensure_tenant(tx.conn(), tenant, tenant).await?;
        let t = store::create_token(tx.conn(), tenant, role, label).await?;
        store::audit(
            tx.conn(),
            tenant,
            "cli",
            "token.create",
            &t.id,
            &json!({ "role": role, "label": label }),
        )
        .await?;
        tx.commit().await?;
        Ok(t)
    }
}
