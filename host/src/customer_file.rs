//! Customers as JSON files, the form `stagecraft plugin run --customers` reads.
//!
//! ```json
//! [{"id": "c1", "stage": "prospect", "source": "web", "created_at": 1700000000000,
//!   "metrics": {"orders": 3, "purchase_days": 2, "total_spend_cents": 12000},
//!   "tags": ["promotions"], "fields": {"industry": "retail", "seats": 40, "renews": {"time": 1710000000000}},
//!   "events": [{"kind": "order", "at": 1700000000000, "amount_cents": 4000}]}]
//! ```
//! Field values: a string is text, a number is a number, a boolean is a boolean and
//! `{"time": ms}` is a timestamp.

use serde::Deserialize;
use stagecraft_plugin::snapshot::{self, Metrics};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FieldJson {
    Text(String),
    Number(f64),
    Boolean(bool),
    Time { time: i64 },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventJson {
    pub kind: String,
    #[serde(default)]
    pub channel: Option<String>,
    pub at: i64,
    #[serde(default)]
    pub amount_cents: Option<i64>,
    #[serde(default)]
    pub fields: BTreeMap<String, FieldJson>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerJson {
    pub id: String,
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub segments: Vec<String>,
    #[serde(default)]
    pub fields: BTreeMap<String, FieldJson>,
    #[serde(default)]
    pub events: Vec<EventJson>,
}

fn fields(map: &BTreeMap<String, FieldJson>) -> snapshot::Fields<'_> {
    snapshot::Fields(
        map.iter()
            .map(|(k, v)| {
                let v = match v {
                    FieldJson::Text(s) => snapshot::Value::Text(s),
                    FieldJson::Number(n) => snapshot::Value::Number(*n),
                    FieldJson::Boolean(b) => snapshot::Value::Boolean(*b),
                    FieldJson::Time { time } => snapshot::Value::Time(*time),
                };
                (k.as_str(), v)
            })
            .collect(),
    )
}

impl EventJson {
    pub fn snapshot(&self) -> snapshot::Event<'_> {
        snapshot::Event {
            kind: &self.kind,
            channel: self.channel.as_deref(),
            at: self.at,
            amount_cents: self.amount_cents,
            fields: fields(&self.fields),
        }
    }
}

impl CustomerJson {
    /// The snapshot view of this customer, borrowing its strings.
    pub fn snapshot(&self) -> snapshot::Customer<'_> {
        snapshot::Customer {
            id: &self.id,
            stage: self.stage.as_deref(),
            source: self.source.as_deref(),
            created_at: self.created_at,
            metrics: self.metrics,
            tags: self.tags.iter().map(String::as_str).collect(),
            segments: self.segments.iter().map(String::as_str).collect(),
            fields: fields(&self.fields),
            events: self.events.iter().map(EventJson::snapshot).collect(),
        }
    }
}

/// Parses a JSON array of customers.
pub fn parse(json: &str) -> Result<Vec<CustomerJson>, serde_json::Error> {
    serde_json::from_str(json)
}
