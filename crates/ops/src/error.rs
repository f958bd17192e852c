//! The case of a failure, as callers branch on it: the typed errors of the layers
//! below ([`arbor_core::error`], the store's, the transport's) found in an `anyhow`
//! chain. The daemon names them on D-Bus, `arbor serve` maps them to HTTP statuses.

use serde::Serialize;

pub use arbor_core::error::{Error, StoreError};

/// The case of a failure, as callers branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Another transaction holds the sysroot lock.
    Busy,
    /// No such stateroot.
    NoStateroot,
    /// Nothing to act on.
    NothingPending,
    /// No such channel on the remote.
    ChannelNotFound,
    /// The server cannot be reached.
    Offline,
    /// The disk or quota is full.
    NoSpace,
    /// Refused by a safety check (the reasons are in the message).
    Refused,
    /// A signature or hash does not verify.
    NotVerified,
    /// Stopped on request.
    Cancelled,
    /// Anything else.
    Failed,
}

impl ErrorKind {
    /// The case of `e`: the first typed error found in its chain.
    pub fn of(e: &anyhow::Error) -> ErrorKind {
        use arbor_remote::http::FetchError;
        for cause in e.chain() {
            if let Some(x) = cause.downcast_ref::<Error>() {
                return match x {
                    Error::NoStateroot { .. } => ErrorKind::NoStateroot,
                    Error::NothingPending(_) => ErrorKind::NothingPending,
                    Error::ChannelNotFound(_) => ErrorKind::ChannelNotFound,
                    Error::Offline(_) => ErrorKind::Offline,
                    Error::Refused(_) => ErrorKind::Refused,
                    Error::NotVerified(_) => ErrorKind::NotVerified,
                };
            }
            if let Some(x) = cause.downcast_ref::<StoreError>() {
                match x {
                    StoreError::LockHeld { .. } => return ErrorKind::Busy,
                    StoreError::NoSpace { .. } => return ErrorKind::NoSpace,
                    StoreError::Corrupt { .. } => return ErrorKind::NotVerified,
                    _ => {}
                }
            }
            if let Some(FetchError::Offline { .. }) = cause.downcast_ref::<FetchError>() {
                return ErrorKind::Offline;
            }
            if cause.is::<arbor_core::progress::Cancelled>() {
                return ErrorKind::Cancelled;
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>()
                && arbor_core::fsutil::is_no_space(io)
            {
                return ErrorKind::NoSpace;
            }
        }
        ErrorKind::Failed
    }

    /// Its D-Bus error name.
    pub fn dbus_name(self) -> &'static str {
        match self {
            ErrorKind::Busy => "org.arbor.Arbor1.Error.Busy",
            ErrorKind::NoStateroot => "org.arbor.Arbor1.Error.NoStateroot",
            ErrorKind::NothingPending => "org.arbor.Arbor1.Error.NothingPending",
            ErrorKind::ChannelNotFound => "org.arbor.Arbor1.Error.ChannelNotFound",
            ErrorKind::Offline => "org.arbor.Arbor1.Error.Offline",
            ErrorKind::NoSpace => "org.arbor.Arbor1.Error.NoSpace",
            ErrorKind::Refused => "org.arbor.Arbor1.Error.Refused",
            ErrorKind::NotVerified => "org.arbor.Arbor1.Error.NotVerified",
            ErrorKind::Cancelled => "org.arbor.Arbor1.Error.Cancelled",
            ErrorKind::Failed => "org.arbor.Arbor1.Error.Failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_kind_is_found_under_context() {
        let e = Err::<(), _>(Error::ChannelNotFound("beta".into()))
            .context("loading the channel")
            .context("upgrade")
            .unwrap_err();
        assert_eq!(ErrorKind::of(&e), ErrorKind::ChannelNotFound);
        assert_eq!(
            ErrorKind::of(&e).dbus_name(),
            "org.arbor.Arbor1.Error.ChannelNotFound"
        );
        let full = std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        let e = anyhow::Error::new(full).context("writing an object");
        assert_eq!(ErrorKind::of(&e), ErrorKind::NoSpace);
        let e = anyhow::Error::new(arbor_core::progress::Cancelled).context("deploy");
        assert_eq!(ErrorKind::of(&e), ErrorKind::Cancelled);
        assert_eq!(ErrorKind::of(&anyhow::anyhow!("boom")), ErrorKind::Failed);
        let e = anyhow::Error::new(Error::Refused(vec!["a kernel change".into()]));
        assert_eq!(ErrorKind::of(&e), ErrorKind::Refused);
        assert!(e.to_string().contains("a kernel change"));
    }
}
