//! The shape of the code, checked. The workspace's crates, each depending only on
//! crates below it (the compiler keeps that once it holds: a cycle between crates does
//! not build); no import cycle between the modules inside a crate, with `use` aliases
//! resolved; `arbor-prepare-root` free of GLib, SQLite, HTTP and TLS; and the two edges
//! (the CLI and the daemon) leaving locking, recording and routing to the operations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first: a crate may depend on crates of lower layers only.
/// docs/architecture.md draws the same.
const LAYERS: &[(&str, u32)] = &[
    ("arbor-core", 0),
    ("arbor-statedb", 0),
    ("arbor-store", 1),
    ("arbor-boot", 1),
    ("arbor-delta", 2),
    ("arbor-prepare-root", 2),
    ("arbor-ostree", 2),
    ("arbor-sysroot", 3),
    ("arbor-live", 4),
    ("arbor-packages", 4),
    ("arbor-remote", 4),
    ("arbor-compose", 5),
    ("arbor-publish", 5),
    ("arbor-ops", 6),
    ("arbor-daemon", 7),
    ("arbor-serve", 7),
    ("arbor", 8),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn metadata(deps: bool) -> serde_json::Value {
    let mut cmd = std::process::Command::new(env!("CARGO"));
    // This machine's platform only: what other targets would need is not fetched.
    let platform = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    cmd.args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &platform])
        .current_dir(root());
    if !deps {
        cmd.arg("--no-deps");
    }
    let out = cmd.output().expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_workspace_crates_depend_only_downward() {
    let m = metadata(false);
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut seen = BTreeSet::new();
    for p in m["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let Some(&mine) = layer.get(name) else {
            panic!("crate {name} has no layer: add it to LAYERS and docs/architecture.md");
        };
        seen.insert(name.to_string());
        for d in p["dependencies"].as_array().unwrap() {
            let dep = d["name"].as_str().unwrap();
            if d["kind"].as_str() == Some("dev") {
                continue; // tests may reach anywhere
            }
            if let Some(&theirs) = layer.get(dep) {
                assert!(
                    theirs < mine,
                    "{name} (layer {mine}) depends on {dep} (layer {theirs}): upward"
                );
            }
        }
    }
    let all: BTreeSet<String> = LAYERS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(seen, all, "cargo metadata lists the workspace's crates");
}

#[test]
fn prepare_root_links_no_glib_sqlite_http_or_tls() {
    let m = metadata(true);
    let nodes: BTreeMap<String, &serde_json::Value> = m["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n))
        .collect();
    let name_of = |id: &str| -> String {
        m["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["name"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let start = nodes
        .keys()
        .find(|id| name_of(id) == "arbor-prepare-root")
        .unwrap()
        .clone();
    let mut todo = vec![start];
    let mut reached = BTreeSet::new();
    while let Some(id) = todo.pop() {
        if !reached.insert(id.clone()) {
            continue;
        }
        for d in nodes[&id]["deps"].as_array().unwrap() {
            let normal = d["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            if normal {
                todo.push(d["pkg"].as_str().unwrap().to_string());
            }
        }
    }
    let names: BTreeSet<String> = reached.iter().map(|id| name_of(id)).collect();
    assert!(names.contains("arbor-boot") && names.contains("arbor-core"));
    for bad in [
        "glib",
        "gio",
        "ostree",
        "rusqlite",
        "libsqlite3-sys",
        "ureq",
        "hyper",
        "axum",
        "tokio",
        "rustls",
        "openssl",
        "native-tls",
        "aws-lc-rs",
        "zbus",
        "arbor-store",
        "arbor-statedb",
    ] {
        assert!(
            !names.contains(bad),
            "arbor-prepare-root depends on {bad}: {names:?}"
        );
    }
}

/// The modules of one crate: path inside the crate (`deploy`, `etc::merge`) → source
/// without its tests.
fn modules(src: &Path) -> BTreeMap<String, String> {
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
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|l| l == "mod") {
            parts.pop();
        }
        if parts == ["lib"] {
            parts.clear();
        }
        if parts == ["main"] || parts.first().is_some_and(|p| p == "bin") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        out.insert(parts.join("::"), code);
    }
    out
}

/// Expands a `use` tree (`a::{b, c::d as e}`) into (full path, the name it binds).
fn expand_use(prefix: &str, tree: &str, out: &mut Vec<(String, String)>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let base = join(prefix, head);
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_use(&base, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand_use(&base, &inner[start..], out);
        return;
    }
    if tree.is_empty() || tree == "*" || tree.ends_with("::*") {
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((p, a)) => (p.trim(), a.trim().to_string()),
        None => (tree, tree.rsplit("::").next().unwrap().to_string()),
    };
    let full = if path == "self" {
        prefix.to_string()
    } else {
        join(prefix, path)
    };
    let alias = if path == "self" {
        prefix.rsplit("::").next().unwrap().to_string()
    } else {
        alias
    };
    out.push((full, alias));
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}::{b}"),
    }
}

/// A path as written in `module` (`crate::x`, `super::y`, `self::z`) as a path from
/// the crate root, or `None` for another crate's.
fn absolute(module: &str, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    match parts.first().copied() {
        Some("crate") => {
            base.clear();
            parts.remove(0);
        }
        Some("self") => {
            parts.remove(0);
        }
        Some("super") => {
            while parts.first() == Some(&"super") {
                parts.remove(0);
                base.pop();
            }
        }
        _ => return None,
    }
    base.extend(parts);
    Some(base.join("::"))
}

/// The longest module of `mods` that `path` starts with.
fn resolve<'a>(mods: &'a BTreeMap<String, String>, path: &str) -> Option<&'a str> {
    let segs: Vec<&str> = path.split("::").collect();
    (0..=segs.len())
        .rev()
        .map(|i| segs[..i].join("::"))
        .find_map(|c| mods.get_key_value(&c).map(|(k, _)| k.as_str()))
}

/// Module → the modules of the same crate it uses, through `crate::`, `super::`,
/// `self::` paths and through the names its `use` items bind (aliases included).
fn graph(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, code) in mods {
        let mut targets: Vec<String> = Vec::new();
        let mut aliases: BTreeMap<String, String> = BTreeMap::new();
        // `use` items start a line (after `pub` or `pub(crate)`) and end at `;`.
        let mut statements = Vec::new();
        let mut current: Option<String> = None;
        for line in code.lines() {
            let t = line.trim();
            let t = t
                .strip_prefix("pub(crate) ")
                .or_else(|| t.strip_prefix("pub(super) "))
                .or_else(|| t.strip_prefix("pub "))
                .unwrap_or(t);
            match current.as_mut() {
                Some(c) => c.push_str(t),
                None if t.starts_with("use ") => current = Some(t[4..].to_string()),
                None => continue,
            }
            if t.ends_with(';') {
                statements.push(current.take().unwrap().trim_end_matches(';').to_string());
            }
        }
        for st in statements {
            let mut items = Vec::new();
            expand_use("", &st, &mut items);
            for (path, alias) in items {
                if let Some(abs) = absolute(m, &path) {
                    targets.push(abs.clone());
                    aliases.insert(alias, abs);
                }
            }
        }
        // Paths in the code: crate::, super::, self::, and alias:: of a bound module.
        let words: Vec<&str> = code
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| w.contains("::"))
            .collect();
        for w in words {
            let w = w.trim_start_matches(':').trim_end_matches(':');
            if let Some(abs) = absolute(m, w) {
                targets.push(abs);
            } else if let Some((first, rest)) = w.split_once("::")
                && let Some(base) = aliases.get(first)
            {
                targets.push(join(base, rest));
            }
        }
        let edges = g.entry(m.clone()).or_default();
        for t in targets {
            if let Some(t) = resolve(mods, &t)
                && t != m
                && !t.is_empty()
                && !t.starts_with(&format!("{m}::"))
                && !(m.starts_with(&format!("{t}::")))
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

/// Every crate's source folder, the CLI's (`src`) last.
fn crate_sources() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.path().join("src"),
            )
        })
        .collect();
    out.sort();
    out.push(("arbor".into(), root().join("src")));
    out
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let mut checked = 0;
    for (name, src) in crate_sources() {
        let mods = modules(&src);
        let g = graph(&mods);
        checked += g.len();
        let found = cycles(&g);
        assert!(found.is_empty(), "import cycles in {name}: {found:#?}");
    }
    assert!(checked > 80, "found only {checked} modules");
}

#[test]
fn the_graph_sees_aliases() {
    // `use crate::etc::merge as etc_merge;` then `etc_merge::apply` is an edge.
    let mods: BTreeMap<String, String> = [
        (
            "a".to_string(),
            "use crate::b::c as d;\nfn f() { d::g() }".to_string(),
        ),
        ("b".to_string(), String::new()),
        (
            "b::c".to_string(),
            "use super::super::a::{self as x};".to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let g = graph(&mods);
    assert!(g["a"].contains("b::c"), "{g:?}");
    assert!(g["b::c"].contains("a"), "{g:?}");
    assert_eq!(cycles(&g).len(), 1);
    let real = graph(&modules(&root().join("crates/sysroot/src")));
    assert!(
        real["deploy"].contains("etc::merge"),
        "sysroot::deploy uses etc::merge through an alias: {:?}",
        real["deploy"]
    );
}

#[test]
fn the_cli_and_the_daemon_leave_locking_recording_and_routing_to_ops() {
    // What deciding, locking and recording look like; only the ops crate and the
    // libraries below it may say them.
    let forbidden = [
        ".lock(lock_wait",
        "sysroot.lock(",
        "lock(LockWait",
        ".record(",
        ".record_as(",
        "follows_remote",
        "configured_refspec",
        "deploy::deploy(",
        "deploy::rollback(",
        "kargs::kargs(",
        "deploy::cleanup(",
        "Transaction::begin",
    ];
    for dir in [root().join("src/cli"), root().join("crates/daemon/src")] {
        for (m, code) in modules(&dir) {
            for f in forbidden {
                assert!(
                    !code.contains(f),
                    "{}: {m} says `{f}`: that belongs in the ops crate",
                    dir.display()
                );
            }
        }
    }
}
