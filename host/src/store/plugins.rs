//! Plugin versions (the component bytes and manifest), rule sets and which
//! plugins a tenant has enabled.

use super::{from_json, to_json, Result, StoreError};
use crate::runtime::Manifest;
use serde::Serialize;
use sqlx::{AnyConnection, Row};

/// A stored plugin version.
#[derive(Debug, Clone, Serialize)]
pub struct PluginVersionInfo {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub created_at: i64,
}

/// Stores a component under its manifest's name and version. Identical bytes
/// again are a no-op (returns `false`); other bytes under a stored version are a conflict.
pub async fn save_plugin_version(
    conn: &mut AnyConnection,
    tenant: &str,
    manifest: &Manifest,
    digest: &str,
    wasm: &[u8],
    at: i64,
) -> Result<bool> {
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT digest FROM plugin_versions WHERE tenant_id = $1 AND name = $2 AND version = $3",
    )
    .bind(tenant)
    .bind(&manifest.name)
    .bind(&manifest.version)
    .fetch_optional(&mut *conn)
    .await?;
    match existing {
        Some(d) if d == digest => return Ok(false),
        Some(d) => {
            return Err(StoreError::Conflict(format!(
                "{}@{} is already stored with other bytes (sha256 {d})",
                manifest.name, manifest.version
            )))
        }
        None => {}
    }
    sqlx::query(
        "INSERT INTO plugin_versions (tenant_id, name, version, digest, manifest, wasm, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(tenant)
    .bind(&manifest.name)
    .bind(&manifest.version)
    .bind(digest)
    .bind(to_json(manifest))
    .bind(wasm.to_vec())
    .bind(at)
    .execute(conn)
    .await?;
    Ok(true)
}

/// Stores a new rule-set version for a plugin; returns its number (1, 2, ...).
pub async fn save_rule_set(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
    rules: &str,
    at: i64,
) -> Result<i64> {
    let next: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(MAX(version), 0) + 1 AS BIGINT) FROM rule_sets WHERE tenant_id = $1 AND plugin = $2",
    )
    .bind(tenant)
    .bind(plugin)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO rule_sets (tenant_id, plugin, version, rules, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tenant)
    .bind(plugin)
    .bind(next)
    .bind(rules)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(next)
}

/// Enables (or re-points) a plugin for a tenant. At most one enabled plugin owns
/// the lifecycle; giving it to this one takes it from any other.
pub async fn enable_plugin(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
    version: &str,
    rules_version: Option<i64>,
    owns_lifecycle: bool,
    at: i64,
) -> Result<()> {
    if owns_lifecycle {
        sqlx::query("UPDATE enabled_plugins SET owns_lifecycle = 0 WHERE tenant_id = $1")
            .bind(tenant)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        "INSERT INTO enabled_plugins (tenant_id, plugin, version, rules_version, owns_lifecycle, enabled_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, plugin) DO UPDATE SET \
         version = excluded.version, rules_version = excluded.rules_version, \
         owns_lifecycle = excluded.owns_lifecycle, enabled_at = excluded.enabled_at",
    )
    .bind(tenant)
    .bind(plugin)
    .bind(version)
    .bind(rules_version)
    .bind(owns_lifecycle as i64)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// An enabled plugin with everything needed to run it.
#[derive(Debug, Clone)]
pub struct EnabledPlugin {
    pub tenant: String,
    pub name: String,
    pub version: String,
    pub digest: String,
    pub manifest: Manifest,
    pub wasm: Vec<u8>,
    pub rules_version: Option<i64>,
    /// `None`: the plugin's default rules.
    pub rules: Option<String>,
    pub owns_lifecycle: bool,
}

/// Every enabled plugin of every tenant (`tenant = None`) or of one.
pub async fn enabled_plugins(
    conn: &mut AnyConnection,
    tenant: Option<&str>,
) -> Result<Vec<EnabledPlugin>> {
    sqlx::query(
        "SELECT e.tenant_id, e.plugin, e.version, e.rules_version, e.owns_lifecycle, v.digest, v.manifest, v.wasm, r.rules \
         FROM enabled_plugins e \
         JOIN plugin_versions v ON v.tenant_id = e.tenant_id AND v.name = e.plugin AND v.version = e.version \
         LEFT JOIN rule_sets r ON r.tenant_id = e.tenant_id AND r.plugin = e.plugin AND r.version = e.rules_version \
         WHERE ($1 IS NULL OR e.tenant_id = $1) ORDER BY e.tenant_id, e.plugin",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| {
        Ok(EnabledPlugin {
            tenant: r.try_get("tenant_id")?,
            name: r.try_get("plugin")?,
            version: r.try_get("version")?,
            digest: r.try_get("digest")?,
            manifest: from_json(&r.try_get::<String, _>("manifest")?)?,
            wasm: r.try_get("wasm")?,
            rules_version: r.try_get("rules_version")?,
            rules: r.try_get("rules")?,
            owns_lifecycle: r.try_get::<i64, _>("owns_lifecycle")? != 0,
        })
    })
    .collect()
}
