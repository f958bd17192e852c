//! Boot configuration: kernels in `boot/arbor/<os>-<bootcsum>/`, BLS entries in
//! `boot/loader.N/entries/`, and the `boot/loader` symlink that chooses between the two
//! entry sets.
//!
//! A new configuration is written completely into the entry set not in use, synced,
//! and then selected by replacing `boot/loader` with one rename. A crash at any point
//! leaves `boot/loader` naming either the old complete set or the new complete one.

pub mod bls;
pub mod config;
pub mod esp;
pub mod grub;
pub mod grubenv;
pub mod hotfix;
pub mod origin;
pub mod prepare_root;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::fs::{self as rfs, AtFlags};

use arbor_core::error::write_error;
use arbor_core::fsutil;
pub use bls::BlsEntry;
pub use config::{BootConfig, Loader};

/// Where a sysroot's boot entries are, resolved: the reads and renames that do not
/// depend on a whole new order go through this.
#[derive(Clone, Debug)]
pub enum EntryStore {
    /// `boot/loader -> loader.N` in this `boot/` folder.
    Symlinked(PathBuf),
    /// `loader/entries/` on this mounted (or staged) ESP.
    Esp(PathBuf),
}

impl EntryStore {
    /// The entries, the default first.
    pub fn read(&self) -> Result<Vec<(String, BlsEntry)>> {
        match self {
            EntryStore::Symlinked(boot) => read_entries(boot),
            EntryStore::Esp(esp) => esp::read_entries(esp),
        }
    }

    /// Renames one entry file (boot counting, marking a boot good).
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        match self {
            EntryStore::Symlinked(boot) => rename_entry(boot, from, to),
            EntryStore::Esp(esp) => esp::rename_entry(esp, from, to),
        }
    }

    /// The partition root the entries' `linux` and `initrd` paths are relative to, and
    /// below which kernels live in `arbor/`.
    pub fn kernels_root(&self) -> &Path {
        match self {
            EntryStore::Symlinked(p) | EntryStore::Esp(p) => p,
        }
    }
}

/// The kernel and initramfs of a deployment, as composed into
/// `/usr/lib/modules/<kver>/{vmlinuz,initramfs.img}`.
#[derive(Clone, Debug)]
pub struct KernelFiles {
    /// Kernel version (the modules folder's name).
    pub kver: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// The initramfs, when the tree has one.
    pub initramfs: Option<PathBuf>,
}

/// Finds the kernel of a deployed (or checked-out) tree. Symlinks are not followed:
/// a tree whose `/usr/lib/modules` points elsewhere has no kernel.
pub fn find_kernel(root: &Path) -> Result<KernelFiles> {
    let none = || {
        anyhow::anyhow!(
            "the commit has no kernel (no /usr/lib/modules/<version>/vmlinuz); \
             compose it from a tree with linux-image installed"
        )
    };
    let rootfd = fsutil::open_dir(root).with_context(|| format!("opening {}", root.display()))?;
    let Ok(modules) = fsutil::open_beneath(rootfd.as_fd(), "usr/lib/modules") else {
        return Err(none());
    };
    let mut found = Vec::new();
    for (name, _) in fsutil::list_dir(modules.as_fd())? {
        let kver = fsutil::show(&name);
        if let Ok(dir) = fsutil::open_beneath(modules.as_fd(), &kver) {
            if fsutil::kind_at(dir.as_fd(), "vmlinuz")? == Some(rfs::FileType::RegularFile) {
                found.push(kver);
            }
        }
    }
    found.sort();
    let kver = found.pop().ok_or_else(none)?;
    let dir = root.join("usr/lib/modules").join(&kver);
    let kdir = fsutil::open_beneath(rootfd.as_fd(), &format!("usr/lib/modules/{kver}"))?;
    let initramfs = (fsutil::kind_at(kdir.as_fd(), "initramfs.img")?
        == Some(rfs::FileType::RegularFile))
    .then(|| dir.join("initramfs.img"));
    Ok(KernelFiles {
        kver,
        vmlinuz: dir.join("vmlinuz"),
        initramfs,
    })
}

impl KernelFiles {
    /// The same files after their tree moved from `from` to `to`.
    pub fn moved(&self, from: &Path, to: &Path) -> KernelFiles {
        let re = |p: &Path| {
            p.strip_prefix(from)
                .map(|rel| to.join(rel))
                .unwrap_or_else(|_| p.to_path_buf())
        };
        KernelFiles {
            kver: self.kver.clone(),
            vmlinuz: re(&self.vmlinuz),
            initramfs: self.initramfs.as_deref().map(re),
        }
    }
}

/// Where a kernel lives in `boot/`, as BLS paths (relative to the boot partition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledKernel {
    /// `/arbor/<os>-<bootcsum>/vmlinuz-<kver>`.
    pub linux: String,
    /// `/arbor/<os>-<bootcsum>/initramfs-<kver>.img`.
    pub initrd: Option<String>,
    /// The folder below `boot/arbor/`.
    pub folder: String,
}

/// Copies a kernel (and initramfs) into `boot/arbor/<os>-<bootcsum>/` once per content:
/// deployments with the same kernel share the folder. `bootcsum` names that content
/// (the caller knows it from the commit without reading the files). Written under a
/// temporary name, synced and renamed, so the folder is complete whenever it exists.
pub fn install_kernel(
    boot: &Path,
    os: &str,
    k: &KernelFiles,
    bootcsum: &str,
) -> Result<InstalledKernel> {
    let folder = format!("{os}-{bootcsum}");
    let kernel_name = format!("vmlinuz-{}", k.kver);
    let initrd_name = format!("initramfs-{}.img", k.kver);
    let installed = InstalledKernel {
        linux: format!("/arbor/{folder}/{kernel_name}"),
        initrd: k
            .initramfs
            .as_ref()
            .map(|_| format!("/arbor/{folder}/{initrd_name}")),
        folder: folder.clone(),
    };
    let arbor = boot.join("arbor");
    std::fs::create_dir_all(&arbor).with_context(|| format!("creating {}", arbor.display()))?;
    if arbor.join(&folder).is_dir() {
        return Ok(installed);
    }
    let tmp = arbor.join(format!(".{folder}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp)?;
    let copy = |from: &Path, name: &str| -> Result<()> {
        let to = tmp.join(name);
        std::fs::copy(from, &to).map_err(|e| {
            write_error(e, || {
                format!("copying {} into {}", from.display(), to.display())
            })
        })?;
        std::fs::File::open(&to)?.sync_all()?;
        Ok(())
    };
    copy(&k.vmlinuz, &kernel_name)?;
    if let Some(i) = &k.initramfs {
        copy(i, &initrd_name)?;
    }
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, arbor.join(&folder))?;
    std::fs::File::open(&arbor)?.sync_all()?;
    Ok(installed)
}

/// The entry set `boot/loader` points at (0 or 1), if any.
pub fn current_loader(boot: &Path) -> Option<u8> {
    match std::fs::read_link(boot.join("loader")).ok()?.to_str()? {
        "loader.0" => Some(0),
        "loader.1" => Some(1),
        _ => None,
    }
}

/// The entries of the current set, highest version (the default) first.
pub fn read_entries(boot: &Path) -> Result<Vec<(String, BlsEntry)>> {
    let Some(n) = current_loader(boot) else {
        return Ok(Vec::new());
    };
    let dir = boot.join(format!("loader.{n}/entries"));
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".conf") || name.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(e.path())?;
        let entry =
            BlsEntry::parse(&text).with_context(|| format!("boot entry {}", e.path().display()))?;
        out.push((name, entry));
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.1.version));
    Ok(out)
}

/// Boot counting state of an entry, from its file name (systemd-boot's scheme:
/// `name+LEFT[-DONE].conf`; no suffix means the entry is known good).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct Tries {
    /// Boots left before the loader gives up on the entry.
    pub left: u32,
    /// Boots already tried.
    pub done: u32,
}

/// Tries of a new deployment's entry.
pub const NEW_ENTRY_TRIES: Tries = Tries { left: 3, done: 0 };

/// Splits `arbor-2-debian+2-1.conf` into its base name and counter.
pub fn parse_counter(file_name: &str) -> (String, Option<Tries>) {
    let stem = file_name.strip_suffix(".conf").unwrap_or(file_name);
    if let Some((base, counter)) = stem.rsplit_once('+') {
        let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
        if let (Ok(left), Ok(done)) = (left.parse(), done.parse()) {
            return (base.to_string(), Some(Tries { left, done }));
        }
    }
    (stem.to_string(), None)
}

/// File name of an entry: ordered like the entries, named for the OS, with its counter.
pub fn entry_file_name(entry: &BlsEntry, os: &str, tries: Option<Tries>) -> String {
    let base = format!("arbor-{}-{os}", entry.version);
    match tries {
        None => format!("{base}.conf"),
        Some(Tries { left, done: 0 }) => format!("{base}+{left}.conf"),
        Some(Tries { left, done }) => format!("{base}+{left}-{done}.conf"),
    }
}

/// Renames an entry of the current set (what a loader does when it counts a boot, and
/// what boot-complete does to mark it good), durably.
pub fn rename_entry(boot: &Path, from: &str, to: &str) -> Result<()> {
    let n = current_loader(boot).context("no boot entries")?;
    let dir = fsutil::open_dir(&boot.join(format!("loader.{n}/entries")))?;
    rfs::renameat(&dir, from, &dir, to)
        .with_context(|| format!("renaming boot entry {from} to {to}"))?;
    rfs::fsync(&dir)?;
    Ok(())
}

/// Writes `entries` (with their file names) as the new boot configuration and selects
/// it atomically; see the module comment for the order of writes.
pub fn write_entries(boot: &Path, entries: &[(String, BlsEntry)]) -> Result<()> {
    let next = match current_loader(boot) {
        Some(0) => 1,
        _ => 0,
    };
    let set = boot.join(format!("loader.{next}"));
    // Whatever is there is a set no loader uses: an older one, or a crashed write.
    if set.exists() {
        std::fs::remove_dir_all(&set).with_context(|| format!("removing {}", set.display()))?;
    }
    let entries_dir = set.join("entries");
    std::fs::create_dir_all(&entries_dir)
        .map_err(|e| write_error(e, || format!("creating {}", entries_dir.display())))?;
    let dirfd = fsutil::open_dir(&entries_dir)?;
    for (name, entry) in entries {
        fsutil::atomic_write(dirfd.as_fd(), name, entry.to_text().as_bytes(), 0o644)
            .map_err(|e| write_error(e, || format!("writing boot entry {name}")))?;
    }
    rfs::fsync(&dirfd)?;
    rfs::fsync(fsutil::open_dir(&set)?)?;
    let bootfd = fsutil::open_dir(boot)?;
    fsutil::sync_filesystem(&bootfd).context("syncing /boot")?;
    arbor_core::failpoint::hit("boot-entries-written")?;
    let tmp = "loader.tmp";
    let _ = rfs::unlinkat(&bootfd, tmp, AtFlags::empty());
    rfs::symlinkat(format!("loader.{next}").as_str(), &bootfd, tmp)
        .map_err(|e| write_error(e.into(), || "creating boot/loader.tmp".into()))?;
    rfs::renameat(&bootfd, tmp, &bootfd, "loader").context("switching boot/loader")?;
    rfs::fsync(&bootfd).context("syncing /boot")?;
    arbor_core::failpoint::hit("boot-loader-switched")?;
    Ok(())
}

/// Makes sure `boot/` exists (with an empty current entry set on first use).
pub fn init_boot(boot: &Path) -> Result<()> {
    std::fs::create_dir_all(boot.join("arbor"))?;
    if current_loader(boot).is_none() {
        write_entries(boot, &[])?;
    }
    Ok(())
}
/// Checks an OS (stateroot) name: one path component of safe characters.
pub fn check_os_name(name: &str) -> Result<()> {
    if !arbor_core::names::valid_component(name) {
        bail!("'{name}' is not a valid OS name: use letters, digits, '.', '_', '-'");
    }
    Ok(())
}

/// Parses `/arbor/deploy/<os>/deploy/<commit>.<serial>`.
pub fn parse_arbor_karg(value: &str) -> Option<(String, arbor_core::object::ObjectId, u32)> {
    let rest = value.strip_prefix("/arbor/deploy/")?;
    let (os, rest) = rest.split_once("/deploy/")?;
    let (commit, serial) = rest.split_once('.')?;
    Some((os.to_string(), commit.parse().ok()?, serial.parse().ok()?))
}
