//! The errors D-Bus callers see, each with a name they can match on.

use zbus::message::{Header, Message};
use zbus::names::ErrorName;

use arbor_ops::error::ErrorKind;

/// An error returned to a D-Bus caller.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The caller may not do this (`org.freedesktop.DBus.Error.AccessDenied`).
    #[error("{0}")]
    AccessDenied(String),
    /// Another transaction runs, in the daemon or in the CLI (`org.arbor.Arbor1.Error.Busy`).
    #[error("{0}")]
    Busy(String),
    /// A bad argument or option (`org.freedesktop.DBus.Error.InvalidArgs`).
    #[error("{0}")]
    InvalidArgs(String),
    /// The request could not be started, named by its case
    /// (`org.arbor.Arbor1.Error.Failed`, `.NoStateroot`, `.Offline`, ...).
    #[error("{message}")]
    Op {
        /// The case.
        kind: ErrorKind,
        /// The whole chain of causes.
        message: String,
    },
    /// The bus itself failed, or a standard D-Bus error.
    #[error(transparent)]
    Bus(#[from] zbus::fdo::Error),
}

impl DaemonError {
    /// A failure with its whole chain of causes, as the CLI prints it, named by its
    /// case ([`ErrorKind`]).
    pub fn failed(e: anyhow::Error) -> Self {
        DaemonError::Op {
            kind: ErrorKind::of(&e),
            message: format!("{e:#}"),
        }
    }
}

impl From<zbus::Error> for DaemonError {
    fn from(e: zbus::Error) -> Self {
        DaemonError::Bus(e.into())
    }
}

impl zbus::DBusError for DaemonError {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<Message> {
        if let DaemonError::Bus(e) = self {
            return e.create_reply(call);
        }
        Message::error(call, self.name())?.build(&(self.to_string(),))
    }

    fn name(&self) -> ErrorName<'_> {
        ErrorName::from_static_str_unchecked(match self {
            DaemonError::AccessDenied(_) => "org.freedesktop.DBus.Error.AccessDenied",
            DaemonError::Busy(_) => "org.arbor.Arbor1.Error.Busy",
            DaemonError::InvalidArgs(_) => "org.freedesktop.DBus.Error.InvalidArgs",
            DaemonError::Op { kind, .. } => kind.dbus_name(),
            DaemonError::Bus(e) => return e.name(),
        })
    }

    fn description(&self) -> Option<&str> {
        match self {
            DaemonError::AccessDenied(s)
            | DaemonError::Busy(s)
            | DaemonError::InvalidArgs(s)
            | DaemonError::Op { message: s, .. } => Some(s),
            DaemonError::Bus(e) => e.description(),
        }
    }
}
