//! The `/var` folders of a stateroot: the shared `var`, and `var.N` that a reset gives a
//! deployment of its own (docs/reset.md). Made aside and renamed into place; deleted
//! once no deployment uses them.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::origin::valid_var_name;
use super::{Deployment, Sysroot};
use arbor_core::fsutil;

/// The paths the policy keeps across `reset --level all`, relative to `/var`: each
/// either below `/var` or a top-level link of the image into it (`/home` is
/// `var/home` in an arbor image).
pub fn kept_in_var(deployment_root: &Path, keep: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for k in keep {
        let rel = k.trim_start_matches('/').trim_end_matches('/');
        if rel.is_empty()
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("reset_keep: '{k}' is not a plain absolute path");
        }
        let in_var = match rel.strip_prefix("var/") {
            Some(r) => r.to_string(),
            None => {
                let (top, rest) = rel.split_once('/').unwrap_or((rel, ""));
                let link = std::fs::read_link(deployment_root.join(top)).ok();
                let target = link
                    .as_ref()
                    .and_then(|l| l.to_str())
                    .map(|l| l.trim_start_matches('/'));
                match target.and_then(|t| t.strip_prefix("var/")) {
                    Some(t) if rest.is_empty() => t.to_string(),
                    Some(t) => format!("{t}/{rest}"),
                    None => bail!(
                        "reset_keep: '{k}' is not below /var, so nothing of it lives on a reset"
                    ),
                }
            }
        };
        out.push(in_var);
    }
    Ok(out)
}

/// A new `/var` folder name for stateroot `os`: `var.1`, `var.2`, … not yet used.
fn fresh_var_name(sysroot: &Sysroot, os: &str) -> String {
    let root = sysroot.stateroot(os);
    (1..)
        .map(|n| format!("var.{n}"))
        .find(|n| !root.join(n).exists() && !root.join(format!(".{n}.tmp")).exists())
        .unwrap()
}

/// Makes the new `/var` folder: empty, or with `keep` copied from `from` (metadata
/// and all), written aside, synced and renamed into place.
pub fn make_var(
    sysroot: &Sysroot,
    os: &str,
    from: &str,
    keep: &[String],
) -> Result<(String, Vec<String>)> {
    let root = sysroot.stateroot(os);
    let name = fresh_var_name(sysroot, os);
    let tmp = root.join(format!(".{name}.tmp"));
    let root_fd = fsutil::open_dir(&root)?;
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let old = fsutil::open_dir(&root.join(from))
        .with_context(|| format!("opening {}", root.join(from).display()))?;
    let new = fsutil::open_dir(&tmp)?;
    let mut kept = Vec::new();
    for k in keep {
        let (dir, leaf) = k.rsplit_once('/').unwrap_or(("", k));
        let Ok(src) = fsutil::open_beneath(old.as_fd(), dir) else {
            continue;
        };
        if fsutil::kind_at(src.as_fd(), leaf)?.is_none() {
            continue;
        }
        let dst = fsutil::mkdir_p_beneath(new.as_fd(), dir)?;
        fsutil::copy_entry_at(src.as_fd(), leaf, dst.as_fd(), leaf)
            .with_context(|| format!("keeping /var/{k}"))?;
        kept.push(k.clone());
    }
    let st = rustix::fs::fstat(&old)?;
    let meta = fsutil::meta_from_stat(&st, fsutil::read_xattrs_fd(old.as_fd())?);
    fsutil::apply_meta_fd(new.as_fd(), &meta)?;
    fsutil::sync_filesystem(&new).context("syncing the new /var")?;
    std::fs::rename(&tmp, root.join(&name))?;
    rustix::fs::fsync(&root_fd)?;
    Ok((name, kept))
}

/// Removes the `/var` folders of stateroot `os` that no deployment in `live` uses,
/// once some deployment exists (what a reset kept for its rollback goes with it), and
/// what a crashed reset left (`.var.N.tmp`).
pub fn remove_unused_vars(sysroot: &Sysroot, os: &str, live: &[Deployment]) -> Result<Vec<String>> {
    let mine: Vec<&Deployment> = live.iter().filter(|d| d.os == os).collect();
    if mine.is_empty() {
        return Ok(Vec::new());
    }
    let root = sysroot.stateroot(os);
    let mut removed = Vec::new();
    for e in std::fs::read_dir(&root)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let leftover = name.starts_with(".var.") && name.ends_with(".tmp");
        if !(valid_var_name(&name) || leftover)
            || !e.file_type()?.is_dir()
            || mine.iter().any(|d| d.origin.var_dir() == name)
        {
            continue;
        }
        fsutil::remove_tree(&e.path())
            .with_context(|| format!("removing {}", e.path().display()))?;
        removed.push(format!("{os}/{name}"));
    }
    Ok(removed)
}
