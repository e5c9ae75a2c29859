//! The one evaluation path: the tenant's plugins run on a customer, each in
//! order, seeing what the earlier ones did; used by live events, dry-runs and
//! rescores alike.

use super::*;

/// What a plugin is asked to react to before it scores and segments.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Trigger<'a> {
    /// An event: a new one (live), or the customer's latest (a rescore, a
    /// dry-run; `None` when it has none). Every plugin's `on-event` runs.
    Event(Option<&'a EventRecord>),
    /// The due wake of the plugin named (contract 0.2.0): its `on-wake` runs,
    /// the other plugins only score and segment.
    Wake(&'a str),
}

/// Renders a reason in English for storage; the API can re-render on request.
pub(crate) fn render(pack: &ActivePack, r: &Reason) -> RenderedReason {
    RenderedReason {
        code: r.code.clone(),
        points: r.points,
        args: r.args.clone(),
        text: pack.plugin.manifest().render(r, Lang::En),
    }
}

pub(super) fn failure_kind(e: &RuntimeError) -> &'static str {
    match e {
        RuntimeError::Trap { .. } => "trap",
        RuntimeError::Deadline { .. } => "deadline",
        RuntimeError::MemoryLimit { .. } => "memory",
        RuntimeError::BadOutput { .. } => "bad_output",
        RuntimeError::Plugin { .. } => "plugin_error",
        RuntimeError::Busy(_) => "busy",
        _ => "runtime",
    }
}

/// Runs one plugin over the customer (as updated by the plugins before it) and
/// the event. Blocking: call from a blocking thread.
pub(super) fn run_plugin(
    pack: &ActivePack,
    ctx: &CallContext,
    customer: &CustomerRecord,
    recent: &[EventRecord],
    open_follow_ups: u32,
    trigger: Trigger<'_>,
) -> Result<PluginOutput, FailureReport> {
    // A live event always gets a fresh instance.
    let mut session = pack
        .plugin
        .session(ctx, pack.rules.as_deref())
        .map_err(|e| from_runtime(pack, e))?;
    session.withhold(domain::granted_secrets(customer, &pack.granted_fields));
    run_in_session(
        pack,
        ctx,
        customer,
        recent,
        open_follow_ups,
        trigger,
        &mut session,
    )
}

pub(super) fn run_in_session(
    pack: &ActivePack,
    ctx: &CallContext,
    customer: &CustomerRecord,
    recent: &[EventRecord],
    open_follow_ups: u32,
    trigger: Trigger<'_>,
    session: &mut Session<'_>,
) -> Result<PluginOutput, FailureReport> {
    let (actions, after) = react(
        pack,
        ctx,
        customer,
        recent,
        open_follow_ups,
        trigger,
        session,
    )?;
    let (score, segments) = judge(pack, ctx, &[(&after, recent)], session)?
        .pop()
        .expect("one judgement per customer")?;
    Ok(output(pack, actions, score, segments))
}

fn output(
    pack: &ActivePack,
    actions: Vec<Action>,
    score: Option<StoredScore>,
    segments: Option<Vec<(String, RenderedReason)>>,
) -> PluginOutput {
    let m = pack.plugin.manifest();
    PluginOutput {
        pack: pack.clone(),
        name: m.name.clone(),
        version: m.version.clone(),
        owns_lifecycle: pack.owns_lifecycle,
        actions,
        score,
        segments,
    }
}

/// Counts a plugin's call for one customer in `/metrics`: its time and outcome.
fn observe(packs: &TenantPacks, pack: &ActivePack, seconds: f64, outcome: &str) {
    let labels = [pack.name(), pack.version.as_str()];
    packs
        .metrics
        .plugin_seconds
        .with_label_values(&labels)
        .observe(seconds);
    packs
        .metrics
        .plugin_calls
        .with_label_values(&[labels[0], labels[1], outcome])
        .inc();
}

fn failure(pack: &ActivePack, kind: &str, message: String) -> FailureReport {
    let m = pack.plugin.manifest();
    FailureReport {
        plugin: m.name.clone(),
        version: m.version.clone(),
        kind: kind.to_string(),
        message,
    }
}

fn from_runtime(pack: &ActivePack, e: RuntimeError) -> FailureReport {
    failure(pack, failure_kind(&e), e.to_string())
}

/// A plugin's reaction to the event (if any): its actions, checked, and the
/// customer as they leave it, which is what it then scores and segments.
fn react(
    pack: &ActivePack,
    ctx: &CallContext,
    customer: &CustomerRecord,
    recent: &[EventRecord],
    open_follow_ups: u32,
    trigger: Trigger<'_>,
    session: &mut Session<'_>,
) -> Reaction {
    let fail = |kind: &str, message: String| failure(pack, kind, message);
    let snap = || customer_snapshot_granted(customer, recent, &pack.granted_fields);
    let actions = match trigger {
        Trigger::Event(Some(event)) => session.on_event(ctx, &snap(), &event.snapshot()),
        Trigger::Wake(plugin) if plugin == pack.name() => session.on_wake(ctx, &snap()),
        Trigger::Event(None) | Trigger::Wake(_) => Ok(Vec::new()),
    }
    .map_err(|e| from_runtime(pack, e))?;
    for a in &actions {
        match a {
            Action::MoveToStage { .. } if !pack.owns_lifecycle => {
                return Err(fail(
                    "bad_output",
                    "moves a stage but another plugin owns this tenant's lifecycle".into(),
                ))
            }
            Action::SetField { key, .. }
                if ALWAYS_SENSITIVE.contains(&key.as_str())
                    || customer.fields.iter().any(|f| f.key == *key && f.sensitive) =>
            {
                return Err(fail(
                    "bad_output",
                    format!("tries to set the sensitive field {key}"),
                ))
            }
            _ => {}
        }
    }
    // Score and segment see the customer as this plugin's own actions left it.
    let mut after = customer.clone();
    apply_to_record(&mut after, &actions);
    // Per-customer caps: a plugin adding a little on every event must not grow
    // a customer without bound. Only growth past a cap is refused.
    for (what, before, now, cap) in [
        (
            "tags",
            customer.tags.len(),
            after.tags.len(),
            domain::MAX_CUSTOMER_TAGS,
        ),
        (
            "fields",
            customer.fields.len(),
            after.fields.len(),
            domain::MAX_CUSTOMER_FIELDS,
        ),
    ] {
        if now > cap && now > before {
            return Err(fail(
                "bad_output",
                format!("would give the customer {now} {what}, at most {cap}"),
            ));
        }
    }
    let scheduled = follow_ups_in(&actions);
    if scheduled > 0 && open_follow_ups + scheduled > domain::MAX_OPEN_FOLLOW_UPS {
        return Err(fail(
            "bad_output",
            format!(
                "would give the customer {} open follow-ups, at most {}",
                open_follow_ups + scheduled,
                domain::MAX_OPEN_FOLLOW_UPS
            ),
        ));
    }
    Ok((actions, after))
}

/// A plugin's reaction to a customer's event: its actions and the customer as
/// they leave it, or its failure.
type Reaction = Result<(Vec<Action>, CustomerRecord), FailureReport>;

/// What a plugin makes of each customer.
type Judgement = (Option<StoredScore>, Option<Vec<(String, RenderedReason)>>);

/// A plugin's scores and segments for customers, in one `score` and one
/// `segment` call for all of them: each customer's own verdict (a plugin error
/// on one is that customer's failure), or the call's failure (a trap, a
/// deadline), which is every customer's.
fn judge(
    pack: &ActivePack,
    ctx: &CallContext,
    customers: &[(&CustomerRecord, &[EventRecord])],
    session: &mut Session<'_>,
) -> Result<Vec<Result<Judgement, FailureReport>>, FailureReport> {
    let m = pack.plugin.manifest();
    let snaps: Vec<_> = customers
        .iter()
        .map(|(c, recent)| customer_snapshot_granted(c, recent, &pack.granted_fields))
        .collect();
    let mut out: Vec<Result<Judgement, FailureReport>> =
        customers.iter().map(|_| Ok((None, None))).collect();
    if m.scoring {
        let scores = session
            .score(ctx, &snaps)
            .map_err(|e| from_runtime(pack, e))?;
        for (o, s) in out.iter_mut().zip(scores) {
            match s {
                Ok(s) => {
                    if let Ok(j) = o {
                        j.0 = Some(StoredScore {
                            plugin: m.name.clone(),
                            plugin_version: m.version.clone(),
                            value: s.value,
                            band: s.band,
                            reasons: s.reasons.iter().map(|r| render(pack, r)).collect(),
                            updated_at: ctx.now,
                        })
                    }
                }
                Err(e) => *o = Err(failure(pack, "plugin_error", e.to_string())),
            }
        }
    }
    // A customer whose score failed is not segmented (one customer alone
    // would not be asked).
    if m.segmentation && out.iter().any(Result::is_ok) {
        let segments = session
            .segment(ctx, &snaps)
            .map_err(|e| from_runtime(pack, e))?;
        for (o, ms) in out.iter_mut().zip(segments) {
            match ms {
                Ok(ms) => {
                    if let Ok(j) = o {
                        j.1 = Some(
                            ms.iter()
                                .map(|x| (x.segment.clone(), render(pack, &x.reason)))
                                .collect(),
                        )
                    }
                }
                Err(e) => {
                    if o.is_ok() {
                        *o = Err(failure(pack, "plugin_error", e.to_string()))
                    }
                }
            }
        }
    }
    Ok(out)
}

/// How many follow-ups `actions` may open (a keyed one may only update one
/// already open, but is counted: the cap is an upper bound).
pub(super) fn follow_ups_in(actions: &[Action]) -> u32 {
    actions
        .iter()
        .filter(|a| matches!(a, Action::ScheduleFollowUp { .. } | Action::FollowUp { .. }))
        .count() as u32
}

/// Applies actions to the in-memory record, so later plugins see them.
pub(super) fn apply_to_record(c: &mut CustomerRecord, actions: &[Action]) {
    for a in actions {
        match a {
            Action::MoveToStage { stage, .. } => c.stage = Some(stage.clone()),
            Action::AddTag(t) => {
                if !c.tags.contains(t) {
                    c.tags.push(t.clone());
                    c.tags.sort();
                }
            }
            Action::RemoveTag(t) => c.tags.retain(|x| x != t),
            Action::SetField { key, value } => match c.fields.iter_mut().find(|f| f.key == *key) {
                Some(f) => f.value = value.clone(),
                None => c.fields.push(FieldEntry {
                    key: key.clone(),
                    value: value.clone(),
                    sensitive: false,
                }),
            },
            Action::ScheduleFollowUp { .. }
            | Action::FollowUp { .. }
            | Action::CloseFollowUp { .. }
            | Action::WakeAt { .. } => {}
        }
    }
}

/// What an event's plugins gave: the outputs of those that succeeded, and the
/// failures of the others.
pub(crate) type Evaluated = (Vec<PluginOutput>, Vec<FailureReport>);

/// What bulk work (a rescore chunk, a dry-run) remembers of deadlines: once a
/// plugin went over its deadline on one customer, it is not called again there,
/// and the customers left get a failure saying so. A plugin that loops on
/// everyone costs one deadline, not one per customer.
#[derive(Default)]
pub(crate) struct Strikes {
    gave_up: std::sync::Mutex<BTreeMap<String, String>>,
}

impl Strikes {
    fn skipped(&self, pack: &ActivePack) -> Option<FailureReport> {
        let gave_up = self.gave_up.lock().unwrap_or_else(|p| p.into_inner());
        gave_up.get(pack.name()).map(|why| FailureReport {
            plugin: pack.name().to_string(),
            version: pack.version.clone(),
            kind: "deadline".into(),
            message: format!("not called: {why}"),
        })
    }

    fn note(&self, pack: &ActivePack, f: &FailureReport) {
        if f.kind == "deadline" {
            self.gave_up
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(pack.name().to_string())
                .or_insert_with(|| {
                    format!(
                        "it went over its deadline on another customer ({})",
                        f.message
                    )
                });
        }
    }
}

/// **The one way plugins are run on a customer**: for a new event (the live
/// path), and for a rescore and a dry-run (`event` = the customer's latest
/// event, `None` if it has none). Every plugin in turn, lifecycle owner first:
/// `on-event` on the event, its actions checked (stage moves only from the
/// owner, no sensitive field, the per-customer caps) and applied to the
/// customer, then `score` and `segment` on the customer as its own actions left
/// it; the next plugin sees the customer as every plugin before it left it,
/// their segments included. A plugin that fails has none of its output applied.
///
/// Blocking. Bulk work (a rescore chunk, a dry-run) uses [`evaluate_many`],
/// which gives each customer the same.
pub(crate) fn evaluate(
    packs: &TenantPacks,
    ctx: &CallContext,
    mut customer: CustomerRecord,
    recent: &[EventRecord],
    mut open_follow_ups: u32,
    trigger: Trigger<'_>,
) -> Evaluated {
    let mut outputs = Vec::new();
    let mut failures = Vec::new();
    for pack in &packs.packs {
        let started = std::time::Instant::now();
        let result = run_plugin(pack, ctx, &customer, recent, open_follow_ups, trigger);
        let outcome = result.as_ref().map_or_else(|f| f.kind.as_str(), |_| "ok");
        observe(packs, pack, started.elapsed().as_secs_f64(), outcome);
        match result {
            Ok(o) => {
                apply_to_record(&mut customer, &o.actions);
                open_follow_ups += follow_ups_in(&o.actions);
                if let Some(segs) = &o.segments {
                    customer
                        .segments
                        .extend(segs.iter().map(|(s, _)| s.clone()));
                }
                outputs.push(o);
            }
            Err(f) => {
                tracing::warn!(plugin = %f.plugin, version = %f.version, kind = %f.kind, "plugin failed: {}", f.message);
                failures.push(f);
            }
        }
    }
    (outputs, failures)
}

/// Runs `packs` on each customer of a batch through the one evaluation path
/// ([`evaluate`], on the customer's latest event, or with `woken_by` on the wake
/// of the plugin named for each customer) and derives what would be written
/// ([`effects`]). Blocking.
///
/// Customers are independent, so the batch is cut across the cores; within a
/// thread each plugin's configured instance serves customer after customer, as
/// the batch calls of the rescore before did (a plugin keeps nothing between
/// calls, so the results are those of a fresh instance per customer).
pub(crate) fn reevaluate(
    packs: &TenantPacks,
    ctx: &CallContext,
    batch: &[(CustomerRecord, Vec<EventRecord>)],
    woken_by: Option<&[String]>,
    strikes: &Strikes,
) -> Vec<(Evaluated, Effects)> {
    // One thread's customers, plugin by plugin: each customer gets what a live
    // event on its latest event would give it (`pipeline::evaluate_many`).
    let part = |customers: &[(CustomerRecord, Vec<EventRecord>)], woken_by: Option<&[String]>| {
        evaluate_many(packs, ctx, customers, woken_by, strikes)
            .into_iter()
            .zip(customers)
            .map(|(evaluated, (c, _))| {
                let fx = effects(c, &evaluated.0, ctx.now);
                (evaluated, fx)
            })
            .collect::<Vec<_>>()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads < 2 || batch.len() < 32 {
        return part(batch, woken_by);
    }
    let per = batch.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = batch
            .chunks(per)
            .enumerate()
            .map(|(n, customers)| {
                let woken_by = woken_by.map(|w| &w[n * per..n * per + customers.len()]);
                scope.spawn(move || part(customers, woken_by))
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("evaluation thread"))
            .collect()
    })
}

/// Makes `session` a usable instance of `pack`, configured with its rules (a
/// fresh one after a failure).
fn usable<'p>(
    pack: &'p ActivePack,
    ctx: &CallContext,
    session: &mut Option<Session<'p>>,
) -> Result<(), FailureReport> {
    if !session.as_ref().is_some_and(Session::usable) {
        *session = Some(
            pack.plugin
                .session(ctx, pack.rules.as_deref())
                .map_err(|e| from_runtime(pack, e))?,
        );
    }
    Ok(())
}

/// [`evaluate`] for many customers at once, each on its latest event, as a
/// rescore and a dry-run need (or, with `woken_by`, on the due wake of the
/// plugin named for each, as the wake worker needs): every customer gets exactly what [`evaluate`]
/// would give it (customers do not see each other), but plugin by plugin — a
/// plugin reacts to each customer's event, then scores and segments all of
/// them in one call each, instead of one call per customer. A call that fails
/// for all (a trap, a deadline) is made again customer by customer, so the
/// failure is that one customer's.
pub(crate) fn evaluate_many(
    packs: &TenantPacks,
    ctx: &CallContext,
    customers: &[(CustomerRecord, Vec<EventRecord>)],
    woken_by: Option<&[String]>,
    strikes: &Strikes,
) -> Vec<Evaluated> {
    let mut records: Vec<CustomerRecord> = customers.iter().map(|(c, _)| c.clone()).collect();
    let mut out: Vec<Evaluated> = customers.iter().map(|_| Default::default()).collect();
    let mut open = vec![0u32; customers.len()];
    for pack in &packs.packs {
        let started = std::time::Instant::now();
        let mut session: Option<Session<'_>> = None;
        // Each customer's reaction, or failure.
        let mut reacted: Vec<Reaction> = Vec::with_capacity(customers.len());
        for (i, (_, recent)) in customers.iter().enumerate() {
            if let Some(f) = strikes.skipped(pack) {
                reacted.push(Err(f));
                continue;
            }
            let r = usable(pack, ctx, &mut session).and_then(|()| {
                let s = session.as_mut().expect("an instance");
                s.withhold(domain::granted_secrets(&records[i], &pack.granted_fields));
                let trigger = match woken_by {
                    Some(w) => Trigger::Wake(&w[i]),
                    None => Trigger::Event(recent.first()),
                };
                react(pack, ctx, &records[i], recent, open[i], trigger, s)
            });
            if let Err(f) = &r {
                strikes.note(pack, f);
            }
            reacted.push(r);
        }
        // One `score` and one `segment` for every customer that reacted.
        let ready: Vec<usize> = (0..customers.len())
            .filter(|&i| reacted[i].is_ok())
            .collect();
        let mut judged: Vec<Option<Result<Judgement, FailureReport>>> =
            customers.iter().map(|_| None).collect();
        if !ready.is_empty() {
            let all: Vec<(&CustomerRecord, &[EventRecord])> = ready
                .iter()
                .map(|&i| match &reacted[i] {
                    Ok((_, after)) => (after, customers[i].1.as_slice()),
                    Err(_) => unreachable!("only customers that reacted"),
                })
                .collect();
            let together = usable(pack, ctx, &mut session)
                .and_then(|()| judge(pack, ctx, &all, session.as_mut().expect("an instance")));
            match together {
                Ok(verdicts) => {
                    for (&i, v) in ready.iter().zip(verdicts) {
                        judged[i] = Some(v);
                    }
                }
                // Again one by one: the failure is the customer's that caused it.
                Err(_) => {
                    for (&i, one) in ready.iter().zip(&all) {
                        let v = match strikes.skipped(pack) {
                            Some(f) => Err(f),
                            None => usable(pack, ctx, &mut session).and_then(|()| {
                                judge(pack, ctx, &[*one], session.as_mut().expect("an instance"))
                                    .and_then(|mut v| v.pop().expect("one verdict"))
                            }),
                        };
                        if let Err(f) = &v {
                            strikes.note(pack, f);
                        }
                        judged[i] = Some(v);
                    }
                }
            }
        }
        let per_customer = started.elapsed().as_secs_f64() / customers.len().max(1) as f64;
        for (i, r) in reacted.into_iter().enumerate() {
            let result = r.and_then(|(actions, _)| {
                let (score, segments) = judged[i].take().expect("judged")?;
                Ok((actions, score, segments))
            });
            let outcome = result.as_ref().map_or_else(|f| f.kind.as_str(), |_| "ok");
            observe(packs, pack, per_customer, outcome);
            match result {
                Ok((actions, score, segments)) => {
                    apply_to_record(&mut records[i], &actions);
                    open[i] += follow_ups_in(&actions);
                    if let Some(segs) = &segments {
                        records[i]
                            .segments
                            .extend(segs.iter().map(|(s, _)| s.clone()));
                    }
                    out[i].0.push(output(pack, actions, score, segments));
                }
                Err(f) => {
                    tracing::warn!(plugin = %f.plugin, version = %f.version, kind = %f.kind, "plugin failed: {}", f.message);
                    out[i].1.push(f);
                }
            }
        }
    }
    out
}
