//! The VM boot loop: arbor on a booted machine. Disks made by `arbor install to-disk`
//! from the Containerfile images boot in qemu with OVMF (TCG, no KVM, no network);
//! updates come from a published folder on a 9p share, read through `file://`. The
//! test agent in the images runs the host's step script at each boot, once the health
//! check has judged it, and writes its output back to the share.
//!
//! Run by `.ci/run` (ARBOR_VM=1 makes scripts/test.sh run the ignored tests here). On
//! a failure the serial logs are kept and their folder printed.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;

/// One VM at a time: two TCG guests on two cores would only slow each other down.
static ONE_VM: Mutex<()> = Mutex::new(());

/// Images built once per run.
fn images_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("containerfiles/build.sh");
        let out = Command::new("bash").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "containerfiles/build.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// PATH with the bootctl that setup.sh keeps when systemd-boot is not installed.
fn path_with_tools() -> String {
    format!(
        "{}:/var/cache/arbor-tools",
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A test's world: a work folder (kept with its serial logs if the test fails), a
/// publishing repository, and the share the guest mounts, holding the published
/// folder `www`.
struct Lab {
    dir: tempfile::TempDir,
    publisher: String,
}

impl Lab {
    /// The bookworm lab: base, update and broken composed; 1 = base and 2 = update
    /// published (with a delta).
    fn new() -> Lab {
        Lab::with(
            &["base", "update", "broken"],
            &[("1", "base"), ("2", "update")],
        )
    }

    /// A lab with IMAGES composed into `os/NAME` and (version, image) published.
    fn with(images: &[&str], published: &[(&str, &str)]) -> Lab {
        images_built();
        let dir = tempfile::Builder::new()
            .prefix("arbor-vm.")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::create_dir_all(dir.path().join("share")).unwrap();
        let publisher = sysroot(dir.path());
        for name in images {
            arbor_ok(&[
                "--sysroot",
                &publisher,
                "compose",
                "image",
                &format!("containers-storage:localhost/arbor-{name}"),
                "-b",
                &format!("os/{name}"),
            ]);
        }
        let lab = Lab { dir, publisher };
        arbor_ok(&[
            "--sysroot",
            &lab.publisher,
            "publish",
            "init",
            s(&lab.www()),
            "--keys",
            s(&lab.dir.path().join("keys")),
        ]);
        for (version, name) in published {
            lab.publish(version, name);
        }
        lab
    }

    fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    fn www(&self) -> PathBuf {
        self.share().join("www")
    }

    /// Publishes image NAME as VERSION of channel stable (with a delta from the last).
    fn publish(&self, version: &str, name: &str) {
        self.publish_with(version, name, &[]);
    }

    /// [`Lab::publish`] with more options for `publish add`.
    fn publish_with(&self, version: &str, name: &str, extra: &[&str]) {
        let (www, keys) = (self.www(), self.dir.path().join("keys"));
        let mut args = vec![
            "--sysroot",
            &self.publisher,
            "publish",
            "add",
            s(&www),
            "--keys",
            s(&keys),
            "--channel",
            "stable",
            "--version",
            version,
            "--ref",
        ];
        let rev = format!("os/{name}");
        args.push(&rev);
        args.extend_from_slice(extra);
        arbor_ok(&args);
    }

    /// A disk of the base image with `loader`, following the published channel.
    fn disk(&self, loader: &str) -> PathBuf {
        self.disk_of(loader, "base")
    }

    /// A disk of image NAME (`localhost/arbor-NAME`) with `loader`.
    fn disk_of(&self, loader: &str, name: &str) -> PathBuf {
        let disk = self.dir.path().join(format!("{loader}-{name}.raw"));
        let out = Command::new(arbor_bin())
            .args(["install", "to-disk"])
            .arg(&disk)
            .args(["--via-loopback", "--size", "6G", "--bootloader", loader])
            .arg("--source")
            .arg(format!("containers-storage:localhost/arbor-{name}"))
            .args(["--karg", "console=ttyS0", "--karg", "arbor.test"])
            .args(["--remote", "origin=file:///run/arbor-test/www"])
            .arg("--trust")
            .arg(self.www().join("metadata/1.root.json"))
            .args(["--follow", "origin:stable"])
            .env("PATH", path_with_tools())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "install to-disk: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        disk
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = self.dir.path().to_path_buf();
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().unwrap(),
            ));
            eprintln!(
                "VM test failed: serial logs and disks kept in {}",
                kept.display()
            );
        }
    }
}

/// What one boot's step printed (None: the guest never finished it, as after a power
/// cut), and the serial log of that boot.
struct Boot {
    out: Option<String>,
    serial: String,
}

/// A VM over one disk; each `boot` starts qemu and returns when the guest powers off,
/// reboots (qemu runs with -no-reboot) or dies.
struct Vm<'l> {
    lab: &'l Lab,
    name: String,
    disk: PathBuf,
    vars: PathBuf,
    runs: u32,
}

impl<'l> Vm<'l> {
    fn new(lab: &'l Lab, name: &str, disk: PathBuf) -> Vm<'l> {
        let vars = lab.dir.path().join(format!("{name}.vars.fd"));
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
        let _ = std::fs::remove_file(lab.share().join("boots"));
        Vm {
            lab,
            name: name.to_string(),
            disk,
            vars,
            runs: 0,
        }
    }

    fn boots(&self) -> u32 {
        std::fs::read_to_string(self.lab.share().join("boots"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Boots once with `step` as the guest's script; waits up to `limit`.
    fn boot(&mut self, step: &str, limit: Duration) -> Boot {
        self.runs += 1;
        let share = self.lab.share();
        std::fs::write(share.join("step.sh"), format!("set -x\n{step}")).unwrap();
        let n = self.boots() + 1;
        let serial = self
            .lab
            .dir
            .path()
            .join(format!("{}-{:02}.serial.log", self.name, self.runs));
        let mut child: Child = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-m", "2048", "-smp", "2"])
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .args(["-monitor", "none", "-display", "none"])
            .arg("-drive")
            .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                s(&self.vars)
            ))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", s(&self.disk)))
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=arbortest,security_model=passthrough,id=share",
                s(&share)
            ))
            .arg("-serial")
            .arg(format!("file:{}", s(&serial)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 (package qemu-system-x86)");
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}: boot {n} did not end within {limit:?}; serial log {}",
                    self.name,
                    serial.display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let out = share.join(format!("done-{n}")).exists().then(|| {
            std::fs::read_to_string(share.join(format!("out-{n}.log"))).unwrap_or_default()
        });
        Boot {
            out,
            serial: String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default())
                .into_owned(),
        }
    }
}

/// The boot's step output, asserting the step ran to its end.
fn ran(b: &Boot, what: &str) -> String {
    let out = b.out.clone().unwrap_or_else(|| {
        panic!(
            "{what}: the guest did not finish its step; serial log tail:\n{}",
            tail(&b.serial)
        )
    });
    assert!(
        out.contains("STEP-END"),
        "{what}: the step stopped early:\n{out}"
    );
    out
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// The version the guest runs, from a step that printed `arbor status --json`.
fn booted_version(out: &str) -> String {
    let json = out
        .lines()
        .find(|l| l.starts_with('{') && l.contains("\"deployments\""))
        .expect("the step prints arbor status --json");
    // The first JSON value on the line (the shell's trace may follow it).
    let v: serde_json::Value = serde_json::Deserializer::from_str(json)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    v["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["booted"] == true)
        .map(|d| d["version"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Milliseconds the initramfs script reported for assembling the root.
fn assemble_ms(serial: &str) -> Option<u64> {
    serial
        .lines()
        .find_map(|l| l.split("root took ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
}

/// A Python watcher that cuts the power (sysrq b: reboot at once, no sync) as soon as
/// something is created in DIR; the step waits until it is armed.
fn power_cut_when_created(dir: &str) -> String {
    format!(
        r#"cat > /run/cut.py <<'PY'
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
if libc.inotify_add_watch(fd, sys.argv[1].encode(), 0x100 | 0x80) < 0:
    sys.exit("cannot watch " + sys.argv[1])
open("/run/armed", "w").close()
os.read(fd, 4096)
open("/proc/sysrq-trigger", "w").write("b")
PY
python3 /run/cut.py {dir} &
while [ ! -e /run/armed ]; do sleep 0.1; done
"#
    )
}

const STATUS: &str = "arbor status --json | tr -d '\\n' | awk 1\narbor status\n";

/// [`power_cut_when_created`] after the Nth entry created or moved into DIR (an
/// atomic write makes two: its temporary file, then the rename).
fn power_cut_after_events(dir: &str, n: u32) -> String {
    format!(
        r#"cat > /run/cut.py <<'PY'
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
if libc.inotify_add_watch(fd, sys.argv[1].encode(), 0x100 | 0x80) < 0:
    sys.exit("cannot watch " + sys.argv[1])
open("/run/armed", "w").close()
seen = 0
while seen < int(sys.argv[2]):
    buf = os.read(fd, 65536)
    i = 0
    while i < len(buf) and seen < int(sys.argv[2]):
        _, _, _, length = struct.unpack_from("iIII", buf, i)
        i += 16 + length
        seen += 1
open("/proc/sysrq-trigger", "w").write("b")
PY
python3 /run/cut.py {dir} {n} &
while [ ! -e /run/armed ]; do sleep 0.1; done
"#
    )
}
const LIMIT: Duration = Duration::from_secs(420);

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
ls /boot/efi/loader/entries
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
