//! Customers encoded for a plugin: only the parts its manifest `reads`.

use super::*;
use stagecraft_plugin::snapshot::{self, Customer};

/// Encodes a batch with only the parts `reads` allows.
pub fn encode_batch(batch: &[Customer<'_>], reads: Reads) -> Result<Vec<u8>, RuntimeError> {
    let view: Vec<Customer<'_>> = batch.iter().map(|c| restrict(c, reads)).collect();
    snapshot::encode_batch(&view).map_err(|e| RuntimeError::Snapshot(e.0))
}

pub(super) fn encode_customer(c: &Customer<'_>, reads: Reads) -> Result<Vec<u8>, RuntimeError> {
    snapshot::encode_customer(&restrict(c, reads)).map_err(|e| RuntimeError::Snapshot(e.0))
}

/// A shallow copy of `c` without the parts the plugin does not read.
fn restrict<'a>(c: &Customer<'a>, reads: Reads) -> Customer<'a> {
    Customer {
        id: c.id,
        stage: c.stage,
        source: c.source,
        created_at: c.created_at,
        metrics: c.metrics,
        tags: if reads.tags {
            c.tags.clone()
        } else {
            Vec::new()
        },
        segments: if reads.segments {
            c.segments.clone()
        } else {
            Vec::new()
        },
        fields: if reads.fields {
            c.fields.clone()
        } else {
            Default::default()
        },
        events: if reads.events {
            c.events.clone()
        } else {
            Vec::new()
        },
    }
}
