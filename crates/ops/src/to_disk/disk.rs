//! The disk `install to-disk` writes: checks that it may be written, a GPT with an
//! EFI system partition and a root partition, loop devices over each partition, and
//! their file systems.
//!
//! Partitions are reached through loop devices at their offsets, for a block device
//! as for an image file, so nothing waits for udev to make partition nodes (images are
//! often built where there is no udev). The ESP's FAT is filled with mtools rather
//! than mounted, so a build host without FAT support can make a bootable disk too.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// GPT type of an EFI system partition.
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// GPT type of a Linux root partition on x86-64 (the Discoverable Partitions Spec).
pub const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// Runs a tool, failing with its stderr when it fails; returns its stdout.
pub fn run_tool(cmd: &mut Command) -> Result<String> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .with_context(|| format!("running {name} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The disk to install to.
#[derive(Debug)]
pub struct Target {
    /// As the user named it.
    pub path: PathBuf,
    /// A block device (else an image file).
    pub block: bool,
    /// Its size in bytes.
    pub size: u64,
}

/// Where a partition is and what it holds.
#[derive(Clone, Debug, Serialize)]
pub struct Partition {
    /// Its GPT name.
    pub name: String,
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
    /// The file system's UUID (a FAT volume id for the ESP).
    pub uuid: String,
}

/// The `major:minor` of a block device, as mountinfo and sysfs write it.
fn dev_numbers(path: &Path) -> Result<String> {
    let st = rustix::fs::stat(path)?;
    Ok(format!(
        "{}:{}",
        rustix::fs::major(st.st_rdev),
        rustix::fs::minor(st.st_rdev)
    ))
}

/// The device and its partitions, as `major:minor`, from sysfs.
fn device_and_partitions(path: &Path) -> Result<Vec<String>> {
    let numbers = dev_numbers(path)?;
    let mut out = vec![numbers.clone()];
    let sys = PathBuf::from(format!("/sys/dev/block/{numbers}"));
    if let Ok(entries) = std::fs::read_dir(&sys) {
        for e in entries.flatten() {
            if e.path().join("partition").exists()
                && let Ok(dev) = std::fs::read_to_string(e.path().join("dev"))
            {
                out.push(dev.trim().to_string());
            }
        }
    }
    Ok(out)
}

/// The partition table type on `path` (`gpt`, `dos`), if it has one.
fn partition_table(path: &Path) -> Result<Option<String>> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "PTTYPE"])
        .arg(path)
        .output()
        .context("running blkid (util-linux)")?;
    let pt = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((!pt.is_empty()).then_some(pt))
}

/// Checks the target may be written (and makes an image file of `size`): a block
/// device that is mounted or used as swap is refused; one that holds a partition
/// table needs `wipe`; an image file needs `via_loopback`.
pub fn check_target(
    path: &Path,
    wipe: bool,
    via_loopback: bool,
    size: Option<u64>,
) -> Result<Target> {
    let meta = std::fs::metadata(path);
    let block = meta.as_ref().is_ok_and(|m| m.file_type().is_block_device());
    if block {
        let ours = device_and_partitions(path)?;
        for m in arbor_core::mounts::list()? {
            if ours.contains(&m.majmin) {
                bail!(
                    "{} is in use: it (or one of its partitions) is mounted at {}; unmount it first",
                    path.display(),
                    m.mount_point.display()
                );
            }
        }
        if size.is_some() {
            bail!(
                "--size is for image files; {} is a block device",
                path.display()
            );
        }
    } else {
        if !via_loopback {
            bail!(
                "{} is not a block device: to write a disk image file, add --via-loopback",
                path.display()
            );
        }
        match (&meta, size) {
            (Err(_), None) => bail!(
                "{} does not exist: give --size to create a disk image of that size",
                path.display()
            ),
            (Ok(m), _) if !m.is_file() => bail!("{} is not a regular file", path.display()),
            _ => {}
        }
    }
    if meta.is_ok()
        && let Some(pt) = partition_table(path)?
        && !wipe
    {
        bail!(
            "{} holds a partition table ({pt}): add --wipe to erase everything on it",
            path.display()
        );
    }
    if !block && let Some(size) = size {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.set_len(0)?;
        f.set_len(size)?;
    }
    let size = if block {
        run_tool(Command::new("blockdev").arg("--getsize64").arg(path))?
            .trim()
            .parse()?
    } else {
        std::fs::metadata(path)?.len()
    };
    Ok(Target {
        path: path.to_path_buf(),
        block,
        size,
    })
}

/// Writes the partition table: the ESP of `esp_size` bytes, then the root partition
/// over the rest. Returns (esp, root) with their places; UUIDs are filled by mkfs.
pub fn partition(t: &Target, esp_size: u64) -> Result<(Partition, Partition)> {
    if t.size < esp_size + (1 << 30) {
        bail!(
            "{} has {} bytes: it needs at least the ESP ({esp_size}) and 1 GiB more",
            t.path.display(),
            t.size
        );
    }
    let script = format!(
        "label: gpt\nsize={}KiB, type={ESP_TYPE}, name=\"ESP\"\ntype={ROOT_TYPE}, name=\"root\"\n",
        esp_size / 1024
    );
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--wipe", "always", "--wipe-partitions", "always"])
        .arg(&t.path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running sfdisk (Debian package fdisk)")?;
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "sfdisk could not partition {}: {}",
            t.path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let json: serde_json::Value = serde_json::from_str(&run_tool(
        Command::new("sfdisk").arg("--json").arg(&t.path),
    )?)?;
    let sector = json["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    let parts = json["partitiontable"]["partitions"]
        .as_array()
        .context("sfdisk wrote no partitions")?;
    let get = |i: usize, name: &str| -> Result<Partition> {
        let p = parts.get(i).context("sfdisk wrote fewer partitions")?;
        Ok(Partition {
            name: name.to_string(),
            offset: p["start"].as_u64().context("start")? * sector,
            size: p["size"].as_u64().context("size")? * sector,
            uuid: String::new(),
        })
    };
    Ok((get(0, "ESP")?, get(1, "root")?))
}

/// A loop device over part of the target, detached when dropped.
pub struct Loop {
    /// `/dev/loopN`.
    pub dev: PathBuf,
}

impl Loop {
    /// Attaches `size` bytes of `file` (an image or a block device) from `offset`.
    pub fn attach(file: &Path, offset: u64, size: u64) -> Result<Loop> {
        let dev = run_tool(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(format!("--offset={offset}"))
                .arg(format!("--sizelimit={size}"))
                .arg(file),
        )?;
        Ok(Loop {
            dev: PathBuf::from(dev.trim()),
        })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// 16 random bytes from the kernel.
fn random_bytes() -> Result<[u8; 16]> {
    let mut b = [0u8; 16];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())?;
    Ok(b)
}

/// A random version-4 UUID, as ext4 and systemd write them.
pub fn random_uuid() -> Result<String> {
    let mut b = random_bytes()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Makes the ESP's FAT32 with a random volume id; returns it as fstab names it
/// (`ABCD-1234`).
pub fn mkfs_esp(dev: &Path) -> Result<String> {
    let id = hex::encode_upper(&random_bytes()?[..4]);
    run_tool(
        Command::new("mkfs.vfat")
            .args(["-F", "32", "-n", "ESP", "-i", &id])
            .arg(dev),
    )?;
    Ok(format!("{}-{}", &id[..4], &id[4..]))
}

/// Makes the root partition's ext4 with `label` and a random UUID; returns the UUID.
pub fn mkfs_root(dev: &Path, label: &str) -> Result<String> {
    let uuid = random_uuid()?;
    run_tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label, "-U", &uuid])
            .arg(dev),
    )?;
    Ok(uuid)
}

/// Copies the content of `dir` onto the FAT file system on `dev`, with mtools.
pub fn fill_esp(dev: &Path, dir: &Path) -> Result<()> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    if names.is_empty() {
        return Ok(());
    }
    run_tool(
        Command::new("mcopy")
            .args(["-s", "-p", "-Q", "-i"])
            .arg(dev)
            .args(&names)
            .arg("::/")
            .env("MTOOLS_SKIP_CHECK", "1"),
    )?;
    run_tool(Command::new("blockdev").arg("--flushbufs").arg(dev))?;
    // Read back what the firmware will look for first.
    let listed = run_tool(
        Command::new("mdir")
            .args(["-b", "-i"])
            .arg(dev)
            .arg("::/EFI/BOOT")
            .env("MTOOLS_SKIP_CHECK", "1"),
    )?;
    if !listed.contains("BOOTX64.EFI") {
        bail!(
            "the ESP on {} lacks EFI/BOOT/BOOTX64.EFI after copying",
            dev.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4() {
        let u = random_uuid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]), "{u}");
        assert_ne!(u, random_uuid().unwrap());
    }
}
