//! A router VM that shapes a link with `tc netem`, for hosts whose kernel has no
//! sch_netem (this machine's does not: no modules, `CONFIG_NET_SCH_NETEM` unset).
//!
//! The fleet test's namespace is joined to this one through a tiny guest instead of a
//! veth pair: Debian's own kernel from corpus `a` (which builds netem as a module) and
//! an initramfs of seven programs copied from the same tree (dash, ip, tc, kmod,
//! mount, sleep, grep), their libraries and nine modules. The guest forwards between
//! two virtio NICs, each a tap on the host (one moved into the namespace), with the
//! netem queue on both egresses, so
//! downloads and reports are shaped alike. It boots in about ten seconds under TCG;
//! the initramfs is built once and cached under /var/tmp by what goes into it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The namespace's address (on the tap moved into it) and its gateway in the guest.
pub const CLIENT_IP: &str = "10.251.0.2";
const CLIENT_GW: &str = "10.251.0.1";
/// This namespace's address, where servers listen, and the guest's address here.
pub const SERVER_IP: &str = "10.252.0.2";
const SERVER_GW: &str = "10.252.0.1";

/// The guest's init: load the drivers and netem, address the NIC whose MAC says which
/// side it is, shape both egresses with `$arbor_netem` (from the kernel command line),
/// forward (`sysctl.net.ipv4.ip_forward=1` there), and say so on the console. tc needs
/// /proc: without /proc/net/psched it takes the delay for microseconds where the kernel
/// reads 64 ns ticks, and every delay shrinks sixteenfold.
const INIT: &str = r#"#!/bin/dash
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for m in virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net sch_netem; do
  insmod /modules/$m.ko || echo "ROUTER-FAILED insmod $m"
done
for dev in eth0 eth1; do
  case "$(ip -br link show $dev)" in
    *52:54:00:a5:00:01*) ip addr add 10.251.0.1/24 dev $dev ;;
    *52:54:00:a5:00:02*) ip addr add 10.252.0.1/24 dev $dev ;;
    *) echo "ROUTER-FAILED no $dev" ;;
  esac
  ip link set $dev up
  tc qdisc add dev $dev root netem $arbor_netem || echo "ROUTER-FAILED netem on $dev"
done
tc qdisc show | grep -q netem && echo ROUTER-READY
while :; do sleep 3600; done
"#;

/// What the initramfs holds from the corpus tree.
const PROGRAMS: &[&str] = &[
    "usr/bin/dash",
    "usr/bin/ip",
    "usr/sbin/tc",
    "usr/bin/kmod",
    "usr/bin/mount",
    "usr/bin/sleep",
    "usr/bin/grep",
];
const MODULES: &[&str] = &[
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "net/sched/sch_netem.ko",
];

/// A running router VM between a namespace and this one; stopped (and its taps gone
/// with it) at drop.
pub struct NetemRouter {
    qemu: Child,
    /// The guest's console, for an error that names what went wrong.
    pub serial: PathBuf,
}

fn run(what: &str, c: &mut Command) -> Result<String, String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip ARGS…`: its output, or an error naming the command.
pub fn ip(args: &[&str]) -> Result<String, String> {
    run(
        &format!("ip {}", args.join(" ")),
        Command::new("ip").args(args),
    )
}

/// The kernel of corpus tree `tree` (its one vmlinuz) and its version.
fn kernel(tree: &Path) -> Result<(PathBuf, String), String> {
    let boot = std::fs::read_dir(tree.join("boot")).map_err(|e| format!("{tree:?}/boot: {e}"))?;
    for e in boot.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(v) = name.strip_prefix("vmlinuz-") {
            return Ok((e.path(), v.to_string()));
        }
    }
    Err(format!("no vmlinuz in {tree:?}/boot"))
}

/// Builds (once) the initramfs from corpus tree `tree`, cached by its kernel version
/// and the init script.
fn initramfs(tree: &Path, version: &str) -> Result<PathBuf, String> {
    let key = blake3::hash(format!("{version}\n{INIT}\n{PROGRAMS:?}\n{MODULES:?}").as_bytes());
    let dir = PathBuf::from("/var/tmp/arbor-netem-router").join(&key.to_hex()[..16]);
    let image = dir.join("initrd.gz");
    if image.exists() {
        return Ok(image);
    }
    let root = dir.join("root.tmp");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "dev", "proc", "sys", "modules"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    // Each program and every library ldd names, from the tree, at the same path.
    let copy = |rel: &str, to: &Path| -> Result<(), String> {
        run(
            &format!("copying {rel}"),
            Command::new("cp").arg("-L").arg(tree.join(rel)).arg(to),
        )
        .map(drop)
    };
    let mut libs = std::collections::BTreeSet::new();
    for p in PROGRAMS {
        copy(p, &root.join("bin"))?;
        let out = run(&format!("ldd {p}"), Command::new("ldd").arg(tree.join(p)))?;
        for l in out.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux…"
            let path = l.split("=>").last().unwrap_or("").split_whitespace().next();
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                libs.insert(path.trim_start_matches('/').to_string());
            }
        }
    }
    for l in &libs {
        let to = root.join(l);
        std::fs::create_dir_all(to.parent().unwrap()).map_err(|e| e.to_string())?;
        copy(l, &to)?;
    }
    std::os::unix::fs::symlink("kmod", root.join("bin/insmod")).map_err(|e| e.to_string())?;
    let mods = tree.join("usr/lib/modules").join(version).join("kernel");
    for m in MODULES {
        run(
            &format!("copying {m}"),
            Command::new("cp")
                .arg(mods.join(m))
                .arg(root.join("modules")),
        )?;
    }
    for (node, major, minor) in [("console", "5", "1"), ("null", "1", "3")] {
        run(
            "mknod",
            Command::new("mknod")
                .arg(root.join("dev").join(node))
                .args(["c", major, minor]),
        )?;
    }
    let init = root.join("init");
    std::fs::write(&init, INIT).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let tmp = dir.join("initrd.gz.tmp");
    run(
        "cpio",
        Command::new("bash")
            .arg("-c")
            .arg("cd \"$1\" && find . | cpio -o -H newc --quiet | gzip -1 > \"$2\"")
            .args(["cpio", &root.to_string_lossy(), &tmp.to_string_lossy()]),
    )?;
    std::fs::rename(&tmp, &image).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(image)
}

fn wait_for_link(name: &str, until: Instant) -> Result<(), String> {
    while ip(&["link", "show", name]).is_err() {
        if Instant::now() > until {
            return Err(format!("qemu made no tap {name}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

impl NetemRouter {
    /// Starts the router between namespace `ns` (given `CLIENT_IP`, its default route
    /// through the guest) and this one (`SERVER_IP`, a route back to the namespace's
    /// network), shaped both ways by `netem` (tc's netem arguments). `tag` names the
    /// taps; `scratch` keeps the console log. Fails, naming why, when qemu or the
    /// corpus kernel is missing or the guest does not come up within two minutes.
    pub fn start(ns: &str, netem: &str, tag: &str, scratch: &Path) -> Result<NetemRouter, String> {
        let tree = super::corpus_base().join("a");
        let (vmlinuz, version) = kernel(&tree)?;
        let initrd = initramfs(&tree, &version)?;
        let (client_tap, server_tap) = (format!("anc{tag}"), format!("ans{tag}"));
        let serial = scratch.join("netem-router.serial");
        let nic = |id: &str, tap: &str, mac: &str| {
            [
                "-netdev".to_string(),
                format!("tap,id={id},ifname={tap},script=no,downscript=no"),
                "-device".to_string(),
                format!("virtio-net-pci,netdev={id},mac={mac},romfile="),
            ]
        };
        let qemu = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-accel", "tcg", "-m", "256", "-smp", "1"])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-kernel")
            .arg(&vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 quiet panic=-1 sysctl.net.ipv4.ip_forward=1 arbor_netem=\"{netem}\""
            ))
            .args(nic("c", &client_tap, "52:54:00:a5:00:01"))
            .args(nic("s", &server_tap, "52:54:00:a5:00:02"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
        let mut router = NetemRouter { qemu, serial };
        let until = Instant::now() + Duration::from_secs(120);
        wait_for_link(&client_tap, until)?;
        wait_for_link(&server_tap, until)?;
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", ns, "ip"];
            a.extend_from_slice(args);
            ip(&a)
        };
        ip(&["link", "set", &client_tap, "netns", ns])?;
        inside(&[
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            &client_tap,
        ])?;
        inside(&["link", "set", &client_tap, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        inside(&["route", "add", "default", "via", CLIENT_GW])?;
        ip(&[
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            &server_tap,
        ])?;
        ip(&["link", "set", &server_tap, "up"])?;
        ip(&["route", "add", "10.251.0.0/24", "via", SERVER_GW])?;
        loop {
            let log = std::fs::read_to_string(&router.serial).unwrap_or_default();
            if log.contains("ROUTER-READY") {
                return Ok(router);
            }
            let failed = log.contains("ROUTER-FAILED")
                || router.qemu.try_wait().ok().flatten().is_some()
                || Instant::now() > until;
            if failed {
                let from = log.char_indices().rev().nth(1500).map_or(0, |(i, _)| i);
                let tail = &log[from..];
                return Err(format!(
                    "the netem router did not come up; its console:\n{tail}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for NetemRouter {
    fn drop(&mut self) {
        // The taps are qemu's (not persistent): they go, with the route, as it exits.
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}
