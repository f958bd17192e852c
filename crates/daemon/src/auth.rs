//! Who is calling, and whether they may change the system.
//!
//! Reading is open to everyone. Methods that change the system are allowed to root,
//! and to others when polkit says so for the method's action (declared in
//! `dbus/org.arbor.Arbor1.policy`). polkit is asked on the bus the daemon serves:
//! the system bus on a machine. Where no polkit answers (a private test bus), only root
//! may change anything.

use std::collections::HashMap;

use zbus::message::Header;
use zbus::zvariant::Value;

use super::DaemonError;

/// The peer behind a method call.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Its unique bus name.
    pub bus_name: String,
    /// Its user id, as the bus daemon vouches for it.
    pub uid: u32,
    /// Its process id, when the bus knows it.
    pub pid: Option<u32>,
}

impl Caller {
    /// How the history and `ActiveTransaction` name it.
    pub fn describe(&self) -> String {
        match self.pid {
            Some(pid) => format!("{} (uid {}, pid {pid})", self.bus_name, self.uid),
            None => format!("{} (uid {})", self.bus_name, self.uid),
        }
    }
}

/// Identifies the sender of `hdr` through the bus daemon (never trusting the message).
pub async fn caller(conn: &zbus::Connection, hdr: &Header<'_>) -> Result<Caller, DaemonError> {
    let Some(sender) = hdr.sender() else {
        // A peer-to-peer connection (no bus): the socket says who is at the other end.
        let creds = conn
            .peer_creds()
            .await
            .map_err(|e| DaemonError::AccessDenied(format!("the peer's credentials: {e}")))?;
        let uid = creds.unix_user_id().ok_or_else(|| {
            DaemonError::AccessDenied("the socket does not say which user the peer is".into())
        })?;
        return Ok(Caller {
            bus_name: "peer".into(),
            uid,
            pid: creds.process_id(),
        });
    };
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let creds = dbus
        .get_connection_credentials(sender.clone().into())
        .await?;
    let uid = creds.unix_user_id().ok_or_else(|| {
        DaemonError::AccessDenied(format!("the bus does not say which user {sender} is"))
    })?;
    Ok(Caller {
        bus_name: sender.to_string(),
        uid,
        pid: creds.process_id(),
    })
}

/// The caller, when it may perform `action` (`org.arbor.Arbor1.deploy`, …); an
/// `AccessDenied` error saying why not otherwise.
pub async fn authorize(
    conn: &zbus::Connection,
    hdr: &Header<'_>,
    action: &str,
) -> Result<Caller, DaemonError> {
    let c = caller(conn, hdr).await?;
    if c.uid == 0 {
        return Ok(c);
    }
    if hdr.sender().is_none() {
        // A peer connection has no bus to reach polkit on.
        return Err(DaemonError::AccessDenied(format!(
            "uid {} is not root, and a peer connection has no polkit to authorize {action}",
            c.uid
        )));
    }
    match polkit_allows(conn, &c, action).await {
        // polkit may take its time (a rule, an agent asking for a password); a caller
        // that left meanwhile gets nothing done in its name.
        Ok(true) if !still_connected(conn, &c).await => Err(DaemonError::AccessDenied(format!(
            "{} left the bus while {action} was being authorized",
            c.bus_name
        ))),
        Ok(true) => Ok(c),
        Ok(false) => Err(DaemonError::AccessDenied(format!(
            "uid {} is not authorized for {action} (polkit said no)",
            c.uid
        ))),
        Err(e) => Err(DaemonError::AccessDenied(format!(
            "uid {} is not root, and polkit could not authorize {action}: {e}",
            c.uid
        ))),
    }
}

/// True when the caller's bus name still has an owner (unique names are never
/// reused, so this is the same peer). An error counts as gone: fail closed.
async fn still_connected(conn: &zbus::Connection, c: &Caller) -> bool {
    let Ok(dbus) = zbus::fdo::DBusProxy::new(conn).await else {
        return false;
    };
    let Ok(name) = zbus::names::BusName::try_from(c.bus_name.as_str()) else {
        return false;
    };
    dbus.name_has_owner(name).await.unwrap_or(false)
}

async fn polkit_allows(conn: &zbus::Connection, c: &Caller, action: &str) -> zbus::Result<bool> {
    let subject = (
        "system-bus-name",
        HashMap::from([("name", Value::from(c.bus_name.as_str()))]),
    );
    let details: HashMap<&str, &str> = HashMap::new();
    // Flag 1: AllowUserInteraction, so an agent may ask for a password.
    let reply = conn
        .call_method(
            Some("org.freedesktop.PolicyKit1"),
            "/org/freedesktop/PolicyKit1/Authority",
            Some("org.freedesktop.PolicyKit1.Authority"),
            "CheckAuthorization",
            &(subject, action, details, 1u32, ""),
        )
        .await?;
    let (authorized, _challenge, _details): (bool, bool, HashMap<String, String>) =
        reply.body().deserialize()?;
    Ok(authorized)
}
