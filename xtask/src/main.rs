//! `cargo xtask <command>`: the project's own build steps, so that a fresh clone
//! needs nothing but cargo.
//!
//! - `plugins`  add the wasm32-wasip2 target if missing; build every plugin (release)
//! - `test`     the layering lint, plugins, then every test of the workspace
//! - `lint`     the host's module layering (see `lint.rs`)
//! - `demo`     plugins, then `stagecraft demo`: fresh SQLite, packs enabled, CDNOW imported, serving
//! - `bench [--quick]`  plugins, then the benchmarks (release build)

mod lint;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("plugins") => plugins(&root).map(|_| ()),
        Some("test") => test(&root, &args[1..]),
        Some("lint") => lint(&root),
        Some("demo") => demo(&root),
        Some("bench") => bench(&root, &args[1..]),
        Some("fuzz") => fuzz(&root, &args[1..]),
        Some("api-fuzz") => run(Command::new(root.join("scripts/api-fuzz.sh")).args(&args[1..])),
        _ => {
            eprintln!(
                "usage: cargo xtask <plugins | test | lint | demo | bench [--quick] | fuzz [SECONDS] | api-fuzz [EXAMPLES]>"
            );
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where cargo builds: `CARGO_TARGET_DIR` when set (many developers set it
/// globally), else `target/` of the workspace. The Python plugin and the reports
/// are looked for where the Rust plugins and the tests look.
fn target_dir(root: &Path) -> PathBuf {
    target_dir_from(root, std::env::var_os("CARGO_TARGET_DIR"))
}

fn target_dir_from(root: &Path, var: Option<std::ffi::OsString>) -> PathBuf {
    match var.map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn ensure_wasm_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match out {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == WASM_TARGET) =>
        {
            Ok(())
        }
        Ok(_) => run(Command::new("rustup").args(["target", "add", WASM_TARGET])),
        Err(e) => bail!("rustup is needed to add the {WASM_TARGET} target: {e}"),
    }
}

/// Crates built as plugin components: every pack under `plugins/` (not the SDK),
/// every test component under `tests/plugins/` and the template under `examples/`.
fn plugin_crates(root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for dir in ["plugins", "tests/plugins", "examples"] {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(dir))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let manifest = e.path().join("Cargo.toml");
            if !manifest.exists() || e.file_name() == "sdk" {
                continue;
            }
            let text = std::fs::read_to_string(&manifest)?;
            let name = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("name = ")
                        .map(|v| v.trim_matches('"').to_string())
                })
                .with_context(|| format!("no package name in {}", manifest.display()))?;
            names.push(name);
        }
    }
    Ok(names)
}

fn plugins(root: &Path) -> Result<PathBuf> {
    ensure_wasm_target()?;
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", WASM_TARGET]);
    for name in plugin_crates(root)? {
        cmd.args(["-p", &name]);
    }
    run(&mut cmd)?;
    let out = target_dir(root).join(WASM_TARGET).join("release");
    python_plugins(root, &out)?;
    for e in std::fs::read_dir(&out)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "wasm") {
            eprintln!("  built {}", p.display());
        }
    }
    Ok(out)
}

/// What the console's browser test needs: Debian's Chromium (no downloaded
/// browser) and playwright-core from npm, pinned by `tests/browser/package-lock.json`.
fn ensure_browser(root: &Path) -> Result<()> {
    if !Path::new("/usr/bin/chromium").exists() {
        eprintln!("installing Debian's chromium for the console test");
        let sudo = if Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false)
        {
            vec![]
        } else {
            vec!["sudo"]
        };
        let apt = |args: &[&str]| {
            let mut c = Command::new(sudo.first().copied().unwrap_or("apt-get"));
            if !sudo.is_empty() {
                c.arg("apt-get");
            }
            c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            run(&mut c)
        };
        if apt(&["install", "-y", "chromium"]).is_err() {
            apt(&["update"])?;
            apt(&["install", "-y", "chromium"]).context("installing chromium with apt-get")?;
        }
    }
    let browser = root.join("tests/browser");
    if !browser.join("node_modules/playwright-core").exists() {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&browser))
        .context("installing playwright-core with npm (needs Node.js and npm)")?;
    }
    Ok(())
}

/// Runs the importer fuzz target for SECONDS (default 300) with cargo fuzz on the
/// nightly toolchain, from a working copy of the seed corpus. A crash leaves its
/// input in `fuzz/artifacts/import/`: copy it to `fuzz/regressions/` once fixed,
/// where `host/tests/import_regressions.rs` replays it on stable.
fn fuzz(root: &Path, extra: &[String]) -> Result<()> {
    let seconds = extra.first().map(String::as_str).unwrap_or("300");
    if !Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let work = root.join("fuzz/corpus-work");
    std::fs::create_dir_all(&work)?;
    for e in std::fs::read_dir(root.join("fuzz/corpus/import"))? {
        let p = e?.path();
        std::fs::copy(&p, work.join(p.file_name().expect("a file")))?;
    }
    run(Command::new("cargo")
        .current_dir(root.join("fuzz"))
        .args(["+nightly", "fuzz", "run", "import", "-s", "none"])
        .arg(&work)
        .args(["--", &format!("-max_total_time={seconds}"), "-max_len=4096"]))
    .context("cargo fuzz needs the nightly toolchain (`rustup toolchain install nightly`)")
}

/// The componentize-py release the Python plugins are built with.
const COMPONENTIZE_PY: &str = "0.25.1";

/// Installs componentize-py from PyPI if this exact version is missing.
fn ensure_componentize_py() -> Result<()> {
    let have = Command::new("componentize-py").arg("--version").output();
    if let Ok(o) = have {
        if String::from_utf8_lossy(&o.stdout).trim() == format!("componentize-py {COMPONENTIZE_PY}")
        {
            return Ok(());
        }
    }
    run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        &format!("componentize-py=={COMPONENTIZE_PY}"),
    ]))
    .context("installing componentize-py from PyPI (needs python3 with pip)")
}

/// Builds every Python plugin (a folder under `plugins/` with an `app.py`) into
/// `<out>/<folder with _>.wasm` with componentize-py, unless it is up to date.
/// `--stub-wasi` replaces the interpreter's WASI imports (sockets, files, clocks)
/// with trapping stubs, so the component imports only what Stagecraft grants.
fn python_plugins(root: &Path, out: &Path) -> Result<()> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("plugins"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("app.py").exists())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Ok(());
    }
    ensure_componentize_py()?;
    // The Python port stays on contract 0.1.0: a live 0.1.0 build beside the
    // kept fixtures, built from source on every run.
    let wit = root.join("wit/0.1.0");
    for dir in dirs {
        let name = dir
            .file_name()
            .expect("a folder name")
            .to_string_lossy()
            .replace('-', "_");
        let target = out.join(format!("{name}.wasm"));
        let newest_input = [dir.join("app.py"), wit.join("plugin.wit")]
            .iter()
            .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .max();
        let built = std::fs::metadata(&target).and_then(|m| m.modified()).ok();
        if let (Some(i), Some(b)) = (newest_input, built) {
            if b > i {
                continue;
            }
        }
        run(Command::new("componentize-py")
            .arg("-d")
            .arg(&wit)
            .args(["-w", "plugin", "componentize", "--stub-wasi", "app", "-p"])
            .arg(&dir)
            .arg("-o")
            .arg(&target))?;
    }
    Ok(())
}

fn lint(root: &Path) -> Result<()> {
    let problems = lint::check(&root.join("host/src"))?;
    if problems.is_empty() {
        println!("lint: the host's module layering holds");
        return Ok(());
    }
    for p in &problems {
        eprintln!("lint: {p}");
    }
    bail!("{} layering problem(s) in host/src", problems.len())
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    lint(root)?;
    plugins(root)?;
    ensure_browser(root)?;
    // Default members: the host, the SDK, the packs (natively) and xtask. The test
    // components under tests/plugins are only meaningful as wasm.
    let mut cmd = cargo();
    cmd.arg("test").args(extra);
    run(&mut cmd)
}

/// The packs under `plugins/` (every crate but the SDK), as built components.
fn pack_files(root: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let mut packs = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(root.join("plugins"))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_name() == "sdk" || !e.path().join("Cargo.toml").exists() {
            continue;
        }
        let stem = e.file_name().to_string_lossy().replace('-', "_");
        packs.push(out.join(format!("{stem}.wasm")));
    }
    // The pack with a stage graph goes first so that it owns the lifecycle.
    packs.sort_by_key(|p| !p.to_string_lossy().contains("b2b_trade"));
    Ok(packs)
}

fn demo(root: &Path) -> Result<()> {
    let out = plugins(root)?;
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "-p", "stagecraft", "--", "demo"]);
    for p in pack_files(root, &out)? {
        cmd.arg("--pack").arg(p);
    }
    // The first 6,000 CDNOW orders (whole histories of 1,851 customers) keep the start quick
    // on a debug build; `stagecraft import cdnow` loads the full file.
    cmd.args([
        "--cdnow",
        "examples/data/cdnow/CDNOW_master.txt",
        "--cdnow-lines",
        "6000",
    ]);
    if let Ok(listen) = std::env::var("STAGECRAFT_LISTEN") {
        cmd.args(["--listen", &listen]);
    }
    run(&mut cmd)
}

fn bench(root: &Path, extra: &[String]) -> Result<()> {
    plugins(root)?;
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "stagecraft", "--bench", "plugin_call", "--"]);
    if extra.iter().any(|a| a == "--quick") {
        cmd.args([
            "--warm-up-time",
            "1",
            "--measurement-time",
            "2",
            "--sample-size",
            "20",
        ]);
    }
    run(&mut cmd)?;
    report(&target_dir(root).join("criterion"))?;
    // Ingest over HTTP, swaps under load and bulk import print their own figures.
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "stagecraft", "--bench", "ingest", "--"]);
    if extra.iter().any(|a| a == "--quick") {
        cmd.arg("--quick");
    }
    run(&mut cmd)
}

/// Mean time of one criterion benchmark, in ns per iteration.
fn mean_ns(dir: &Path, group: &str, name: &str) -> Result<f64> {
    let path = dir.join(group).join(name).join("new/estimates.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no results at {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    v["mean"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("no mean in {}", path.display()))
}

/// Prints the figures the foundation issue asks for, with their targets and ratios.
fn report(dir: &Path) -> Result<()> {
    const BATCH: f64 = 1000.0;
    let per = |name: &str| mean_ns(dir, "score", name).map(|ns| ns / BATCH);
    let native = per("native")?;
    println!();
    println!("plugin call: value-tiers, customers with 10 fields, 5 tags, 10 events; per customer");
    println!("{:<34} {:>12} {:>14}", "variant", "ns/customer", "x native");
    for name in [
        "native",
        "rhai_script",
        "wasm_batch_1000",
        "wasm_batch_100",
        "wasm_single",
        "wasm_batch_1000_full_snapshot",
        "encode_only_full_snapshot",
    ] {
        let ns = per(name)?;
        println!("{name:<34} {ns:>12.1} {:>14.2}", ns / native);
    }
    let batch = per("wasm_batch_1000")?;
    let script = per("rhai_script")?;
    let faster = script / batch;
    println!(
        "target: batched wasm within 3x of native -> {:.2}x, {}; wasm >= 20x faster than the script (Rhai) -> {faster:.1}x, {}",
        batch / native,
        if batch <= 3.0 * native { "met" } else { "MISSED" },
        if faster >= 20.0 { "met" } else { "MISSED" }
    );
    let inst = mean_ns(dir, "instance", "fresh_configured_instance")?;
    let call = mean_ns(dir, "instance", "empty_batch_call")?;
    println!(
        "fresh instance incl. configure(rules): {:.2} us (target <= 10 us -> {}); empty call on it: {:.2} us",
        inst / 1000.0,
        if inst <= 10_000.0 { "met" } else { "MISSED" },
        call / 1000.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a global `CARGO_TARGET_DIR`, the Python plugin used to land in
    /// `./target` while the tests looked in the target dir (`value_tiers_py.wasm
    /// is missing` on a fresh clone).
    #[test]
    fn plugins_go_where_cargo_builds() {
        let root = Path::new("/src/stagecraft");
        assert_eq!(target_dir_from(root, None), root.join("target"));
        assert_eq!(
            target_dir_from(root, Some("/cache/cargo".into())),
            PathBuf::from("/cache/cargo")
        );
        assert_eq!(target_dir_from(root, Some("out".into())), root.join("out"));
    }
}
