//! The failures a caller must tell apart, typed at the library boundary.
//!
//! Most errors are `anyhow` chains with context, read by a person. A few are cases a
//! program acts on: a settings panel offers "retry later" for a busy sysroot, "check
//! the network" when offline, "free some space" when the disk is full. Those are
//! [`Error`] values (or the store's and the transport's own typed errors) somewhere in
//! the chain, and the operations' `ErrorKind::of` finds them; the daemon turns the
//! kind into a named D-Bus error (docs/dbus.md).

use std::io;
use std::path::PathBuf;

/// A failure with a case a caller tells apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stateroot does not exist.
    #[error("no stateroot '{os}' in {sysroot}; create it with 'arbor admin os-init {os}'")]
    NoStateroot {
        /// The stateroot asked for.
        os: String,
        /// The sysroot's path.
        sysroot: String,
    },
    /// There is nothing to act on: no pending deployment for apply-live, nothing
    /// staged, no deployment to roll back to.
    #[error("{0}")]
    NothingPending(String),
    /// The remote publishes no such channel.
    #[error("the remote has no channel '{0}'")]
    ChannelNotFound(String),
    /// The server cannot be reached.
    #[error("{0}")]
    Offline(String),
    /// The request was refused for these reasons (apply-live's safety checks).
    #[error("refused:\n  {}", .0.join("\n  "))]
    Refused(Vec<String>),
    /// Signed metadata or content does not verify (signature, hash, expiry, version).
    #[error("{0}")]
    NotVerified(String),
}

/// Failures a caller must tell apart (to retry, wait, or tell the user what to do).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A referenced object is not in the store.
    #[error("object {id} ({kind}) is missing from the repository")]
    Missing {
        /// The missing object.
        id: crate::object::ObjectId,
        /// Its kind.
        kind: crate::object::ObjectKind,
    },
    /// An object's bytes do not hash to its name, or do not decode.
    #[error(
        "object {id} ({kind}) is corrupt: {detail}; run 'arbor fsck' to list every damaged object"
    )]
    Corrupt {
        /// The damaged object.
        id: crate::object::ObjectId,
        /// Its kind.
        kind: crate::object::ObjectKind,
        /// What is wrong with it.
        detail: String,
    },
    /// Another writer holds the lock and the caller asked not to wait.
    #[error("{path} is locked by {holder}; wait for it to finish or stop it")]
    LockHeld {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as recorded in the lock file.
        holder: String,
    },
    /// The disk or quota filled up; nothing was published.
    #[error(
        "no space left on the device while {doing}; nothing was changed: free some space and retry"
    )]
    NoSpace {
        /// What was being written.
        doing: String,
    },
}

/// Turns an I/O error met while writing into [`StoreError::NoSpace`] when the disk is
/// full, or a contextual error otherwise.
pub fn write_error(e: io::Error, doing: impl FnOnce() -> String) -> anyhow::Error {
    if crate::fsutil::is_no_space(&e) {
        StoreError::NoSpace { doing: doing() }.into()
    } else {
        anyhow::Error::new(e).context(doing())
    }
}
