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
use std::time::Duration;

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

/// The booted version and the switch a step sees, one marker a line.
const WHERE: &str = r#"echo "CMDLINE $(cat /proc/cmdline)"
arbor history | head -24 | sed 's/^/HISTORY: /'
"#;

/// A step's shell helper: waits until nginx serves version $1 (the live step's
/// probe: the image's probe service only runs at a boot), and says so on the console.
const SERVING: &str = r#"serving() {
  for _ in $(seq 1200); do
    if [ "$(curl -sf --max-time 1 http://127.0.0.1/arbor-version)" = "$1" ]; then
      echo "ARBOR-SERVING $1" > /dev/console; return 0
    fi
    sleep 0.05
  done
  return 1
}
"#;

/// A machine installed straight from a trixie image whose initramfs Debian's dracut
/// built, with trixie's own systemd-boot and systemd-bless-boot, taken up the
/// activation ladder (docs/activation.md) one version at a time, each staged first and
/// then applied with `--apply`, and timed on the host's clock from the decision (a
/// console line before the apply) to nginx serving the new version (the image's probe
/// says so on the console):
///
/// - boot 1, 13.1 through the firmware and dracut's hook: the check passed and only
///   then was boot-complete.target reached; bless-boot calls the entry good; arbord
///   answers on the bus. 13.2 (leaf changes) goes **live**: the new demo program and
///   `hello` at once. 13.3 (a core package rebuilt) **soft-reboots**;
/// - 13.3 runs on the same kernel (whose command line still names 13.1), its check
///   passed; 13.4 (another initramfs) goes by **kexec**;
/// - 13.4 runs with its own command line; 13.5 (a core package again, and a required
///   check that fails) soft-reboots, fails its check, and arbor falls back to 13.4 at
///   once by soft-reboot;
/// - 13.4 again, the fall back in the history; 13.6 is applied with `--apply reboot`;
/// - 13.6, through the firmware: it fails its check, trixie's systemd-boot counted
///   the try, boot-complete.target is not reached and bless-boot says indeterminate.
#[test]
#[ignore = "the VM boot loop: minutes of qemu; scripts/test.sh runs it with ARBOR_VM=1 (.ci/run)"]
fn root_vm_trixie_dracut_up_the_activation_ladder() {
    require_root!();
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let images = [
        "trixie-dracut",
        "trixie-live",
        "trixie-soft",
        "trixie-kexec",
        "trixie-bad",
        "trixie-broken",
    ];
    let lab = Lab::with(&images, &[("1", "trixie-dracut")]);
    lab.publish("2", "trixie-live");
    // Fetched object by object: deltas of a changed initramfs take long under TCG's
    // neighbour load, and deltas are not what this scenario is about.
    for (v, image) in [
        ("3", "trixie-soft"),
        ("4", "trixie-kexec"),
        ("5", "trixie-bad"),
    ] {
        lab.publish_with(v, image, &["--deltas-from", "0"]);
    }
    lab.publish_with("6", "trixie-broken", &["--deltas-from", "0"]);
    let mut vm = Vm::new(&lab, "ladder", lab.disk_of("systemd-boot", "trixie-dracut"));
    let begun = std::time::Instant::now();

    let step = format!(
        r#"{SERVING}
v=$(arbor status --json | python3 -c 'import json,sys; print([d.get("version") for d in json.load(sys.stdin)["deployments"] if d["booted"]][0])')
case $v in
13.1)
{STATUS}{WHERE}
. /etc/os-release; echo "RELEASE=$VERSION_ID KERNEL=$(uname -r) SYSTEMD=$(systemctl --version | head -1)"
dpkg-query -W -f='${{Package}} ${{Status}}\n' dracut initramfs-tools 2>&1 | sed 's/^/PKG: /'
{VERDICT}
systemctl is-system-running
busctl get-property org.arbor.Arbor1 /org/arbor/Arbor1 org.arbor.Arbor1.Sysroot BootedDeployment | head -c 400; echo
cat /run/arbor-demo/version
mkdir -p /var/www/html && ln -sf /usr/share/arbor-test/version /var/www/html/arbor-version
arbor deploy --version 2
echo "ARBOR-DECIDE live" > /dev/console
arbor deploy --version 2 --apply auto
serving 13.2
sleep 1
cat /run/arbor-demo/version
hello
systemctl show -p LoadState,NeedDaemonReload arbor-test-probe.service | sed 's/^/PROBE-UNIT-/' 
arbor deploy --version 3
echo STEP-END
echo "ARBOR-DECIDE soft-reboot" > /dev/console
ARBOR_LOG=debug arbor deploy --version 3 --apply auto 2>&1 | while IFS= read -r l; do echo "$l" > /dev/console; echo "$l"; done
sleep 600 ;;
13.3)
{STATUS}{WHERE}
{VERDICT}
dpkg-query -W -f='PKG: ${{Package}} ${{Version}}\n' libcap2
arbor deploy --version 4
echo STEP-END
echo "ARBOR-DECIDE kexec" > /dev/console
arbor deploy --version 4 --apply auto
sleep 600 ;;
13.4)
{STATUS}{WHERE}
{VERDICT}
arbor update-status
if [ -e /run/arbor-test/fell-back ]; then
  arbor deploy --version 6
  echo STEP-END
  echo "ARBOR-DECIDE reboot" > /dev/console
  arbor deploy --version 6 --apply reboot
else
  touch /run/arbor-test/fell-back
  arbor deploy --version 5
  echo STEP-END
  echo "ARBOR-DECIDE bad" > /dev/console
  arbor deploy --version 5 --apply auto
fi
sleep 600 ;;
13.5)
{STATUS}{WHERE}
sleep 600 ;;
13.6)
{STATUS}{WHERE}
{VERDICT}
arbor update-status
journalctl -b -u arbor-health-check --no-pager | grep -E 'FAIL|unhealthy'
hello
arbor fsck && echo FSCK-CLEAN
echo STEP-END
systemctl poweroff ;;
esac
"#
    );
    let b = vm.boot(&step, Duration::from_secs(1500));
    assert!(b.out.is_none(), "the first run ends with a reboot");
    // The agent's runs, by the version each saw booted (13.5 may have none: its check
    // failed and the fall back began before the agent's turn).
    let runs: Vec<(String, String)> = (1..=vm.boots())
        .map(|n| vm.out_of(n))
        .filter(|o| o.contains("\"deployments\""))
        .map(|o| (booted_version(&o), o))
        .collect();
    let find = |version: &str, nth: usize, what: &str, want: &[&str]| -> String {
        let out = runs
            .iter()
            .filter(|(v, _)| v == version)
            .nth(nth)
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| {
                panic!(
                    "{what}: no run of the step on {version}; serial:\n{}",
                    tail(&b.serial)
                )
            });
        for w in want {
            assert!(out.contains(w), "{what}: no {w}:\n{out}");
        }
        out
    };
    let out = find(
        "13.1",
        0,
        "13.1",
        &[
            "RELEASE=13 KERNEL=6.12.",
            "SYSTEMD=systemd 257",
            "PKG: dracut install ok installed",
            "CHECK-Result=success",
            "COMPLETE-ActiveState=active",
            "BLESS-BOOT good",
            "demo-server 1 greeting=hello from base",
            "mildest way to apply it: live",
            "applied live; restarted arbor-demo.service",
            "demo-server 2 greeting=hello from update",
            "Hello, world!",
            // Added live without a daemon-reload, and loaded when named.
            "PROBE-UNIT-LoadState=loaded",
            "PROBE-UNIT-NeedDaemonReload=no",
            "mildest way to apply it: soft-reboot",
            "not live: core packages change: libcap2",
            "applying by soft-reboot: 13.3",
            "STEP-END",
        ],
    );
    assert!(
        !out.contains("PKG: initramfs-tools install ok installed"),
        "{out}"
    );
    assert!(
        b.serial.contains("dracut-pre-pivot.service")
            && b.serial.contains("arbor: the deployment's root took"),
        "dracut's hook assembled the root:\n{}",
        tail(&b.serial)
    );
    let (checked, complete) = verdict_times(&out);
    assert!(checked > 0 && complete >= checked, "{out}");
    assert!(
        out.contains("commit"),
        "BootedDeployment over the bus:\n{out}"
    );
    let cmdline_of = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("CMDLINE "))
            .unwrap_or_default()
            .to_string()
    };
    let first_cmdline = cmdline_of(&out);

    let out = find(
        "13.3",
        0,
        "13.3 after the soft-reboot",
        &[
            "CHECK-Result=success",
            "COMPLETE-ActiveState=active",
            "PKG: libcap2 ",
            "+arbor1",
            "soft-reboot into 13.3",
            "mildest way to apply it: kexec",
            "applying by kexec: 13.4",
            "STEP-END",
        ],
    );
    assert_eq!(
        cmdline_of(&out),
        first_cmdline,
        "a soft-reboot keeps the kernel and its command line"
    );

    let out = find(
        "13.4",
        0,
        "13.4 after the kexec",
        &[
            "CHECK-Result=success",
            "COMPLETE-ActiveState=active",
            "kexec into 13.4",
            "applying by soft-reboot: 13.5",
            "STEP-END",
        ],
    );
    let cmdline = cmdline_of(&out);
    assert!(
        cmdline != first_cmdline
            && cmdline.contains("arbor=/arbor/deploy/")
            && cmdline.contains("arbor.test"),
        "the kexec'd kernel has 13.4's own command line: {cmdline}\n{out}"
    );
    let out = find(
        "13.4",
        1,
        "13.4 after the fall back",
        &[
            "CHECK-Result=success",
            "automatic rollback: 13.5 failed its health check after a soft-reboot",
            "falling back",
            "state:     failed",
            "applying by reboot: 13.6",
            "STEP-END",
        ],
    );
    // The failed entry keeps no tries: nothing boots it by mistake.
    let line = out
        .lines()
        .find(|l| l.starts_with('{') && l.contains("\"deployments\""))
        .unwrap();
    let st: serde_json::Value = serde_json::Deserializer::from_str(line)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let bad = st["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["version"] == "13.5")
        .expect("13.5 is still deployed");
    assert_eq!(bad["tries"]["left"], 0, "{bad}");

    let b = vm.boot(&step, LIMIT);
    let out = ran(&b, "13.6 after the reboot");
    assert_eq!(booted_version(&out), "13.6", "{out}");
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
        assert!(out.contains(want), "13.6: no {want}:\n{out}");
    }

    // The timings, decision to serving, on the host's clock.
    let took = |decide: &str, version: &str| -> Duration {
        let d = vm
            .mark_after(&format!("ARBOR-DECIDE {decide}"), begun)
            .unwrap_or_else(|| panic!("no decision {decide} on the console: {:?}", vm.marks));
        let s = vm
            .mark_after(&format!("ARBOR-SERVING {version}"), d)
            .unwrap_or_else(|| panic!("{version} never served after {decide}: {:?}", vm.marks));
        s - d
    };
    let live = took("live", "13.2");
    let soft = took("soft-reboot", "13.3");
    let kexec = took("kexec", "13.4");
    let bad = took("bad", "13.5");
    let reboot = took("reboot", "13.6");
    let back = {
        let d = vm.mark_after("ARBOR-SERVING 13.5", begun).unwrap();
        vm.mark_after("ARBOR-SERVING 13.4", d)
            .expect("13.4 served again after the fall back")
            - d
    };
    println!(
        "activation, decision to nginx serving the new version (qemu TCG, 2 vCPUs): \
         live {:.1} s, soft-reboot {:.1} s, kexec {:.1} s, reboot {:.1} s \
         (kexec/reboot {:.2}); a failing soft-reboot: {:.1} s to serve, then {:.1} s \
         back to the previous version",
        live.as_secs_f64(),
        soft.as_secs_f64(),
        kexec.as_secs_f64(),
        reboot.as_secs_f64(),
        kexec.as_secs_f64() / reboot.as_secs_f64(),
        bad.as_secs_f64(),
        back.as_secs_f64()
    );
    // Under TCG a kexec and a firmware reboot take about as long (the emulated kernel
    // and userspace start are most of both; they came out 0.95×, 1.01× and 0.99× in
    // three runs; docs/activation.md says why), so only the milder steps' order is asserted; the figures are printed.
    assert!(live < soft && soft < reboot, "the ladder's order");
}
