//! The circuit breaker: a plugin version that fails `breaker_threshold` times in
//! a row is suspended for its tenant and the previous pair restored.

use super::CrmError;
use crate::domain::changes::{ChangeType, NewChange};
use crate::domain::time::Clock;
use crate::packs::{ActivePack, Packs};
use crate::store::{self, Store};
use serde_json::json;

#[derive(Clone, Debug)]
pub struct Breaker {
    store: Store,
    packs: Packs,
    /// The one clock (see [`Clock`]).
    clock: Clock,
}

impl Breaker {
    pub(crate) fn new(store: Store, packs: Packs, clock: Clock) -> Breaker {
        Breaker {
            store,
            packs,
            clock,
        }
    }

    /// Counts a plugin's outcome for an event and trips the circuit breaker when a
    /// version has failed `breaker_threshold` times in a row: the version is
    /// suspended for the tenant and the previous pair restored (or, with none, the
    /// plugin is disabled), with the reason in the audit log.
    pub async fn record_health(&self, tenant: &str, pack: &ActivePack, failure: Option<&str>) {
        let name = pack.name().to_string();
        let h = self
            .packs
            .record_call(tenant, &name, &pack.version, failure, self.clock.now());
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
    ) -> Result<(), CrmError> {
        tracing::warn!(%tenant, plugin = %name, %version, "{reason}");
        let at = self.clock.now();
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
        let suspended = NewChange {
            kind: ChangeType::PluginSuspended,
            customer_id: None,
            data: json!({ "plugin": name, "version": version, "reason": reason, "restored": restored }),
        };
        store::insert_changes(tx.conn(), tenant, &[suspended], at).await?;
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
            .map_err(|e| CrmError::Internal(format!("reload after suspending: {e}")))?;
        Ok(())
    }
}
