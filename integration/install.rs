//! `arbor install to-disk` into disk image files, read back with tools that know
//! nothing of arbor: sfdisk, blkid, mtools, bootctl, grub-script-check, and a loop
//! mount of the root partition. Booting such a disk is the VM boot loop's job.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Where setup.sh keeps what the test images need (systemd-boot's EFI binary).
fn image_debs() -> PathBuf {
    let base = std::env::var("ARBOR_IMAGES").unwrap_or_else(|_| "/var/tmp/arbor-images".into());
    let debs = Path::new(&base).join("debs");
    assert!(
        debs.join("READY").exists(),
        "{} missing: run scripts/setup.sh",
        debs.display()
    );
    debs
}

/// PATH with the bootctl that setup.sh keeps when systemd-boot is not installed.
fn path_with_tools() -> String {
    format!(
        "{}:/var/cache/arbor-tools",
        std::env::var("PATH").unwrap_or_default()
    )
}

fn sh(script: &str) -> String {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec", script])
        .env("PATH", path_with_tools())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "script failed:\n{script}\n{text}");
    text
}

/// A host sysroot holding `os`, a small tree with systemd-boot's EFI binary in it.
fn host_with_image(dir: &Path) -> String {
    let sr = sysroot(dir);
    let tree = rootfs(dir, "1");
    let deb = std::fs::read_dir(image_debs())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("systemd-boot-efi_"))
        .expect("systemd-boot-efi in the image packages");
    sh(&format!("dpkg-deb -x {} {}", s(&deb), s(&tree)));
    compose(&sr, &tree, "os", "1");
    sr
}

fn install(sr: &str, disk: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--sysroot",
        sr,
        "install",
        "to-disk",
        s(disk),
        "--source",
        "os",
        "--karg",
        "console=ttyS0",
        "--json",
    ];
    args.extend_from_slice(extra);
    Command::new(arbor_bin())
        .args(&args)
        .env("PATH", path_with_tools())
        .output()
        .unwrap()
}

/// (start offset, type, name) of each partition, from sfdisk.
fn partitions(disk: &Path) -> Vec<(u64, String, String)> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(disk)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * 512,
                p["type"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// blkid's view of the file system at `offset`: TYPE, LABEL, UUID.
fn blkid(disk: &Path, offset: u64) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export", "-O", &offset.to_string()])
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_install_to_disk_with_systemd_boot_makes_a_disk_bootctl_reads() {
    require_root!();
    let t = scratch();
    let sr = host_with_image(t.path());
    let disk = t.path().join("disk.raw");
    let out = install(&sr, &disk, &["--via-loopback", "--size", "2G"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = partitions(&disk);
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0].1, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[1].1, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    let esp = blkid(&disk, parts[0].0);
    let root = blkid(&disk, parts[1].0);
    assert!(
        esp.contains("TYPE=vfat") && esp.contains("LABEL=ESP"),
        "{esp}"
    );
    assert!(
        esp.contains(&format!("UUID={}", report["esp"]["uuid"].as_str().unwrap())),
        "{esp}"
    );
    assert!(
        root.contains("TYPE=ext4") && root.contains("LABEL=arbor-root"),
        "{root}"
    );
    let root_uuid = report["root"]["uuid"].as_str().unwrap();
    assert!(root.contains(&format!("UUID={root_uuid}")), "{root}");

    // The ESP, copied out with mtools and read by systemd-boot's own bootctl.
    let espdir = t.path().join("esp");
    std::fs::create_dir(&espdir).unwrap();
    let listed = sh(&format!(
        "mcopy -s -i {disk}@@{off} '::/*' {esp}/\n\
         test -f {esp}/EFI/BOOT/BOOTX64.EFI\n\
         mount --bind {esp} {esp}\n\
         SYSTEMD_RELAX_ESP_CHECKS=1 bootctl --esp-path={esp} list --no-pager",
        disk = s(&disk),
        off = parts[0].0,
        esp = s(&espdir),
    ));
    assert!(
        listed.contains("arbor=/arbor/deploy/debian/deploy/"),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("root=UUID={root_uuid}")),
        "{listed}"
    );
    assert!(listed.contains("console=ttyS0"), "{listed}");
    let kernels: Vec<_> = std::fs::read_dir(espdir.join("arbor")).unwrap().collect();
    assert_eq!(kernels.len(), 1, "one kernel folder on the ESP");

    // The root partition: the sysroot, its boot settings, the deployment's fstab.
    let out = sh(&format!(
        "mkdir -p {m}\nmount -o loop,offset={off} {disk} {m}\n\
         cat {m}/arbor/bootloader.toml\n\
         cat {m}/arbor/deploy/debian/deploy/*.0/etc/fstab\n\
         test ! -s {m}/arbor/deploy/debian/deploy/*.0/etc/machine-id\n\
         mkdir -p {m}/boot/efi && cp -r {esp}/. {m}/boot/efi/\n\
         {arbor} --sysroot {m} status\n{arbor} --sysroot {m} fsck\necho checked",
        m = s(&t.path().join("mnt")),
        off = parts[1].0,
        disk = s(&disk),
        esp = s(&espdir),
        arbor = arbor_bin(),
    ));
    assert!(out.contains("loader = \"systemd-boot\""), "{out}");
    assert!(out.contains(&format!("UUID={root_uuid} / ext4")), "{out}");
    assert!(out.contains("/boot/efi vfat"), "{out}");
    assert!(
        out.contains("  0 pending\n    debian 1\n"),
        "one deployment, version 1:\n{out}"
    );
    assert!(out.contains("checked"), "{out}");
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_install_to_disk_with_grub_writes_its_efi_image_and_grub_cfg() {
    require_root!();
    let t = scratch();
    let sr = host_with_image(t.path());
    let disk = t.path().join("disk.raw");
    let out = install(
        &sr,
        &disk,
        &["--via-loopback", "--size", "2G", "--bootloader", "grub"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parts = partitions(&disk);
    let espdir = t.path().join("esp");
    std::fs::create_dir(&espdir).unwrap();
    let out = sh(&format!(
        "mcopy -s -i {disk}@@{eoff} '::/*' {esp}/\n\
         test -f {esp}/EFI/BOOT/BOOTX64.EFI\n\
         ! test -d {esp}/loader\n\
         mkdir -p {m}\nmount -o loop,offset={roff} {disk} {m}\n\
         grub-script-check {m}/boot/grub/grub.cfg\n\
         test -f {m}/boot/grub/x86_64-efi/normal.mod\n\
         cat {m}/boot/grub/grub.cfg {m}/boot/grub/early.cfg\n\
         ls {m}/boot/arbor",
        disk = s(&disk),
        eoff = parts[0].0,
        roff = parts[1].0,
        esp = s(&espdir),
        m = s(&t.path().join("mnt")),
    ));
    assert!(out.contains("menuentry"), "{out}");
    assert!(out.contains("linux '/boot/arbor/debian-"), "{out}");
    assert!(out.contains("'arbor=/arbor/deploy/debian/deploy/"), "{out}");
    assert!(
        out.contains("search --no-floppy --fs-uuid --set=root"),
        "{out}"
    );
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_install_to_disk_refuses_what_it_must_not_erase() {
    require_root!();
    let t = scratch();
    let sr = host_with_image(t.path());
    let disk = t.path().join("disk.raw");
    // A file without --via-loopback, and a missing file without --size.
    let err = |out: std::process::Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    std::fs::write(&disk, b"").unwrap();
    assert!(err(install(&sr, &disk, &[])).contains("--via-loopback"));
    assert!(
        err(install(
            &sr,
            &t.path().join("nope.raw"),
            &["--via-loopback"]
        ))
        .contains("give --size")
    );
    // A disk that holds partitions needs --wipe.
    let ok = install(&sr, &disk, &["--via-loopback", "--size", "2G"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let e = err(install(&sr, &disk, &["--via-loopback"]));
    assert!(
        e.contains("partition table (gpt)") && e.contains("--wipe"),
        "{e}"
    );
    let again = install(&sr, &disk, &["--via-loopback", "--wipe"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // A block device that is mounted is refused, with where.
    let out = sh(&format!(
        "truncate -s 1500M {img}\nmkfs.ext4 -q {img}\ndev=$(losetup --find --show {img})\n\
         trap 'umount {m}; losetup -d $dev' EXIT\nmkdir -p {m}\nmount $dev {m}\n\
         if PATH=$PATH {arbor} --sysroot {sr} install to-disk $dev --source os --wipe 2>&1; then exit 1; fi",
        img = s(&t.path().join("used.raw")),
        m = s(&t.path().join("used")),
        arbor = arbor_bin(),
    ));
    assert!(
        out.contains("is in use") && out.contains("mounted at"),
        "{out}"
    );
}
