//! `stagecraft plugin check` and `plugin run`, as a user runs them.

mod common;

use common::*;
use std::process::Command;

fn stagecraft(args: &[&str]) -> (bool, String, String) {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stagecraft"))
        .arg("--data-dir")
        .arg(data.path())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn check_fails_with(file: &std::path::Path, expected: &str) {
    let (ok, stdout, stderr) = stagecraft(&["plugin", "check", file.to_str().unwrap()]);
    assert!(!ok, "check accepted {}", file.display());
    assert!(stdout.is_empty(), "{stdout}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    assert!(
        lines[0].contains(expected),
        "{:?} does not contain {expected:?}",
        lines[0]
    );
}

#[test]
fn check_accepts_value_tiers_and_prints_its_manifest() {
    let (ok, stdout, stderr) = stagecraft(&[
        "plugin",
        "check",
        wasm_path("value_tiers").to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["manifest"]["name"], "value-tiers");
    assert_eq!(v["manifest"]["version"], "0.1.0");
    assert_eq!(v["manifest"]["scoring"], true);
    let segments: Vec<&str> = v["manifest"]["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        segments,
        [
            "high-return",
            "medium-return",
            "low-return",
            "negative-return"
        ]
    );
    assert!(v["digest"].as_str().unwrap().starts_with("sha256:"));
}

/// `stagecraft plugin check X | head -3`: the reader goes away before the
/// output is written; that ends the command quietly, not with a panic.
#[test]
fn a_reader_that_stops_early_is_no_panic() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stagecraft"))
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "plugin",
            "check",
            wasm_path("value_tiers").to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The pipe closed before the check (a compile) is done and prints.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?} {stderr}", out.status);
}

#[test]
fn check_rejects_a_file_that_is_not_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("notes.wasm");
    std::fs::write(&f, "this is a text file").unwrap();
    check_fails_with(&f, "not a WebAssembly binary");
}

#[test]
fn check_rejects_a_core_module() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("core.wasm");
    // The smallest valid core module: magic and version 1.
    std::fs::write(&f, b"\0asm\x01\0\0\0").unwrap();
    check_fails_with(&f, "a core WebAssembly module, not a component");
}

#[test]
fn check_rejects_a_component_of_another_world() {
    check_fails_with(
        &wasm_path("other-world"),
        "not a Stagecraft plugin: it does not export stagecraft:plugin/pack@0.1.0 or @0.2.0 (it exports: wasi:cli/run@",
    );
}

#[test]
fn check_rejects_an_ungranted_import_naming_it() {
    check_fails_with(
        &wasm_path("forbidden_import"),
        "imports acme:net/outbound@1.0.0, which Stagecraft does not grant to plugins",
    );
}

#[test]
fn check_reports_a_missing_file() {
    let (ok, _, stderr) = stagecraft(&["plugin", "check", "/nonexistent/plugin.wasm"]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot read /nonexistent/plugin.wasm"),
        "{stderr}"
    );
}

#[test]
fn run_scores_and_segments_the_example_customers() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let customers = root.join("examples/customers.json");
    let (ok, stdout, stderr) = stagecraft(&[
        "plugin",
        "run",
        wasm_path("value_tiers").to_str().unwrap(),
        "--customers",
        customers.to_str().unwrap(),
        "--now",
        "1732406400000",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = v["customers"].as_array().unwrap();
    let bands: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap(),
                r["score"]["band"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        bands,
        [
            ("acme-trading", "high"),
            ("blue-yoga", "medium"),
            ("corner-cafe", "low"),
            ("grumpy-gadgets", "negative")
        ]
    );
    assert_eq!(rows[3]["segments"][0]["segment"], "negative-return");
    let texts: Vec<&str> = rows[0]["score"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert!(texts.contains(&"spent 18600 over 14 orders"), "{texts:?}");
}

#[test]
fn run_with_rules_from_a_file_and_chinese_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let customers = dir.path().join("c.json");
    std::fs::write(&customers, r#"[{"id": "x", "metrics": {"orders": 2, "purchase_days": 2, "total_spend_cents": 30000}}]"#)
        .unwrap();
    let rules = dir.path().join("r.json");
    std::fs::write(
        &rules,
        r#"{"high_min_net_cents": 20000, "high_min_purchase_days": 2, "medium_min_net_cents": 100,
            "cost_per_order_cents": 0, "cost_per_touchpoint_cents": 0, "cost_per_complaint_cents": 0}"#,
    )
    .unwrap();
    let (ok, stdout, stderr) = stagecraft(&[
        "plugin",
        "run",
        wasm_path("value_tiers").to_str().unwrap(),
        "--customers",
        customers.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
        "--lang",
        "zh",
        "--now",
        "0",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["customers"][0]["score"]["band"], "high");
    assert_eq!(
        v["customers"][0]["score"]["reasons"][0]["text"],
        "2 笔订单共消费 300"
    );
}

#[test]
fn run_rejects_bad_rules_with_the_plugins_message() {
    let dir = tempfile::tempdir().unwrap();
    let customers = dir.path().join("c.json");
    std::fs::write(&customers, r#"[{"id": "x"}]"#).unwrap();
    let rules = dir.path().join("r.json");
    std::fs::write(&rules, r#"{"high_min_net_cents": "lots"}"#).unwrap();
    let (ok, _, stderr) = stagecraft(&[
        "plugin",
        "run",
        wasm_path("value_tiers").to_str().unwrap(),
        "--customers",
        customers.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("plugin value-tiers@0.1.0: bad rules: invalid type: string \"lots\""),
        "{stderr}"
    );
}

#[test]
fn run_rejects_malformed_customers_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let customers = dir.path().join("c.json");
    std::fs::write(&customers, r#"[{"id": 5}]"#).unwrap();
    let (ok, _, stderr) = stagecraft(&[
        "plugin",
        "run",
        wasm_path("value_tiers").to_str().unwrap(),
        "--customers",
        customers.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("c.json"), "{stderr}");
}

#[test]
fn the_plugin_template_builds_into_a_valid_plugin() {
    let (ok, stdout, stderr) = stagecraft(&[
        "plugin",
        "check",
        wasm_path("plugin_template").to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["manifest"]["name"], "engagement");
}
