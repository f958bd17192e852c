//! The VM boot loop on bookworm images: arbor on a booted machine (the harness is
//! integration/common/vm.rs; trixie's scenarios are in integration/vm_trixie.rs).
//!
//! Run by `.ci/run` (ARBOR_VM=1 makes scripts/test.sh run the ignored tests here). On
//! a failure the serial logs are kept and their folder printed.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use common::vm::*;

#[test]
#[ignore = "the VM boot loop: minutes of qemu; scripts/test.sh runs it with ARBOR_VM=1 (.ci/run)"]
fn root_vm_update_reboot_rollback_and_power_cut_with_systemd_boot() {
    require_root!();
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new();
    let mut vm = Vm::new(&lab, "systemd-boot", lab.disk("systemd-boot"));
    let mut assemble = Vec::new();

    // 1. base boots; the check passes and the boot is marked good; arbord answers on
    //    the system bus (activated), and refuses a non-root Deploy. Then 2. and 3.
    //    begin: upgrade (TUF, through a delta) stages update; apply-live runs the new
    //    service program now; /etc is edited after staging; reboot.
    let b = vm.boot(
        &format!(
            r#"{STATUS}
journalctl -b -u arbor-health-check --no-pager | tail -5
systemctl is-active arbor-health-check.service || true
ls /boot/efi/loader/entries
busctl get-property org.arbor.Arbor1 /org/arbor/Arbor1 org.arbor.Arbor1.Sysroot BootedDeployment | head -c 400; echo
systemctl is-active arbord.service
setpriv --reuid=nobody --regid=nogroup --clear-groups busctl call org.arbor.Arbor1 /org/arbor/Arbor1 org.arbor.Arbor1.Sysroot Deploy 'sa{{sv}}' origin:stable 0 || echo "NONROOT-DEPLOY-REFUSED"
arbor upgrade
arbor update-status
cat /run/arbor-demo/version
arbor apply-live --restart-services
sleep 2
cat /run/arbor-demo/version
echo "edited after staging" >> /etc/issue.net
echo STEP-END
systemctl reboot
"#
        ),
        LIMIT,
    );
    let out = ran(&b, "boot 1 (base)");
    assemble.extend(assemble_ms(&b.serial));
    assert_eq!(booted_version(&out), "1", "{out}");
    assert!(out.contains("healthy: the boot is marked good"), "{out}");
    assert!(
        !out.contains("+3.conf"),
        "the entry keeps its counter:\n{out}"
    );
    assert!(
        out.contains("commit"),
        "BootedDeployment over the bus:\n{out}"
    );
    assert!(out.contains("\nactive\n"), "arbord was activated:\n{out}");
    assert!(
        out.contains("AccessDenied") || out.contains("Access denied"),
        "nobody's Deploy:\n{out}"
    );
    assert!(out.contains("NONROOT-DEPLOY-REFUSED"), "{out}");
    assert!(
        out.contains(" by delta"),
        "the upgrade went through a delta:\n{out}"
    );
    assert!(out.contains("state:     staged"), "{out}");
    assert!(
        out.contains("demo-server 1 greeting=hello from base"),
        "{out}"
    );
    assert!(
        out.contains("demo-server 2 greeting=hello from update"),
        "apply-live --restart-services runs the new program now:\n{out}"
    );

    // 2. The guest runs update; the edit made after staging survived the shutdown
    //    merge; the rollback deployment is listed; update-status says active.
    lab.publish("3", "broken");
    let b = vm.boot(
        &format!(
            r#"{STATUS}
cat /etc/issue.net
arbor update-status
cat /run/arbor-demo/version
hello
arbor upgrade
echo STEP-END
systemctl reboot
"#
        ),
        LIMIT,
    );
    let out = ran(&b, "boot 2 (update)");
    assemble.extend(assemble_ms(&b.serial));
    assert_eq!(booted_version(&out), "2", "{out}");
    assert!(out.contains("edited after staging"), "{out}");
    assert!(out.contains("rollback"), "{out}");
    assert!(out.contains("state:     active"), "{out}");
    assert!(
        out.contains("demo-server 2 greeting=hello from update"),
        "{out}"
    );
    assert!(
        out.contains("Hello, world!"),
        "hello came with update:\n{out}"
    );

    // 4. broken fails its required check at every boot until its tries run out; then
    //    the loader boots update again, with no human action.
    let mut versions = Vec::new();
    for i in 0..5 {
        let b = vm.boot(
            &format!(
                "{STATUS}\narbor update-status\n\
                 journalctl -b -u arbor-health-check --no-pager | grep -E 'FAIL|unhealthy'\n\
                 echo STEP-END\nsystemctl reboot\n"
            ),
            LIMIT,
        );
        let out = ran(&b, &format!("broken boot {i}"));
        assemble.extend(assemble_ms(&b.serial));
        let v = booted_version(&out);
        versions.push(v.clone());
        if v == "2" {
            break;
        }
        assert_eq!(v, "3", "{out}");
        assert!(out.contains("FAIL 10-required"), "{out}");
        assert!(out.contains("state:     rolling-back"), "{out}");
    }
    assert_eq!(
        versions,
        ["3", "3", "3", "2"],
        "three tries, then the fallback"
    );
    let b = vm.boot(
        &format!(
            r#"{STATUS}
arbor update-status
arbor history | head -8
arbor fsck
{cut}
echo "cutting the power while a deploy is staging"
booted=$(arbor status --json | python3 -c 'import json,sys; print([d["commit"] for d in json.load(sys.stdin)["deployments"] if d["booted"]][0])')
arbor deploy --stage "$booted" || true
echo STEP-END
"#,
            cut = power_cut_when_created("/sysroot/arbor/deploy/debian/deploy")
        ),
        LIMIT,
    );
    // The power cut came before the step could finish.
    let out = b.out.clone();
    assert!(out.is_none(), "the power cut did not happen:\n{out:?}");
    let log = std::fs::read_to_string(lab.share().join(format!("out-{}.log", vm.boots())))
        .unwrap_or_default();
    assert_eq!(booted_version(&log), "2", "{log}");
    assert!(log.contains("state:     failed"), "{log}");
    assert!(log.contains("10-required"), "which check failed:\n{log}");
    assert!(log.contains("automatic-rollback"), "{log}");
    assert!(log.contains("cutting the power"), "{log}");

    // 5. After the cut while staging, and again while the boot entries switch: the
    //    next boot is the old or the new deployment, and fsck is clean.
    let b = vm.boot(
        &format!(
            r#"{STATUS}
arbor fsck && echo FSCK-CLEAN
ls /boot/efi/loader/entries
{cut}
echo "cutting the power while the boot entries switch"
base=$(arbor status --json | python3 -c 'import json,sys; print([d["commit"] for d in json.load(sys.stdin)["deployments"] if d["version"]=="1"][0])')
arbor deploy "$base" || true
echo STEP-END
"#,
            cut = power_cut_when_created("/boot/efi/loader/entries")
        ),
        LIMIT,
    );
    assert!(b.out.is_none(), "the second power cut did not happen");
    let log = std::fs::read_to_string(lab.share().join(format!("out-{}.log", vm.boots())))
        .unwrap_or_default();
    assert_eq!(
        booted_version(&log),
        "2",
        "after the cut while staging:\n{log}"
    );
    assert!(log.contains("FSCK-CLEAN"), "{log}");
    let b = vm.boot(
        &format!(
            "{STATUS}\narbor fsck && echo FSCK-CLEAN\narbor cleanup\nls /boot/efi/loader/entries\necho STEP-END\nsystemctl poweroff\n"
        ),
        LIMIT,
    );
    let out = ran(&b, "after the cut while switching entries");
    let v = booted_version(&out);
    assert!(v == "2" || v == "1", "neither old nor new: {v}\n{out}");
    assert!(out.contains("FSCK-CLEAN"), "{out}");
    assemble.extend(assemble_ms(&b.serial));
    assemble.sort();
    println!(
        "prepare-root and the initramfs script took {:?} ms over {} boots (median {} ms)",
        assemble,
        assemble.len(),
        assemble[assemble.len() / 2]
    );
}

#[test]
#[ignore = "the VM boot loop: minutes of qemu; scripts/test.sh runs it with ARBOR_VM=1 (.ci/run)"]
fn root_vm_update_and_reboot_with_grub() {
    require_root!();
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new();
    let mut vm = Vm::new(&lab, "grub", lab.disk("grub"));
    let b = vm.boot(
        &format!(
            "{STATUS}\ncat /boot/efi/EFI/BOOT/BOOTX64.EFI >/dev/null && echo ESP-MOUNTED\n\
             arbor upgrade\necho \"edited after staging\" >> /etc/issue.net\necho STEP-END\nsystemctl reboot\n"
        ),
        LIMIT,
    );
    let out = ran(&b, "grub boot 1 (base)");
    assert_eq!(booted_version(&out), "1", "{out}");
    assert!(
        out.contains("ESP-MOUNTED") && out.contains(" by delta"),
        "{out}"
    );
    assert!(
        b.serial.contains("GNU GRUB") || b.serial.contains("GRUB"),
        "booted by GRUB"
    );
    lab.publish("3", "broken");
    let b = vm.boot(
        &format!(
            "{STATUS}\ncat /etc/issue.net\narbor update-status\ngrep -v '^#' /sysroot/boot/grub/grubenv\n\
             arbor upgrade\necho STEP-END\nsystemctl reboot\n"
        ),
        LIMIT,
    );
    let out = ran(&b, "grub boot 2 (update)");
    assert_eq!(booted_version(&out), "2", "{out}");
    assert!(
        out.contains("edited after staging") && out.contains("rollback"),
        "{out}"
    );
    assert!(out.contains("state:     active"), "{out}");
    assert!(
        out.contains("boot_success=1"),
        "the health check told GRUB:\n{out}"
    );

    // broken fails its check at each boot; GRUB counts down in its environment block
    // and then boots update again, with no human action.
    let mut versions = Vec::new();
    for i in 0..5 {
        let b = vm.boot(
            &format!(
                "{STATUS}\narbor update-status\ngrep -v '^#' /sysroot/boot/grub/grubenv\n\
                 echo STEP-END\nsystemctl reboot\n"
            ),
            LIMIT,
        );
        let out = ran(&b, &format!("grub broken boot {i}"));
        let v = booted_version(&out);
        versions.push(v.clone());
        if v == "2" {
            assert!(out.contains("state:     failed"), "{out}");
            break;
        }
        assert_eq!(v, "3", "{out}");
    }
    assert_eq!(
        versions,
        ["3", "3", "3", "2"],
        "three tries, then GRUB's fallback"
    );

    // A power cut while the environment block and grub.cfg switch: GRUB boots the
    // old default or the new one, and the switch completes at the next transaction.
    let b = vm.boot(
        &format!(
            r#"{STATUS}
arbor history | head -5
{cut}
echo "cutting the power while GRUB's configuration switches"
base=$(arbor status --json | python3 -c 'import json,sys; print([d["commit"] for d in json.load(sys.stdin)["deployments"] if d["version"]=="1"][0])')
arbor deploy "$base" || true
echo STEP-END
"#,
            cut = power_cut_after_events("/sysroot/boot/grub", 2)
        ),
        LIMIT,
    );
    assert!(b.out.is_none(), "the power cut did not happen");
    let log = std::fs::read_to_string(lab.share().join(format!("out-{}.log", vm.boots())))
        .unwrap_or_default();
    assert!(log.contains("automatic-rollback"), "{log}");
    let b = vm.boot(
        &format!(
            "{STATUS}\narbor fsck && echo FSCK-CLEAN\narbor cleanup\ngrep arbor_default /sysroot/boot/grub/grub.cfg\n\
             echo STEP-END\nsystemctl reboot\n"
        ),
        LIMIT,
    );
    let out = ran(&b, "grub after the cut");
    let v = booted_version(&out);
    assert!(v == "2" || v == "1", "neither old nor new: {v}\n{out}");
    assert!(out.contains("FSCK-CLEAN"), "{out}");
    let b = vm.boot(
        &format!("{STATUS}\necho STEP-END\nsystemctl poweroff\n"),
        LIMIT,
    );
    let out = ran(&b, "grub, the switch completed");
    assert_eq!(
        booted_version(&out),
        "1",
        "the deploy of 1 took effect:\n{out}"
    );
}

#[test]
#[ignore = "the VM boot loop: minutes of qemu; scripts/test.sh runs it with ARBOR_VM=1 (.ci/run)"]
fn root_vm_factory_reset_at_each_level_and_rollback() {
    require_root!();
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new();
    let mut vm = Vm::new(&lab, "reset", lab.disk("systemd-boot"));
    // What the machine's state is, in one line each, for the assertions.
    const SHOW: &str = r#"grep -q 'local change' /etc/issue.net && echo ETC-CHANGED || echo ETC-PRISTINE
cat /var/lib/demo/data 2>/dev/null || echo VAR-DATA-ABSENT
cat /home/alice/notes 2>/dev/null || echo HOME-ABSENT
arbor etc diff | head -5
"#;
    let b = vm.boot(
        &format!(
            r#"{STATUS}
echo "local change" >> /etc/issue.net
mkdir -p /var/lib/demo /home/alice && echo VAR-DATA-PRESENT > /var/lib/demo/data
echo HOME-PRESENT > /home/alice/notes
{SHOW}
arbor reset --level etc
echo STEP-END
systemctl reboot
"#
        ),
        LIMIT,
    );
    let out = ran(&b, "reset: the machine's own state");
    assert!(
        out.contains("ETC-CHANGED") && out.contains("M    /etc/issue.net"),
        "{out}"
    );
    assert!(out.contains("reset (etc)"), "{out}");
    let mut expect = |step: &str, want: &[&str], next: &str| {
        let b = vm.boot(
            &format!("{STATUS}\n{SHOW}\n{next}\necho STEP-END\nsystemctl reboot\n"),
            LIMIT,
        );
        let out = ran(&b, step);
        for w in want {
            assert!(out.contains(w), "{step}: no {w}:\n{out}");
        }
        out
    };
    expect(
        "after reset --level etc",
        &["ETC-PRISTINE", "VAR-DATA-PRESENT", "HOME-PRESENT"],
        "arbor rollback",
    );
    expect(
        "rolled back from the etc reset",
        &["ETC-CHANGED", "VAR-DATA-PRESENT", "HOME-PRESENT"],
        "arbor reset --level var",
    );
    expect(
        "after reset --level var",
        &["ETC-PRISTINE", "VAR-DATA-ABSENT", "HOME-ABSENT"],
        "arbor rollback",
    );
    expect(
        "rolled back from the var reset",
        &["ETC-CHANGED", "VAR-DATA-PRESENT", "HOME-PRESENT"],
        "arbor reset --level all",
    );
    expect(
        "after reset --level all",
        &["ETC-PRISTINE", "VAR-DATA-ABSENT", "HOME-PRESENT"],
        "arbor rollback",
    );
    let b = vm.boot(
        &format!(
            "{STATUS}\n{SHOW}\narbor fsck && echo FSCK-CLEAN\necho STEP-END\nsystemctl poweroff\n"
        ),
        LIMIT,
    );
    let out = ran(&b, "rolled back from the all reset");
    for w in [
        "ETC-CHANGED",
        "VAR-DATA-PRESENT",
        "HOME-PRESENT",
        "FSCK-CLEAN",
    ] {
        assert!(out.contains(w), "no {w}:\n{out}");
    }
}
