//! Refs: names pointing at commits (`refs/heads/<name>`, `refs/remotes/<remote>/<name>`),
//! and resolving what a user types (`REF`, `remote:REF`, a commit id, `REV^`).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use anyhow::{Context, Result, bail};
use rustix::fs::{self as rfs, Mode};
use serde::Serialize;

use super::{ObjectId, ObjectKind, Repo};
use arbor_core::fsutil;

/// A validated ref name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RefName {
    /// The remote, for refs fetched from one (`remote:name`).
    pub remote: Option<String>,
    /// Slash-separated name, such as `debian/bookworm/x86_64`.
    pub name: String,
}

use arbor_core::names::valid_component;

impl RefName {
    /// Parses `name` or `remote:name`; components are `[A-Za-z0-9_][A-Za-z0-9._-]*`,
    /// which rules out `..`, empty components and absolute names.
    pub fn parse(s: &str) -> Result<Self> {
        let (remote, name) = match s.split_once(':') {
            Some((r, n)) => (Some(r), n),
            None => (None, s),
        };
        if let Some(r) = remote {
            if !valid_component(r) {
                bail!("'{s}': remote name '{r}' is not valid");
            }
        }
        if name.is_empty() || !name.split('/').all(valid_component) {
            bail!(
                "'{s}' is not a valid ref name: use components of letters, digits, '.', '_', '-' separated by '/'"
            );
        }
        Ok(RefName {
            remote: remote.map(str::to_string),
            name: name.to_string(),
        })
    }

    /// Path below the repository (`refs/heads/…` or `refs/remotes/<r>/…`).
    pub fn relative_path(&self) -> String {
        match &self.remote {
            Some(r) => format!("refs/remotes/{r}/{}", self.name),
            None => format!("refs/heads/{}", self.name),
        }
    }
}

impl std::fmt::Display for RefName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.remote {
            Some(r) => write!(f, "{r}:{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl Repo {
    /// The commit a ref points at, or `None` when the ref does not exist.
    pub fn read_ref(&self, r: &RefName) -> Result<Option<ObjectId>> {
        let rel = r.relative_path();
        match fsutil::read_bounded_at(self.root_fd(), &rel, 1024) {
            Ok(b) => {
                let text = String::from_utf8_lossy(&b);
                let id = text
                    .trim()
                    .parse()
                    .with_context(|| format!("ref {r} ({rel}) is damaged"))?;
                Ok(Some(id))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading ref {r}")),
        }
    }

    /// Points `r` at `commit` (or deletes it), atomically and durably. The caller
    /// holds the writer lock (the `_lock` argument proves it) and has published and
    /// synced the objects the ref names.
    pub fn write_ref(
        &self,
        _lock: &arbor_core::lock::WriterLock,
        r: &RefName,
        commit: Option<&ObjectId>,
    ) -> Result<()> {
        let rel = r.relative_path();
        let (dir, leaf) = rel.rsplit_once('/').unwrap();
        let dirfd = self
            .mkdir_p(dir)
            .with_context(|| format!("creating {dir} for ref {r}"))?;
        match commit {
            Some(id) => {
                fsutil::atomic_write(dirfd.as_fd(), leaf, format!("{id}\n").as_bytes(), 0o644)
                    .map_err(|e| super::write_error(e, || format!("writing ref {r}")))
            }
            None => match rfs::unlinkat(&dirfd, leaf, rfs::AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(rfs::fsync(&dirfd)?),
                Err(e) => Err(io::Error::from(e)).with_context(|| format!("deleting ref {r}")),
            },
        }
    }

    fn mkdir_p(&self, rel: &str) -> io::Result<OwnedFd> {
        let mut fd = fsutil::open_dir_at(self.root_fd(), b".")?;
        for c in rel.split('/') {
            match rfs::mkdirat(&fd, c, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            fd = fsutil::open_dir_at(fd.as_fd(), c.as_bytes())?;
        }
        Ok(fd)
    }

    /// Every ref with its commit, sorted: local ones, then remote ones.
    pub fn list_refs(&self) -> Result<Vec<(RefName, ObjectId)>> {
        let mut out = Vec::new();
        let refs = fsutil::open_dir_at(self.root_fd(), b"refs").context("opening refs/")?;
        if let Ok(heads) = fsutil::open_dir_at(refs.as_fd(), b"heads") {
            self.walk_refs(heads, String::new(), None, &mut out)?;
        }
        if let Ok(remotes) = fsutil::open_dir_at(refs.as_fd(), b"remotes") {
            for (name, _) in fsutil::list_dir(remotes.as_fd())? {
                let remote = fsutil::show(&name);
                if let Ok(d) = fsutil::open_dir_at(remotes.as_fd(), &name) {
                    self.walk_refs(d, String::new(), Some(&remote), &mut out)?;
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn walk_refs(
        &self,
        dir: OwnedFd,
        prefix: String,
        remote: Option<&str>,
        out: &mut Vec<(RefName, ObjectId)>,
    ) -> Result<()> {
        for (name, ft) in fsutil::list_dir(dir.as_fd())? {
            let name = fsutil::show(&name);
            if name.starts_with('.') {
                continue; // temporaries of atomic_write
            }
            let full = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if ft == rfs::FileType::Directory {
                let sub = fsutil::open_dir_at(dir.as_fd(), name.as_bytes())?;
                self.walk_refs(sub, full, remote, out)?;
            } else {
                let r = RefName {
                    remote: remote.map(str::to_string),
                    name: full,
                };
                if let Some(id) = self.read_ref(&r)? {
                    out.push((r, id));
                }
            }
        }
        Ok(())
    }

    /// Resolves what a user typed to a commit that exists: a full commit id, a ref,
    /// `remote:ref`, each optionally followed by `^` (parent), repeatable.
    pub fn resolve_rev(&self, rev: &str) -> Result<ObjectId> {
        let base = rev.trim_end_matches('^');
        let ups = rev.len() - base.len();
        let mut id = if let Ok(id) = base.parse::<ObjectId>() {
            if !self.has_object(&id, ObjectKind::Commit) {
                bail!(
                    "commit {id} is not in the repository {}",
                    self.path().display()
                );
            }
            id
        } else {
            let r = RefName::parse(base)?;
            self.read_ref(&r)?.with_context(|| {
                format!(
                    "no ref or commit named '{base}' in {}; 'arbor refs' lists them",
                    self.path().display()
                )
            })?
        };
        for _ in 0..ups {
            let c = self.load_commit(&id)?;
            id = c
                .parent
                .with_context(|| format!("commit {} has no parent ('{rev}')", id.short()))?;
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names() {
        for ok in ["a", "debian/bookworm/x86_64", "origin:stable", "a_b-c.d"] {
            RefName::parse(ok).unwrap();
        }
        for bad in [
            "", "/a", "a/", "a//b", "../x", "a/../b", ".hidden", "a b", "x.lock", ":a", "r:",
        ] {
            assert!(RefName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            RefName::parse("o:x/y").unwrap().relative_path(),
            "refs/remotes/o/x/y"
        );
    }
}
