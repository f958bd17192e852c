//! arbor's initramfs-tools hook and local-bottom script in a real initramfs: built by
//! Debian's mkinitramfs in a chroot of corpus `a` (which has no busybox, so the
//! initramfs has only the shell and klibc's tools), unpacked, and the script run in a
//! chroot of it against a folder sysroot, with the tools of that initramfs. The VM
//! boot loop covers the same path end to end.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// Runs a shell script as root in a private mount namespace; returns (success, output).
fn sh(script: &str, pid_namespace: bool) -> (bool, String) {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private"]);
    if pid_namespace {
        // A panic in the script ends with `reboot -f`: in a PID namespace of its own
        // that only ends the namespace.
        cmd.args(["--pid", "--fork"]);
    }
    let out = cmd.args(["sh", "-c", script]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The unpacked initramfs of corpus `a` with arbor's hook, built once per run.
fn initramfs() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("initramfs");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let corpus = corpus("a");
        let kver = std::fs::read_dir(corpus.join("usr/lib/modules"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name();
        let here = env!("CARGO_MANIFEST_DIR");
        let (ok, out) = sh(
            &format!(
                r#"set -eu
W={w}
mkdir -p $W/upper $W/work $W/root
mount -t overlay overlay -o lowerdir={corpus},upperdir=$W/upper,workdir=$W/work $W/root
strip -o $W/arbor-prepare-root {bin}
install -D -m 755 $W/arbor-prepare-root $W/root/usr/lib/arbor/arbor-prepare-root
install -D -m 755 {here}/initramfs-tools/hooks/arbor $W/root/usr/share/initramfs-tools/hooks/arbor
install -D -m 755 {here}/initramfs-tools/scripts/local-bottom/arbor \
  $W/root/usr/share/initramfs-tools/scripts/local-bottom/arbor
mount -t proc proc $W/root/proc
mount --rbind /dev $W/root/dev
mount --rbind /sys $W/root/sys
chroot $W/root mkinitramfs -o /tmp/arbor.img {kver}
chroot $W/root unmkinitramfs /tmp/arbor.img /tmp/unpacked
"#,
                w = s(&work),
                corpus = s(&corpus),
                bin = s(&workspace_bin("arbor-prepare-root")),
                kver = kver.to_string_lossy(),
            ),
            false,
        );
        assert!(ok, "building the initramfs failed:\n{out}");
        // Early microcode would put the main archive in main/.
        let unpacked = work.join("upper/tmp/unpacked");
        let main = unpacked.join("main");
        if main.is_dir() { main } else { unpacked }
    })
}

/// A folder sysroot with one deployment; returns (sysroot, its kernel command line).
fn deployed(t: &Path) -> (String, String) {
    let sr = sysroot(t);
    compose(&sr, &rootfs(t, "1"), "os", "1");
    arbor_ok(&["--sysroot", &sr, "deploy", "os"]);
    let file = t.join("cmdline");
    arbor_ok(&["--sysroot", &sr, "boot-select", "--cmdline-out", s(&file)]);
    let cmdline = std::fs::read_to_string(&file).unwrap();
    (sr, cmdline.trim().to_string())
}

/// Runs local-bottom/arbor in a chroot of the initramfs, as init runs it, with the
/// sysroot at `/root` and `cmdline` as `/proc/cmdline` (no `/proc` at all when
/// `None`), then `after` (host shell lines, `$R` = the initramfs root). Returns
/// (success, output).
fn run_script(sysroot: &str, cmdline: Option<&str>, t: &Path, after: &str) -> (bool, String) {
    let r = initramfs();
    let proc = match cmdline {
        Some(c) => {
            std::fs::write(t.join("proc-cmdline"), format!("{c}\n")).unwrap();
            format!(
                "mount -t proc proc $R/proc\nmount --bind {} $R/proc/cmdline\n",
                s(&t.join("proc-cmdline"))
            )
        }
        None => String::new(),
    };
    sh(
        &format!(
            r#"set -eu
R={r}
mkdir -p $R/root $R/proc $R/dev
mount --bind /dev $R/dev
mount --bind {sysroot} $R/root
{proc}
env -i PATH=/sbin:/usr/sbin:/bin:/usr/bin rootmnt=/root panic=-1 \
  /usr/sbin/chroot $R /bin/sh /scripts/local-bottom/arbor
echo script-exited-$?
{after}
"#,
            r = s(r),
        ),
        true,
    )
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_the_initramfs_has_no_busybox_and_no_full_arbor() {
    require_root!();
    let r = initramfs();
    for tool in ["bin/busybox", "usr/bin/busybox", "bin/grep", "usr/bin/grep"] {
        assert!(!r.join(tool).exists(), "{tool} is in the initramfs");
    }
    assert!(r.join("usr/lib/arbor/arbor-prepare-root").is_file());
    assert!(!r.join("usr/bin/arbor").exists());
    let out = Command::new("find")
        .arg(r)
        .args(["-name", "*.so*", "-printf", "%f\n"])
        .output()
        .unwrap();
    let libs = String::from_utf8_lossy(&out.stdout);
    for lib in [
        "libostree",
        "libglib",
        "libcurl",
        "libgpgme",
        "libicu",
        "libsqlite",
    ] {
        assert!(!libs.contains(lib), "{lib} is in the initramfs:\n{libs}");
    }
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_the_local_bottom_script_assembles_the_deployment() {
    require_root!();
    let t = scratch();
    let (sr, cmdline) = deployed(t.path());
    let (ok, out) = run_script(
        &sr,
        Some(&cmdline),
        t.path(),
        r#"
test "$(cat $R/root/usr/bin/tool)" = "tool 1"
test -f $R/root/sysroot/arbor/repo/config
if touch $R/root/usr/x 2>/dev/null; then echo "usr is writable"; exit 1; fi
touch $R/root/etc/written-at-boot
! mountpoint -q $R/arbor-root
echo assembled
"#,
    );
    assert!(
        ok && out.contains("script-exited-0") && out.contains("assembled"),
        "{out}"
    );
    // The boot-time figure the VM benchmark reads, computed with klibc's shell.
    assert!(out.contains("ms to assemble"), "{out}");
    assert!(deployment_dir(&sr, 0).join("etc/written-at-boot").exists());
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_the_local_bottom_script_leaves_a_root_without_arbor_alone() {
    require_root!();
    let t = scratch();
    let (sr, _) = deployed(t.path());
    let (ok, out) = run_script(
        &sr,
        Some("root=/dev/vda1 ro quiet"),
        t.path(),
        "test -d $R/root/arbor/deploy\n! test -e $R/root/usr/bin/tool\necho untouched",
    );
    assert!(
        ok && out.contains("script-exited-0") && out.contains("untouched"),
        "{out}"
    );
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_the_local_bottom_script_stops_the_boot_when_it_cannot_tell_or_cannot_assemble() {
    require_root!();
    let t = scratch();
    let (sr, cmdline) = deployed(t.path());
    // No /proc: the script cannot read the command line, and says so.
    let (ok, out) = run_script(&sr, None, t.path(), "");
    assert!(!ok && !out.contains("script-exited-0"), "{out}");
    assert!(out.contains("cannot read /proc/cmdline"), "{out}");
    // arbor= names a deployment that is not there.
    let bad = cmdline.replace(".0", ".7");
    let (ok, out) = run_script(&sr, Some(&bad), t.path(), "");
    assert!(!ok && !out.contains("script-exited-0"), "{out}");
    assert!(
        out.contains("no such deployment") && out.contains("prepare-root failed"),
        "{out}"
    );
}
