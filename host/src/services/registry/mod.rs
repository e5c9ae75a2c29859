//! The plugin registry and hot swap: upload versions, store rule sets, activate a
//! (version, rule-set version) pair atomically, roll back, dry-run a candidate
//! against the active pair.
//!
//! Atomic means: a request takes the tenant's [`TenantPacks`](crate::packs::TenantPacks)
//! once at its start, so requests in flight finish on the old pair and every
//! later one gets the new; the new pair is loaded and compiled before it is
//! committed, so an activation never leaves a tenant with nothing to run.
//!
//! Here: uploads, versions, rule sets, grants, activation and rollback, the
//! [`dry_run`]: the dry-run. Bulk rescores are [`super::jobs`]; the breaker
//! is [`super::breaker`].

pub mod dry_run;

pub use dry_run::*;

use super::CrmError;
use crate::domain::changes::{ChangeType, NewChange};
use crate::domain::{time::Clock, CustomerRecord, EventRecord};
use crate::packs::ActivePack;
use crate::packs::Packs;
use crate::pipeline::{reevaluate, Effects, Evaluated, PipelineError, Strikes, RECENT_EVENTS};
use crate::runtime::{CallContext, LoadedPlugin, Manifest, RuntimeError};
use crate::store::Store;
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    pub name: String,
    pub version: String,
    pub digest: String,
    /// `false` when these exact bytes were already stored.
    pub stored: bool,
    pub manifest: Manifest,
}

/// What [`Registry::install`] did.
#[derive(Debug, Clone)]
pub struct Installed {
    pub uploaded: Uploaded,
    pub rules_version: Option<i64>,
    pub enabled: bool,
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
    /// As of when to evaluate, the `now` plugins are told (dry-run only): ms
    /// since the epoch or an RFC 3339 time; the clock's now if absent. Scoring
    /// an imported history as of its own end is a dry-run (or a rescore) with
    /// `now` at that end.
    #[serde(default, deserialize_with = "crate::domain::time::de_time")]
    pub now: Option<i64>,
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

/// Plugin versions, rule sets, field grants, activation and rollback, dry-runs.
#[derive(Clone, Debug)]
pub struct Registry {
    store: Store,
    packs: Packs,
    /// The one clock (see [`Clock`]).
    clock: Clock,
}

impl Registry {
    pub(crate) fn new(store: Store, packs: Packs, clock: Clock) -> Registry {
        Registry {
            store,
            packs,
            clock,
        }
    }
    /// Stores a component after checking it like `stagecraft plugin check`.
    pub async fn upload_plugin(
        &self,
        tenant: &str,
        actor: &str,
        wasm: Vec<u8>,
    ) -> Result<Uploaded, RegistryError> {
        let plugin = self.check_component(&wasm).await?;
        self.store_component(tenant, actor, plugin, wasm).await
    }

    /// The size cap, then the runtime's checks (budgets, contract, manifest)
    /// and compilation. Loaded apart from the loaded versions, and kept (in
    /// memory and in the compiled-code cache) only once stored: a refused
    /// upload leaves nothing.
    async fn check_component(&self, wasm: &[u8]) -> Result<Arc<LoadedPlugin>, RegistryError> {
        if wasm.len() > MAX_COMPONENT_BYTES {
            return Err(RegistryError::TooLarge(wasm.len()));
        }
        let packs = self.packs.clone();
        let bytes = wasm.to_vec();
        crate::spawn_blocking(move || {
            let digest = crate::runtime::cache::digest(&bytes);
            packs
                .loaded(&digest)
                .map_or_else(|| packs.runtime().load(&bytes).map(Arc::new), Ok)
        })
        .await
        .expect("plugin load task")
        .map_err(RegistryError::Rejected)
    }

    async fn store_component(
        &self,
        tenant: &str,
        actor: &str,
        plugin: Arc<LoadedPlugin>,
        wasm: Vec<u8>,
    ) -> Result<Uploaded, RegistryError> {
        let m = plugin.manifest().clone();
        let mut tx = self.store.begin().await?;
        let stored = store::save_plugin_version(
            tx.conn(),
            tenant,
            &m,
            plugin.digest(),
            &wasm,
            self.clock.now(),
        )
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
        let n = store::save_rule_set(tx.conn(), tenant, name, &text, self.clock.now()).await?;
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
        if let Some(p) = reason.and_then(|r| crate::domain::text::text_problem(r, 500)) {
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
        let at = self.clock.now();
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
        let activated = NewChange {
            kind: ChangeType::PluginActivated,
            customer_id: None,
            data: json!({ "plugin": name, "from": from, "to": pair, "actor": actor, "reason": reason }),
        };
        store::insert_changes(tx.conn(), tenant, &[activated], at).await?;
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
        let at = self.clock.now();
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
        let rolled_back = NewChange {
            kind: ChangeType::PluginRolledBack,
            customer_id: None,
            data: json!({ "plugin": name, "from": from, "to": to, "actor": actor, "reason": reason }),
        };
        store::insert_changes(tx.conn(), tenant, &[rolled_back], at).await?;
        store::notify_change(&mut tx, tenant).await?;
        tx.commit().await?;
        self.packs
            .reload(&self.store, Some(tenant))
            .await
            .map_err(RegistryError::Reload)?;
        Ok((from, to))
    }

    /// Upload, rule set and (with `enable`) activation in one call: what
    /// `stagecraft plugin install` does, through the same checks as the API's
    /// three requests (size cap, component and manifest budgets, the rules'
    /// JSON Schema and the plugin's own `configure`).
    pub async fn install(
        &self,
        tenant: &str,
        actor: &str,
        wasm: Vec<u8>,
        rules: Option<&Json>,
        enable: bool,
        owns_lifecycle: bool,
    ) -> Result<Installed, RegistryError> {
        // Everything is checked before anything is stored: a refused install
        // leaves nothing behind.
        let plugin = self.check_component(&wasm).await?;
        if let Some(r) = rules {
            let (p, text) = (plugin.clone(), r.to_string());
            crate::spawn_blocking(move || check_rules(&p, &text))
                .await
                .expect("rules check task")?;
        }
        self.ensure_tenant(tenant).await?;
        let uploaded = self.store_component(tenant, actor, plugin, wasm).await?;
        let rules_version = match rules {
            Some(r) => Some(
                self.put_rules(tenant, actor, &uploaded.name, Some(&uploaded.version), r)
                    .await?
                    .0,
            ),
            None => None,
        };
        if enable {
            let pair = Pair {
                version: uploaded.version.clone(),
                rules_version,
            };
            let owns = owns_lifecycle && uploaded.manifest.lifecycle;
            self.activate(
                tenant,
                actor,
                &uploaded.name,
                pair,
                Some(owns),
                Some("install"),
            )
            .await?;
        }
        Ok(Installed {
            uploaded,
            rules_version,
            enabled: enable,
        })
    }

    async fn ensure_tenant(&self, tenant: &str) -> Result<(), RegistryError> {
        let mut tx = self.store.begin().await?;
        store::ensure_tenant(tx.conn(), tenant, tenant).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The names of `tenant`'s plugins (any version uploaded), sorted.
    pub async fn plugin_names(&self, tenant: &str) -> Result<Vec<String>, RegistryError> {
        let mut conn = self.store.conn().await?;
        let mut names: Vec<String> = store::plugin_versions(&mut conn, tenant, None)
            .await?
            .into_iter()
            .map(|v| v.name)
            .collect();
        names.dedup();
        Ok(names)
    }

    /// Everything the registry knows about one plugin of `tenant`; `None` if
    /// it has no version.
    pub async fn plugin(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<PluginRecord>, RegistryError> {
        let mut conn = self.store.conn().await?;
        let versions = store::plugin_versions(&mut conn, tenant, Some(name)).await?;
        if versions.is_empty() {
            return Ok(None);
        }
        let health = versions
            .iter()
            .map(|v| self.packs.health(tenant, name, &v.version))
            .collect();
        Ok(Some(PluginRecord {
            active: store::active_pair(&mut conn, tenant, name).await?,
            suspended: store::suspensions(&mut conn, tenant, name).await?,
            rule_sets: store::rule_sets(&mut conn, tenant, name).await?,
            activations: store::activations(&mut conn, tenant, name).await?,
            granted_fields: store::field_grants(&mut conn, tenant, name).await?,
            versions,
            health,
        }))
    }
}

/// One plugin of a tenant, as the registry stores it.
#[derive(Debug, Clone)]
pub struct PluginRecord {
    /// Oldest first.
    pub versions: Vec<store::StoredVersion>,
    /// This host's health count of each version, in the order of `versions`.
    pub health: Vec<crate::packs::VersionHealth>,
    /// The active pair and whether the plugin owns the lifecycle.
    pub active: Option<(Pair, bool)>,
    /// (version, why, when) of each suspended version.
    pub suspended: Vec<(String, String, i64)>,
    pub rule_sets: Vec<store::RuleSet>,
    pub activations: Vec<store::Activation>,
    pub granted_fields: Vec<String>,
}
