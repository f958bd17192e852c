//! The routes of `arbor serve` (docs/serve.md): status, check, apply, rollback, the
//! automatic-update policy, a transaction's state, and a stream of the daemon's
//! progress as server-sent events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use zbus::Connection;

use super::bus::{self, Verb};

/// The largest request body (a policy change is a few hundred bytes).
const MAX_BODY: usize = 64 << 10;

/// What every request shares: the bus connection and the token, if one is required.
pub struct Ctx {
    /// The bus `arbord` is on (`None`: the system bus).
    pub bus_address: Option<String>,
    /// The bearer token requests must carry (always on TCP).
    pub token: Option<String>,
    link: tokio::sync::Mutex<Option<Link>>,
}

/// A connection to the bus, and whether it still stands: a watcher task clears
/// `alive` when the bus hangs up on it.
struct Link {
    conn: Connection,
    alive: Arc<AtomicBool>,
}

/// How long one D-Bus call may take before the request gives up (504).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a connection to the bus at `address` (the system bus when `None`).
pub async fn connect(address: Option<&str>) -> zbus::Result<Connection> {
    let b = match address {
        Some(a) => zbus::connection::Builder::address(a)?,
        None => zbus::connection::Builder::system()?,
    };
    b.method_timeout(CALL_TIMEOUT).build().await
}

impl Ctx {
    /// The context over an open connection.
    pub fn new(conn: Connection, bus_address: Option<String>, token: Option<String>) -> Ctx {
        Ctx {
            bus_address,
            token,
            link: tokio::sync::Mutex::new(Some(Link::watch(conn))),
        }
    }

    /// The bus connection, opened again when the last one was lost; 503 while the bus
    /// cannot be reached.
    async fn conn(&self) -> Result<Connection, ApiError> {
        let mut link = self.link.lock().await;
        if let Some(l) = link.as_ref().filter(|l| l.alive.load(Ordering::Relaxed)) {
            return Ok(l.conn.clone());
        }
        *link = None;
        let conn = connect(self.bus_address.as_deref()).await.map_err(|e| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                DISCONNECTED.into(),
                format!("the bus is not reachable: {e}"),
            )
        })?;
        tracing::info!("connected to the bus again");
        *link = Some(Link::watch(conn.clone()));
        Ok(conn)
    }
}

impl Link {
    fn watch(conn: Connection) -> Link {
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let mut stream = zbus::MessageStream::from(&conn);
        tokio::spawn(async move {
            // Every message passes by; the stream ends (or errs) when the socket closes.
            while let Some(m) = stream.next().await {
                if m.is_err() {
                    break;
                }
            }
            tracing::warn!("the bus connection was lost; the next request opens another");
            flag.store(false, Ordering::Relaxed);
        });
        Link { conn, alive }
    }
}

/// The error name of a lost or unreachable bus.
const DISCONNECTED: &str = "org.freedesktop.DBus.Error.Disconnected";

/// The router over `ctx`.
pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/check", post(check))
        .route("/api/apply", post(apply))
        .route("/api/rollback", post(rollback))
        .route("/api/auto", get(auto).put(set_auto))
        .route("/api/transactions/{n}", get(transaction))
        .route("/api/events", get(events))
        .layer(axum::middleware::from_fn(limit_body))
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), authorize))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(ctx)
}

/// Reads every request's body, whatever the route does with it, so that the limit
/// holds for all: more than [`MAX_BODY`] is 413 before any handler runs.
async fn limit_body(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(_) => ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge".into(),
            format!("request bodies are limited to {} KiB", MAX_BODY >> 10),
        )
        .into_response(),
    }
}

/// Every error is the documented JSON `{error, message}`, the framework's own
/// rejections (unknown route, wrong method, a path or query that does not parse, a
/// body that is not UTF-8) included: their text becomes the message.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match text.is_empty() {
        true => status.canonical_reason().unwrap_or("error").to_string(),
        false => text,
    };
    let name = match status {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::PAYLOAD_TOO_LARGE => "PayloadTooLarge",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
        s if s.is_client_error() => "org.freedesktop.DBus.Error.InvalidArgs",
        _ => "org.arbor.Arbor1.Error.Failed",
    };
    let mut out = ApiError(status, name.into(), message).into_response();
    // What the original said of the route (`Allow` for a wrong method) stays.
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// An error as the API returns it: a status and `{"error": NAME, "message": TEXT}`.
pub struct ApiError(StatusCode, String, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ApiError(code, name, message) = self;
        let mut r = (code, Json(json!({"error": name, "message": message}))).into_response();
        if code == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

impl From<zbus::Error> for ApiError {
    /// The daemon's error names become HTTP statuses a dashboard can act on.
    fn from(e: zbus::Error) -> Self {
        let (name, message) = match &e {
            zbus::Error::InputOutput(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                let text = "the daemon did not answer in time".to_string();
                return ApiError(
                    StatusCode::GATEWAY_TIMEOUT,
                    "org.freedesktop.DBus.Error.NoReply".into(),
                    text,
                );
            }
            zbus::Error::InputOutput(_) => {
                let text = format!("the bus connection was lost ({e}); try again");
                return ApiError(StatusCode::SERVICE_UNAVAILABLE, DISCONNECTED.into(), text);
            }
            zbus::Error::MethodError(name, msg, _) => {
                (name.to_string(), msg.clone().unwrap_or_default())
            }
            zbus::Error::FDO(f) => {
                let name = zbus::DBusError::name(f.as_ref()).to_string();
                let msg = zbus::DBusError::description(f.as_ref())
                    .unwrap_or("")
                    .to_string();
                (name, msg)
            }
            other => ("org.arbor.Arbor1.Error.Failed".into(), other.to_string()),
        };
        let code = match name.rsplit('.').next().unwrap_or("") {
            "AccessDenied" | "AuthFailed" | "InteractiveAuthorizationRequired" => {
                StatusCode::FORBIDDEN
            }
            "Busy" => StatusCode::CONFLICT,
            "InvalidArgs" | "NoStateroot" | "ChannelNotFound" => StatusCode::BAD_REQUEST,
            "NothingPending" => StatusCode::CONFLICT,
            "Offline" | "ServiceUnknown" | "NameHasNoOwner" => StatusCode::SERVICE_UNAVAILABLE,
            "NoSpace" => StatusCode::INSUFFICIENT_STORAGE,
            "UnknownObject" => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, name, message)
    }
}

type ApiResult = Result<Response, ApiError>;

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        "org.freedesktop.DBus.Error.InvalidArgs".into(),
        message.into(),
    )
}

/// Refuses, with 401, a request without the token when one is required. The
/// comparison takes the same time whatever the token sent.
async fn authorize(State(ctx): State<Arc<Ctx>>, req: Request, next: Next) -> Response {
    if let Some(want) = &ctx.token {
        let got = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(got.as_bytes(), want.as_bytes()) {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "unauthorized".into(),
                "this API needs 'Authorization: Bearer TOKEN' with the token of its token file"
                    .into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Equal bytes, compared by their BLAKE3 hashes (whose equality is constant-time), so
/// the time says nothing about the secret: not how much of it matched, nor its length.
fn same(a: &[u8], b: &[u8]) -> bool {
    blake3::hash(a) == blake3::hash(b)
}

async fn status(State(ctx): State<Arc<Ctx>>) -> ApiResult {
    Ok(Json(bus::status(&ctx.conn().await?).await?).into_response())
}

/// `?wait=true`: answer once the transaction finished, with its outcome.
#[derive(Deserialize, Default)]
struct Wait {
    #[serde(default)]
    wait: bool,
}

/// Starts a transaction; 202 with its path at once, or 200 with its outcome when the
/// client asked to wait (a failed transaction is then 200 too, with success false and
/// its error name: the request itself worked).
async fn begin(ctx: &Ctx, verb: Verb, wait: bool) -> ApiResult {
    if wait {
        return Ok(Json(perform(ctx, verb).await?).into_response());
    }
    let (path, _) = bus::start(&ctx.conn().await?, verb).await?;
    let n = path.as_str().rsplit('/').next().unwrap_or("");
    let body = json!({"transaction": path.as_str(), "url": format!("/api/transactions/{n}")});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Runs a transaction to its end and returns its outcome.
async fn perform(ctx: &Ctx, verb: Verb) -> Result<Value, ApiError> {
    let (path, stream) = bus::start(&ctx.conn().await?, verb).await?;
    Ok(bus::outcome(&ctx.conn().await?, &path, stream).await?)
}

/// A check; waited for, its outcome carries what a dashboard wants next: the offer.
async fn check(State(ctx): State<Arc<Ctx>>, Query(q): Query<Wait>) -> ApiResult {
    if !q.wait {
        return begin(&ctx, Verb::Check, false).await;
    }
    let mut outcome = perform(&ctx, Verb::Check).await?;
    outcome["available"] = bus::available(&ctx.conn().await?).await?;
    Ok(Json(outcome).into_response())
}

async fn apply(State(ctx): State<Arc<Ctx>>, Query(q): Query<Wait>) -> ApiResult {
    begin(&ctx, Verb::Upgrade, q.wait).await
}

async fn rollback(State(ctx): State<Arc<Ctx>>, Query(q): Query<Wait>) -> ApiResult {
    begin(&ctx, Verb::Rollback, q.wait).await
}

async fn auto(State(ctx): State<Arc<Ctx>>) -> ApiResult {
    Ok(Json(bus::policy(&ctx.conn().await?).await?).into_response())
}

async fn set_auto(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, body: String) -> ApiResult {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("application/json"));
    if !json_type {
        return Err(bad_request("send the changes as application/json"));
    }
    let changes: Value =
        serde_json::from_str(&body).map_err(|e| bad_request(format!("not JSON: {e}")))?;
    bus::set_policy(
        &ctx.conn().await?,
        bus::options(&changes).map_err(bad_request)?,
    )
    .await?;
    auto(State(ctx)).await
}

async fn transaction(State(ctx): State<Arc<Ctx>>, Path(n): Path<u64>) -> ApiResult {
    let path = format!("{}/Transaction/{n}", bus::ROOT);
    Ok(Json(bus::transaction(&ctx.conn().await?, &path).await?).into_response())
}

/// The daemon's signals as server-sent events, as they come, until the client goes.
async fn events(State(ctx): State<Arc<Ctx>>) -> ApiResult {
    let stream = bus::signals(&ctx.conn().await?).await?;
    let events = stream.filter_map(|m| async move {
        let m = m.ok()?;
        let (name, data) = bus::event(&m)?;
        Some(Ok::<_, std::convert::Infallible>(
            Event::default().event(name).data(data.to_string()),
        ))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"s3cret", b"s3cret"));
        assert!(!same(b"s3cret", b"s3cres"));
        assert!(!same(b"s3cre", b"s3cret"));
        assert!(!same(b"", b"x"));
    }

    #[test]
    fn daemon_errors_become_statuses() {
        let e = |name: &str| {
            let n = zbus::names::OwnedErrorName::try_from(name.to_string()).unwrap();
            let msg = zbus::message::Message::method_call("/", "X")
                .unwrap()
                .build(&())
                .unwrap();
            ApiError::from(zbus::Error::MethodError(n, Some("why".into()), msg)).0
        };
        assert_eq!(e("org.arbor.Arbor1.Error.Busy"), StatusCode::CONFLICT);
        assert_eq!(
            e("org.freedesktop.DBus.Error.AccessDenied"),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            e("org.arbor.Arbor1.Error.Offline"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            e("org.freedesktop.DBus.Error.InvalidArgs"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            e("org.arbor.Arbor1.Error.Failed"),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
