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
#[serde(try_from = "serde_json::Value")]
pub enum FieldJson {
    Text(String),
    Number(f64),
    Boolean(bool),
    Time { time: i64 },
}

impl TryFrom<serde_json::Value> for FieldJson {
    type Error = String;

    /// Says what a field value may be (an untagged enum's error said only
    /// that it matched no variant).
    fn try_from(v: serde_json::Value) -> Result<FieldJson, String> {
        use serde_json::Value as J;
        match &v {
            J::String(s) => return Ok(FieldJson::Text(s.clone())),
            J::Number(n) => {
                if let Some(f) = n.as_f64() {
                    return Ok(FieldJson::Number(f));
                }
            }
            J::Bool(b) => return Ok(FieldJson::Boolean(*b)),
            J::Object(o) if o.len() == 1 => {
                if let Some(t) = o.get("time").and_then(J::as_i64) {
                    return Ok(FieldJson::Time { time: t });
                }
            }
            _ => {}
        }
        let shown = v.to_string();
        let shown: String = shown.chars().take(60).collect();
        Err(format!(
            "a field value is text, a number, a boolean or {{\"time\": ms}}, not {shown}"
        ))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_field_value_is_named_with_what_a_value_may_be() {
        let e = serde_json::from_str::<Vec<CustomerJson>>(
            r#"[{"id": "c1", "fields": {"seats": [1, 2]}}]"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("a field value is text, a number, a boolean or {\"time\": ms}, not [1,2]"),
            "{e}"
        );
        let ok: Vec<CustomerJson> = serde_json::from_str(
            r#"[{"id": "c1", "fields": {"a": "x", "b": 2.5, "c": true, "d": {"time": 7}}}]"#,
        )
        .unwrap();
        assert!(matches!(ok[0].fields["d"], FieldJson::Time { time: 7 }));
        assert!(matches!(ok[0].fields["b"], FieldJson::Number(n) if n == 2.5));
    }
}
