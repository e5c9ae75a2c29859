//! The one evaluation path: the tenant's plugins run on a customer, each in
//! order, seeing what the earlier ones did; used by live events, dry-runs and
//! rescores alike.

use super::*;

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
pub(super) fn run_plugin<'p>(
    pack: &'p ActivePack,
    ctx: &CallContext,
    customer: &CustomerRecord,
    recent: &[EventRecord],
    open_follow_ups: u32,
    event: Option<&EventRecord>,
    kept: Option<&mut Option<Session<'p>>>,
) -> Result<PluginOutput, FailureReport> {
    let m = pack.plugin.manifest();
    let fail = |kind: &str, message: String| FailureReport {
        plugin: m.name.clone(),
        version: m.version.clone(),
        kind: kind.to_string(),
        message,
    };
    let from_runtime = |e: RuntimeError| fail(failure_kind(&e), e.to_string());
    // Bulk work keeps a configured instance for the next customer of its batch,
    // as a batch call would; a live event always gets a fresh one.
    let mut kept = kept;
    let mut session = match kept.as_mut().and_then(|k| k.take()) {
        Some(s) if s.usable() => s,
        _ => pack
            .plugin
            .session(ctx, pack.rules.as_deref())
            .map_err(from_runtime)?,
    };
    session.withhold(domain::granted_secrets(customer, &pack.granted_fields));
    let out = run_in_session(
        pack,
        ctx,
        customer,
        recent,
        open_follow_ups,
        event,
        &mut session,
    );
    if let Some(k) = kept {
        *k = Some(session);
    }
    out
}

/// [`run_plugin`]'s work in a configured instance.
pub(super) fn run_in_session(
    pack: &ActivePack,
    ctx: &CallContext,
    customer: &CustomerRecord,
    recent: &[EventRecord],
    open_follow_ups: u32,
    event: Option<&EventRecord>,
    session: &mut Session<'_>,
) -> Result<PluginOutput, FailureReport> {
    let m = pack.plugin.manifest();
    let fail = |kind: &str, message: String| FailureReport {
        plugin: m.name.clone(),
        version: m.version.clone(),
        kind: kind.to_string(),
        message,
    };
    let from_runtime = |e: RuntimeError| fail(failure_kind(&e), e.to_string());
    let mut out = PluginOutput {
        pack: pack.clone(),
        name: m.name.clone(),
        version: m.version.clone(),
        owns_lifecycle: pack.owns_lifecycle,
        actions: Vec::new(),
        score: None,
        segments: None,
    };
    if let Some(event) = event {
        let snap = customer_snapshot_granted(customer, recent, &pack.granted_fields);
        out.actions = session
            .on_event(ctx, &snap, &event.snapshot())
            .map_err(from_runtime)?;
    }
    for a in &out.actions {
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
    apply_to_record(&mut after, &out.actions);
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
    let scheduled = follow_ups_in(&out.actions);
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
    let snap = customer_snapshot_granted(&after, recent, &pack.granted_fields);
    let batch = std::slice::from_ref(&snap);
    if m.scoring {
        let s = session
            .score(ctx, batch)
            .map_err(from_runtime)?
            .pop()
            .expect("one score per customer")
            .map_err(|e| fail("plugin_error", e.to_string()))?;
        out.score = Some(StoredScore {
            plugin: m.name.clone(),
            plugin_version: m.version.clone(),
            value: s.value,
            band: s.band,
            reasons: s.reasons.iter().map(|r| render(pack, r)).collect(),
            updated_at: ctx.now,
        });
    }
    if m.segmentation {
        let ms = session
            .segment(ctx, batch)
            .map_err(from_runtime)?
            .pop()
            .expect("one segment list per customer")
            .map_err(|e| fail("plugin_error", e.to_string()))?;
        out.segments = Some(
            ms.iter()
                .map(|x| (x.segment.clone(), render(pack, &x.reason)))
                .collect(),
        );
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

/// What [`evaluate`] keeps between the customers of bulk work: the strikes,
/// and each plugin's configured instance (by its place in the tenant's set).
pub(crate) struct Bulk<'s, 'p> {
    pub(crate) strikes: &'s Strikes,
    sessions: Vec<Option<Session<'p>>>,
}

impl<'s, 'p> Bulk<'s, 'p> {
    pub(crate) fn new(strikes: &'s Strikes) -> Self {
        Bulk {
            strikes,
            sessions: Vec::new(),
        }
    }

    fn slot(&mut self, i: usize) -> &mut Option<Session<'p>> {
        if self.sessions.len() <= i {
            self.sessions.resize_with(i + 1, || None);
        }
        &mut self.sessions[i]
    }
}

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
/// With `bulk` (a rescore chunk, a dry-run), a plugin that went over its
/// deadline on an earlier customer is not called again (see [`Strikes`]), and
/// each plugin's configured instance serves the next customer of the batch, as
/// one batch call would. Blocking.
pub(crate) fn evaluate<'p>(
    packs: &'p TenantPacks,
    ctx: &CallContext,
    mut customer: CustomerRecord,
    recent: &[EventRecord],
    mut open_follow_ups: u32,
    event: Option<&EventRecord>,
    mut bulk: Option<&mut Bulk<'_, 'p>>,
) -> Evaluated {
    let mut outputs = Vec::new();
    let mut failures = Vec::new();
    for (i, pack) in packs.packs.iter().enumerate() {
        if let Some(f) = bulk.as_ref().and_then(|b| b.strikes.skipped(pack)) {
            failures.push(f);
            continue;
        }
        let started = std::time::Instant::now();
        let kept = bulk.as_mut().map(|b| b.slot(i));
        let result = run_plugin(pack, ctx, &customer, recent, open_follow_ups, event, kept);
        if let (Some(b), Err(f)) = (&bulk, &result) {
            b.strikes.note(pack, f);
        }
        let labels = [pack.name(), pack.version.as_str()];
        packs
            .metrics
            .plugin_seconds
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        let outcome = result.as_ref().map_or_else(|f| f.kind.as_str(), |_| "ok");
        packs
            .metrics
            .plugin_calls
            .with_label_values(&[labels[0], labels[1], outcome])
            .inc();
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
