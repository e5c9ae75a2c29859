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
//!
//! Here: the errors and what an event did ([`EventOutcome`]). `input.rs` what
//! a client sends; `evaluate.rs` the one evaluation path (live events, dry-run,
//! rescore); `record.rs` events in a transaction, with their reads ahead;
//! `writes.rs` what the outputs change, queued as writes.

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

mod changes;
mod evaluate;
mod input;
mod record;
mod writes;

pub(crate) use changes::{queue_band_changes, queue_segment_changes, stage_changed, tags_changed};
pub(crate) use evaluate::{evaluate, reevaluate, render, Evaluated, Strikes, Trigger};
pub use input::EventInput;
use record::Inputs;
pub use record::{evaluate_ahead, record_events, record_one, Ahead, EventJob};
use writes::queue_writes;
pub(crate) use writes::{effects, queue_effects, queue_failures, Effects};

/// What an event caused; also the body of the event route's response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageChange {
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
    pub plugin: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FollowUpScheduled {
    pub due_at: i64,
    pub note: String,
    pub plugin: String,
    /// The plugin's key (contract 0.2.0): an open follow-up with it is updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A plugin's open follow-up closed by its key (contract 0.2.0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FollowUpClosed {
    pub plugin: String,
    pub key: String,
}

/// A plugin's pending wake set (`due_at`) or cancelled (`None`) (contract 0.2.0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WakeSet {
    pub plugin: String,
    pub due_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScoreChange {
    pub version: String,
    pub value: f64,
    pub band: Option<String>,
    pub previous_value: Option<f64>,
    pub previous_band: Option<String>,
    pub reasons: Vec<RenderedReason>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
