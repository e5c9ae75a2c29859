//! Plugin versions (the component bytes and manifest), rule sets and which
//! plugins a tenant has enabled.

use super::{from_json, to_json, Result, StoreError};
use crate::domain::Manifest;
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
        "SELECT e.tenant_id, e.plugin, e.version, e.rules_version, e.owns_lifecycle, v.digest, v.manifest, r.rules \
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
            rules_version: r.try_get("rules_version")?,
            rules: r.try_get("rules")?,
            owns_lifecycle: r.try_get::<i64, _>("owns_lifecycle")? != 0,
        })
    })
    .collect()
}

/// A stored version with what the registry lists about it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoredVersion {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub size: i64,
    pub created_at: i64,
    pub manifest: Manifest,
}

/// The stored versions of one plugin (or all plugins) of a tenant, oldest first.
pub async fn plugin_versions(
    conn: &mut AnyConnection,
    tenant: &str,
    name: Option<&str>,
) -> Result<Vec<StoredVersion>> {
    sqlx::query(
        "SELECT name, version, digest, CAST(LENGTH(wasm) AS BIGINT) AS size, created_at, manifest FROM plugin_versions \
         WHERE tenant_id = $1 AND ($2 IS NULL OR name = $2) ORDER BY name, created_at, version",
    )
    .bind(tenant)
    .bind(name)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| {
        Ok(StoredVersion {
            name: r.try_get("name")?,
            version: r.try_get("version")?,
            digest: r.try_get("digest")?,
            size: r.try_get("size")?,
            created_at: r.try_get("created_at")?,
            manifest: from_json(&r.try_get::<String, _>("manifest")?)?,
        })
    })
    .collect()
}

/// The bytes and manifest of one stored version.
pub async fn plugin_component(
    conn: &mut AnyConnection,
    tenant: &str,
    name: &str,
    version: &str,
) -> Result<Option<(String, Manifest, Vec<u8>)>> {
    sqlx::query(
        "SELECT digest, manifest, wasm FROM plugin_versions WHERE tenant_id = $1 AND name = $2 AND version = $3",
    )
    .bind(tenant)
    .bind(name)
    .bind(version)
    .fetch_optional(conn)
    .await?
    .map(|r| {
        Ok((
            r.try_get("digest")?,
            from_json(&r.try_get::<String, _>("manifest")?)?,
            r.try_get("wasm")?,
        ))
    })
    .transpose()
}

/// A stored rule set.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RuleSet {
    pub version: i64,
    pub rules: serde_json::Value,
    pub created_at: i64,
}

pub async fn rule_sets(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
) -> Result<Vec<RuleSet>> {
    sqlx::query(
        "SELECT version, rules, created_at FROM rule_sets WHERE tenant_id = $1 AND plugin = $2 ORDER BY version",
    )
    .bind(tenant)
    .bind(plugin)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| {
        Ok(RuleSet {
            version: r.try_get("version")?,
            rules: from_json(&r.try_get::<String, _>("rules")?)?,
            created_at: r.try_get("created_at")?,
        })
    })
    .collect()
}

pub async fn rule_set(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
    version: i64,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT rules FROM rule_sets WHERE tenant_id = $1 AND plugin = $2 AND version = $3",
    )
    .bind(tenant)
    .bind(plugin)
    .bind(version)
    .fetch_optional(conn)
    .await?)
}

/// What a tenant runs of one plugin: a (version, rule-set version) pair.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Pair {
    pub version: String,
    pub rules_version: Option<i64>,
}

/// One line of a plugin's activation history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Activation {
    pub version: String,
    pub rules_version: Option<i64>,
    /// `activate`, `rollback` (back to an earlier pair) or `disable` (a first
    /// activation rolled back: out of service).
    pub kind: String,
    pub status: String,
    pub actor: String,
    pub reason: String,
    pub at: i64,
}

pub async fn activations(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
) -> Result<Vec<Activation>> {
    Ok(sqlx::query_as(
        "SELECT version, rules_version, kind, status, actor, reason, at FROM activations \
         WHERE tenant_id = $1 AND plugin = $2 ORDER BY seq DESC LIMIT 50",
    )
    .bind(tenant)
    .bind(plugin)
    .fetch_all(conn)
    .await?)
}

/// The pair a tenant runs now, if the plugin is enabled.
pub async fn active_pair(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
) -> Result<Option<(Pair, bool)>> {
    sqlx::query(
        "SELECT version, rules_version, owns_lifecycle FROM enabled_plugins WHERE tenant_id = $1 AND plugin = $2",
    )
    .bind(tenant)
    .bind(plugin)
    .fetch_optional(conn)
    .await?
    .map(|r| {
        Ok((
            Pair {
                version: r.try_get("version")?,
                rules_version: r.try_get("rules_version")?,
            },
            r.try_get::<i64, _>("owns_lifecycle")? != 0,
        ))
    })
    .transpose()
}

/// Bumps the tenant's generation: every host reloads what it runs.
pub async fn bump_generation(conn: &mut AnyConnection, tenant: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO tenant_generations (tenant_id, generation) VALUES ($1, 1) \
         ON CONFLICT (tenant_id) DO UPDATE SET generation = tenant_generations.generation + 1 RETURNING generation",
    )
    .bind(tenant)
    .fetch_one(conn)
    .await?)
}

/// Every tenant's generation.
pub async fn generations(conn: &mut AnyConnection) -> Result<Vec<(String, i64)>> {
    Ok(
        sqlx::query_as("SELECT tenant_id, generation FROM tenant_generations")
            .fetch_all(conn)
            .await?,
    )
}

/// Makes `pair` the tenant's active pair for `plugin` and records it. Returns the
/// pair it replaced.
#[allow(clippy::too_many_arguments)]
pub async fn activate(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
    pair: &Pair,
    owns_lifecycle: Option<bool>,
    actor: &str,
    reason: &str,
    at: i64,
) -> Result<Option<Pair>> {
    let current = active_pair(conn, tenant, plugin).await?;
    let owns = owns_lifecycle.unwrap_or_else(|| current.as_ref().is_some_and(|(_, o)| *o));
    sqlx::query("UPDATE activations SET status = 'superseded' WHERE tenant_id = $1 AND plugin = $2 AND status = 'active'")
        .bind(tenant)
        .bind(plugin)
        .execute(&mut *conn)
        .await?;
    let row = ActivationRow {
        kind: "activate",
        pair,
        actor,
        reason,
        at,
    };
    record_activation(conn, tenant, plugin, row).await?;
    enable_plugin(
        conn,
        tenant,
        plugin,
        &pair.version,
        pair.rules_version,
        owns,
        at,
    )
    .await?;
    bump_generation(conn, tenant).await?;
    Ok(current.map(|(p, _)| p))
}

/// One step of a plugin's activation history, as it is recorded.
struct ActivationRow<'a> {
    kind: &'static str,
    pair: &'a Pair,
    actor: &'a str,
    reason: &'a str,
    at: i64,
}

/// Appends a step to the activation history: the new top of the stack
/// (`active`), or `disabled` for a rollback that took the plugin out of service.
async fn record_activation(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
    row: ActivationRow<'_>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO activations (tenant_id, plugin, version, rules_version, kind, status, actor, reason, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(tenant)
    .bind(plugin)
    .bind(&row.pair.version)
    .bind(row.pair.rules_version)
    .bind(row.kind)
    .bind(if row.kind == "disable" { "disabled" } else { "active" })
    .bind(row.actor)
    .bind(row.reason)
    .bind(row.at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Returns the plugin to the pair before the active one, or, when the active one
/// was its first, to not being enabled (`None`). The active one is marked rolled
/// back and is never returned to by a later rollback.
pub async fn rollback(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
    actor: &str,
    reason: &str,
    at: i64,
) -> Result<(Pair, Option<Pair>)> {
    let rows = sqlx::query(
        "SELECT seq, version, rules_version, status FROM activations WHERE tenant_id = $1 AND plugin = $2 \
         AND status IN ('active', 'superseded') ORDER BY seq DESC LIMIT 2",
    )
    .bind(tenant)
    .bind(plugin)
    .fetch_all(&mut *conn)
    .await?;
    let pair = |r: &sqlx::any::AnyRow| -> Result<Pair> { Ok(sqlx::FromRow::from_row(r)?) };
    let Some(cur) = rows.first() else {
        return Err(StoreError::Conflict(format!("{plugin} is not active")));
    };
    if cur.try_get::<String, _>("status")? != "active" {
        return Err(StoreError::Conflict(format!("{plugin} is not active")));
    }
    let from = pair(cur)?;
    // Every rollback is a row of its own; earlier rows keep their actor, reason
    // and time, only their place in the stack (`status`) changes.
    let Some(prev) = rows.get(1) else {
        disable_plugin(conn, tenant, plugin).await?;
        let row = ActivationRow {
            kind: "disable",
            pair: &from,
            actor,
            reason,
            at,
        };
        record_activation(conn, tenant, plugin, row).await?;
        return Ok((from, None));
    };
    let to = pair(prev)?;
    sqlx::query("UPDATE activations SET status = 'rolled_back' WHERE seq = $1")
        .bind(cur.try_get::<i64, _>("seq")?)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE activations SET status = 'restored' WHERE seq = $1")
        .bind(prev.try_get::<i64, _>("seq")?)
        .execute(&mut *conn)
        .await?;
    let row = ActivationRow {
        kind: "rollback",
        pair: &to,
        actor,
        reason,
        at,
    };
    record_activation(conn, tenant, plugin, row).await?;
    let owns = active_pair(conn, tenant, plugin)
        .await?
        .is_some_and(|(_, o)| o);
    enable_plugin(
        conn,
        tenant,
        plugin,
        &to.version,
        to.rules_version,
        owns,
        at,
    )
    .await?;
    bump_generation(conn, tenant).await?;
    Ok((from, Some(to)))
}

/// Takes a plugin out of a tenant's service (no earlier pair to return to).
pub async fn disable_plugin(conn: &mut AnyConnection, tenant: &str, plugin: &str) -> Result<()> {
    sqlx::query("DELETE FROM enabled_plugins WHERE tenant_id = $1 AND plugin = $2")
        .bind(tenant)
        .bind(plugin)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE activations SET status = 'rolled_back' WHERE tenant_id = $1 AND plugin = $2 AND status = 'active'")
        .bind(tenant)
        .bind(plugin)
        .execute(&mut *conn)
        .await?;
    bump_generation(conn, tenant).await?;
    Ok(())
}

/// Records that the circuit breaker suspended a version.
pub async fn suspend(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
    version: &str,
    reason: &str,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO suspensions (tenant_id, plugin, version, reason, at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tenant_id, plugin, version) DO UPDATE SET reason = excluded.reason, at = excluded.at",
    )
    .bind(tenant)
    .bind(plugin)
    .bind(version)
    .bind(reason)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Suspended versions of a plugin: version, reason, when.
pub async fn suspensions(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
) -> Result<Vec<(String, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT version, reason, at FROM suspensions WHERE tenant_id = $1 AND plugin = $2 ORDER BY at",
    )
    .bind(tenant)
    .bind(plugin)
    .fetch_all(conn)
    .await?)
}

/// Lifts a suspension (an admin activating the version again).
pub async fn unsuspend(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
    version: &str,
) -> Result<()> {
    sqlx::query("DELETE FROM suspensions WHERE tenant_id = $1 AND plugin = $2 AND version = $3")
        .bind(tenant)
        .bind(plugin)
        .bind(version)
        .execute(conn)
        .await?;
    Ok(())
}

/// The PostgreSQL channel on which a tenant's changes are announced; the payload
/// is the tenant.
pub const CHANGES_CHANNEL: &str = "stagecraft_changes";

impl super::Store {
    /// The tenants whose plugins changed on any host, as they are announced
    /// (PostgreSQL `LISTEN`, reconnecting after errors). On SQLite the stream
    /// stays empty: the generation poll alone carries changes there.
    pub fn changes(&self) -> tokio::sync::mpsc::Receiver<String> {
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
        if self.backend() == super::Backend::Postgres {
            tokio::spawn(listen(self.url().to_string(), tx));
        } else {
            // Keep the sender alive so that the stream is pending, not ended.
            tokio::spawn(async move { tx.closed().await });
        }
        rx
    }
}

/// Forwards `NOTIFY stagecraft_changes, '<tenant>'` to `tx`, reconnecting after errors.
async fn listen(url: String, tx: tokio::sync::mpsc::Sender<String>) {
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut l) => {
                if let Err(e) = l.listen(CHANGES_CHANNEL).await {
                    tracing::warn!("LISTEN failed: {e}");
                } else {
                    while let Ok(n) = l.recv().await {
                        if tx.send(n.payload().to_string()).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!("cannot connect to listen for changes: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Tells the other hosts (PostgreSQL `NOTIFY`, delivered at commit) that what
/// `tenant` runs has changed. On SQLite the generation poll alone carries it.
pub async fn notify_change(tx: &mut super::Tx, tenant: &str) -> Result<()> {
    if tx.backend() == super::Backend::Postgres {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(tenant)
            .execute(tx.conn())
            .await?;
    }
    Ok(())
}

/// Replaces the sensitive fields `plugin` may see for `tenant`.
pub async fn set_field_grants(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
    fields: &[String],
) -> Result<()> {
    sqlx::query("DELETE FROM field_grants WHERE tenant_id = $1 AND plugin = $2")
        .bind(tenant)
        .bind(plugin)
        .execute(&mut *conn)
        .await?;
    for f in fields {
        sqlx::query("INSERT INTO field_grants (tenant_id, plugin, field) VALUES ($1, $2, $3)")
            .bind(tenant)
            .bind(plugin)
            .bind(f)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The sensitive fields `plugin` may see for `tenant`.
pub async fn field_grants(
    conn: &mut AnyConnection,
    tenant: &str,
    plugin: &str,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT field FROM field_grants WHERE tenant_id = $1 AND plugin = $2 ORDER BY field",
    )
    .bind(tenant)
    .bind(plugin)
    .fetch_all(conn)
    .await?)
}
