//! The library's typed state as D-Bus values (`a{sv}` dictionaries, as rpm-ostree and
//! other system daemons hand deployments to settings panels).

use std::collections::HashMap;

use zbus::zvariant::{Array, OwnedValue, Str};

use crate::statedb::HistoryEntry;
use crate::sysroot::Deployment;
use crate::sysroot::status::StatusRow;

/// An `a{sv}` dictionary.
pub type Dict = HashMap<String, OwnedValue>;

fn s(v: impl Into<String>) -> OwnedValue {
    OwnedValue::from(Str::from(v.into()))
}

fn strings(v: &[String]) -> OwnedValue {
    let a = Array::from(v.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    // Only arrays holding file descriptors fail to convert.
    OwnedValue::try_from(a).expect("an array of strings has no file descriptors")
}

/// A deployment's fields (keys documented in docs/dbus.md).
pub fn deployment(d: &Deployment, pending: bool, rollback: bool, staged: bool) -> Dict {
    let mut m = Dict::new();
    m.insert("id".into(), s(format!("{}-{}", d.os, d.dir_name())));
    m.insert("osname".into(), s(d.os.clone()));
    m.insert("checksum".into(), s(d.commit.to_hex()));
    m.insert("serial".into(), OwnedValue::from(d.serial));
    m.insert("index".into(), OwnedValue::from(d.index as u32));
    m.insert("origin".into(), s(d.origin.refspec.clone()));
    if let Some(c) = &d.origin.override_commit {
        m.insert("override-commit".into(), s(c.clone()));
    }
    if let Some(v) = &d.version {
        m.insert("version".into(), s(v.clone()));
    }
    m.insert("timestamp".into(), OwnedValue::from(d.timestamp));
    m.insert("kernel-args".into(), strings(&d.kargs));
    m.insert("booted".into(), OwnedValue::from(d.booted));
    m.insert("pending".into(), OwnedValue::from(pending));
    m.insert("rollback".into(), OwnedValue::from(rollback));
    m.insert("staged".into(), OwnedValue::from(staged));
    m.insert("pinned".into(), OwnedValue::from(d.origin.pinned));
    if let Some(t) = d.tries {
        m.insert("boot-tries-left".into(), OwnedValue::from(t.left));
    }
    m
}

/// A status row as a dictionary.
pub fn row(r: &StatusRow) -> Dict {
    deployment(&r.deployment, r.pending, r.rollback, false)
}

/// A history entry as a dictionary.
pub fn history(h: &HistoryEntry) -> Dict {
    let mut m = Dict::new();
    m.insert("id".into(), OwnedValue::from(h.id));
    m.insert("kind".into(), s(h.kind.clone()));
    m.insert("command".into(), s(h.command.clone()));
    m.insert("uid".into(), OwnedValue::from(h.uid));
    m.insert("started".into(), OwnedValue::from(h.started));
    if let Some(f) = h.finished {
        m.insert("finished".into(), OwnedValue::from(f));
    }
    m.insert(
        "result".into(),
        s(h.result.clone().unwrap_or_else(|| "unfinished".into())),
    );
    m
}
