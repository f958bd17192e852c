//! Reading a method's `a{sv}` options: unknown keys and wrong types are
//! `InvalidArgs` naming the key, so a client learns its mistake from the reply.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use zbus::zvariant::{Fd, OwnedValue};

use super::DaemonError;
use arbor_live::{UsrOverlayRequest, overlay};

/// The most entries an options dictionary may have: every method knows a handful.
pub const MAX_OPTIONS: usize = 32;

/// The most items an array argument may hold (packages, kernel arguments, paths):
/// far above any real request, and it bounds what one call can make the daemon do.
pub const MAX_ITEMS: usize = 1024;

/// A name the caller sent, quoted when it is short and printable; otherwise only its
/// length, so an error never echoes (or floods a log with) what a client made up.
pub fn shown(name: &str) -> String {
    if name.len() <= 64 && name.chars().all(|c| !c.is_control()) {
        format!("'{name}'")
    } else {
        format!("of {} bytes", name.len())
    }
}

/// Refuses, with `InvalidArgs` naming the limit, an array of more than [`MAX_ITEMS`].
pub fn check_count(what: &str, n: usize) -> Result<(), DaemonError> {
    if n > MAX_ITEMS {
        return Err(DaemonError::InvalidArgs(format!(
            "{what}: at most {MAX_ITEMS} items"
        )));
    }
    Ok(())
}

/// Options every method that starts a transaction takes: "wait-for-start" (b), the
/// work waits for the caller's Start on the transaction object (docs/dbus.md).
pub const TRANSACTION_OPTIONS: &[&str] = &["wait-for-start"];

/// A method's `a{sv}` options, checked against the keys it knows.
pub struct Options(HashMap<String, OwnedValue>);

impl Options {
    /// Takes the options, refusing a key not in `known`.
    /// More than [`MAX_OPTIONS`] entries is refused before any is looked at; an unknown
    /// key is named only when it is short and printable.
    pub fn parse(map: HashMap<String, OwnedValue>, known: &[&str]) -> Result<Self, DaemonError> {
        if map.len() > MAX_OPTIONS {
            return Err(DaemonError::InvalidArgs(format!(
                "at most {MAX_OPTIONS} options are taken"
            )));
        }
        if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(DaemonError::InvalidArgs(format!(
                "unknown option {} (known: {})",
                shown(k),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        Ok(Options(map))
    }

    /// Takes a transaction method's options: `known` and the options every
    /// transaction takes ([`TRANSACTION_OPTIONS`]).
    pub fn for_transaction(
        map: HashMap<String, OwnedValue>,
        known: &[&str],
    ) -> Result<Self, DaemonError> {
        let all: Vec<&str> = known.iter().chain(TRANSACTION_OPTIONS).copied().collect();
        Self::parse(map, &all)
    }

    /// The value of `key` as a `T`, if given; `want` names the type for the error.
    pub fn typed<T>(&self, key: &str, want: &str) -> Result<Option<T>, DaemonError>
    where
        T: TryFrom<OwnedValue>,
    {
        let Some(v) = self.0.get(key) else {
            return Ok(None);
        };
        let v = v.try_clone().map_err(zbus::Error::from)?;
        T::try_from(v)
            .map(Some)
            .map_err(|_| DaemonError::InvalidArgs(format!("option '{key}' must be {want}")))
    }

    /// A string option (`s`).
    pub fn string(&self, key: &str) -> Result<Option<String>, DaemonError> {
        let v: Option<String> = self.typed(key, "a string (s)")?;
        if let Some(s) = &v {
            check_args(&format!("option '{key}'"), [s.as_str()])?;
        }
        Ok(v)
    }

    /// A boolean option (`b`).
    pub fn bool(&self, key: &str) -> Result<Option<bool>, DaemonError> {
        self.typed(key, "a boolean (b)")
    }

    /// A string array option (`as`).
    pub fn strings(&self, key: &str) -> Result<Option<Vec<String>>, DaemonError> {
        let v: Option<Vec<String>> = self.typed(key, "an array of strings (as)")?;
        if let Some(list) = &v {
            check_count(&format!("option '{key}'"), list.len())?;
        }
        if let Some(list) = &v {
            check_args(&format!("option '{key}'"), list.iter().map(String::as_str))?;
        }
        Ok(v)
    }

    /// A map of names to file descriptors (`a{sh}`).
    pub fn fds(&self, key: &str) -> Result<Option<HashMap<String, Fd<'static>>>, DaemonError> {
        self.typed(key, "a map of paths to file descriptors (a{sh})")
    }
}

/// The longest string a method takes (a refspec, a channel, a package name, a kernel
/// argument, a path): far above any real one, far below what would flood a message
/// or a log. Arrays are bounded by the bus's own message size limit.
pub const MAX_ARG: usize = 4096;

/// Refuses, with `InvalidArgs`, a string argument longer than [`MAX_ARG`] (the
/// message says how long, never echoes it), and more than [`MAX_ITEMS`] of them. The bus itself refuses NUL and invalid
/// UTF-8; what a value means (`..`, absolute paths) is the library's to judge.
pub fn check_args<'a>(
    what: &str,
    values: impl IntoIterator<Item = &'a str>,
) -> Result<(), DaemonError> {
    for (i, v) in values.into_iter().enumerate() {
        check_count(what, i)?;
        if v.len() > MAX_ARG {
            return Err(DaemonError::InvalidArgs(format!(
                "{what}: a value of {} bytes; at most {MAX_ARG}",
                v.len()
            )));
        }
    }
    Ok(())
}

/// The options `UsrOverlay` knows.
pub const USROVERLAY_OPTIONS: &[&str] = &["hotfix", "remove", "name", "add", "commit", "message"];

/// Turns `UsrOverlay`'s options into the library request. Files to add come as open
/// file descriptors (`"add"`: `a{sh}`, destination path → fd), so the daemon reads
/// only what the caller could open; they are copied into `staging` first, as regular
/// files with their permission bits (set-id bits dropped) and owned by root.
pub fn usroverlay_request(o: &Options, staging: &Path) -> Result<UsrOverlayRequest, DaemonError> {
    let flag = |k| o.bool(k).map(|v| v.unwrap_or(false));
    let (hotfix, remove, commit) = (flag("hotfix")?, flag("remove")?, flag("commit")?);
    let name = o.string("name")?;
    let message = o.string("message")?;
    let add = o.fds("add")?;
    let actions = [remove, commit, add.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if actions > 1 {
        return Err(DaemonError::InvalidArgs(
            "give one of the options remove, commit, add".into(),
        ));
    }
    if message.is_some() && !commit {
        return Err(DaemonError::InvalidArgs(
            "option 'message' goes with 'commit'".into(),
        ));
    }
    if hotfix && (remove || commit) {
        return Err(DaemonError::InvalidArgs(
            "option 'hotfix' goes with creating or adding".into(),
        ));
    }
    Ok(if remove {
        UsrOverlayRequest::Remove
    } else if commit {
        UsrOverlayRequest::Commit { message }
    } else if let Some(add) = add {
        UsrOverlayRequest::Add {
            items: stage_fds(add, staging)?,
            hotfix,
            name,
        }
    } else {
        UsrOverlayRequest::Create { hotfix, name }
    })
}

fn stage_fds(
    add: HashMap<String, Fd<'static>>,
    staging: &Path,
) -> Result<Vec<(PathBuf, String)>, DaemonError> {
    let invalid = DaemonError::InvalidArgs;
    let mut items = Vec::new();
    let mut add: Vec<_> = add.into_iter().collect();
    add.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (dest, fd)) in add.into_iter().enumerate() {
        let (_, rel) =
            overlay::parse_add(&format!("x:{dest}")).map_err(|e| invalid(format!("{e:#}")))?;
        let st = rustix::fs::fstat(fd.as_fd())
            .map_err(|e| DaemonError::failed(std::io::Error::from(e).into()))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(invalid(format!(
                "'add' {dest}: the descriptor is not a regular file"
            )));
        }
        let path = staging.join(i.to_string());
        let copied = (|| -> std::io::Result<()> {
            let dup = std::fs::File::from(fd.as_fd().try_clone_to_owned()?);
            let mut from = std::io::BufReader::new(dup);
            // Read from the start, whatever the caller's offset.
            use std::io::Seek;
            from.seek(std::io::SeekFrom::Start(0))?;
            let mut to = std::fs::File::create(&path)?;
            std::io::copy(&mut from, &mut to)?;
            use std::os::unix::fs::PermissionsExt;
            to.set_permissions(std::fs::Permissions::from_mode(st.st_mode & 0o777))?;
            Ok(())
        })();
        copied.map_err(|e| {
            DaemonError::failed(
                anyhow::Error::new(e).context(format!("reading the file for {dest}")),
            )
        })?;
        items.push((path, rel));
    }
    Ok(items)
}
