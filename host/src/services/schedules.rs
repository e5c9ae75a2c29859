//! Schedules: cron expressions per tenant (UTC) that start a rescore at each
//! occurrence, run by whichever host gets there first.
//!
//! A host's worker ([`Schedules::run`]) looks every [`POLL`] (and whenever the
//! clock is moved by hand) for a schedule whose `next_at` has come. It creates
//! the occurrence's job and moves `next_at` to the first occurrence after now
//! in one transaction, conditional on `next_at` being still the one it read:
//! each occurrence starts one job across hosts, a host killed before the commit
//! leaves the occurrence to the next, and occurrences missed while every host
//! was down start one job on start, not one each. The job's chunks are then
//! shared by every host ([`super::Jobs::help_with_jobs`]).

use super::jobs::Jobs;
use super::{invalid, CrmError};
use crate::domain::time::{next_occurrence, parse_cron, Clock};
use crate::store::{self, Schedule, Store};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// How often an idle host looks for a due schedule.
pub const POLL: Duration = Duration::from_secs(1);
/// The most schedules a tenant keeps.
pub const MAX_SCHEDULES: usize = 20;

/// What a client sends to create a schedule.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleInput {
    /// Five fields (minute hour day-of-month month day-of-week), or six with
    /// seconds first, in UTC; `@daily` and the like too. `0 3 * * *` is nightly
    /// at 03:00 UTC.
    pub cron: String,
    /// What each occurrence starts: `rescore` (the default and, for now, the only kind).
    #[serde(default)]
    pub kind: Option<String>,
}

/// Schedules per tenant and the worker that runs them.
#[derive(Clone, Debug)]
pub struct Schedules {
    store: Store,
    jobs: Jobs,
    clock: Clock,
}

impl Schedules {
    pub(crate) fn new(store: Store, jobs: Jobs, clock: Clock) -> Schedules {
        Schedules { store, jobs, clock }
    }

    /// Creates a schedule; its first occurrence is the first after now.
    pub async fn create(
        &self,
        tenant: &str,
        actor: &str,
        input: ScheduleInput,
    ) -> Result<Schedule, CrmError> {
        let kind = input.kind.unwrap_or_else(|| "rescore".into());
        if kind != "rescore" {
            return Err(invalid(format!(
                "kind {kind:?}: a schedule starts a rescore"
            )));
        }
        let cron = parse_cron(&input.cron).map_err(invalid)?;
        let now = self.clock.now();
        let next_at = next_occurrence(&cron, now)
            .ok_or_else(|| invalid(format!("{:?} never occurs after now", input.cron)))?;
        let s = Schedule {
            id: format!("sch_{}", uuid::Uuid::now_v7().simple()),
            cron: input.cron.trim().to_string(),
            kind,
            next_at,
            last_at: None,
            last_job: None,
            runs: 0,
            created_at: now,
            created_by: actor.to_string(),
        };
        let mut tx = self.store.begin().await?;
        if store::schedules(tx.conn(), tenant).await?.len() >= MAX_SCHEDULES {
            return Err(invalid(format!(
                "a tenant keeps at most {MAX_SCHEDULES} schedules; delete one first"
            )));
        }
        store::create_schedule(tx.conn(), tenant, &s).await?;
        store::audit(
            tx.conn(),
            tenant,
            actor,
            "schedule.create",
            &s.id,
            &json!({ "cron": s.cron }),
        )
        .await?;
        tx.commit().await?;
        Ok(s)
    }

    pub async fn list(&self, tenant: &str) -> Result<Vec<Schedule>, CrmError> {
        let mut conn = self.store.conn().await?;
        Ok(store::schedules(&mut conn, tenant).await?)
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<Schedule>, CrmError> {
        let mut conn = self.store.conn().await?;
        Ok(store::schedule(&mut conn, tenant, id).await?)
    }

    /// Deletes a schedule; `false` if the tenant has none with that id.
    pub async fn delete(&self, tenant: &str, actor: &str, id: &str) -> Result<bool, CrmError> {
        let mut tx = self.store.begin().await?;
        if !store::delete_schedule(tx.conn(), tenant, id).await? {
            return Ok(false);
        }
        store::audit(tx.conn(), tenant, actor, "schedule.delete", id, &json!({})).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// This host's worker: runs due schedules until the task is aborted.
    pub fn run(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let moved = this.clock.moved();
                if let Err(e) = this.run_due().await {
                    tracing::warn!("running due schedules: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = moved => {}
                }
            }
        })
    }

    /// Starts the job of every schedule due now, once each (missed
    /// occurrences together); returns how many this call started.
    pub async fn run_due(&self) -> Result<usize, CrmError> {
        let mut started = 0;
        loop {
            let now = self.clock.now();
            let mut tx = self.store.begin().await?;
            let backend = tx.backend();
            let Some(due) = store::next_due_schedule(tx.conn(), backend, now).await? else {
                return Ok(started);
            };
            let next = parse_cron(&due.cron)
                .ok()
                .and_then(|c| next_occurrence(&c, now))
                // A schedule that never occurs again stays, and is not due.
                .unwrap_or(i64::MAX);
            let actor = format!("schedule:{}", due.id);
            let params =
                json!({ "by": actor, "now": now, "schedule": due.id, "occurrence": due.next_at });
            let job = self
                .jobs
                .create_rescore(&mut tx, &due.tenant_id, &actor, params)
                .await?;
            if store::advance_schedule(tx.conn(), &due, due.next_at, &job, next).await? {
                tx.commit().await?;
                started += 1;
            }
            // Otherwise another host ran it first: dropping `tx` rolls back
            // this job.
        }
    }
}
