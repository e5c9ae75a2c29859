//! The vertical packs as built components, through the whole pipeline over HTTP.

#[macro_use]
mod common;

use common::server::{pack, Db, TestServer};
use serde_json::{json, Value};
use stagecraft::domain::now_ms;
use stagecraft_plugin::Plugin;

const DAY: i64 = 86_400_000;

on_both_databases!(
    a_price_sensitive_gym_member_at_risk_is_offered_a_group_plan,
    an_o2o_customer_is_activated_endangered_and_tagged_by_preference,
    a_trade_customer_goes_from_persona_to_partner,
    a_repeat_buyer_gets_a_lifetime_value_with_reasons,
    the_demo_data_makes_every_stage_and_segment_appear,
);

async fn post_event(s: &TestServer, id: &str, body: Value) -> Value {
    let (status, o) = s.post(&format!("/v1/customers/{id}/events"), body).await;
    assert_eq!(status, 201, "{o}");
    o
}

async fn a_price_sensitive_gym_member_at_risk_is_offered_a_group_plan(db: Db) {
    let s = TestServer::start(db, &[pack("fitness_studio")]).await;
    let now = now_ms();
    let (status, c) = s
        .post("/v1/customers", json!({"id": "mia", "created_at": now - 300 * DAY, "fields": {"price_sensitive": true}}))
        .await;
    assert_eq!(status, 201, "{c}");
    for days_ago in [44, 40, 36] {
        post_event(
            &s,
            "mia",
            json!({"kind": "class", "at": now - days_ago * DAY}),
        )
        .await;
    }
    let (_, c) = s.get("/v1/customers/mia").await;
    assert_eq!(c["fields"]["avg_visit_gap_days"], 4.0, "{c}");
    assert!(c["tags"].as_array().unwrap().is_empty());

    let o = post_event(&s, "mia", json!({"kind": "payment-missed"})).await;
    let score = &o["scores"]["fitness-studio"];
    assert_eq!(
        (score["value"].as_f64(), score["band"].as_str()),
        (Some(60.0), Some("high")),
        "{o}"
    );
    let reasons: Vec<&str> = score["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "last visit 36 days ago, usually every 4 days",
            "1 missed payments"
        ]
    );
    assert_eq!(o["tags_added"], json!(["offer:group-plan"]));
    assert!(
        o["follow_ups"][0]["note"]
            .as_str()
            .unwrap()
            .starts_with("Offer a group plan"),
        "{o}"
    );
    assert_eq!(o["segments_joined"], json!(["at-risk"]));

    // Back in class: the risk falls, and no second offer is made.
    let o = post_event(&s, "mia", json!({"kind": "class"})).await;
    assert_eq!(o["scores"]["fitness-studio"]["band"], "medium", "{o}");
    assert_eq!(o["tags_added"], json!([]));
    assert_eq!(o["segments_left"], json!(["at-risk"]));
    s.finish().await;
}

async fn an_o2o_customer_is_activated_endangered_and_tagged_by_preference(db: Db) {
    let s = TestServer::start(db, &[pack("o2o_engagement")]).await;
    let (status, c) = s
        .post("/v1/customers", json!({"id": "lin", "source": "seed"}))
        .await;
    assert_eq!(status, 201, "{c}");
    let click =
        json!({"kind": "email-click", "channel": "email", "fields": {"topic": "promotions"}});
    let o = post_event(&s, "lin", click.clone()).await;
    assert_eq!(o["segments_joined"], json!(["seed"]), "{o}");
    let o = post_event(&s, "lin", click).await;
    assert_eq!(o["tags_added"], json!(["pref:promotions"]), "{o}");
    for i in 0..3 {
        let o = post_event(
            &s,
            "lin",
            json!({"kind": "experience", "fields": {"rating": 5}}),
        )
        .await;
        if i == 2 {
            assert_eq!(o["tags_added"], json!(["activated"]), "{o}");
            assert_eq!(o["segments_joined"], json!(["activated"]));
        }
    }
    let o = post_event(
        &s,
        "lin",
        json!({"kind": "experience", "fields": {"rating": 1, "note": "a torn jacket"}}),
    )
    .await;
    assert_eq!(o["tags_added"], json!(["endangered"]), "{o}");
    assert_eq!(
        o["follow_ups"][0]["note"],
        "Rescue: call about a torn jacket"
    );
    assert_eq!(o["segments_joined"], json!(["endangered"]));
    let o = post_event(&s, "lin", json!({"kind": "order", "amount_cents": 45_000})).await;
    let rfm = &o["scores"]["o2o-engagement"];
    assert_eq!(
        (rfm["value"].as_f64(), rfm["band"].as_str()),
        (Some(514.0), Some("promising")),
        "{o}"
    );
    s.finish().await;
}

/// The clv component over the whole CDNOW data set (23,570 customers, every order
/// to June 1998, evaluated on 1 July 1998), in batches: the same value for every
/// customer as the pack compiled natively, whose formulas are checked against
/// lifetimes and the published figures in the pack's own tests.
#[test]
fn clv_runs_over_the_full_cdnow_data_set_as_it_does_natively() {
    use stagecraft_plugin::snapshot::{Customer, Metrics};
    use stagecraft_plugin::Plugin;
    use std::collections::BTreeMap;
    const NOW: i64 = 899_251_200_000;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data/cdnow/CDNOW_master.txt");
    let text = std::fs::read_to_string(path).unwrap();
    // customer -> day -> cents
    let mut days: BTreeMap<&str, BTreeMap<i64, i64>> = BTreeMap::new();
    let mut orders: BTreeMap<&str, u32> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split_whitespace().collect();
        let at = stagecraft::domain::time::parse_time(c[1]).unwrap();
        let cents = (c[3].parse::<f64>().unwrap() * 100.0).round() as i64;
        *days.entry(c[0]).or_default().entry(at).or_default() += cents;
        *orders.entry(c[0]).or_default() += 1;
    }
    assert_eq!(days.len(), 23_570);
    let customers: Vec<Customer> = days
        .iter()
        .map(|(id, d)| Customer {
            id,
            created_at: *d.keys().next().unwrap(),
            metrics: Metrics {
                orders: orders[id],
                purchase_days: d.len() as u32,
                total_spend_cents: d.values().sum(),
                first_order_at: d.keys().next().copied(),
                last_order_at: d.keys().last().copied(),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect();
    let rt = common::runtime();
    let plugin = common::load(&rt, "clv");
    let ctx = common::ctx(NOW);
    let native = clv::Clv::with_default_rules().unwrap();
    let nctx = stagecraft_plugin::testing::context(NOW);
    let started = std::time::Instant::now();
    let mut total = 0.0;
    for chunk in customers.chunks(1000) {
        let scores = plugin
            .session(&ctx, None)
            .unwrap()
            .score(&ctx, chunk)
            .unwrap();
        for (c, s) in chunk.iter().zip(scores) {
            let s = s.unwrap();
            assert_eq!(s.value, native.score(&nctx, c).unwrap().value, "{}", c.id);
            total += s.value;
        }
    }
    let took = started.elapsed();
    // Against lifetimes (plugins/clv/reference): the largest difference over the
    // 2,357 reference customers, for each figure, using the summaries built here.
    let reference = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/clv/reference/cdnow_reference.csv"),
    )
    .unwrap();
    let mut max_diff = [0f64; 3];
    for line in reference.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let c = customers
            .iter()
            .find(|c| c.id == cols[0])
            .expect("a reference customer is in the data");
        // The reference fitted the mean over every purchase day (`"all"`).
        let sm = clv::Summary::of(NOW, &c.metrics, None).unwrap();
        let want: Vec<f64> = cols[5..8].iter().map(|v| v.parse().unwrap()).collect();
        let got = [
            native.p_alive(&sm),
            native.expected_purchases(&sm, 365.0),
            native.expected_spend(&sm),
        ];
        for k in 0..3 {
            max_diff[k] = max_diff[k].max((got[k] - want[k]).abs());
        }
    }
    eprintln!(
        "clv: 23,570 CDNOW customers scored in {took:?}; expected value over the next year {total:.0}; \
         max difference from lifetimes: P(alive) {:.2e}, expected purchases {:.2e}, spend per purchase {:.2e} cents",
        max_diff[0], max_diff[1], max_diff[2]
    );
    assert!(
        max_diff[0] < 1e-6 && max_diff[1] < 1e-6 && max_diff[2] < 1e-4,
        "{max_diff:?}"
    );
    assert!(total > 0.0);
}

/// b2b-trade's whole story over HTTP: every stage in turn, each move with its
/// reason on the timeline and a follow-up due after the stage's cadence.
async fn a_trade_customer_goes_from_persona_to_partner(db: Db) {
    let s = TestServer::start(
        db,
        &[common::server::Pack {
            stem: "b2b_trade",
            rules: None,
            owns_lifecycle: true,
        }],
    )
    .await;
    let (status, c) = s
        .post("/v1/customers", json!({"id": "hanse", "source": "event"}))
        .await;
    assert_eq!(status, 201, "{c}");
    let now = now_ms();
    let story: Vec<(Value, &str, &str, i64)> = vec![
        (
            json!({"kind": "visit", "channel": "event", "at": now - 400 * DAY}),
            "persona",
            "first recorded contact",
            30,
        ),
        (
            json!({"kind": "inquiry", "at": now - 390 * DAY, "fields": {"question": "MOQ?"}}),
            "prospect",
            "a qualifying inquiry",
            3,
        ),
        (
            json!({"kind": "order", "amount_cents": 50_000, "at": now - 380 * DAY}),
            "first-purchase",
            "placed a first order",
            7,
        ),
        (
            json!({"kind": "order", "amount_cents": 40_000, "at": now - 300 * DAY}),
            "repeat",
            "bought on 2 different days",
            14,
        ),
        (
            json!({"kind": "order", "amount_cents": 40_000, "at": now - 250 * DAY}),
            "",
            "",
            0,
        ),
        (
            json!({"kind": "order", "amount_cents": 40_000, "at": now - 150 * DAY}),
            "long-term",
            "bought on 4 days over 7 months",
            30,
        ),
        (
            json!({"kind": "exclusive-agreement", "at": now - 100 * DAY}),
            "advocate",
            "loyalty signal: buys only this brand",
            30,
        ),
        (
            json!({"kind": "referral", "at": now - 60 * DAY}),
            "strategic",
            "referred 1 new customers",
            14,
        ),
        (
            json!({"kind": "contract", "at": now - 10 * DAY, "fields": {"role": "distributor"}}),
            "partner",
            "signed a partner contract",
            7,
        ),
    ];
    for (body, stage, reason, cadence_days) in &story {
        let before = now_ms();
        let o = post_event(&s, "hanse", body.clone()).await;
        if stage.is_empty() {
            assert!(o["stage"].is_null(), "{o}");
            continue;
        }
        assert_eq!(
            (o["stage"]["to"].as_str(), o["stage"]["reason"].as_str()),
            (Some(*stage), Some(*reason)),
            "{o}"
        );
        let due = o["follow_ups"][0]["due_at"].as_i64().unwrap();
        let cadence = cadence_days * DAY;
        assert!(
            due >= before + cadence && due <= now_ms() + cadence,
            "{stage}: follow-up due {due}, cadence {cadence_days} days"
        );
    }
    let (_, c) = s.get("/v1/customers/hanse").await;
    assert_eq!(c["stage"], "partner");
    assert_eq!(c["tags"], json!(["partner:distributor"]));
    let (_, t) = s.get("/v1/customers/hanse/timeline?limit=200").await;
    let moves: Vec<(String, String)> = t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "stage_move")
        .map(|e| {
            (
                e["to"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .rev()
        .collect();
    let expected: Vec<(String, String)> = story
        .iter()
        .filter(|x| !x.1.is_empty())
        .map(|x| (x.1.to_string(), x.2.to_string()))
        .collect();
    assert_eq!(moves, expected, "every move, in order, with its reason");
    s.finish().await;
}

/// clv over HTTP: a repeat buyer's lifetime value and its reasons.
async fn a_repeat_buyer_gets_a_lifetime_value_with_reasons(db: Db) {
    let s = TestServer::start(db, &[pack("clv")]).await;
    s.post("/v1/customers", json!({"id": "cd"})).await;
    let now = now_ms();
    let o = post_event(
        &s,
        "cd",
        json!({"kind": "order", "amount_cents": 3_000, "at": now - 200 * DAY}),
    )
    .await;
    assert_eq!(o["segments_joined"], json!(["one-time"]), "{o}");
    let o = post_event(
        &s,
        "cd",
        json!({"kind": "order", "amount_cents": 2_500, "at": now - 120 * DAY}),
    )
    .await;
    assert_eq!(
        o["segments_left"],
        json!(["one-time"]),
        "a second purchase day: {o}"
    );
    let o = post_event(
        &s,
        "cd",
        json!({"kind": "order", "amount_cents": 4_000, "at": now - 5 * DAY}),
    )
    .await;
    let score = &o["scores"]["clv"];
    // x = 2 repeat days, t_x = 195, T = 200 days, and the mean of the repeat
    // days (the first day's 30.00 left out, as the Gamma-Gamma model has it):
    // computed natively with the same rules.
    let native = clv::Clv::with_default_rules().unwrap();
    let sm = clv::Summary {
        x: 2.0,
        t_x: 195.0,
        t: 200.0,
        m: 6_500.0 / 2.0,
    };
    let expected = native.expected_purchases(&sm, 365.0) * native.expected_spend(&sm) / 100.0;
    assert!(
        (score["value"].as_f64().unwrap() - (expected * 100.0).round() / 100.0).abs() < 1e-9,
        "{o}"
    );
    let texts: Vec<&str> = score["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert!(
        texts[0].ends_with("% likely still active")
            && texts[1].contains("purchases expected in the next 365 days"),
        "{texts:?}"
    );
    s.finish().await;
}

/// What `stagecraft demo` loads (a CDNOW sample evaluated on 1 July 1998, then the
/// demo stories) shows every stage of the lifecycle owner and every segment every
/// enabled pack declares.
async fn the_demo_data_makes_every_stage_and_segment_appear(db: Db) {
    let packs = [
        common::server::Pack {
            stem: "b2b_trade",
            rules: None,
            owns_lifecycle: true,
        },
        pack("clv"),
        pack("fitness_studio"),
        pack("o2o_engagement"),
        pack("value_tiers"),
    ];
    let s = TestServer::start(db, &packs).await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data/cdnow/CDNOW_master.txt");
    let sample: String = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .take(3001)
        .map(|l| format!("{l}\n"))
        .collect();
    let url = format!(
        "/v1/import/cdnow?now={}",
        stagecraft::cli::service::DEMO_NOW
    );
    let (status, r) = common::server::send(s.req(reqwest::Method::POST, &url).body(sample)).await;
    assert_eq!(status, 200, "{r}");
    let n = stagecraft::demo::load_stories(&s.crm, &s.tenant)
        .await
        .unwrap();
    assert!(n > 30);
    // What time alone changes (a membership that ended, a member who stopped
    // coming) is there once the wakes due have fired.
    s.wait_for_due_wakes().await;
    let (_, funnel) = s.get("/v1/analytics/funnel").await;
    for st in funnel["stages"].as_array().unwrap() {
        assert!(
            st["customers"].as_i64().unwrap() > 0,
            "stage {} is empty: {funnel}",
            st["id"]
        );
    }
    assert_eq!(funnel["stages"].as_array().unwrap().len(), 8);
    let (_, segs) = s.get("/v1/analytics/segments").await;
    let present: std::collections::BTreeSet<(String, String)> = segs["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["customers"].as_i64().unwrap() > 0)
        .map(|x| {
            (
                x["plugin"].as_str().unwrap().to_string(),
                x["segment"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for p in s.crm.tenant_packs(&s.tenant).packs.iter() {
        for seg in &p.plugin.manifest().segments {
            assert!(
                present.contains(&(p.name().to_string(), seg.id.clone())),
                "{}: segment {} is empty: {segs}",
                p.name(),
                seg.id
            );
        }
    }
    s.finish().await;
}

/// What commits between an event's reads ahead of the writer and its write
/// transaction, in the test below.
enum Meanwhile {
    Nothing,
    /// Another event for the same customer.
    Event,
    /// A change by hand (`PATCH /v1/customers/c1` with this body).
    Edit(Value),
    /// A bulk rescore of the tenant.
    Rescore,
}

/// On SQLite the plugins run before the event joins the group commit's queue,
/// outside the writer's hold, and their results count only if nothing they read
/// changed meanwhile: the customer's `rev` says so. Every kind of writer that
/// changes what an event reads must change it: another event (using the early
/// results would write metrics that lose it), an edit of the profile, a field,
/// a tag or the stage, and a rescore.
#[tokio::test]
async fn plugins_run_ahead_of_the_writer_only_count_when_nothing_changed_meanwhile() {
    use stagecraft::pipeline::{evaluate_ahead, record_events, EventInput, EventJob};
    use std::sync::Arc;
    let s = TestServer::start(Db::Sqlite, &[pack("value_tiers")]).await;
    s.post("/v1/customers", json!({"id": "c1"})).await;
    post_event(&s, "c1", json!({"kind": "order", "amount_cents": 5000})).await;
    let packs = s.crm.tenant_packs("acme");
    let calls = || {
        packs
            .metrics
            .plugin_calls
            .with_label_values(&["value-tiers", "0.1.0", "ok"])
            .get()
    };
    let now = now_ms();
    // The event's answer, what `meanwhile` answered, and how many times the
    // plugin ran again under the writer.
    let record = |cents: i64, meanwhile: Meanwhile| {
        let (s, packs) = (&s, packs.clone());
        async move {
            let event = EventInput {
                kind: "order".into(),
                amount_cents: Some(cents),
                ..Default::default()
            };
            let event = event.validate(now).unwrap();
            let mut job = EventJob::new(packs, "acme", "c1", event, None, now);
            let ahead = evaluate_ahead(s.crm.store(), &job)
                .await
                .expect("evaluated ahead on SQLite");
            job.ahead = Some(Arc::new(ahead));
            let other = match meanwhile {
                Meanwhile::Nothing => Value::Null,
                Meanwhile::Event => {
                    post_event(s, "c1", json!({"kind": "order", "amount_cents": 10_000})).await
                }
                Meanwhile::Edit(body) => {
                    let (status, j) = s.patch("/v1/customers/c1", body).await;
                    assert_eq!(status, 200, "{j}");
                    j
                }
                Meanwhile::Rescore => {
                    let (status, j) = s.post("/v1/rescore", json!({})).await;
                    assert_eq!(status, 202, "{j}");
                    s.wait_for_job(j["job"].as_str().unwrap()).await
                }
            };
            let before = calls();
            let mut tx = s.crm.store().begin().await.unwrap();
            let o = record_events(&mut tx, &[job])
                .await
                .unwrap()
                .pop()
                .unwrap()
                .unwrap();
            tx.commit().await.unwrap();
            (serde_json::to_value(o).unwrap(), other, calls() - before)
        }
    };

    // Nothing in between: the results from before the writer are the ones used.
    let (o, _, again) = record(700, Meanwhile::Nothing).await;
    assert_eq!(again, 0, "the plugin ran again: {o}");

    // An event in between: the plugin runs again, on what is there now.
    let (o, other, again) = record(300, Meanwhile::Event).await;
    assert_eq!(again, 1, "{o}");
    assert_eq!(
        o["scores"]["value-tiers"]["previous_value"], other["scores"]["value-tiers"]["value"],
        "{o}"
    );
    let (status, c) = s.get("/v1/customers/c1").await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["metrics"]["orders"], 4, "{c}");
    assert_eq!(c["metrics"]["total_spend_cents"], 16_000, "{c}");

    // Every other writer of what an event reads.
    for (what, meanwhile) in [
        ("name", Meanwhile::Edit(json!({"name": "Ada"}))),
        (
            "field",
            Meanwhile::Edit(json!({"fields": {"industry": "retail"}})),
        ),
        ("tag", Meanwhile::Edit(json!({"add_tags": ["vip"]}))),
        ("stage", Meanwhile::Edit(json!({"stage": "customer"}))),
        ("rescore", Meanwhile::Rescore),
    ] {
        let (o, other, again) = record(100, meanwhile).await;
        assert_eq!(again, 1, "{what} changed in between: {o} {other}");
    }
    let (o, _, again) = record(100, Meanwhile::Nothing).await;
    assert_eq!(again, 0, "the plugin ran again: {o}");
    s.finish().await;
}

/// Each pack's rules schema is derived from the struct its `configure` reads
/// (schemars), so the schema and the plugin agree on every rule set: the pack's
/// default rules fit; without any one key, with an unknown key, or with a key of
/// the wrong type, the schema refuses exactly when `configure` does. A schema
/// written by hand beside the struct had drifted (three packs listed no
/// required keys, so a rule set missing one passed the schema and failed later).
#[test]
fn every_pack_schema_agrees_with_its_configure() {
    use serde_json::Value;
    let rt = common::runtime();
    for stem in [
        "value_tiers",
        "b2b_trade",
        "fitness_studio",
        "o2o_engagement",
        "clv",
    ] {
        let plugin = common::load(&rt, stem);
        let m = plugin.manifest();
        let schema: Value = serde_json::from_str(m.rules_schema.as_deref().unwrap()).unwrap();
        assert_eq!(schema["additionalProperties"], false, "{stem}");
        let defaults: Value = serde_json::from_str(&m.default_rules).unwrap();
        assert_eq!(plugin.check_rules_schema(&defaults), Ok(()), "{stem}");
        let agree = |rules: Value, what: &str| {
            let by_schema = plugin.check_rules_schema(&rules).is_ok();
            let by_plugin = plugin.check_rules(&rules.to_string()).is_ok();
            assert_eq!(
                by_schema, by_plugin,
                "{stem}, {what}: the schema says {by_schema}, configure {by_plugin}"
            );
            by_schema
        };
        let keys: Vec<String> = defaults.as_object().unwrap().keys().cloned().collect();
        let mut required = 0;
        for k in &keys {
            let mut without = defaults.clone();
            without.as_object_mut().unwrap().remove(k);
            required += !agree(without, &format!("without {k}")) as usize;
            let mut wrong = defaults.clone();
            wrong[k] = serde_json::json!({"nested": true});
            assert!(
                !agree(wrong, &format!("{k} of the wrong type")),
                "{stem}: {k}"
            );
        }
        assert!(required > 0, "{stem}: no key is required");
        let mut unknown = defaults.clone();
        unknown["no_such_rule"] = 1.into();
        assert!(!agree(unknown, "an unknown key"), "{stem}");
    }
}
