//! Time as a trigger (contract 0.2.0): a pack's wakes fire through the one
//! evaluation path when the clock reaches them, with no event and no rescore,
//! and the timeline says which plugin's timer woke the customer. The clock is
//! the server's own, moved by the test: no sleeping for 46 days.

#[macro_use]
mod common;

use common::server::{Db, Pack, TestServer};
use serde_json::{json, Value};
use stagecraft::domain::time::Clock;

on_both_databases!(
    a_member_lapses_on_the_configured_day_and_a_visit_moves_the_wake,
    a_killed_host_s_wakes_fire_once_after_restart,
    a_nightly_schedule_runs_once_per_occurrence_across_hosts_and_once_after_a_restart,
);

const DAY: i64 = 86_400_000;
/// 2026-01-05T00:00:00Z.
const T0: i64 = 1_767_571_200_000;
const RULES: &str = r#"{"visit_kinds":["visit","class"],"gap_smoothing":0.3,"default_gap_days":7,"overdue_points_per_gap":20,"max_overdue_points":40,"missed_payment_points":20,"ending_within_days":30,"ending_points":20,"ended_points":30,"at_risk_from":50,"loyal_below":20,"loyal_min_days":180,"new_within_days":30,"lapsed_after_days":45,"offer":"group-plan","offer_follow_up_hours":24}"#;

async fn customer(s: &TestServer, id: &str) -> Value {
    let (status, c) = s.get(&format!("/v1/customers/{id}")).await;
    assert_eq!(status, 200, "{c}");
    c
}

fn segments(c: &Value) -> Vec<String> {
    c["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["segment"].as_str().unwrap().to_string())
        .collect()
}

/// Waits (at most 30 s of real time) until `done` holds for the customer.
async fn until(s: &TestServer, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let c = customer(s, id).await;
        if done(&c) {
            return c;
        }
        assert!(std::time::Instant::now() < deadline, "never {what}: {c}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn a_member_lapses_on_the_configured_day_and_a_visit_moves_the_wake(db: Db) {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").try_init();
    let fitness = Pack {
        stem: "fitness_studio",
        rules: Some(RULES),
        owns_lifecycle: false,
    };
    let s = TestServer::start_with_clock(db, &[fitness], Clock::at(T0)).await;
    for id in ["mia", "leo"] {
        let (status, c) = s.post("/v1/customers", json!({ "id": id })).await;
        assert_eq!(status, 201, "{c}");
        let (status, o) = s
            .post(
                &format!("/v1/customers/{id}/events"),
                json!({"kind": "visit"}),
            )
            .await;
        assert_eq!(status, 201, "{o}");
        // The next change with time alone: 14 days on, when the risk of a
        // member who usually comes weekly reaches `loyal_below`.
        assert_eq!(
            o["wakes"],
            json!([{"plugin": "fitness-studio", "due_at": T0 + 14 * DAY}])
        );
    }
    let mia = customer(&s, "mia").await;
    assert_eq!(segments(&mia), ["new"]);

    // Day 40: Leo comes again, which moves his wakes on; Mia does not.
    s.crm.clock().set(T0 + 40 * DAY);
    let (status, o) = s
        .post("/v1/customers/leo/events", json!({"kind": "visit"}))
        .await;
    assert_eq!(status, 201, "{o}");
    let leo_wake = o["wakes"][0]["due_at"].as_i64().unwrap();
    assert!(leo_wake > T0 + 46 * DAY, "{o}");

    // Day 46, with no event and no rescore: Mia lapsed on day 45.
    s.crm.clock().set(T0 + 46 * DAY);
    let mia = until(&s, "mia", "lapsed", |c| segments(c) == ["lapsed"]).await;
    assert_eq!(mia["wakes"], json!([]), "no change ahead but a visit");
    let lapsed = &mia["segments"][0];
    assert_eq!(lapsed["since"], T0 + 45 * DAY, "{mia}");
    assert_eq!(
        lapsed["reason"]["text"],
        "last visit 45 days ago, usually every 7 days"
    );
    let follow_ups: Vec<&Value> = mia["follow_ups"].as_array().unwrap().iter().collect();
    assert_eq!(follow_ups.len(), 1, "{mia}");
    assert_eq!(follow_ups[0]["key"], "win-back");
    assert_eq!(follow_ups[0]["due_at"], T0 + 46 * DAY);

    // The timeline names each timer and the plugin that set it; the lapse is
    // the newest, at the time it was due.
    let (status, t) = s.get("/v1/customers/mia/timeline").await;
    assert_eq!(status, 200, "{t}");
    let wakes: Vec<i64> = t["entries"]
        .as_array()
        .unwrap_or_else(|| t.as_array().expect("a list"))
        .iter()
        .filter(|e| e["type"] == "wake")
        .map(|e| {
            assert_eq!(e["plugin"], "fitness-studio", "{e}");
            e["at"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(wakes, [T0 + 45 * DAY, T0 + 30 * DAY, T0 + 14 * DAY], "{t}");

    // Leo came on day 40: not lapsed, his wake still ahead and unfired.
    let leo = customer(&s, "leo").await;
    assert!(!segments(&leo).contains(&"lapsed".to_string()), "{leo}");
    assert_eq!(leo["wakes"][0]["due_at"], leo_wake, "{leo}");
    s.finish().await;
}

/// Wakes due now for customers `w0000`..: the rows a plugin's `wake-at` writes,
/// put there directly so that no host fires them before the test's hosts start.
async fn due_wakes(s: &TestServer, n: usize) {
    let now = stagecraft::domain::now_ms();
    for i in 0..n {
        s.crm
            .customers()
            .create_customer(
                "acme",
                stagecraft::services::CustomerInput {
                    id: Some(format!("w{i:04}")),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let mut conn = s.crm.store().conn().await.unwrap();
    for i in 0..n {
        sqlx::query(
            "INSERT INTO wakes (tenant_id, customer_id, plugin, due_at, set_at) VALUES ('acme', $1, 'reminder', $2, $2)",
        )
        .bind(format!("w{i:04}"))
        .bind(now - 1_000)
        .execute(&mut *conn)
        .await
        .unwrap();
    }
}

/// (wakes fired per customer, hosts that fired them, wakes left, open win-back
/// follow-ups per customer) as stored.
async fn fired(s: &TestServer) -> (Vec<i64>, Vec<String>, i64, Vec<i64>) {
    let mut conn = s.crm.store().conn().await.unwrap();
    let per_customer: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM wake_log WHERE tenant_id = 'acme' GROUP BY customer_id ORDER BY customer_id",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let hosts: Vec<String> = sqlx::query_scalar("SELECT DISTINCT host FROM wake_log ORDER BY host")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM wakes")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let follow_ups: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM follow_ups WHERE follow_up_key = 'win-back' AND status = 'open' \
         GROUP BY customer_id ORDER BY customer_id",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    (per_customer, hosts, left, follow_ups)
}

/// Wakes a claim holds.
async fn claimed(s: &TestServer) -> i64 {
    let mut conn = s.crm.store().conn().await.unwrap();
    sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM wakes WHERE claimed_by IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

/// The reminder (its `on-wake` tags and opens `win-back`) and a plugin that
/// spends a while scoring each customer, so that a chunk of wakes takes long
/// enough for a host to die in the middle of it.
fn slow_reminder() -> [Pack<'static>; 2] {
    [
        Pack {
            stem: "reminder",
            rules: None,
            owns_lifecycle: false,
        },
        Pack {
            stem: "hostile",
            rules: Some(r#"{"mode": "slow", "value": 1}"#),
            owns_lifecycle: false,
        },
    ]
}

const LEASE: [(&str, &str); 1] = [("STAGECRAFT_WAKE_LEASE_MS", "1500")];

/// Waits (at most `secs` of real time) until `done` holds for what was fired.
async fn until_fired(
    s: &TestServer,
    secs: u64,
    done: impl Fn(&(Vec<i64>, Vec<String>, i64, Vec<i64>)) -> bool,
) -> (Vec<i64>, Vec<String>, i64, Vec<i64>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let f = fired(s).await;
        if done(&f) {
            return f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fired so far: {} customers, {} left",
            f.0.len(),
            f.2
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A `stagecraft serve` process is killed (SIGKILL) while it fires a burst of
/// due wakes; a new one started on the same database fires what is left when
/// the dead one's lease runs out. Every wake fired exactly once (counted in the
/// log and in its effects), none left.
async fn a_killed_host_s_wakes_fire_once_after_restart(db: Db) {
    const N: usize = 1200;
    let s = TestServer::start_idle(db, &slow_reminder()).await;
    due_wakes(&s, N).await;
    let dir = tempfile::tempdir().unwrap();
    let port = common::server::free_port();
    let mut first = common::server::spawn_serve(dir.path(), s.database_url(), port, &LEASE);
    // Killed once a chunk is done, while it holds a claim on the next.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if !fired(&s).await.0.is_empty() && claimed(&s).await > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no claim seen");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let held = claimed(&s).await;
    let (before, ..) = fired(&s).await;
    assert!(
        before.len() < N,
        "the kill came before the end of the burst"
    );
    assert!(
        held > 0,
        "the dead host held no claim: nothing tested the lease"
    );
    let port = common::server::free_port();
    let _second = common::server::spawn_serve(dir.path(), s.database_url(), port, &LEASE);
    let (per_customer, hosts, left, follow_ups) =
        until_fired(&s, 180, |f| f.0.len() == N && f.2 == 0).await;
    assert!(per_customer.iter().all(|&n| n == 1), "a wake fired twice");
    assert_eq!(hosts.len(), 2, "both processes fired: {hosts:?}");
    assert_eq!(left, 0);
    assert_eq!(follow_ups, vec![1; N], "one win-back follow-up each");
    s.finish().await;
}

/// Two hosts on one PostgreSQL, 1,000 wakes due at once: each fired exactly
/// once (counted), and both hosts fired some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_fire_a_thousand_wakes_each_once() {
    let Some(db) = Db::postgres() else { return };
    const N: usize = 1000;
    let s = TestServer::start_idle(db, &slow_reminder()).await;
    due_wakes(&s, N).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_a, port_b) = (common::server::free_port(), common::server::free_port());
    let _a = common::server::spawn_serve(dir_a.path(), s.database_url(), port_a, &LEASE);
    let _b = common::server::spawn_serve(dir_b.path(), s.database_url(), port_b, &LEASE);
    let (per_customer, hosts, left, follow_ups) =
        until_fired(&s, 180, |f| f.0.len() == N && f.2 == 0).await;
    assert!(per_customer.iter().all(|&n| n == 1), "a wake fired twice");
    assert_eq!(hosts.len(), 2, "both hosts fired: {hosts:?}");
    assert_eq!((left, follow_ups), (0, vec![1; N]));
    s.finish().await;
}

/// A history is scored as of its own end: a rescore and a dry-run take the
/// `now` plugins are told (the clock's otherwise), as ms or an RFC 3339 time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescore_and_a_dry_run_score_as_of_a_given_now() {
    let s = TestServer::start_idle(Db::Sqlite, &[common::server::pack("o2o_engagement")]).await;
    let (status, c) = s.post("/v1/customers", json!({"id": "old"})).await;
    assert_eq!(status, 201, "{c}");
    let body = json!({"kind": "order", "amount_cents": 1200, "at": "1998-06-20T00:00:00Z"});
    let (status, o) = s.post("/v1/customers/old/events", body).await;
    assert_eq!(status, 201, "{o}");
    let recency = |c: &Value| {
        c["scores"]["o2o-engagement"]["reasons"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (status, j) = s
        .post("/v1/rescore?now=1998-07-01T00:00:00Z", json!(null))
        .await;
    assert_eq!(status, 202, "{j}");
    let job = s.wait_for_job(j["job"].as_str().unwrap()).await;
    assert_eq!(job["params"]["now"], 899_251_200_000i64, "{job}");
    assert_eq!(
        recency(&customer(&s, "old").await),
        "R5: last order 11 days ago"
    );

    let (status, r) = s
        .post(
            "/v1/plugins/o2o-engagement/dry-run",
            json!({"now": "1998-09-01", "top": 5}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["as_of"].as_i64(), r["customers"].as_i64()),
        (Some(904_608_000_000), Some(1)),
        "{r}"
    );

    let (status, e) = s.post("/v1/rescore?now=yesterday", json!(null)).await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a time"),
        "{e}"
    );
    s.finish().await;
}

/// Another host of the same database, on the same clock, whose schedule
/// worker the test starts and stops.
async fn host_on(s: &TestServer, clock: &Clock) -> stagecraft::Crm {
    let store = stagecraft::store::Store::connect(s.database_url())
        .await
        .unwrap();
    let runtime = stagecraft::runtime::Runtime::new(common::test_limits(), None).unwrap();
    stagecraft::Crm::with_clock(store, stagecraft::packs::Packs::new(runtime), clock.clone())
}

/// The jobs the schedule `id` started, as `GET /v1/jobs` lists them.
async fn scheduled_jobs(s: &TestServer, id: &str) -> Vec<Value> {
    let (status, j) = s.get("/v1/jobs?limit=500").await;
    assert_eq!(status, 200, "{j}");
    j["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["params"]["schedule"] == id)
        .cloned()
        .collect()
}

async fn until_runs(s: &TestServer, id: &str, runs: i64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, sch) = s.get(&format!("/v1/schedules/{id}")).await;
        assert_eq!(status, 200, "{sch}");
        if sch["runs"].as_i64() >= Some(runs) {
            return sch;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never ran {runs} times: {sch}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A nightly schedule with two hosts running schedules: each occurrence starts
/// one rescore; then every host stops, three nights pass, and a host started
/// again runs the missed occurrences once, not three times.
async fn a_nightly_schedule_runs_once_per_occurrence_across_hosts_and_once_after_a_restart(db: Db) {
    let clock = Clock::at(T0);
    let s = TestServer::start_idle(db, &[common::server::pack("value_tiers")]).await;
    // The server reads the same time as the hosts.
    s.crm.clock().set(T0);
    let (a, b) = (host_on(&s, &clock).await, host_on(&s, &clock).await);
    let workers = [a.schedules().run(), b.schedules().run()];

    for bad in [
        json!({"cron": "61 * * * *"}),
        json!({"cron": "0 3 * * *", "kind": "email"}),
    ] {
        let (status, e) = s.post("/v1/schedules", bad).await;
        assert_eq!(status, 422, "{e}");
    }
    let (status, sch) = s.post("/v1/schedules", json!({"cron": "0 3 * * *"})).await;
    assert_eq!(status, 201, "{sch}");
    let id = sch["id"].as_str().unwrap().to_string();
    assert_eq!(
        sch["next_at"],
        T0 + 3 * 3_600_000,
        "nightly at 03:00 UTC: {sch}"
    );

    for night in 0..3 {
        clock.set(T0 + night * DAY + 3 * 3_600_000);
        let sch = until_runs(&s, &id, night + 1).await;
        assert_eq!(
            sch["next_at"],
            T0 + (night + 1) * DAY + 3 * 3_600_000,
            "{sch}"
        );
        // Let both hosts look again: nothing more starts this night.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        clock.set(T0 + night * DAY + 4 * 3_600_000);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(scheduled_jobs(&s, &id).await.len() as i64, night + 1);
    }

    // Every host stops; three nights pass; one host starts.
    for w in workers {
        w.abort();
    }
    clock.set(T0 + 5 * DAY + 12 * 3_600_000);
    let c = host_on(&s, &clock).await;
    let worker = c.schedules().run();
    let sch = until_runs(&s, &id, 4).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (_, sch_after) = s.get(&format!("/v1/schedules/{id}")).await;
    assert_eq!(
        sch_after["runs"], 4,
        "the missed nights ran once: {sch_after}"
    );
    assert_eq!(sch["next_at"], T0 + 6 * DAY + 3 * 3_600_000, "{sch}");
    assert_eq!(
        sch["last_at"],
        T0 + 3 * DAY + 3 * 3_600_000,
        "the first missed: {sch}"
    );
    let jobs = scheduled_jobs(&s, &id).await;
    assert_eq!(jobs.len(), 4);
    assert_eq!(jobs[0]["id"], sch["last_job"]);
    assert_eq!(jobs[0]["kind"], "rescore");
    worker.abort();

    let (status, _) = s
        .req(reqwest::Method::DELETE, &format!("/v1/schedules/{id}"))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 204);
    let (status, _) = s.get(&format!("/v1/schedules/{id}")).await;
    assert_eq!(status, 404);
    s.finish().await;
}

/// A served process is killed (SIGKILL) while it starts the jobs of many due
/// schedules; another started on the same database starts the rest. Each
/// schedule's occurrence started exactly one job, none was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_s_schedules_each_start_one_job() {
    let Some(db) = Db::postgres() else { return };
    const TENANTS: usize = 10;
    const PER_TENANT: usize = 20;
    const CUSTOMERS: i64 = 20_000;
    let s = TestServer::start_idle(db, &[]).await;
    let yesterday = stagecraft::domain::now_ms() - DAY;
    {
        let mut conn = s.crm.store().conn().await.unwrap();
        for t in 0..TENANTS {
            let tenant = format!("t{t}");
            sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $1, 0)")
                .bind(&tenant)
                .execute(&mut *conn)
                .await
                .unwrap();
            // Enough customers that starting a rescore takes a moment.
            sqlx::query(
                "INSERT INTO customers (tenant_id, id, created_at, updated_at) \
                 SELECT $1, 'c' || i, 0, 0 FROM generate_series(1, $2) AS i",
            )
            .bind(&tenant)
            .bind(CUSTOMERS)
            .execute(&mut *conn)
            .await
            .unwrap();
            for k in 0..PER_TENANT {
                sqlx::query(
                    "INSERT INTO schedules (id, tenant_id, cron, kind, next_at, runs, created_at, created_by) \
                     VALUES ($1, $2, '0 3 * * *', 'rescore', $3, 0, 0, 'test')",
                )
                .bind(format!("sch-{t}-{k}"))
                .bind(&tenant)
                .bind(yesterday)
                .execute(&mut *conn)
                .await
                .unwrap();
            }
        }
    }
    let total = (TENANTS * PER_TENANT) as i64;
    let counts = || async {
        let mut conn = s.crm.store().conn().await.unwrap();
        let ran: i64 = sqlx::query_scalar("SELECT CAST(SUM(runs) AS BIGINT) FROM schedules")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let jobs: Vec<i64> = sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM jobs WHERE kind = 'rescore' \
             GROUP BY CAST(params AS json)->>'schedule' ORDER BY 1",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        (ran, jobs)
    };
    let dir = tempfile::tempdir().unwrap();
    let mut first = common::server::spawn_serve(
        dir.path(),
        s.database_url(),
        common::server::free_port(),
        &[],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (ran, _) = counts().await;
        if ran > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no schedule ran");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let (ran_before, _) = counts().await;
    assert!(ran_before < total, "the kill came after every schedule ran");
    let _second = common::server::spawn_serve(
        dir.path(),
        s.database_url(),
        common::server::free_port(),
        &[],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let jobs = loop {
        let (ran, jobs) = counts().await;
        if ran == total {
            break jobs;
        }
        assert!(std::time::Instant::now() < deadline, "{ran} of {total} ran");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // One job per schedule (each job's params name its schedule), every
    // schedule once: the runs add up and no params appear twice.
    assert_eq!(jobs.len() as i64, total, "a job per schedule");
    assert!(jobs.iter().all(|&n| n == 1), "a schedule started two jobs");
    s.finish().await;
}

/// A claim holds its wakes from other hosts until its lease runs out, unless
/// it lets go (its chunk failed): then they are due again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_holds_its_wakes_until_it_lets_go() {
    let s = TestServer::start_idle(Db::Sqlite, &[]).await;
    due_wakes(&s, 3).await;
    let now = stagecraft::domain::now_ms();
    let backend = s.crm.store().backend();
    let mut conn = s.crm.store().conn().await.unwrap();
    use stagecraft::store::claim_wakes;
    let a = claim_wakes(&mut conn, backend, "a", now, now + 60_000, 10)
        .await
        .unwrap();
    assert_eq!(a.len(), 3);
    let b = claim_wakes(&mut conn, backend, "b", now, now + 60_000, 10)
        .await
        .unwrap();
    assert!(b.is_empty(), "held by a");
    assert_eq!(
        stagecraft::store::release_claim(&mut conn, "a")
            .await
            .unwrap(),
        3
    );
    let again = claim_wakes(&mut conn, backend, "b", now, now + 60_000, 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 3);
    drop(conn);
    s.finish().await;
}
