//! The services: the operations the HTTP API and the command line share. Each
//! owns its part of the data and keeps its fields private; the edges (`http`,
//! `cli`) call services and never the store.
//!
//! - [`Customers`]: profiles, views, lists, timelines, follow-ups.
//! - [`Events`]: an event through the pipeline, alone or in a group
//!   ([`group_commit`]), idempotency keys.
//! - [`Imports`]: CSV and CDNOW imports, in batches.
//! - [`Registry`]: plugin versions, rule sets, grants, activation, rollback,
//!   dry-run, `install` (the one path of the API and `stagecraft plugin install`).
//! - [`Jobs`]: bulk rescore jobs shared by every host.
//! - [`Wakes`]: the timers plugins set (`wake-at`), fired by every host.
//! - [`Schedules`]: cron expressions per tenant that start rescores.
//! - [`Breaker`]: suspends a version that keeps failing.
//! - [`Changes`]: the change feed every write path records into.
//! - [`Webhooks`]: subscriptions to it, delivered signed by every host.
//! - [`Tokens`]: tenants and API tokens.
//! - [`Reports`]: the audit log and the analytics.
//!
//! [`Crm`] composes them: the application state the edges hold.

pub mod breaker;
pub mod changes;
pub mod customers;
pub mod events;
pub mod group_commit;
pub mod import;
pub mod jobs;
pub mod registry;
pub mod reports;
pub mod schedules;
pub mod tokens;
pub mod wakes;
pub mod webhooks;

pub use breaker::Breaker;
pub use changes::{ChangePage, Changes};
pub use customers::{CustomerInput, CustomerPatch, CustomerView, Customers, WorkList};
pub use events::Events;
pub use import::{ImportError, ImportReport, Imports};
pub use jobs::Jobs;
pub use registry::{Registry, RegistryError};
pub use reports::Reports;
pub use schedules::{ScheduleInput, Schedules};
pub use tokens::Tokens;
pub use wakes::Wakes;
pub use webhooks::Webhooks;

/// What the services hand to the edges as they are stored: plain data.
pub use crate::store::{
    Activation, AuditEntry, CustomerFilter, CustomerSummary, FollowUp, Job, NewToken, Pair,
    RenderedReason, RuleSet, Schedule, ScoreDistribution, SegmentMembership, SegmentSize,
    StoreError, StoredScore, TimelineEntry, Wake,
};

use crate::domain::time::Clock;
use crate::packs::{Packs, TenantPacks};
use crate::pipeline::PipelineError;
use crate::store::Store;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A fault of the host itself (a task that panicked), not of the request.
    #[error("{0}")]
    Internal(String),
}

pub(crate) fn invalid(m: impl Into<String>) -> CrmError {
    CrmError::Pipeline(PipelineError::Invalid(m.into()))
}

/// The application: every service over one store and one set of loaded packs.
#[derive(Clone, Debug)]
pub struct Crm {
    customers: Customers,
    events: Events,
    imports: Imports,
    registry: Registry,
    jobs: Jobs,
    tokens: Tokens,
    reports: Reports,
    wakes: Wakes,
    schedules: Schedules,
    changes: Changes,
    webhooks: Webhooks,
    packs: Packs,
    store: Store,
    clock: Clock,
    /// How often [`Crm::watch`] re-reads the generations besides notifications.
    sync_interval: std::time::Duration,
}

/// The default for how often a host re-reads what every tenant runs.
pub const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

impl Crm {
    /// The application on the system's clock.
    pub fn new(store: Store, packs: Packs) -> Crm {
        Crm::with_clock(store, packs, Clock::system())
    }

    /// The application on `clock`: every service reads its time there.
    pub fn with_clock(store: Store, packs: Packs, clock: Clock) -> Crm {
        let c = clock.clone();
        let breaker = Breaker::new(store.clone(), packs.clone(), c.clone());
        let events = Events::new(store.clone(), packs.clone(), breaker.clone(), c.clone());
        let jobs = Jobs::new(store.clone(), packs.clone(), c.clone());
        Crm {
            customers: Customers::new(store.clone(), packs.clone(), c.clone()),
            imports: Imports::new(store.clone(), packs.clone(), c.clone()),
            events,
            registry: Registry::new(store.clone(), packs.clone(), c.clone()),
            jobs: jobs.clone(),
            schedules: Schedules::new(store.clone(), jobs, c.clone()),
            wakes: Wakes::new(store.clone(), packs.clone(), c),
            tokens: Tokens::new(store.clone()),
            changes: Changes::new(store.clone()),
            webhooks: Webhooks::new(store.clone(), clock.clone(), packs.metrics().clone()),
            reports: Reports::new(store.clone(), packs.clone(), clock.clone()),
            packs,
            store,
            clock,
            sync_interval: SYNC_INTERVAL,
        }
    }

    /// The clock every service reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Sets how often [`Crm::watch`] re-reads the generations (default
    /// [`SYNC_INTERVAL`]); notifications on PostgreSQL arrive at once anyway.
    pub fn with_sync_interval(mut self, every: std::time::Duration) -> Crm {
        self.sync_interval = every;
        self
    }

    /// Connects to the database at `url` (creating and migrating it as needed).
    pub async fn connect(url: &str, packs: Packs) -> Result<Crm, StoreError> {
        Ok(Crm::new(Store::connect(url).await?, packs))
    }

    /// Sets how long a bulk job's chunk claim lasts without its heartbeat
    /// (default [`jobs::CHUNK_LEASE`]); the heartbeat renews it every quarter.
    pub fn with_chunk_lease(mut self, lease: std::time::Duration) -> Crm {
        self.jobs.set_chunk_lease(lease);
        self
    }

    /// Sets how long a claim on due wakes lasts without its heartbeat (default
    /// [`wakes::LEASE`]): how long the wakes of a host that died wait.
    pub fn with_wake_lease(mut self, lease: std::time::Duration) -> Crm {
        self.wakes.set_lease(lease);
        self
    }

    /// Turns group commit on or off (see [`Events`]); the ingest bench compares the two.
    #[cfg(any(test, feature = "test-support"))]
    pub fn with_group_commit(mut self, on: bool) -> Crm {
        self.events.set_group_commit(on);
        self
    }

    pub fn customers(&self) -> &Customers {
        &self.customers
    }
    pub fn events(&self) -> &Events {
        &self.events
    }
    pub fn imports(&self) -> &Imports {
        &self.imports
    }
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }
    pub fn reports(&self) -> &Reports {
        &self.reports
    }
    pub fn wakes(&self) -> &Wakes {
        &self.wakes
    }
    pub fn schedules(&self) -> &Schedules {
        &self.schedules
    }
    pub fn changes(&self) -> &Changes {
        &self.changes
    }
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// Sets where webhooks may go and how they are tried (defaults: no
    /// internal address, https only; 10 s per attempt, retried for 3 days).
    pub fn with_webhooks(
        mut self,
        egress: webhooks::egress::Egress,
        policy: webhooks::DeliveryPolicy,
    ) -> Crm {
        self.webhooks.configure(egress, policy);
        self
    }

    /// Sets how long the change feed keeps changes (default [`changes::RETENTION`]).
    pub fn with_change_retention(mut self, retention: std::time::Duration) -> Crm {
        self.changes.set_retention(retention);
        self
    }

    /// What `tenant` runs now (for rendering reasons in its language).
    pub fn tenant_packs(&self, tenant: &str) -> Arc<TenantPacks> {
        self.packs.for_tenant(tenant)
    }

    /// The loaded plugins, their metrics and health.
    pub fn packs(&self) -> &Packs {
        &self.packs
    }

    /// Keeps this host's plugins in step with changes made by any host.
    pub fn watch(&self) -> tokio::task::JoinHandle<()> {
        self.packs.watch(self.store.clone(), self.sync_interval)
    }

    /// Loads what every tenant runs (at start).
    pub async fn load_all(&self) -> Result<(), crate::packs::PacksError> {
        self.packs.reload(&self.store, None).await
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// Closes the store's connections (at shutdown).
    pub async fn close(&self) {
        self.store.close().await
    }

    /// The store, for tests that check what was written.
    #[cfg(any(test, feature = "test-support"))]
    pub fn store(&self) -> &Store {
        &self.store
    }
}
