//! The VM harness: disks made by `arbor install to-disk` from the Containerfile images
//! boot in qemu with OVMF (TCG, no KVM, no network); updates come from a published
//! folder on a 9p share, read through `file://`. The test agent in the images runs the
//! host's step script at each boot, once the health check has judged it, and writes
//! its output back to the share. The scenarios are in integration/vm.rs (bookworm)
//! and integration/vm_trixie.rs (trixie and the major upgrade).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::*;

/// One VM at a time: two TCG guests on two cores would only slow each other down.
pub static ONE_VM: Mutex<()> = Mutex::new(());

/// Images built once per run.
pub fn images_built() {
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
pub fn path_with_tools() -> String {
    format!(
        "{}:/var/cache/arbor-tools",
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A test's world: a work folder (kept with its serial logs if the test fails), a
/// publishing repository, and the share the guest mounts, holding the published
/// folder `www`.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub publisher: String,
    /// What it was set up with (images, versions): the key of its template.
    key: String,
}

impl Lab {
    /// The bookworm lab: base, update and broken composed; 1 = base and 2 = update
    /// published (with a delta).
    pub fn new() -> Lab {
        Lab::with(
            &["base", "update", "broken"],
            &[("1", "base"), ("2", "update")],
        )
    }

    /// A lab with IMAGES composed into `os/NAME` and (version, image) published. A
    /// lab like one set up before in this process starts as a copy of it (composing
    /// and publishing take a minute and a half a lab under TCG's neighbour load).
    pub fn with(images: &[&str], published: &[(&str, &str)]) -> Lab {
        images_built();
        let dir = tempfile::Builder::new()
            .prefix("arbor-vm.")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::create_dir_all(dir.path().join("share")).unwrap();
        let key = format!("{images:?} {published:?}");
        let publisher = s(&dir.path().join("sysroot")).to_string();
        if let Some(t) = template(&key) {
            copy_into(&t, dir.path(), LAB_PARTS);
            return Lab {
                dir,
                publisher,
                key,
            };
        }
        assert_eq!(sysroot(dir.path()), publisher);
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
        let lab = Lab {
            dir,
            publisher,
            key,
        };
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
        keep_template(&lab.key, lab.dir.path(), LAB_PARTS);
        lab
    }

    pub fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    pub fn www(&self) -> PathBuf {
        self.share().join("www")
    }

    /// Publishes image NAME as VERSION of channel stable (with a delta from the last).
    pub fn publish(&self, version: &str, name: &str) {
        self.publish_with(version, name, &[]);
    }

    /// [`Lab::publish`] with more options for `publish add`.
    pub fn publish_with(&self, version: &str, name: &str, extra: &[&str]) {
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
    pub fn disk(&self, loader: &str) -> PathBuf {
        self.disk_of(loader, "base")
    }

    /// A disk of image NAME (`localhost/arbor-NAME`) with `loader`.
    pub fn disk_of(&self, loader: &str, name: &str) -> PathBuf {
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

/// What a lab's setup made: the publishing sysroot, the signing keys, the share.
const LAB_PARTS: &[&str] = &["sysroot", "keys", "share"];

/// Copies of labs as they were right after their setup, by key; removed when the
/// test process exits. (Disks are not kept: `install to-disk` takes seconds.)
static TEMPLATES: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

fn template(key: &str) -> Option<PathBuf> {
    let list = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    list.iter().find(|(k, _)| k == key).map(|(_, p)| p.clone())
}

/// Keeps a copy of PARTS of `from` as the template for `key`.
fn keep_template(key: &str, from: &Path, parts: &[&str]) {
    extern "C" fn remove_templates() {
        for (_, p) in TEMPLATES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    let mut list = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    if list.is_empty() {
        // SAFETY: registers a plain function; it runs once, at exit.
        unsafe { libc::atexit(remove_templates) };
    }
    let dir = tempfile::Builder::new()
        .prefix("arbor-vm-template.")
        .tempdir_in("/var/tmp")
        .unwrap()
        .keep();
    copy_into(from, &dir, parts);
    list.push((key.to_string(), dir));
}

/// Copies PARTS of `from` into `to`, owners, modes and xattrs kept.
fn copy_into(from: &Path, to: &Path, parts: &[&str]) {
    for part in parts {
        let out = Command::new("cp")
            .arg("-a")
            .arg(from.join(part))
            .arg(to)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "copying {part}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Lab {
    #[allow(clippy::print_stderr)] // where a failed VM test's logs are
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

impl Vm<'_> {
    /// Records the `ARBOR-` lines of the serial log past byte `seen`; returns how far
    /// it read (to the end of the last whole line).
    fn read_marks(&mut self, serial: &Path, seen: usize) -> usize {
        let bytes = std::fs::read(serial).unwrap_or_default();
        let Some(end) = bytes[seen.min(bytes.len())..]
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|i| seen + i + 1)
        else {
            return seen;
        };
        let now = Instant::now();
        for line in String::from_utf8_lossy(&bytes[seen..end]).lines() {
            if let Some(i) = line.find("ARBOR-") {
                self.marks.push((line[i..].trim().to_string(), now));
            }
        }
        end
    }

    /// When the first console line starting with `text` appeared after `after`.
    pub fn mark_after(&self, text: &str, after: Instant) -> Option<Instant> {
        self.marks
            .iter()
            .find(|(l, t)| l.starts_with(text) && *t >= after)
            .map(|(_, t)| *t)
    }

    /// What the step printed at the agent's run N (several in one qemu run when the
    /// guest soft-reboots or kexecs), whether or not it finished.
    pub fn out_of(&self, n: u32) -> String {
        std::fs::read_to_string(self.lab.share().join(format!("out-{n}.log"))).unwrap_or_default()
    }
}

/// What one boot's step printed (None: the guest never finished it, as after a power
/// cut), and the serial log of that boot.
pub struct Boot {
    pub out: Option<String>,
    pub serial: String,
}

/// A VM over one disk; each `boot` starts qemu and returns when the guest powers off,
/// reboots (qemu runs with -no-reboot) or dies.
pub struct Vm<'l> {
    lab: &'l Lab,
    name: String,
    disk: PathBuf,
    vars: PathBuf,
    runs: u32,
    /// Lines the guest wrote to its console that start with `ARBOR-`, with the
    /// moment the host first saw each: the host's clock times what spans switches
    /// (a kexec and a reboot restart the guest's).
    pub marks: Vec<(String, Instant)>,
}

impl<'l> Vm<'l> {
    pub fn new(lab: &'l Lab, name: &str, disk: PathBuf) -> Vm<'l> {
        let vars = lab.dir.path().join(format!("{name}.vars.fd"));
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
        let _ = std::fs::remove_file(lab.share().join("boots"));
        Vm {
            lab,
            name: name.to_string(),
            disk,
            vars,
            runs: 0,
            marks: Vec::new(),
        }
    }

    pub fn boots(&self) -> u32 {
        std::fs::read_to_string(self.lab.share().join("boots"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Boots once with `step` as the guest's script; waits up to `limit`.
    pub fn boot(&mut self, step: &str, limit: Duration) -> Boot {
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
            // Entropy from the host: a guest without any once spun in getrandom()
            // under TCG until the boot timed out.
            .args(["-device", "virtio-rng-pci"])
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
        let mut seen = 0;
        loop {
            let exited = child.try_wait().unwrap().is_some();
            seen = self.read_marks(&serial, seen);
            if exited {
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
            std::thread::sleep(Duration::from_millis(50));
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
pub fn ran(b: &Boot, what: &str) -> String {
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

pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// The version the guest runs, from a step that printed `arbor status --json`.
pub fn booted_version(out: &str) -> String {
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
pub fn assemble_ms(serial: &str) -> Option<u64> {
    serial
        .lines()
        .find_map(|l| l.split("root took ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
}

/// A Python watcher that cuts the power (sysrq b: reboot at once, no sync) as soon as
/// something is created in DIR; the step waits until it is armed.
pub fn power_cut_when_created(dir: &str) -> String {
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

pub const STATUS: &str = "arbor status --json | tr -d '\\n' | awk 1\narbor status\n";

/// [`power_cut_when_created`] after the Nth entry created or moved into DIR (an
/// atomic write makes two: its temporary file, then the rename).
pub fn power_cut_after_events(dir: &str, n: u32) -> String {
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
pub const LIMIT: Duration = Duration::from_secs(420);
