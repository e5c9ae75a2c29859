//! The generated bindings and the adapter from [`Plugin`](crate::Plugin) to them.
//! Plugin authors never touch this module; it exists only on wasm32.

use crate::{
    snapshot, Action, Context, FieldValue, Manifest, Membership, Plugin, PluginError, Reason, Score,
};
use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;

pub mod wit {
    wit_bindgen::generate!({
        // The SDK's own copy of the contract it targets (`wit/0.2.0` of the
        // Stagecraft repository), so that it builds outside it.
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_stagecraft_plugin",
        default_bindings_module: "stagecraft_plugin::__private::wit",
    });
}

use wit::exports::stagecraft::plugin::pack::Guest;
use wit::stagecraft::plugin::types as w;

thread_local! {
    // The configured plugin for this instance. Instances are fresh per batch or event,
    // so this never outlives one call sequence.
    static CONFIGURED: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Implements the generated `Guest` trait for any [`Plugin`].
pub struct Adapter<P>(PhantomData<P>);

fn with_plugin<P: Plugin, R>(
    f: impl FnOnce(&P) -> Result<R, PluginError>,
) -> Result<R, w::PluginError> {
    CONFIGURED.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            // Called without `configure`: use the manifest's default rules.
            let p = P::with_default_rules().map_err(to_wit_error)?;
            *slot = Some(Box::new(p));
        }
        let p = slot
            .as_ref()
            .and_then(|b| b.downcast_ref::<P>())
            .expect("plugin type is fixed per component");
        f(p).map_err(to_wit_error)
    })
}

fn ctx(c: &w::Context) -> Context<'_> {
    Context {
        now: c.now,
        tenant: &c.tenant,
    }
}

fn bad_input(e: snapshot::SnapshotError) -> w::PluginError {
    w::PluginError::BadInput(e.0)
}

impl<P: Plugin> Guest for Adapter<P> {
    fn describe() -> w::Manifest {
        to_wit_manifest(P::describe())
    }

    fn configure(rules: String) -> Result<(), w::PluginError> {
        let p = P::configure(&rules).map_err(to_wit_error)?;
        CONFIGURED.with(|cell| *cell.borrow_mut() = Some(Box::new(p)));
        Ok(())
    }

    fn score(
        c: w::Context,
        batch: Vec<u8>,
    ) -> Result<Vec<Result<w::CustomerScore, w::PluginError>>, w::PluginError> {
        let customers = snapshot::decode_batch(&batch).map_err(bad_input)?;
        let cx = ctx(&c);
        with_plugin::<P, _>(|p| {
            Ok(customers
                .iter()
                .map(|cu| p.score(&cx, cu).map(to_wit_score).map_err(to_wit_error))
                .collect())
        })
    }

    fn segment(
        c: w::Context,
        batch: Vec<u8>,
    ) -> Result<Vec<Result<Vec<w::Membership>, w::PluginError>>, w::PluginError> {
        let customers = snapshot::decode_batch(&batch).map_err(bad_input)?;
        let cx = ctx(&c);
        with_plugin::<P, _>(|p| {
            Ok(customers
                .iter()
                .map(|cu| {
                    p.segment(&cx, cu)
                        .map(|ms| ms.into_iter().map(to_wit_membership).collect())
                        .map_err(to_wit_error)
                })
                .collect())
        })
    }

    fn on_event(
        c: w::Context,
        customer: Vec<u8>,
        event: Vec<u8>,
    ) -> Result<Vec<w::Action>, w::PluginError> {
        let cu = snapshot::decode_customer(&customer).map_err(bad_input)?;
        let ev = snapshot::decode_event(&event).map_err(bad_input)?;
        let cx = ctx(&c);
        with_plugin::<P, _>(|p| {
            Ok(p.on_event(&cx, &cu, &ev)?
                .into_iter()
                .map(to_wit_action)
                .collect())
        })
    }

    fn on_wake(c: w::Context, customer: Vec<u8>) -> Result<Vec<w::Action>, w::PluginError> {
        let cu = snapshot::decode_customer(&customer).map_err(bad_input)?;
        let cx = ctx(&c);
        with_plugin::<P, _>(|p| {
            Ok(p.on_wake(&cx, &cu)?
                .into_iter()
                .map(to_wit_action)
                .collect())
        })
    }
}

fn to_wit_error(e: PluginError) -> w::PluginError {
    match e {
        PluginError::BadInput(m) => w::PluginError::BadInput(m),
        PluginError::BadRules(m) => w::PluginError::BadRules(m),
        PluginError::Failed(m) => w::PluginError::Failed(m),
    }
}

fn to_wit_reason(r: Reason) -> w::Reason {
    w::Reason {
        code: r.code.into_owned(),
        points: r.points,
        args: r.args,
    }
}

fn to_wit_score(s: Score) -> w::CustomerScore {
    w::CustomerScore {
        value: s.value,
        band: s.band.map(|b| b.into_owned()),
        reasons: s.reasons.into_iter().map(to_wit_reason).collect(),
    }
}

fn to_wit_membership(m: Membership) -> w::Membership {
    w::Membership {
        segment: m.segment.into_owned(),
        reason: to_wit_reason(m.reason),
    }
}

fn to_wit_action(a: Action) -> w::Action {
    match a {
        Action::MoveToStage { stage, reason } => w::Action::MoveToStage(w::StageMove {
            stage: stage.into_owned(),
            reason: to_wit_reason(reason),
        }),
        Action::AddTag(t) => w::Action::AddTag(t.into_owned()),
        Action::RemoveTag(t) => w::Action::RemoveTag(t.into_owned()),
        Action::SetField { key, value } => w::Action::SetField(w::Field {
            key: key.into_owned(),
            value: match value {
                FieldValue::Text(s) => w::Value::Text(s),
                FieldValue::Number(n) => w::Value::Number(n),
                FieldValue::Boolean(b) => w::Value::Boolean(b),
                FieldValue::Time(t) => w::Value::Time(t),
            },
        }),
        Action::ScheduleFollowUp { due_in_hours, note } => {
            w::Action::ScheduleFollowUp(w::FollowUp { due_in_hours, note })
        }
        Action::FollowUp { key, due, note } => w::Action::FollowUp(w::KeyedFollowUp {
            key: key.into_owned(),
            due,
            note,
        }),
        Action::CloseFollowUp(key) => w::Action::CloseFollowUp(key.into_owned()),
        Action::WakeAt(at) => w::Action::WakeAt(at),
    }
}

fn to_wit_manifest(m: Manifest) -> w::Manifest {
    let mut caps = w::Capabilities::empty();
    if m.scoring {
        caps |= w::Capabilities::SCORING;
    }
    if m.segmentation {
        caps |= w::Capabilities::SEGMENTATION;
    }
    if m.lifecycle {
        caps |= w::Capabilities::LIFECYCLE;
    }
    let mut reads = w::Reads::empty();
    if m.reads.tags {
        reads |= w::Reads::TAGS;
    }
    if m.reads.segments {
        reads |= w::Reads::SEGMENTS;
    }
    if m.reads.fields {
        reads |= w::Reads::FIELDS;
    }
    if m.reads.events {
        reads |= w::Reads::EVENTS;
    }
    w::Manifest {
        name: m.name.into(),
        version: m.version.into(),
        description: m.description.into(),
        capabilities: caps,
        reads,
        stages: m
            .stages
            .into_iter()
            .map(|s| w::Stage {
                id: s.id.into(),
                label: s.label.into(),
                label_zh: s.label_zh.map(Into::into),
                rank: s.rank,
            })
            .collect(),
        segments: m
            .segments
            .into_iter()
            .map(|s| w::SegmentDef {
                id: s.id.into(),
                label: s.label.into(),
            })
            .collect(),
        reasons: m
            .reasons
            .into_iter()
            .map(|r| w::ReasonText {
                code: r.code.into(),
                en: r.en.into(),
                zh: r.zh.map(Into::into),
            })
            .collect(),
        rules_schema: m.rules_schema.map(Into::into),
        default_rules: m.default_rules.into(),
        wants_fields: m.wants_fields.into_iter().map(Into::into).collect(),
    }
}
