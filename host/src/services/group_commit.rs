//! Group commit: on SQLite, the events that arrive while one write transaction
//! runs are recorded together in the next.
//!
//! SQLite has one writer, and an event held it for ~600 µs, most of it the trips
//! between threads (`BEGIN`, the reads, the blocking pool for the plugins, the
//! writes, `COMMIT`), not the work (BENCHMARKS.md). A group pays those trips once:
//! one `BEGIN`, one read query, one hand-off to the plugins, one write batch and
//! one `COMMIT` for up to [`MAX_GROUP`] events. An event's reads and plugins
//! run before it joins the queue ([`crate::pipeline::evaluate_ahead`], on a
//! read connection), so the group holds the writer for one small query that
//! checks its customers' `rev`s, and for its writes, one multi-row statement per
//! table; an event whose customer changed in between is read again, and has its
//! plugins run again, inside the group.
//!
//! There is no committer thread. A request queues its event and waits for the
//! leader lock; whoever holds it takes a group from the front of the queue,
//! records it and answers every event in it before letting go. So an event
//! waits for the group before its own (or more, behind another event of its
//! customer), and a lone event is recorded at once, alone, as before. The group's transaction runs in a task of its own,
//! so a client that hangs up while leading does not cancel the others' events.
//!
//! A group holds at most one event per customer and per idempotency key (the
//! reads of one would not see the writes of another); the rest wait for the
//! next. If the group's transaction fails (a constraint, a full disk), nothing
//! of it is kept and its events are recorded again one by one, so one bad event
//! fails only its own request.

use super::events::Events;
use super::CrmError;
use crate::pipeline::{EventJob, EventOutcome};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The most events committed in one transaction.
pub const MAX_GROUP: usize = 64;

type Answer = Result<EventOutcome, CrmError>;

struct Pending {
    id: u64,
    job: EventJob,
    reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    next_id: u64,
    waiting: VecDeque<Pending>,
}

/// The queue of events waiting to be written, and the lock its leader holds.
#[derive(Default)]
pub struct GroupCommit {
    queue: Mutex<Queue>,
    leader: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

/// Takes a request's event out of the queue if it is dropped (the client hung
/// up) before a leader took it: it was never recorded, as before group commit.
struct Unqueue<'a> {
    group: &'a GroupCommit,
    id: u64,
}

impl Drop for Unqueue<'_> {
    fn drop(&mut self) {
        let mut q = self.group.queue.lock().expect("group commit queue");
        q.waiting.retain(|p| p.id != self.id);
    }
}

impl GroupCommit {
    /// Queues `job`; returns its place in the queue and where its answer comes.
    fn push(&self, job: EventJob) -> (u64, oneshot::Receiver<Answer>) {
        let (reply, answer) = oneshot::channel();
        let mut q = self.queue.lock().expect("group commit queue");
        q.next_id += 1;
        let id = q.next_id;
        q.waiting.push_back(Pending { id, job, reply });
        (id, answer)
    }

    /// The next group: from the front of the queue, at most one event per
    /// customer and per idempotency key, up to [`MAX_GROUP`]. The front event is
    /// always taken, so every event is reached.
    fn take(&self) -> Vec<Pending> {
        let mut q = self.queue.lock().expect("group commit queue");
        let mut customers = HashSet::new();
        let mut keys = HashSet::new();
        let mut group = Vec::new();
        let mut rest = VecDeque::with_capacity(q.waiting.len());
        for p in q.waiting.drain(..) {
            let j = &p.job;
            let customer = (j.tenant.clone(), j.customer_id.clone());
            let key = j
                .idempotency_key
                .as_ref()
                .map(|k| (j.tenant.clone(), k.clone()));
            let fits = group.len() < MAX_GROUP
                && !customers.contains(&customer)
                && key.as_ref().is_none_or(|k| !keys.contains(k));
            if fits {
                customers.insert(customer);
                keys.extend(key);
                group.push(p);
            } else {
                rest.push_back(p);
            }
        }
        q.waiting = rest;
        group
    }
}

impl Events {
    /// Records `job` in a group with the events that wait beside it (SQLite).
    pub(crate) async fn record_grouped(&self, g: &GroupCommit, job: EventJob) -> Answer {
        let (id, mut answer) = g.push(job);
        let _unqueue = Unqueue { group: g, id };
        loop {
            let lead = g.leader.clone().lock_owned().await;
            // Every group is answered before its leader lets go: if ours was
            // taken, the answer is here.
            match answer.try_recv() {
                Ok(a) => return a,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(CrmError::Internal(
                        "the group this event was in was abandoned".into(),
                    ))
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let group = g.take();
            let events = self.clone();
            tokio::spawn(async move {
                let _lead = lead;
                events.commit_group(group).await
            })
            .await
            .map_err(|e| CrmError::Internal(format!("group commit task: {e}")))?;
        }
    }

    /// Records a group in one transaction and answers each of its events; if
    /// the transaction fails, records them again one by one.
    async fn commit_group(&self, group: Vec<Pending>) {
        if group.len() > 1 {
            let jobs: Vec<EventJob> = group.iter().map(|p| p.job.clone()).collect();
            match self.record_together(&jobs).await {
                Ok(answers) => {
                    for (p, a) in group.into_iter().zip(answers) {
                        let _ = p.reply.send(a);
                    }
                    return;
                }
                Err(e) => tracing::warn!(
                    events = jobs.len(),
                    "a group of events failed together ({e}); recording them one by one"
                ),
            }
        }
        for p in group {
            let a = self.record_alone(p.job).await;
            let _ = p.reply.send(a);
        }
    }

    /// One transaction for all of `jobs`: each event's own answer, or the
    /// store's error if the transaction failed.
    async fn record_together(&self, jobs: &[EventJob]) -> Result<Vec<Answer>, CrmError> {
        let mut tx = self.store.begin().await?;
        let answers = crate::pipeline::record_events(&mut tx, jobs).await?;
        tx.commit().await?;
        Ok(answers
            .into_iter()
            .map(|a| a.map_err(CrmError::from))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packs::Packs;
    use crate::pipeline::EventInput;
    use crate::runtime::{Limits, Runtime};
    use crate::services::{Crm, CustomerInput};
    use crate::store::Store;

    async fn crm(dir: &tempfile::TempDir) -> Crm {
        let url = format!("sqlite:{}", dir.path().join("g.db").display());
        let store = Store::connect(&url).await.unwrap();
        let runtime = Runtime::new(Limits::default(), None).unwrap();
        let crm = Crm::new(store, Packs::new(runtime));
        let mut tx = crm.store().begin().await.unwrap();
        crate::store::ensure_tenant(tx.conn(), "t", "t")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        crm
    }

    fn job(crm: &Crm, customer: &str, kind: &str, key: Option<&str>) -> EventJob {
        let input = EventInput {
            kind: kind.into(),
            amount_cents: (kind == "order").then_some(500),
            ..Default::default()
        };
        let now = crate::domain::now_ms();
        let event = input.validate(now).unwrap();
        EventJob::new(crm.tenant_packs("t"), "t", customer, event, key, now)
    }

    fn queue(g: &GroupCommit, jobs: Vec<EventJob>) -> Vec<oneshot::Receiver<Answer>> {
        jobs.into_iter().map(|job| g.push(job).1).collect()
    }

    fn customers(group: &[Pending]) -> Vec<&str> {
        group.iter().map(|p| p.job.customer_id.as_str()).collect()
    }

    #[tokio::test]
    async fn a_group_takes_one_event_per_customer_and_key_from_the_front() {
        let dir = tempfile::tempdir().unwrap();
        let crm = crm(&dir).await;
        let g = GroupCommit::default();
        let _answers = queue(
            &g,
            vec![
                job(&crm, "a", "visit", None),
                job(&crm, "b", "visit", Some("k")),
                job(&crm, "a", "order", None),
                job(&crm, "c", "visit", Some("k")),
                job(&crm, "d", "visit", None),
            ],
        );
        assert_eq!(customers(&g.take()), ["a", "b", "d"]);
        // What was passed over keeps its order, and goes next.
        assert_eq!(customers(&g.take()), ["a", "c"]);
        assert!(g.take().is_empty());

        let many = (0..MAX_GROUP + 3)
            .map(|i| job(&crm, &format!("c{i}"), "visit", None))
            .collect();
        let _answers = queue(&g, many);
        assert_eq!(g.take().len(), MAX_GROUP);
        assert_eq!(customers(&g.take()), ["c64", "c65", "c66"]);
    }

    /// A group whose transaction fails is recorded again event by event: the
    /// event that broke it fails alone, and the others are kept. A trigger
    /// refuses one event's insert, as a constraint or a full disk would.
    #[tokio::test]
    async fn a_failed_group_is_recorded_again_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let crm = crm(&dir).await;
        for id in ["a", "b", "c", "d"] {
            let input = CustomerInput {
                id: Some(id.into()),
                ..Default::default()
            };
            crm.customers().create_customer("t", input).await.unwrap();
        }
        let mut conn = crm.store().conn().await.unwrap();
        sqlx::query(
            "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.kind = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'poisoned event'); END",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
        drop(conn);

        let g = GroupCommit::default();
        let answers = queue(
            &g,
            vec![
                job(&crm, "a", "order", None),
                job(&crm, "b", "poison", None),
                job(&crm, "c", "visit", Some("kc")),
                job(&crm, "d", "order", None),
            ],
        );
        let group = g.take();
        assert_eq!(group.len(), 4, "one group of all four");
        crm.events().commit_group(group).await;
        let mut results = Vec::new();
        for a in answers {
            results.push(a.await.unwrap());
        }
        let failed: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].contains("poisoned event"), "{failed:?}");
        assert!(results[1].is_err());

        let mut conn = crm.store().conn().await.unwrap();
        let kept: Vec<String> =
            sqlx::query_scalar("SELECT customer_id FROM events ORDER BY customer_id")
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        assert_eq!(kept, ["a", "c", "d"]);
        let orders: Vec<i64> = sqlx::query_scalar("SELECT orders FROM customers ORDER BY id")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        assert_eq!(orders, [1, 0, 0, 1], "b's metrics were not written");
    }

    /// Events of one group are answered as if each were alone: an unknown
    /// customer and a replayed key are their own answers, not the group's.
    #[tokio::test]
    async fn each_event_of_a_group_gets_its_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let crm = crm(&dir).await;
        for id in ["a", "b"] {
            let input = CustomerInput {
                id: Some(id.into()),
                ..Default::default()
            };
            crm.customers().create_customer("t", input).await.unwrap();
        }
        let first = crm
            .events()
            .record_alone(job(&crm, "a", "order", Some("k1")))
            .await
            .unwrap();
        let g = GroupCommit::default();
        let answers = queue(
            &g,
            vec![
                job(&crm, "a", "order", Some("k1")),
                job(&crm, "nobody", "visit", None),
                job(&crm, "b", "order", Some("k2")),
            ],
        );
        crm.events().commit_group(g.take()).await;
        let mut results = Vec::new();
        for a in answers {
            results.push(a.await.unwrap());
        }
        let replay = results[0].as_ref().unwrap();
        assert!(replay.replayed);
        assert_eq!(replay.event_id, first.event_id);
        assert!(matches!(
            &results[1],
            Err(CrmError::Pipeline(crate::pipeline::PipelineError::UnknownCustomer(c))) if c == "nobody"
        ));
        let b = results[2].as_ref().unwrap();
        assert!(!b.replayed);
        let mut conn = crm.store().conn().await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(n, 2, "a's first order and b's");
    }
}
