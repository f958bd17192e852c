//! `install to-disk`: a bootable disk (a USB stick, an SD card, a VM image) from a
//! commit or a container image, as `bootc install to-disk` makes one.
//!
//! Layout (docs/install.md): GPT; an EFI system partition (FAT32, `ESP`) with the boot
//! loader and, for systemd-boot, the kernels and entries; a root partition (ext4,
//! labelled, the Linux root type of the Discoverable Partitions Spec) holding the
//! sysroot. The deployment's `/etc/fstab` mounts both by UUID; its `/etc/machine-id`
//! is left empty for the first boot to fill.
//!
//! The disk is written from scratch: a failure at any step leaves a disk that does not
//! boot into a half-made system, because the boot loader goes on last, after the
//! deployment and its entries are complete and synced.

pub mod disk;
pub mod loader;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::mount::{self, MountFlags, UnmountFlags};
use serde::Serialize;

use arbor_boot::{BootConfig, Loader};
use arbor_compose::image::{ImageOptions, ImageSource, compose_image};
use arbor_core::lock::LockWait;
use arbor_core::progress::Unobserved;
use arbor_statedb::HistoryKind;
use arbor_store::Repo;
use arbor_store::refs::RefName;
use arbor_sysroot::deploy::{DeployOptions, deploy};
use arbor_sysroot::{Deployment, Sysroot};
use disk::{Loop, Partition};

/// What to deploy on the new disk.
#[derive(Clone, Debug)]
pub enum InstallSource {
    /// A commit of a repository on this machine (`REF`, a branch or commit id).
    Commit { repo: PathBuf, rev: String },
    /// A container image (`TRANSPORT:REF`).
    Image(ImageSource),
}

impl InstallSource {
    /// `TRANSPORT:REF` for the transports `compose image` reads, else a ref of `repo`.
    pub fn parse(spec: &str, repo: &Path) -> InstallSource {
        match spec.parse::<ImageSource>() {
            Ok(image)
                if ["oci:", "oci-archive:", "containers-storage:"]
                    .iter()
                    .any(|t| spec.starts_with(t)) =>
            {
                InstallSource::Image(image)
            }
            _ => InstallSource::Commit {
                repo: repo.to_path_buf(),
                rev: spec.to_string(),
            },
        }
    }
}

/// How to make the disk.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// A block device, or an image file (with `via_loopback`).
    pub target: PathBuf,
    /// What to deploy.
    pub source: InstallSource,
    /// The boot loader.
    pub bootloader: Loader,
    /// Kernel arguments besides `root=` and `rw`.
    pub kargs: Vec<String>,
    /// Size of a new image file.
    pub size: Option<u64>,
    /// Erase a disk that holds a partition table.
    pub wipe: bool,
    /// The target is an image file, reached through a loop device.
    pub via_loopback: bool,
    /// The stateroot's name.
    pub os: String,
    /// The branch the deployment follows.
    pub branch: Option<String>,
    /// A remote to configure on the disk (name, URL), trusting `trust` (a TUF root).
    pub remote: Option<(String, String)>,
    /// The TUF root of `remote`.
    pub trust: Option<PathBuf>,
    /// `REMOTE:CHANNEL` the deployment follows, so `arbor upgrade` fetches from there;
    /// the source commit must be (a version of) that channel.
    pub follow: Option<String>,
    /// The root file system's label.
    pub label: String,
    /// The ESP's size in bytes.
    pub esp_size: u64,
}

/// What was made.
#[derive(Clone, Debug, Serialize)]
pub struct InstallReport {
    /// The disk.
    pub target: PathBuf,
    /// Its boot loader.
    pub bootloader: Loader,
    /// The EFI system partition.
    pub esp: Partition,
    /// The root partition.
    pub root: Partition,
    /// The deployment that boots.
    pub deployment: Deployment,
}

/// A mounted file system, unmounted when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = mount::unmount(&self.0, UnmountFlags::DETACH);
    }
}

/// The branch a commit source is followed on: the ref given, the remote channel's
/// ref, or `installed`.
fn branch_for(opts: &InstallOptions) -> Result<RefName> {
    if let Some(follow) = &opts.follow {
        let (remote, channel) = arbor_remote::split_refspec(follow)
            .with_context(|| format!("--follow {follow}: expected REMOTE:CHANNEL"))?;
        return RefName::parse(&arbor_remote::channel_ref(remote, channel));
    }
    let name = match (&opts.branch, &opts.source) {
        (Some(b), _) => b.clone(),
        (None, InstallSource::Commit { rev, .. })
            if RefName::parse(rev).is_ok() && !rev.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            rev.trim_end_matches('^').to_string()
        }
        (None, InstallSource::Image(_)) => format!("{}/image", opts.os),
        (None, _) => format!("{}/installed", opts.os),
    };
    RefName::parse(&name)
}

/// Makes the disk: partitions, file systems, the sysroot with the deployment, the
/// fstab, the boot loader and the ESP's content.
pub fn install_to_disk(opts: &InstallOptions) -> Result<InstallReport> {
    if opts.bootloader == Loader::Bls {
        bail!("install to-disk needs --bootloader systemd-boot or grub");
    }
    let branch = branch_for(opts)?;
    let target = disk::check_target(&opts.target, opts.wipe, opts.via_loopback, opts.size)?;
    let (mut esp, mut root) = disk::partition(&target, opts.esp_size)?;
    let esp_loop = Loop::attach(&target.path, esp.offset, esp.size)?;
    let root_loop = Loop::attach(&target.path, root.offset, root.size)?;
    esp.uuid = disk::mkfs_esp(&esp_loop.dev)?;
    root.uuid = disk::mkfs_root(&root_loop.dev, &opts.label)?;

    let work = tempfile::Builder::new()
        .prefix("arbor-install.")
        .tempdir()?;
    let mnt = work.path().join("root");
    let esp_dir = work.path().join("esp");
    std::fs::create_dir(&mnt)?;
    std::fs::create_dir(&esp_dir)?;
    mount::mount(
        &root_loop.dev,
        &mnt,
        "ext4",
        MountFlags::empty(),
        None::<&std::ffi::CStr>,
    )
    .with_context(|| format!("mounting the new root file system at {}", mnt.display()))?;
    let mounted = Mounted(mnt.clone());

    Sysroot::init_fs(&mnt)?.os_init(&opts.os)?;
    BootConfig {
        loader: opts.bootloader,
        esp: "/boot/efi".into(),
    }
    .write(&mnt)?;
    let sysroot = Sysroot::open(&mnt)?.with_esp_dir(&esp_dir);
    if let Some((name, url)) = &opts.remote {
        let trust = opts
            .trust
            .as_deref()
            .context("--remote needs --trust ROOT.json (the remote's TUF root)")?;
        // Not reachable from here, perhaps (a URL of the machine's own world): it is
        // verified at the first fetch, as `remote add --offline` does.
        let offline = arbor_remote::AddOptions {
            offline: true,
            ..Default::default()
        };
        arbor_remote::Remote::add(&sysroot, name, url, trust, &offline)?;
    }
    let commit = match &opts.source {
        InstallSource::Commit { repo, rev } => {
            let src = Repo::open(repo)?;
            let commit = src.resolve_rev(rev)?;
            arbor_store::copy::copy_commit(
                &src,
                sysroot.repo(),
                &commit,
                &branch,
                LockWait::NoWait,
            )
            .context("copying the commit into the new disk's repository")?;
            commit
        }
        InstallSource::Image(image) => {
            let io = ImageOptions {
                branch: branch.clone(),
                version: None,
                max_ratio: arbor_compose::image::DEFAULT_MAX_RATIO,
                login: None,
            };
            compose_image(sysroot.repo(), image, &io, LockWait::NoWait)?
                .commit
                .commit
        }
    };
    let mut kargs = vec![format!("root=UUID={}", root.uuid), "rw".to_string()];
    kargs.extend(opts.kargs.iter().cloned());
    let first = DeployOptions {
        os: opts.os.clone(),
        refspec: opts.follow.clone().unwrap_or_else(|| branch.to_string()),
        override_commit: None,
        commit,
        layers: Default::default(),
        kargs: Some(kargs),
        stage: false,
        layers_built: false,
        reset: None,
        image_digest: None,
    };
    let lock = sysroot.lock(LockWait::NoWait)?;
    let deployed = sysroot.record(HistoryKind::InstallToDisk, || {
        deploy(&sysroot, &lock, &first, &Unobserved)
    })?;
    let deployment_dir = sysroot.deployment_path(&deployed.deployment);
    write_fstab(&deployment_dir, &root.uuid, &esp.uuid)?;
    // The first boot makes the machine's identity.
    let machine_id = deployment_dir.join("etc/machine-id");
    if machine_id.exists() {
        std::fs::write(&machine_id, b"")?;
    }
    loader::install(opts.bootloader, &esp_dir, &deployment_dir, &mnt, &root.uuid)?;
    arbor_core::fsutil::sync_filesystem(arbor_core::fsutil::open_dir(&mnt)?)?;
    disk::fill_esp(&esp_loop.dev, &esp_dir).context("writing the ESP")?;
    drop(lock);
    drop(sysroot);
    drop(mounted);
    drop((esp_loop, root_loop));
    if target.block {
        // Let the kernel see the new partitions (best effort: it may be busy).
        let _ = std::process::Command::new("partx")
            .arg("-u")
            .arg(&target.path)
            .status();
    }
    Ok(InstallReport {
        target: target.path,
        bootloader: opts.bootloader,
        esp,
        root,
        deployment: deployed.deployment,
    })
}

/// The deployment's `/etc/fstab`: the root and the ESP by UUID.
fn write_fstab(deployment: &Path, root_uuid: &str, esp_uuid: &str) -> Result<()> {
    let text = format!(
        "# Written by arbor install: the root file system (the sysroot) and the ESP.\n\
         UUID={root_uuid} / ext4 defaults 0 1\n\
         UUID={esp_uuid} /boot/efi vfat umask=0077,shortname=winnt 0 2\n"
    );
    let etc = arbor_core::fsutil::open_dir(&deployment.join("etc"))?;
    arbor_core::fsutil::atomic_write(
        std::os::fd::AsFd::as_fd(&etc),
        "fstab",
        text.as_bytes(),
        0o644,
    )?;
    Ok(())
}
