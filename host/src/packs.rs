//! The plugins each tenant has enabled, loaded and ready to run.
//!
//! A request takes one [`TenantPacks`] (an `Arc`) at its start and uses only that
//! for its whole life, so a change of enabled plugins never shows a request a mix:
//! requests in flight finish on what they took, later ones get the new set.
//! Compiled plugins are shared by digest across tenants.

use crate::runtime::{LoadedPlugin, Runtime, RuntimeError};
use crate::store::{self, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// One enabled plugin: the loaded component and the rules it runs with.
#[derive(Debug, Clone)]
pub struct ActivePack {
    pub plugin: Arc<LoadedPlugin>,
    pub version: String,
    /// `None`: the plugin's default rules.
    pub rules: Option<String>,
    pub rules_version: Option<i64>,
    pub owns_lifecycle: bool,
}

impl ActivePack {
    pub fn name(&self) -> &str {
        &self.plugin.manifest().name
    }
}

/// A tenant's enabled plugins; the lifecycle owner, if any, comes first.
#[derive(Debug, Clone, Default)]
pub struct TenantPacks {
    pub packs: Vec<ActivePack>,
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

/// The enabled plugins of every tenant.
#[derive(Clone)]
pub struct Packs {
    runtime: Runtime,
    tenants: Arc<RwLock<HashMap<String, Arc<TenantPacks>>>>,
    by_digest: Arc<RwLock<HashMap<String, Arc<LoadedPlugin>>>>,
}

impl Packs {
    pub fn new(runtime: Runtime) -> Packs {
        Packs {
            runtime,
            tenants: Default::default(),
            by_digest: Default::default(),
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// What `tenant` runs now.
    pub fn for_tenant(&self, tenant: &str) -> Arc<TenantPacks> {
        self.tenants
            .read()
            .expect("packs lock")
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    /// Loads a component, reusing an already loaded one with the same digest.
    pub fn load(&self, digest: &str, wasm: &[u8]) -> Result<Arc<LoadedPlugin>, RuntimeError> {
        if let Some(p) = self.by_digest.read().expect("packs lock").get(digest) {
            return Ok(p.clone());
        }
        let p = Arc::new(self.runtime.load(wasm)?);
        self.by_digest
            .write()
            .expect("packs lock")
            .insert(p.digest().to_string(), p.clone());
        Ok(p)
    }

    /// Re-reads what `tenant` (or every tenant) has enabled and swaps it in.
    pub async fn reload(&self, store: &Store, tenant: Option<&str>) -> Result<(), PacksError> {
        let mut conn = store.conn().await?;
        let enabled = store::enabled_plugins(&mut conn, tenant).await?;
        drop(conn);
        let mut fresh: HashMap<String, TenantPacks> = HashMap::new();
        if let Some(t) = tenant {
            fresh.insert(t.to_string(), TenantPacks::default());
        }
        for e in enabled {
            // Compiling is CPU work; keep it off the async workers.
            let this = self.clone();
            let (digest, wasm) = (e.digest.clone(), e.wasm);
            let plugin = tokio::task::spawn_blocking(move || this.load(&digest, &wasm))
                .await
                .expect("plugin load task")
                .map_err(|source| PacksError::Load {
                    plugin: format!("{}@{}", e.name, e.version),
                    source,
                })?;
            fresh.entry(e.tenant).or_default().packs.push(ActivePack {
                plugin,
                version: e.version,
                rules: e.rules,
                rules_version: e.rules_version,
                owns_lifecycle: e.owns_lifecycle,
            });
        }
        let mut tenants = self.tenants.write().expect("packs lock");
        if tenant.is_none() {
            tenants.clear();
        }
        for (t, mut p) in fresh {
            p.packs.sort_by_key(|a| !a.owns_lifecycle);
            tenants.insert(t, Arc::new(p));
        }
        Ok(())
    }
}
