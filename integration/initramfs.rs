//! arbor's initramfs-tools hook and local-bottom script in a real initramfs: built by
//! Debian's mkinitramfs in a chroot of corpus `a` (which has no busybox, so the
//! initramfs has only the shell and klibc's tools), unpacked, and the script run in a
//! chroot of it against a folder sysroot, with the tools of that initramfs. The same
//! for arbor's dracut module: an initramfs built by Debian's dracut in a chroot of
//! corpus `t` (trixie), its pre-pivot hook run as dracut runs it. The VM boot loops
//! cover both paths end to end.
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

/// The one kernel version a corpus tree has modules for.
fn kernel_version(tree: &Path) -> std::ffi::OsString {
    std::fs::read_dir(tree.join("usr/lib/modules"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
}

/// The unpacked initramfs of corpus `a` with arbor's hook, built once per run.
fn initramfs() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("initramfs");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let corpus = corpus("a");
        let kver = kernel_version(&corpus);
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

/// How a test runs arbor's boot script in an unpacked initramfs: where the initramfs
/// mounts the root, and the command (run on the host, `$R` = the initramfs root) that
/// runs the script as the initramfs would.
struct Runner {
    root: &'static Path,
    mountpoint: &'static str,
    command: String,
}

/// initramfs-tools: init runs local-bottom/arbor with the root at /root.
fn local_bottom() -> Runner {
    Runner {
        root: initramfs(),
        mountpoint: "/root",
        command: concat!(
            "env -i PATH=/sbin:/usr/sbin:/bin:/usr/bin rootmnt=/root panic=-1 ",
            "/usr/sbin/chroot $R /bin/sh /scripts/local-bottom/arbor"
        )
        .to_string(),
    }
}

/// The unpacked initramfs of corpus `t` (trixie) built by Debian's dracut with arbor's
/// module: dracut put in place of initramfs-tools by apt, from the packages
/// scripts/setup.sh fetched into `$ARBOR_IMAGES/debs-trixie-dracut`; built once per run.
fn dracut_initramfs() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("initramfs-dracut");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let corpus = corpus("t");
        let kver = kernel_version(&corpus);
        let images =
            std::env::var("ARBOR_IMAGES").unwrap_or_else(|_| "/var/tmp/arbor-images".into());
        let debs = Path::new(&images).join("debs-trixie-dracut");
        assert!(
            debs.join("READY").exists(),
            "{} is missing: run scripts/setup.sh",
            debs.display()
        );
        let here = env!("CARGO_MANIFEST_DIR");
        let (ok, out) = sh(
            &format!(
                r#"set -eu
W={w}
mkdir -p $W/upper $W/work $W/root
mount -t overlay overlay -o lowerdir={corpus},upperdir=$W/upper,workdir=$W/work $W/root
strip -o $W/arbor-prepare-root {bin}
install -D -m 755 $W/arbor-prepare-root $W/root/usr/lib/arbor/arbor-prepare-root
for f in module-setup.sh arbor-prepare-root.sh; do
  install -D -m 755 {here}/dracut/90arbor/$f $W/root/usr/lib/dracut/modules.d/90arbor/$f
done
install -D -m 644 {here}/dracut/90-arbor.conf $W/root/usr/lib/dracut/dracut.conf.d/90-arbor.conf
mkdir -p $W/root/tmp/debs && cp {debs}/*.deb $W/root/tmp/debs/
mount -t proc proc $W/root/proc
mount --rbind /dev $W/root/dev
mount --rbind /sys $W/root/sys
export DEBIAN_FRONTEND=noninteractive
chroot $W/root sh -c 'apt-get install -y -q --no-install-recommends /tmp/debs/*.deb >/dev/null'
chroot $W/root dracut --no-hostonly --no-compress --force /tmp/arbor.img {kver}
mkdir $W/root/tmp/unpacked
chroot $W/root sh -c 'cd /tmp/unpacked && lsinitrd --unpack /tmp/arbor.img'
"#,
                w = s(&work),
                corpus = s(&corpus),
                bin = s(&workspace_bin("arbor-prepare-root")),
                debs = s(&debs),
                kver = kver.to_string_lossy(),
            ),
            false,
        );
        assert!(ok, "building the dracut initramfs failed:\n{out}");
        work.join("upper/tmp/unpacked")
    })
}

/// dracut: dracut-pre-pivot sources its hooks with dracut-lib.sh loaded and the root
/// at $NEWROOT (/sysroot). `die` is dracut's but for its end: in the initramfs it
/// halts the machine (or opens a shell), here it only ends the script.
fn dracut_pre_pivot() -> Runner {
    let root = dracut_initramfs();
    let out = Command::new("find")
        .arg(root)
        .args(["-path", "*/pre-pivot/*arbor-prepare-root.sh"])
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&out.stdout);
    let hook = found
        .lines()
        .next()
        .expect("arbor's pre-pivot hook is in the dracut initramfs")
        .strip_prefix(s(root))
        .unwrap()
        .to_string();
    Runner {
        root,
        mountpoint: "/sysroot",
        command: format!(
            "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin NEWROOT=/sysroot /usr/sbin/chroot $R \
             /bin/sh -c '. /lib/dracut-lib.sh; die() {{ echo \"dracut: FATAL: $*\"; exit 1; }}; . {hook}'"
        ),
    }
}

/// Runs arbor's script in a chroot of the initramfs, as the initramfs runs it, with the
/// sysroot at the runner's mount point and `cmdline` as `/proc/cmdline` (no `/proc` at
/// all when `None`), then `after` (host shell lines, `$R` = the initramfs root, `$M`
/// the mount point). Returns (success, output).
fn run_script(
    run: &Runner,
    sysroot: &str,
    cmdline: Option<&str>,
    t: &Path,
    after: &str,
) -> (bool, String) {
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
M=$R{m}
# In the initramfs / is a mount (rootfs), as the dracut hook relies on.
mount --bind $R $R
mkdir -p $M $R/proc $R/dev
mount --bind /dev $R/dev
mount --bind {sysroot} $M
{proc}
{command}
echo script-exited-$?
{after}
"#,
            r = s(run.root),
            m = run.mountpoint,
            command = run.command,
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

/// The script assembles the deployment that arbor= names over the root mount point:
/// /usr read-only, /etc writable, the physical root at /sysroot, nothing left behind.
fn assembles_the_deployment(run: &Runner) {
    let t = scratch();
    let (sr, cmdline) = deployed(t.path());
    let (ok, out) = run_script(
        run,
        &sr,
        Some(&cmdline),
        t.path(),
        r#"
test "$(cat $M/usr/bin/tool)" = "tool 1"
test -f $M/sysroot/arbor/repo/config
if touch $M/usr/x 2>/dev/null; then echo "usr is writable"; exit 1; fi
touch $M/etc/written-at-boot
! mountpoint -q $R/arbor-root
echo assembled
"#,
    );
    assert!(
        ok && out.contains("script-exited-0") && out.contains("assembled"),
        "{out}"
    );
    // The boot-time figure the VM benchmark reads, computed with the initramfs's shell.
    assert!(out.contains("ms to assemble"), "{out}");
    assert!(deployment_dir(&sr, 0).join("etc/written-at-boot").exists());
}

/// A command line without arbor= boots the root as it is.
fn leaves_a_root_without_arbor_alone(run: &Runner) {
    let t = scratch();
    let (sr, _) = deployed(t.path());
    let (ok, out) = run_script(
        run,
        &sr,
        Some("root=/dev/vda1 ro quiet"),
        t.path(),
        "test -d $M/arbor/deploy\n! test -e $M/usr/bin/tool\necho untouched",
    );
    assert!(
        ok && out.contains("script-exited-0") && out.contains("untouched"),
        "{out}"
    );
}

/// A script that cannot read the command line, or cannot assemble the deployment,
/// stops the boot with a message naming why; it never boots the physical root.
fn stops_the_boot_when_it_cannot_tell_or_cannot_assemble(run: &Runner) {
    let t = scratch();
    let (sr, cmdline) = deployed(t.path());
    // No /proc: the script cannot read the command line, and says so.
    let (ok, out) = run_script(run, &sr, None, t.path(), "");
    assert!(!ok && !out.contains("script-exited-0"), "{out}");
    assert!(out.contains("cannot read /proc/cmdline"), "{out}");
    // arbor= names a deployment that is not there.
    let bad = cmdline.replace(".0", ".7");
    let (ok, out) = run_script(run, &sr, Some(&bad), t.path(), "");
    assert!(!ok && !out.contains("script-exited-0"), "{out}");
    assert!(
        out.contains("no such deployment") && out.contains("prepare-root failed"),
        "{out}"
    );
}

/// The shared cases as tests of one boot script: `$module::root_…`.
macro_rules! cases_of {
    ($module:ident, $runner:expr) => {
        mod $module {
            use super::*;

            #[test]
            #[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
            fn root_assembles_the_deployment() {
                require_root!();
                assembles_the_deployment(&$runner);
            }

            #[test]
            #[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
            fn root_leaves_a_root_without_arbor_alone() {
                require_root!();
                leaves_a_root_without_arbor_alone(&$runner);
            }

            #[test]
            #[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
            fn root_stops_the_boot_when_it_cannot_tell_or_cannot_assemble() {
                require_root!();
                stops_the_boot_when_it_cannot_tell_or_cannot_assemble(&$runner);
            }
        }
    };
}

cases_of!(local_bottom_script, local_bottom());
cases_of!(dracut_hook, dracut_pre_pivot());

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_the_dracut_initramfs_has_arbors_module_and_no_full_arbor() {
    require_root!();
    let r = dracut_initramfs();
    assert!(r.join("usr/lib/arbor/arbor-prepare-root").is_file());
    assert!(!r.join("usr/bin/arbor").exists());
    let out = Command::new("find")
        .arg(r)
        .args([
            "(",
            "-name",
            "overlay.ko*",
            "-o",
            "-name",
            "*arbor-prepare-root.sh",
            ")",
        ])
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(found.contains("overlay.ko"), "{found}");
    assert!(
        found.contains("pre-pivot/"),
        "the hook runs at pre-pivot:\n{found}"
    );
}
