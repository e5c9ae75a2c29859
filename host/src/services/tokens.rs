//! Tokens and tenants: who may call the API, as the CLI and the API create them.

use super::CrmError;
use crate::domain::{self, Principal};
use crate::store::{self, NewToken, Store};
use serde_json::json;

#[derive(Clone, Debug)]
pub struct Tokens {
    store: Store,
}

impl Tokens {
    pub(crate) fn new(store: Store) -> Tokens {
        Tokens { store }
    }

    /// Makes sure `tenant` exists (named after itself when new).
    pub async fn ensure_tenant(&self, tenant: &str) -> Result<(), CrmError> {
        let mut tx = self.store.begin().await?;
        store::ensure_tenant(tx.conn(), tenant, tenant).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A token for `tenant` (created if new) and an audit line naming `actor`:
    /// what `stagecraft token create` and `POST /v1/tokens` both do.
    pub async fn create(
        &self,
        tenant: &str,
        actor: &str,
        role: domain::Role,
        label: &str,
    ) -> Result<NewToken, CrmError> {
        if let Some(p) = domain::text::text_problem(label, 200) {
            return Err(super::invalid(format!("label {p}")));
        }
        let mut tx = self.store.begin().await?;
        store::ensure_tenant(tx.conn(), tenant, tenant).await?;
        let t = store::create_token(tx.conn(), tenant, role, label).await?;
        store::audit(
            tx.conn(),
            tenant,
            actor,
            "token.create",
            &t.id,
            &json!({ "role": role, "label": label }),
        )
        .await?;
        tx.commit().await?;
        Ok(t)
    }

    /// Revokes a token of `tenant`; it stops working at once.
    pub async fn revoke(&self, tenant: &str, actor: &str, id: &str) -> Result<(), CrmError> {
        let mut tx = self.store.begin().await?;
        store::revoke_token(tx.conn(), tenant, id).await?;
        store::audit(tx.conn(), tenant, actor, "token.revoke", id, &json!({})).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Who holds `secret`, if it is a live token. Reads on a connection that
    /// gives up quickly, so that a busy pool answers 503 rather than hanging.
    pub async fn principal(&self, secret: &str) -> Result<Option<Principal>, CrmError> {
        let mut conn = self.store.short_read_conn().await?;
        Ok(store::principal(&mut conn, secret).await?)
    }
}
