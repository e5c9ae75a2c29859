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

/// The latest time the host evaluates at: the end of year 9999 (UTC).
pub const LATEST: i64 = 253_402_300_799_999;

/// Checks a `now` a client gives (a rescore's, a dry-run's, an import's): from
/// 1970 to the end of year 9999, so that every window computed back from it
/// (90 days of touchpoints) is a time too.
pub fn check_as_of(now: i64) -> Result<(), String> {
    if (0..=LATEST).contains(&now) {
        Ok(())
    } else {
        Err(format!("now {now} is before 1970 or after the year 9999"))
    }
}

/// The host's one clock: everything the host does "now" (the `now` plugins are
/// told, when a wake is due, when a follow-up is done) reads it, so tests and
/// demos can move time ("46 days later") without sleeping, and every service of
/// one application sees the same time.
///
/// It runs with the system's time until [`Clock::set`] or [`Clock::advance`]
/// holds it at a time of their choosing; from then on it stands still except
/// when moved. Clones share one clock.
#[derive(Clone, Debug, Default)]
pub struct Clock(std::sync::Arc<ClockState>);

#[derive(Debug, Default)]
struct ClockState {
    /// `Some` once moved by hand: the time it stands at.
    held: std::sync::Mutex<Option<i64>>,
    /// Woken whenever the clock is moved, so that whoever waits for a time
    /// (the wake worker) looks again at once.
    moved: tokio::sync::Notify,
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock standing at `at` (ms since the epoch) until moved.
    pub fn at(at: i64) -> Clock {
        let c = Clock::default();
        c.set(at);
        c
    }

    /// Now, in milliseconds since the epoch.
    pub fn now(&self) -> i64 {
        self.held().unwrap_or_else(super::now_ms)
    }

    /// Holds the clock at `at`.
    pub fn set(&self, at: i64) {
        *self.0.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
        self.0.moved.notify_waiters();
    }

    /// Moves the clock `ms` forward (from the system's time if it was running).
    pub fn advance(&self, ms: i64) {
        let at = self.now() + ms;
        self.set(at);
    }

    /// Whether the clock was moved by hand (it then stands still).
    pub fn is_held(&self) -> bool {
        self.held().is_some()
    }

    fn held(&self) -> Option<i64> {
        *self.0.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when the clock is next moved by hand.
    pub async fn moved(&self) {
        self.0.moved.notified().await
    }
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn a_held_clock_stands_still_until_moved_and_clones_share_it() {
        let c = Clock::system();
        assert!(!c.is_held());
        assert!((c.now() - super::super::now_ms()).abs() < 60_000);
        let shared = c.clone();
        c.set(1_000);
        assert_eq!(shared.now(), 1_000);
        shared.advance(46 * 86_400_000);
        assert_eq!(c.now(), 1_000 + 46 * 86_400_000);
        assert!(c.is_held());
    }
}

/// A cron expression as schedules take it: five fields (minute hour
/// day-of-month month day-of-week) or six with seconds first, evaluated in UTC,
/// parsed by `croner` (ranges, lists, steps, names, `L`, `W`, `#`, `@daily`...).
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    let expr = expr.trim();
    if expr.is_empty() || expr.len() > 120 {
        return Err("a cron expression is 1 to 120 characters".into());
    }
    croner::parser::CronParser::new()
        .parse(expr)
        .map_err(|e| format!("{expr:?} is not a cron expression: {e}"))
}

/// The first occurrence of `cron` strictly after `after` (ms), if any.
pub fn next_occurrence(cron: &croner::Cron, after: i64) -> Option<i64> {
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(after)?;
    cron.find_next_occurrence(&t, false)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod cron_tests {
    use super::*;

    #[test]
    fn nightly_occurs_at_three_every_day_and_nonsense_is_refused() {
        let c = parse_cron("0 3 * * *").unwrap();
        // 2026-01-05T00:00Z → 03:00 that day, then the next day.
        let t0 = 1_767_571_200_000;
        let first = next_occurrence(&c, t0).unwrap();
        assert_eq!(first, t0 + 3 * 3_600_000);
        assert_eq!(next_occurrence(&c, first), Some(first + 86_400_000));
        assert!(parse_cron("61 * * * *")
            .unwrap_err()
            .contains("not a cron expression"));
        assert!(parse_cron("").is_err());
        assert!(parse_cron("@daily").is_ok());
    }
}
