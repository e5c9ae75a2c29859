//! Bulk rescore jobs: chunks of customers claimed by any host (leases with a
//! heartbeat), evaluated through the one evaluation path and written with the
//! chunk marked done in one transaction.

use super::registry::{CustomerFailure, RegistryError, LISTED_FAILURES, RESCORE_CHUNK};
use crate::domain::{time::Clock, CustomerRecord, EventRecord};
use crate::packs::Packs;
use crate::pipeline::{
    queue_band_changes, queue_segment_changes, reevaluate, Effects, Evaluated, Strikes,
    RECENT_EVENTS,
};
use crate::runtime::CallContext;
use crate::store::{self, Store, StoreError};
use serde_json::json;
use std::collections::BTreeMap;

/// How long a rescore chunk's claim lasts without a heartbeat before another
/// host may take the chunk over as left by a dead host.
pub const CHUNK_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// Bulk rescore jobs: started here, worked on by every host.
#[derive(Clone, Debug)]
pub struct Jobs {
    store: Store,
    packs: Packs,
    clock: Clock,
    /// How long a chunk claim lasts without its heartbeat.
    chunk_lease: std::time::Duration,
}

impl Jobs {
    pub(crate) fn new(store: Store, packs: Packs, clock: Clock) -> Jobs {
        Jobs {
            store,
            packs,
            clock,
            chunk_lease: CHUNK_LEASE,
        }
    }

    pub(crate) fn set_chunk_lease(&mut self, lease: std::time::Duration) {
        self.chunk_lease = lease;
    }

    /// A job of `tenant`, as it stands.
    pub async fn job(&self, tenant: &str, id: &str) -> Result<Option<store::Job>, StoreError> {
        let mut conn = self.store.conn().await?;
        store::job(&mut conn, tenant, id).await
    }

    async fn load_batch(
        &self,
        tenant: &str,
        ids: &[String],
        now: i64,
    ) -> Result<Vec<(CustomerRecord, Vec<EventRecord>)>, StoreError> {
        let mut conn = self.store.conn().await?;
        // A few statements for the whole chunk (see `store::bulk`).
        store::load_customers(&mut conn, tenant, ids, now, RECENT_EVENTS).await
    }

    /// Starts a bulk rescore of every customer of the tenant with what it runs now.
    /// The work is cut into chunks in the database; this host starts working on
    /// them, and on PostgreSQL any other host's [`Jobs::help_with_jobs`] joins in.
    /// `now` is the time the plugins are told (the clock's now if `None`):
    /// a history is scored as of its own end with `now` at that end.
    pub async fn start_rescore(
        &self,
        tenant: &str,
        actor: &str,
        now: Option<i64>,
    ) -> Result<String, RegistryError> {
        let as_of = now.unwrap_or_else(|| self.clock.now());
        crate::domain::time::check_as_of(as_of).map_err(RegistryError::Invalid)?;
        let mut tx = self.store.begin().await?;
        let job = self
            .create_rescore(&mut tx, tenant, actor, json!({ "by": actor, "now": as_of }))
            .await?;
        tx.commit().await?;
        Ok(job)
    }

    /// Creates a rescore job of every customer of `tenant` inside `tx` (its
    /// chunks, the job with `params`, the audit entry); returns its id. Any
    /// host's [`Jobs::help_with_jobs`] works on it once `tx` commits.
    pub(crate) async fn create_rescore(
        &self,
        tx: &mut store::Tx,
        tenant: &str,
        actor: &str,
        params: serde_json::Value,
    ) -> Result<String, StoreError> {
        let job = format!("job_{}", uuid::Uuid::now_v7().simple());
        let total = store::create_chunks(tx.conn(), tenant, &job, RESCORE_CHUNK).await?;
        store::create_job(
            tx.conn(),
            tenant,
            &job,
            "rescore",
            &params,
            total,
            self.clock.now(),
        )
        .await?;
        store::audit(
            tx.conn(),
            tenant,
            actor,
            "rescore.start",
            &job,
            &json!({ "customers": total }),
        )
        .await?;
        Ok(job)
    }

    /// The tenant's newest jobs (at most `limit`), newest first.
    pub async fn jobs(&self, tenant: &str, limit: i64) -> Result<Vec<store::Job>, StoreError> {
        let mut conn = self.store.conn().await?;
        store::jobs(&mut conn, tenant, limit).await
    }

    /// Works on a rescore job's chunks until none is left; returns how many
    /// customers this call rescored. Safe to run on several hosts at once.
    ///
    /// One chunk at a time: read, score, then store with the chunk marked done
    /// in the same transaction. Reading the next chunk while the last was being
    /// written was tried and measured slower on SQLite (11,300 against 12,500
    /// customers/s side by side): the readers and the writer contend.
    pub async fn work_on_rescore(
        &self,
        tenant: &str,
        job: &str,
        host: &str,
    ) -> Result<i64, RegistryError> {
        let mut done = 0;
        // The time the job's plugins are told, fixed when it started.
        let now = {
            let mut conn = self.store.conn().await?;
            store::job(&mut conn, tenant, job).await?
        }
        .and_then(|j| j.params["now"].as_i64())
        .unwrap_or_else(|| self.clock.now());
        loop {
            // Each claim is named alone, so that two workers of one host (this
            // one and `help_with_jobs`) tell their claims apart too.
            let claim = format!("{host}/{}", uuid::Uuid::now_v7().simple());
            let Some(chunk) = self.claim_rescore_chunk(job, &claim).await? else {
                break;
            };
            let heartbeat = self.heartbeat(job.to_string(), chunk.chunk, claim.clone());
            let worked = async {
                let scored = self.rescore_chunk(tenant, chunk, now).await?;
                self.store_rescored(tenant, job, &claim, scored).await
            }
            .await;
            heartbeat.abort();
            done += worked?;
        }
        Ok(done)
    }

    /// Renews a chunk's claim every quarter of [`Crm::chunk_lease`] while it is
    /// worked on, so that no host (this one included) takes a chunk that is
    /// merely slow for one left by a dead host and does its writes twice.
    fn heartbeat(&self, job: String, chunk: i64, claim: String) -> tokio::task::JoinHandle<()> {
        let (store, clock, every) = (self.store.clone(), self.clock.clone(), self.chunk_lease / 4);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let renewed = match store.begin().await {
                    Ok(mut tx) => {
                        match store::renew_claim(tx.conn(), &job, chunk, &claim, clock.now()).await
                        {
                            Ok(held) => tx.commit().await.map(|_| held),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                match renewed {
                    Ok(true) => {}
                    Ok(false) => return tracing::warn!(%job, chunk, "the chunk's claim was lost"),
                    Err(e) => tracing::warn!(%job, chunk, "could not renew the chunk's claim: {e}"),
                }
            }
        })
    }

    /// Claims the job's next chunk, if any is left.
    async fn claim_rescore_chunk(
        &self,
        job: &str,
        claim: &str,
    ) -> Result<Option<store::Chunk>, RegistryError> {
        let now = self.clock.now();
        let stale_before = now - self.chunk_lease.as_millis() as i64;
        let mut tx = self.store.begin().await?;
        let backend = tx.backend();
        let chunk = store::claim_chunk(tx.conn(), backend, job, claim, now, stale_before).await?;
        tx.commit().await?;
        Ok(chunk)
    }

    /// Reads a chunk's customers and runs the tenant's active plugins on them
    /// through the one evaluation path, as a live event on the customer's latest
    /// event would (see [`reevaluate`]). Writes nothing.
    async fn rescore_chunk(
        &self,
        tenant: &str,
        chunk: store::Chunk,
        now: i64,
    ) -> Result<RescoredChunk, RegistryError> {
        let ids = {
            let mut conn = self.store.conn().await?;
            store::customer_ids_between(&mut conn, tenant, &chunk.first_id, &chunk.last_id).await?
        };
        let packs = self.packs.for_tenant(tenant);
        let batch = self.load_batch(tenant, &ids, now).await?;
        let ctx = CallContext {
            now,
            tenant: tenant.to_string(),
        };
        let p = packs.clone();
        let (batch, results) = crate::spawn_blocking(move || {
            let results = reevaluate(&p, &ctx, &batch, None, &Strikes::default());
            (batch, results)
        })
        .await
        .expect("rescore task");
        Ok(RescoredChunk {
            chunk,
            ids: ids.len() as i64,
            now,
            batch,
            results,
        })
    }

    /// Stores what a rescored chunk changes, in one transaction with the chunk
    /// marked done: what a live event's plugins would write but the event and
    /// its follow-ups (they belong to the event that caused them; rescheduling
    /// them on every rescore would repeat them): the stage (one move to where the
    /// owner leaves the customer), tags, fields, scores and segments (history
    /// rows only where something changed). A plugin that fails on a customer
    /// leaves what it gave that customer before. Returns the number of customers.
    async fn store_rescored(
        &self,
        tenant: &str,
        job: &str,
        claim: &str,
        r: RescoredChunk,
    ) -> Result<i64, RegistryError> {
        let RescoredChunk {
            chunk,
            ids,
            now,
            batch,
            results,
        } = r;
        // The first failure of each customer, by any plugin: counted in the job,
        // a sample listed.
        let mut failures: BTreeMap<String, CustomerFailure> = BTreeMap::new();
        let mut moves = Vec::new();
        let mut scores = Vec::new();
        let mut memberships = Vec::new();
        let mut writes = store::Batch::new();
        for ((c, _), ((_, failed), fx)) in batch.iter().zip(results) {
            if let Some(f) = failed.first() {
                failures.insert(
                    c.id.clone(),
                    CustomerFailure {
                        customer_id: c.id.clone(),
                        plugin: f.plugin.clone(),
                        message: f.message.clone(),
                    },
                );
            }
            if let Some(last) = fx.stage_moves.last() {
                let mut mv = last.clone();
                mv.from = c.stage.clone();
                moves.push((c.id.as_str(), mv));
            }
            let tag_changes =
                crate::pipeline::tags_changed(&c.id, &fx.tags_added, &fx.tags_removed, None);
            store::queue_changes(&mut writes, tenant, &tag_changes, now);
            for t in &fx.tags_added {
                store::queue_add_tag(&mut writes, tenant, &c.id, t);
            }
            for t in &fx.tags_removed {
                store::queue_remove_tag(&mut writes, tenant, &c.id, t);
            }
            for f in &fx.fields_set {
                store::queue_field(&mut writes, tenant, &c.id, f);
            }
            scores.extend(fx.scores.into_iter().map(|s| (c.id.clone(), s)));
            memberships.extend(fx.segments.into_iter().map(|(plugin, segments)| {
                store::SegmentSet {
                    customer: c.id.clone(),
                    plugin,
                    segments,
                }
            }));
        }
        let mut tx = self.store.begin().await?;
        let moved: Vec<(&str, &store::StageMove)> = moves.iter().map(|(id, m)| (*id, m)).collect();
        store::move_stages(tx.conn(), tenant, &moved, None, now).await?;
        let stage_changes: Vec<_> = moved
            .iter()
            .filter(|(_, mv)| mv.from.as_deref() != Some(mv.to.as_str()))
            .map(|(id, mv)| crate::pipeline::stage_changed(id, mv, None))
            .collect();
        store::queue_changes(&mut writes, tenant, &stage_changes, now);
        // Every plugin's writes in one batch: one round trip on SQLite.
        let previous = store::queue_scores(tx.conn(), &mut writes, tenant, &scores, None).await?;
        queue_band_changes(&mut writes, tenant, &scores, &previous, None, now);
        let changed =
            store::queue_memberships(tx.conn(), &mut writes, tenant, &memberships, now).await?;
        queue_segment_changes(&mut writes, tenant, &memberships, &changed, None, now);
        // Events whose plugins ran ahead of the writer on these customers'
        // old scores and segments must not keep those results.
        let ids_read: Vec<&str> = batch.iter().map(|(c, _)| c.id.as_str()).collect();
        store::queue_bump_revs(&mut writes, tenant, &ids_read);
        writes.run(tx.conn()).await?;
        let customers = ids;
        let failed = failures.len() as i64;
        let listed: Vec<&CustomerFailure> = failures.values().take(20).collect();
        let listed = (!listed.is_empty()).then(|| json!(listed));
        if !store::complete_chunk(tx.conn(), job, chunk.chunk, claim, listed.as_ref()).await? {
            // Another host took the chunk over (this one was presumed dead):
            // its writes stand, these are rolled back with the transaction.
            tracing::warn!(%job, chunk = chunk.chunk, "chunk taken over by another host; not stored twice");
            return Ok(0);
        }
        store::add_progress(tx.conn(), job, customers, self.clock.now()).await?;
        if failed > 0 {
            store::add_failed(tx.conn(), job, failed).await?;
        }
        if store::chunks_left(tx.conn(), job).await? == 0 {
            let (total, failed) = store::job(tx.conn(), tenant, job)
                .await?
                .map(|j| (j.total, j.failed))
                .unwrap_or((0, 0));
            let listed = store::chunk_failures(tx.conn(), job, LISTED_FAILURES).await?;
            let result = json!({ "customers": total, "failed": failed, "failures": listed });
            store::finish_job(tx.conn(), job, Ok(&result), self.clock.now()).await?;
        }
        tx.commit().await?;
        self.packs
            .metrics()
            .job_customers
            .with_label_values(&["rescore"])
            .inc_by(customers as u64);
        Ok(customers)
    }
}

/// A chunk read and evaluated, not yet stored.
struct RescoredChunk {
    chunk: store::Chunk,
    /// The chunk's customers when it was read (progress counts these).
    ids: i64,
    now: i64,
    batch: Vec<(CustomerRecord, Vec<EventRecord>)>,
    results: Vec<(Evaluated, Effects)>,
}

/// This process, as it signs the chunks it claims: host name and pid.
pub fn host_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}", std::process::id())
}

impl Jobs {
    /// Joins in any rescore with work left (started here or on another host, or
    /// left unfinished by a host that stopped). Runs until the task is aborted.
    pub fn help_with_jobs(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let me = host_id();
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let open = match this.store.conn().await {
                    Ok(mut conn) => store::open_chunked_jobs(&mut conn, "rescore").await,
                    Err(e) => Err(e),
                };
                match open {
                    Ok(jobs) => {
                        for (job, tenant) in jobs {
                            if let Err(e) = this.work_on_rescore(&tenant, &job, &me).await {
                                tracing::warn!("rescore job {job}: {e}");
                            }
                        }
                    }
                    Err(e) => tracing::debug!("looking for rescore work failed: {e}"),
                }
            }
        })
    }
}
