//! The snapshot format: how a customer and an event cross into a plugin.
//!
//! A snapshot is MessagePack. A customer is a map with the keys below; a batch is an
//! array of them. Keys whose value is empty or absent may be left out, and decoders
//! ignore keys they do not know, so the format can grow without breaking plugins.
//! `docs/SNAPSHOT.md` describes the same thing for authors in other languages.
//!
//! The same types encode (in the host) and decode (in the guest), so the two sides
//! cannot drift apart. Strings are borrowed from the input buffer: decoding a
//! customer allocates only its lists.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds since the Unix epoch, UTC.
pub type Timestamp = i64;

/// One millisecond-timestamp day.
pub const DAY_MS: i64 = 86_400_000;

/// Figures the host computes from a customer's orders and touchpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metrics {
    /// Orders placed.
    pub orders: u32,
    /// Distinct days with at least one order (repeat buying is counted in days).
    pub purchase_days: u32,
    /// Sum of order amounts, in cents.
    pub total_spend_cents: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_order_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_order_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_contact_at: Option<Timestamp>,
    /// Complaints received.
    pub complaints: u32,
    /// New customers this one referred.
    pub referrals: u32,
    /// Touchpoints (any event) in the 90 days before `now`.
    pub touchpoints_90d: u32,
}

/// A field value. In MessagePack: a string is text, a float is a number, a bool is a
/// boolean and an integer is a timestamp in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Text(&'a str),
    Number(f64),
    Boolean(bool),
    Time(Timestamp),
}

impl<'a> Value<'a> {
    /// The number, if this is one.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }
    /// The text, if this is text.
    pub fn as_text(&self) -> Option<&'a str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl Serialize for Value<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Text(t) => s.serialize_str(t),
            Value::Number(n) => s.serialize_f64(*n),
            Value::Boolean(b) => s.serialize_bool(*b),
            Value::Time(t) => s.serialize_i64(*t),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Value<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, float, bool or integer timestamp")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Value::Text(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Value::Number(v))
            }
            fn visit_f32<E: de::Error>(self, v: f32) -> Result<Self::Value, E> {
                Ok(Value::Number(v as f64))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Value::Boolean(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Value::Time(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(Value::Time)
                    .map_err(|_| E::custom("timestamp out of range"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Named values on a customer or event, in a stable order. Encoded as a map.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields<'a>(pub Vec<(&'a str, Value<'a>)>);

impl<'a> Fields<'a> {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of field names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0));
                while let Some((k, v)) = a.next_entry::<&'de str, Value<'de>>()? {
                    out.push((k, v));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A touchpoint, order, complaint or any other thing that happened to a customer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event<'a> {
    /// What happened: `order`, `inquiry`, `visit`, `complaint`, `referral`, ...
    #[serde(borrow)]
    pub kind: &'a str,
    /// Where it happened: `web`, `phone`, `event`, `rep-visit`, ...
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
    pub at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
    #[serde(borrow, skip_serializing_if = "Fields::is_empty")]
    pub fields: Fields<'a>,
}

/// Everything a plugin may know about one customer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Customer<'a> {
    #[serde(borrow)]
    pub id: &'a str,
    /// Current lifecycle stage id, if any.
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    pub stage: Option<&'a str>,
    /// Source channel the customer came from.
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    pub source: Option<&'a str>,
    pub created_at: Timestamp,
    pub metrics: Metrics,
    /// Present only if the manifest `reads` tags.
    #[serde(borrow, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<&'a str>,
    /// Present only if the manifest `reads` segments.
    #[serde(borrow, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<&'a str>,
    /// Present only if the manifest `reads` fields; sensitive ones only if granted.
    #[serde(borrow, skip_serializing_if = "Fields::is_empty")]
    pub fields: Fields<'a>,
    /// Recent events, newest first. Present only if the manifest `reads` events.
    #[serde(borrow, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event<'a>>,
}

impl<'a> Customer<'a> {
    /// Whether the customer carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.contains(&tag)
    }
    /// Whole days from `at` to `now`, or `None` if `at` is absent.
    pub fn days_since(now: Timestamp, at: Option<Timestamp>) -> Option<f64> {
        at.map(|t| (now - t) as f64 / DAY_MS as f64)
    }
}

/// Why a snapshot could not be encoded or decoded.
#[derive(Debug)]
pub struct SnapshotError(pub String);

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SnapshotError {}

/// Encodes a batch of customers.
pub fn encode_batch(batch: &[Customer<'_>]) -> Result<Vec<u8>, SnapshotError> {
    rmp_serde::to_vec_named(batch).map_err(|e| SnapshotError(e.to_string()))
}

/// Encodes one customer (for `on-event`).
pub fn encode_customer(c: &Customer<'_>) -> Result<Vec<u8>, SnapshotError> {
    rmp_serde::to_vec_named(c).map_err(|e| SnapshotError(e.to_string()))
}

/// Encodes one event.
pub fn encode_event(e: &Event<'_>) -> Result<Vec<u8>, SnapshotError> {
    rmp_serde::to_vec_named(e).map_err(|e| SnapshotError(e.to_string()))
}

/// Decodes a batch of customers, borrowing strings from `bytes`.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Customer<'_>>, SnapshotError> {
    rmp_serde::from_slice(bytes).map_err(|e| SnapshotError(format!("bad customer batch: {e}")))
}

/// Decodes one customer.
pub fn decode_customer(bytes: &[u8]) -> Result<Customer<'_>, SnapshotError> {
    rmp_serde::from_slice(bytes).map_err(|e| SnapshotError(format!("bad customer: {e}")))
}

/// Decodes one event.
pub fn decode_event(bytes: &[u8]) -> Result<Event<'_>, SnapshotError> {
    rmp_serde::from_slice(bytes).map_err(|e| SnapshotError(format!("bad event: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Customer<'static> {
        Customer {
            id: "c-1",
            stage: Some("prospect"),
            source: Some("web"),
            created_at: 1_000,
            metrics: Metrics {
                orders: 3,
                purchase_days: 2,
                total_spend_cents: 12_345,
                last_order_at: Some(5_000),
                ..Default::default()
            },
            tags: vec!["promotions", "vip"],
            segments: vec![],
            fields: Fields(vec![
                ("industry", Value::Text("retail")),
                ("employees", Value::Number(40.0)),
                ("verified", Value::Boolean(true)),
                ("renewal", Value::Time(9_000)),
            ]),
            events: vec![Event {
                kind: "order",
                channel: Some("web"),
                at: 5_000,
                amount_cents: Some(4_000),
                fields: Fields::default(),
            }],
        }
    }

    #[test]
    fn batch_round_trips_with_every_value_kind() {
        let batch = vec![
            sample(),
            Customer {
                id: "c-2",
                ..Default::default()
            },
        ];
        let bytes = encode_batch(&batch).unwrap();
        assert_eq!(decode_batch(&bytes).unwrap(), batch);
    }

    #[test]
    fn unknown_keys_are_ignored_and_missing_ones_default() {
        #[derive(Serialize)]
        struct Future<'a> {
            id: &'a str,
            loyalty_points: u32,
        }
        let bytes = rmp_serde::to_vec_named(&vec![Future {
            id: "x",
            loyalty_points: 7,
        }])
        .unwrap();
        let got = decode_batch(&bytes).unwrap();
        assert_eq!(got[0].id, "x");
        assert_eq!(got[0].metrics, Metrics::default());
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = decode_batch(&[0xc1, 0x00]).unwrap_err();
        assert!(err.0.starts_with("bad customer batch"), "{err}");
    }
}
