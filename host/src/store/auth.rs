//! Tenants, bearer tokens (stored as sha256 hashes) and the audit log.

use super::{to_json, Result, StoreError};
use crate::domain::{now_ms, Principal, Role};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

/// Creates a tenant; an existing one is left as it is.
pub async fn ensure_tenant(conn: &mut AnyConnection, id: &str, name: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(name)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new token: its id and the secret, which is shown once and stored only hashed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewToken {
    pub id: String,
    pub token: String,
    pub tenant: String,
    pub role: Role,
}

pub async fn create_token(
    conn: &mut AnyConnection,
    tenant: &str,
    role: Role,
    label: &str,
) -> Result<NewToken> {
    let exists = sqlx::query("SELECT 1 FROM tenants WHERE id = $1")
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound(format!("tenant {tenant}")));
    }
    // Two v4 UUIDs: 244 random bits from the OS generator.
    let token = format!(
        "sc_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let id = format!("tok_{}", &hash_token(&token)[..12]);
    sqlx::query(
        "INSERT INTO tokens (id, tenant_id, role, hash, label, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(tenant)
    .bind(role.as_str())
    .bind(hash_token(&token))
    .bind(label)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(NewToken {
        id,
        token,
        tenant: tenant.to_string(),
        role,
    })
}

/// The tenant and role of a valid, unrevoked token.
pub async fn principal(conn: &mut AnyConnection, secret: &str) -> Result<Option<Principal>> {
    let row = sqlx::query(
        "SELECT id, tenant_id, role, label FROM tokens WHERE hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash_token(secret))
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let role: String = row.try_get("role")?;
    Ok(Some(Principal {
        token_id: row.try_get("id")?,
        agent: row.try_get("label")?,
        tenant: row.try_get("tenant_id")?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role}")))?,
    }))
}

/// Revokes a token of `tenant`; it stops working at once.
pub async fn revoke_token(conn: &mut AnyConnection, tenant: &str, id: &str) -> Result<()> {
    let r = sqlx::query(
        "UPDATE tokens SET revoked_at = $1 WHERE tenant_id = $2 AND id = $3 AND revoked_at IS NULL",
    )
    .bind(now_ms())
    .bind(tenant)
    .bind(id)
    .execute(conn)
    .await?;
    if r.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("token {id}")));
    }
    Ok(())
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
    pub at: i64,
}

pub async fn audit(
    conn: &mut AnyConnection,
    tenant: &str,
    actor: &str,
    action: &str,
    target: &str,
    detail: &serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, actor, action, target, detail, at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant)
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(to_json(detail))
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn audit_log(
    conn: &mut AnyConnection,
    tenant: &str,
    limit: i64,
) -> Result<Vec<AuditEntry>> {
    let rows = sqlx::query(
        "SELECT actor, action, target, detail, at FROM audit_log WHERE tenant_id = $1 ORDER BY seq DESC LIMIT $2",
    )
    .bind(tenant)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditEntry {
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                target: r.try_get("target")?,
                detail: super::from_json(&r.try_get::<String, _>("detail")?)?,
                at: r.try_get("at")?,
            })
        })
        .collect()
}
