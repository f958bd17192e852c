//! Static deltas through the real binary on the corpus point update a → b: the delta
//! rebuilds b exactly in a repository that has only a, and a damaged or forged delta
//! changes nothing.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// A repository with corpus `name` committed at a fixed time, so that two
/// repositories get the same commit ids.
fn repo_with(dir: &Path, trees: &[&str]) -> String {
    let repo = dir.to_str().unwrap().to_string();
    arbor_ok(&["--repo", &repo, "init"]);
    for t in trees {
        let out = Command::new(arbor_bin())
            .args(["--repo", &repo, "commit", "-b", t, s(&corpus(t))])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    repo
}

#[test]
fn root_delta_rebuilds_b_from_a_and_refuses_damage() {
    as_root!();
    let t = scratch();
    let src = repo_with(&t.path().join("src"), &["a", "b"]);
    let delta = t.path().join("ab.delta");
    let stats: serde_json::Value = serde_json::from_str(&arbor_ok(&[
        "--repo", &src, "delta", "stats", "a", "b", "--json",
    ]))
    .unwrap();
    assert!(
        stats["delta_bytes"].as_u64().unwrap() * 3 < stats["full_bytes"].as_u64().unwrap(),
        "{stats}"
    );
    arbor_ok(&["--repo", &src, "delta", "create", "a", "b", "-o", s(&delta)]);
    let b = arbor_ok(&["--repo", &src, "show", "b", "--json"]);
    let b_id = serde_json::from_str::<serde_json::Value>(&b).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Damage, each on a copy, each refused with nothing written.
    let dst = repo_with(&t.path().join("dst"), &["a"]);
    let bytes = std::fs::read(&delta).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "flipped byte",
            {
                let mut v = bytes.clone();
                let i = v.len() - 100;
                v[i] ^= 0x55;
                v
            },
            "record",
        ),
        ("truncated", bytes[..bytes.len() / 2].to_vec(), "ends early"),
        ("not a delta", b"hello".repeat(100), "not an arbor delta"),
        (
            "a lying count",
            {
                let mut v = bytes.clone();
                v[76..84].copy_from_slice(&u64::MAX.to_le_bytes());
                v
            },
            "claims",
        ),
    ];
    for (what, data, want) in cases {
        let bad = t.path().join("bad.delta");
        std::fs::write(&bad, data).unwrap();
        let e = arbor_err(&["--repo", &dst, "delta", "apply", s(&bad), "-b", "b"]);
        assert!(e.contains(want), "{what}: {e}");
        assert!(
            !arbor_ok(&["--repo", &dst, "refs"]).contains("b\t"),
            "{what}: ref b moved"
        );
        let show = arbor(&["--repo", &dst, "show", &b_id]);
        assert!(!show.status.success(), "{what}: commit b appeared");
    }
    arbor_ok(&["--repo", &dst, "fsck"]);
    // A repository without the delta's FROM commit is told which one it needs.
    let empty = t.path().join("empty");
    arbor_ok(&["--repo", s(&empty), "init"]);
    let e = arbor_err(&["--repo", s(&empty), "delta", "apply", s(&delta)]);
    assert!(e.contains("needs commit"), "{e}");

    // The real thing: b, complete and identical.
    let out = arbor_ok(&["--repo", &dst, "delta", "apply", s(&delta), "-b", "b"]);
    assert!(out.starts_with(&b_id), "{out}");
    arbor_ok(&["--repo", &dst, "fsck"]);
    let co = t.path().join("co");
    arbor_ok(&["--repo", &dst, "checkout", "b", s(&co)]);
    assert_eq!(describe_tree(&co), describe_tree(&corpus("b")));
}

/// A hand-made delta of both formats carrying a commit whose tree holds one file under
/// `name` (each object matching its id): only the name decides. `../escaped` is
/// refused naming the name, and the store gets neither the objects nor the branch; a
/// plain name is taken, which proves the writer here right, and version 1 deltas still
/// apply.
#[test]
fn root_a_forged_delta_with_a_traversing_name_is_refused() {
    use arbor_store::encoding::{Commit, DirTree, FileEntry};
    use arbor_store::{ObjectId, ObjectKind};
    use integer_encoding::VarInt;
    as_root!();
    let t = scratch();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"payload").unwrap();
    let repo = s(&t.path().join("repo")).to_string();
    arbor_ok(&["--repo", &repo, "init"]);
    arbor_ok(&["--repo", &repo, "commit", "-b", "good", s(&src)]);
    let show: serde_json::Value =
        serde_json::from_str(&arbor_ok(&["--repo", &repo, "show", "--json", "good"])).unwrap();
    let from: ObjectId = show["id"].as_str().unwrap().parse().unwrap();
    let root_meta: ObjectId = show["root_meta"].as_str().unwrap().parse().unwrap();
    let ls: serde_json::Value =
        serde_json::from_str(&arbor_ok(&["--repo", &repo, "ls", "--json", "good", "/f"])).unwrap();
    let file: ObjectId = ls[0]["object"].as_str().unwrap().parse().unwrap();
    for version in [1u8, 2] {
        for name in ["../escaped", "fine"] {
            let tree = DirTree {
                files: vec![FileEntry {
                    name: name.as_bytes().to_vec(),
                    file,
                }],
                dirs: vec![],
            }
            .encode();
            let tree_id = ObjectId::of(&tree);
            let commit = Commit {
                root_tree: tree_id,
                root_meta,
                parent: None,
                timestamp: i64::from(version),
                subject: "forged".into(),
                body: String::new(),
                metadata: vec![],
            }
            .encode();
            let to = ObjectId::of(&commit);
            let mut delta = b"ARBORDELTA\0".to_vec();
            delta.push(version);
            delta.extend_from_slice(&from.0);
            delta.extend_from_slice(&to.0);
            let objects = [
                (ObjectKind::DirTree, tree_id, &tree),
                (ObjectKind::Commit, to, &commit),
            ];
            let data: Vec<Vec<u8>> = objects
                .iter()
                .map(|(_, _, b)| zstd::encode_all(&b[..], 3).unwrap())
                .collect();
            if version == 1 {
                delta.extend_from_slice(&2u64.to_le_bytes());
                for ((kind, id, bytes), data) in objects.iter().zip(&data) {
                    delta.push(*kind as u8);
                    delta.extend_from_slice(&id.0);
                    delta.push(0); // full encoding
                    delta.extend_from_slice(&0u32.to_le_bytes()); // no header
                    delta.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                    delta.extend_from_slice(&(data.len() as u64).to_le_bytes());
                    delta.extend_from_slice(data);
                }
            } else {
                let mut index = 2u64.encode_var_vec();
                for ((kind, _, bytes), data) in objects.iter().zip(&data) {
                    index.extend_from_slice(&[*kind as u8, 0, 0]); // full, no header
                    index.extend_from_slice(&(bytes.len() as u64).encode_var_vec());
                    index.extend_from_slice(&(data.len() as u64).encode_var_vec());
                }
                let packed = zstd::encode_all(&index[..], 3).unwrap();
                delta.extend_from_slice(&(packed.len() as u64).to_le_bytes());
                delta.extend_from_slice(&(index.len() as u64).to_le_bytes());
                delta.extend_from_slice(&packed);
                data.iter().for_each(|d| delta.extend_from_slice(d));
            }
            let path = t.path().join("forged.delta");
            std::fs::write(&path, &delta).unwrap();
            let before = object_count(Path::new(&repo));
            let branch = format!("v{version}-{}", name.len());
            let args = ["--repo", &repo, "delta", "apply", s(&path), "-b", &branch];
            if name == "fine" {
                let out = arbor_ok(&args);
                assert!(out.starts_with(&to.to_string()), "version {version}: {out}");
                arbor_ok(&["--repo", &repo, "ls", &branch, "/fine"]);
                continue;
            }
            let err = arbor_err(&args);
            assert!(
                err.contains("../escaped") && err.contains("'/'"),
                "version {version}: {err}"
            );
            assert_eq!(
                object_count(Path::new(&repo)),
                before,
                "version {version}: objects of the forged delta were kept"
            );
            let refs = arbor_ok(&["--repo", &repo, "refs"]);
            assert!(!refs.contains(&branch), "{refs}");
        }
    }
    arbor_ok(&["--repo", &repo, "fsck"]);
}

/// Compresses `data` as the kernel compresses its modules, under xz 5.6+'s default of
/// threads (`xz --check=crc32 --lzma2=dict=1MiB`, block sizes in block headers).
fn kernel_xz(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("xz")
        .args(["-T2", "-c", "--check=crc32", "--lzma2=dict=1MiB"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// The major upgrade's kernel modules: bookworm's plain `.ko` under one kernel version
/// become trixie's `.ko.xz` under another, and a point update rebuilds a `.ko.xz` in
/// place. Both are diffed by content (records `recompressed`), the delta is a fraction
/// of the compressed modules, and applying it gives the very bytes; an xz file arbor
/// cannot reproduce (a BCJ filter) falls back to an ordinary record and applies too.
#[test]
fn root_delta_diffs_xz_modules_by_content_across_kernel_versions() {
    as_root!();
    let t = scratch();
    let modules_of = |tree: &str| -> (String, Vec<std::path::PathBuf>) {
        let base = corpus(tree).join("usr/lib/modules");
        let kver = std::fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|n| base.join(n).join("kernel").is_dir())
            .expect("a kernel in the corpus");
        let out = Command::new("find")
            .arg(base.join(&kver).join("kernel/net"))
            .args(["-name", "*.ko*", "-size", "+20k"])
            .output()
            .unwrap();
        let mut v: Vec<_> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(std::path::PathBuf::from)
            .collect();
        v.sort();
        (kver, v)
    };
    let (kver_a, mods_a) = modules_of("a");
    let (kver_t, _) = modules_of("t");
    // Each of bookworm's network modules that trixie still has, both versions.
    let mut pairs = Vec::new();
    for m in &mods_a {
        let rel = m
            .strip_prefix(corpus("a").join("usr/lib/modules").join(&kver_a))
            .unwrap();
        let new = corpus("t")
            .join("usr/lib/modules")
            .join(&kver_t)
            .join(format!("{}.xz", rel.display()));
        if new.exists() && pairs.len() < 40 {
            pairs.push((rel.to_path_buf(), m.clone(), new));
        }
    }
    assert!(
        pairs.len() >= 10,
        "too few modules in both trees: {}",
        pairs.len()
    );
    let from = t.path().join("from");
    let to = t.path().join("to");
    let to2 = t.path().join("to2");
    let mut xz_bytes = 0;
    for (rel, old, new) in &pairs {
        let o = from.join("usr/lib/modules").join(&kver_a).join(rel);
        std::fs::create_dir_all(o.parent().unwrap()).unwrap();
        std::fs::copy(old, &o).unwrap();
        let n = to
            .join("usr/lib/modules")
            .join(&kver_t)
            .join(format!("{}.xz", rel.display()));
        std::fs::create_dir_all(n.parent().unwrap()).unwrap();
        std::fs::copy(new, &n).unwrap();
        xz_bytes += std::fs::metadata(new).unwrap().len();
    }
    // A point update: one module rebuilt (its content changed a little), compressed
    // again the kernel's way, at the same path; and a BCJ-filtered xz file.
    Command::new("cp")
        .args(["-a", s(&to), s(&to2)])
        .status()
        .unwrap();
    let (rel, _, new) = &pairs[0];
    let rebuilt = to2
        .join("usr/lib/modules")
        .join(&kver_t)
        .join(format!("{}.xz", rel.display()));
    let mut content = Command::new("xz")
        .args(["-dc", s(new)])
        .output()
        .unwrap()
        .stdout;
    content.extend_from_slice(b"\0arbor point update\0");
    std::fs::write(&rebuilt, kernel_xz(&content)).unwrap();
    let odd = Command::new("sh")
        .args(["-c", &format!("xz -dc {} | xz -c --x86 --lzma2", s(new))])
        .output()
        .unwrap()
        .stdout;
    std::fs::write(to2.join("usr/lib/odd.xz"), &odd).unwrap();

    // Commits at a fixed time, so that both repositories get the same ids.
    let commit = |repo: &str, b: &str, dir: &Path| {
        let out = Command::new(arbor_bin())
            .args(["--repo", repo, "commit", "-b", b, s(dir)])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let src = s(&t.path().join("src")).to_string();
    arbor_ok(&["--repo", &src, "init"]);
    for (b, dir) in [("from", &from), ("to", &to), ("to2", &to2)] {
        commit(&src, b, dir);
    }
    let create = |a: &str, b: &str, out: &Path| -> serde_json::Value {
        serde_json::from_str(&arbor_ok(&[
            "--repo",
            &src,
            "delta",
            "create",
            a,
            b,
            "-o",
            s(out),
            "--json",
            "--recompress",
        ]))
        .unwrap()
    };
    let major = create("from", "to", &t.path().join("major.delta"));
    assert_eq!(major["recompressed"], pairs.len(), "{major}");
    let delta_bytes = major["delta_bytes"].as_u64().unwrap();
    // The modules of 6.1 and 6.12 differ in code; their content diff still beats the
    // compressed files (measured: about 0.8 of them).
    assert!(
        delta_bytes < xz_bytes,
        "{delta_bytes} >= {xz_bytes}: {major}"
    );
    let point = create("to", "to2", &t.path().join("point.delta"));
    // One rebuilt module and one new file: the module costs bytes, not its size.
    assert_eq!(point["recompressed"], 1, "{point}");
    let rebuilt_len = std::fs::metadata(&rebuilt).unwrap().len();
    assert!(
        point["delta_bytes"].as_u64().unwrap() < odd.len() as u64 + rebuilt_len / 10,
        "{point} (module {rebuilt_len} bytes, odd {} bytes)",
        odd.len()
    );

    let dst = s(&t.path().join("dst")).to_string();
    arbor_ok(&["--repo", &dst, "init"]);
    commit(&dst, "from", &from);
    arbor_ok(&[
        "--repo",
        &dst,
        "delta",
        "apply",
        s(&t.path().join("major.delta")),
        "-b",
        "to",
    ]);
    arbor_ok(&[
        "--repo",
        &dst,
        "delta",
        "apply",
        s(&t.path().join("point.delta")),
        "-b",
        "to2",
    ]);
    arbor_ok(&["--repo", &dst, "fsck"]);
    let co = t.path().join("co");
    arbor_ok(&["--repo", &dst, "checkout", "to2", s(&co)]);
    assert_eq!(describe_tree(&co), describe_tree(&to2));
    assert_eq!(
        std::fs::read(
            co.join("usr/lib/modules")
                .join(&kver_t)
                .join(format!("{}.xz", rel.display()))
        )
        .unwrap(),
        std::fs::read(&rebuilt).unwrap()
    );
}
