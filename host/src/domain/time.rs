//! Times as clients write them, read into milliseconds since the epoch.

/// A time as milliseconds: an integer of ms, `YYYYMMDD`, `YYYY-MM-DD` (midnight
/// UTC), or an RFC 3339 time (`2026-01-10T10:00:00Z`, `...+08:00`, fractions of a
/// second to the millisecond). Calendar work is `jiff`'s: an impossible date
/// (`2024-02-30`) is not a time.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
        let d = jiff::civil::Date::strptime("%Y%m%d", s).ok()?;
        return midnight_utc(d);
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    if s.len() == 10 {
        return midnight_utc(s.parse::<jiff::civil::Date>().ok()?);
    }
    Some(s.parse::<jiff::Timestamp>().ok()?.as_millisecond())
}

fn midnight_utc(d: jiff::civil::Date) -> Option<i64> {
    Some(
        d.to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp()
            .as_millisecond(),
    )
}

/// Deserializes a time given as milliseconds since the epoch or as a string
/// [`parse_time`] reads (an RFC 3339 time, a date): what clients send in `at`
/// and `created_at`.
pub fn de_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::Deserialize;
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Time {
        Ms(i64),
        Text(String),
    }
    match Option::<Time>::deserialize(d)? {
        None => Ok(None),
        Some(Time::Ms(ms)) => Ok(Some(ms)),
        Some(Time::Text(t)) => parse_time(&t).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{:?} is not a time: give milliseconds since the epoch, an RFC 3339 time such as 2026-01-10T10:00:00Z, or a date",
                t.chars().take(40).collect::<String>()
            ))
        }),
    }
}
