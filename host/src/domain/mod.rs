//! The domain: the vocabulary every room shares, and nothing else of the host.
//! The CRM's own records (customers, events, principals), what plugins describe
//! and return ([`plugin`]: reasons, actions, manifests), the limits and text
//! rules ([`text`]), and times as clients write them ([`time`]).
//!
//! Times are milliseconds since the Unix epoch, UTC. Field values travel as plain
//! JSON (a string, a number, a boolean, or `{"time": ms}`), so API clients never
//! see the plugin contract's encoding.

pub mod changes;
pub mod plugin;
pub mod text;
pub mod time;

pub use plugin::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use stagecraft_plugin::snapshot::{self, Metrics, DAY_MS};

/// Keys that are sensitive whatever the client says: they are withheld from plugins.
pub const ALWAYS_SENSITIVE: [&str; 3] = ["phone", "email", "national_id"];

/// Upper bounds on what one request may carry.
pub const MAX_FIELDS: usize = 64;
pub const MAX_TAGS: usize = 64;
pub const MAX_TEXT: usize = 1024;
pub const MAX_ID: usize = 128;
/// Per customer, whoever adds them (a client or plugins, event after event).
pub const MAX_CUSTOMER_TAGS: usize = 256;
pub const MAX_CUSTOMER_FIELDS: usize = 256;
pub const MAX_OPEN_FOLLOW_UPS: u32 = 100;
/// How far ahead a plugin may schedule anything (a follow-up, a wake): two years.
pub const HORIZON_MS: i64 = 731 * 24 * 3_600_000;

/// What a token may do. Each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Agent,
    Integrator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Agent => "agent",
            Role::Integrator => "integrator",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "viewer" => Role::Viewer,
            "agent" => Role::Agent,
            "integrator" => Role::Integrator,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// Who is asking: the tenant and role of a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub role: Role,
    pub token_id: String,
    /// The token's label: the agent it stands for (`owner=me` in a work list).
    pub agent: String,
}

/// A field on a customer, as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldEntry {
    pub key: String,
    pub value: FieldValue,
    pub sensitive: bool,
}

/// A customer with what the pipeline needs to build a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerRecord {
    pub id: String,
    pub name: Option<String>,
    pub source: Option<String>,
    pub stage: Option<String>,
    /// The agent who looks after the customer.
    pub owner: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Stored metrics; `touchpoints_90d` is filled in relative to a `now`.
    pub metrics: Metrics,
    pub fields: Vec<FieldEntry>,
    pub tags: Vec<String>,
    pub segments: Vec<String>,
}

/// One recorded event, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: String,
    pub kind: String,
    pub channel: Option<String>,
    pub at: i64,
    pub amount_cents: Option<i64>,
    pub fields: Vec<(String, FieldValue)>,
}

impl EventRecord {
    pub fn snapshot(&self) -> snapshot::Event<'_> {
        snapshot::Event {
            kind: &self.kind,
            channel: self.channel.as_deref(),
            at: self.at,
            amount_cents: self.amount_cents,
            fields: snapshot::Fields(
                self.fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), snapshot_value(v)))
                    .collect(),
            ),
        }
    }
}

/// A customer as a plugin sees it: sensitive fields are left out.
pub fn customer_snapshot<'a>(
    c: &'a CustomerRecord,
    events: &'a [EventRecord],
) -> snapshot::Customer<'a> {
    customer_snapshot_granted(c, events, &[])
}

/// A customer as a plugin sees it, with the sensitive fields in `granted` (an
/// admin's grant of what the plugin's manifest asks for) and no others.
pub fn customer_snapshot_granted<'a>(
    c: &'a CustomerRecord,
    events: &'a [EventRecord],
    granted: &[String],
) -> snapshot::Customer<'a> {
    snapshot::Customer {
        id: &c.id,
        stage: c.stage.as_deref(),
        source: c.source.as_deref(),
        created_at: c.created_at,
        metrics: c.metrics,
        tags: c.tags.iter().map(String::as_str).collect(),
        segments: c.segments.iter().map(String::as_str).collect(),
        fields: snapshot::Fields(
            c.fields
                .iter()
                .filter(|f| !f.sensitive || granted.contains(&f.key))
                .map(|f| (f.key.as_str(), snapshot_value(&f.value)))
                .collect(),
        ),
        events: events.iter().map(EventRecord::snapshot).collect(),
    }
}

/// The values of `c`'s sensitive fields that `granted` lets a plugin see: what
/// its session must keep out of logs and errors (the runtime's `Session::withhold`).
pub fn granted_secrets(c: &CustomerRecord, granted: &[String]) -> Vec<String> {
    if granted.is_empty() {
        return Vec::new();
    }
    c.fields
        .iter()
        .filter(|f| f.sensitive && granted.contains(&f.key))
        .filter_map(|f| match &f.value {
            FieldValue::Text(t) => Some(t.clone()),
            FieldValue::Number(n) => Some(n.to_string()),
            FieldValue::Boolean(_) | FieldValue::Time(_) => None,
        })
        .collect()
}

fn snapshot_value(v: &FieldValue) -> snapshot::Value<'_> {
    match v {
        FieldValue::Text(t) => snapshot::Value::Text(t),
        FieldValue::Number(n) => snapshot::Value::Number(*n),
        FieldValue::Boolean(b) => snapshot::Value::Boolean(*b),
        FieldValue::Time(t) => snapshot::Value::Time(*t),
    }
}

/// A field value from its JSON form.
pub fn field_value_from_json(key: &str, v: &Json) -> Result<FieldValue, String> {
    Ok(match v {
        Json::String(s) => match text::text_problem(s, MAX_TEXT) {
            None => FieldValue::Text(s.clone()),
            Some(p) => return Err(format!("field {key} {p}")),
        },
        Json::Number(n) => match n.as_f64() {
            Some(x) if x.is_finite() => FieldValue::Number(x),
            _ => return Err(format!("field {key} is not a finite number")),
        },
        Json::Bool(b) => FieldValue::Boolean(*b),
        Json::Object(o) if o.len() == 1 && o.get("time").is_some_and(Json::is_i64) => {
            FieldValue::Time(o["time"].as_i64().unwrap_or_default())
        }
        _ => {
            return Err(format!(
                "field {key} must be a string, a number, a boolean or {{\"time\": ms}}"
            ))
        }
    })
}

/// The JSON form of a field value.
pub fn field_value_to_json(v: &FieldValue) -> Json {
    match v {
        FieldValue::Text(t) => json!(t),
        FieldValue::Number(n) => json!(n),
        FieldValue::Boolean(b) => json!(b),
        FieldValue::Time(t) => json!({ "time": t }),
    }
}

/// `true` for 1-64 characters of `[a-z0-9_-]` (field keys, event kinds, channels).
pub fn is_slug(s: &str) -> bool {
    text::is_slug(s, 64)
}

/// Checks an idempotency key, however it arrives (the API's `Idempotency-Key`
/// header, an import's `idempotency_key` column): 1-128 bytes, no control
/// characters at all (a tab neither). One rule for both.
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 128 {
        return Err(format!(
            "the idempotency key must be 1-128 bytes; it is {}",
            key.len()
        ));
    }
    match key.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "the idempotency key contains the control character U+{:04X}",
            c as u32
        )),
        None => Ok(()),
    }
}

/// `true` for a customer id: 1-128 printable ASCII characters without `/`.
pub fn is_customer_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

/// The UTC day number of a timestamp: purchase days are counted in these.
pub fn day_of(at: i64) -> i64 {
    at.div_euclid(DAY_MS)
}

/// How an event changes the stored metrics. `new_purchase_day` says whether no
/// order was recorded on the event's day before.
pub fn apply_event(
    m: &mut Metrics,
    kind: &str,
    at: i64,
    amount: Option<i64>,
    new_purchase_day: bool,
) {
    match kind {
        "order" => {
            m.orders += 1;
            m.total_spend_cents += amount.unwrap_or(0);
            if new_purchase_day {
                m.purchase_days += 1;
            }
            m.first_order_at = Some(m.first_order_at.map_or(at, |f| f.min(at)));
            m.last_order_at = Some(m.last_order_at.map_or(at, |l| l.max(at)));
        }
        "complaint" => m.complaints += 1,
        "referral" => m.referrals += 1,
        _ => {}
    }
    m.last_contact_at = Some(m.last_contact_at.map_or(at, |l| l.max(at)));
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_fields_never_reach_a_plugin() {
        let field = |key: &str, sensitive| FieldEntry {
            key: key.into(),
            value: FieldValue::Text("x".into()),
            sensitive,
        };
        let c = CustomerRecord {
            id: "c".into(),
            name: None,
            source: None,
            stage: None,
            owner: None,
            created_at: 0,
            updated_at: 0,
            metrics: Metrics::default(),
            fields: vec![
                field("industry", false),
                field("email", true),
                field("salary", true),
            ],
            tags: vec![],
            segments: vec![],
        };
        let snap = customer_snapshot(&c, &[]);
        let keys: Vec<&str> = snap.fields.0.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["industry"]);
        let bytes = stagecraft_plugin::snapshot::encode_customer(&snap).unwrap();
        assert!(
            !bytes.windows(5).any(|w| w == b"email"),
            "not even the key is sent"
        );
    }
}
