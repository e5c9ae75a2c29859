//! Events: one recorded through the pipeline in a transaction of its own, or
//! (SQLite) in a group with the events that arrive beside it
//! ([`super::group_commit`]); idempotency keys and the breaker's count.

use super::breaker::Breaker;
use super::group_commit::GroupCommit;
use super::{invalid, CrmError};
use crate::domain::{self, time::Clock};
use crate::packs::Packs;
use crate::pipeline::{self, EventInput, EventJob, EventOutcome, PipelineError};
use crate::store::{self, Backend, Store, StoreError};
use std::sync::Arc;

/// Records events and runs the enabled plugins on them.
#[derive(Clone, Debug)]
pub struct Events {
    pub(super) store: Store,
    packs: Packs,
    breaker: Breaker,
    clock: Clock,
    /// SQLite: events that arrive together are recorded in one transaction.
    group_commit: Option<Arc<GroupCommit>>,
}

impl Events {
    pub(crate) fn new(store: Store, packs: Packs, breaker: Breaker, clock: Clock) -> Events {
        let group_commit = (store.backend() == Backend::Sqlite).then(Arc::default);
        Events {
            store,
            packs,
            breaker,
            clock,
            group_commit,
        }
    }

    /// Turns group commit on or off (it is on for SQLite, off for PostgreSQL,
    /// whose transactions run side by side). The ingest bench compares the two.
    #[cfg(any(test, feature = "test-support"))]
    pub fn set_group_commit(&mut self, on: bool) {
        self.group_commit = on.then(Arc::default);
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
            domain::check_idempotency_key(k).map_err(invalid)?;
        }
        let wall = self.clock.now();
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
                self.breaker
                    .record_health(tenant, p, failure.map(|f| f.message.as_str()))
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
}
