//! Change records: what the change feed (`GET /v1/changes`) and, later, the
//! webhooks tell the outside world. Each is written in the same transaction
//! as the change it describes (see `store::queue_changes`), so a client that
//! reads the feed hears of every committed change once and of no change that
//! rolled back.
//!
//! A record's `data` never holds the value of a sensitive field: an update
//! names the keys it changed and gives only the values that are not sensitive.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// The kinds of change, as the feed names them (`customer.stage_changed`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum ChangeType {
    #[serde(rename = "customer.created")]
    CustomerCreated,
    #[serde(rename = "customer.updated")]
    CustomerUpdated,
    #[serde(rename = "customer.stage_changed")]
    StageChanged,
    #[serde(rename = "customer.band_changed")]
    BandChanged,
    #[serde(rename = "customer.segment_joined")]
    SegmentJoined,
    #[serde(rename = "customer.segment_left")]
    SegmentLeft,
    #[serde(rename = "customer.tag_added")]
    TagAdded,
    #[serde(rename = "customer.tag_removed")]
    TagRemoved,
    #[serde(rename = "follow_up.created")]
    FollowUpCreated,
    #[serde(rename = "follow_up.done")]
    FollowUpDone,
    #[serde(rename = "plugin.activated")]
    PluginActivated,
    #[serde(rename = "plugin.rolled_back")]
    PluginRolledBack,
    #[serde(rename = "plugin.suspended")]
    PluginSuspended,
}

impl ChangeType {
    pub const ALL: [ChangeType; 13] = [
        ChangeType::CustomerCreated,
        ChangeType::CustomerUpdated,
        ChangeType::StageChanged,
        ChangeType::BandChanged,
        ChangeType::SegmentJoined,
        ChangeType::SegmentLeft,
        ChangeType::TagAdded,
        ChangeType::TagRemoved,
        ChangeType::FollowUpCreated,
        ChangeType::FollowUpDone,
        ChangeType::PluginActivated,
        ChangeType::PluginRolledBack,
        ChangeType::PluginSuspended,
    ];

    /// The name in the feed and in filters.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::CustomerCreated => "customer.created",
            ChangeType::CustomerUpdated => "customer.updated",
            ChangeType::StageChanged => "customer.stage_changed",
            ChangeType::BandChanged => "customer.band_changed",
            ChangeType::SegmentJoined => "customer.segment_joined",
            ChangeType::SegmentLeft => "customer.segment_left",
            ChangeType::TagAdded => "customer.tag_added",
            ChangeType::TagRemoved => "customer.tag_removed",
            ChangeType::FollowUpCreated => "follow_up.created",
            ChangeType::FollowUpDone => "follow_up.done",
            ChangeType::PluginActivated => "plugin.activated",
            ChangeType::PluginRolledBack => "plugin.rolled_back",
            ChangeType::PluginSuspended => "plugin.suspended",
        }
    }

    /// The type named `s`, or an error that lists the known ones.
    pub fn parse(s: &str) -> Result<ChangeType, String> {
        ChangeType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = ChangeType::ALL.iter().map(|t| t.as_str()).collect();
                format!(
                    "unknown change type {s:?}; the types are {}",
                    known.join(", ")
                )
            })
    }
}

/// A change about to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChange {
    pub kind: ChangeType,
    /// The customer it is about; `None` for a plugin's activation and the like.
    pub customer_id: Option<String>,
    pub data: Json,
}

impl NewChange {
    pub fn customer(kind: ChangeType, customer_id: &str, data: Json) -> NewChange {
        NewChange {
            kind,
            customer_id: Some(customer_id.to_string()),
            data,
        }
    }
}

/// A change as the feed serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Change {
    /// Unique and stable: a webhook delivering this change sends it as
    /// `webhook-id`, and a redelivery sends the same.
    pub id: String,
    /// Where this change is in the tenant's feed: pass it as `after` to read
    /// what came after it.
    pub cursor: String,
    #[serde(rename = "type")]
    pub kind: ChangeType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// When the change took effect (ms since the epoch), as on the timeline.
    pub at: i64,
    /// What changed; its shape depends on the type (see the README's
    /// "Integrations").
    #[schema(value_type = Object)]
    pub data: Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_serialises_to_the_name_it_parses_from() {
        for t in ChangeType::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), Json::from(t.as_str()));
            assert_eq!(ChangeType::parse(t.as_str()), Ok(t));
        }
        let e = ChangeType::parse("customer.deleted").unwrap_err();
        assert!(
            e.contains("customer.deleted") && e.contains("customer.band_changed"),
            "{e}"
        );
    }
}
