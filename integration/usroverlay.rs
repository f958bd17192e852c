//! `usroverlay` as a live-fix tool, on folder sysroots "booted" with prepare-root in a
//! mount namespace: `--list` (transient, hotfix, after a reboot, of another
//! deployment), `--add` and its refusals, `--name`, `--commit` on the corpus (the new
//! deployment's /usr is the overlay's view, `arbor diff` lists exactly the overlay's
//! changes, rollback), and the same through the daemon.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;

/// The small test tree with more below /usr to change: files, a folder to delete.
fn usr_tree(dir: &Path, version: &str) -> std::path::PathBuf {
    let r = rootfs(dir, version);
    for d in ["usr/lib/plugins", "usr/share/doc/tool"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("usr/bin/other"), "other\n").unwrap();
    std::fs::write(r.join("usr/lib/plugins/a.so"), "a\n").unwrap();
    std::fs::write(r.join("usr/lib/plugins/b.so"), "b\n").unwrap();
    std::fs::write(r.join("usr/share/doc/tool/README"), "read me\n").unwrap();
    std::fs::write(r.join("usr/share/doc/tool/NEWS"), "news\n").unwrap();
    r
}

/// A sysroot with the small tree deployed, and the command line that boots it.
fn booted_sysroot(dir: &Path) -> (String, String) {
    let sr = sysroot(dir);
    compose(&sr, &usr_tree(dir, "1"), "os", "1");
    arbor_ok(&["--sysroot", &sr, "deploy", "os"]);
    let cmdline = boot_first(&sr, dir);
    (sr, cmdline)
}

/// (path, change) pairs of a `--list --json` document.
fn listed(json: &str) -> BTreeSet<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["change"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect()
}

/// The lines between `BEGIN name` and `END name` in a script's output.
fn section(out: &str, name: &str) -> String {
    let start = out
        .find(&format!("BEGIN {name}\n"))
        .unwrap_or_else(|| panic!("no {name} in:\n{out}"));
    let rest = &out[start + name.len() + 7..];
    rest[..rest.find(&format!("END {name}")).unwrap()].to_string()
}

const CHANGES: &str = r#"
echo patched > $T/usr/bin/tool
chmod 700 $T/usr/bin/other
rm -r $T/usr/lib/plugins
rm $T/usr/share/doc/tool/NEWS
mkdir $T/usr/lib/fresh
echo new > $T/usr/lib/fresh/f
"#;

fn expected_changes() -> BTreeSet<(String, String)> {
    pairs(&[
        ("/usr/bin/tool", "modified"),
        ("/usr/bin/other", "modified"),
        ("/usr/lib/plugins", "deleted"),
        ("/usr/lib/plugins/a.so", "deleted"),
        ("/usr/lib/plugins/b.so", "deleted"),
        ("/usr/share/doc/tool/NEWS", "deleted"),
        ("/usr/lib/fresh", "added"),
        ("/usr/lib/fresh/f", "added"),
    ])
}

#[test]
#[cfg_attr(
    not(arbor_root),
    ignore = "needs root: overlayfs whiteouts need trusted xattrs, so real root"
)]
fn root_usroverlay_list_shows_transient_and_hotfix_changes_across_reboots() {
    require_root!();
    let t = scratch();
    let (sr, cmdline) = booted_sysroot(t.path());
    let out = in_namespace(
        &sr,
        &cmdline,
        t.path(),
        &format!(
            r#"
boot
$A usroverlay --name first-try --root $T
{CHANGES}
echo "BEGIN transient"; $A usroverlay --list --json --root $T; echo "END transient"
$A usroverlay --list --root $T | grep -q "^M file    0700"
$A usroverlay --status --root $T | grep -q "'first-try'"
reboot
if $A usroverlay --list --root $T 2>{dir}/err; then echo "listed after reboot"; exit 1; fi
grep -q 'has no /usr overlay' {dir}/err
$A usroverlay --hotfix --name kept-fix --root $T
{CHANGES}
reboot
echo "BEGIN hotfix"; $A usroverlay --list --json --root $T; echo "END hotfix"
$A status | grep -q "Hotfix:    'kept-fix'"
"#,
            dir = s(t.path())
        ),
    );
    let transient = section(&out, "transient");
    assert_eq!(listed(&transient), expected_changes(), "{transient}");
    let v: serde_json::Value = serde_json::from_str(&transient).unwrap();
    assert_eq!(v["kind"], "transient");
    assert_eq!(v["name"], "first-try");
    let tool = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "/usr/bin/tool")
        .unwrap();
    assert_eq!(tool["what"], serde_json::json!(["content"]));
    assert_eq!(tool["size"], 8);
    let hotfix = section(&out, "hotfix");
    assert_eq!(listed(&hotfix), expected_changes(), "{hotfix}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&hotfix).unwrap()["kind"],
        "hotfix"
    );
    // Outside the namespace the hotfix is not mounted; it is listed from its folder.
    let json = arbor_ok(&[
        "--sysroot",
        &sr,
        "usroverlay",
        "--list",
        "--json",
        "--deployment",
        "0",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["mounted"], false);
    assert_eq!(listed(&json), expected_changes());
    // Another deployment's hotfix: deploy 2, boot it, list 1's by its commit.
    let old_commit = status(&sr)[0]["commit"].as_str().unwrap().to_string();
    compose(&sr, &usr_tree(&t.path().join("v2"), "2"), "os", "2");
    arbor_ok(&["--sysroot", &sr, "deploy", "os"]);
    let cmdline = boot_first(&sr, t.path());
    let out = in_namespace(
        &sr,
        &cmdline,
        t.path(),
        &format!(
            r#"
boot
test "$(cat $T/usr/bin/tool)" = "tool 2"
echo "BEGIN other"; $A usroverlay --list --json --deployment {} --root $T; echo "END other"
"#,
            &old_commit[..12]
        ),
    );
    assert_eq!(listed(&section(&out, "other")), expected_changes());
    arbor_ok(&["--sysroot", &sr, "fsck"]);
}

#[test]
fn root_usroverlay_add_copies_files_and_folders_and_refuses_escapes() {
    as_root!();
    let t = scratch();
    let (sr, cmdline) = booted_sysroot(t.path());
    let fix = t.path().join("fix");
    std::fs::create_dir_all(fix.join("usr/bin")).unwrap();
    std::fs::create_dir_all(fix.join("data/sub")).unwrap();
    std::fs::write(fix.join("usr/bin/newtool"), "#!/bin/sh\necho new\n").unwrap();
    std::fs::write(fix.join("data/a"), "a\n").unwrap();
    std::fs::write(fix.join("data/sub/b"), "b\n").unwrap();
    std::fs::write(fix.join("tool"), "fixed tool\n").unwrap();
    let out = in_namespace(
        &sr,
        &cmdline,
        t.path(),
        &format!(
            r#"
boot
chmod 755 {fix}/usr/bin/newtool
chmod 640 {fix}/data/sub/b
cd {fix}
$A usroverlay --add usr/bin/newtool --name hand-fix --root $T
$A usroverlay --status --root $T | grep -q "gone at reboot 'hand-fix'"
test "$(stat -c %a $T/usr/bin/newtool)" = 755
$A usroverlay --add {fix}/data:/usr/share/fixdata {fix}/tool:/usr/bin/tool --root $T
test "$(cat $T/usr/share/fixdata/sub/b)" = b
test "$(stat -c %a $T/usr/share/fixdata/sub/b)" = 640
test "$(cat $T/usr/bin/tool)" = "fixed tool"
ln -s ../../etc $T/usr/escape-rel
ln -s /etc $T/usr/escape-abs
ln -s bin $T/usr/bindir
$A usroverlay --add {fix}/tool:/usr/bindir/via-link --root $T
test "$(cat $T/usr/bin/via-link)" = "fixed tool"
for bad in /etc/passwd /usr/../etc/x /usr/escape-rel/x /usr/escape-abs/x /usr/bin/tool/x /usr/share; do
  if $A usroverlay --add {fix}/tool:$bad --root $T 2>>{dir}/refusals; then echo "accepted $bad"; exit 1; fi
done
test ! -e /etc/x && test ! -e /etc/via-link
! find $T/usr -name '*.arbor-add' | grep -q .
echo "BEGIN list"; $A usroverlay --list --json --root $T; echo "END list"
"#,
            fix = s(&fix),
            dir = s(t.path())
        ),
    );
    let l = listed(&section(&out, "list"));
    for p in [
        ("/usr/bin/newtool", "added"),
        ("/usr/share/fixdata/sub/b", "added"),
        ("/usr/bin/tool", "modified"),
        ("/usr/bin/via-link", "added"),
    ] {
        assert!(
            l.contains(&(p.0.to_string(), p.1.to_string())),
            "{p:?} in {l:?}"
        );
    }
    let refusals = std::fs::read_to_string(t.path().join("refusals")).unwrap();
    for why in [
        "'/etc/passwd' is not below /usr",
        "must not contain '..'",
        "/usr/escape-rel is a symlink that leaves /usr",
        "/usr/escape-abs is a symlink that leaves /usr",
        "/usr/bin/tool is not a directory",
        "/usr/share is a directory; a file cannot replace it",
    ] {
        assert!(refusals.contains(why), "'{why}' not in:\n{refusals}");
    }
    // The history names what was added, and the overlay's name.
    let h: serde_json::Value =
        serde_json::from_str(&arbor_ok(&["--sysroot", &sr, "history", "--json"])).unwrap();
    let details: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "usroverlay" && e["result"] == "ok")
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert!(
        details.contains(&"added (hand-fix): /usr/bin/newtool"),
        "{details:?}"
    );
    assert!(
        details.contains(&"added (hand-fix): /usr/share/fixdata/ /usr/bin/tool"),
        "{details:?}"
    );
    // The deployment below was never written.
    assert!(!deployment_dir(&sr, 0).join("usr/bin/newtool").exists());
}

/// `arbor diff FROM TO --json` as (path, change) pairs, with the overlay's words.
fn diffed(sr: &str, from: &str, to: &str) -> BTreeSet<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&arbor_ok(&["--sysroot", sr, "diff", from, to, "--json"])).unwrap();
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let change = match c["change"].as_str().unwrap() {
                "removed" => "deleted",
                other => other,
            };
            (c["path"].as_str().unwrap().to_string(), change.to_string())
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(arbor_root),
    ignore = "needs root: overlayfs whiteouts need trusted xattrs, so real root"
)]
fn root_usroverlay_commit_makes_the_tested_fix_a_deployment_of_the_corpus() {
    require_root!();
    let t = scratch();
    let sr = sysroot(t.path());
    compose(&sr, &corpus("a"), "os/a", "a");
    arbor_ok(&["--sysroot", &sr, "deploy", "os/a"]);
    let cmdline = boot_first(&sr, t.path());
    let booted = status(&sr)[0]["commit"].as_str().unwrap().to_string();
    let dir = s(t.path());
    let out = in_namespace(
        &sr,
        &cmdline,
        t.path(),
        &format!(
            r#"
boot
$A usroverlay --hotfix --name cve-fix --root $T
printf '\n# patched\n' >> $T/usr/bin/hostname
chmod 700 $T/usr/sbin/nologin
rm -r $T/usr/share/doc/hostname
mkdir -p $T/usr/lib/fix
echo fixed > $T/usr/lib/fix/data
ln -s ../lib/fix/data $T/usr/bin/fix-data
echo "BEGIN list"; $A usroverlay --list --json --root $T; echo "END list"
echo "BEGIN commit"; $A usroverlay --commit -m "hostname fix" --json --root $T; echo "END commit"
$A usroverlay --status --root $T | grep -q 'committed as'
for d in {sr}/arbor/deploy/debian/deploy/*.0; do [ "$d" = {sr}/arbor/deploy/debian/deploy/{booted}.0 ] || P=$d; done
diff -r --no-dereference $T/usr $P/usr
(cd $T/usr && find . -printf '%p %y %m %U %G %l\n' | sort) > {dir}/view.txt
(cd $P/usr && find . -printf '%p %y %m %U %G %l\n' | sort) > {dir}/pending.txt
(cd $T/usr && getfattr -R -h -d -m - . 2>/dev/null) > {dir}/view.xattrs
(cd $P/usr && getfattr -R -h -d -m - . 2>/dev/null) > {dir}/pending.xattrs
echo same-bytes
"#,
            sr = sr,
            booted = booted
        ),
    );
    assert!(out.contains("same-bytes"), "{out}");
    let read = |n: &str| std::fs::read_to_string(t.path().join(n)).unwrap();
    assert_eq!(read("view.txt"), read("pending.txt"));
    assert_eq!(read("view.xattrs"), read("pending.xattrs"));
    let list = section(&out, "list");
    let commit: serde_json::Value = serde_json::from_str(&section(&out, "commit")).unwrap();
    let new = commit["commit"].as_str().unwrap().to_string();
    // The new commit differs from the booted one by exactly the overlay's changes.
    assert_eq!(diffed(&sr, &booted, &new), listed(&list));
    assert!(listed(&list).contains(&("/usr/bin/hostname".into(), "modified".into())));
    // It is the pending deployment, with the same origin, named in its metadata.
    let st = status(&sr);
    assert_eq!(st[0]["commit"], new.as_str());
    assert_eq!(st[0]["booted"], false);
    assert_eq!(st[1]["commit"], booted.as_str());
    assert_eq!(st[0]["origin"], st[1]["origin"]);
    let show = arbor_ok(&["--sysroot", &sr, "show", &new]);
    assert!(
        show.contains("arbor.usroverlay.name") && show.contains("cve-fix"),
        "{show}"
    );
    arbor_ok(&["--sysroot", &sr, "fsck"]);
    // Boot it: /usr is the fix without an overlay, and the old hotfix is gone.
    let cmdline = boot_first(&sr, t.path());
    in_namespace(
        &sr,
        &cmdline,
        t.path(),
        r#"
boot
! findmnt -n -t overlay $T/usr
tail -n 1 $T/usr/bin/hostname | grep -q '# patched'
test "$(cat $T/usr/lib/fix/data)" = fixed
"#,
    );
    assert!(
        !Path::new(&sr)
            .join(format!("arbor/deploy/debian/hotfix/{booted}.0"))
            .exists()
    );
    // Rolling back boots the old deployment as it was before the hotfix.
    arbor_ok(&["--sysroot", &sr, "rollback"]);
    assert_eq!(status(&sr)[0]["commit"], booted.as_str());
    let cmdline = boot_first(&sr, t.path());
    in_namespace(
        &sr,
        &cmdline,
        t.path(),
        r#"
boot
! findmnt -n -t overlay $T/usr
! grep -q '# patched' $T/usr/bin/hostname
test -d $T/usr/share/doc/hostname
"#,
    );
    arbor_ok(&["--sysroot", &sr, "fsck"]);
}

#[test]
#[cfg_attr(
    not(arbor_root),
    ignore = "needs root: an overlay with redirect_dir=off and trusted xattrs (layering, mmdebstrap) needs real root"
)]
fn root_usroverlay_commit_of_a_layered_deployment_keeps_its_layers() {
    require_root!();
    let t = scratch();
    let sr = sysroot(t.path());
    compose(&sr, &corpus("a"), "os/a", "a");
    arbor_ok(&["--sysroot", &sr, "deploy", "os/a"]);
    arbor_ok(&["--sysroot", &sr, "install", "hello"]);
    let cmdline = boot_first(&sr, t.path());
    in_namespace(
        &sr,
        &cmdline,
        t.path(),
        r#"
boot
test -x $T/usr/bin/hello
$A usroverlay --name layered-fix --root $T
echo fixed > $T/usr/share/fixnote
$A usroverlay --commit --root $T
"#,
    );
    let st = status(&sr);
    assert_eq!(st[0]["origin"], st[1]["origin"]);
    assert_eq!(
        st[0]["origin"]["layers"]["packages"],
        serde_json::json!(["hello"])
    );
    // Its base is the booted deployment's base, so an upgrade re-layers from there.
    assert_eq!(st[0]["base"], st[1]["base"]);
    assert_ne!(st[0]["commit"], st[1]["commit"]);
    let new = deployment_dir(&sr, 0);
    assert!(new.join("usr/bin/hello").exists());
    assert_eq!(
        std::fs::read_to_string(new.join("usr/share/fixnote")).unwrap(),
        "fixed\n"
    );
    let h = arbor_ok(&["--sysroot", &sr, "history"]);
    assert!(
        h.contains("committed (layered-fix) 1 changed paths as"),
        "{h}"
    );
    arbor_ok(&["--sysroot", &sr, "fsck"]);
}

#[test]
fn root_daemon_adds_a_file_by_descriptor_and_lists_the_overlay() {
    as_root!();
    let t = scratch();
    let (sr, cmdline) = booted_sysroot(t.path());
    std::fs::write(t.path().join("dbus-fix"), "from the bus\n").unwrap();
    let out = in_namespace(
        &sr,
        &cmdline,
        t.path(),
        &format!(
            r#"
boot
cat > {dir}/client.py <<'EOS'
import os, sys, time
import dbus
bus = dbus.bus.BusConnection(os.environ["DBUS_SESSION_BUS_ADDRESS"])
sysroot = dbus.Interface(bus.get_object("org.arbor.Arbor1", "/org/arbor/Arbor1"), "org.arbor.Arbor1.Sysroot")
fd = dbus.types.UnixFd(os.open(sys.argv[1], os.O_RDONLY))
def add(dest, **more):
    return sysroot.UsrOverlay(dict(add=dbus.Dictionary({{dest: fd}}, signature="sh"), **more))
tx = bus.get_object("org.arbor.Arbor1", add("/usr/bin/dbus-fix", name="via-bus"))
props = dbus.Interface(tx, "org.freedesktop.DBus.Properties")
while props.Get("org.arbor.Arbor1.Transaction", "Running"):
    time.sleep(0.1)
print("success", bool(props.Get("org.arbor.Arbor1.Transaction", "Success")),
      props.Get("org.arbor.Arbor1.Transaction", "ErrorMessage"))
try:
    add("/etc/x")
    print("accepted /etc/x")
except dbus.DBusException as e:
    print("refused", e.get_dbus_name(), e.get_dbus_message())
EOS
cat > {dir}/client.sh <<'EOS'
set -eu
B="busctl --address=$DBUS_SESSION_BUS_ADDRESS"
{arbord} --bus-address "$DBUS_SESSION_BUS_ADDRESS" --sysroot {sr} --root $T --idle-exit 60 &
for i in $(seq 100); do $B status org.arbor.Arbor1 >/dev/null 2>&1 && break; sleep 0.1; done
/usr/bin/python3 {dir}/client.py {dir}/dbus-fix
echo "BEGIN list"
$B --json=short call org.arbor.Arbor1 /org/arbor/Arbor1 org.arbor.Arbor1.Sysroot ListUsrOverlay 'a{{sv}}' 0
echo "END list"
EOS
T=$T dbus-run-session -- sh {dir}/client.sh 2>&1
test "$(cat $T/usr/bin/dbus-fix)" = "from the bus"
"#,
            dir = s(t.path()),
            arbord = common::bus::arbord_bin(),
            sr = sr,
        ),
    );
    assert!(out.contains("success True"), "{out}");
    assert!(
        out.contains("refused org.freedesktop.DBus.Error.InvalidArgs")
            && out.contains("'/etc/x' is not below /usr"),
        "{out}"
    );
    let reply: serde_json::Value = serde_json::from_str(section(&out, "list").trim()).unwrap();
    // A real a{sv}, the listing's fields as the CLI's JSON has them.
    let v = common::bus::plain(&reply["data"][0]);
    assert_eq!(v["name"], "via-bus", "{v}");
    let listing = v.to_string();
    assert_eq!(
        listed(&listing),
        pairs(&[("/usr/bin/dbus-fix", "added")]),
        "{listing}"
    );
    // Recorded like the CLI's, with the D-Bus caller.
    let h = arbor_ok(&["--sysroot", &sr, "history"]);
    assert!(
        h.contains("D-Bus UsrOverlay") && h.contains("added (via-bus): /usr/bin/dbus-fix"),
        "{h}"
    );
}
