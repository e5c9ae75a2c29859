//! Fitness studio: churn risk and retention.
//!
//! Keeping a member is cheaper than finding a new one. The pack scores each
//! member's **churn risk** (0–100) from three signals — attendance falling behind
//! the member's own rhythm, missed payments, and a membership about to end — and
//! segments members into `new`, `loyal`, `at-risk` and `lapsed`. When a
//! price-sensitive member becomes at risk, it tags a cheaper or group-plan offer
//! and schedules a follow-up, instead of letting them go.
//!
//! It keeps its verdicts current without events (contract 0.2.0): after every
//! event and every wake it asks to be woken when the member's band or segments
//! would next change with time alone — the day they would lapse, fall at risk
//! or out of `new`, or their membership ends — so a member who stops coming is
//! `lapsed` on the configured day with nobody posting anything. Its follow-ups
//! are keyed: `offer` (the plan offer) and `win-back` (when a member lapses),
//! each closed when it no longer applies (the member came back, or lapsed).
//!
//! It keeps what it needs on the customer as fields, updated from events:
//! `last_visit_at`, `avg_visit_gap_days` (a smoothed average of the days between
//! visits), `missed_payments` and `membership_ends`. Staff set `price_sensitive`.

use serde::Deserialize;
use stagecraft_plugin::*;

pub const DEFAULT_RULES: &str = r#"{
  "visit_kinds": ["visit", "class"],
  "gap_smoothing": 0.3,
  "default_gap_days": 7,
  "overdue_points_per_gap": 20,
  "max_overdue_points": 40,
  "missed_payment_points": 20,
  "ending_within_days": 30,
  "ending_points": 20,
  "ended_points": 30,
  "at_risk_from": 50,
  "loyal_below": 20,
  "loyal_min_days": 180,
  "new_within_days": 30,
  "lapsed_after_days": 60,
  "offer": "group-plan",
  "offer_follow_up_hours": 24
}"#;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FitnessStudio {
    visit_kinds: Vec<String>,
    #[schemars(extend("exclusiveMinimum" = 0), range(max = 1))]
    gap_smoothing: f64,
    #[schemars(extend("exclusiveMinimum" = 0))]
    default_gap_days: f64,
    #[schemars(range(min = 0))]
    overdue_points_per_gap: f64,
    #[schemars(range(min = 0, max = 100))]
    max_overdue_points: f64,
    #[schemars(range(min = 0))]
    missed_payment_points: f64,
    #[schemars(range(min = 0))]
    ending_within_days: i64,
    #[schemars(range(min = 0))]
    ending_points: f64,
    #[schemars(range(min = 0))]
    ended_points: f64,
    #[schemars(range(min = 0, max = 100))]
    at_risk_from: f64,
    #[schemars(range(min = 0, max = 100))]
    loyal_below: f64,
    #[schemars(range(min = 0))]
    loyal_min_days: i64,
    #[schemars(range(min = 0))]
    new_within_days: i64,
    #[schemars(range(min = 1))]
    lapsed_after_days: i64,
    #[schemars(extend("enum" = ["group-plan", "cheaper-plan"]))]
    offer: String,
    #[schemars(range(min = 1, max = 8760))]
    offer_follow_up_hours: u32,
}

/// What the pack knows about a member, from fields and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Member {
    created_at: Timestamp,
    last_visit_at: Option<Timestamp>,
    avg_gap_days: Option<f64>,
    missed_payments: u32,
    membership_ends: Option<Timestamp>,
    price_sensitive: bool,
}

impl Member {
    fn of(c: &Customer) -> Member {
        let time = |k: &str| match c.fields.get(k) {
            Some(Value::Time(t)) => Some(t),
            _ => None,
        };
        let number = |k: &str| c.fields.get(k).and_then(|v| v.as_number());
        Member {
            created_at: c.created_at,
            last_visit_at: time("last_visit_at"),
            avg_gap_days: number("avg_visit_gap_days"),
            missed_payments: number("missed_payments").unwrap_or(0.0).max(0.0) as u32,
            membership_ends: time("membership_ends"),
            price_sensitive: matches!(c.fields.get("price_sensitive"), Some(Value::Boolean(true))),
        }
    }
}

fn days(now: Timestamp, at: Timestamp) -> f64 {
    (now - at) as f64 / DAY_MS as f64
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl FitnessStudio {
    /// The churn risk and its reasons.
    fn risk(&self, now: Timestamp, m: &Member) -> (f64, Vec<Reason>) {
        let mut reasons = Vec::new();
        let mut total = 0.0;
        let gap = m.avg_gap_days.unwrap_or(self.default_gap_days).max(0.5);
        match m.last_visit_at {
            Some(last) => {
                let since = days(now, last).max(0.0);
                let behind = since / gap - 1.0;
                let p = (behind * self.overdue_points_per_gap).clamp(0.0, self.max_overdue_points);
                if p > 0.0 {
                    total += p;
                    reasons.push(Reason::new("overdue", p).args([since.floor(), round1(gap)]));
                }
            }
            None if days(now, m.created_at) > self.new_within_days as f64 => {
                let p = self.max_overdue_points;
                total += p;
                reasons.push(Reason::new("no_visits", p));
            }
            None => {}
        }
        if m.missed_payments > 0 {
            let p = m.missed_payments as f64 * self.missed_payment_points;
            total += p;
            reasons.push(Reason::new("missed_payments", p).args([m.missed_payments as f64]));
        }
        if let Some(end) = m.membership_ends {
            let left = days(end, now);
            if left < 0.0 {
                total += self.ended_points;
                reasons.push(
                    Reason::new("membership_ended", self.ended_points).args([(-left).floor()]),
                );
            } else if left <= self.ending_within_days as f64 {
                total += self.ending_points;
                reasons
                    .push(Reason::new("membership_ending", self.ending_points).args([left.ceil()]));
            }
        }
        (total.min(100.0), reasons)
    }

    fn lapsed(&self, now: Timestamp, m: &Member) -> bool {
        m.membership_ends.is_some_and(|e| e < now)
            || m.last_visit_at
                .is_some_and(|l| days(now, l) >= self.lapsed_after_days as f64)
    }

    /// The next time after `now` at which the member's band or segments change
    /// with time alone: the wake the pack asks for. Risk grows with the days
    /// since the last visit (until capped) and steps at the membership's end
    /// and the window before it; segments change when the member stops being
    /// new, may become loyal, or lapses.
    fn next_change(&self, now: Timestamp, m: &Member) -> Option<Timestamp> {
        let day = |d: f64| (d * DAY_MS as f64).ceil() as i64;
        if self.lapsed(now, m) {
            // Lapsed stays lapsed until a visit; only the membership's end
            // still moves the risk.
            let end = m.membership_ends.filter(|&e| e > now);
            return end
                .into_iter()
                .chain(end.map(|e| e - day(self.ending_within_days as f64)))
                .filter(|&t| t > now)
                .min();
        }
        let mut at = vec![
            m.created_at + day(self.new_within_days as f64),
            m.created_at + day(self.loyal_min_days as f64),
        ];
        if let Some(last) = m.last_visit_at {
            at.push(last + day(self.lapsed_after_days as f64));
            // Overdue points grow as (days since / gap - 1) x points per gap:
            // the days at which the risk reaches each band's threshold.
            let gap = m.avg_gap_days.unwrap_or(self.default_gap_days).max(0.5);
            let (risk, _) = self.risk(now, m);
            let overdue = risk
                - self
                    .risk(
                        now,
                        &Member {
                            last_visit_at: Some(now),
                            ..*m
                        },
                    )
                    .0;
            for threshold in [self.at_risk_from, self.loyal_below] {
                let need = threshold - (risk - overdue);
                if need > 0.0
                    && need <= self.max_overdue_points
                    && self.overdue_points_per_gap > 0.0
                {
                    at.push(last + day(gap * (1.0 + need / self.overdue_points_per_gap)));
                }
            }
        }
        if let Some(end) = m.membership_ends {
            at.push(end);
            at.push(end - day(self.ending_within_days as f64));
        }
        at.into_iter().filter(|&t| t > now).min()
    }

    /// What the pack asks after an event or a wake, once the member is `m` at
    /// `now`: the next wake, and its follow-ups kept to what still applies.
    fn keep_current(&self, now: Timestamp, m: &Member, actions: &mut Vec<Action>) {
        if self.lapsed(now, m) {
            // An offer to keep them is late; winning them back is not.
            actions.push(Action::CloseFollowUp("offer".into()));
            actions.push(Action::FollowUp {
                key: "win-back".into(),
                due: now + DAY_MS,
                note: match m.last_visit_at {
                    Some(l) => format!("Win back: no visit for {:.0} days", days(now, l).floor()),
                    None => "Win back: their membership ended".to_string(),
                },
            });
        } else {
            actions.push(Action::CloseFollowUp("win-back".into()));
            if self.risk(now, m).0 < self.at_risk_from {
                actions.push(Action::CloseFollowUp("offer".into()));
            }
        }
        actions.push(Action::WakeAt(self.next_change(now, m)));
    }

    /// The member after this event, and the field changes that record it.
    fn after_event(&self, mut m: Member, e: &Event) -> (Member, Vec<Action>) {
        let mut actions = Vec::new();
        if self.visit_kinds.iter().any(|k| k == e.kind) {
            if let Some(prev) = m.last_visit_at {
                if e.at > prev {
                    let gap = days(e.at, prev);
                    let avg = match m.avg_gap_days {
                        Some(a) => (1.0 - self.gap_smoothing) * a + self.gap_smoothing * gap,
                        None => gap,
                    };
                    m.avg_gap_days = Some(round1(avg).max(0.1));
                    actions.push(set_number(
                        "avg_visit_gap_days",
                        m.avg_gap_days.unwrap_or(gap),
                    ));
                }
            }
            if m.last_visit_at.is_none_or(|p| e.at > p) {
                m.last_visit_at = Some(e.at);
                actions.push(Action::SetField {
                    key: "last_visit_at".into(),
                    value: FieldValue::Time(e.at),
                });
            }
        }
        match e.kind {
            "payment-missed" => {
                m.missed_payments += 1;
                actions.push(set_number("missed_payments", m.missed_payments as f64));
            }
            "payment" if m.missed_payments > 0 => {
                m.missed_payments = 0;
                actions.push(set_number("missed_payments", 0.0));
            }
            "membership" => {
                if let Some(Value::Time(end)) = e.fields.get("ends_at") {
                    m.membership_ends = Some(end);
                    actions.push(Action::SetField {
                        key: "membership_ends".into(),
                        value: FieldValue::Time(end),
                    });
                }
            }
            _ => {}
        }
        (m, actions)
    }
}

fn set_number(key: &'static str, x: f64) -> Action {
    Action::SetField {
        key: key.into(),
        value: FieldValue::Number(x),
    }
}

impl Plugin for FitnessStudio {
    fn describe() -> Manifest {
        Manifest::new(
            "fitness-studio",
            "1.0.0",
            "Fitness studios: churn risk from attendance, payments and membership end; offers for price-sensitive members at risk",
        )
        .scoring()
        .segmentation()
        .reads(Reads { tags: true, fields: true, ..Default::default() })
        .segment("new", "New members")
        .segment("loyal", "Loyal members")
        .segment("at-risk", "At risk of leaving")
        .segment("lapsed", "Lapsed members")
        .reason("overdue", "last visit {0} days ago, usually every {1} days", Some("上次到访在 {0} 天前，通常每 {1} 天一次"))
        .reason("no_visits", "no visit recorded since joining", Some("入会后没有到访记录"))
        .reason("missed_payments", "{0} missed payments", Some("{0} 次未付款"))
        .reason("membership_ending", "membership ends in {0} days", Some("会籍 {0} 天后到期"))
        .reason("membership_ended", "membership ended {0} days ago", Some("会籍已于 {0} 天前到期"))
        .reason("steady", "attending to their usual rhythm", Some("按平时节奏到访"))
        .reason("joined", "joined {0} days ago", Some("{0} 天前入会"))
        .rules_schema_of::<FitnessStudio>()
        .default_rules(DEFAULT_RULES)
    }

    fn configure(json: &str) -> Result<Self, PluginError> {
        let r: FitnessStudio = rules::parse(json)?;
        rules::ensure(
            r.gap_smoothing > 0.0 && r.gap_smoothing <= 1.0,
            "gap_smoothing must be in (0, 1]",
        )?;
        rules::ensure(
            r.default_gap_days > 0.0,
            "default_gap_days must be positive",
        )?;
        rules::ensure(
            r.loyal_below <= r.at_risk_from,
            "loyal_below must not exceed at_risk_from",
        )?;
        rules::ensure(
            r.offer == "group-plan" || r.offer == "cheaper-plan",
            "offer must be group-plan or cheaper-plan",
        )?;
        rules::ensure(
            r.lapsed_after_days >= 1,
            "lapsed_after_days must be at least 1",
        )?;
        Ok(r)
    }

    fn score(&self, ctx: &Context, c: &Customer) -> Result<Score, PluginError> {
        let m = Member::of(c);
        let (risk, reasons) = self.risk(ctx.now, &m);
        let band = if risk >= self.at_risk_from {
            "high"
        } else if risk >= self.loyal_below {
            "medium"
        } else {
            "low"
        };
        let mut s = Score::new(risk).band(band);
        if reasons.is_empty() {
            s = s.reason(Reason::new("steady", 0.0));
        }
        for r in reasons {
            s = s.reason(r);
        }
        Ok(s)
    }

    fn segment(&self, ctx: &Context, c: &Customer) -> Result<Vec<Membership>, PluginError> {
        let m = Member::of(c);
        let member_days = days(ctx.now, m.created_at);
        if self.lapsed(ctx.now, &m) {
            let (_, reasons) = self.risk(ctx.now, &m);
            let why = reasons
                .into_iter()
                .find(|r| r.code == "membership_ended" || r.code == "overdue")
                .unwrap_or_else(|| Reason::new("membership_ended", 0.0).args([0.0]));
            return Ok(vec![Membership::new("lapsed", why)]);
        }
        let mut out = Vec::new();
        if member_days <= self.new_within_days as f64 {
            out.push(Membership::new(
                "new",
                Reason::new("joined", 0.0).args([member_days.floor().max(0.0)]),
            ));
        }
        let (risk, reasons) = self.risk(ctx.now, &m);
        if risk >= self.at_risk_from {
            let top = reasons
                .into_iter()
                .max_by(|a, b| a.points.total_cmp(&b.points))
                .expect("a risk above zero has a reason");
            out.push(Membership::new("at-risk", top));
        } else if risk < self.loyal_below
            && member_days >= self.loyal_min_days as f64
            && m.last_visit_at.is_some()
        {
            out.push(Membership::new("loyal", Reason::new("steady", 0.0)));
        }
        Ok(out)
    }

    fn on_event(&self, ctx: &Context, c: &Customer, e: &Event) -> Result<Vec<Action>, PluginError> {
        let (m, mut actions) = self.after_event(Member::of(c), e);
        let (risk, reasons) = self.risk(ctx.now, &m);
        let tag = format!("offer:{}", self.offer);
        if risk >= self.at_risk_from
            && m.price_sensitive
            && !self.lapsed(ctx.now, &m)
            && !c.has_tag(&tag)
        {
            let why = match reasons.iter().max_by(|a, b| a.points.total_cmp(&b.points)) {
                Some(r) => r.code.to_string(),
                None => "risk".to_string(),
            };
            let plan = if self.offer == "group-plan" {
                "a group plan"
            } else {
                "a cheaper plan"
            };
            actions.push(Action::AddTag(tag.into()));
            actions.push(Action::FollowUp {
                key: "offer".into(),
                due: ctx.now + self.offer_follow_up_hours as i64 * 3_600_000,
                note: format!(
                    "Offer {plan} before they leave (churn risk {risk:.0}, mainly {why})"
                ),
            });
        }
        self.keep_current(ctx.now, &m, &mut actions);
        Ok(actions)
    }

    fn on_wake(&self, ctx: &Context, c: &Customer) -> Result<Vec<Action>, PluginError> {
        let mut actions = Vec::new();
        self.keep_current(ctx.now, &Member::of(c), &mut actions);
        Ok(actions)
    }
}

register_plugin!(FitnessStudio);

#[cfg(test)]
mod tests {
    use super::*;
    use stagecraft_plugin::testing::{assert_reasons_declared, context, render};

    const NOW: i64 = 1_732_406_400_000;

    fn plugin() -> FitnessStudio {
        FitnessStudio::with_default_rules().unwrap()
    }

    fn member(
        fields: Vec<(&'static str, Value<'static>)>,
        joined_days_ago: i64,
    ) -> Customer<'static> {
        Customer {
            id: "m",
            created_at: NOW - joined_days_ago * DAY_MS,
            fields: Fields(fields),
            ..Default::default()
        }
    }

    fn texts(s: &Score) -> Vec<String> {
        s.reasons
            .iter()
            .map(|r| render(&FitnessStudio::describe(), r))
            .collect()
    }

    #[test]
    fn a_member_on_their_usual_rhythm_is_low_risk_and_loyal() {
        let c = member(
            vec![
                ("last_visit_at", Value::Time(NOW - 3 * DAY_MS)),
                ("avg_visit_gap_days", Value::Number(4.0)),
            ],
            400,
        );
        let s = plugin().score(&context(NOW), &c).unwrap();
        assert_eq!((s.value, s.band.as_deref()), (0.0, Some("low")));
        assert_eq!(texts(&s), ["attending to their usual rhythm"]);
        assert_eq!(
            plugin().segment(&context(NOW), &c).unwrap()[0].segment,
            "loyal"
        );
    }

    #[test]
    fn falling_behind_missed_payments_and_an_ending_membership_add_up() {
        let c = member(
            vec![
                ("last_visit_at", Value::Time(NOW - 12 * DAY_MS)),
                ("avg_visit_gap_days", Value::Number(4.0)),
                ("missed_payments", Value::Number(1.0)),
                ("membership_ends", Value::Time(NOW + 10 * DAY_MS)),
            ],
            400,
        );
        let s = plugin().score(&context(NOW), &c).unwrap();
        // 12 days against a 4-day rhythm: two gaps behind, 40 points (the cap); 20 + 20.
        assert_eq!((s.value, s.band.as_deref()), (80.0, Some("high")));
        assert_eq!(
            texts(&s),
            [
                "last visit 12 days ago, usually every 4 days",
                "1 missed payments",
                "membership ends in 10 days"
            ]
        );
        assert_reasons_declared(&FitnessStudio::describe(), &s.reasons);
        let segs = plugin().segment(&context(NOW), &c).unwrap();
        assert_eq!(segs[0].segment, "at-risk");
    }

    #[test]
    fn visits_keep_the_rhythm_up_to_date() {
        let c = member(
            vec![
                ("last_visit_at", Value::Time(NOW - 10 * DAY_MS)),
                ("avg_visit_gap_days", Value::Number(4.0)),
            ],
            100,
        );
        let e = Event {
            kind: "class",
            at: NOW,
            ..Default::default()
        };
        let a = plugin().on_event(&context(NOW), &c, &e).unwrap();
        // 0.7 * 4 + 0.3 * 10 = 5.8
        assert!(a.contains(&Action::SetField {
            key: "avg_visit_gap_days".into(),
            value: FieldValue::Number(5.8)
        }));
        assert!(a.contains(&Action::SetField {
            key: "last_visit_at".into(),
            value: FieldValue::Time(NOW)
        }));
    }

    #[test]
    fn a_price_sensitive_member_at_risk_gets_an_offer_and_a_follow_up_once() {
        let fields = vec![
            ("last_visit_at", Value::Time(NOW - 20 * DAY_MS)),
            ("avg_visit_gap_days", Value::Number(5.0)),
            ("missed_payments", Value::Number(0.0)),
            ("price_sensitive", Value::Boolean(true)),
        ];
        let e = Event {
            kind: "payment-missed",
            at: NOW,
            ..Default::default()
        };
        let a = plugin()
            .on_event(&context(NOW), &member(fields.clone(), 300), &e)
            .unwrap();
        assert!(a.contains(&Action::SetField {
            key: "missed_payments".into(),
            value: FieldValue::Number(1.0)
        }));
        assert!(
            a.contains(&Action::AddTag("offer:group-plan".into())),
            "{a:?}"
        );
        assert!(a.iter().any(|x| matches!(x, Action::FollowUp { key, due, note } if key == "offer" && *due == NOW + 24 * 3_600_000 && note.starts_with("Offer a group plan"))));
        // Already offered: no second offer.
        let mut tagged = member(fields, 300);
        tagged.tags = vec!["offer:group-plan"];
        let again = plugin().on_event(&context(NOW), &tagged, &e).unwrap();
        assert!(!again
            .iter()
            .any(|x| matches!(x, Action::AddTag(_) | Action::FollowUp { .. })));
    }

    #[test]
    fn a_member_who_is_not_price_sensitive_gets_no_offer() {
        let fields = vec![
            ("last_visit_at", Value::Time(NOW - 20 * DAY_MS)),
            ("missed_payments", Value::Number(2.0)),
        ];
        let e = Event {
            kind: "call",
            at: NOW,
            ..Default::default()
        };
        let a = plugin()
            .on_event(&context(NOW), &member(fields, 300), &e)
            .unwrap();
        assert!(!a.iter().any(|x| matches!(x, Action::AddTag(_))));
    }

    #[test]
    fn an_ended_membership_is_lapsed_and_a_recent_one_new() {
        let ended = member(
            vec![("membership_ends", Value::Time(NOW - 5 * DAY_MS))],
            400,
        );
        let segs = plugin().segment(&context(NOW), &ended).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].segment, "lapsed");
        assert_eq!(
            render(&FitnessStudio::describe(), &segs[0].reason),
            "membership ended 5 days ago"
        );
        let fresh = member(vec![("last_visit_at", Value::Time(NOW - DAY_MS))], 10);
        assert_eq!(
            plugin().segment(&context(NOW), &fresh).unwrap()[0].segment,
            "new"
        );
    }

    #[test]
    fn a_membership_event_records_its_end() {
        let e = Event {
            kind: "membership",
            at: NOW,
            fields: Fields(vec![("ends_at", Value::Time(NOW + 90 * DAY_MS))]),
            ..Default::default()
        };
        let a = plugin()
            .on_event(&context(NOW), &member(vec![], 1), &e)
            .unwrap();
        assert_eq!(
            a[0],
            Action::SetField {
                key: "membership_ends".into(),
                value: FieldValue::Time(NOW + 90 * DAY_MS)
            }
        );
    }

    fn wake_of(a: &[Action]) -> Option<Timestamp> {
        match a.last() {
            Some(Action::WakeAt(at)) => *at,
            other => panic!("no wake asked for last: {other:?}"),
        }
    }

    #[test]
    fn a_member_is_woken_the_day_they_would_lapse_and_then_won_back() {
        // Joined long ago, coming every 30 days (never at risk before lapsing
        // with these rules): the next change is the lapse, 60 days after the visit.
        let p = FitnessStudio::configure(
            &DEFAULT_RULES.replace("\"at_risk_from\": 50", "\"at_risk_from\": 100"),
        )
        .unwrap();
        let m = member(
            vec![
                ("last_visit_at", Value::Time(NOW)),
                ("avg_visit_gap_days", Value::Number(30.0)),
            ],
            400,
        );
        let e = Event {
            kind: "call",
            at: NOW,
            ..Default::default()
        };
        let a = p.on_event(&context(NOW), &m, &e).unwrap();
        assert!(
            a.contains(&Action::CloseFollowUp("win-back".into())),
            "{a:?}"
        );
        let lapse = NOW + 60 * DAY_MS;
        // The risk reaches `loyal_below` (20) that day too: 30 x (1 + 20/20) days.
        assert_eq!(wake_of(&a), Some(NOW + 60 * DAY_MS));
        // Woken then: lapsed, a win-back follow-up, the offer closed, and no
        // further change ahead but none of time (the wake is cancelled).
        let w = p.on_wake(&context(lapse), &m).unwrap();
        assert!(p.segment(&context(lapse), &m).unwrap()[0].segment == "lapsed");
        assert!(w.contains(&Action::CloseFollowUp("offer".into())), "{w:?}");
        assert!(w.iter().any(|x| matches!(x, Action::FollowUp { key, note, .. } if key == "win-back" && note == "Win back: no visit for 60 days")), "{w:?}");
        assert_eq!(wake_of(&w), None);
    }

    #[test]
    fn the_wake_is_the_day_the_risk_reaches_at_risk() {
        // Every 5 days, last visit today, nothing else: overdue points reach
        // 50 ... never (capped at 40), so the next change is `loyal_below` (20):
        // 5 x (1 + 20/20) = 10 days on.
        let m = member(
            vec![
                ("last_visit_at", Value::Time(NOW)),
                ("avg_visit_gap_days", Value::Number(5.0)),
            ],
            400,
        );
        let a = plugin().on_wake(&context(NOW), &m).unwrap();
        assert_eq!(wake_of(&a), Some(NOW + 10 * DAY_MS));
        let before = plugin().score(&context(NOW + 10 * DAY_MS - 1), &m).unwrap();
        let after = plugin().score(&context(NOW + 10 * DAY_MS), &m).unwrap();
        assert_eq!(
            (before.band.as_deref(), after.band.as_deref()),
            (Some("low"), Some("medium"))
        );
    }

    #[test]
    fn nonsense_rules_are_refused() {
        for (from, to, words) in [
            (
                "\"gap_smoothing\": 0.3",
                "\"gap_smoothing\": 0",
                "gap_smoothing",
            ),
            ("\"loyal_below\": 20", "\"loyal_below\": 80", "loyal_below"),
            (
                "\"offer\": \"group-plan\"",
                "\"offer\": \"free-beer\"",
                "offer",
            ),
        ] {
            let Err(PluginError::BadRules(m)) =
                FitnessStudio::configure(&DEFAULT_RULES.replace(from, to))
            else {
                panic!("accepted {to}")
            };
            assert!(m.contains(words), "{m}");
        }
    }
}
