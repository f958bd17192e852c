//! The shape of the code, checked: the `use` graph between modules has no cycles, the
//! store imports nothing above it, and the two edges (the CLI and the daemon) leave
//! locking, recording and routing to the library's operations (`src/ops`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every module of the library, by path (`sysroot::deploy`), with its source.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|l| l == "mod") {
            parts.pop();
        }
        if parts == ["lib"] || parts == ["main"] || parts.first().is_some_and(|p| p == "bin") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        // Tests may reach anywhere; the code may not.
        let code = text.split("#[cfg(test)]").next().unwrap().to_string();
        out.insert(parts.join("::"), code);
    }
    out
}

/// The longest module path that `path` starts with.
fn resolve<'a>(mods: &'a BTreeMap<String, String>, path: &str) -> Option<&'a str> {
    let segs: Vec<&str> = path.split("::").collect();
    (1..=segs.len())
        .rev()
        .map(|i| segs[..i].join("::"))
        .find_map(|c| mods.get_key_value(&c).map(|(k, _)| k.as_str()))
}

/// The paths a source names through `crate::` (also inside `use crate::{a, b::c}`)
/// and `super::`, comments left out.
fn references(module: &str, code: &str) -> Vec<String> {
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let parent = module.rsplit_once("::").map(|(p, _)| p).unwrap_or("");
    let mut out = Vec::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent.to_string())] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let join = |p: &str| {
                if base.is_empty() {
                    p.to_string()
                } else {
                    format!("{base}::{p}")
                }
            };
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let item = item.trim().split(' ').next().unwrap_or("");
                    if item.starts_with(|c: char| c.is_ascii_lowercase()) {
                        out.push(join(item));
                    }
                }
                continue;
            }
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if path.starts_with(|c: char| c.is_ascii_lowercase()) {
                out.push(join(path.trim_end_matches(':')));
            }
        }
    }
    out
}

/// Module → the modules it uses (not itself, its parents or its children).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, code) in &mods {
        let edges = g.entry(m.clone()).or_default();
        for r in references(m, code) {
            if let Some(t) = resolve(&mods, &r)
                && t != m
                && !t.starts_with(&format!("{m}::"))
                && !m.starts_with(&format!("{t}::"))
            {
                edges.insert(t.to_string());
            }
        }
    }
    g
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn the_module_graph_has_no_import_cycles() {
    let g = graph();
    assert!(g.len() > 80, "found only {} modules", g.len());
    assert!(
        g["sysroot::deploy"].contains("packages::layer"),
        "the graph sees edges"
    );
    let found = cycles(&g);
    assert!(found.is_empty(), "import cycles: {found:#?}");
}

#[test]
fn the_store_imports_nothing_above_it() {
    // failpoint is a leaf (test hooks; it imports nothing of arbor's).
    let below = [
        "store",
        "fsutil",
        "lock",
        "statedb",
        "sys",
        "progress",
        "failpoint",
    ];
    for (m, uses) in graph() {
        if m != "store" && !m.starts_with("store::") {
            continue;
        }
        for u in uses {
            let top = u.split("::").next().unwrap();
            assert!(below.contains(&top), "{m} uses {u}, above the store");
        }
    }
}

#[test]
fn the_cli_and_the_daemon_leave_locking_recording_and_routing_to_ops() {
    // What deciding, locking and recording look like; only src/ops and the library
    // below it may say them.
    let forbidden = [
        ".lock(lock_wait",
        "sysroot.lock(",
        "lock(LockWait",
        ".record(",
        ".record_as(",
        "follows_remote",
        "configured_refspec",
        "deploy_held",
        "rollback_held",
        "kargs_held",
        "cleanup_held",
        "Transaction::begin",
    ];
    for (m, code) in modules() {
        if !(m.starts_with("cli") || m.starts_with("daemon")) {
            continue;
        }
        for f in forbidden {
            assert!(!code.contains(f), "{m} says `{f}`: that belongs in src/ops");
        }
    }
}
