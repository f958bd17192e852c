//! `compose tree`: an image built from a treefile with Debian's own tools.
//!
//! mmdebstrap builds the root from the package set (apt resolves, dpkg installs and
//! runs the maintainer scripts). arbor then applies the treefile's `/etc` files,
//! units, exclusions and postprocess scripts, strips what differs from build to
//! build (machine-id, ssh host keys, backup files), shapes the tree as every image
//! is shaped ([`crate::postprocess`]) and commits it with its package list.
//! Downloaded packages are kept in a cache folder between composes.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use arbor_core::fsutil;
use arbor_core::lock::LockWait;
use arbor_core::progress::{Observer, Progress, checkpoint};
use arbor_packages::treefile::Treefile;
use arbor_store::Repo;
use arbor_store::commit::{CommitOptions, CommitResult, commit_tree};
use arbor_store::refs::RefName;

/// Where downloaded packages are kept between composes, unless told otherwise.
pub const DEFAULT_CACHE: &str = "/var/cache/arbor/debs";

/// How to compose.
#[derive(Clone, Debug)]
pub struct ComposeTreeOptions {
    /// The branch the commit goes to.
    pub branch: RefName,
    /// The package cache folder.
    pub cache_dir: PathBuf,
    /// Counts entries and bytes as the tree is committed.
    pub progress: Option<Arc<Progress>>,
}

/// What a compose made.
#[derive(Clone, Debug, Serialize)]
pub struct ComposeTreeResult {
    /// The commit.
    #[serde(flatten)]
    pub commit: CommitResult,
    /// How many packages the image has.
    pub packages: usize,
    /// The SOURCE_DATE_EPOCH the build used (also the commit's timestamp).
    pub source_date_epoch: i64,
    /// False when no epoch was given, so the build date leaks into the tree.
    pub reproducible: bool,
}

/// The mirror configured for apt on this machine (the first non-security one).
pub fn default_mirror() -> Result<String> {
    let mut candidates = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "sources"))
        {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            for l in text.lines() {
                if let Some(uris) = l.strip_prefix("URIs:") {
                    candidates.extend(uris.split_whitespace().map(str::to_string));
                }
            }
        }
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for l in list.lines() {
        let mut w = l.split_whitespace();
        if w.next() == Some("deb") {
            // Skip an options block such as [signed-by=…].
            let url = w.find(|x| !x.starts_with('[') && !x.ends_with(']'));
            candidates.extend(url.map(str::to_string));
        }
    }
    candidates
        .into_iter()
        .find(|u| !u.contains("security"))
        .context("no Debian mirror configured in /etc/apt; set 'mirror' in the treefile")
}

fn host_architecture() -> Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("running dpkg --print-architecture")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The epoch of the build: SOURCE_DATE_EPOCH, else the treefile's, else now (and
/// then the compose is not reproducible).
fn build_epoch(tf: &Treefile) -> Result<(i64, bool)> {
    if let Ok(s) = std::env::var("SOURCE_DATE_EPOCH") {
        let e = s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH='{s}' is not a number of seconds"))?;
        return Ok((e, true));
    }
    if let Some(e) = tf.source_date_epoch {
        return Ok((e, true));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    Ok((now.as_secs() as i64, false))
}

pub use arbor_packages::{log_excerpt, run_logged};

/// Builds the tree of `tf` and commits it to `opts.branch`.
pub fn compose_tree(
    repo: &Repo,
    tf: &Treefile,
    opts: &ComposeTreeOptions,
    obs: &dyn Observer,
    wait: LockWait<'_>,
) -> Result<ComposeTreeResult> {
    let (epoch, reproducible) = build_epoch(tf)?;
    let mirror = match &tf.mirror {
        Some(m) => m.clone(),
        None => default_mirror()?,
    };
    let arch = match &tf.architecture {
        Some(a) => a.clone(),
        None => host_architecture()?,
    };
    std::fs::create_dir_all(&opts.cache_dir)
        .with_context(|| format!("creating the package cache {}", opts.cache_dir.display()))?;
    let cache = opts.cache_dir.canonicalize()?;
    if cache
        .to_string_lossy()
        .contains(['\'', '"', '\\', '$', '`'])
    {
        bail!(
            "the package cache path {} has shell quoting characters",
            cache.display()
        );
    }
    let work = arbor_store::scratch::ScratchDir::new(repo.path(), "compose-tree")?;
    let root = work.path().join("root");

    obs.task_begin("mmdebstrap");
    obs.message(&format!(
        "building {} from {mirror} {} ({arch})",
        tf.name, tf.suite
    ));
    // In a mount namespace of its own: the /proc, /sys and /dev it mounts in the new
    // root vanish with it even when it is killed, instead of staying mounted on the
    // host and making the scratch folder undeletable.
    let mut mm = Command::new("unshare");
    mm.args(["--mount", "--propagation", "private", "--", "mmdebstrap"])
        .arg("--mode=root")
        .arg("--format=directory")
        .arg(format!("--variant={}", tf.variant))
        .arg(format!("--architectures={arch}"))
        .arg(format!("--components={}", tf.components.join(",")))
        .arg("--skip=download/empty")
        .arg("--skip=essential/unlink")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!(
            "--setup-hook=sync-in '{}' /var/cache/apt/archives/",
            cache.display()
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives '{}'",
            cache.display()
        ))
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("LC_ALL", "C.UTF-8");
    if !tf.packages.is_empty() {
        mm.arg(format!("--include={}", tf.packages.join(",")));
    }
    mm.arg(&tf.suite).arg(&root).arg(&mirror);
    run_logged(
        mm,
        "building the root with mmdebstrap",
        &work.path().join("mmdebstrap.log"),
    )?;
    obs.task_end("mmdebstrap");
    checkpoint(obs)?;

    obs.task_begin("customize");
    customize(&root, tf, epoch, work.path())?;
    obs.task_end("customize");

    obs.task_begin("shape");
    crate::postprocess(&root)?;
    drop_backups(&root)?;
    obs.task_end("shape");

    obs.task_begin("commit");
    let pkgs =
        arbor_store::dpkg::tree_packages(&root)?.context("the built tree has no dpkg database")?;
    let mut metadata = vec![("arbor.treefile.name".to_string(), tf.name.clone())];
    if let Some(v) = &tf.version {
        metadata.push(("version".into(), v.clone()));
    }
    arbor_store::dpkg::add_metadata(&mut metadata, &pkgs);
    let subject = match &tf.version {
        Some(v) => format!("{} {v}", tf.name),
        None => tf.name.clone(),
    };
    let copts = CommitOptions {
        branch: opts.branch.clone(),
        subject,
        body: String::new(),
        metadata,
        timestamp: epoch,
        orphan: false,
        skip_special: true,
        use_cache: false,
        progress: opts.progress.clone(),
    };
    let commit = commit_tree(repo, &root, &copts, wait)?;
    arbor_store::dpkg::remember(repo, &commit.commit, &pkgs);
    obs.task_end("commit");
    Ok(ComposeTreeResult {
        commit,
        packages: pkgs.len(),
        source_date_epoch: epoch,
        reproducible,
    })
}

/// Runs `chroot ROOT ARGS…` with the build's environment, its output in `log`.
fn in_chroot(root: &Path, args: &[&str], epoch: i64, what: &str, log: &Path) -> Result<()> {
    let mut c = Command::new("chroot");
    c.arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8")
        .env("SOURCE_DATE_EPOCH", epoch.to_string());
    run_logged(c, what, log)
}

/// The treefile's changes to the built root, then the removal of what differs from
/// build to build.
fn customize(root: &Path, tf: &Treefile, epoch: i64, work: &Path) -> Result<()> {
    let root_fd = fsutil::open_dir(root)?;
    let r = root_fd.as_fd();
    if !tf.exclude_packages.is_empty() {
        let mut args = vec!["dpkg", "--purge"];
        args.extend(tf.exclude_packages.iter().map(String::as_str));
        in_chroot(
            root,
            &args,
            epoch,
            "purging exclude-packages",
            &work.join("exclude.log"),
        )?;
    }
    for (path, content) in &tf.etc {
        let (dir, leaf) = match path.rsplit_once('/') {
            Some((d, l)) => (format!("etc/{d}"), l),
            None => ("etc".to_string(), path.as_str()),
        };
        let d = fsutil::mkdir_p_beneath(r, &dir)
            .with_context(|| format!("creating /{dir} for etc '{path}'"))?;
        fsutil::remove_at(d.as_fd(), leaf.as_bytes())?;
        fsutil::atomic_write(d.as_fd(), leaf, content.as_bytes(), 0o644)
            .with_context(|| format!("writing /etc/{path}"))?;
    }
    if !tf.units.is_empty() {
        let mut c = Command::new("systemctl");
        c.arg(format!("--root={}", root.display()))
            .arg("enable")
            .args(&tf.units);
        run_logged(c, "enabling units", &work.join("units.log"))?;
    }
    let tmp = fsutil::mkdir_p_beneath(r, "tmp")?;
    for (i, script) in tf.postprocess.iter().enumerate() {
        let name = format!("arbor-postprocess-{i}.sh");
        fsutil::atomic_write(tmp.as_fd(), &name, script.as_bytes(), 0o700)?;
        let inside = format!("/tmp/{name}");
        let r = in_chroot(
            root,
            &["/bin/sh", "-e", &inside],
            epoch,
            &format!("postprocess script {}", i + 1),
            &work.join(format!("postprocess-{i}.log")),
        );
        fsutil::remove_at(tmp.as_fd(), name.as_bytes())?;
        r?;
    }
    // Per-machine identity is made at first boot, not shipped.
    if fsutil::kind_at(r, "etc")? == Some(rustix::fs::FileType::Directory) {
        let etc = fsutil::open_beneath(r, "etc")?;
        if fsutil::kind_at(etc.as_fd(), "machine-id")?.is_some() {
            fsutil::remove_at(etc.as_fd(), b"machine-id")?;
            fsutil::atomic_write(etc.as_fd(), "machine-id", b"", 0o444)?;
        }
        if let Ok(ssh) = fsutil::open_beneath(etc.as_fd(), "ssh") {
            for (name, _) in fsutil::list_dir(ssh.as_fd())? {
                if name.starts_with(b"ssh_host_") {
                    fsutil::remove_at(ssh.as_fd(), &name)?;
                }
            }
        }
    }
    Ok(())
}

/// Removes the backup copies tools leave (`/usr/etc/passwd-`, dpkg's `*-old`): they
/// hold the state before the last change, which depends on the build's order.
pub(crate) fn drop_backups(root: &Path) -> Result<()> {
    let root_fd = fsutil::open_dir(root)?;
    for (dir, is_backup) in [
        (
            "usr/etc",
            (|n: &[u8]| n.ends_with(b"-")) as fn(&[u8]) -> bool,
        ),
        ("usr/lib/arbor/dpkg", |n: &[u8]| n.ends_with(b"-old")),
    ] {
        let Ok(d) = fsutil::open_beneath(root_fd.as_fd(), dir) else {
            continue;
        };
        for (name, kind) in fsutil::list_dir(d.as_fd())? {
            if kind == rustix::fs::FileType::RegularFile && is_backup(&name) {
                fsutil::remove_at(d.as_fd(), &name)?;
            }
        }
    }
    Ok(())
}
