//! `cargo xtask lint`: the host's module layering, checked from its source.
//!
//! Each top-level module of `host/src` (a file `x.rs` or a folder `x/`) is a
//! room; a room depends on another when its code names `crate::other`. The
//! rules are the ones DESIGN.md and the architecture issue state:
//!
//! - `domain` (the vocabulary: customers, events, reasons, actions, manifests,
//!   limits, validators) depends on nothing else of the host;
//! - `store` depends on `domain` only: no plugins, no HTTP, no services;
//! - `http` and `cli` (the edges) never reach the `store`: they call services;
//! - no room depends, directly or not, on one that depends on it back.
//!
//! `cargo xtask test` runs it first, so a layering slip fails CI like a test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Room → the rooms it names.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Rooms a given room may not name (besides itself).
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "store",
        &[
            "runtime", "packs", "http", "cli", "pipeline", "registry", "services", "app",
        ],
    ),
    ("http", &["store"]),
    ("cli", &["store"]),
];

/// Rooms that may name nothing of the host.
const LEAVES: &[&str] = &["domain"];

/// Reads `host/src` and returns every broken rule, one line each.
pub fn check(src: &Path) -> anyhow::Result<Vec<String>> {
    let graph = graph_of(src)?;
    Ok(problems(&graph))
}

pub fn graph_of(src: &Path) -> anyhow::Result<Graph> {
    let mut graph = Graph::new();
    for entry in std::fs::read_dir(src)? {
        let path = entry?.path();
        let name = match path.file_stem().and_then(|s| s.to_str()) {
            Some(n) => n.to_string(),
            None => continue,
        };
        if name == "lib" || name == "main" {
            continue;
        }
        let mut deps = BTreeSet::new();
        for file in rust_files(&path)? {
            deps.extend(names_in(&std::fs::read_to_string(&file)?));
        }
        deps.remove(&name);
        graph.entry(name).or_default().extend(deps);
    }
    Ok(graph)
}

fn rust_files(path: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    if path.is_file() {
        return Ok(if path.extension().is_some_and(|e| e == "rs") {
            vec![path.to_path_buf()]
        } else {
            vec![]
        });
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path)? {
        out.extend(rust_files(&entry?.path())?);
    }
    Ok(out)
}

/// The top-level rooms a source file names through `crate::`, comments aside.
pub fn names_in(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        // `$crate::` (macros) and `somecrate::` are other crates.
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = closing_brace(group);
            for item in split_top_level(&group[..end]) {
                if let Some(id) = first_ident(item) {
                    out.insert(id);
                }
            }
        } else if let Some(id) = first_ident(rest) {
            out.insert(id);
        }
    }
    out.remove("self");
    out
}

fn first_ident(s: &str) -> Option<String> {
    let id: String = s
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!id.is_empty()).then_some(id)
}

fn closing_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

pub fn problems(graph: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for (room, deps) in graph {
        for (who, banned) in FORBIDDEN {
            if room == who {
                for d in deps.iter().filter(|d| banned.contains(&d.as_str())) {
                    out.push(format!("{room} must not import {d}"));
                }
            }
        }
        if LEAVES.contains(&room.as_str()) {
            for d in deps.iter().filter(|d| graph.contains_key(*d)) {
                out.push(format!(
                    "{room} must import nothing of the host, but imports {d}"
                ));
            }
        }
    }
    for cycle in cycles(graph) {
        out.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    out
}

/// One cycle per pair of rooms that reach each other, written `a -> … -> a`.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut seen: BTreeSet<BTreeSet<String>> = BTreeSet::new();
    let mut out = Vec::new();
    for start in graph.keys() {
        if let Some(path) = path_back(graph, start) {
            let members: BTreeSet<String> = path.iter().cloned().collect();
            if seen.insert(members) {
                out.push(path);
            }
        }
    }
    out
}

/// The shortest path `start -> … -> start`, if there is one (breadth first).
fn path_back(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                let mut path = vec![start.to_string()];
                let mut cur = at;
                while cur != start {
                    path.push(cur.to_string());
                    cur = parent[cur];
                }
                path.push(start.to_string());
                let last = path.len() - 1;
                path[1..last].reverse();
                return Some(path);
            }
            if graph.contains_key(next.as_str()) && !parent.contains_key(next.as_str()) {
                parent.insert(next, at);
                queue.push_back(next);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> Graph {
        edges
            .iter()
            .map(|(a, bs)| (a.to_string(), bs.iter().map(|b| b.to_string()).collect()))
            .collect()
    }

    #[test]
    fn reads_paths_groups_and_nested_groups_but_not_comments_or_other_crates() {
        let src = "use crate::domain::{Reason, Action};\n\
                   use crate::{store::{self, Store}, packs::Packs,\n    metrics};\n\
                   // crate::http in a comment\n\
                   /// [`crate::cli`] in a doc\n\
                   let x = crate::runtime::budget::text_problem(s);\n\
                   macro_rules! m { () => { $crate::pipeline::x } }\n\
                   use stagecraft_plugin::snapshot; use mycrate::ignored;";
        let got: Vec<String> = names_in(src).into_iter().collect();
        assert_eq!(got, ["domain", "metrics", "packs", "runtime", "store"]);
    }

    #[test]
    fn a_store_that_names_the_runtime_and_an_edge_that_names_the_store_are_refused() {
        let g = graph(&[
            ("store", &["domain", "runtime"]),
            ("http", &["store", "services"]),
            ("domain", &[]),
            ("runtime", &["domain"]),
            ("services", &["store"]),
        ]);
        assert_eq!(
            problems(&g),
            [
                "http must not import store",
                "store must not import runtime"
            ]
        );
    }

    #[test]
    fn the_domain_may_name_nothing_of_the_host() {
        let g = graph(&[("domain", &["runtime"]), ("runtime", &[])]);
        assert_eq!(
            problems(&g),
            ["domain must import nothing of the host, but imports runtime"]
        );
    }

    #[test]
    fn a_cycle_through_three_rooms_is_reported_once_with_its_path() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]);
        assert_eq!(problems(&g), ["import cycle: a -> b -> c -> a"]);
    }

    #[test]
    fn layered_rooms_pass() {
        let g = graph(&[
            ("domain", &[]),
            ("store", &["domain"]),
            ("services", &["store", "domain"]),
            ("http", &["services", "domain"]),
        ]);
        assert!(problems(&g).is_empty());
    }
}
