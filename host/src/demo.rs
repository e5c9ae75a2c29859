//! Demo stories: a handful of customers whose events walk each pack through its
//! stages and segments, so that a fresh demo shows every one of them. CDNOW brings
//! the volume (and the value tiers, lifetime values and dormant buyers); these
//! bring the B2B formation, the gym and the O2O stories. Times are relative to now.

use crate::domain::now_ms;
use crate::pipeline::EventInput;
use crate::services::{Crm, CrmError, CustomerInput};
use serde_json::{json, Value};
use stagecraft_plugin::snapshot::DAY_MS;

struct Story {
    id: &'static str,
    name: &'static str,
    source: &'static str,
    joined_days_ago: i64,
    fields: Value,
    /// (days ago, event)
    events: Vec<(i64, Value)>,
}

fn order(cents: i64) -> Value {
    json!({"kind": "order", "channel": "web", "amount_cents": cents})
}

fn stories() -> Vec<Story> {
    let visit = || json!({"kind": "visit", "channel": "event"});
    let inquiry = |q: &str| json!({"kind": "inquiry", "channel": "web", "fields": {"question": q}});
    let class = || json!({"kind": "class", "channel": "studio"});
    let rated = |r: i64, note: &str| json!({"kind": "experience", "channel": "store", "fields": {"rating": r, "note": note}});
    vec![
        // B2B trade: one customer resting at each of the eight stages.
        Story {
            id: "trade-persona",
            name: "Nordlicht Imports",
            source: "event",
            joined_days_ago: 20,
            fields: json!({"industry": "wholesale", "country": "DE"}),
            events: vec![(20, visit())],
        },
        Story {
            id: "trade-prospect",
            name: "Sakura Retail",
            source: "web",
            joined_days_ago: 30,
            fields: json!({"industry": "retail", "country": "JP"}),
            events: vec![
                (30, visit()),
                (5, inquiry("Price for 500 units, FOB Shanghai?")),
            ],
        },
        Story {
            id: "trade-first",
            name: "Andes Outfitters",
            source: "referral",
            joined_days_ago: 60,
            fields: json!({"industry": "apparel", "country": "PE"}),
            events: vec![(60, inquiry("Sample lead time?")), (40, order(120_000))],
        },
        Story {
            id: "trade-repeat",
            name: "Baltic Tools",
            source: "rep-visit",
            joined_days_ago: 200,
            fields: json!({"industry": "hardware", "country": "LT"}),
            events: vec![(150, order(80_000)), (60, order(95_000))],
        },
        Story {
            id: "trade-longterm",
            name: "Cedar & Co",
            source: "web",
            joined_days_ago: 500,
            fields: json!({"industry": "furniture", "country": "CA"}),
            events: vec![
                (400, order(60_000)),
                (300, order(70_000)),
                (200, order(65_000)),
                (30, order(90_000)),
            ],
        },
        Story {
            id: "trade-advocate",
            name: "Lagos Home Goods",
            source: "event",
            joined_days_ago: 500,
            fields: json!({"industry": "home", "country": "NG"}),
            events: vec![
                (420, order(50_000)),
                (320, order(52_000)),
                (220, order(58_000)),
                (20, order(61_000)),
                (
                    10,
                    json!({"kind": "exclusive-agreement", "channel": "rep-visit"}),
                ),
            ],
        },
        Story {
            id: "trade-strategic",
            name: "Helios Trading",
            source: "web",
            joined_days_ago: 300,
            fields: json!({"industry": "wholesale", "country": "GR"}),
            events: vec![
                (250, order(150_000)),
                (100, order(140_000)),
                (15, json!({"kind": "referral", "channel": "phone"})),
            ],
        },
        Story {
            id: "trade-partner",
            name: "Río Distribuciones",
            source: "referral",
            joined_days_ago: 700,
            fields: json!({"industry": "distribution", "country": "MX"}),
            events: vec![
                (650, order(200_000)),
                (500, order(210_000)),
                (
                    12,
                    json!({"kind": "contract", "channel": "rep-visit", "fields": {"role": "distributor"}}),
                ),
            ],
        },
        // Fitness studio: new, loyal, at risk (price-sensitive: offered a group plan), lapsed.
        Story {
            id: "gym-new",
            name: "Ana Souza",
            source: "web",
            joined_days_ago: 10,
            fields: json!({"price_sensitive": false}),
            events: vec![(8, class()), (2, class())],
        },
        Story {
            id: "gym-loyal",
            name: "Wei Zhang",
            source: "referral",
            joined_days_ago: 420,
            fields: json!({}),
            events: vec![(12, class()), (8, class()), (4, class())],
        },
        Story {
            id: "gym-at-risk",
            name: "Tom Becker",
            source: "web",
            joined_days_ago: 300,
            fields: json!({"price_sensitive": true}),
            events: vec![
                (44, class()),
                (40, class()),
                (36, class()),
                (1, json!({"kind": "payment-missed"})),
            ],
        },
        Story {
            id: "gym-lapsed",
            name: "Lena Holm",
            source: "event",
            joined_days_ago: 400,
            fields: json!({}),
            events: vec![
                (
                    200,
                    json!({"kind": "membership", "fields": {"ends_at": {"time": now_ms() - 5 * DAY_MS}}}),
                ),
                (150, class()),
            ],
        },
        // O2O and retail: a seed user, an activated customer with a preference, an endangered one.
        Story {
            id: "o2o-seed",
            name: "Maya Cohen",
            source: "seed",
            joined_days_ago: 15,
            fields: json!({}),
            events: vec![(15, visit())],
        },
        Story {
            id: "o2o-activated",
            name: "Kofi Mensah",
            source: "web",
            joined_days_ago: 90,
            fields: json!({}),
            events: vec![
                (80, rated(5, "fast delivery")),
                (50, rated(4, "good fit")),
                (20, rated(5, "friendly staff")),
                (
                    10,
                    json!({"kind": "email-click", "channel": "email", "fields": {"topic": "promotions"}}),
                ),
                (
                    5,
                    json!({"kind": "push-open", "channel": "app", "fields": {"topic": "promotions"}}),
                ),
            ],
        },
        Story {
            id: "o2o-endangered",
            name: "Priya Nair",
            source: "web",
            joined_days_ago: 60,
            fields: json!({}),
            events: vec![
                (40, rated(5, "great service")),
                (3, rated(1, "a torn jacket")),
            ],
        },
    ]
}

/// The agent the demo's token is labelled for: the story customers are theirs,
/// so the console's "My follow-ups" has work in the demo.
pub const DEMO_AGENT: &str = "demo admin";

/// Creates the story customers (skipping any that exist) and records their events.
/// Returns how many events were recorded.
pub async fn load_stories(crm: &Crm, tenant: &str) -> Result<usize, CrmError> {
    let now = now_ms();
    let mut events = 0;
    for s in stories() {
        let input = CustomerInput {
            id: Some(s.id.to_string()),
            name: Some(s.name.to_string()),
            source: Some(s.source.to_string()),
            created_at: Some(now - s.joined_days_ago * DAY_MS),
            owner: Some(DEMO_AGENT.to_string()),
            fields: serde_json::from_value(s.fields).expect("story fields are a JSON object"),
            ..Default::default()
        };
        match crm.customers().create_customer(tenant, input).await {
            Ok(_) => {}
            Err(CrmError::Store(crate::store::StoreError::Conflict(_))) => continue,
            Err(e) => return Err(e),
        }
        for (days_ago, mut body) in s.events {
            body["at"] = json!(now - days_ago * DAY_MS);
            let input: EventInput = serde_json::from_value(body).expect("story events are valid");
            let key = format!("demo:{}:{events}", s.id);
            // Each event at its own time: what it causes is due from then.
            let at = now - days_ago * DAY_MS;
            crm.events()
                .record_event(tenant, s.id, &input, Some(&key), Some(at))
                .await?;
            events += 1;
        }
    }
    Ok(events)
}
