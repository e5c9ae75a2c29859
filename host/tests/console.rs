//! The console end to end in headless Chromium (Debian's `chromium`, driven by
//! playwright-core from `tests/browser`; `cargo xtask test` installs both): sign
//! in, upload a plugin version, dry-run it, activate it, see the funnel change,
//! roll back. Screenshots are saved to `target/browser-artifacts/`.

#[macro_use]
mod common;

use common::server::{pack, Db, TestServer};
use serde_json::json;
use stagecraft::domain::{now_ms, Role};
use std::path::PathBuf;

const DAY: i64 = 86_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_uploads_dry_runs_activates_and_rolls_back() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let browser_dir = root.join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in {}: run `cargo xtask test` (it runs `npm ci` there)",
        browser_dir.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: run `cargo xtask test` (it installs Debian's chromium)"
    );

    // A tenant scored by value-tiers, with no lifecycle owner yet.
    // The reminder opens a follow-up on each visit: the work list's items.
    let s = TestServer::start(Db::Sqlite, &[pack("value_tiers"), pack("reminder")]).await;
    let now = now_ms();
    for i in 0..12 {
        let id = format!("buyer-{i:02}");
        let (status, c) = s
            .post(
                "/v1/customers",
                json!({"id": id, "name": format!("Buyer {i}"), "source": "web",
                       "fields": {"industry": "retail", "email": format!("b{i}@example.com")}}),
            )
            .await;
        assert_eq!(status, 201, "{c}");
        for k in 0..(i % 4) {
            let (status, o) = s
                .post(
                    &format!("/v1/customers/{id}/events"),
                    json!({"kind": "order", "amount_cents": 10_000 + 5_000 * i,
                           "at": now - (40 - 10 * k) * DAY}),
                )
                .await;
            assert_eq!(status, 201, "{o}");
        }
        if i % 4 == 0 {
            s.post(
                &format!("/v1/customers/{id}/events"),
                json!({"kind": "inquiry", "channel": "web", "fields": {"question": "price?"}}),
            )
            .await;
        }
    }
    // The admin's token is labelled `test`: its agent looks after four buyers.
    for i in 0..4 {
        let id = format!("buyer-{i:02}");
        let (status, c) = s
            .patch(&format!("/v1/customers/{id}"), json!({"owner": "test"}))
            .await;
        assert_eq!(status, 200, "{c}");
        let (status, o) = s
            .post(
                &format!("/v1/customers/{id}/events"),
                json!({"kind": "visit"}),
            )
            .await;
        assert_eq!(status, 201, "{o}");
    }
    let viewer = s.token_for(Role::Viewer).await;
    let artifacts = root.join("target/browser-artifacts");
    let out = tokio::process::Command::new("node")
        .current_dir(&browser_dir)
        .arg("console.mjs")
        .arg(&s.base)
        .arg(&s.token)
        .arg(&viewer)
        .arg(common::wasm_path("b2b_trade"))
        .arg(&artifacts)
        .env("CHROMIUM", &chromium)
        .output()
        .await
        .expect("node runs (cargo xtask test installs Node.js packages)");
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser test failed:\n{said}");
    assert!(said.contains("console test passed"), "{said}");

    // What the page did is what the server holds.
    let (_, audit) = s.get("/v1/audit?limit=50").await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"].as_str().unwrap_or("").starts_with("b2b-trade"))
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["plugin.upload", "plugin.activate", "plugin.rollback"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let (_, p) = s.get("/v1/plugins/b2b-trade").await;
    assert!(p["active"].is_null(), "rolled back to nothing: {p}");
    // The work list's Done and Snooze, and the schedule added on the page.
    let (_, list) = s.get("/v1/follow-ups").await;
    assert_eq!(
        list["later"].as_array().unwrap().len(),
        3,
        "one done: {list}"
    );
    let (_, sch) = s.get("/v1/schedules").await;
    assert_eq!(sch["schedules"][0]["cron"], "0 3 * * *", "{sch}");
    for shot in [
        "01-sign-in",
        "05-dry-run",
        "08-analytics-after-activation",
        "11-analytics-after-rollback",
        "13-phone-analytics",
    ] {
        let f = artifacts.join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&f)
                .map(|m| m.len() > 1000)
                .unwrap_or(false),
            "{} missing",
            f.display()
        );
    }
    s.finish().await;
}
