//! `arbor serve` as a D-Bus client of `arbord`: it reads the daemon's properties
//! through typed proxies (`proxy.rs`), starts transactions the race-free way
//! (`wait-for-start`, then `Start`), and turns the daemon's signals into JSON. It
//! holds no privilege of its own: polkit judges each call by the uid `arbor serve`
//! runs as.

use std::collections::HashMap;

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value as Json, json};
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus::{Connection, MatchRule, MessageStream};

use super::proxy::{Options, SysrootProxy, TransactionProxy};
use arbor_core::wire::Maybe;
use arbor_ops::Outcome;
use arbor_ops::update::policy::Policy;
use arbor_ops::update::state::{Offer, UpdateRecord};
use arbor_statedb::HistoryEntry;
use arbor_sysroot::status::{StatusRow, UpdateState};

/// The daemon's well-known name.
pub const NAME: &str = "org.arbor.Arbor1";
/// Its root object.
pub const ROOT: &str = "/org/arbor/Arbor1";
const TRANSACTION: &str = "org.arbor.Arbor1.Transaction";

/// The transactions `arbor serve` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `Check`: what the followed channel offers.
    Check,
    /// `Upgrade`: fetch and stage it.
    Upgrade,
    /// `Rollback`.
    Rollback,
}

/// A typed document as JSON (its serde form: the CLI's).
fn json<T: Serialize>(doc: T) -> Json {
    serde_json::to_value(doc).unwrap_or(Json::Null)
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

/// The sysroot object's proxy; its properties are read fresh on each request.
async fn sysroot(conn: &Connection) -> zbus::Result<SysrootProxy<'_>> {
    SysrootProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

/// A transaction object's proxy.
async fn transaction_proxy<'a>(
    conn: &'a Connection,
    path: &str,
) -> zbus::Result<TransactionProxy<'a>> {
    TransactionProxy::builder(conn)
        .path(path.to_string())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

/// What `GET /api/status` returns: the sysroot's state and the update's.
pub async fn status(conn: &Connection) -> zbus::Result<Json> {
    let p = sysroot(conn).await?;
    Ok(json!({
        "update_state": json(p.update_state().await?),
        "booted": json(p.booted_deployment().await?),
        "pending": json(p.pending_deployment().await?),
        "rollback": json(p.rollback_deployment().await?),
        "staged": json(p.staged_deployment().await?),
        "available": json(p.available_update().await?),
        "update_status": json(p.update_status().await?),
        "active_transaction": json(p.active_transaction().await?),
        "last_transaction": json(p.last_transaction().await?),
    }))
}

/// What the followed channel offers (`null`: nothing, or not checked yet).
pub async fn available(conn: &Connection) -> zbus::Result<Json> {
    Ok(json(sysroot(conn).await?.available_update().await?))
}

/// The automatic-update policy.
pub async fn policy(conn: &Connection) -> zbus::Result<Json> {
    Ok(json(sysroot(conn).await?.automatic_update_policy().await?))
}

/// Calls a transaction method with "wait-for-start", subscribes to the new
/// transaction's signals, then starts it. Returns its path and the subscription, which
/// sees every signal from the first.
///
/// The steps run in a task of their own, so a request dropped half-way (its client
/// hung up) cannot leave a transaction waiting for a Start that never comes: once
/// the request is gone, the task cancels what it created instead of starting it.
pub async fn start(
    conn: &Connection,
    verb: Verb,
) -> zbus::Result<(OwnedObjectPath, MessageStream)> {
    let wanted = std::sync::Arc::new(());
    let watch = std::sync::Arc::downgrade(&wanted);
    let conn = conn.clone();
    let task = tokio::spawn(async move {
        let opts = HashMap::from([("wait-for-start".to_string(), OwnedValue::from(true))]);
        let p = sysroot(&conn).await?;
        let path = match verb {
            Verb::Check => p.check(opts).await?,
            Verb::Upgrade => p.upgrade(opts).await?,
            Verb::Rollback => p.rollback(opts).await?,
        };
        let txn = transaction_proxy(&conn, path.as_str()).await?;
        if watch.upgrade().is_none() {
            // Nobody waits for it any more: abandon it rather than start it.
            txn.cancel().await?;
            return Err(zbus::Error::Failure("the request was dropped".into()));
        }
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(NAME)?
            .interface(TRANSACTION)?
            .path(path.as_str())?
            .build();
        let stream = MessageStream::for_match_rule(rule, &conn, None).await?;
        txn.start().await?;
        Ok((path, stream))
    });
    let out = task
        .await
        .map_err(|e| zbus::Error::Failure(format!("starting the transaction: {e}")))?;
    drop(wanted);
    out
}

/// Reads a transaction's signals until `Finished`, then its outcome (as
/// [`transaction`]).
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

/// A transaction's state as JSON, by its properties: `{transaction, method, running,
/// success, percent, current_task, error, error_name, result}`, `result` being the
/// outcome document (`null` until it succeeded).
pub async fn transaction(conn: &Connection, path: &str) -> zbus::Result<Json> {
    let t = transaction_proxy(conn, path).await?;
    Ok(json!({
        "transaction": path,
        "method": t.method().await?,
        "running": t.running().await?,
        "success": t.success().await?,
        "percent": t.percent().await?,
        "current_task": t.current_task().await?,
        "error": t.error_message().await?,
        "error_name": t.error_name().await?,
        "result": json(t.result().await?),
    }))
}

/// Changes the automatic-update policy.
pub async fn set_policy(conn: &Connection, changes: Options) -> zbus::Result<()> {
    sysroot(conn)
        .await?
        .set_automatic_update_policy(changes)
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

/// A changed property's new value as JSON, decoded as the type the daemon encodes it
/// from; `None` for a name this arbor does not know (a newer daemon's).
fn property_json(name: &str, v: OwnedValue) -> Option<Json> {
    fn typed<T>(v: OwnedValue) -> Option<Json>
    where
        T: TryFrom<OwnedValue> + Serialize,
    {
        T::try_from(v).ok().map(json)
    }
    match name {
        "BootedDeployment" | "PendingDeployment" | "RollbackDeployment" | "StagedDeployment" => {
            typed::<Maybe<StatusRow>>(v)
        }
        "Deployments" => typed::<Vec<StatusRow>>(v),
        "UpdateState" => typed::<UpdateState>(v),
        "UpdateStatus" => typed::<UpdateRecord>(v),
        "AvailableUpdate" => typed::<Maybe<Offer>>(v),
        "LastTransaction" => typed::<Maybe<HistoryEntry>>(v),
        "AutomaticUpdatePolicy" => typed::<Policy>(v),
        "ActiveTransaction" => typed::<(String, String, String)>(v),
        "Result" => typed::<Maybe<Outcome>>(v),
        "Running" | "Success" => typed::<bool>(v),
        "Percent" => typed::<u32>(v),
        "Path" | "Method" | "Initiator" | "CurrentTask" | "ErrorMessage" | "ErrorName" => {
            typed::<String>(v)
        }
        _ => None,
    }
}

/// A daemon signal as a server-sent event: (event name, JSON data). Transaction
/// signals keep their names (`PercentProgress`, `DownloadProgress`, `TaskBegin`,
/// `Finished`, ...) with named fields; a change of properties is `PropertiesChanged`
/// with the new values, decoded as the documents they are.
pub fn event(msg: &zbus::Message) -> Option<(String, Json)> {
    let h = msg.header();
    let member = h.member()?.to_string();
    let path = h.path()?.to_string();
    let body = msg.body();
    let mut data = match member.as_str() {
        "PercentProgress" => {
            let (text, percent): (String, u32) = body.deserialize().ok()?;
            json!({"text": text, "percent": percent})
        }
        "DownloadProgress" => {
            let (done, total, objects_done, objects_total, rate): (u64, u64, u32, u32, u64) =
                body.deserialize().ok()?;
            json!({
                "bytes_done": done,
                "bytes_total": total,
                "objects_done": objects_done,
                "objects_total": objects_total,
                "bytes_per_second": rate,
            })
        }
        "Finished" => {
            let (success, error): (bool, String) = body.deserialize().ok()?;
            json!({"success": success, "error": error})
        }
        "TaskBegin" | "TaskEnd" => {
            let (task,): (String,) = body.deserialize().ok()?;
            json!({ "task": task })
        }
        "Message" => {
            let (text,): (String,) = body.deserialize().ok()?;
            json!({ "text": text })
        }
        "PropertiesChanged" => {
            let (interface, changed, invalidated): (
                String,
                HashMap<String, OwnedValue>,
                Vec<String>,
            ) = body.deserialize().ok()?;
            let changed: serde_json::Map<String, Json> = changed
                .into_iter()
                .filter_map(|(k, v)| Some((k.clone(), property_json(&k, v)?)))
                .collect();
            json!({"interface": interface, "changed": changed, "invalidated": invalidated})
        }
        _ => json!({}),
    };
    data["path"] = json!(path);
    Some((member, data))
}
