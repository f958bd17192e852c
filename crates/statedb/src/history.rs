//! The history's one vocabulary: every row is written through a [`HistoryKind`], so
//! the CLI, the daemon, the boot-time units and the installer name the same thing the
//! same way (`arbor history`, `LastTransaction`).

use serde::Serialize;

/// What a history row records: an operation a user or the timer asked for, or an
/// event the system went through (a boot, a health check, a fallback).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[serde(rename_all = "kebab-case")]
#[zvariant(signature = "s", rename_all = "kebab-case")]
pub enum HistoryKind {
    /// `deploy`.
    Deploy,
    /// `rebase`.
    Rebase,
    /// `upgrade`.
    Upgrade,
    /// `upgrade --check`, when recorded.
    Check,
    /// `upgrade --download-only`.
    Download,
    /// `rollback`.
    Rollback,
    /// `install` of packages (layering), not `install to-disk`.
    Install,
    /// `uninstall`.
    Uninstall,
    /// `override replace|remove|reset`.
    Override,
    /// `kargs` with an edit.
    Kargs,
    /// `cleanup`.
    Cleanup,
    /// `prune`.
    Prune,
    /// `undeploy`.
    Undeploy,
    /// `pin`.
    Pin,
    /// `apply-live`.
    ApplyLive,
    /// `usroverlay`.
    Usroverlay,
    /// `auto-update` (the timer).
    AutoUpdate,
    /// `remote remove`.
    RemoteRemove,
    /// `etc restore`.
    EtcRestore,
    /// `reset`.
    Reset,
    /// `commit` (and the commits compose and layering make, in a repository's own
    /// history).
    Commit,
    /// `install to-disk`, recorded in the new disk's history.
    InstallToDisk,
    /// The staged deployment made the default at shutdown.
    FinalizeStaged,
    /// The boot was marked good.
    BootComplete,
    /// The health checks ran.
    HealthCheck,
    /// The health checks failed and the loader was told to boot the previous
    /// deployment.
    AutomaticRollback,
    /// A staged deployment brought up without a firmware reboot (`--apply`):
    /// soft-reboot or kexec, or the fall back from one.
    Activate,
}

impl HistoryKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [HistoryKind; 27] = [
        HistoryKind::Deploy,
        HistoryKind::Rebase,
        HistoryKind::Upgrade,
        HistoryKind::Check,
        HistoryKind::Download,
        HistoryKind::Rollback,
        HistoryKind::Install,
        HistoryKind::Uninstall,
        HistoryKind::Override,
        HistoryKind::Kargs,
        HistoryKind::Cleanup,
        HistoryKind::Prune,
        HistoryKind::Undeploy,
        HistoryKind::Pin,
        HistoryKind::ApplyLive,
        HistoryKind::Usroverlay,
        HistoryKind::AutoUpdate,
        HistoryKind::RemoteRemove,
        HistoryKind::EtcRestore,
        HistoryKind::Reset,
        HistoryKind::Commit,
        HistoryKind::InstallToDisk,
        HistoryKind::FinalizeStaged,
        HistoryKind::BootComplete,
        HistoryKind::HealthCheck,
        HistoryKind::AutomaticRollback,
        HistoryKind::Activate,
    ];

    /// Its word in the history (and in `arbor history --json`).
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Deploy => "deploy",
            HistoryKind::Rebase => "rebase",
            HistoryKind::Upgrade => "upgrade",
            HistoryKind::Check => "check",
            HistoryKind::Download => "download",
            HistoryKind::Rollback => "rollback",
            HistoryKind::Install => "install",
            HistoryKind::Uninstall => "uninstall",
            HistoryKind::Override => "override",
            HistoryKind::Kargs => "kargs",
            HistoryKind::Cleanup => "cleanup",
            HistoryKind::Prune => "prune",
            HistoryKind::Undeploy => "undeploy",
            HistoryKind::Pin => "pin",
            HistoryKind::ApplyLive => "apply-live",
            HistoryKind::Usroverlay => "usroverlay",
            HistoryKind::AutoUpdate => "auto-update",
            HistoryKind::RemoteRemove => "remote-remove",
            HistoryKind::EtcRestore => "etc-restore",
            HistoryKind::Reset => "reset",
            HistoryKind::Commit => "commit",
            HistoryKind::InstallToDisk => "install-to-disk",
            HistoryKind::FinalizeStaged => "finalize-staged",
            HistoryKind::BootComplete => "boot-complete",
            HistoryKind::HealthCheck => "health-check",
            HistoryKind::AutomaticRollback => "automatic-rollback",
            HistoryKind::Activate => "activate",
        }
    }

    /// The kind a history word names, if this arbor knows it.
    pub fn parse(word: &str) -> Option<HistoryKind> {
        HistoryKind::ALL.into_iter().find(|k| k.as_str() == word)
    }
}

impl std::fmt::Display for HistoryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_one_word_the_same_in_json() {
        let mut words: Vec<&str> = HistoryKind::ALL.iter().map(|k| k.as_str()).collect();
        for k in HistoryKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(HistoryKind::parse(k.as_str()), Some(k));
        }
        words.sort();
        words.dedup();
        assert_eq!(words.len(), HistoryKind::ALL.len());
        assert_eq!(HistoryKind::parse("rollback (automatic)"), None);
    }
}
