//! The VM boot loop on trixie images (the harness is integration/common/vm.rs): the
//! major upgrade from bookworm and back, and a machine installed from trixie that
//! boots through a dracut-built initramfs.
//!
//! Run by `.ci/run` (ARBOR_VM=1 makes scripts/test.sh run the ignored tests here). On
//! a failure the serial logs are kept and their folder printed.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use common::vm::*;

/// What the major-upgrade scenario's steps print about the machine, one marker a line
/// (each printed only when true: the step's trace shows a command, so a marker must
/// not appear whole in one).
const RELEASE: &str = r#". /etc/os-release; echo "RELEASE=$VERSION_ID KERNEL=$(uname -r)"
getent passwd alice >/dev/null && echo ALICE-EXISTS
perl -e '$h=(getpwnam("alice"))[1]; print "ALICE-", "LOGIN-", (crypt("secret",$h) eq $h ? "OK" : "BAD"), "\n"'
test -L /etc/nginx/sites-enabled/arbor-test && grep -q 8080 /etc/nginx/sites-available/arbor-test && echo NGINX-SITE
readlink /etc/localtime; cat /etc/timezone
head -1 /etc/issue
ls /etc/issue.arbor-dist 2>/dev/null && echo ISSUE-DIST
stat -c 'shadow %a %U:%G' /etc/shadow
echo "debian_version $(cat /etc/debian_version)"
"#;

/// The major upgrade in a VM: a machine installed from the bookworm image, with an
/// administrator's changes (a user with a password and a home, an nginx site, the
/// timezone, a login banner the new release changes too), follows `origin:stable`;
/// the publisher publishes the trixie image (corpus t) as its next version. The dry
/// run names the conflict, the upgrade stages trixie, and the machine boots Debian
/// 13 (kernel 6.12, systemd 257, its initramfs built with arbor's hook by trixie's
/// initramfs-tools) with every change kept, the banner's new default saved beside
/// it, trixie's defaults where nobody edited, the user able to log in, and the health
/// check passed. `arbor rollback` then boots bookworm with its `/etc` as it was.
#[test]
#[ignore = "the VM boot loop: minutes of qemu; scripts/test.sh runs it with ARBOR_VM=1 (.ci/run)"]
fn root_vm_major_upgrade_bookworm_to_trixie_and_back() {
    require_root!();
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::with(&["base", "trixie"], &[("1", "base")]);
    // A full fetch: the delta from bookworm is tested on its own (integration/delta.rs,
    // benches/major.sh); compressing the modules again under TCG would take long.
    lab.publish_with("2", "trixie", &["--deltas-from", "0"]);
    let mut vm = Vm::new(&lab, "major", lab.disk("systemd-boot"));
    let b = vm.boot(
        &format!(
            r#"{STATUS}
useradd -m -s /bin/bash alice && echo alice:secret | chpasswd && echo notes > /home/alice/notes
printf 'server {{ listen 8080; root /var/www/html; }}\n' > /etc/nginx/sites-available/arbor-test
ln -s ../sites-available/arbor-test /etc/nginx/sites-enabled/arbor-test
ln -sf /usr/share/zoneinfo/Europe/Berlin /etc/localtime && echo Europe/Berlin > /etc/timezone
echo "ACME web server, authorized use only" > /etc/issue
{RELEASE}
arbor upgrade --dry-run
arbor upgrade --download-only
arbor upgrade --dry-run
arbor upgrade
echo STEP-END
systemctl reboot
"#
        ),
        LIMIT,
    );
    let out = ran(&b, "major boot 1 (bookworm)");
    assert_eq!(booted_version(&out), "1", "{out}");
    assert!(out.contains("RELEASE=12 KERNEL=6.1."), "{out}");
    for want in [
        "ALICE-EXISTS",
        "ALICE-LOGIN-OK",
        "NGINX-SITE",
        "Europe/Berlin",
    ] {
        assert!(out.contains(want), "bookworm, before: no {want}:\n{out}");
    }
    assert!(
        out.contains("not known until the update is downloaded"),
        "{out}"
    );
    assert!(
        out.contains("/etc conflict: /etc/issue "),
        "the dry run names the conflict:\n{out}"
    );
    assert!(out.contains("staged"), "{out}");

    let b = vm.boot(
        &format!(
            r#"{STATUS}
{RELEASE}
arbor update-status
systemctl is-active arbor-health-check.service
systemctl show -p ActiveState,ConditionResult systemd-bless-boot.service
systemctl is-system-running
{VERDICT}ls /boot/efi/loader/entries
initrd=$(arbor status --json | python3 -c 'import json,sys; print([d["initrd"] for d in json.load(sys.stdin)["deployments"] if d["booted"]][0])')
lsinitramfs "/boot/efi$initrd" | grep -E 'arbor-prepare-root|scripts/local-bottom/arbor|scripts/.*arbor' | sed 's/^/INITRD: /'
arbor etc diff | head -20
echo STEP-END
arbor rollback
systemctl reboot
"#
        ),
        LIMIT,
    );
    let out = ran(&b, "major boot 2 (trixie)");
    // The deployment's version is the image's own label; the channel calls it 2.
    assert_eq!(booted_version(&out), "13", "{out}");
    assert!(
        out.contains("INITRD: ") && out.contains("arbor-prepare-root"),
        "trixie's initramfs-tools built the initramfs with arbor's hook:\n{out}"
    );
    assert!(
        out.contains("ConditionResult=no"),
        "systemd 257's systemd-bless-boot stands aside for arbor's health check:\n{out}"
    );
    // A counted entry (the upgrade's) that the check blessed: boot-complete.target
    // after the checks, and bless-boot reads the entry as good.
    for want in [
        "CHECK-Result=success",
        "COMPLETE-ActiveState=active",
        "BLESS-BOOT good",
    ] {
        assert!(out.contains(want), "trixie: no {want}:\n{out}");
    }
    let (checked, complete) = verdict_times(&out);
    assert!(
        checked > 0 && complete >= checked,
        "boot-complete.target after the checks:\n{out}"
    );
    assert!(out.contains("RELEASE=13 KERNEL=6.12."), "{out}");
    for want in [
        "ALICE-EXISTS",
        "ALICE-LOGIN-OK",
        "NGINX-SITE",
        "Europe/Berlin",
        "ACME web server",
        "ISSUE-DIST",
        "shadow 640 root:shadow",
        "debian_version 13.",
        "state:     active",
    ] {
        assert!(out.contains(want), "trixie: no {want}:\n{out}");
    }
    assert!(!out.contains("ALICE-LOGIN-BAD"), "{out}");
    assert!(
        !out.contains("+3.conf") && !out.contains("+2-1.conf"),
        "the trixie entry is blessed:\n{out}"
    );

    let b = vm.boot(
        &format!("{STATUS}\n{RELEASE}\narbor fsck && echo FSCK-CLEAN\necho STEP-END\nsystemctl poweroff\n"),
        LIMIT,
    );
    let out = ran(&b, "major boot 3 (rolled back to bookworm)");
    assert_eq!(booted_version(&out), "1", "{out}");
    assert!(out.contains("RELEASE=12 KERNEL=6.1."), "{out}");
    for want in [
        "ALICE-EXISTS",
        "ALICE-LOGIN-OK",
        "NGINX-SITE",
        "Europe/Berlin",
        "ACME web server",
        "debian_version 12.",
        "FSCK-CLEAN",
    ] {
        assert!(
            out.contains(want),
            "bookworm, rolled back: no {want}:\n{out}"
        );
    }
    assert!(
        !out.contains("ISSUE-DIST"),
        "bookworm's /etc as it was, without trixie's merge:\n{out}"
    );
}

/// What a step prints about systemd's view of the boot's verdict: the check unit's
/// state, boot-complete.target's, the monotonic times at which the checks ended and
/// the target was reached, and systemd-bless-boot's own reading of the entry.
const VERDICT: &str = r#"systemctl show -p ActiveState,Result arbor-health-check.service | sed 's/^/CHECK-/'
systemctl show -p ActiveState boot-complete.target | sed 's/^/COMPLETE-/'
echo "TIMES $(systemctl show -P ExecMainExitTimestampMonotonic arbor-health-check.service) $(systemctl show -P ActiveEnterTimestampMonotonic boot-complete.target)"
echo "BLESS-BOOT $(/usr/lib/systemd/systemd-bless-boot status 2>&1)"
ls /boot/efi/loader/entries | sed 's/^/ENTRY: /'
"#;

/// The (check ended, boot-complete.target reached) monotonic times a [`VERDICT`]
/// printed.
fn verdict_times(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("TIMES "))
        .expect("TIMES line");
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (n[0], n.get(1).copied().unwrap_or(0))
}

/// A machine installed straight from a trixie image whose initramfs Debian's dracut
/// built (with arbor's module, in place of initramfs-tools), with trixie's own
/// systemd-boot and systemd-bless-boot. Boot 1 (the installed entry, which counts
/// nothing): dracut's hook assembled the deployment; the health check passed and only
/// then was boot-complete.target reached; bless-boot calls the entry good; arbord
/// answers on the bus; the upgrade (through a delta) stages the next version and
/// apply-live runs its new program at once. Boot 2: the next version fails its
/// required check: trixie's systemd-boot counted the try, the check unit failed,
/// boot-complete.target was not reached, and bless-boot calls the boot
/// indeterminate. (A counted entry blessed, and bless-boot calling it good, is the
/// major upgrade's trixie boot; the countdown to the fallback is the bookworm
/// scenario's.)
#[test]
#[ignore = "the VM boot loop: minutes of qemu; scripts/test.sh runs it with ARBOR_VM=1 (.ci/run)"]
fn root_vm_trixie_with_dracut_systemd_boot_and_systemd_257() {
    require_root!();
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::with(
        &["trixie-dracut", "trixie-broken"],
        &[("1", "trixie-dracut")],
    );
    lab.publish("2", "trixie-broken");
    let mut vm = Vm::new(&lab, "trixie", lab.disk_of("systemd-boot", "trixie-dracut"));
    let mut assemble = Vec::new();

    let b = vm.boot(
        &format!(
            r#"{STATUS}
. /etc/os-release; echo "RELEASE=$VERSION_ID KERNEL=$(uname -r) SYSTEMD=$(systemctl --version | head -1)"
dpkg-query -W -f='${{Package}} ${{Status}}\n' dracut initramfs-tools 2>&1 | sed 's/^/PKG: /'
{VERDICT}
systemctl is-system-running
busctl get-property org.arbor.Arbor1 /org/arbor/Arbor1 org.arbor.Arbor1.Sysroot BootedDeployment | head -c 400; echo
cat /run/arbor-demo/version
arbor upgrade
arbor apply-live --restart-services
sleep 2
cat /run/arbor-demo/version
hello
echo STEP-END
systemctl reboot
"#
        ),
        LIMIT,
    );
    let out = ran(&b, "trixie boot 1 (dracut)");
    assemble.extend(assemble_ms(&b.serial));
    assert_eq!(booted_version(&out), "13.1", "{out}");
    for want in [
        "RELEASE=13 KERNEL=6.12.",
        "SYSTEMD=systemd 257",
        "PKG: dracut install ok installed",
        "CHECK-ActiveState=active",
        "CHECK-Result=success",
        "COMPLETE-ActiveState=active",
        "BLESS-BOOT good",
        " by delta",
        "demo-server 1 greeting=hello from base",
        "demo-server 2 greeting=hello from update",
        "Hello, world!",
    ] {
        assert!(out.contains(want), "trixie boot 1: no {want}:\n{out}");
    }
    assert!(
        !out.contains("PKG: initramfs-tools install ok installed"),
        "dracut took initramfs-tools' place:\n{out}"
    );
    assert!(
        b.serial.contains("dracut-pre-pivot.service")
            && b.serial.contains("arbor: the deployment's root took"),
        "dracut's hook assembled the root (serial log):\n{}",
        tail(&b.serial)
    );
    let (checked, complete) = verdict_times(&out);
    assert!(
        checked > 0 && complete >= checked,
        "boot-complete.target was reached after the checks ended ({checked} <= {complete}):\n{out}"
    );
    assert!(
        out.contains("commit"),
        "BootedDeployment over the bus:\n{out}"
    );

    let b = vm.boot(
        &format!(
            r#"{STATUS}
{VERDICT}
arbor update-status
journalctl -b -u arbor-health-check --no-pager | grep -E 'FAIL|unhealthy'
hello
arbor fsck && echo FSCK-CLEAN
echo STEP-END
systemctl poweroff
"#
        ),
        LIMIT,
    );
    let out = ran(&b, "trixie boot 2 (a failing check)");
    assemble.extend(assemble_ms(&b.serial));
    assert_eq!(booted_version(&out), "13.2", "{out}");
    for want in [
        "+2-1.conf",
        "CHECK-ActiveState=failed",
        "CHECK-Result=exit-code",
        "COMPLETE-ActiveState=inactive",
        "BLESS-BOOT indeterminate",
        "FAIL 10-required",
        "state:     rolling-back",
        "Hello, world!",
        "FSCK-CLEAN",
    ] {
        assert!(out.contains(want), "trixie boot 2: no {want}:\n{out}");
    }
    assert_eq!(assemble.len(), 2, "each boot went through dracut's hook");
    println!("dracut's hook assembled the root in {assemble:?} ms");
}
