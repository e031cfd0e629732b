//! The layout rules a reviewer would otherwise check by hand: no module imports one that imports
//! it back (the crate's module graph has no cycle), `main.rs` stays a few lines, and every
//! controller's reconcile driver reads in one screen.
//!
//! The module graph is read from the sources: a module depends on the modules its paths name
//! (`use crate::a::b::Item`, `super::x`, `self::y`, and such paths in code), each resolved to
//! the longest module that exists; `mod x;` declarations are not dependencies, and test modules
//! (`#[cfg(test)] mod tests`) are left out (tests reach into what they test).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `crate::a::b`; `src/lib.rs` → `crate`.
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).ok()?;
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    match parts.last().map(String::as_str) {
        Some("lib") if parts.len() == 1 => return Some("crate".into()),
        Some("main") if parts.len() == 1 => return None,
        Some("mod") => {
            parts.pop();
        }
        _ => {}
    }
    Some(std::iter::once("crate".to_string()).chain(parts).collect::<Vec<_>>().join("::"))
}

/// The source without test modules and comments.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") && lines.peek().is_some_and(|l| l.trim_start().starts_with("mod ")) {
            let declaration = lines.next().unwrap_or_default();
            if declaration.trim_end().ends_with('{') {
                // An inline test module: skip to its closing brace at the same indentation.
                let indent = declaration.len() - declaration.trim_start().len();
                for l in lines.by_ref() {
                    if l.len() - l.trim_start().len() == indent && l.trim() == "}" {
                        break;
                    }
                }
            }
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line.split(" // ").next().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Every path of `text` that starts at `crate`, `super` or `self`, as segments, with `use`
/// groups (`use a::{b, c::d}`) expanded.
fn paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let at_word = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == ':');
        // A path: a word followed by `::` (a bare first word may name a child module).
        let word_end =
            bytes[i..].iter().position(|c| !(c.is_alphanumeric() || *c == '_')).map_or(bytes.len(), |n| i + n);
        let is_path = word_end > i && bytes.get(word_end) == Some(&':') && bytes.get(word_end + 1) == Some(&':');
        if at_word && is_path && bytes[i].is_alphabetic() {
            let (found, end) = path_at(&bytes, i);
            out.extend(found);
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// The path(s) starting at `i`: a plain path, or a `use` tree with braces.
fn path_at(chars: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut segments = Vec::new();
    let mut word = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            i += 1;
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            if !word.is_empty() {
                segments.push(std::mem::take(&mut word));
            }
            i += 2;
            if chars.get(i) == Some(&'{') {
                // A group: each member is a path below the prefix.
                i += 1;
                let mut out = Vec::new();
                loop {
                    while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                        i += 1;
                    }
                    if i >= chars.len() || chars[i] == '}' {
                        break;
                    }
                    let (members, end) = path_at(chars, i);
                    for m in members {
                        let mut full = segments.clone();
                        full.extend(m);
                        out.push(full);
                    }
                    i = end.max(i + 1);
                }
                return (out, i + 1);
            }
        } else {
            break;
        }
    }
    if !word.is_empty() {
        segments.push(word);
    }
    (vec![segments], i)
}

/// The module a path (seen from `from`) names: its longest prefix that is a module.
fn resolve(from: &str, path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut base: Vec<String> = from.split("::").map(str::to_string).collect();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base = vec!["crate".into()];
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        // A bare first word: a child module of `from` (else an external crate or a type).
        Some(first) => {
            let child = format!("{from}::{first}");
            if !modules.contains(&child) {
                return None;
            }
        }
        None => return None,
    }
    let mut best = base.join("::");
    let mut current = base;
    for segment in rest {
        current.push(segment.clone());
        let candidate = current.join("::");
        if modules.contains(&candidate) {
            best = candidate;
        } else {
            break;
        }
    }
    Some(best)
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let sources: BTreeMap<String, String> = all
        .iter()
        .filter_map(|p| Some((module_of(p)?, std::fs::read_to_string(p).unwrap_or_default())))
        .filter(|(m, _)| !m.ends_with("::tests"))
        .collect();
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    sources
        .iter()
        .map(|(m, text)| {
            let deps = paths(&code(text)).iter().filter_map(|p| resolve(m, p, &modules)).filter(|d| d != m).collect();
            (m.clone(), deps)
        })
        .collect()
}

/// The cycles of the graph: its strongly connected components of more than one module.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm, iteratively small: the crate has a few hundred modules.
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let deps: Vec<&'a str> = s.graph.get(v).map(|d| d.iter().map(String::as_str).collect()).unwrap_or_default();
        for w in deps {
            if !s.graph.contains_key(w) {
                continue;
            }
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn the_checker_sees_paths_and_cycles() {
    let found = paths("use super::{decide::{self, Plan}, Error};\nlet x = crate::api::conditions::set(a);");
    assert!(found.contains(&vec!["super".into(), "decide".into(), "self".into()]), "{found:?}");
    assert!(found.contains(&vec!["super".into(), "Error".into()]), "{found:?}");
    assert!(found.contains(&vec!["crate".into(), "api".into(), "conditions".into(), "set".into()]), "{found:?}");
    let modules: BTreeSet<String> =
        ["crate", "crate::a", "crate::a::b", "crate::a::c"].into_iter().map(str::to_string).collect();
    let p = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    assert_eq!(resolve("crate::a::b", &p("super::c::Item"), &modules).as_deref(), Some("crate::a::c"));
    assert_eq!(resolve("crate::a::b", &p("super::Item"), &modules).as_deref(), Some("crate::a"));
    assert_eq!(resolve("crate::a", &p("b::run"), &modules).as_deref(), Some("crate::a::b"));
    assert_eq!(resolve("crate::a", &p("serde_json::json"), &modules), None);
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("crate::a".to_string(), BTreeSet::from(["crate::a::b".to_string()])),
        ("crate::a::b".to_string(), BTreeSet::from(["crate::a".to_string()])),
        ("crate::a::c".to_string(), BTreeSet::new()),
    ]
    .into_iter()
    .collect();
    assert_eq!(cycles(&g), vec![vec!["crate::a".to_string(), "crate::a::b".to_string()]]);
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let g = graph();
    assert!(g.len() > 50, "the crate's modules were found: {}", g.len());
    let found = cycles(&g);
    let described: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .flat_map(|m| g[m].iter().filter(|d| c.contains(d)).map(move |d| format!("{m} → {d}")))
                .collect();
            format!("{{{}}}: {}", c.join(", "), edges.join("; "))
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", described.join("\n"));
}

#[test]
fn main_is_a_few_lines() {
    let main = std::fs::read_to_string(src().join("main.rs")).unwrap_or_default();
    assert!(main.lines().count() < 40, "main.rs has {} lines", main.lines().count());
}

/// The lines of the function `name` in `text` (from its signature to its closing brace).
fn function_lines(text: &str, name: &str) -> Option<usize> {
    let start = text.lines().position(|l| l.trim_start().starts_with(name))?;
    let indent = text.lines().nth(start)?.len() - text.lines().nth(start)?.trim_start().len();
    let end = text.lines().skip(start + 1).position(|l| l.len() - l.trim_start().len() == indent && l.trim() == "}")?;
    Some(end + 2)
}

#[test]
fn every_reconcile_driver_reads_in_one_screen() {
    for controller in ["model_deployment", "feedback_policy", "retrain_job"] {
        let path = src().join("operator").join(controller).join("mod.rs");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let lines =
            function_lines(&text, "async fn reconcile(").unwrap_or_else(|| panic!("{controller}: no reconcile"));
        assert!(lines < 60, "{controller}'s reconcile is {lines} lines");
    }
}
