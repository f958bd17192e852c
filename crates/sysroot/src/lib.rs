//! The sysroot: the physical root holding the repository, the deployments and `/boot`
//! (`/` on a machine, any folder in tests). Layout (DESIGN §2):
//!
//! ```text
//! arbor/repo/                                  object store (its state-db is ../state.db)
//! arbor/state.db                               state database
//! arbor/lock                                   one mutating transaction at a time
//! arbor/deploy/<os>/deploy/<commit>.<serial>/  a deployment
//! arbor/deploy/<os>/deploy/<commit>.<serial>.origin
//! arbor/deploy/<os>/var/                       the stateroot's shared /var
//! boot/loader -> loader.0 | loader.1           the current BLS entry set
//! boot/arbor/<os>-<bootcsum>/                  kernels and initramfs images
//! ```
//!
//! The boot entries say which deployments exist and in which order; a deployment folder
//! that no entry names is a leftover (of a crash, or of an undeploy) for cleanup.

pub mod arch;
pub mod deploy;
pub mod etc;
pub mod etc_state;
pub mod health;
pub mod kargs;
pub mod live_record;
pub mod plan;
pub mod reset;
pub mod roots;
pub mod select;
pub mod status;
pub mod switch_mark;
pub mod var_dirs;
pub mod verify;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use arbor_boot::{self as boot, BlsEntry};
pub use arbor_boot::{hotfix, origin, prepare_root};
use arbor_core::lock::{LockError, LockWait, WriterLock};
use arbor_statedb::{HistoryKind, StateDb};
use arbor_store::{ObjectId, Repo, RepoConfig};
pub use origin::Origin;

/// The commit metadata key holding the image's manifest digest.
pub const IMAGE_DIGEST_KEY: &str = "arbor.image.digest";

/// Commit metadata naming the base a layered commit was built on.
pub const BASE_KEY: &str = "arbor.base";

/// The base commit of a (possibly layered) commit.
pub fn base_of(repo: &Repo, commit: &ObjectId) -> Result<ObjectId> {
    match repo.load_commit(commit)?.metadata_value(BASE_KEY) {
        Some(hex) => hex
            .parse::<ObjectId>()
            .with_context(|| format!("commit {commit} names a bad base '{hex}'")),
        None => Ok(*commit),
    }
}

/// An open sysroot.
pub struct Sysroot {
    path: PathBuf,
    repo: Repo,
    /// Opened as `/`: the running system's own sysroot.
    running: bool,
    /// Which loader reads the entries, and where the ESP is.
    boot: boot::BootConfig,
    /// The ESP's folder when it is not where `boot` says (an installer stages it).
    esp_override: Option<PathBuf>,
    /// What the running operation touched, for its history row (see
    /// [`Sysroot::set_history_detail`]).
    detail: std::sync::Mutex<Option<String>>,
}

/// One deployment, as the boot entries and its origin file describe it.
#[derive(
    Clone, Debug, Serialize, Deserialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct Deployment {
    /// Position in the boot order: 0 boots by default.
    pub index: u32,
    /// The stateroot.
    pub os: String,
    /// The deployed commit.
    pub commit: ObjectId,
    /// Distinguishes deployments of one commit.
    pub serial: u32,
    /// What it tracks, and whether it is pinned.
    pub origin: Origin,
    /// Kernel arguments besides `arbor=`.
    pub kargs: Vec<String>,
    /// The commit's `version` metadata, if any.
    pub version: Option<String>,
    /// For a layered deployment, the base commit its packages are layered on.
    pub base: Option<ObjectId>,
    /// The manifest digest of the container image it was imported from, if any.
    #[serde(default)]
    pub image: Option<String>,
    /// It has a kept `/usr` hotfix overlay (`usroverlay --hotfix`).
    #[serde(default)]
    pub hotfix: bool,
    /// The kept hotfix's label (`usroverlay --name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotfix_name: Option<String>,
    /// The commit's timestamp.
    pub timestamp: i64,
    /// True for the deployment running now.
    pub booted: bool,
    /// Its kernel, as its boot entry names it.
    pub linux: String,
    /// Its initramfs, as its boot entry names it.
    pub initrd: Option<String>,
    /// Boot counting: `None` once the deployment booted well.
    pub tries: Option<boot::Tries>,
    /// Its entry's file name in the current set (empty for a staged deployment).
    #[serde(default)]
    pub entry_file: String,
}

impl Deployment {
    /// True when both name the same deployment folder.
    pub fn same(&self, other: &Deployment) -> bool {
        self.os == other.os && self.commit == other.commit && self.serial == other.serial
    }
}

#[cfg(test)]
impl Deployment {
    /// A deployment of stateroot `os` at commit `[n; 32]` with version `n`, every
    /// other field empty: what the unit tests of the boot-order and role rules need.
    pub(crate) fn for_test(n: u8, booted: bool) -> Deployment {
        Deployment {
            index: 0,
            os: "os".into(),
            commit: ObjectId([n; 32]),
            serial: 0,
            origin: Origin::default(),
            kargs: Vec::new(),
            version: Some(n.to_string()),
            base: None,
            image: None,
            hotfix: false,
            hotfix_name: None,
            timestamp: 0,
            booted,
            linux: String::new(),
            initrd: None,
            tries: None,
            entry_file: String::new(),
        }
    }
}

impl Deployment {
    /// How GRUB's menu shows and boots it (and its environment block names it).
    pub fn grub_entry(&self) -> boot::grub::MenuEntry {
        let title = format!(
            "{} {} (arbor, {})",
            self.os,
            self.version.as_deref().unwrap_or(""),
            self.commit.short()
        )
        .replace("  ", " ");
        let mut options = vec![format!("arbor={}", self.arbor_karg())];
        options.extend(self.kargs.iter().cloned());
        boot::grub::MenuEntry {
            id: format!("{}/{}", self.os, self.dir_name()),
            title,
            linux: self.linux.clone(),
            initrd: self.initrd.clone(),
            options,
        }
    }

    /// `<commit>.<serial>`, the folder's name.
    pub fn dir_name(&self) -> String {
        format!("{}.{}", self.commit, self.serial)
    }

    /// The value of `arbor=` on the kernel command line.
    pub fn arbor_karg(&self) -> String {
        format!("/arbor/deploy/{}/deploy/{}", self.os, self.dir_name())
    }
}

/// Where the sysroot named `path` really is: on a booted arbor system `/` is the
/// deployment and the physical root is at `/sysroot`.
pub fn physical_root(path: &Path) -> PathBuf {
    if path == Path::new("/")
        && !path.join("arbor/repo/config").exists()
        && Path::new("/sysroot/arbor/repo/config").exists()
    {
        PathBuf::from("/sysroot")
    } else {
        path.to_path_buf()
    }
}

pub use arbor_boot::{check_os_name, parse_arbor_karg};

impl Sysroot {
    /// Creates the layout in `path` (which may exist): repository, state database,
    /// `arbor/deploy`, and `boot/` with an empty entry set.
    pub fn init_fs(path: &Path) -> Result<Sysroot> {
        std::fs::create_dir_all(path.join("arbor/deploy"))
            .with_context(|| format!("creating {}/arbor", path.display()))?;
        let repo_path = path.join("arbor/repo");
        if !repo_path.join("config").exists() {
            let config = RepoConfig {
                state_db: "../state.db".into(),
                owner_lock: Some("../lock".into()),
                ..Default::default()
            };
            Repo::init_with_config(&repo_path, &config)?;
        }
        StateDb::open(&path.join("arbor/state.db"))?;
        boot::init_boot(&path.join("boot"))?;
        Sysroot::open(path)
    }

    /// Opens an initialized sysroot. `/` means the running system's: on a booted
    /// arbor system `/` is the deployment and the physical root is at `/sysroot`.
    pub fn open(path: &Path) -> Result<Sysroot> {
        let running = path == Path::new("/");
        let path = physical_root(path);
        let path = path.as_path();
        if !path.join("arbor/repo/config").exists() {
            bail!(
                "{} is not an arbor sysroot; create one with 'arbor admin init-fs {}'",
                path.display(),
                path.display()
            );
        }
        let repo = Repo::open(&path.join("arbor/repo"))?;
        let boot = boot::BootConfig::read(path)?;
        Ok(Sysroot {
            path: path.to_path_buf(),
            repo,
            running,
            boot,
            esp_override: None,
            detail: std::sync::Mutex::new(None),
        })
    }

    /// The same sysroot with its ESP at `dir` for now: how `install to-disk` writes the
    /// ESP's content into a folder before it copies it onto the FAT partition.
    pub fn with_esp_dir(mut self, dir: &Path) -> Sysroot {
        self.esp_override = Some(dir.to_path_buf());
        self
    }

    /// Which loader reads the entries.
    pub fn loader(&self) -> boot::Loader {
        self.boot.loader
    }

    /// The ESP's folder: where the running system mounts it, or the same path below
    /// a folder sysroot.
    pub fn esp_dir(&self) -> PathBuf {
        match &self.esp_override {
            Some(d) => d.clone(),
            None if self.running => PathBuf::from(&self.boot.esp),
            None => self.path.join(self.boot.esp.trim_start_matches('/')),
        }
    }

    /// The file a boot entry's `linux` or `initrd` line names: on the ESP for
    /// systemd-boot, below `boot/` for the other loaders.
    pub fn entry_file_path(&self, name: &str) -> PathBuf {
        let dir = match self.boot.loader {
            boot::Loader::SystemdBoot => self.esp_dir(),
            boot::Loader::Bls | boot::Loader::Grub => self.boot_dir(),
        };
        dir.join(name.trim_start_matches('/'))
    }

    /// Where the boot entries are.
    pub fn entry_store(&self) -> boot::EntryStore {
        match self.boot.loader {
            boot::Loader::SystemdBoot => boot::EntryStore::Esp(self.esp_dir()),
            boot::Loader::Bls | boot::Loader::Grub => boot::EntryStore::Symlinked(self.boot_dir()),
        }
    }

    /// The sysroot folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its object store.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// The state database (history, update state, package lists, inode cache): the
    /// one place its path is worked out, from the repository's configuration.
    pub fn state_db_path(&self) -> PathBuf {
        self.repo.state_db_path()
    }

    /// `boot/`.
    pub fn boot_dir(&self) -> PathBuf {
        self.path.join("boot")
    }

    /// `arbor/deploy/<os>`, the stateroot.
    pub fn stateroot(&self, os: &str) -> PathBuf {
        self.path.join("arbor/deploy").join(os)
    }

    /// A deployment's folder.
    pub fn deployment_path(&self, d: &Deployment) -> PathBuf {
        self.stateroot(&d.os).join("deploy").join(d.dir_name())
    }

    /// The deployment's origin file, beside its folder.
    pub fn origin_path(&self, d: &Deployment) -> PathBuf {
        self.stateroot(&d.os)
            .join("deploy")
            .join(format!("{}.origin", d.dir_name()))
    }

    /// Where a staged deployment is recorded until it is finalized: under `run/`, so
    /// on a real system (tmpfs `/run`) a stage that was never finalized is forgotten
    /// at the next boot, and its folder is removed as a leftover.
    pub fn staged_path(&self) -> PathBuf {
        self.run_dir().join("arbor/staged-deployment")
    }

    /// State that must not survive a reboot: the real `/run` (a tmpfs) on a running
    /// system, `run/` below the sysroot folder otherwise.
    pub fn run_dir(&self) -> PathBuf {
        if self.running {
            PathBuf::from("/run")
        } else {
            self.path.join("run")
        }
    }

    /// Where a deployment's kept `/usr` hotfix overlay lives (`usroverlay --hotfix`):
    /// beside the deployment, so prepare-root mounts it again at every boot of it.
    pub fn hotfix_dir(&self, d: &Deployment) -> PathBuf {
        self.stateroot(&d.os).join("hotfix").join(d.dir_name())
    }

    /// True when this is the running system's sysroot (opened as `/`).
    pub fn is_running_system(&self) -> bool {
        self.running
    }

    /// The staged deployment, if one waits to be finalized.
    pub fn staged(&self) -> Result<Option<Deployment>> {
        match std::fs::read_to_string(self.staged_path()) {
            Ok(text) => Ok(Some(
                serde_json::from_str(&text).context("reading the staged deployment record")?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading the staged deployment record"),
        }
    }

    /// Records `d` as staged (atomically), or clears the record.
    pub fn set_staged(&self, _lock: &WriterLock, d: Option<&Deployment>) -> Result<()> {
        let path = self.staged_path();
        let dir = path.parent().unwrap();
        match d {
            Some(d) => {
                std::fs::create_dir_all(dir)?;
                let fd = arbor_core::fsutil::open_dir(dir)?;
                arbor_core::fsutil::atomic_write(
                    std::os::fd::AsFd::as_fd(&fd),
                    "staged-deployment",
                    serde_json::to_string(d)?.as_bytes(),
                    0o644,
                )?;
            }
            None => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("removing the staged deployment record"),
            },
        }
        Ok(())
    }

    /// Creates a stateroot (`arbor/deploy/<os>/{deploy,var}`).
    pub fn os_init(&self, os: &str) -> Result<()> {
        check_os_name(os)?;
        let root = self.stateroot(os);
        for d in ["deploy", "var"] {
            std::fs::create_dir_all(root.join(d))
                .with_context(|| format!("creating {}/{d}", root.display()))?;
        }
        Ok(())
    }

    /// The stateroot to use when the user named none: the only one there is.
    pub fn default_os(&self) -> Result<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path.join("arbor/deploy"))?
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        match names.len() {
            1 => Ok(names.pop().unwrap()),
            0 => bail!("no stateroot yet: create one with 'arbor admin os-init NAME'"),
            _ => bail!(
                "several stateroots ({}): choose one with --os",
                names.join(", ")
            ),
        }
    }

    /// Takes the sysroot lock: one mutating transaction at a time.
    pub fn lock(&self, wait: LockWait<'_>) -> Result<WriterLock> {
        let arbor = self.path.join("arbor");
        let dir = arbor_core::fsutil::open_dir(&arbor)?;
        let lock = WriterLock::acquire(std::os::fd::AsFd::as_fd(&dir), &arbor, "lock", wait)
            .map_err(|e| match e {
                LockError::Held(s) => anyhow::Error::new(s),
                e => anyhow::Error::new(e),
            })?;
        self.ensure_roots(&lock);
        self.heal_grub();
        Ok(lock)
    }

    /// Runs one mutating operation, recording it (who, what, result) in the history of
    /// the state database.
    pub fn record<T>(&self, kind: HistoryKind, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        self.record_as(kind, &command, rustix::process::getuid().as_raw(), f)
    }

    /// [`Sysroot::record`] with who asked said explicitly: the daemon names the D-Bus
    /// caller and its uid rather than its own command line and root.
    pub fn record_as<T>(
        &self,
        kind: HistoryKind,
        command: &str,
        uid: u32,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let db = StateDb::open(&self.state_db_path())?;
        let id = db.begin_history_row(kind, command, uid)?;
        self.take_history_detail();
        let result = f();
        if let Some(detail) = self.take_history_detail() {
            let _ = db.set_history_detail(id, &detail);
        }
        let _ = db.end_history_row(
            id,
            &result.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")),
        );
        result
    }

    /// Says what the operation being recorded touched (the paths `usroverlay --add`
    /// wrote, ...): the operation knows it, and the CLI and the daemon record alike.
    pub fn set_history_detail(&self, detail: String) {
        *self.detail.lock().unwrap_or_else(|e| e.into_inner()) = Some(detail);
    }

    fn take_history_detail(&self) -> Option<String> {
        self.detail.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Records an event that happened rather than an operation run (a failed health
    /// check, an automatic rollback); best effort, as it only informs.
    pub fn note(&self, kind: HistoryKind, result: &Result<(), String>) {
        let _ = self.record(kind, || result.clone().map_err(anyhow::Error::msg));
    }

    /// Makes `order` the boot configuration: one entry each, in that order (index 0
    /// boots by default), written as a new entry set and selected atomically.
    pub fn write_boot_order(&self, _lock: &WriterLock, order: &[Deployment]) -> Result<()> {
        if self.boot.loader == boot::Loader::SystemdBoot {
            let wanted: Vec<_> = order
                .iter()
                .enumerate()
                .map(|(i, d)| (self.entry_for(d, i, order.len()), d.tries, d.os.clone()))
                .collect();
            return boot::esp::write_entries(&self.esp_dir(), &wanted);
        }
        let entries: Vec<(String, BlsEntry)> = order
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let e = self.entry_for(d, i, order.len());
                (boot::entry_file_name(&e, &d.os, d.tries), e)
            })
            .collect();
        boot::write_entries(&self.boot_dir(), &entries)?;
        if self.boot.loader == boot::Loader::Grub {
            self.write_grub(order)?;
        }
        Ok(())
    }

    /// GRUB's side of a boot order: the count for the new default first, then the
    /// grub.cfg that names it (a cut between leaves the old grub.cfg, which counts
    /// nothing of it). The BLS entries, written before, are the record; a grub.cfg
    /// that a cut left behind them is written again by the next transaction
    /// ([`Sysroot::lock`]).
    fn write_grub(&self, order: &[Deployment]) -> Result<()> {
        if let Some(first) = order.first() {
            let dir = self.boot_dir().join("grub");
            let env = boot::grubenv::read(&dir)?;
            let id = first.grub_entry().id;
            let new = boot::grubenv::for_default(&env, &id, first.tries.map(|t| t.left));
            if new != env {
                boot::grubenv::write(&dir, &new)?;
                arbor_core::failpoint::hit("grubenv-written")?;
            }
        }
        let entries: Vec<_> = order.iter().map(Deployment::grub_entry).collect();
        boot::grub::write_config(&self.boot_dir(), &entries)
    }

    /// Completes a switch of GRUB's configuration that a crash interrupted: when
    /// grub.cfg's default is not the first deployment of the boot entries, both are
    /// written again from the entries. Best effort, as GRUB keeps booting the old
    /// default meanwhile.
    fn heal_grub(&self) {
        if self.boot.loader != boot::Loader::Grub {
            return;
        }
        let healed = (|| -> Result<bool> {
            let order = self.deployments()?;
            let Some(first) = order.first() else {
                return Ok(false);
            };
            let cfg =
                std::fs::read_to_string(self.boot_dir().join("grub/grub.cfg")).unwrap_or_default();
            if boot::grub::default_of(&cfg).as_deref() == Some(&first.grub_entry().id) {
                return Ok(false);
            }
            self.write_grub(&order)?;
            Ok(true)
        })();
        match healed {
            Ok(true) => tracing::info!("grub.cfg written again after an interrupted switch"),
            Ok(false) => {}
            Err(e) => tracing::warn!("checking grub.cfg against the boot entries: {e:#}"),
        }
    }

    /// `(os, commit, serial)` of the running deployment: from `arbor=` on the kernel
    /// command line (or the mark of a soft-reboot, [`switch_mark`]), when this sysroot
    /// is the running system's (`/`). `ARBOR_CMDLINE`
    /// names a file to read instead, for any sysroot: what a chroot, a test or the
    /// initramfs uses to say which deployment runs.
    pub fn booted_id(&self) -> Option<(String, ObjectId, u32)> {
        let cmdline = match std::env::var_os("ARBOR_CMDLINE") {
            Some(file) => std::fs::read_to_string(file).ok()?,
            // After a soft-reboot the kernel's command line still names the deployment
            // the loader booted; the mark names the one now at `/`.
            None if self.running => match self.soft_rebooted_karg() {
                Some(value) => format!("arbor={value}"),
                None => std::fs::read_to_string("/proc/cmdline").ok()?,
            },
            None => return None,
        };
        cmdline
            .split_whitespace()
            .find_map(|a| a.strip_prefix("arbor="))
            .and_then(parse_arbor_karg)
    }

    /// The deployments in boot order, read from the current boot entries.
    pub fn deployments(&self) -> Result<Vec<Deployment>> {
        let booted = self.booted_id();
        let mut out = Vec::new();
        for (name, entry) in self.entry_store().read()? {
            let Some((os, commit, serial)) = entry.arbor_path().and_then(parse_arbor_karg) else {
                continue; // not ours
            };
            let mut d = Deployment {
                index: out.len() as u32,
                os,
                commit,
                serial,
                origin: Origin::default(),
                kargs: entry.user_kargs(),
                version: None,
                base: None,
                image: None,
                hotfix: false,
                hotfix_name: None,
                timestamp: 0,
                booted: false,
                linux: entry.linux.clone(),
                initrd: entry.initrd.clone(),
                tries: boot::parse_counter(&name).1,
                entry_file: name.clone(),
            };
            d.booted = booted
                .as_ref()
                .is_some_and(|(o, c, s)| *o == d.os && *c == d.commit && *s == d.serial);
            d.hotfix = self.hotfix_dir(&d).join("upper").is_dir();
            if d.hotfix {
                d.hotfix_name = hotfix::OverlayInfo::read(&self.hotfix_dir(&d))
                    .ok()
                    .and_then(|i| i.name);
            }
            let origin_path = self.origin_path(&d);
            d.origin = std::fs::read_to_string(&origin_path)
                .with_context(|| format!("boot entry {name}: reading {}", origin_path.display()))
                .and_then(|t| Origin::parse(&t))?;
            if let Ok(c) = self.repo.load_commit(&d.commit) {
                d.version = c.metadata_value("version").map(str::to_string);
                d.base = c.metadata_value(BASE_KEY).and_then(|h| h.parse().ok());
                d.timestamp = c.timestamp;
                d.image = c.metadata_value(IMAGE_DIGEST_KEY).map(str::to_string);
            }
            out.push(d);
        }
        Ok(out)
    }

    /// The entry a deployment gets at position `index` of `count`.
    pub fn entry_for(&self, d: &Deployment, index: usize, count: usize) -> BlsEntry {
        let version = d.version.as_deref().unwrap_or("");
        let mut options = vec![format!("arbor={}", d.arbor_karg())];
        options.extend(d.kargs.iter().cloned());
        BlsEntry {
            title: format!("{} {version} (arbor, {})", d.os, d.commit.short()).replace("  ", " "),
            version: (count - index) as u32,
            sort_key: format!("arbor-{}", d.os),
            linux: d.linux.clone(),
            initrd: d.initrd.clone(),
            options,
        }
    }
}
