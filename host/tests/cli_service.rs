//! The database commands of the `stagecraft` binary, run as a user would:
//! `token create`, `plugin install`, `import`, and `serve` configured by a file,
//! the environment and flags.

mod common;

use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn stagecraft(data_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stagecraft"));
    c.arg("--data-dir")
        .arg(data_dir)
        .env_remove("STAGECRAFT_DATABASE_URL")
        .env_remove("STAGECRAFT_LISTEN");
    c
}

fn json_out(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `base` answers /healthz within 30 s.
fn healthy(base: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::blocking::get(format!("{base}/healthz")) {
            if r.status().is_success() {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn wait_healthy(base: &str) {
    assert!(healthy(base), "{base} did not become healthy");
}

#[test]
fn tokens_imports_and_a_configured_server_work_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let db_url = format!("sqlite:{}", db.display());
    let with_db = |c: &mut Command| {
        c.args(["--database-url", &db_url]);
    };

    let mut c = stagecraft(dir.path());
    c.args(["token", "create", "--tenant", "shop", "--role", "agent"]);
    with_db(&mut c);
    let token = json_out(&mut c);
    assert_eq!(token["role"], "agent");
    let secret = token["token"].as_str().unwrap().to_string();

    let mut c = stagecraft(dir.path());
    c.args(["plugin", "install", "--tenant", "shop", "--enable"])
        .arg(common::wasm_path("value_tiers"));
    with_db(&mut c);
    let installed = json_out(&mut c);
    assert_eq!(
        (installed["name"].as_str(), installed["enabled"].as_bool()),
        (Some("value-tiers"), Some(true))
    );

    let orders = dir.path().join("orders.txt");
    std::fs::write(&orders, " 00001 19970101  1   11.77\n 00002 19970112  1   12.00\n 00002 19970112  5   77.00\n 00003 1997XX02  2   20.76\n").unwrap();
    let mut c = stagecraft(dir.path());
    c.args([
        "import",
        "cdnow",
        "--tenant",
        "shop",
        "--now",
        "899251200000",
    ])
    .arg(&orders);
    with_db(&mut c);
    let report = json_out(&mut c);
    assert_eq!(
        (report["rows"].as_u64(), report["imported"].as_u64()),
        (Some(4), Some(3)),
        "{report}"
    );
    assert_eq!(report["errors"][0]["line"], 4);

    let mut c = stagecraft(dir.path());
    c.args(["rescore", "--tenant", "shop"]);
    with_db(&mut c);
    let job = json_out(&mut c);
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_i64(),
            job["total"].as_i64()
        ),
        (Some("done"), Some(2), Some(2)),
        "{job}"
    );

    // The config file says one database and port; the environment overrides the
    // database, the flag overrides the port.
    let port = free_port();
    let config = dir.path().join("stagecraft.toml");
    let mut f = std::fs::File::create(&config).unwrap();
    writeln!(
        f,
        "listen = \"127.0.0.1:1\"\ndatabase_url = \"sqlite:{}/wrong.db\"",
        dir.path().display()
    )
    .unwrap();
    let mut c = stagecraft(dir.path());
    c.args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("STAGECRAFT_DATABASE_URL", &db_url)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = Server(c.spawn().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base);
    let client = reqwest::blocking::Client::new();
    let c2: Value = client
        .get(format!("{base}/v1/customers/00002"))
        .bearer_auth(&secret)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(c2["metrics"]["orders"], 2, "{c2}");
    assert_eq!(c2["metrics"]["purchase_days"], 1);
    assert_eq!(
        c2["scores"]["value-tiers"]["plugin_version"],
        installed["version"]
    );
    assert!(
        !dir.path().join("wrong.db").exists(),
        "the environment overrides the config file"
    );
}

#[test]
fn a_bad_database_url_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = stagecraft(dir.path())
        .args([
            "token",
            "create",
            "--tenant",
            "t",
            "--role",
            "admin",
            "--database-url",
            "mysql://nope",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: database URL \"mysql://nope\""),
        "{err}"
    );
}

#[test]
fn the_demo_starts_fresh_with_packs_and_data_and_prints_a_working_token() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let orders = dir.path().join("orders.txt");
    std::fs::write(&orders, "customer_id date number_of_cds dollar_value\n 00001 19970101 1 11.77\n 00002 19970112 1 12.00\n 00002 19970301 5 77.00\n 00003 19970102 2 20.76\n").unwrap();
    for round in 0..2 {
        let port = free_port();
        let mut c = stagecraft(dir.path());
        c.args(["demo", "--listen", &format!("127.0.0.1:{port}"), "--cdnow"])
            .arg(&orders)
            .args(["--cdnow-lines", "3", "--pack"])
            .arg(common::wasm_path("b2b_trade"))
            .arg("--pack")
            .arg(common::wasm_path("value_tiers"))
            .arg("--pack")
            .arg(common::wasm_path("o2o_engagement"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join(format!("demo-{round}.log"))).unwrap());
        let mut server = Server(c.spawn().unwrap());
        let stdout = std::io::BufReader::new(server.0.stdout.take().unwrap());
        let mut lines = stdout.lines();
        let token = lines
            .by_ref()
            .map(|l| l.unwrap())
            .find_map(|l| {
                l.trim()
                    .strip_prefix("token:")
                    .map(|t| t.trim().to_string())
            })
            .expect("the demo prints a token");
        // Stop reading here: the server must keep serving even if nobody reads its stdout.
        drop(lines);
        let base = format!("http://127.0.0.1:{port}");
        if !healthy(&base) {
            let log =
                std::fs::read_to_string(dir.path().join(format!("demo-{round}.log"))).unwrap();
            panic!("round {round}: the demo did not become healthy:\n{log}");
        }
        let client = reqwest::blocking::Client::new();
        let get = |path: &str| -> Value {
            client
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .unwrap()
                .json()
                .unwrap()
        };
        let funnel = get("/v1/analytics/funnel");
        assert_eq!(funnel["owner"], "b2b-trade", "round {round}: {funnel}");
        let plugins = get("/v1/plugins");
        assert_eq!(plugins["plugins"].as_array().unwrap().len(), 3);
        // Three order lines after the header: 00001 once, 00002 twice, not 00003; and a
        // fresh database each round (the second round would double the orders otherwise).
        let list = get("/v1/customers?limit=500");
        let ids: Vec<&str> = list["customers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        let cdnow: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| id.starts_with('0'))
            .collect();
        assert_eq!(cdnow, ["00001", "00002"], "round {round}");
        // And the demo stories, once each.
        assert_eq!(
            ids.iter().filter(|id| id.starts_with("trade-")).count(),
            8,
            "round {round}: {ids:?}"
        );
        assert_eq!(get("/v1/customers/trade-partner")["stage"], "partner");
        // The history's wakes fire at start (their time is long past): 00002,
        // a repeat buyer whose last order was on 1997-03-01, was due a reorder
        // 14 days later and lapsed 180 days later, back to first purchase.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let c2 = loop {
            let c = get("/v1/customers/00002");
            if c["wakes"].as_array().is_some_and(|w| w.is_empty()) {
                break c;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "wakes never fired: {c}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        assert_eq!(c2["metrics"]["orders"], 2, "round {round}");
        assert_eq!(c2["stage"], "first-purchase", "{c2}");
        const MAR_1_1997: i64 = 857_174_400_000;
        const DAY: i64 = 86_400_000;
        let due = |plugin: &str, key: &str| -> Option<i64> {
            c2["follow_ups"].as_array().unwrap().iter().find_map(|f| {
                (f["plugin"] == plugin && f["key"] == key && f["status"] == "open")
                    .then(|| f["due_at"].as_i64().unwrap())
            })
        };
        // Due where they belong in that history, not in the year of the demo.
        assert_eq!(
            due("b2b-trade", "reorder"),
            Some(MAR_1_1997 + 14 * DAY),
            "{c2}"
        );
        assert_eq!(
            due("b2b-trade", "stage"),
            Some(MAR_1_1997 + 180 * DAY + 7 * DAY),
            "{c2}"
        );
        // The story customers are the demo agent's: its work list has them.
        let work = get("/v1/follow-ups");
        assert_eq!(work["owner"], "demo admin", "{work}");
        let items: Vec<&Value> = ["overdue", "due_today", "later"]
            .iter()
            .flat_map(|p| work[p].as_array().unwrap())
            .collect();
        assert!(!items.is_empty(), "{work}");
        assert!(items.iter().all(|i| i["owner"] == "demo admin"));
        // No customer has two open follow-ups of one plugin and key, and none
        // names a stage the customer has left.
        for id in &ids {
            let c = get(&format!("/v1/customers/{id}"));
            let mut keys = std::collections::BTreeSet::new();
            for f in c["follow_ups"].as_array().unwrap() {
                if f["status"] != "open" || f["key"].is_null() {
                    continue;
                }
                assert!(
                    keys.insert((f["plugin"].to_string(), f["key"].to_string())),
                    "two open follow-ups with one key: {c}"
                );
                if f["plugin"] == "b2b-trade" && f["key"] == "stage" {
                    let stage = c["stage"].as_str().unwrap();
                    assert_eq!(
                        f["note"],
                        format!("Follow up with a {stage} customer"),
                        "{c}"
                    );
                }
            }
        }
    }
}

/// `--log-format json`: every line is a JSON object; every line written while a
/// request is served carries its request id (the client's `X-Request-Id`, echoed);
/// and a sensitive value never reaches the log or the audit trail, even from a
/// plugin that was granted it and writes it to its log, stdout, stderr, an error
/// and a panic.
#[test]
fn json_logs_carry_the_request_id_and_never_a_sensitive_value() {
    const SECRET: &str = "ana.secret@example.com";
    let dir = tempfile::tempdir().unwrap();
    let token = json_out(
        stagecraft(dir.path()).args(["token", "create", "--tenant", "acme", "--role", "admin"]),
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    let rules = dir.path().join("leak.json");
    std::fs::write(&rules, r#"{"mode": "leak"}"#).unwrap();
    json_out(
        stagecraft(dir.path())
            .args([
                "plugin",
                "install",
                "--tenant",
                "acme",
                "--enable",
                "--owns-lifecycle",
                "--rules",
            ])
            .arg(&rules)
            .arg(common::wasm_path("hostile")),
    );
    let log_path = dir.path().join("server.log");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = Server(
        stagecraft(dir.path())
            .args(["--log-format", "json", "serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("STAGECRAFT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_healthy(&base);
    let http = reqwest::blocking::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>, rid: &str| {
        let mut r = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&token)
            .header("x-request-id", rid);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().unwrap();
        assert_eq!(resp.headers()["x-request-id"], rid, "echoed");
        (resp.status().as_u16(), resp.json::<Value>().unwrap())
    };
    use reqwest::Method;
    let (status, b) = call(
        Method::PUT,
        "/v1/plugins/hostile/grants",
        Some(serde_json::json!({"fields": ["email"]})),
        "grant-1",
    );
    assert_eq!(status, 200, "{b}");
    let (status, b) = call(
        Method::POST,
        "/v1/customers",
        Some(serde_json::json!({"id": "ana", "fields": {"email": SECRET, "city": "Porto"}})),
        "create-1",
    );
    assert_eq!(status, 201, "{b}");
    let (status, o) = call(
        Method::POST,
        "/v1/customers/ana/events",
        Some(serde_json::json!({"kind": "visit"})),
        "event-1",
    );
    assert_eq!(
        status, 201,
        "the event is stored although the plugin failed: {o}"
    );
    // The batch paths too: a dry-run (scores and segments in one instance each).
    let (status, d) = call(
        Method::POST,
        "/v1/plugins/hostile/dry-run",
        Some(serde_json::json!({"rules": {"mode": "leak"}})),
        "dry-1",
    );
    assert_eq!(status, 200, "{d}");
    let (_, timeline) = call(Method::GET, "/v1/customers/ana/timeline", None, "tl-1");
    let (_, audit) = call(Method::GET, "/v1/audit", None, "audit-1");
    let bad_id = http
        .get(format!("{base}/v1/customers"))
        .bearer_auth(&token)
        .header("x-request-id", "not acceptable: spaces")
        .send()
        .unwrap();
    let made = bad_id.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        made.len() == 32 && made.bytes().all(|b| b.is_ascii_hexdigit()),
        "{made}"
    );
    drop(_server);

    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of = |rid: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["span"]["request_id"] == rid)
            .collect()
    };
    let event_lines = of("event-1");
    let text = |l: &Value| l["fields"]["message"].as_str().unwrap_or("").to_string();
    assert!(
        event_lines
            .iter()
            .any(|l| text(l) == "served" && l["fields"]["status"] == 201),
        "{log}"
    );
    assert!(
        event_lines
            .iter()
            .any(|l| text(l).contains("the email is [withheld]")),
        "the plugin's own log line, within the request: {log}"
    );
    assert!(
        event_lines
            .iter()
            .any(|l| text(l).contains("plugin failed")),
        "{log}"
    );
    assert!(of("dry-1").iter().any(|l| text(l) == "served"), "{log}");
    assert!(lines
        .iter()
        .any(|l| l["span"]["request_id"] == made.as_str()));
    // The value reached the plugin (it was granted) but nowhere else.
    assert!(!log.contains(SECRET), "the log holds the secret: {log}");
    assert!(log.contains("[withheld]"));
    assert!(!audit.to_string().contains(SECRET), "{audit}");
    let t = timeline.to_string();
    assert!(
        !t.contains(SECRET) && t.contains("cannot score [withheld]"),
        "{t}"
    );
    assert!(!d.to_string().contains(SECRET), "{d}");
}

/// `stagecraft plugin install` goes through the registry's own checks, the ones
/// the API's upload, rule-set and activation requests make: the size cap and the
/// rules' JSON Schema; a refused install stores nothing (the next install of the
/// same component is the one that stores it).
#[test]
fn plugin_install_makes_the_checks_of_the_api_and_a_refused_one_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let install = |extra: &[&str], file: &Path| {
        let mut c = stagecraft(dir.path());
        c.args(["plugin", "install", "--tenant", "shop"])
            .args(extra)
            .arg(file);
        c.output().unwrap()
    };
    let fail_text = |out: std::process::Output| {
        assert!(!out.status.success(), "refused");
        String::from_utf8_lossy(&out.stderr).to_string()
    };

    // Rules that do not fit value-tiers' schema (a string where an integer goes).
    let rules = dir.path().join("bad.json");
    std::fs::write(
        &rules,
        r#"{"high_min_net_cents": "lots", "high_min_purchase_days": 2, "medium_min_net_cents": 0,
            "cost_per_order_cents": 0, "cost_per_touchpoint_cents": 0, "cost_per_complaint_cents": 0}"#,
    )
    .unwrap();
    let err = fail_text(install(
        &["--enable", "--rules", rules.to_str().unwrap()],
        &common::wasm_path("value_tiers"),
    ));
    assert!(
        err.contains("rule set was rejected") && err.contains("high_min_net_cents"),
        "{err}"
    );

    // Over the API's 16 MiB cap: refused before it is even loaded.
    let big = dir.path().join("big.wasm");
    let mut bytes = common::wasm("value_tiers");
    bytes.resize(17 << 20, 0);
    std::fs::write(&big, bytes).unwrap();
    let err = fail_text(install(&["--enable"], &big));
    assert!(err.contains("at most 16777216 are accepted"), "{err}");

    // Nothing was stored by the refusals: this install is the first to store it.
    let out = install(&["--enable"], &common::wasm_path("value_tiers"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["stored"].as_bool(), v["enabled"].as_bool()),
        (Some(true), Some(true)),
        "{v}"
    );
}

/// A database written by the release before contract 0.2.0 (schema of
/// migration 0006, value-tiers built with the 0.1.0 SDK stored and enabled,
/// nine CDNOW customers imported and rescored by that release;
/// `tests/fixtures/contract-0.1.0/before-upgrade.db`)
/// is upgraded in place, and its stored 0.1.0 plugin loads and answers: a
/// rescore gives every customer the score the old release stored, and a new
/// event is scored by it.
#[test]
fn a_database_from_before_the_upgrade_keeps_its_0_1_0_plugin_working() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/contract-0.1.0/before-upgrade.db"),
        dir.path().join("stagecraft.db"),
    )
    .unwrap();
    let token = json_out(
        stagecraft(dir.path()).args(["token", "create", "--tenant", "shop", "--role", "admin"]),
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = Server(
        stagecraft(dir.path())
            .args(["serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_healthy(&base);
    let http = reqwest::blocking::Client::new();
    let get = |path: &str| -> Value {
        let r = http
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().unwrap()
    };
    let stored: Vec<(String, Value)> = (1..=9)
        .map(|i| {
            let id = format!("0000{i}");
            let c = get(&format!("/v1/customers/{id}"));
            (id, c["scores"]["value-tiers"]["value"].clone())
        })
        .collect();
    assert_eq!(stored[2], ("00003".to_string(), json!(126.46)));

    let r = http
        .post(format!("{base}/v1/rescore"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = get(job["status"].as_str().unwrap());
        if j["status"] == "done" {
            assert_eq!(j["done"], 9, "{j}");
            break;
        }
        assert!(Instant::now() < deadline, "{j}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (id, value) in &stored {
        let c = get(&format!("/v1/customers/{id}"));
        assert_eq!(&c["scores"]["value-tiers"]["value"], value, "{id}");
    }
    let r = http
        .post(format!("{base}/v1/customers/00001/events"))
        .bearer_auth(&token)
        .json(&json!({"kind": "order", "amount_cents": 5000}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let o: Value = r.json().unwrap();
    assert_eq!(o["scores"]["value-tiers"]["version"], "0.1.0", "{o}");
    assert!(o["failures"].as_array().unwrap().is_empty(), "{o}");
}
