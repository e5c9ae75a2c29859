//! Event → customer snapshot → the tenant's plugins → validated actions → one
//! transaction.
//!
//! [`record_events`] is the whole path for events of different customers inside
//! a transaction the caller owns ([`record_one`] for one): the HTTP route's
//! events go through `crate::services::group_commit`, which on SQLite records the events
//! that arrive together in one transaction; the importer a chunk of rows. Each
//! plugin runs in a fresh instance and its output is taken whole or not at all:
//! if any of its calls fails, none of its actions apply and the failure goes on
//! the customer's timeline. The event itself is always stored.
//!
//! On SQLite the one writer bounds the event rate, and each statement is a round
//! trip to sqlx's worker thread, so between `BEGIN` and `COMMIT` a group of
//! events sends two queries: every read at once ([`store::group_event_reads`]),
//! then every write at once (a [`store::Batch`]); what a write would report back
//! is known from the reads. The plugins ran before, outside the writer's hold
//! ([`evaluate_ahead`]), and their results are used if the reads under the
//! writer are the same; if not, they run again, in one trip to the blocking pool
//! for the group. `host/tests/statements.rs` holds it to that.

use crate::domain::{
    self, apply_event, customer_snapshot_granted, CustomerRecord, EventRecord, FieldEntry,
    ALWAYS_SENSITIVE,
};
use crate::packs::{ActivePack, TenantPacks};
use crate::runtime::{Action, CallContext, Lang, Reason, RuntimeError, Session};
use crate::store::{
    self, Backend, PluginFailure, RenderedReason, StageMove, Store, StoreError, StoredScore, Tx,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stagecraft_plugin::snapshot::Metrics;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How many recent events a plugin sees with the customer.
pub const RECENT_EVENTS: i64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("customer {0} not found")]
    UnknownCustomer(String),
    #[error("{0}")]
    Invalid(String),
    #[error("idempotency key {0:?} was already used for customer {1}")]
    KeyReused(String, String),
}

/// An event as a client sends it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// What happened: `order`, `visit`, `inquiry`... (a-z, 0-9, `_`, `-`).
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub kind: String,
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub channel: Option<String>,
    /// When it happened: ms since the epoch or an RFC 3339 time
    /// (`2026-01-10T10:00:00Z`); defaults to now.
    #[serde(default, deserialize_with = "crate::domain::time::de_time")]
    pub at: Option<i64>,
    #[serde(default)]
    pub amount_cents: Option<i64>,
    #[serde(default)]
    pub fields: BTreeMap<String, serde_json::Value>,
}

impl EventInput {
    /// Checks the input and turns it into a record with a fresh id.
    pub fn validate(&self, now: i64) -> Result<EventRecord, PipelineError> {
        let bad = |m: String| Err(PipelineError::Invalid(m));
        if !domain::is_slug(&self.kind) {
            return bad(format!(
                "kind {:?} must be 1-64 characters of a-z, 0-9, _ and -",
                trunc(&self.kind)
            ));
        }
        if let Some(c) = &self.channel {
            if !domain::is_slug(c) {
                return bad(format!(
                    "channel {:?} must be 1-64 characters of a-z, 0-9, _ and -",
                    trunc(c)
                ));
            }
        }
        let at = self.at.unwrap_or(now);
        if !(0..=now + stagecraft_plugin::snapshot::DAY_MS).contains(&at) {
            return bad(format!(
                "at {at} is before 1970 or more than a day in the future"
            ));
        }
        match (self.kind.as_str(), self.amount_cents) {
            ("order", None) => return bad("an order needs amount_cents".into()),
            ("order", Some(a)) if a < 0 => {
                return bad("an order's amount_cents cannot be negative".into())
            }
            (_, Some(a)) if a.abs() > 1_000_000_000_000 => {
                return bad("amount_cents is out of range".into())
            }
            _ => {}
        }
        if self.fields.len() > domain::MAX_FIELDS {
            return bad(format!("at most {} fields", domain::MAX_FIELDS));
        }
        let mut fields = Vec::with_capacity(self.fields.len());
        for (k, v) in &self.fields {
            if !domain::is_slug(k) {
                return bad(format!(
                    "field key {:?} must be 1-64 characters of a-z, 0-9, _ and -",
                    trunc(k)
                ));
            }
            fields.push((
                k.clone(),
                domain::field_value_from_json(k, v).map_err(PipelineError::Invalid)?,
            ));
        }
        Ok(EventRecord {
            id: uuid::Uuid::now_v7().to_string(),
            kind: self.kind.clone(),
            channel: self.channel.clone(),
            at,
            amount_cents: self.amount_cents,
            fields,
        })
    }
}

fn trunc(s: &str) -> String {
    s.chars().take(40).collect()
}

/// What an event caused; also the body of the event route's response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventOutcome {
    pub event_id: String,
    pub customer_id: String,
    pub stage: Option<StageChange>,
    pub tags_added: Vec<String>,
    pub tags_removed: Vec<String>,
    pub fields_set: BTreeMap<String, serde_json::Value>,
    pub follow_ups: Vec<FollowUpScheduled>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow_ups_closed: Vec<FollowUpClosed>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wakes: Vec<WakeSet>,
    pub scores: BTreeMap<String, ScoreChange>,
    pub segments_joined: Vec<String>,
    pub segments_left: Vec<String>,
    pub failures: Vec<FailureReport>,
    /// Set when this is the stored answer to an earlier request with the same key.
    #[serde(default)]
    pub replayed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageChange {
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
    pub plugin: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowUpScheduled {
    pub due_at: i64,
    pub note: String,
    pub plugin: String,
    /// The plugin's key (contract 0.2.0): an open follow-up with it is updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A plugin's open follow-up closed by its key (contract 0.2.0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowUpClosed {
    pub plugin: String,
    pub key: String,
}

/// A plugin's pending wake set (`due_at`) or cancelled (`None`) (contract 0.2.0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WakeSet {
    pub plugin: String,
    pub due_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreChange {
    pub version: String,
    pub value: f64,
    pub band: Option<String>,
    pub previous_value: Option<f64>,
    pub previous_band: Option<String>,
    pub reasons: Vec<RenderedReason>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureReport {
    pub plugin: String,
    pub version: String,
    pub kind: String,
    pub message: String,
}

/// What one plugin proposed for one event, checked and complete.
#[derive(Debug, Clone)]
pub(crate) struct PluginOutput {
    pub(crate) pack: ActivePack,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) owns_lifecycle: bool,
    pub(crate) actions: Vec<Action>,
    pub(crate) score: Option<StoredScore>,
    pub(crate) segments: Option<Vec<(String, RenderedReason)>>,
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

fn failure_kind(e: &RuntimeError) -> &'static str {
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
fn run_plugin<'p>(
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
fn run_in_session(
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
fn follow_ups_in(actions: &[Action]) -> u32 {
    actions
        .iter()
        .filter(|a| matches!(a, Action::ScheduleFollowUp { .. } | Action::FollowUp { .. }))
        .count() as u32
}

/// Applies actions to the in-memory record, so later plugins see them.
fn apply_to_record(c: &mut CustomerRecord, actions: &[Action]) {
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
/// everyone costs one deadline, not one per customer (a dry-run of 1,000
/// customers with a looping candidate took half an hour).
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
            Some(&job.event),
            None,
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
struct Inputs {
    /// The customer as the plugins see it (metrics with the event, 90-day touchpoints).
    customer: CustomerRecord,
    /// The metrics to store: as above, without the touchpoints (they are counted, not kept).
    stored_metrics: Metrics,
    recent: Vec<EventRecord>,
    /// Follow-ups of the customer not yet done.
    open_follow_ups: u32,
    /// What the event's writes go over: the stored scores and segments.
    scores_before: store::ScoresBefore,
    segments_before: store::SegmentsBefore,
}

/// The first step of an event: the stored answer for a replayed idempotency key,
/// or what the plugins are to see.
enum Prepared {
    Replayed(EventOutcome),
    Ready(Inputs),
}

/// Turns what was read for `job` ([`store::group_event_reads`]) into the
/// answer already given under its idempotency key, or the plugins' inputs.
fn prepare(job: &EventJob, reads: store::EventReads) -> Result<Prepared, PipelineError> {
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
                        Some(&job.event),
                        None,
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
async fn reads_under_writer(
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
    // event keep results computed on what is gone: the tests (built with
    // `test-support`) read everything again and compare. Never in a release.
    #[cfg(feature = "test-support")]
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

/// What the plugins' outputs for one customer change, in the order they apply
/// (see [`effects`]): what a live event, a rescore and a dry-run all derive from
/// [`evaluate`]'s outputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Effects {
    /// Each move of the lifecycle owner that changes the stage, in order.
    pub(crate) stage_moves: Vec<StageMove>,
    /// Net: tags the customer gains and loses.
    pub(crate) tags_added: Vec<String>,
    pub(crate) tags_removed: Vec<String>,
    /// Every field set, in order (a later value of a key wins).
    pub(crate) fields_set: Vec<FieldEntry>,
    pub(crate) follow_ups: Vec<FollowUpScheduled>,
    pub(crate) follow_ups_closed: Vec<FollowUpClosed>,
    /// At most one per plugin: its last request.
    pub(crate) wakes: Vec<WakeSet>,
    pub(crate) scores: Vec<StoredScore>,
    /// (plugin, its segments with reasons).
    pub(crate) segments: Vec<(String, Vec<(String, RenderedReason)>)>,
}

/// The effects of the plugins' outputs on a customer stored as `before`.
pub(crate) fn effects(before: &CustomerRecord, outputs: &[PluginOutput], now: i64) -> Effects {
    let mut fx = Effects::default();
    let mut stage = before.stage.clone();
    let mut tags = before.tags.clone();
    for o in outputs {
        for a in &o.actions {
            match a {
                Action::MoveToStage { stage: to, reason } if o.owns_lifecycle => {
                    if stage.as_deref() == Some(to.as_str()) {
                        continue;
                    }
                    fx.stage_moves.push(StageMove {
                        from: stage.clone(),
                        to: to.clone(),
                        reason: reason.clone(),
                        reason_text: render(&o.pack, reason).text,
                        plugin: o.name.clone(),
                        plugin_version: o.version.clone(),
                    });
                    stage = Some(to.clone());
                }
                Action::MoveToStage { .. } => {}
                Action::AddTag(t) => {
                    if !tags.contains(t) {
                        tags.push(t.clone());
                        if !fx.tags_removed.contains(t) {
                            fx.tags_added.push(t.clone());
                        }
                        fx.tags_removed.retain(|x| x != t);
                    }
                }
                Action::RemoveTag(t) => {
                    if tags.contains(t) {
                        tags.retain(|x| x != t);
                        if !fx.tags_added.contains(t) {
                            fx.tags_removed.push(t.clone());
                        }
                        fx.tags_added.retain(|x| x != t);
                    }
                }
                Action::SetField { key, value } => fx.fields_set.push(FieldEntry {
                    key: key.clone(),
                    value: value.clone(),
                    sensitive: false,
                }),
                Action::ScheduleFollowUp { due_in_hours, note } => {
                    fx.follow_ups.push(FollowUpScheduled {
                        due_at: now + *due_in_hours as i64 * 3_600_000,
                        note: note.clone(),
                        plugin: o.name.clone(),
                        key: None,
                    })
                }
                Action::FollowUp { key, due, note } => {
                    // A later proposal with the same key in one answer wins.
                    fx.follow_ups
                        .retain(|f| !(f.plugin == o.name && f.key.as_deref() == Some(key)));
                    fx.follow_ups_closed
                        .retain(|c| !(c.plugin == o.name && c.key == *key));
                    fx.follow_ups.push(FollowUpScheduled {
                        due_at: *due,
                        note: note.clone(),
                        plugin: o.name.clone(),
                        key: Some(key.clone()),
                    })
                }
                Action::CloseFollowUp { key } => {
                    fx.follow_ups
                        .retain(|f| !(f.plugin == o.name && f.key.as_deref() == Some(key)));
                    fx.follow_ups_closed.push(FollowUpClosed {
                        plugin: o.name.clone(),
                        key: key.clone(),
                    })
                }
                Action::WakeAt { at } => {
                    fx.wakes.retain(|w| w.plugin != o.name);
                    fx.wakes.push(WakeSet {
                        plugin: o.name.clone(),
                        due_at: *at,
                    })
                }
            }
        }
        if let Some(s) = &o.score {
            fx.scores.push(s.clone());
        }
        if let Some(segments) = &o.segments {
            fx.segments.push((o.name.clone(), segments.clone()));
        }
    }
    fx
}

/// Queues everything one event's plugins caused, and the event, in `writes`, and
/// says what it caused. What a write would tell (was a tag there?) is known from
/// the reads.
fn queue_writes(
    writes: &mut store::Batch,
    job: &EventJob,
    inputs: Inputs,
    outputs: Vec<PluginOutput>,
    failures: Vec<FailureReport>,
) -> EventOutcome {
    let EventJob {
        tenant,
        customer_id,
        event,
        idempotency_key,
        now,
        ..
    } = job;
    let (tenant, customer_id, now) = (tenant.as_str(), customer_id.as_str(), *now);
    let Inputs {
        customer: before,
        stored_metrics,
        scores_before,
        segments_before,
        ..
    } = inputs;
    let mut outcome = EventOutcome {
        event_id: event.id.clone(),
        customer_id: customer_id.to_string(),
        failures,
        ..Default::default()
    };
    let ev_id = Some(event.id.as_str());
    store::queue_metrics(writes, tenant, customer_id, &stored_metrics, now);
    let fx = effects(&before, &outputs, now);
    for mv in &fx.stage_moves {
        store::queue_stage_moves(writes, tenant, &[(customer_id, mv)], ev_id, now);
        outcome.stage = Some(StageChange {
            from: mv.from.clone(),
            to: mv.to.clone(),
            reason: mv.reason_text.clone(),
            plugin: mv.plugin.clone(),
        });
    }
    for t in &fx.tags_added {
        store::queue_add_tag(writes, tenant, customer_id, t);
    }
    for t in &fx.tags_removed {
        store::queue_remove_tag(writes, tenant, customer_id, t);
    }
    outcome.tags_added = fx.tags_added;
    outcome.tags_removed = fx.tags_removed;
    for f in &fx.fields_set {
        store::queue_field(writes, tenant, customer_id, f);
        outcome
            .fields_set
            .insert(f.key.clone(), domain::field_value_to_json(&f.value));
    }
    // Per plugin and key an answer either closes or opens (updates): `effects`
    // keeps its last word, so the order of these writes does not matter.
    for c in &fx.follow_ups_closed {
        store::queue_close_follow_up(writes, tenant, customer_id, &c.plugin, &c.key, now);
    }
    outcome.follow_ups_closed = fx.follow_ups_closed;
    for f in fx.follow_ups {
        store::queue_follow_up(
            writes,
            tenant,
            customer_id,
            f.due_at,
            &f.note,
            Some(&f.plugin),
            f.key.as_deref(),
            ev_id,
            now,
        );
        outcome.follow_ups.push(f);
    }
    for w in &fx.wakes {
        store::queue_wake(writes, tenant, customer_id, &w.plugin, w.due_at, ev_id, now);
    }
    outcome.wakes = fx.wakes;
    let scores: Vec<(String, StoredScore)> = fx
        .scores
        .into_iter()
        .map(|s| (customer_id.to_string(), s))
        .collect();
    let segment_sets: Vec<store::SegmentSet> = fx
        .segments
        .into_iter()
        .map(|(plugin, segments)| store::SegmentSet {
            customer: customer_id.to_string(),
            plugin,
            segments,
        })
        .collect();
    // Every plugin's scores and segments in a few statements of the batch, over
    // what was read before the plugins ran.
    let previous = store::queue_scores_over(writes, tenant, scores_before, &scores, ev_id);
    for ((_, s), prev) in scores.iter().zip(previous) {
        outcome.scores.insert(
            s.plugin.clone(),
            ScoreChange {
                version: s.plugin_version.clone(),
                value: s.value,
                band: s.band.clone(),
                previous_value: prev.as_ref().map(|p| p.0),
                previous_band: prev.and_then(|p| p.1),
                reasons: s.reasons.clone(),
            },
        );
    }
    for (joined, left) in
        store::queue_memberships_over(writes, tenant, segments_before, &segment_sets, now)
    {
        outcome.segments_joined.extend(joined);
        outcome.segments_left.extend(left);
    }
    for f in &outcome.failures {
        let pf = PluginFailure {
            plugin: f.plugin.clone(),
            plugin_version: f.version.clone(),
            kind: f.kind.clone(),
            message: f.message.clone(),
        };
        store::queue_failure(writes, tenant, customer_id, &pf, ev_id, now);
    }
    let body = json!(outcome);
    store::queue_event(
        writes,
        tenant,
        customer_id,
        event,
        idempotency_key.as_deref(),
        &body,
        now,
    );
    outcome
}
