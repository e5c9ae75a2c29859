//! Wakes: the timers plugins set (`wake-at`, contract 0.2.0), fired by every
//! host through the one evaluation path.
//!
//! A host's worker ([`Wakes::run`]) looks for due wakes at least every
//! [`POLL`] and whenever the clock is moved by hand, claims up to [`CHUNK`] of
//! them with a lease (renewed by a heartbeat while it works), evaluates their
//! customers — the asking plugin's `on-wake`, then every enabled plugin scores
//! and segments, as after an event — and writes what they caused in one
//! transaction that also deletes the wakes it still holds and logs each as
//! fired (the customer's timeline shows it). So a wake fires once: a host that
//! dies holding a lease leaves its wakes to whoever claims them when the lease
//! runs out, and a wake replaced while it was worked on (an event moved it) is
//! not fired.
//!
//! The `now` plugins are told is the time the wake was due, whenever a host got
//! to it: the answer is the same on every host, and a wake due while every host
//! was down fires on start as it would have then.

use super::jobs::host_id;
use super::CrmError;
use crate::domain::time::Clock;
use crate::domain::{CustomerRecord, EventRecord};
use crate::packs::Packs;
use crate::pipeline::{
    queue_band_changes, queue_effects, queue_failures, queue_segment_changes, reevaluate,
    EventOutcome, Strikes, RECENT_EVENTS,
};
use crate::runtime::CallContext;
use crate::store::{self, DueWake, Store};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// How often an idle host looks for due wakes: a wake fires within this (and
/// the time its chunk takes) of being due.
pub const POLL: Duration = Duration::from_millis(250);
/// The most wakes one claim takes: a burst is worked in chunks this size, each
/// its own transaction, so requests get the writer between them.
pub const CHUNK: i64 = 500;
/// How long a claim lasts without its heartbeat.
pub const LEASE: Duration = Duration::from_secs(30);
/// The soonest a plugin woken at `t` can be woken again: `t` + one minute.
pub const MIN_REWAKE_MS: i64 = 60_000;

/// Fires due wakes.
#[derive(Clone, Debug)]
pub struct Wakes {
    store: Store,
    packs: Packs,
    clock: Clock,
    lease: Duration,
}

impl Wakes {
    pub(crate) fn new(store: Store, packs: Packs, clock: Clock) -> Wakes {
        Wakes {
            store,
            packs,
            clock,
            lease: LEASE,
        }
    }

    pub(crate) fn set_lease(&mut self, lease: Duration) {
        self.lease = lease;
    }

    /// This host's worker: fires wakes as they fall due until the task is
    /// aborted.
    pub fn run(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let me = host_id();
            loop {
                let moved = this.clock.moved();
                if let Err(e) = this.fire_due(&me).await {
                    tracing::warn!("firing due wakes: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = moved => {}
                }
            }
        })
    }

    /// Fires every wake due now, chunk after chunk, until none is left that no
    /// live lease holds; returns how many this call fired. `host` names this
    /// process in the log of fired wakes.
    ///
    /// Two chunks are in hand at once: the next is claimed and evaluated (the
    /// plugins, on a blocking thread) while the last one's results are written
    /// (the writer), so a burst keeps both cores busy. A customer the write
    /// changed after the next chunk read it is caught by its `rev` and woken
    /// again in a later chunk, on what was written.
    pub async fn fire_due(&self, host: &str) -> Result<usize, CrmError> {
        let mut fired = 0;
        let mut ready: Option<Chunk> = None;
        let events = &self.packs.metrics().events;
        let mut events_seen = events.get();
        let mut held = Duration::ZERO;
        loop {
            // A burst gives way to live traffic: while events are being
            // stored, the writer is left free at least as long as the last
            // chunk's write held it, so events wait at most about one chunk.
            let events_now = events.get();
            if events_now != events_seen {
                events_seen = events_now;
                tokio::time::sleep(held).await;
            }
            let next = match self.claim_chunk(host).await {
                Ok(next) => next,
                Err(e) => {
                    if let Some(c) = ready {
                        self.let_go(c).await;
                    }
                    return Err(e);
                }
            };
            if next.is_none() && ready.is_none() {
                return Ok(fired);
            }
            let evaluating = async {
                match next {
                    Some(c) => Some(self.evaluate_chunk(c).await),
                    None => None,
                }
            };
            let writing = async {
                match ready.take() {
                    Some(c) => {
                        let started = std::time::Instant::now();
                        let written = self.write_chunk(host, c).await;
                        held = started.elapsed();
                        Some(written)
                    }
                    None => None,
                }
            };
            let (evaluated, written) = tokio::join!(evaluating, writing);
            let evaluated = evaluated.transpose();
            let written = written.transpose();
            match (evaluated, written) {
                (Ok(next), Ok(n)) => {
                    fired += n.unwrap_or(0);
                    ready = next;
                }
                (Ok(Some(next)), Err(e)) => {
                    self.let_go(next).await;
                    return Err(e);
                }
                (Ok(None), Err(e)) | (Err(e), _) => return Err(e),
            }
            // Requests get the writer (SQLite) and the cores between chunks.
            tokio::task::yield_now().await;
        }
    }

    /// Claims the next chunk and starts its heartbeat; `None` when nothing is due.
    async fn claim_chunk(&self, host: &str) -> Result<Option<Chunk>, CrmError> {
        let claim = format!("{host}/{}", uuid::Uuid::now_v7().simple());
        let claimed = self.claim(&claim).await?;
        if claimed.is_empty() {
            return Ok(None);
        }
        let heartbeat = self.heartbeat(claim.clone());
        Ok(Some(Chunk {
            claim,
            heartbeat,
            woken: claimed
                .into_iter()
                .map(|wake| Woken {
                    wake,
                    rev: None,
                    result: None,
                })
                .collect(),
        }))
    }

    /// Evaluates a claimed chunk; on failure lets go of its claim.
    async fn evaluate_chunk(&self, mut chunk: Chunk) -> Result<Chunk, CrmError> {
        // Customers of one tenant woken at one time are evaluated together (a
        // burst due at midnight is one group per tenant).
        let mut groups: BTreeMap<(String, i64), Vec<DueWake>> = BTreeMap::new();
        for w in std::mem::take(&mut chunk.woken) {
            groups
                .entry((w.wake.tenant_id.clone(), w.wake.due_at))
                .or_default()
                .push(w.wake);
        }
        for ((tenant, due), wakes) in groups {
            match self.evaluate(&tenant, due, wakes).await {
                Ok(woken) => chunk.woken.extend(woken),
                Err(e) => {
                    self.let_go(chunk).await;
                    return Err(e);
                }
            }
        }
        Ok(chunk)
    }

    /// Writes an evaluated chunk; on failure lets go of its claim (nothing of
    /// it was written: its transaction rolled back), so its wakes are due again
    /// now rather than after the lease.
    async fn write_chunk(&self, host: &str, mut chunk: Chunk) -> Result<usize, CrmError> {
        let woken = std::mem::take(&mut chunk.woken);
        let written = self.write(&chunk.claim, host, woken).await;
        if written.is_err() {
            self.let_go(chunk).await;
        } else {
            chunk.heartbeat.abort();
        }
        written
    }

    /// Stops a chunk's heartbeat and releases what its claim still holds.
    async fn let_go(&self, chunk: Chunk) {
        chunk.heartbeat.abort();
        if let Ok(mut conn) = self.store.conn().await {
            let _ = store::release_claim(&mut conn, &chunk.claim).await;
        }
    }

    /// Claims due wakes, at most one per customer (a customer's next wake is
    /// worked in the next chunk, on what this one wrote).
    async fn claim(&self, claim: &str) -> Result<Vec<DueWake>, CrmError> {
        let now = self.clock.now();
        let until = now + self.lease.as_millis() as i64;
        let mut tx = self.store.begin().await?;
        let backend = tx.backend();
        let claimed = store::claim_wakes(tx.conn(), backend, claim, now, until, CHUNK).await?;
        let mut seen = HashSet::new();
        let mut kept = Vec::with_capacity(claimed.len());
        for w in claimed {
            if seen.insert((w.tenant_id.clone(), w.customer_id.clone())) {
                kept.push(w);
            } else {
                store::release_wake(tx.conn(), claim, &w).await?;
            }
        }
        tx.commit().await?;
        Ok(kept)
    }

    /// Renews a claim every quarter of its lease while it is worked on.
    fn heartbeat(&self, claim: String) -> tokio::task::JoinHandle<()> {
        let (store, clock, lease) = (self.store.clone(), self.clock.clone(), self.lease);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 4).await;
                let until = clock.now() + lease.as_millis() as i64;
                let renewed = match store.conn().await {
                    Ok(mut conn) => store::renew_wakes(&mut conn, &claim, until).await,
                    Err(e) => Err(e),
                };
                match renewed {
                    Ok(0) => return tracing::warn!(%claim, "the wakes' claim was lost"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%claim, "could not renew the wakes' claim: {e}"),
                }
            }
        })
    }

    /// Writes what the evaluated wakes caused in one transaction with the
    /// wakes taken; returns how many fired.
    async fn write(&self, claim: &str, host: &str, woken: Vec<Woken>) -> Result<usize, CrmError> {
        let fired_at = self.clock.now();
        let mut tx = self.store.begin().await?;
        // The customers first, as an event locks them (its customer, then its
        // wakes): taking the wakes first would deadlock with an event
        // replacing one. The new `rev` also tells events whose plugins ran
        // ahead on these customers not to keep what they computed; and where
        // the `rev` is not the one read before the evaluation, what was
        // computed is stale: that wake is let go, to fire in a later chunk.
        let mut read: BTreeMap<&str, Vec<(&str, i64)>> = BTreeMap::new();
        for w in &woken {
            if let Some(rev) = w.rev {
                read.entry(&w.wake.tenant_id)
                    .or_default()
                    .push((&w.wake.customer_id, rev));
            }
        }
        let mut current: HashSet<(String, String)> = HashSet::new();
        for (tenant, revs) in read {
            for id in store::bump_revs_if_unchanged(tx.conn(), tenant, &revs).await? {
                current.insert((tenant.to_string(), id));
            }
        }
        let (woken, stale): (Vec<Woken>, Vec<Woken>) = woken.into_iter().partition(|w| {
            // A customer gone is fired with nothing to write.
            w.result.is_none()
                || current.contains(&(w.wake.tenant_id.clone(), w.wake.customer_id.clone()))
        });
        for w in &stale {
            store::release_wake(tx.conn(), claim, &w.wake).await?;
        }
        // Only what the claim still holds fires: a wake replaced or taken over
        // meanwhile is not.
        let held: HashSet<DueWake> = store::take_wakes(tx.conn(), claim)
            .await?
            .into_iter()
            .collect();
        let mut writes = store::Batch::new();
        let mut scores = Vec::new();
        let mut memberships = Vec::new();
        let mut written: Vec<(String, String)> = Vec::new();
        let mut fired = 0;
        for w in woken.into_iter().filter(|w| held.contains(&w.wake)) {
            let DueWake {
                tenant_id: tenant,
                customer_id: id,
                due_at: now,
                ..
            } = &w.wake;
            store::queue_wake_fired(&mut writes, &w.wake, fired_at, host);
            fired += 1;
            let Some((mut fx, failures)) = w.result else {
                continue; // the customer is gone
            };
            // A plugin that asks, when woken, to be woken again at once would
            // keep a host busy with one customer: the next wake is at least
            // MIN_REWAKE after this one.
            for n in &mut fx.wakes {
                if n.plugin == w.wake.plugin {
                    n.due_at = n.due_at.map(|d| d.max(now + MIN_REWAKE_MS));
                }
            }
            // Its wake is taken already: cancelling it again is a statement
            // per customer for nothing.
            fx.wakes
                .retain(|n| !(n.plugin == w.wake.plugin && n.due_at.is_none()));
            let mut outcome = EventOutcome::default();
            queue_effects(&mut writes, tenant, id, &mut fx, None, *now, &mut outcome);
            queue_failures(&mut writes, tenant, id, &failures, None, *now);
            scores.extend(
                fx.scores
                    .into_iter()
                    .map(|s| (tenant.clone(), id.clone(), s)),
            );
            memberships.extend(fx.segments.into_iter().map(|(plugin, segments)| {
                (
                    tenant.clone(),
                    *now,
                    store::SegmentSet {
                        customer: id.clone(),
                        plugin,
                        segments,
                    },
                )
            }));
            written.push((tenant.clone(), id.clone()));
        }
        // Scores and segments over what is stored, one tenant at a time.
        let tenants: std::collections::BTreeSet<&String> = written.iter().map(|(t, _)| t).collect();
        for tenant in tenants {
            let s: Vec<(String, store::StoredScore)> = scores
                .iter()
                .filter(|(t, _, _)| t == tenant)
                .map(|(_, id, s)| (id.clone(), s.clone()))
                .collect();
            let previous = store::queue_scores(tx.conn(), &mut writes, tenant, &s, None).await?;
            queue_band_changes(&mut writes, tenant, &s, &previous, None, fired_at);
            // Memberships carry the time they were set: one call per due time.
            let mut by_time: BTreeMap<i64, Vec<store::SegmentSet>> = BTreeMap::new();
            for (_, at, m) in memberships.iter().filter(|(t, _, _)| t == tenant) {
                by_time.entry(*at).or_default().push(m.clone());
            }
            for (at, sets) in by_time {
                let changed =
                    store::queue_memberships(tx.conn(), &mut writes, tenant, &sets, at).await?;
                queue_segment_changes(&mut writes, tenant, &sets, &changed, None, at);
            }
        }
        writes.run(tx.conn()).await?;
        tx.commit().await?;
        self.packs.metrics().wakes_fired.inc_by(fired as u64);
        Ok(fired)
    }

    /// Runs the tenant's plugins on the customers of wakes due at `due`, each
    /// woken by its plugin. Writes nothing.
    async fn evaluate(
        &self,
        tenant: &str,
        due: i64,
        wakes: Vec<DueWake>,
    ) -> Result<Vec<Woken>, CrmError> {
        let ids: Vec<String> = wakes.iter().map(|w| w.customer_id.clone()).collect();
        // The revs first: a change between them and the load shows as a
        // different rev at the write, and that customer is done again.
        let (mut revs, batch): (_, Vec<(CustomerRecord, Vec<EventRecord>)>) = {
            let mut conn = self.store.conn().await?;
            let revs = store::customer_revs(&mut conn, tenant, &ids).await?;
            let batch = store::load_customers(&mut conn, tenant, &ids, due, RECENT_EVENTS).await?;
            (revs, batch)
        };
        let by_plugin: BTreeMap<&str, &str> = wakes
            .iter()
            .map(|w| (w.customer_id.as_str(), w.plugin.as_str()))
            .collect();
        let woken_by: Vec<String> = batch
            .iter()
            .map(|(c, _)| by_plugin[c.id.as_str()].to_string())
            .collect();
        let packs = self.packs.for_tenant(tenant);
        let ctx = CallContext {
            now: due,
            tenant: tenant.to_string(),
        };
        let results = crate::spawn_blocking(move || {
            reevaluate(&packs, &ctx, &batch, Some(&woken_by), &Strikes::default())
                .into_iter()
                .zip(batch)
                .map(|(((_, failures), fx), (c, _))| (c.id, (fx, failures)))
                .collect::<BTreeMap<_, _>>()
        })
        .await
        .map_err(|e| CrmError::Internal(format!("wake evaluation task: {e}")))?;
        let mut results = results;
        Ok(wakes
            .into_iter()
            .map(|w| {
                let result = results.remove(&w.customer_id);
                Woken {
                    rev: result.as_ref().and(revs.remove(&w.customer_id)),
                    result,
                    wake: w,
                }
            })
            .collect())
    }
}

/// Claimed wakes on their way: claimed, then evaluated, then written.
struct Chunk {
    claim: String,
    heartbeat: tokio::task::JoinHandle<()>,
    woken: Vec<Woken>,
}

/// A wake and what its evaluation gave: the customer's `rev` read before it,
/// the effects and the plugins' failures, or `None` if the customer no longer
/// exists.
struct Woken {
    wake: DueWake,
    rev: Option<i64>,
    result: Option<(
        crate::pipeline::Effects,
        Vec<crate::pipeline::FailureReport>,
    )>,
}
