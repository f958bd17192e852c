//! The library's typed state as D-Bus values (`a{sv}` dictionaries, as rpm-ostree and
//! other system daemons hand deployments to settings panels).

use std::collections::HashMap;

use zbus::zvariant::{Array, OwnedValue, Str, Value};

use arbor_statedb::HistoryEntry;
use arbor_sysroot::Deployment;
use arbor_sysroot::status::StatusRow;

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

/// A JSON value as a D-Bus value: objects become `a{sv}`, arrays of strings `as`,
/// arrays of objects `aa{sv}`, integers `x`, other numbers `d`; `null` is left out
/// by the caller. So the D-Bus dictionaries carry the same names and shapes as
/// `--json` (docs/dbus.md).
fn from_json(v: &serde_json::Value) -> Option<OwnedValue> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => OwnedValue::from(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => OwnedValue::from(i),
            None => OwnedValue::from(n.as_f64().unwrap_or_default()),
        },
        J::String(t) => s(t.clone()),
        J::Object(_) => dict_value(dict_from_json(v)),
        J::Array(items) if items.iter().all(|i| i.is_object()) && !items.is_empty() => {
            let dicts: Vec<Dict> = items.iter().map(dict_from_json).collect();
            OwnedValue::try_from(Value::from(dicts)).ok()?
        }
        J::Array(items) if items.iter().all(|i| i.is_i64()) && !items.is_empty() => {
            let ints: Vec<i64> = items.iter().filter_map(|i| i.as_i64()).collect();
            OwnedValue::try_from(Array::from(ints)).ok()?
        }
        J::Array(items) => {
            let texts: Vec<String> = items
                .iter()
                .map(|i| match i {
                    J::String(t) => t.clone(),
                    other => other.to_string(),
                })
                .collect();
            strings(&texts)
        }
    })
}

fn dict_value(d: Dict) -> OwnedValue {
    // Only values holding file descriptors fail to convert.
    OwnedValue::try_from(Value::from(d)).expect("a dictionary without file descriptors")
}

/// A JSON object as an `a{sv}` dictionary (see [`from_json`]).
pub fn dict_from_json(v: &serde_json::Value) -> Dict {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), from_json(v)?)))
        .collect()
}

/// A deployment's dictionary: the fields of `arbor status --json`, by the same names
/// (docs/dbus.md), and `id`.
fn deployment_dict(v: serde_json::Value, d: &Deployment) -> Dict {
    let mut m = dict_from_json(&v);
    m.insert("id".into(), s(format!("{}-{}", d.os, d.dir_name())));
    m
}

/// A status row as a dictionary.
pub fn row(r: &StatusRow) -> Dict {
    let v = serde_json::to_value(r).unwrap_or_default();
    let mut m = deployment_dict(v, &r.deployment);
    m.insert("staged".into(), OwnedValue::from(false));
    m
}

/// The staged deployment as a dictionary.
pub fn staged(d: &Deployment) -> Dict {
    let v = serde_json::to_value(d).unwrap_or_default();
    let mut m = deployment_dict(v, d);
    m.insert("staged".into(), OwnedValue::from(true));
    m
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_documents_become_dictionaries_with_the_same_names() {
        let v = serde_json::json!({
            "commit": "ab12",
            "os": "debian",
            "serial": 0,
            "kargs": ["quiet", "console=ttyS0"],
            "origin": {"refspec": "origin:stable", "pinned": false, "layers": {"packages": []}},
            "version": null,
            "tries": {"left": 2, "done": 1},
            "local": [{"id": "x", "name": "sl"}],
        });
        let d = dict_from_json(&v);
        assert!(!d.contains_key("version"), "null is left out");
        assert_eq!(
            String::try_from(d["commit"].try_clone().unwrap()).unwrap(),
            "ab12"
        );
        assert_eq!(i64::try_from(d["serial"].try_clone().unwrap()).unwrap(), 0);
        let kargs = Vec::<String>::try_from(d["kargs"].try_clone().unwrap()).unwrap();
        assert_eq!(kargs, ["quiet", "console=ttyS0"]);
        assert_eq!(d["origin"].value_signature().to_string(), "a{sv}");
        assert_eq!(d["local"].value_signature().to_string(), "aa{sv}");
        let origin = Dict::try_from(d["origin"].try_clone().unwrap()).unwrap();
        assert_eq!(
            String::try_from(origin["refspec"].try_clone().unwrap()).unwrap(),
            "origin:stable"
        );
    }
}
