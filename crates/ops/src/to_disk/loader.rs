//! Putting a boot loader on the new disk's ESP. The loader comes from the deployed
//! image when it ships one (as bootc takes it from the image), so the disk boots the
//! loader that the image was tested with; the build host's is the fallback.
//!
//! - systemd-boot: `bootctl --root=<deployment> install --no-variables` with the ESP
//!   (a staging folder) bound at the deployment's `/boot/efi` in a private mount
//!   namespace. `--no-variables` leaves the build host's firmware alone; the loader
//!   is found through the removable-media path `EFI/BOOT/BOOTX64.EFI`.
//! - GRUB: `grub-mkimage` makes `EFI/BOOT/BOOTX64.EFI` with a small built-in
//!   configuration that finds the root file system by UUID and reads
//!   `/boot/grub/grub.cfg` there (written by arbor with every change of the entries);
//!   the modules are copied to `/boot/grub/x86_64-efi`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::disk::run_tool;
use arbor_boot::Loader;

/// `loader/loader.conf`: a short menu (a key shows it); the default is the entry of
/// the highest version, which is how arbor selects the next boot.
const LOADER_CONF: &str = "# Written by arbor install.\ntimeout 3\n";

/// Modules built into GRUB's EFI image: enough to find the root file system and
/// read its configuration; the rest load from `/boot/grub/x86_64-efi`.
const GRUB_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "ext2",
    "fat",
    "search",
    "search_fs_uuid",
    "normal",
    "configfile",
    "linux",
    "echo",
    "test",
    "all_video",
    "gzio",
    "serial",
    "terminal",
    "loadenv",
];

/// Installs `loader` on the ESP folder `esp` for the deployment at `deployment`,
/// whose root file system has `root_uuid` (mounted at `sysroot`).
pub fn install(
    loader: Loader,
    esp: &Path,
    deployment: &Path,
    sysroot: &Path,
    root_uuid: &str,
) -> Result<()> {
    match loader {
        Loader::SystemdBoot => systemd_boot(esp, deployment),
        Loader::Grub => grub(esp, deployment, sysroot, root_uuid),
        Loader::Bls => bail!("install to-disk needs --bootloader systemd-boot or grub"),
    }
}

fn systemd_boot(esp: &Path, deployment: &Path) -> Result<()> {
    let efi = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
    if !deployment.join(efi).is_file() {
        bail!(
            "the image has no systemd-boot (/{efi}): install systemd-boot-efi in it, \
             or use --bootloader grub"
        );
    }
    // The mount point the bind needs; the running system mounts the ESP there too.
    std::fs::create_dir_all(deployment.join("boot/efi"))?;
    run_tool(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-ec"])
            .arg(
                "mount --bind \"$1\" \"$2/boot/efi\"\n\
             bootctl --root=\"$2\" --esp-path=/boot/efi install --no-variables --graceful",
            )
            .arg("sh")
            .arg(esp)
            .arg(deployment)
            // The ESP is a staging folder, not a FAT mount: bootctl checks neither.
            .env("SYSTEMD_RELAX_ESP_CHECKS", "1"),
    )
    .context("installing systemd-boot with bootctl (package systemd-boot)")?;
    std::fs::write(esp.join("loader/loader.conf"), LOADER_CONF)?;
    Ok(())
}

fn grub(esp: &Path, deployment: &Path, sysroot: &Path, root_uuid: &str) -> Result<()> {
    let image_modules = deployment.join("usr/lib/grub/x86_64-efi");
    let modules = if image_modules.is_dir() {
        image_modules
    } else {
        Path::new("/usr/lib/grub/x86_64-efi").to_path_buf()
    };
    if !modules.join("normal.mod").is_file() {
        bail!(
            "no GRUB EFI modules in the image or on this machine \
             (package grub-efi-amd64-bin): cannot install GRUB"
        );
    }
    let grub_dir = sysroot.join("boot/grub");
    std::fs::create_dir_all(&grub_dir)?;
    let early = grub_dir.join("early.cfg");
    std::fs::write(
        &early,
        format!(
            "search --no-floppy --fs-uuid --set=root {root_uuid}\nset prefix=($root)/boot/grub\n"
        ),
    )?;
    let boot = esp.join("EFI/BOOT");
    std::fs::create_dir_all(&boot)?;
    run_tool(
        Command::new("grub-mkimage")
            .args(["-O", "x86_64-efi", "-p", "/boot/grub"])
            .arg("-d")
            .arg(&modules)
            .arg("-c")
            .arg(&early)
            .arg("-o")
            .arg(boot.join("BOOTX64.EFI"))
            .args(GRUB_MODULES),
    )
    .context("making GRUB's EFI image (package grub-common)")?;
    run_tool(
        Command::new("cp")
            .args(["-a", "--no-target-directory"])
            .arg(&modules)
            .arg(grub_dir.join("x86_64-efi")),
    )?;
    Ok(())
}
