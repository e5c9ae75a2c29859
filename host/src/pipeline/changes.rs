//! The change records ([`crate::domain::changes`]) of what the plugins' outputs
//! changed on customers, queued into the same batch as those writes: one
//! function per kind of write, shared by live events, wakes and rescores.

use super::*;
use crate::domain::changes::{ChangeType, NewChange};

/// `data` with the event that caused the change, when one did.
fn caused(mut data: serde_json::Value, ev_id: Option<&str>) -> serde_json::Value {
    if let (Some(id), Some(o)) = (ev_id, data.as_object_mut()) {
        o.insert("event_id".into(), json!(id));
    }
    data
}

/// A stage move's record.
pub(crate) fn stage_changed(customer_id: &str, mv: &StageMove, ev_id: Option<&str>) -> NewChange {
    NewChange::customer(
        ChangeType::StageChanged,
        customer_id,
        caused(
            json!({
                "from": mv.from,
                "to": mv.to,
                "reason": mv.reason_text,
                "plugin": mv.plugin,
                "plugin_version": mv.plugin_version,
            }),
            ev_id,
        ),
    )
}

/// Records of tags a customer gained and lost.
pub(crate) fn tags_changed(
    customer_id: &str,
    added: &[String],
    removed: &[String],
    ev_id: Option<&str>,
) -> Vec<NewChange> {
    let one = |kind, tag: &String| {
        NewChange::customer(kind, customer_id, caused(json!({ "tag": tag }), ev_id))
    };
    added
        .iter()
        .map(|t| one(ChangeType::TagAdded, t))
        .chain(removed.iter().map(|t| one(ChangeType::TagRemoved, t)))
        .collect()
}

/// Queues the records of scores whose band changed: `rows` as written, each
/// over its `previous` (value, band), in order.
pub(crate) fn queue_band_changes(
    writes: &mut store::Batch,
    tenant: &str,
    rows: &[(String, StoredScore)],
    previous: &[Option<(f64, Option<String>)>],
    ev_id: Option<&str>,
    at: i64,
) {
    let changes: Vec<NewChange> = rows
        .iter()
        .zip(previous)
        .filter_map(|((id, s), prev)| {
            let was = prev.as_ref().and_then(|p| p.1.clone());
            (was != s.band).then(|| {
                NewChange::customer(
                    ChangeType::BandChanged,
                    id,
                    caused(
                        json!({
                            "plugin": s.plugin,
                            "plugin_version": s.plugin_version,
                            "from": was,
                            "to": s.band,
                            "score": s.value,
                        }),
                        ev_id,
                    ),
                )
            })
        })
        .collect();
    store::queue_changes(writes, tenant, &changes, at);
}

/// Queues the records of segments joined and left: `sets` as written, each
/// with its (joined, left) segments, in order.
pub(crate) fn queue_segment_changes(
    writes: &mut store::Batch,
    tenant: &str,
    sets: &[store::SegmentSet],
    changed: &[(Vec<String>, Vec<String>)],
    ev_id: Option<&str>,
    at: i64,
) {
    let mut changes = Vec::new();
    for (set, (joined, left)) in sets.iter().zip(changed) {
        let one = |kind, segment: &String| {
            NewChange::customer(
                kind,
                &set.customer,
                caused(json!({ "segment": segment, "plugin": set.plugin }), ev_id),
            )
        };
        changes.extend(joined.iter().map(|s| one(ChangeType::SegmentJoined, s)));
        changes.extend(left.iter().map(|s| one(ChangeType::SegmentLeft, s)));
    }
    store::queue_changes(writes, tenant, &changes, at);
}

/// A follow-up's record as a plugin opened (or, by its key, updated) it.
pub(crate) fn follow_up_created(
    customer_id: &str,
    f: &FollowUpScheduled,
    ev_id: Option<&str>,
) -> NewChange {
    NewChange::customer(
        ChangeType::FollowUpCreated,
        customer_id,
        caused(
            json!({ "due_at": f.due_at, "note": f.note, "plugin": f.plugin, "key": f.key }),
            ev_id,
        ),
    )
}

/// A plugin's follow-up closed by its key.
pub(crate) fn follow_up_closed(
    customer_id: &str,
    c: &FollowUpClosed,
    ev_id: Option<&str>,
) -> NewChange {
    NewChange::customer(
        ChangeType::FollowUpDone,
        customer_id,
        caused(
            json!({ "plugin": c.plugin, "key": c.key, "by": "plugin" }),
            ev_id,
        ),
    )
}
