//! The architecture a commit is built for, checked before it is deployed: a tree for
//! another architecture would be checked out, merged and made the default entry,
//! and then not boot.

use std::io::Read;

use anyhow::{Result, bail};

use arbor_store::inspect::{self, Node};
use arbor_store::{ObjectId, Repo};

/// Where a composed tree keeps its package database (`compose rootfs` moves
/// `/var/lib/dpkg` there).
const DPKG_STATUS: &str = "/usr/lib/arbor/dpkg/status";

/// A bound on the package database read: Debian's is a few megabytes.
const MAX_STATUS: u64 = 64 << 20;

/// This machine's architecture in Debian's words (`dpkg --print-architecture`).
pub fn this_machine() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "arm" => "armhf",
        "powerpc64" => "ppc64el",
        other => other,
    }
}

/// The architecture `commit` is built for, from its package database: that of the
/// `dpkg` package (always the native one; a multiarch tree also has foreign ones),
/// else the first that is not `all`. None for a tree without one (not a Debian tree,
/// or one without architecture-dependent packages).
pub fn of_commit(repo: &Repo, commit: &ObjectId) -> Result<Option<String>> {
    if !matches!(
        inspect::lookup(repo, commit, DPKG_STATUS),
        Ok(Node::File(_))
    ) {
        return Ok(None);
    }
    let mut text = String::new();
    inspect::open_content(repo, commit, DPKG_STATUS)?
        .take(MAX_STATUS)
        .read_to_string(&mut text)?;
    Ok(of_status(&text))
}

fn of_status(text: &str) -> Option<String> {
    let arch_of = |stanza: &str| {
        stanza
            .lines()
            .filter_map(|l| l.strip_prefix("Architecture:"))
            .map(str::trim)
            .find(|a| !a.is_empty() && *a != "all")
            .map(str::to_string)
    };
    let stanzas: Vec<&str> = text.split("\n\n").collect();
    stanzas
        .iter()
        .find(|s| s.lines().any(|l| l.trim_end() == "Package: dpkg"))
        .and_then(|s| arch_of(s))
        .or_else(|| stanzas.iter().find_map(|s| arch_of(s)))
}

/// Fails, naming both, when `commit` is built for another architecture than this
/// machine's.
pub fn check(repo: &Repo, commit: &ObjectId) -> Result<()> {
    if let Some(theirs) = of_commit(repo, commit)?
        && theirs != this_machine()
    {
        bail!(
            "the commit is built for {theirs}, and this machine is {}: it would not \
             boot; nothing was deployed",
            this_machine()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_real_architecture_is_the_trees() {
        let status = "Package: tzdata\nArchitecture: all\n\nPackage: libc6\nArchitecture: arm64\n";
        assert_eq!(of_status(status).as_deref(), Some("arm64"));
        assert_eq!(of_status("Package: tool\n"), None);
        assert_eq!(of_status("Package: x\nArchitecture: all\n"), None);
        // A multiarch tree: the native architecture is dpkg's.
        let multi =
            "Package: gcc-12-base\nArchitecture: i386\n\nPackage: dpkg\nArchitecture: amd64\n";
        assert_eq!(of_status(multi).as_deref(), Some("amd64"));
    }
}
