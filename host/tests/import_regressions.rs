//! Replays the importer fuzz target's seed corpus and every input it ever found
//! that crashed (`fuzz/regressions/`), on stable, in the normal suite: what the
//! fuzzer found stays fixed. The fuzzer itself runs with
//! `cargo +nightly fuzz run import` (see `fuzz/Cargo.toml`).

use std::path::PathBuf;

fn inputs(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_seed_corpus_imports_its_good_rows() {
    let seeds = inputs("corpus/import");
    assert!(seeds.len() >= 3);
    for (path, bytes) in seeds {
        let accepted = stagecraft::services::import::check_without_storing(&bytes);
        assert!(
            accepted >= 2,
            "{}: {accepted} rows accepted",
            path.display()
        );
    }
}

#[test]
fn inputs_that_once_crashed_the_importer_do_not() {
    let found = inputs("regressions");
    // An empty directory would make this pass without replaying anything.
    assert!(!found.is_empty(), "fuzz/regressions holds no input");
    for (path, bytes) in found {
        // A panic here fails the test with the file's name in the message.
        let r = std::panic::catch_unwind(|| {
            stagecraft::services::import::check_without_storing(&bytes)
        });
        assert!(r.is_ok(), "{} panics the importer again", path.display());
    }
}
