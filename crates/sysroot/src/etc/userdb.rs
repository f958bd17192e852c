//! Users and groups merged entry by entry, never file against file.
//!
//! `/etc/passwd`, `/etc/group`, `/etc/shadow` and `/etc/gshadow` are changed on both
//! sides of every update that matters: the administrator adds users, and a new
//! release's maintainer scripts add system users and groups. Keeping the local file
//! whole would hide the new release's users from its own services; taking the new
//! one would lose the machine's users. So these four files are merged per entry (a
//! line, keyed by its first field, the name), three ways like the rest of `/etc`:
//! an entry the administrator did not touch takes the new default (added, changed or
//! removed); one the administrator added or changed keeps the local version; one the
//! administrator removed stays removed. New entries come in the new default's order,
//! then the local ones it does not have, in their local order.
//!
//! An id cannot be shared: a local user and a new system user with one uid would own
//! each other's files. Such a clash stops the merge with an error naming both, and
//! nothing is deployed.

use std::collections::{BTreeMap, HashMap};

/// The files merged per entry, relative to `/etc`.
pub const FILES: [&str; 4] = ["passwd", "group", "shadow", "gshadow"];

/// True for a path (relative to `/etc`) whose entries are merged one by one.
pub fn is_userdb(path: &str) -> bool {
    FILES.contains(&path)
}

/// True for the backup copy (`passwd-`, `subuid-`, …) that shadow's tools write of the
/// machine's user database before each change: the machine's own, never a
/// conflict. Its new default would be the image builder's backup, which means nothing
/// on this machine; the merged database itself is the file that counts.
pub fn is_backup(path: &str) -> bool {
    path.strip_suffix('-')
        .is_some_and(|p| FILES.contains(&p) || p == "subuid" || p == "subgid")
}

/// Two entries of the merged file that would share an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdClash {
    /// `passwd` or `group`.
    pub file: String,
    /// The shared uid or gid.
    pub id: String,
    /// The entry the machine has.
    pub local: String,
    /// The entry the new release brings.
    pub new: String,
}

impl std::fmt::Display for IdClash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.file == "group" { "gid" } else { "uid" };
        write!(
            f,
            "/etc/{}: {what} {} is '{}' on this machine and '{}' in the new release; \
             give '{}' another {what} (usermod/groupmod) and deploy again; nothing was \
             deployed",
            self.file, self.id, self.local, self.new, self.local
        )
    }
}

impl std::error::Error for IdClash {}

/// Where an entry of the result came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    New,
    Local,
}

/// The name of an entry line (its first field), or None for a line that is no entry
/// (blank, or a comment).
fn name_of(line: &str) -> Option<&str> {
    if line.trim().is_empty() || line.starts_with('#') {
        return None;
    }
    Some(line.split_once(':').map_or(line, |(n, _)| n))
}

/// The entries of a file by name (the first of a duplicated name wins, as for NSS).
fn entries(text: &str) -> HashMap<&str, &str> {
    let mut m = HashMap::new();
    for line in text.lines() {
        if let Some(n) = name_of(line) {
            m.entry(n).or_insert(line);
        }
    }
    m
}

/// Merges `file` (one of [`FILES`]) entry by entry: `local` judged against
/// `old_default`, into `new_default`. Returns the merged text.
pub fn merge(
    file: &str,
    old_default: &str,
    local: &str,
    new_default: &str,
) -> Result<String, IdClash> {
    let (o, l) = (entries(old_default), entries(local));
    let mut out: Vec<(&str, Origin)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    fn choose<'a>(
        o: &HashMap<&str, &'a str>,
        l: &HashMap<&str, &'a str>,
        name: &str,
        n: Option<&'a str>,
    ) -> Option<(&'a str, Origin)> {
        let (old, loc) = (o.get(name).copied(), l.get(name).copied());
        if old == loc {
            // Untouched here: the new release decides.
            n.map(|n| (n, Origin::New))
        } else {
            // Added, changed or removed here: this machine decides.
            loc.map(|l| (l, Origin::Local))
        }
    }
    for line in new_default.lines() {
        match name_of(line) {
            None => out.push((line, Origin::New)),
            Some(name) => {
                if !seen.insert(name) {
                    continue;
                }
                if let Some(e) = choose(&o, &l, name, Some(line)) {
                    out.push(e);
                }
            }
        }
    }
    for line in local.lines() {
        let Some(name) = name_of(line) else { continue };
        if !seen.insert(name) {
            continue;
        }
        if let Some(e) = choose(&o, &l, name, None) {
            out.push(e);
        }
    }
    if file == "passwd" || file == "group" {
        check_ids(file, &out)?;
    }
    let mut text: String = out.iter().map(|(l, _)| format!("{l}\n")).collect();
    if out.is_empty() {
        text.clear();
    }
    Ok(text)
}

/// Fails when an entry kept from this machine and one taken from the new release
/// have different names and the same id (the third field).
fn check_ids(file: &str, out: &[(&str, Origin)]) -> Result<(), IdClash> {
    let mut by_id: BTreeMap<&str, Vec<(&str, Origin)>> = BTreeMap::new();
    for (line, origin) in out {
        let mut f = line.split(':');
        let (Some(name), Some(id)) = (f.next(), f.nth(1)) else {
            continue;
        };
        by_id.entry(id).or_default().push((name, *origin));
    }
    for (id, names) in by_id {
        let local = names.iter().find(|(_, o)| *o == Origin::Local);
        let new = names.iter().find(|(_, o)| *o == Origin::New);
        if let (Some(l), Some(n)) = (local, new)
            && l.0 != n.0
        {
            return Err(IdClash {
                file: file.to_string(),
                id: id.to_string(),
                local: l.0.to_string(),
                new: n.0.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
games:x:5:60:games:/usr/games:/usr/sbin/nologin
systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin
";

    #[test]
    fn both_sides_keep_their_changes() {
        // Here: root's shell changed, a user added, games removed.
        let local = "\
root:x:0:0:root:/root:/bin/zsh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/bash
";
        // The new release: a new system user, daemon's home changed, games's too.
        let new = "\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/var/lib/daemon:/usr/sbin/nologin
games:x:5:60:games:/var/games:/usr/sbin/nologin
systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin
systemd-timesync:x:996:996:systemd Time Synchronization:/:/usr/sbin/nologin
";
        let merged = merge("passwd", OLD, local, new).unwrap();
        assert_eq!(
            merged,
            "\
root:x:0:0:root:/root:/bin/zsh
daemon:x:1:1:daemon:/var/lib/daemon:/usr/sbin/nologin
systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin
systemd-timesync:x:996:996:systemd Time Synchronization:/:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/bash
"
        );
    }

    #[test]
    fn an_entry_the_release_removes_goes_unless_changed_here() {
        let new = "root:x:0:0:root:/root:/bin/bash\n";
        let local = OLD.replace("/usr/games:", "/srv/games:");
        let merged = merge("passwd", OLD, &local, new).unwrap();
        assert!(!merged.contains("daemon:"), "{merged}");
        assert!(
            merged.contains("games:x:5:60:games:/srv/games:"),
            "{merged}"
        );
    }

    #[test]
    fn a_shared_id_is_refused_naming_both() {
        let local = format!("{OLD}alice:x:996:996:Alice:/home/alice:/bin/bash\n");
        let new = format!("{OLD}systemd-timesync:x:996:996::/:/usr/sbin/nologin\n");
        let e = merge("passwd", OLD, &local, &new).unwrap_err();
        assert_eq!((e.id.as_str(), e.local.as_str()), ("996", "alice"));
        assert!(e.to_string().contains("systemd-timesync"), "{e}");
        // Shadow files carry no ids: nothing to clash.
        let s = merge("shadow", "", "alice:!:1::::::\n", "timesync:*:1::::::\n").unwrap();
        assert_eq!(s, "timesync:*:1::::::\nalice:!:1::::::\n");
    }

    #[test]
    fn shadow_keeps_a_password_set_here_and_takes_new_entries() {
        let old = "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n";
        let local = "root:$y$j9T$salt$hash:19500:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n";
        let new = "root:*:20000:0:99999:7:::\ndaemon:*:20000:0:99999:7:::\n_new:!:20000::::::\n";
        assert_eq!(
            merge("shadow", old, local, new).unwrap(),
            "root:$y$j9T$salt$hash:19500:0:99999:7:::\ndaemon:*:20000:0:99999:7:::\n_new:!:20000::::::\n"
        );
    }

    #[test]
    fn the_same_change_on_both_sides_is_one_entry() {
        let line = "alice:x:1000:1000::/home/alice:/bin/bash\n";
        let (local, new) = (format!("{OLD}{line}"), format!("{OLD}{line}"));
        let merged = merge("passwd", OLD, &local, &new).unwrap();
        assert_eq!(
            merged.lines().filter(|l| l.starts_with("alice:")).count(),
            1
        );
    }
}
