//! The plugins each tenant has enabled, loaded and ready to run.
//!
//! A request takes one [`TenantPacks`] (an `Arc`) at its start and uses only that
//! for its whole life, so a change of enabled plugins never shows a request a mix:
//! requests in flight finish on what they took, later ones get the new set.
//! Compiled plugins are shared by digest across tenants.
//!
//! Every change of what a tenant runs bumps the tenant's generation in the
//! database. [`Packs::watch`] keeps this host in step with the others: on
//! PostgreSQL it listens for `NOTIFY stagecraft_changes` and reloads at once, and
//! on every database it re-reads the generations every 250 ms in case a
//! notification was missed, so a change anywhere is served everywhere within a
//! second.

use crate::metrics::Metrics;
use crate::runtime::{LoadedPlugin, Runtime, RuntimeError};
use crate::store::{self, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// One enabled plugin: the loaded component and the rules it runs with.
#[derive(Debug, Clone)]
pub struct ActivePack {
    pub plugin: Arc<LoadedPlugin>,
    pub version: String,
    /// `None`: the plugin's default rules.
    pub rules: Option<String>,
    pub rules_version: Option<i64>,
    pub owns_lifecycle: bool,
    /// Sensitive fields an admin granted this plugin for the tenant.
    pub granted_fields: Vec<String>,
}

impl ActivePack {
    pub fn name(&self) -> &str {
        &self.plugin.manifest().name
    }
}

/// A tenant's enabled plugins; the lifecycle owner, if any, comes first.
#[derive(Debug, Clone)]
pub struct TenantPacks {
    pub packs: Vec<ActivePack>,
    /// The tenant's generation this set was read at.
    pub generation: i64,
    /// Where plugin runs are counted.
    pub metrics: Arc<Metrics>,
}

impl TenantPacks {
    /// The plugin that owns the stage graph.
    pub fn lifecycle_owner(&self) -> Option<&ActivePack> {
        self.packs.iter().find(|p| p.owns_lifecycle)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PacksError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{plugin}: {source}")]
    Load {
        plugin: String,
        source: RuntimeError,
    },
}

/// How one plugin version has fared for one tenant since this host started.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct VersionHealth {
    pub calls: u64,
    pub failures: u64,
    pub consecutive_failures: u32,
    pub last_failure: Option<String>,
    pub last_failure_at: Option<i64>,
}

/// (tenant, plugin, version)
type HealthKey = (String, String, String);

/// The enabled plugins of every tenant.
#[derive(Clone)]
pub struct Packs {
    runtime: Runtime,
    /// Read by every request, replaced whole on a change: readers take no lock.
    tenants: Arc<arc_swap::ArcSwap<HashMap<String, Arc<TenantPacks>>>>,
    by_digest: Arc<RwLock<HashMap<String, Arc<LoadedPlugin>>>>,
    health: Arc<Mutex<HashMap<HealthKey, VersionHealth>>>,
    metrics: Arc<Metrics>,
    /// Consecutive failures after which a version is suspended for a tenant.
    pub breaker_threshold: u32,
}

impl std::fmt::Debug for Packs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packs")
            .field("breaker_threshold", &self.breaker_threshold)
            .finish()
    }
}

/// The default for [`Packs::breaker_threshold`].
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;

impl Packs {
    pub fn new(runtime: Runtime) -> Packs {
        Packs {
            runtime,
            tenants: Default::default(),
            by_digest: Default::default(),
            health: Default::default(),
            metrics: Arc::new(Metrics::new()),
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
        }
    }

    /// The service's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Counts a call of a plugin version for a tenant; returns its health after it.
    pub fn record_call(
        &self,
        tenant: &str,
        plugin: &str,
        version: &str,
        failure: Option<&str>,
        at: i64,
    ) -> VersionHealth {
        let mut map = self.health.lock().expect("health lock");
        let h = map
            .entry((tenant.into(), plugin.into(), version.into()))
            .or_default();
        h.calls += 1;
        match failure {
            Some(m) => {
                h.failures += 1;
                h.consecutive_failures += 1;
                h.last_failure = Some(m.chars().take(300).collect());
                h.last_failure_at = Some(at);
            }
            None => h.consecutive_failures = 0,
        }
        h.clone()
    }

    /// The health of a plugin version for a tenant.
    pub fn health(&self, tenant: &str, plugin: &str, version: &str) -> VersionHealth {
        self.health
            .lock()
            .expect("health lock")
            .get(&(tenant.into(), plugin.into(), version.into()))
            .cloned()
            .unwrap_or_default()
    }

    /// Starts again from zero for a version (after it is suspended or re-activated).
    pub fn reset_health(&self, tenant: &str, plugin: &str, version: &str) {
        self.health.lock().expect("health lock").remove(&(
            tenant.into(),
            plugin.into(),
            version.into(),
        ));
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// What `tenant` runs now.
    pub fn for_tenant(&self, tenant: &str) -> Arc<TenantPacks> {
        self.tenants.load().get(tenant).cloned().unwrap_or_else(|| {
            Arc::new(TenantPacks {
                packs: Vec::new(),
                generation: 0,
                metrics: self.metrics.clone(),
            })
        })
    }

    /// Loads a stored component, reusing an already loaded one with the same digest.
    pub fn load(&self, digest: &str, wasm: &[u8]) -> Result<Arc<LoadedPlugin>, RuntimeError> {
        if let Some(p) = self.loaded(digest) {
            return Ok(p);
        }
        let p = Arc::new(self.runtime.load(wasm)?);
        self.keep(p.clone());
        Ok(p)
    }

    /// The loaded plugin with this digest, if one is kept.
    pub fn loaded(&self, digest: &str) -> Option<Arc<LoadedPlugin>> {
        self.by_digest
            .read()
            .expect("packs lock")
            .get(digest)
            .cloned()
    }

    /// Keeps a plugin that is stored: in memory for the tenants that enable it,
    /// and its compiled code in the on-disk cache for the next start.
    pub fn keep(&self, plugin: Arc<LoadedPlugin>) {
        plugin.keep_compiled();
        self.by_digest
            .write()
            .expect("packs lock")
            .insert(plugin.digest().to_string(), plugin);
    }

    /// Re-reads what `tenant` (or every tenant) has enabled and swaps it in.
    pub async fn reload(&self, store: &Store, tenant: Option<&str>) -> Result<(), PacksError> {
        let mut conn = store.conn().await?;
        // The generation first: a change after it is read gets another reload.
        let generations: HashMap<String, i64> =
            store::generations(&mut conn).await?.into_iter().collect();
        let enabled = store::enabled_plugins(&mut conn, tenant).await?;
        let mut grants = Vec::with_capacity(enabled.len());
        // Component bytes only for what this host has not loaded yet: a reload
        // after every activation or grant must not re-read every blob.
        let mut bytes = Vec::with_capacity(enabled.len());
        for e in &enabled {
            grants.push(store::field_grants(&mut conn, &e.tenant, &e.name).await?);
            let loaded = self
                .by_digest
                .read()
                .expect("packs lock")
                .get(&e.digest)
                .cloned();
            bytes.push(match loaded {
                Some(p) => Ok(p),
                None => Err(
                    store::plugin_component(&mut conn, &e.tenant, &e.name, &e.version)
                        .await?
                        .map(|(_, _, wasm)| wasm)
                        .unwrap_or_default(),
                ),
            });
        }
        drop(conn);
        let mut fresh: HashMap<String, TenantPacks> = HashMap::new();
        let empty = || TenantPacks {
            packs: Vec::new(),
            generation: 0,
            metrics: self.metrics.clone(),
        };
        if let Some(t) = tenant {
            fresh.insert(t.to_string(), empty());
        }
        for ((e, granted_fields), loaded) in enabled.into_iter().zip(grants).zip(bytes) {
            let plugin = match loaded {
                Ok(p) => p,
                Err(wasm) => {
                    // Compiling is CPU work; keep it off the async workers.
                    let this = self.clone();
                    let digest = e.digest.clone();
                    crate::spawn_blocking(move || this.load(&digest, &wasm))
                        .await
                        .expect("plugin load task")
                        .map_err(|source| PacksError::Load {
                            plugin: format!("{}@{}", e.name, e.version),
                            source,
                        })?
                }
            };
            fresh
                .entry(e.tenant)
                .or_insert_with(empty)
                .packs
                .push(ActivePack {
                    plugin,
                    version: e.version,
                    rules: e.rules,
                    rules_version: e.rules_version,
                    owns_lifecycle: e.owns_lifecycle,
                    granted_fields,
                });
        }
        let fresh: Vec<(String, Arc<TenantPacks>)> = fresh
            .into_iter()
            .map(|(t, mut p)| {
                p.packs.sort_by_key(|a| !a.owns_lifecycle);
                p.generation = generations.get(&t).copied().unwrap_or(0);
                (t, Arc::new(p))
            })
            .collect();
        // A whole new map: requests in flight keep the one they took.
        self.tenants.rcu(|old| {
            let mut tenants = match tenant {
                Some(_) => HashMap::clone(old),
                None => HashMap::new(),
            };
            tenants.extend(fresh.iter().cloned());
            tenants
        });
        Ok(())
    }

    /// Reloads every tenant whose generation in the database moved past ours.
    pub async fn sync(&self, store: &Store) -> Result<(), PacksError> {
        let mut conn = store.conn().await?;
        let generations = store::generations(&mut conn).await?;
        drop(conn);
        for (tenant, generation) in generations {
            let ours = self.for_tenant(&tenant).generation;
            if generation > ours {
                self.reload(store, Some(&tenant)).await?;
            }
        }
        Ok(())
    }

    /// Keeps this host in step with changes made by any host (see the module doc).
    /// Runs until the returned task is aborted.
    /// `every`: how often the generations are re-read besides the notifications.
    pub fn watch(&self, store: Store, every: Duration) -> tokio::task::JoinHandle<()> {
        let packs = self.clone();
        tokio::spawn(async move {
            // Empty and never ready on SQLite, where the generation poll alone carries changes.
            let mut rx = store.changes();
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    Some(tenant) = rx.recv() => {
                        if let Err(e) = packs.reload(&store, Some(&tenant)).await {
                            tracing::warn!(%tenant, "reload after a notification failed: {e}");
                        }
                    }
                    _ = tick.tick() => {
                        if let Err(e) = packs.sync(&store).await {
                            tracing::debug!("generation check failed: {e}");
                        }
                    }
                }
            }
        })
    }
}
