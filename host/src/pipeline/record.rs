//! Events recorded in a transaction the caller owns: reads (ahead of the
//! writer when they can be), the evaluation, the writes.

use super::*;

/// One event to record, with everything its pipeline needs: what
/// [`record_events`] takes, owned so a group of them can wait in a queue.
#[derive(Clone)]
pub struct EventJob {
    /// The tenant's plugins as they were when the request arrived.
    pub packs: Arc<TenantPacks>,
    pub tenant: String,
    pub customer_id: String,
    pub event: EventRecord,
    pub idempotency_key: Option<String>,
    /// The time the plugins are told.
    pub now: i64,
    /// The request's span: the plugins' log lines carry its request id, even
    /// when another request's task runs them in a group.
    pub span: tracing::Span,
    /// The plugins' results from before the write transaction
    /// ([`evaluate_ahead`]), used if what they read is still there.
    pub ahead: Option<Arc<Ahead>>,
}

impl EventJob {
    /// A job for `event`, in the current request's span, not evaluated ahead.
    pub fn new(
        packs: Arc<TenantPacks>,
        tenant: &str,
        customer_id: &str,
        event: EventRecord,
        idempotency_key: Option<&str>,
        now: i64,
    ) -> EventJob {
        EventJob {
            packs,
            tenant: tenant.to_string(),
            customer_id: customer_id.to_string(),
            event,
            idempotency_key: idempotency_key.map(str::to_string),
            now,
            span: tracing::Span::current(),
            ahead: None,
        }
    }

    /// What the job reads before its plugins run (see [`store::group_event_reads`]).
    fn read(&self) -> store::EventRead<'_> {
        store::EventRead {
            tenant: &self.tenant,
            customer: &self.customer_id,
            key: self.idempotency_key.as_deref(),
            at: self.event.at,
            now: self.now,
        }
    }
}

/// The plugins' results for an event, computed before its write transaction,
/// with the reads they rest on.
pub struct Ahead {
    reads: store::EventReads,
    outputs: Vec<PluginOutput>,
    failures: Vec<FailureReport>,
}

/// Reads what an event needs and runs its plugins before its write
/// transaction, on what a read connection sees, so that SQLite's one writer is
/// held for neither. Under the writer, [`record_events`] keeps these reads and
/// results only if the customer's `rev` is still the one read and no event took
/// the idempotency key meanwhile, so nothing written rests on data another
/// writer (another event for the customer, an edit, a rescore, another process)
/// changed; otherwise it reads again and the plugins run again, and their calls
/// are counted twice in the metrics. `None` when there is nothing to gain
/// (reads and writes on one connection; PostgreSQL, whose writers run side by
/// side) or the event goes another way (a replay, an unknown customer, an
/// error: the transaction meets and reports it).
pub async fn evaluate_ahead(store: &Store, job: &EventJob) -> Option<Ahead> {
    if !store.reads_apart_from_writer() || store.backend() != Backend::Sqlite {
        return None;
    }
    let reads = {
        let mut conn = store.short_read_conn().await.ok()?;
        store::event_reads(&mut conn, store.backend(), job.read(), RECENT_EVENTS - 1)
            .await
            .ok()?
    };
    let Ok(Prepared::Ready(inputs)) = prepare(job, reads.clone()) else {
        return None;
    };
    if job.packs.packs.is_empty() {
        // Nothing to run; the reads alone are kept off the writer.
        return Some(Ahead {
            reads,
            outputs: Vec::new(),
            failures: Vec::new(),
        });
    }
    let job = job.clone();
    let (outputs, failures) = crate::spawn_blocking(move || {
        let ctx = CallContext {
            now: job.now,
            tenant: job.tenant.clone(),
        };
        evaluate(
            &job.packs,
            &ctx,
            inputs.customer,
            &inputs.recent,
            inputs.open_follow_ups,
            Trigger::Event(Some(&job.event)),
        )
    })
    .await
    .ok()?;
    Some(Ahead {
        reads,
        outputs,
        failures,
    })
}

/// What the plugins see of one event: the customer with the event counted, and
/// the recent events.
pub(super) struct Inputs {
    /// The customer as the plugins see it (metrics with the event, 90-day touchpoints).
    pub(super) customer: CustomerRecord,
    /// The metrics to store: as above, without the touchpoints (they are counted, not kept).
    pub(super) stored_metrics: Metrics,
    pub(super) recent: Vec<EventRecord>,
    /// Follow-ups of the customer not yet done.
    pub(super) open_follow_ups: u32,
    /// What the event's writes go over: the stored scores and segments.
    pub(super) scores_before: store::ScoresBefore,
    pub(super) segments_before: store::SegmentsBefore,
}

/// The first step of an event: the stored answer for a replayed idempotency key,
/// or what the plugins are to see.
pub(super) enum Prepared {
    Replayed(EventOutcome),
    Ready(Inputs),
}

/// Turns what was read for `job` ([`store::group_event_reads`]) into the
/// answer already given under its idempotency key, or the plugins' inputs.
pub(super) fn prepare(job: &EventJob, reads: store::EventReads) -> Result<Prepared, PipelineError> {
    let event = &job.event;
    if let (Some((owner, outcome)), Some(key)) = (reads.replay, &job.idempotency_key) {
        if owner != job.customer_id {
            return Err(PipelineError::KeyReused(key.clone(), owner));
        }
        let mut o: EventOutcome =
            serde_json::from_value(outcome).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        o.replayed = true;
        return Ok(Prepared::Replayed(o));
    }
    let mut customer = reads
        .customer
        .ok_or_else(|| PipelineError::UnknownCustomer(job.customer_id.clone()))?;
    let new_day = event.kind == "order" && !reads.ordered_that_day;
    apply_event(
        &mut customer.metrics,
        &event.kind,
        event.at,
        event.amount_cents,
        new_day,
    );
    let stored_metrics = customer.metrics;
    // The snapshot counts the new event among the recent touchpoints.
    let now = job.now;
    let in_window = event.at > now - 90 * stagecraft_plugin::snapshot::DAY_MS && event.at <= now;
    customer.metrics.touchpoints_90d = reads.touchpoints_90d + in_window as u32;
    let mut recent = vec![event.clone()];
    recent.extend(reads.recent);
    recent.sort_by_key(|e| std::cmp::Reverse(e.at));
    Ok(Prepared::Ready(Inputs {
        customer,
        stored_metrics,
        recent,
        open_follow_ups: reads.open_follow_ups,
        scores_before: reads.scores,
        segments_before: reads.segments,
    }))
}

/// Records one event with everything it causes, inside `tx`: [`record_events`]
/// for one. The caller commits.
pub async fn record_one(tx: &mut Tx, job: &EventJob) -> Result<EventOutcome, PipelineError> {
    record_events(tx, std::slice::from_ref(job))
        .await?
        .pop()
        .expect("one outcome per event")
}

/// Records several events of different customers inside `tx`, with one read
/// query, one hand-off to the plugins and one write batch for them all. The
/// caller commits. Each event has its own answer: one for an unknown customer or
/// a reused key does not stop the others. An error of the store is the whole
/// call's, and leaves `tx` to be rolled back.
pub async fn record_events(
    tx: &mut Tx,
    jobs: &[EventJob],
) -> Result<Vec<Result<EventOutcome, PipelineError>>, StoreError> {
    let (reads, ahead_kept) = reads_under_writer(tx, jobs).await?;
    let mut answers: Vec<Result<EventOutcome, PipelineError>> = Vec::with_capacity(jobs.len());
    let mut ready = Vec::new();
    let mut evaluated: BTreeMap<usize, Evaluated> = BTreeMap::new();
    for (i, ((job, reads), kept)) in jobs.iter().zip(reads).zip(ahead_kept).enumerate() {
        let ahead = job.ahead.as_ref().filter(|_| kept);
        match prepare(job, reads) {
            Ok(Prepared::Replayed(o)) => answers.push(Ok(o)),
            Ok(Prepared::Ready(inputs)) => {
                if let Some(a) = ahead {
                    evaluated.insert(i, (a.outputs.clone(), a.failures.clone()));
                }
                // A placeholder until the writes are queued.
                answers.push(Ok(EventOutcome::default()));
                ready.push((i, inputs));
            }
            Err(e) => answers.push(Err(e)),
        }
    }
    // Every plugin of every event in one trip to the blocking pool.
    let work: Vec<_> = ready
        .iter()
        .filter(|(i, _)| !jobs[*i].packs.packs.is_empty() && !evaluated.contains_key(i))
        .map(|(i, inputs)| {
            (
                *i,
                jobs[*i].clone(),
                inputs.customer.clone(),
                inputs.recent.clone(),
                inputs.open_follow_ups,
            )
        })
        .collect();
    if !work.is_empty() {
        let done: Vec<(usize, Evaluated)> = crate::spawn_blocking(move || {
            work.into_iter()
                .map(|(i, job, customer, recent, open_follow_ups)| {
                    let ctx = CallContext {
                        now: job.now,
                        tenant: job.tenant.clone(),
                    };
                    let _in_request = job.span.enter();
                    let evaluated = evaluate(
                        &job.packs,
                        &ctx,
                        customer,
                        &recent,
                        open_follow_ups,
                        Trigger::Event(Some(&job.event)),
                    );
                    (i, evaluated)
                })
                .collect()
        })
        .await
        .expect("plugin evaluation task");
        evaluated.extend(done);
    }
    // Every write of every event in one batch, sent at the end: on SQLite one
    // round trip instead of one per statement, while the writer is held.
    let mut writes = store::Batch::new();
    for (i, inputs) in ready {
        let (outputs, failures) = evaluated.remove(&i).unwrap_or_default();
        answers[i] = Ok(queue_writes(
            &mut writes,
            &jobs[i],
            inputs,
            outputs,
            failures,
        ));
    }
    writes.run(tx.conn()).await?;
    for (job, answer) in jobs.iter().zip(&answers) {
        if matches!(answer, Ok(o) if !o.replayed) {
            job.packs.metrics.events.inc();
        }
    }
    Ok(answers)
}

/// What each event reads, under the writer: the reads taken ahead where its
/// customer's `rev` and its key show nothing changed since (one small query for
/// the group), and a fresh read of the rest (one query). Says which events keep
/// what was read, and computed, ahead.
pub(super) async fn reads_under_writer(
    tx: &mut Tx,
    jobs: &[EventJob],
) -> Result<(Vec<store::EventReads>, Vec<bool>), StoreError> {
    // (job, what it read ahead and the customer's rev then)
    let (ahead_of, reads_ahead): (Vec<usize>, Vec<(store::EventRead, i64)>) = jobs
        .iter()
        .enumerate()
        .filter_map(|(i, j)| Some((i, (j.read(), j.ahead.as_ref()?.reads.rev?))))
        .unzip();
    let same = store::still_as_read(tx.conn(), &reads_ahead).await?;
    let mut kept = vec![false; jobs.len()];
    for (i, same) in ahead_of.into_iter().zip(same) {
        kept[i] = same;
    }
    let backend = tx.backend();
    let read_now: Vec<store::EventRead> = (0..jobs.len())
        .filter(|i| !kept[*i])
        .map(|i| jobs[i].read())
        .collect();
    let mut fresh = if read_now.is_empty() {
        Vec::new()
    } else {
        store::group_event_reads(tx.conn(), backend, &read_now, RECENT_EVENTS - 1).await?
    }
    .into_iter();
    let mut reads = Vec::with_capacity(jobs.len());
    for (j, kept) in jobs.iter().zip(&kept) {
        match (kept, &j.ahead) {
            (true, Some(a)) => reads.push(a.reads.clone()),
            _ => reads.push(fresh.next().expect("one read per event not kept")),
        }
    }
    // A writer that changed a customer without bumping its `rev` would let an
    // event keep results computed on what is gone: the tests (debug builds with
    // `test-support`) read everything again and compare. Never in a release
    // build, the benches' included (they enable `test-support` as dev-dependents).
    #[cfg(all(feature = "test-support", debug_assertions))]
    if kept.contains(&true) {
        let all: Vec<store::EventRead> = jobs.iter().map(EventJob::read).collect();
        let again = store::group_event_reads(tx.conn(), backend, &all, RECENT_EVENTS - 1).await?;
        for ((r, a), j) in reads.iter().zip(&again).zip(jobs) {
            assert_eq!(
                r, a,
                "customer {}: changed after its reads ahead, with its rev unchanged",
                j.customer_id
            );
        }
    }
    Ok((reads, kept))
}
