//! The daemon's interfaces without a bus: the real objects served over one end of a
//! socket pair (zbus peer-to-peer), a zbus client at the other. Runs as any user:
//! reading is open to all, and changing is authorized by the socket's credentials.

mod common;

use std::os::unix::net::UnixStream;

use arbor_daemon::{DaemonOptions, ROOT_PATH, SYSROOT_INTERFACE, serve_peer};
use common::*;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// Serves SYSROOT to a client connected peer-to-peer; returns both connections.
fn peer(sysroot: &str) -> (zbus::blocking::Connection, zbus::blocking::Connection) {
    let (a, b) = UnixStream::pair().unwrap();
    let opts = DaemonOptions {
        sysroot: sysroot.into(),
        root: "/".into(),
        bus_address: None,
        idle_exit: None,
    };
    // The server's handshake waits for the client's: one of them in a thread.
    let server = std::thread::spawn(move || serve_peer(&opts, a).unwrap());
    let client = zbus::blocking::connection::Builder::unix_stream(b)
        .p2p()
        .build()
        .unwrap();
    (server.join().unwrap(), client)
}

fn proxy(c: &zbus::blocking::Connection) -> zbus::blocking::Proxy<'_> {
    zbus::blocking::Proxy::new(c, "org.arbor.Arbor1", ROOT_PATH, SYSROOT_INTERFACE).unwrap()
}

#[test]
fn the_sysroot_interface_answers_a_peer() {
    let t = scratch();
    let s = sysroot(t.path());
    let (_server, client) = peer(&s);
    let p = proxy(&client);

    // Properties: open to anyone, the same document as the CLI's.
    let path: String = p.get_property("Path").unwrap();
    assert_eq!(path, s);
    let deployments: Vec<std::collections::HashMap<String, OwnedValue>> =
        p.get_property("Deployments").unwrap();
    assert!(deployments.is_empty());
    // Decoded as the library's own type, as `arbor serve` decodes it.
    let update: arbor_ops::update::state::UpdateRecord = p.get_property("UpdateStatus").unwrap();
    assert_eq!(update.state, arbor_ops::update::state::State::Idle);
    assert_eq!(update.format_version, arbor_core::wire::FORMAT_VERSION);

    // A bad option is refused before anything else, naming it.
    let opts: std::collections::HashMap<&str, zbus::zvariant::Value> =
        [("bogus", zbus::zvariant::Value::from(true))].into();
    let e = p
        .call::<_, _, OwnedObjectPath>("Rollback", &(opts,))
        .unwrap_err();
    let zbus::Error::MethodError(name, msg, _) = e else {
        panic!("{e}")
    };
    assert_eq!(name.as_str(), "org.freedesktop.DBus.Error.InvalidArgs");
    assert!(msg.unwrap_or_default().contains("unknown option 'bogus'"));

    // A change: authorized by the socket's credentials, so only root gets a
    // transaction; it fails with its case named (nothing to roll back to).
    let none: std::collections::HashMap<&str, zbus::zvariant::Value> = Default::default();
    let started = p.call::<_, _, OwnedObjectPath>("Rollback", &(none,));
    if !is_root() {
        let e = started.unwrap_err();
        assert!(
            e.to_string().contains("AccessDenied") || e.to_string().contains("not root"),
            "{e}"
        );
        return;
    }
    let tx = started.unwrap();
    // Uncached: a cached proxy may see Running change before ErrorName's signal.
    let t = zbus::blocking::proxy::Builder::<zbus::blocking::Proxy<'_>>::new(&client)
        .destination("org.arbor.Arbor1")
        .unwrap()
        .path(tx.as_str())
        .unwrap()
        .interface("org.arbor.Arbor1.Transaction")
        .unwrap()
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while t.get_property::<bool>("Running").unwrap() {
        assert!(std::time::Instant::now() < deadline, "never finished");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!t.get_property::<bool>("Success").unwrap());
    assert_eq!(
        t.get_property::<String>("ErrorName").unwrap(),
        "org.arbor.Arbor1.Error.NothingPending"
    );
}
