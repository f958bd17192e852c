//! Clients that asked the daemon to stay (`RegisterClient`): a settings panel that
//! shows the state and follows progress must not see the daemon exit on idle under
//! it. A client is forgotten when it unregisters or leaves the bus, whichever comes
//! first, so a panel that crashes does not keep the daemon up for ever.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::error::DaemonError;

/// At most this many clients at once: each costs the main loop one bus call per tick,
/// and any local user may register.
const MAX_CLIENTS: usize = 64;

/// The unique bus names of the registered clients.
#[derive(Default)]
pub(crate) struct Clients(Mutex<BTreeSet<String>>);

impl Clients {
    /// Registers `name` (again is fine).
    pub fn register(&self, name: &str) -> Result<(), DaemonError> {
        let mut names = self.0.lock().unwrap();
        if names.len() >= MAX_CLIENTS && !names.contains(name) {
            return Err(DaemonError::Busy(format!(
                "{MAX_CLIENTS} clients are registered already"
            )));
        }
        names.insert(name.to_string());
        Ok(())
    }

    /// Forgets `name`; false if it was not registered.
    pub fn unregister(&self, name: &str) -> bool {
        self.0.lock().unwrap().remove(name)
    }

    /// True while any client is registered: the daemon then does not exit on idle.
    pub fn any(&self) -> bool {
        !self.0.lock().unwrap().is_empty()
    }

    /// Forgets the clients that left the bus without unregistering.
    pub fn forget_departed(&self, conn: &zbus::blocking::Connection) {
        let names: Vec<String> = self.0.lock().unwrap().iter().cloned().collect();
        if names.is_empty() {
            return;
        }
        let Ok(bus) = zbus::blocking::fdo::DBusProxy::new(conn) else {
            return;
        };
        for name in names {
            let gone = zbus::names::BusName::try_from(name.as_str())
                .ok()
                .and_then(|n| bus.name_has_owner(n).ok())
                .is_some_and(|owned| !owned);
            if gone {
                tracing::info!(client = %name, "the client left the bus: forgotten");
                self.unregister(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_register_once_and_are_bounded() {
        let c = Clients::default();
        assert!(!c.any());
        c.register(":1.5").unwrap();
        c.register(":1.5").unwrap();
        assert!(c.any());
        assert!(c.unregister(":1.5"));
        assert!(!c.unregister(":1.5"));
        assert!(!c.any());
        for i in 0..MAX_CLIENTS {
            c.register(&format!(":1.{i}")).unwrap();
        }
        assert!(matches!(c.register(":2.0"), Err(DaemonError::Busy(_))));
        c.register(":1.0").unwrap();
    }
}
