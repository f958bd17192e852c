//! `arbor serve` as a D-Bus client of `arbord`: it reads the daemon's properties,
//! starts transactions the race-free way (`wait-for-start`, then `Start`), and turns
//! the daemon's signals into JSON. It holds no privilege of its own: polkit judges
//! each call by the uid `arbor serve` runs as.

use std::collections::HashMap;

use futures::StreamExt;
use serde_json::{Value as Json, json};
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus::{Connection, MatchRule, MessageStream, Proxy};

/// The daemon's well-known name.
pub const NAME: &str = "org.arbor.Arbor1";
/// Its root object.
pub const ROOT: &str = "/org/arbor/Arbor1";
const SYSROOT: &str = "org.arbor.Arbor1.Sysroot";
const TRANSACTION: &str = "org.arbor.Arbor1.Transaction";

/// The properties `GET /api/status` reports, by their JSON names.
const STATUS: &[(&str, &str)] = &[
    ("update_state", "UpdateState"),
    ("booted", "BootedDeployment"),
    ("pending", "PendingDeployment"),
    ("rollback", "RollbackDeployment"),
    ("staged", "StagedDeployment"),
    ("available", "AvailableUpdate"),
    ("update_status", "UpdateStatus"),
    ("active_transaction", "ActiveTransaction"),
    ("last_transaction", "LastTransaction"),
];

/// A D-Bus value as JSON: dictionaries become objects, arrays and structures arrays,
/// variants their content.
pub fn to_json(v: &Value<'_>) -> Json {
    match v {
        Value::U8(n) => json!(n),
        Value::Bool(b) => json!(b),
        Value::I16(n) => json!(n),
        Value::U16(n) => json!(n),
        Value::I32(n) => json!(n),
        Value::U32(n) => json!(n),
        Value::I64(n) => json!(n),
        Value::U64(n) => json!(n),
        Value::F64(n) => json!(n),
        Value::Str(s) => json!(s.as_str()),
        Value::Signature(s) => json!(s.to_string()),
        Value::ObjectPath(p) => json!(p.as_str()),
        Value::Value(inner) => to_json(inner),
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        Value::Dict(d) => Json::Object(
            d.iter()
                .map(|(k, v)| {
                    let key = match to_json(k) {
                        Json::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Structure(s) => Json::Array(s.fields().iter().map(to_json).collect()),
        Value::Fd(_) => Json::Null,
    }
}

/// The most names one request may change (the policy has a handful).
pub const MAX_KEYS: usize = 32;

/// The longest string sent on to the daemon: what the daemon itself takes.
pub const MAX_STRING: usize = 4096;

/// Checks a string before it crosses into D-Bus, whose strings are UTF-8 (a Rust
/// `str` is) and may not hold NUL: the bus would drop the whole connection.
pub fn check_string(what: &str, s: &str) -> Result<(), String> {
    if s.contains('\0') {
        return Err(format!("{what} holds a NUL character"));
    }
    if s.len() > MAX_STRING {
        return Err(format!("{what} is longer than {MAX_STRING} bytes"));
    }
    Ok(())
}

/// A JSON object as `a{sv}`: booleans `b`, strings `s` (what the policy's names take).
/// Anything else is refused, naming the key (when it is short and printable).
pub fn options(body: &Json) -> Result<HashMap<String, OwnedValue>, String> {
    let Some(map) = body.as_object() else {
        return Err("the body must be a JSON object".into());
    };
    if map.len() > MAX_KEYS {
        return Err(format!("at most {MAX_KEYS} names can be changed at once"));
    }
    let mut out = HashMap::new();
    for (k, v) in map {
        check_string("a name", k)?;
        let shown = if k.len() <= 64 && !k.chars().any(char::is_control) {
            format!("'{k}'")
        } else {
            format!("a name of {} bytes", k.len())
        };
        let value = match v {
            Json::Bool(b) => OwnedValue::from(*b),
            Json::String(s) => {
                check_string(&format!("the value of {shown}"), s)?;
                OwnedValue::try_from(Value::from(s.as_str()))
                    .map_err(|e| format!("{shown}: {e}"))?
            }
            _ => return Err(format!("{shown} must be a boolean or a string")),
        };
        out.insert(k.clone(), value);
    }
    Ok(out)
}

fn sysroot(conn: &Connection) -> impl std::future::Future<Output = zbus::Result<Proxy<'_>>> {
    Proxy::new(conn, NAME, ROOT, SYSROOT)
}

/// One property of the sysroot object as JSON. `UpdateStatus`, a JSON document in a
/// string, is parsed.
pub async fn property(conn: &Connection, name: &str) -> zbus::Result<Json> {
    let v: OwnedValue = sysroot(conn).await?.get_property(name).await?;
    let j = to_json(&v);
    Ok(match (name, &j) {
        ("UpdateStatus", Json::String(s)) => serde_json::from_str(s).unwrap_or(j),
        _ => j,
    })
}

/// What `GET /api/status` returns: the sysroot's state and the update's.
pub async fn status(conn: &Connection) -> zbus::Result<Json> {
    let mut out = serde_json::Map::new();
    for (key, prop) in STATUS {
        out.insert(key.to_string(), property(conn, prop).await?);
    }
    Ok(Json::Object(out))
}

/// Calls a transaction method (`Check`, `Upgrade`, `Rollback`) with "wait-for-start",
/// subscribes to the new transaction's signals, then starts it. Returns its path and
/// the subscription, which sees every signal from the first.
///
/// The steps run in a task of their own, so a request dropped half-way (its client
/// hung up) cannot leave a transaction waiting for a Start that never comes: once
/// the request is gone, the task cancels what it created instead of starting it.
pub async fn start(
    conn: &Connection,
    method: &str,
) -> zbus::Result<(OwnedObjectPath, MessageStream)> {
    let wanted = std::sync::Arc::new(());
    let watch = std::sync::Arc::downgrade(&wanted);
    let (conn, method) = (conn.clone(), method.to_string());
    let task = tokio::spawn(async move {
        let opts = HashMap::from([("wait-for-start".to_string(), OwnedValue::from(true))]);
        let path: OwnedObjectPath = sysroot(&conn)
            .await?
            .call(method.as_str(), &(opts,))
            .await?;
        let txn = Proxy::new(&conn, NAME, path.to_string(), TRANSACTION).await?;
        if watch.upgrade().is_none() {
            // Nobody waits for it any more: abandon it rather than start it.
            txn.call::<_, _, ()>("Cancel", &()).await?;
            return Err(zbus::Error::Failure("the request was dropped".into()));
        }
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(NAME)?
            .interface(TRANSACTION)?
            .path(path.as_str())?
            .build();
        let stream = MessageStream::for_match_rule(rule, &conn, None).await?;
        txn.call::<_, _, ()>("Start", &()).await?;
        Ok((path, stream))
    });
    let out = task
        .await
        .map_err(|e| zbus::Error::Failure(format!("starting the transaction: {e}")))?;
    drop(wanted);
    out
}

/// Reads a transaction's signals until `Finished`, then its outcome:
/// `{transaction, success, error, error_name, result}` (`result` parsed from JSON).
pub async fn outcome(
    conn: &Connection,
    path: &OwnedObjectPath,
    mut stream: MessageStream,
) -> zbus::Result<Json> {
    while let Some(msg) = stream.next().await {
        let msg = msg?;
        if msg.header().member().is_some_and(|m| m == "Finished") {
            break;
        }
    }
    transaction(conn, path.as_str()).await
}

/// A transaction's state as JSON, by its properties.
pub async fn transaction(conn: &Connection, path: &str) -> zbus::Result<Json> {
    let t = Proxy::new(conn, NAME, path, TRANSACTION).await?;
    let text = |name: &'static str| {
        let t = &t;
        async move { t.get_property::<String>(name).await }
    };
    let result = text("Result").await?;
    Ok(json!({
        "transaction": path,
        "method": text("Method").await?,
        "running": t.get_property::<bool>("Running").await?,
        "success": t.get_property::<bool>("Success").await?,
        "percent": t.get_property::<u32>("Percent").await?,
        "current_task": text("CurrentTask").await?,
        "error": text("ErrorMessage").await?,
        "error_name": text("ErrorName").await?,
        "result": serde_json::from_str::<Json>(&result).unwrap_or(Json::Null),
    }))
}

/// The automatic-update policy, and a change of it.
pub async fn set_policy(
    conn: &Connection,
    changes: HashMap<String, OwnedValue>,
) -> zbus::Result<()> {
    sysroot(conn)
        .await?
        .call::<_, _, ()>("SetAutomaticUpdatePolicy", &(changes,))
        .await
}

/// Every signal of the daemon's objects, for the event stream.
pub async fn signals(conn: &Connection) -> zbus::Result<MessageStream> {
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(NAME)?
        .path_namespace(ROOT)?
        .build();
    MessageStream::for_match_rule(rule, conn, Some(64)).await
}

/// A daemon signal as a server-sent event: (event name, JSON data). Transaction
/// signals keep their names (`PercentProgress`, `DownloadProgress`, `TaskBegin`,
/// `Finished`, ...) with named fields; a change of the sysroot's properties is
/// `PropertiesChanged` with the new values.
pub fn event(msg: &zbus::Message) -> Option<(String, Json)> {
    let h = msg.header();
    let member = h.member()?.to_string();
    let path = h.path()?.to_string();
    let body = msg.body();
    let fields: Vec<Json> = match body.deserialize::<zbus::zvariant::Structure<'_>>() {
        Ok(s) => s.fields().iter().map(to_json).collect(),
        Err(_) => Vec::new(),
    };
    let names: &[&str] = match member.as_str() {
        "PercentProgress" => &["text", "percent"],
        "DownloadProgress" => &[
            "bytes_done",
            "bytes_total",
            "objects_done",
            "objects_total",
            "bytes_per_second",
        ],
        "Finished" => &["success", "error"],
        "TaskBegin" | "TaskEnd" => &["task"],
        "Message" => &["text"],
        "PropertiesChanged" => &["interface", "changed", "invalidated"],
        _ => &[],
    };
    let mut data = serde_json::Map::new();
    data.insert("path".into(), json!(path));
    for (name, value) in names.iter().zip(fields) {
        data.insert(name.to_string(), value);
    }
    Some((member, Json::Object(data)))
}
