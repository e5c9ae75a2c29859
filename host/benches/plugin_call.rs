//! The same value-tiers scoring three ways, in one run: compiled natively into the
//! host (the limit), as the wasm plugin one customer per call, and as the wasm
//! plugin in batches. Customers are realistic: 10 fields, 5 tags, 10 recent events.
//!
//! `cargo xtask bench` runs this and prints per-customer times and ratios.

/// mimalloc rather than glibc's malloc, as the server has it (see main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stagecraft::runtime::{encode_batch, CallContext, Limits, Reads, Runtime};
use stagecraft_plugin::snapshot::{Customer, Event, Fields, Metrics, Value};
use stagecraft_plugin::Plugin;
use std::hint::black_box;
use std::path::PathBuf;

const NOW: i64 = 1_732_406_400_000;
const DAY: i64 = 86_400_000;

const TAGS: [&str; 8] = [
    "promotions",
    "product-news",
    "industry-info",
    "vip",
    "wholesale",
    "eu",
    "newsletter",
    "events",
];
const KINDS: [&str; 5] = ["order", "visit", "inquiry", "email-open", "call"];

/// Owned strings the snapshots borrow from.
struct Pool {
    ids: Vec<String>,
}

fn customers(pool: &Pool) -> Vec<Customer<'_>> {
    pool.ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let n = i as i64;
            let orders = (i % 17) as u32;
            Customer {
                id,
                stage: Some("repeat"),
                source: Some(["web", "referral", "event", "rep-visit"][i % 4]),
                created_at: NOW - (400 + n % 300) * DAY,
                metrics: Metrics {
                    orders,
                    purchase_days: orders.saturating_sub((i % 3) as u32),
                    total_spend_cents: (n * 7_919) % 400_000,
                    first_order_at: Some(NOW - 300 * DAY),
                    last_order_at: Some(NOW - (n % 90) * DAY),
                    last_contact_at: Some(NOW - (n % 20) * DAY),
                    complaints: (i % 11 == 0) as u32,
                    referrals: (i % 7 == 0) as u32,
                    touchpoints_90d: (i % 13) as u32,
                },
                tags: (0..5).map(|k| TAGS[(i + k) % TAGS.len()]).collect(),
                segments: vec!["medium-return"],
                fields: Fields(vec![
                    ("industry", Value::Text("wholesale")),
                    ("country", Value::Text("DE")),
                    ("employees", Value::Number(40.0 + n as f64)),
                    ("annual_revenue", Value::Number(1.5e6)),
                    ("preferred_channel", Value::Text("email")),
                    ("price_sensitive", Value::Boolean(i % 2 == 0)),
                    ("contract_renews", Value::Time(NOW + 90 * DAY)),
                    ("account_manager", Value::Text("li.wei")),
                    ("segment_hint", Value::Text("distributor")),
                    ("nps", Value::Number(8.0)),
                ]),
                events: (0..10)
                    .map(|k| Event {
                        kind: KINDS[(i + k) % KINDS.len()],
                        channel: Some("web"),
                        at: NOW - (k as i64 * 5 + 1) * DAY,
                        amount_cents: if (i + k) % KINDS.len() == 0 {
                            Some(12_000)
                        } else {
                            None
                        },
                        fields: Fields(vec![("campaign", Value::Text("spring-fair"))]),
                    })
                    .collect(),
            }
        })
        .collect()
}

fn wasm() -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("target/wasm32-wasip2/release/value_tiers.wasm");
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask plugins` first)", path.display()))
}

/// value-tiers' scoring in Rhai, line for line.
const VALUE_TIERS_RHAI: &str = r#"
fn score(m, r) {
    let cost = m.orders * r.cost_per_order_cents + m.touchpoints_90d * r.cost_per_touchpoint_cents
             + m.complaints * r.cost_per_complaint_cents;
    let net = m.total_spend_cents - cost;
    let spend = m.total_spend_cents.to_float() / 100.0;
    let netf = net.to_float() / 100.0;
    let reasons = [
        #{ code: "spend", points: spend, args: [spend, m.orders.to_float()] },
        #{ code: "cost_to_serve", points: -cost.to_float() / 100.0,
           args: [cost.to_float() / 100.0, m.orders.to_float(), m.touchpoints_90d.to_float(), m.complaints.to_float()] },
        #{ code: "repeat_days", points: 0.0, args: [m.purchase_days.to_float()] },
    ];
    if m.complaints > 0 {
        let c = (m.complaints * r.cost_per_complaint_cents).to_float() / 100.0;
        reasons.push(#{ code: "complaints", points: -c, args: [m.complaints.to_float()] });
    }
    let band = "";
    if net < 0 {
        band = "negative";
        reasons.push(#{ code: "band_negative", points: 0.0, args: [netf] });
    } else if net >= r.high_min_net_cents && m.purchase_days >= r.high_min_purchase_days {
        band = "high";
        reasons.push(#{ code: "band_high", points: 0.0,
                        args: [netf, r.high_min_net_cents.to_float() / 100.0, m.purchase_days.to_float()] });
    } else if net >= r.medium_min_net_cents {
        band = "medium";
        reasons.push(#{ code: "band_medium", points: 0.0, args: [netf, r.medium_min_net_cents.to_float() / 100.0] });
    } else {
        band = "low";
        reasons.push(#{ code: "band_low", points: 0.0, args: [netf, r.medium_min_net_cents.to_float() / 100.0] });
    }
    #{ value: netf, band: band, reasons: reasons }
}
"#;

struct Rhai {
    engine: rhai::Engine,
    ast: rhai::AST,
    rules: rhai::Map,
}

impl Rhai {
    fn new() -> Rhai {
        let engine = rhai::Engine::new();
        let ast = engine.compile(VALUE_TIERS_RHAI).unwrap();
        let rules = engine
            .parse_json(value_tiers::DEFAULT_RULES, false)
            .unwrap();
        Rhai { engine, ast, rules }
    }

    /// (value, band, number of reasons), read back out of the script's map.
    fn score(&self, c: &Customer<'_>) -> (f64, String, usize) {
        let m = &c.metrics;
        let mut metrics = rhai::Map::new();
        for (k, v) in [
            ("orders", m.orders as i64),
            ("purchase_days", m.purchase_days as i64),
            ("total_spend_cents", m.total_spend_cents),
            ("touchpoints_90d", m.touchpoints_90d as i64),
            ("complaints", m.complaints as i64),
        ] {
            metrics.insert(k.into(), v.into());
        }
        let out: rhai::Map = self
            .engine
            .call_fn(
                &mut rhai::Scope::new(),
                &self.ast,
                "score",
                (metrics, self.rules.clone()),
            )
            .unwrap();
        let value = out["value"].as_float().unwrap();
        let band = out["band"].clone().into_string().unwrap();
        let reasons = out["reasons"].clone().into_array().unwrap().len();
        (value, band, reasons)
    }
}

fn bench(c: &mut Criterion) {
    const BATCH: usize = 1000;
    let pool = Pool {
        ids: (0..BATCH).map(|i| format!("customer-{i:06}")).collect(),
    };
    let batch = customers(&pool);
    let ctx = CallContext {
        now: NOW,
        tenant: "bench".into(),
    };
    let native_ctx = stagecraft_plugin::Context {
        now: NOW,
        tenant: "bench",
    };

    let runtime = Runtime::new(Limits::default(), None).unwrap();
    let plugin = runtime.load(&wasm()).unwrap();
    let native = value_tiers::ValueTiers::with_default_rules().unwrap();

    // Sanity: wasm and native agree before anything is timed.
    let w = plugin
        .session(&ctx, None)
        .unwrap()
        .score(&ctx, &batch)
        .unwrap();
    for (cu, ws) in batch.iter().zip(&w) {
        let ns = native.score(&native_ctx, cu).unwrap();
        assert_eq!(ws.as_ref().unwrap().value, ns.value);
    }

    // The same scoring as a Rhai script, as a user might embed instead of wasm:
    // compiled once, called per customer with the metrics and rules as maps,
    // returning the value, band and reasons.
    let rhai = Rhai::new();
    for cu in &batch {
        let ns = native.score(&native_ctx, cu).unwrap();
        let (value, band, reasons) = rhai.score(cu);
        let expected = (
            ns.value,
            ns.band.as_deref().map(str::to_string),
            ns.reasons.len(),
        );
        assert_eq!((value, Some(band), reasons), expected);
    }

    let mut g = c.benchmark_group("score");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("rhai_script", |b| {
        b.iter(|| {
            for cu in &batch {
                black_box(rhai.score(black_box(cu)));
            }
        })
    });
    g.bench_function("native", |b| {
        b.iter(|| {
            for cu in &batch {
                black_box(native.score(&native_ctx, black_box(cu)).unwrap());
            }
        })
    });
    g.bench_function("wasm_batch_1000", |b| {
        b.iter(|| {
            black_box(
                plugin
                    .session(&ctx, None)
                    .unwrap()
                    .score(&ctx, black_box(&batch))
                    .unwrap(),
            )
        })
    });
    g.bench_function("wasm_batch_100", |b| {
        b.iter(|| {
            for chunk in batch.chunks(100) {
                black_box(
                    plugin
                        .session(&ctx, None)
                        .unwrap()
                        .score(&ctx, black_box(chunk))
                        .unwrap(),
                );
            }
        })
    });
    // The per-event path: a fresh instance for every customer.
    g.bench_function("wasm_single", |b| {
        b.iter(|| {
            for cu in batch.chunks(1) {
                black_box(
                    plugin
                        .session(&ctx, None)
                        .unwrap()
                        .score(&ctx, black_box(cu))
                        .unwrap(),
                );
            }
        })
    });
    // What shipping every part costs, for a plugin that declares it reads everything.
    let full = encode_batch(&batch, Reads::ALL).unwrap();
    g.bench_function("wasm_batch_1000_full_snapshot", |b| {
        b.iter(|| {
            black_box(
                plugin
                    .session(&ctx, None)
                    .unwrap()
                    .score_encoded(&ctx, black_box(&full), BATCH)
                    .unwrap(),
            )
        })
    });
    g.bench_function("encode_only_full_snapshot", |b| {
        b.iter(|| black_box(encode_batch(black_box(&batch), Reads::ALL).unwrap()))
    });
    g.finish();

    let mut g = c.benchmark_group("instance");
    g.throughput(Throughput::Elements(1));
    g.bench_function("fresh_configured_instance", |b| {
        b.iter(|| black_box(plugin.session(&ctx, None).unwrap()))
    });
    let mut session = plugin.session(&ctx, None).unwrap();
    g.bench_function("empty_batch_call", |b| {
        b.iter(|| black_box(session.score(&ctx, &[]).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
