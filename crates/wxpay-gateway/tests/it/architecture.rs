//! The gateway's module graph, read from its sources: no cycle, layers that depend only
//! downward (edge → core → providers → store → leaves), and a core that knows no HTTP server.
//!
//! A reference is a path that starts with `crate::` or `super::` outside comments and outside
//! `#[cfg(test)] mod tests`, grouped imports (`crate::a::{b, c}`) included; it points at the
//! longest module the path names. `mod x;` declarations are ownership, not references.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module (`crate::service::orders`) and the code of its file, without comments and tests.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("the source folder reads") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut out = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
            parts.pop();
        }
        let name = std::iter::once("crate".to_owned())
            .chain(parts)
            .collect::<Vec<_>>()
            .join("::");
        let text = std::fs::read_to_string(&file).unwrap();
        out.insert(name, code_of(&text));
    }
    out
}

/// The code of a file: comments removed, and the unit tests at its end.
fn code_of(text: &str) -> String {
    // The unit tests at the end of a file (`mod tests { … }`), not a test module in a file of
    // its own (`mod tests;`), which is read as a module.
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a module's code names, resolved to absolute paths (`crate::…`).
fn paths(module: &str, code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        // Inside a character of several bytes (in a string literal) no path starts.
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &code[i..];
        let start_of_word = i == 0 || !ident(bytes[i - 1]);
        let prefix = if !start_of_word {
            None
        } else if rest.starts_with("crate::") {
            Some(("crate".to_owned(), "crate::".len()))
        } else if rest.starts_with("super::") {
            // `super::super::…` climbs once for each `super`.
            let mut parent = module;
            let mut skip = 0;
            while code[i + skip..].starts_with("super::") {
                parent = parent.rsplit_once("::").map_or("crate", |(p, _)| p);
                skip += "super::".len();
            }
            Some((parent.to_owned(), skip))
        } else {
            None
        };
        let Some((mut path, skip)) = prefix else {
            i += 1;
            continue;
        };
        i += skip;
        // Segments, then perhaps one group of them.
        loop {
            let seg_end = i + code[i..].bytes().take_while(|&b| ident(b)).count();
            if seg_end > i {
                path.push_str("::");
                path.push_str(&code[i..seg_end]);
                i = seg_end;
                if code[i..].starts_with("::") {
                    i += 2;
                    continue;
                }
                out.push(path);
                break;
            }
            if code[i..].starts_with('{') {
                let end = i + code[i..].find('}').expect("a group closes");
                for item in code[i + 1..end].split(',') {
                    let item = item.trim();
                    let first = item.split("::").next().unwrap_or("").trim();
                    if first == "self" || first.is_empty() {
                        out.push(path.clone());
                    } else {
                        out.push(format!("{path}::{}", item.split(" as ").next().unwrap_or("").trim()));
                    }
                }
                i = end + 1;
            } else {
                out.push(path);
            }
            break;
        }
    }
    out
}

/// Module → the other modules it refers to.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut graph = BTreeMap::new();
    for (module, code) in &modules {
        let mut targets = BTreeSet::new();
        // `use child::…` (and `pub use`) names a child module without `crate::` or `self::`.
        let children = code.lines().filter_map(|line| {
            let line = line.trim_start();
            let rest = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
                .iter()
                .find_map(|p| line.strip_prefix(p))?;
            let first = rest.split("::").next()?.trim();
            let child = format!("{module}::{first}");
            modules.contains_key(&child).then_some(child)
        });
        for path in paths(module, code).into_iter().chain(children) {
            // The longest module the path names.
            let mut candidate = path.as_str();
            let target = loop {
                if modules.contains_key(candidate) {
                    break Some(candidate.to_owned());
                }
                match candidate.rsplit_once("::") {
                    Some((parent, _)) => candidate = parent,
                    None => break None,
                }
            };
            if let Some(t) = target.filter(|t| t != module) {
                targets.insert(t);
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// The layer of a module: a module may refer only to its own layer or lower ones.
fn layer(module: &str) -> u8 {
    let top = module.split("::").nth(1).unwrap_or("");
    match top {
        "" => 7,
        "edge" => 6,
        "service" => 5,
        "provider" => 4,
        // The metrics show the store's figures.
        "metrics" => 3,
        "store" => 2,
        "config" | "time" | "util" => 1,
        other => panic!("module crate::{other} has no layer: give it one in architecture.rs"),
    }
}

#[test]
fn the_graph_is_read_from_the_sources() {
    let g = graph();
    // A few references that exist, so that a parser that finds nothing cannot pass the
    // checks below.
    for (from, to) in [
        ("crate::edge::router", "crate::edge::notify"),
        ("crate::edge::notify", "crate::service::notifications"),
        ("crate::service::orders", "crate::provider"),
        ("crate::service::refunds", "crate::service::rules"),
        // A `super::` path (`super::client_builder`).
        ("crate::provider::sns", "crate::provider"),
        ("crate::service::state", "crate::store"),
        // A bare child path (`use batch::…`) after a `mod tests;` line of the same file.
        ("crate::store::postgres", "crate::store::postgres::batch"),
        ("crate::store::postgres::ops", "crate::store::postgres"),
    ] {
        assert!(g[from].contains(to), "{from} → {to} not found: {:?}", g[from]);
    }
    assert!(g.len() >= 30, "{} modules", g.len());
}

/// A cycle of `g`, when it has one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // Depth-first search; a module met again while it is on the path closes a cycle.
    fn visit<'a>(
        m: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if done.contains(m) {
            return None;
        }
        if let Some(at) = path.iter().position(|p| *p == m) {
            let mut found: Vec<String> = path[at..].iter().map(|p| (*p).to_owned()).collect();
            found.push(m.to_owned());
            return Some(found);
        }
        path.push(m);
        for t in g.get(m).into_iter().flatten() {
            if let Some(found) = visit(t, g, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(m);
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|m| visit(m, g, &mut Vec::new(), &mut done))
}

#[test]
fn paths_are_found_after_text_of_several_bytes_per_character() {
    let code = "const S: &str = \"≥ 一\"; use crate::store::Order; super::x::y();";
    assert_eq!(
        paths("crate::edge::page", code),
        ["crate::store::Order", "crate::edge::x::y"]
    );
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let g = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry((*a).to_owned()).or_default().insert((*b).to_owned());
            g.entry((*b).to_owned()).or_default();
        }
        g
    };
    assert_eq!(cycle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    assert_eq!(
        cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])).map(|c| c.join(" → ")),
        Some("a → b → c → a".to_owned())
    );
}

#[test]
fn the_gateway_has_no_module_cycle() {
    if let Some(found) = cycle(&graph()) {
        panic!("a module cycle: {}", found.join(" → "));
    }
}

#[test]
fn layers_depend_only_downward() {
    let mut wrong = Vec::new();
    for (from, targets) in graph() {
        for to in targets {
            if layer(&to) > layer(&from) {
                wrong.push(format!("{from} → {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "references against the flow: {wrong:#?}");
}

#[test]
fn the_core_and_the_providers_know_no_http_server() {
    let mut wrong = Vec::new();
    for (module, code) in modules() {
        if !(module.starts_with("crate::service") || module.starts_with("crate::provider")) {
            continue;
        }
        for name in [
            "axum",
            "axum_extra",
            "tower",
            "tower_http",
            "hyper",
            "hyper_util",
            "wxpay_http",
            "ApiError",
            "StatusCode",
        ] {
            let named = code.match_indices(name).any(|(at, _)| {
                let before = code[..at].chars().next_back();
                let after = code[at + name.len()..].chars().next();
                let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                !ident(before) && !ident(after)
            });
            if named {
                wrong.push(format!("{module} names {name}"));
            }
        }
        // The `http` crate, by path (`http::StatusCode`).
        if code.match_indices("http::").any(|(at, _)| {
            code[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
        }) {
            wrong.push(format!("{module} names the http crate"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
