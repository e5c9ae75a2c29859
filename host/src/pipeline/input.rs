//! What a client sends: an event, checked.

use super::*;

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

pub(super) fn trunc(s: &str) -> String {
    s.chars().take(40).collect()
}
