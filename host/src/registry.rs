//! The plugin registry and hot swap: upload versions, store rule sets, activate a
//! (version, rule-set version) pair atomically, roll back, dry-run a candidate
//! against the active pair, rescore in bulk, and the circuit breaker.
//!
//! Atomic means: a request takes the tenant's [`TenantPacks`](crate::packs::TenantPacks)
//! once at its start, so requests in flight finish on the old pair and every
//! later one gets the new; the new pair is loaded and compiled before it is
//! committed, so an activation never leaves a tenant with nothing to run.

use crate::crm::{Crm, CrmError};
use crate::model::{now_ms, CustomerRecord, EventRecord};
use crate::packs::{ActivePack, TenantPacks};
use crate::pipeline::{self, Effects, Evaluated, PipelineError, Strikes, RECENT_EVENTS};
use crate::runtime::{CallContext, LoadedPlugin, Manifest, RuntimeError};
use crate::store::{self, Pair, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The largest component accepted.
pub const MAX_COMPONENT_BYTES: usize = 16 << 20;
/// Dry-runs over more customers than this run as a job.
pub const INLINE_DRY_RUN: i64 = 1000;
/// Customers per chunk of a bulk rescore (and per batch call into a plugin).
pub const RESCORE_CHUNK: usize = 500;
/// Wall-clock budget of a dry-run answered inline (a job has none).
pub const INLINE_DRY_RUN_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a rescore chunk's claim lasts without a heartbeat before another
/// host may take the chunk over as left by a dead host.
pub const CHUNK_LEASE: std::time::Duration = std::time::Duration::from_secs(60);
/// Failures a dry-run report or a rescore job lists (all are counted).
pub const LISTED_FAILURES: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotFound(String),
    #[error("the component was rejected: {0}")]
    Rejected(RuntimeError),
    #[error("the rule set was rejected: {0}")]
    BadRules(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the component is {0} bytes; at most {MAX_COMPONENT_BYTES} are accepted")]
    TooLarge(usize),
    /// The change is committed, but this host could not load it (it retries
    /// with every sync): a fault of the host, not of the request.
    #[error("the change is stored, but this host could not load it yet: {0}")]
    Reload(crate::packs::PacksError),
}

impl From<CrmError> for RegistryError {
    fn from(e: CrmError) -> Self {
        match e {
            CrmError::Store(s) | CrmError::Pipeline(PipelineError::Store(s)) => {
                RegistryError::Store(s)
            }
            other => RegistryError::Invalid(other.to_string()),
        }
    }
}

/// What an upload did.
#[derive(Debug, Clone, Serialize)]
pub struct Uploaded {
    pub name: String,
    pub version: String,
    pub digest: String,
    /// `false` when these exact bytes were already stored.
    pub stored: bool,
    pub manifest: Manifest,
}

/// A pair to dry-run or activate, as a client names it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// Plugin version; the active one if absent.
    #[serde(default)]
    pub version: Option<String>,
    /// A stored rule-set version; `null` means the plugin's defaults.
    #[serde(default)]
    pub rules_version: Option<i64>,
    /// A rule set to try without storing it (dry-run only).
    #[serde(default)]
    pub rules: Option<Json>,
    /// Customers to compare: the first N by id (default 1,000).
    #[serde(default)]
    pub sample: Option<i64>,
    /// Compare every customer (runs as a job).
    #[serde(default)]
    pub all: bool,
    /// How many of the largest differences to list (default 20).
    #[serde(default)]
    pub top: Option<usize>,
}

/// Checks a rule set against a plugin's JSON Schema (if it declares one; checked
/// and compiled when the plugin was loaded, see [`crate::runtime::schema`]) and its `configure`.
fn check_rules(plugin: &LoadedPlugin, rules: &str) -> Result<(), RegistryError> {
    let value: Json = serde_json::from_str(rules)
        .map_err(|e| RegistryError::BadRules(format!("not JSON: {e}")))?;
    plugin
        .check_rules_schema(&value)
        .map_err(RegistryError::BadRules)?;
    plugin.check_rules(rules).map_err(|e| match e {
        RuntimeError::Plugin { error, .. } => RegistryError::BadRules(error.to_string()),
        busy @ RuntimeError::Busy(_) => RegistryError::Rejected(busy),
        other => RegistryError::BadRules(other.to_string()),
    })
}

/// One customer as a set of plugins leaves them, for the plugin under test: its
/// score, band, reasons and segments, and the customer's stage and tags after
/// every plugin ran (what a rescore with that set would write).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verdict {
    pub value: Option<f64>,
    pub band: Option<String>,
    pub reasons: Vec<String>,
    pub segments: Vec<String>,
    pub stage: Option<String>,
    /// The customer's tags afterwards, sorted.
    pub tags: Vec<String>,
    pub error: Option<String>,
}

/// Runs `packs` on each customer of a batch through the one evaluation path
/// ([`pipeline::evaluate`], on the customer's latest event) and derives what
/// would be written ([`pipeline::effects`]). Blocking.
///
/// Customers are independent, so the batch is cut across the cores; within a
/// thread each plugin's configured instance serves customer after customer, as
/// the batch calls of the rescore before did (a plugin keeps nothing between
/// calls, so the results are those of a fresh instance per customer).
fn reevaluate(
    packs: &TenantPacks,
    ctx: &CallContext,
    batch: &[(CustomerRecord, Vec<EventRecord>)],
    strikes: &Strikes,
) -> Vec<(Evaluated, Effects)> {
    // One thread's customers, in order, keeping each plugin's instance from one
    // customer to the next as a batch call would (a fresh one after a failure).
    let part = |customers: &[(CustomerRecord, Vec<EventRecord>)]| {
        let mut bulk = pipeline::Bulk::new(strikes);
        customers
            .iter()
            .map(|(c, recent)| {
                let (outputs, failures) = pipeline::evaluate(
                    packs,
                    ctx,
                    c.clone(),
                    recent,
                    0,
                    recent.first(),
                    Some(&mut bulk),
                );
                let fx = pipeline::effects(c, &outputs, ctx.now);
                ((outputs, failures), fx)
            })
            .collect::<Vec<_>>()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads < 2 || batch.len() < 32 {
        return part(batch);
    }
    let per = batch.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = batch
            .chunks(per)
            .map(|customers| scope.spawn(move || part(customers)))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("evaluation thread"))
            .collect()
    })
}

/// What `name` and the customer come to under a set of plugins (see [`Verdict`]).
fn verdict(
    name: &str,
    c: &CustomerRecord,
    (outputs, failures): &Evaluated,
    fx: &Effects,
) -> Verdict {
    let mut v = Verdict {
        stage: fx
            .stage_moves
            .last()
            .map(|m| m.to.clone())
            .or_else(|| c.stage.clone()),
        ..Default::default()
    };
    let mut tags: Vec<String> = c
        .tags
        .iter()
        .filter(|t| !fx.tags_removed.contains(t))
        .chain(&fx.tags_added)
        .cloned()
        .collect();
    tags.sort();
    v.tags = tags;
    if let Some(o) = outputs.iter().find(|o| o.name == name) {
        if let Some(s) = &o.score {
            v.value = Some(s.value);
            v.band = s.band.clone();
            v.reasons = s.reasons.iter().map(|r| r.text.clone()).collect();
        }
        if let Some(segs) = &o.segments {
            v.segments = segs.iter().map(|(s, _)| s.clone()).collect();
        }
    }
    v.error = failures
        .iter()
        .find(|f| f.plugin == name)
        .map(|f| f.message.clone());
    v
}

/// What a dry-run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DryRunReport {
    pub plugin: String,
    pub active: Option<Pair>,
    pub candidate: Pair,
    pub candidate_rules_inline: bool,
    pub customers: i64,
    pub changed: ChangeCounts,
    /// "before → after" band moves and how many customers make each.
    pub band_moves: BTreeMap<String, i64>,
    /// The customers whose score moves most, with reasons on both sides.
    pub largest: Vec<CustomerDiff>,
    /// Customers the candidate failed on, with its error (at most
    /// [`LISTED_FAILURES`]; `changed.errors_after` counts them all).
    pub failures: Vec<CustomerFailure>,
}

/// A customer a plugin failed on in a dry-run or a rescore.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CustomerFailure {
    pub customer_id: String,
    pub plugin: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChangeCounts {
    pub bands: i64,
    pub scores: i64,
    pub segments: i64,
    pub stages: i64,
    /// Customers whose tags differ afterwards.
    pub tags: i64,
    pub errors_before: i64,
    pub errors_after: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CustomerDiff {
    pub customer_id: String,
    pub delta: f64,
    pub before: Verdict,
    pub after: Verdict,
}

impl DryRunReport {
    fn add(&mut self, id: &str, before: Verdict, after: Verdict, top: usize) {
        self.customers += 1;
        if let Some(e) = &after.error {
            if self.failures.len() < LISTED_FAILURES {
                self.failures.push(CustomerFailure {
                    customer_id: id.to_string(),
                    plugin: self.plugin.clone(),
                    message: e.clone(),
                });
            }
        }
        let c = &mut self.changed;
        c.errors_before += before.error.is_some() as i64;
        c.errors_after += after.error.is_some() as i64;
        if before.band != after.band {
            c.bands += 1;
            let name = |b: &Option<String>| b.clone().unwrap_or_else(|| "none".into());
            *self
                .band_moves
                .entry(format!("{} → {}", name(&before.band), name(&after.band)))
                .or_default() += 1;
        }
        c.scores += (before.value != after.value) as i64;
        c.segments += (before.segments != after.segments) as i64;
        c.stages += (before.stage != after.stage) as i64;
        c.tags += (before.tags != after.tags) as i64;
        let delta = after.value.unwrap_or(0.0) - before.value.unwrap_or(0.0);
        // Listed: customers whose outcome changes (a reworded reason alone is not one).
        let changes = before.value != after.value
            || before.band != after.band
            || before.segments != after.segments
            || before.stage != after.stage
            || before.tags != after.tags
            || before.error != after.error;
        if changes && top > 0 {
            self.largest.push(CustomerDiff {
                customer_id: id.to_string(),
                delta,
                before,
                after,
            });
            self.largest.sort_by(|a, b| {
                b.delta
                    .abs()
                    .total_cmp(&a.delta.abs())
                    .then(a.customer_id.cmp(&b.customer_id))
            });
            self.largest.truncate(top);
        }
    }
}

impl Crm {
    /// Stores a component after checking it like `stagecraft plugin check`.
    pub async fn upload_plugin(
        &self,
        tenant: &str,
        actor: &str,
        wasm: Vec<u8>,
    ) -> Result<Uploaded, RegistryError> {
        if wasm.len() > MAX_COMPONENT_BYTES {
            return Err(RegistryError::TooLarge(wasm.len()));
        }
        // Loaded apart from the loaded versions, and kept (in memory and in the
        // compiled-code cache) only once stored: a refused upload leaves nothing.
        let packs = self.packs.clone();
        let bytes = wasm.clone();
        let plugin = crate::spawn_blocking(move || {
            let digest = crate::runtime::cache::digest(&bytes);
            packs
                .loaded(&digest)
                .map_or_else(|| packs.runtime().load(&bytes).map(Arc::new), Ok)
        })
        .await
        .expect("plugin load task")
        .map_err(RegistryError::Rejected)?;
        let m = plugin.manifest().clone();
        let mut tx = self.store.begin().await?;
        let stored =
            store::save_plugin_version(tx.conn(), tenant, &m, plugin.digest(), &wasm, now_ms())
                .await
                .map_err(|e| match e {
                    StoreError::Conflict(m) => RegistryError::Conflict(m),
                    other => other.into(),
                })?;
        if stored {
            store::audit(
                tx.conn(),
                tenant,
                actor,
                "plugin.upload",
                &format!("{}@{}", m.name, m.version),
                &json!({ "digest": plugin.digest(), "size": wasm.len() }),
            )
            .await?;
        }
        tx.commit().await?;
        self.packs.keep(plugin.clone());
        Ok(Uploaded {
            name: m.name.clone(),
            version: m.version.clone(),
            digest: plugin.digest().to_string(),
            stored,
            manifest: m,
        })
    }

    /// Loads a stored version (from the compiled cache when it can).
    async fn load_version(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
    ) -> Result<Arc<LoadedPlugin>, RegistryError> {
        let mut conn = self.store.conn().await?;
        let (digest, _, wasm) = store::plugin_component(&mut conn, tenant, name, version)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("plugin {name}@{version} not found")))?;
        drop(conn);
        let packs = self.packs.clone();
        crate::spawn_blocking(move || packs.load(&digest, &wasm))
            .await
            .expect("plugin load task")
            .map_err(RegistryError::Rejected)
    }

    /// Fails with "not found" unless the tenant has stored a version of `name`.
    async fn ensure_plugin(&self, tenant: &str, name: &str) -> Result<(), RegistryError> {
        let mut conn = self.store.conn().await?;
        if store::plugin_versions(&mut conn, tenant, Some(name))
            .await?
            .is_empty()
        {
            return Err(RegistryError::NotFound(format!("plugin {name} not found")));
        }
        Ok(())
    }

    /// The version a new rule set is checked against: the active one, else the newest stored.
    async fn reference_version(&self, tenant: &str, name: &str) -> Result<String, RegistryError> {
        let mut conn = self.store.conn().await?;
        if let Some((pair, _)) = store::active_pair(&mut conn, tenant, name).await? {
            return Ok(pair.version);
        }
        store::plugin_versions(&mut conn, tenant, Some(name))
            .await?
            .pop()
            .map(|v| v.version)
            .ok_or_else(|| RegistryError::NotFound(format!("plugin {name} not found")))
    }

    /// Stores a new rule-set version after the plugin accepts it.
    pub async fn put_rules(
        &self,
        tenant: &str,
        actor: &str,
        name: &str,
        version: Option<&str>,
        rules: &Json,
    ) -> Result<(i64, String), RegistryError> {
        let version = match version {
            Some(v) => v.to_string(),
            None => self.reference_version(tenant, name).await?,
        };
        let plugin = self.load_version(tenant, name, &version).await?;
        let text = serde_json::to_string(rules).expect("JSON serialises");
        let (p, t) = (plugin.clone(), text.clone());
        crate::spawn_blocking(move || check_rules(&p, &t))
            .await
            .expect("rules check task")?;
        let mut tx = self.store.begin().await?;
        let n = store::save_rule_set(tx.conn(), tenant, name, &text, now_ms()).await?;
        store::audit(
            tx.conn(),
            tenant,
            actor,
            "rules.put",
            name,
            &json!({ "rules_version": n, "checked_with": version }),
        )
        .await?;
        tx.commit().await?;
        Ok((n, version))
    }

    /// Lets `name` see the sensitive `fields` for this tenant (replacing any earlier
    /// grant). Only fields the active version's manifest asks for can be granted.
    pub async fn grant_fields(
        &self,
        tenant: &str,
        actor: &str,
        name: &str,
        fields: Vec<String>,
    ) -> Result<(), RegistryError> {
        self.ensure_plugin(tenant, name).await?;
        let mut conn = self.store.conn().await?;
        let version = store::active_pair(&mut conn, tenant, name)
            .await?
            .map(|(p, _)| p.version)
            .ok_or_else(|| {
                RegistryError::Invalid(format!("{name} is not active for this tenant"))
            })?;
        let (_, manifest, _) = store::plugin_component(&mut conn, tenant, name, &version)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("plugin {name}@{version} not found")))?;
        drop(conn);
        if let Some(f) = fields.iter().find(|f| !manifest.wants_fields.contains(f)) {
            return Err(RegistryError::Invalid(format!(
                "{name}@{version} does not ask for the field {f:?} (it asks for: {})",
                if manifest.wants_fields.is_empty() {
                    "none".to_string()
                } else {
                    manifest.wants_fields.join(", ")
                }
            )));
        }
        let mut tx = self.store.begin().await?;
        store::set_field_grants(tx.conn(), tenant, name, &fields).await?;
        store::bump_generation(tx.conn(), tenant).await?;
        // Field names only: values never go into the audit log.
        store::audit(
            tx.conn(),
            tenant,
            actor,
            "plugin.grant_fields",
            name,
            &json!({ "fields": fields }),
        )
        .await?;
        store::notify_change(&mut tx, tenant).await?;
        tx.commit().await?;
        self.packs
            .reload(&self.store, Some(tenant))
            .await
            .map_err(RegistryError::Reload)
    }

    /// Switches the tenant to (version, rules_version) atomically; returns (from, to).
    pub async fn activate(
        &self,
        tenant: &str,
        actor: &str,
        name: &str,
        pair: Pair,
        owns_lifecycle: Option<bool>,
        reason: Option<&str>,
    ) -> Result<(Option<Pair>, Pair), RegistryError> {
        if let Some(p) = reason.and_then(|r| crate::runtime::budget::text_problem(r, 500)) {
            return Err(RegistryError::Invalid(format!("reason {p}")));
        }
        let plugin = self.load_version(tenant, name, &pair.version).await?;
        // Check the rules with this version before anything changes.
        let rules = match pair.rules_version {
            Some(n) => {
                let mut conn = self.store.conn().await?;
                Some(
                    store::rule_set(&mut conn, tenant, name, n)
                        .await?
                        .ok_or_else(|| {
                            RegistryError::NotFound(format!("rule set {n} of {name} not found"))
                        })?,
                )
            }
            None => None,
        };
        if let Some(r) = rules {
            let p = plugin.clone();
            crate::spawn_blocking(move || check_rules(&p, &r))
                .await
                .expect("rules check task")?;
        }
        let at = now_ms();
        let mut tx = self.store.begin().await?;
        let from = store::activate(
            tx.conn(),
            tenant,
            name,
            &pair,
            owns_lifecycle,
            actor,
            reason.unwrap_or("activate"),
            at,
        )
        .await?;
        store::unsuspend(tx.conn(), tenant, name, &pair.version).await?;
        store::audit(
            tx.conn(),
            tenant,
            actor,
            "plugin.activate",
            name,
            &json!({ "from": from, "to": pair, "reason": reason }),
        )
        .await?;
        store::notify_change(&mut tx, tenant).await?;
        tx.commit().await?;
        self.packs.reset_health(tenant, name, &pair.version);
        self.packs
            .reload(&self.store, Some(tenant))
            .await
            .map_err(RegistryError::Reload)?;
        Ok((from, pair))
    }

    /// Returns to the pair before the active one; returns (from, to).
    pub async fn rollback(
        &self,
        tenant: &str,
        actor: &str,
        name: &str,
        reason: &str,
    ) -> Result<(Pair, Option<Pair>), RegistryError> {
        self.ensure_plugin(tenant, name).await?;
        let at = now_ms();
        let mut tx = self.store.begin().await?;
        let (from, to) = store::rollback(tx.conn(), tenant, name, actor, reason, at)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(m) => RegistryError::Conflict(m),
                other => other.into(),
            })?;
        store::audit(
            tx.conn(),
            tenant,
            actor,
            "plugin.rollback",
            name,
            &json!({ "from": from, "to": to, "reason": reason }),
        )
        .await?;
        store::notify_change(&mut tx, tenant).await?;
        tx.commit().await?;
        self.packs
            .reload(&self.store, Some(tenant))
            .await
            .map_err(RegistryError::Reload)?;
        Ok((from, to))
    }

    /// Counts a plugin's outcome for an event and trips the circuit breaker when a
    /// version has failed `breaker_threshold` times in a row: the version is
    /// suspended for the tenant and the previous pair restored (or, with none, the
    /// plugin is disabled), with the reason in the audit log.
    pub async fn record_health(&self, tenant: &str, pack: &ActivePack, failure: Option<&str>) {
        let name = pack.name().to_string();
        let h = self
            .packs
            .record_call(tenant, &name, &pack.version, failure, now_ms());
        if h.consecutive_failures < self.packs.breaker_threshold || failure.is_none() {
            return;
        }
        // Only the call that reaches the threshold trips it.
        if h.consecutive_failures != self.packs.breaker_threshold {
            return;
        }
        let reason = format!(
            "suspended after {} failures in a row; last: {}",
            h.consecutive_failures,
            h.last_failure.unwrap_or_default()
        );
        if let Err(e) = self.trip(tenant, &name, &pack.version, &reason).await {
            tracing::error!(%tenant, plugin = %name, "circuit breaker could not suspend: {e}");
        }
    }

    async fn trip(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
        reason: &str,
    ) -> Result<(), RegistryError> {
        tracing::warn!(%tenant, plugin = %name, %version, "{reason}");
        let at = now_ms();
        let mut tx = self.store.begin().await?;
        // Another host may have tripped it already.
        match store::active_pair(tx.conn(), tenant, name).await? {
            Some((p, _)) if p.version == version => {}
            _ => return Ok(()),
        }
        store::suspend(tx.conn(), tenant, name, version, reason, at).await?;
        // The previous pair, or (after a first activation) not enabled at all.
        let (_, to) =
            store::rollback(tx.conn(), tenant, name, "circuit-breaker", reason, at).await?;
        let restored = json!(to);
        store::audit(
            tx.conn(),
            tenant,
            "circuit-breaker",
            "plugin.suspend",
            &format!("{name}@{version}"),
            &json!({ "reason": reason, "restored": restored }),
        )
        .await?;
        store::notify_change(&mut tx, tenant).await?;
        tx.commit().await?;
        self.packs
            .metrics()
            .suspensions
            .with_label_values(&[name, version])
            .inc();
        self.packs.reset_health(tenant, name, version);
        self.packs
            .reload(&self.store, Some(tenant))
            .await
            .map_err(RegistryError::Reload)?;
        Ok(())
    }

    /// The active pair and the candidate as runnable packs.
    async fn dry_run_pair(
        &self,
        tenant: &str,
        name: &str,
        c: &Candidate,
    ) -> Result<(Option<ActivePack>, ActivePack, Pair), RegistryError> {
        self.ensure_plugin(tenant, name).await?;
        let packs = self.packs.for_tenant(tenant);
        let active = packs.packs.iter().find(|p| p.name() == name).cloned();
        let version = match (&c.version, &active) {
            (Some(v), _) => v.clone(),
            (None, Some(a)) => a.version.clone(),
            (None, None) => {
                return Err(RegistryError::Invalid(format!(
                    "{name} is not active: name the candidate version"
                )))
            }
        };
        let plugin = self.load_version(tenant, name, &version).await?;
        let (rules, rules_version) = match (&c.rules, c.rules_version) {
            (Some(r), _) => {
                let text = serde_json::to_string(r).expect("JSON serialises");
                let (p, t) = (plugin.clone(), text.clone());
                crate::spawn_blocking(move || check_rules(&p, &t))
                    .await
                    .expect("rules check task")?;
                (Some(text), None)
            }
            (None, Some(n)) => {
                let mut conn = self.store.conn().await?;
                let r = store::rule_set(&mut conn, tenant, name, n)
                    .await?
                    .ok_or_else(|| {
                        RegistryError::NotFound(format!("rule set {n} of {name} not found"))
                    })?;
                (Some(r), Some(n))
            }
            (None, None) if c.version.is_none() => (
                active.as_ref().and_then(|a| a.rules.clone()),
                active.as_ref().and_then(|a| a.rules_version),
            ),
            (None, None) => (None, None),
        };
        // A plugin not yet active is previewed as the lifecycle owner when it has
        // stages and no plugin owns the tenant's lifecycle (what activating it
        // with `owns_lifecycle` would do).
        let owns = match &active {
            Some(a) => a.owns_lifecycle,
            None => plugin.manifest().lifecycle && packs.lifecycle_owner().is_none(),
        };
        let candidate = ActivePack {
            plugin,
            version: version.clone(),
            rules,
            rules_version,
            owns_lifecycle: owns,
            granted_fields: active
                .as_ref()
                .map(|a| a.granted_fields.clone())
                .unwrap_or_default(),
        };
        Ok((
            active,
            candidate,
            Pair {
                version,
                rules_version,
            },
        ))
    }

    /// Loads customers with what a plugin needs to see them.
    async fn load_batch(
        &self,
        tenant: &str,
        ids: &[String],
        now: i64,
    ) -> Result<Vec<(CustomerRecord, Vec<EventRecord>)>, StoreError> {
        let mut conn = self.store.conn().await?;
        // A few statements for the whole chunk (see `store::bulk`).
        store::load_customers(&mut conn, tenant, ids, now, RECENT_EVENTS).await
    }

    /// Compares the candidate with the active pair over `ids`; writes nothing.
    async fn compare(
        &self,
        tenant: &str,
        name: &str,
        (active, candidate, pair): (Option<ActivePack>, ActivePack, Pair),
        ids: Vec<String>,
        top: usize,
        job: Option<&str>,
    ) -> Result<DryRunReport, RegistryError> {
        let now = now_ms();
        let mut report = DryRunReport {
            plugin: name.to_string(),
            active: active.as_ref().map(|a| Pair {
                version: a.version.clone(),
                rules_version: a.rules_version,
            }),
            candidate: pair,
            ..Default::default()
        };
        // The tenant's set as it runs now, and the same with the candidate in
        // the place of the plugin (or added: first if it owns the lifecycle).
        let now_set = self.packs.for_tenant(tenant);
        let mut with_candidate = (*now_set).clone();
        match with_candidate.packs.iter().position(|p| p.name() == name) {
            Some(i) => with_candidate.packs[i] = candidate,
            None if candidate.owns_lifecycle => with_candidate.packs.insert(0, candidate),
            None => with_candidate.packs.push(candidate),
        }
        let sets = Arc::new((
            now_set,
            with_candidate,
            Strikes::default(),
            Strikes::default(),
        ));
        let started = std::time::Instant::now();
        let mut evaluated = 0usize;
        for chunk in ids.chunks(RESCORE_CHUNK) {
            // An inline dry-run answers a request: past its budget it stops with
            // an error that says what to do, instead of holding the client.
            if job.is_none() && started.elapsed() > INLINE_DRY_RUN_BUDGET {
                return Err(RegistryError::Invalid(format!(
                    "the dry-run went over its budget of {} s after {evaluated} of {} customers; \
                     dry-run a smaller sample, or every customer with \"all\": true as a job",
                    INLINE_DRY_RUN_BUDGET.as_secs(),
                    ids.len()
                )));
            }
            evaluated += chunk.len();
            let batch = Arc::new(self.load_batch(tenant, chunk, now).await?);
            let ctx = CallContext {
                now,
                tenant: tenant.to_string(),
            };
            let (sets, bt, plugin) = (sets.clone(), batch.clone(), name.to_string());
            let verdicts = crate::spawn_blocking(move || {
                let (now_set, with_candidate, before_strikes, after_strikes) = &*sets;
                let before = reevaluate(now_set, &ctx, &bt, before_strikes);
                let after = reevaluate(with_candidate, &ctx, &bt, after_strikes);
                bt.iter()
                    .zip(before.iter().zip(&after))
                    .map(|((c, _), ((eb, fb), (ea, fa)))| {
                        (verdict(&plugin, c, eb, fb), verdict(&plugin, c, ea, fa))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .expect("dry-run task");
            for ((c, _), (b, a)) in batch.iter().zip(verdicts) {
                report.add(&c.id, b, a, top);
            }
            if let Some(id) = job {
                let mut conn = self.store.conn().await?;
                store::add_progress(&mut conn, id, chunk.len() as i64, now_ms()).await?;
                self.packs
                    .metrics()
                    .job_customers
                    .with_label_values(&["dry-run"])
                    .inc_by(chunk.len() as u64);
            }
        }
        Ok(report)
    }

    /// Dry-runs a candidate: inline for a sample of at most 1,000 customers,
    /// otherwise as a job (returns `Err(job id)` in the `Ok` side's second variant).
    pub async fn dry_run(
        &self,
        tenant: &str,
        name: &str,
        c: Candidate,
    ) -> Result<DryRunOutcome, RegistryError> {
        let sample = match (c.all, c.sample) {
            (true, _) => None,
            (false, Some(n)) if n < 1 => {
                return Err(RegistryError::Invalid("sample must be at least 1".into()))
            }
            (false, n) => Some(n.unwrap_or(INLINE_DRY_RUN)),
        };
        let top = c.top.unwrap_or(20).min(200);
        let inline_rules = c.rules.is_some();
        let (active, candidate, pair) = self.dry_run_pair(tenant, name, &c).await?;
        let mut conn = self.store.conn().await?;
        let ids = store::customer_ids(&mut conn, tenant, sample).await?;
        drop(conn);
        if sample.is_some_and(|n| n <= INLINE_DRY_RUN) {
            let mut r = self
                .compare(tenant, name, (active, candidate, pair), ids, top, None)
                .await?;
            r.candidate_rules_inline = inline_rules;
            return Ok(DryRunOutcome::Done(Box::new(r)));
        }
        let job = format!("job_{}", uuid::Uuid::now_v7().simple());
        let params = json!({ "plugin": name, "candidate": pair, "customers": ids.len() });
        let mut conn = self.store.conn().await?;
        store::create_job(
            &mut conn,
            tenant,
            &job,
            "dry-run",
            &params,
            ids.len() as i64,
            now_ms(),
        )
        .await?;
        drop(conn);
        let (crm, tenant, name, id) = (
            self.clone(),
            tenant.to_string(),
            name.to_string(),
            job.clone(),
        );
        tokio::spawn(async move {
            let mut r = crm
                .compare(
                    &tenant,
                    &name,
                    (active, candidate, pair),
                    ids,
                    top,
                    Some(&id),
                )
                .await;
            let mut conn = match crm.store.conn().await {
                Ok(c) => c,
                Err(e) => return tracing::error!("dry-run job {id}: {e}"),
            };
            let end = match &mut r {
                Ok(rep) => {
                    rep.candidate_rules_inline = inline_rules;
                    // Customers the candidate failed on make the job end as
                    // `done_with_failures`, with their count on the job.
                    let mut result = json!(rep);
                    result["failed"] = json!(rep.changed.errors_after);
                    match store::add_failed(&mut conn, &id, rep.changed.errors_after).await {
                        Ok(()) => store::finish_job(&mut conn, &id, Ok(&result), now_ms()).await,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => store::finish_job(&mut conn, &id, Err(&e.to_string()), now_ms()).await,
            };
            if let Err(e) = end {
                tracing::error!("dry-run job {id}: {e}");
            }
        });
        Ok(DryRunOutcome::Job(job))
    }

    /// Starts a bulk rescore of every customer of the tenant with what it runs now.
    /// The work is cut into chunks in the database; this host starts working on
    /// them, and on PostgreSQL any other host's [`Crm::help_with_jobs`] joins in.
    pub async fn start_rescore(&self, tenant: &str, actor: &str) -> Result<String, RegistryError> {
        let job = format!("job_{}", uuid::Uuid::now_v7().simple());
        let mut tx = self.store.begin().await?;
        let total = store::create_chunks(tx.conn(), tenant, &job, RESCORE_CHUNK).await?;
        store::create_job(
            tx.conn(),
            tenant,
            &job,
            "rescore",
            &json!({ "by": actor }),
            total,
            now_ms(),
        )
        .await?;
        store::audit(
            tx.conn(),
            tenant,
            actor,
            "rescore.start",
            &job,
            &json!({ "customers": total }),
        )
        .await?;
        tx.commit().await?;
        Ok(job)
    }

    /// Works on a rescore job's chunks until none is left; returns how many
    /// customers this call rescored. Safe to run on several hosts at once.
    ///
    /// One chunk at a time: read, score, then store with the chunk marked done
    /// in the same transaction. Reading the next chunk while the last was being
    /// written was tried and measured slower on SQLite (11,300 against 12,500
    /// customers/s side by side): the readers and the writer contend.
    pub async fn work_on_rescore(
        &self,
        tenant: &str,
        job: &str,
        host: &str,
    ) -> Result<i64, RegistryError> {
        let mut done = 0;
        loop {
            // Each claim is named alone, so that two workers of one host (this
            // one and `help_with_jobs`) tell their claims apart too.
            let claim = format!("{host}/{}", uuid::Uuid::now_v7().simple());
            let Some(chunk) = self.claim_rescore_chunk(job, &claim).await? else {
                break;
            };
            let heartbeat = self.heartbeat(job.to_string(), chunk.chunk, claim.clone());
            let worked = async {
                let scored = self.rescore_chunk(tenant, chunk).await?;
                self.store_rescored(tenant, job, &claim, scored).await
            }
            .await;
            heartbeat.abort();
            done += worked?;
        }
        Ok(done)
    }

    /// Renews a chunk's claim every quarter of [`Crm::chunk_lease`] while it is
    /// worked on, so that no host (this one included) takes a chunk that is
    /// merely slow for one left by a dead host and does its writes twice.
    fn heartbeat(&self, job: String, chunk: i64, claim: String) -> tokio::task::JoinHandle<()> {
        let (store, every) = (self.store.clone(), self.chunk_lease() / 4);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let renewed = match store.begin().await {
                    Ok(mut tx) => {
                        match store::renew_claim(tx.conn(), &job, chunk, &claim, now_ms()).await {
                            Ok(held) => tx.commit().await.map(|_| held),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                match renewed {
                    Ok(true) => {}
                    Ok(false) => return tracing::warn!(%job, chunk, "the chunk's claim was lost"),
                    Err(e) => tracing::warn!(%job, chunk, "could not renew the chunk's claim: {e}"),
                }
            }
        })
    }

    /// Claims the job's next chunk, if any is left.
    async fn claim_rescore_chunk(
        &self,
        job: &str,
        claim: &str,
    ) -> Result<Option<store::Chunk>, RegistryError> {
        let now = now_ms();
        let stale_before = now - self.chunk_lease().as_millis() as i64;
        let mut tx = self.store.begin().await?;
        let backend = tx.backend();
        let chunk = store::claim_chunk(tx.conn(), backend, job, claim, now, stale_before).await?;
        tx.commit().await?;
        Ok(chunk)
    }

    /// Reads a chunk's customers and runs the tenant's active plugins on them
    /// through the one evaluation path, as a live event on the customer's latest
    /// event would (see [`reevaluate`]). Writes nothing.
    async fn rescore_chunk(
        &self,
        tenant: &str,
        chunk: store::Chunk,
    ) -> Result<RescoredChunk, RegistryError> {
        let now = now_ms();
        let ids = {
            let mut conn = self.store.conn().await?;
            store::customer_ids_between(&mut conn, tenant, &chunk.first_id, &chunk.last_id).await?
        };
        let packs = self.packs.for_tenant(tenant);
        let batch = self.load_batch(tenant, &ids, now).await?;
        let ctx = CallContext {
            now,
            tenant: tenant.to_string(),
        };
        let p = packs.clone();
        let (batch, results) = crate::spawn_blocking(move || {
            let results = reevaluate(&p, &ctx, &batch, &Strikes::default());
            (batch, results)
        })
        .await
        .expect("rescore task");
        Ok(RescoredChunk {
            chunk,
            ids: ids.len() as i64,
            now,
            batch,
            results,
        })
    }

    /// Stores what a rescored chunk changes, in one transaction with the chunk
    /// marked done: what a live event's plugins would write but the event and
    /// its follow-ups (they belong to the event that caused them; rescheduling
    /// them on every rescore would repeat them): the stage (one move to where the
    /// owner leaves the customer), tags, fields, scores and segments (history
    /// rows only where something changed). A plugin that fails on a customer
    /// leaves what it gave that customer before. Returns the number of customers.
    async fn store_rescored(
        &self,
        tenant: &str,
        job: &str,
        claim: &str,
        r: RescoredChunk,
    ) -> Result<i64, RegistryError> {
        let RescoredChunk {
            chunk,
            ids,
            now,
            batch,
            results,
        } = r;
        // The first failure of each customer, by any plugin: counted in the job,
        // a sample listed.
        let mut failures: BTreeMap<String, CustomerFailure> = BTreeMap::new();
        let mut moves = Vec::new();
        let mut scores = Vec::new();
        let mut memberships = Vec::new();
        let mut writes = store::Batch::new();
        for ((c, _), ((_, failed), fx)) in batch.iter().zip(results) {
            if let Some(f) = failed.first() {
                failures.insert(
                    c.id.clone(),
                    CustomerFailure {
                        customer_id: c.id.clone(),
                        plugin: f.plugin.clone(),
                        message: f.message.clone(),
                    },
                );
            }
            if let Some(last) = fx.stage_moves.last() {
                let mut mv = last.clone();
                mv.from = c.stage.clone();
                moves.push((c.id.as_str(), mv));
            }
            for t in &fx.tags_added {
                store::queue_add_tag(&mut writes, tenant, &c.id, t);
            }
            for t in &fx.tags_removed {
                store::queue_remove_tag(&mut writes, tenant, &c.id, t);
            }
            for f in &fx.fields_set {
                store::queue_field(&mut writes, tenant, &c.id, f);
            }
            scores.extend(fx.scores.into_iter().map(|s| (c.id.clone(), s)));
            memberships.extend(fx.segments.into_iter().map(|(plugin, segments)| {
                store::SegmentSet {
                    customer: c.id.clone(),
                    plugin,
                    segments,
                }
            }));
        }
        let mut tx = self.store.begin().await?;
        let moved: Vec<(&str, &store::StageMove)> = moves.iter().map(|(id, m)| (*id, m)).collect();
        store::move_stages(tx.conn(), tenant, &moved, None, now).await?;
        // Every plugin's writes in one batch: one round trip on SQLite.
        store::queue_scores(tx.conn(), &mut writes, tenant, &scores, None).await?;
        store::queue_memberships(tx.conn(), &mut writes, tenant, &memberships, now).await?;
        // Events whose plugins ran ahead of the writer on these customers'
        // old scores and segments must not keep those results.
        let ids_read: Vec<&str> = batch.iter().map(|(c, _)| c.id.as_str()).collect();
        store::queue_bump_revs(&mut writes, tenant, &ids_read);
        writes.run(tx.conn()).await?;
        let customers = ids;
        let failed = failures.len() as i64;
        let listed: Vec<&CustomerFailure> = failures.values().take(20).collect();
        let listed = (!listed.is_empty()).then(|| json!(listed));
        if !store::complete_chunk(tx.conn(), job, chunk.chunk, claim, listed.as_ref()).await? {
            // Another host took the chunk over (this one was presumed dead):
            // its writes stand, these are rolled back with the transaction.
            tracing::warn!(%job, chunk = chunk.chunk, "chunk taken over by another host; not stored twice");
            return Ok(0);
        }
        store::add_progress(tx.conn(), job, customers, now_ms()).await?;
        if failed > 0 {
            store::add_failed(tx.conn(), job, failed).await?;
        }
        if store::chunks_left(tx.conn(), job).await? == 0 {
            let (total, failed) = store::job(tx.conn(), tenant, job)
                .await?
                .map(|j| (j.total, j.failed))
                .unwrap_or((0, 0));
            let listed = store::chunk_failures(tx.conn(), job, LISTED_FAILURES).await?;
            let result = json!({ "customers": total, "failed": failed, "failures": listed });
            store::finish_job(tx.conn(), job, Ok(&result), now_ms()).await?;
        }
        tx.commit().await?;
        self.packs
            .metrics()
            .job_customers
            .with_label_values(&["rescore"])
            .inc_by(customers as u64);
        Ok(customers)
    }
}

/// A chunk read and evaluated, not yet stored.
struct RescoredChunk {
    chunk: store::Chunk,
    /// The chunk's customers when it was read (progress counts these).
    ids: i64,
    now: i64,
    batch: Vec<(CustomerRecord, Vec<EventRecord>)>,
    results: Vec<(Evaluated, Effects)>,
}

/// A dry-run's result, or the job computing it.
#[derive(Debug, Clone)]
pub enum DryRunOutcome {
    Done(Box<DryRunReport>),
    Job(String),
}

/// This process, as it signs the chunks it claims: host name and pid.
pub fn host_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}", std::process::id())
}

impl Crm {
    /// Joins in any rescore with work left (started here or on another host, or
    /// left unfinished by a host that stopped). Runs until the task is aborted.
    pub fn help_with_jobs(&self) -> tokio::task::JoinHandle<()> {
        let crm = self.clone();
        tokio::spawn(async move {
            let me = host_id();
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let open = match crm.store.conn().await {
                    Ok(mut conn) => store::open_chunked_jobs(&mut conn, "rescore").await,
                    Err(e) => Err(e),
                };
                match open {
                    Ok(jobs) => {
                        for (job, tenant) in jobs {
                            if let Err(e) = crm.work_on_rescore(&tenant, &job, &me).await {
                                tracing::warn!("rescore job {job}: {e}");
                            }
                        }
                    }
                    Err(e) => tracing::debug!("looking for rescore work failed: {e}"),
                }
            }
        })
    }
}
