//! `arbord` and `arbor serve` driven as a buggy panel, a crashing script or an attacker
//! holding the token would drive them: clients that hang up at any instant, NUL and
//! invalid UTF-8, oversized lists, keys and bodies, wrong signatures, a bus that goes
//! away. After each, a legitimate caller is answered at once and nothing changed that
//! was not asked for. The `fuzz_` tests generate such cases for a bounded time
//! (`ARBOR_PROP_SECONDS`); scripts/fuzz.sh runs them.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::bus::Bus;
use common::*;
use serde_json::Value;
use zbus::zvariant::{OwnedValue, Value as ZValue};

const ROOT: &str = "/org/arbor/Arbor1";
const SYSROOT: &str = "org.arbor.Arbor1.Sysroot";

/// A sysroot with os/a deployed and os/b composed, its bus, and `arbor serve` on a
/// socket. Fields drop in order: serve, the bus (and daemon), then the folder.
struct World {
    serve: Child,
    sock: PathBuf,
    bus: Bus,
    s: String,
    _t: tempfile::TempDir,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.serve.kill();
        let _ = self.serve.wait();
    }
}

fn world() -> World {
    let t = scratch();
    let s = sysroot(t.path());
    compose(&s, &rootfs(t.path(), "1"), "os/a", "1");
    compose(&s, &rootfs(&t.path().join("2"), "2"), "os/b", "2");
    arbor_ok(&["--sysroot", &s, "deploy", "os/a"]);
    let config = format!("{s}/arbor.toml");
    let bus = Bus::launch_env(&s, 60, None, &[("ARBOR_CONFIG", config.as_str())]);
    let sock = t.path().join("api.sock");
    let serve = Command::new(arbor_bin())
        .args([
            "serve",
            "--socket",
            s_(&sock),
            "--bus-address",
            &bus.address,
        ])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "arbor serve never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    World {
        serve,
        sock,
        bus,
        s,
        _t: t,
    }
}

fn s_(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A D-Bus client of the test's bus that stays on it until dropped.
fn client(w: &World) -> zbus::blocking::Connection {
    zbus::blocking::connection::Builder::address(w.bus.address.as_str())
        .unwrap()
        .build()
        .unwrap()
}

/// One raw HTTP/1.1 exchange on the API socket: (status, body as JSON or a string).
fn http(sock: &Path, request: &[u8]) -> (u16, Value) {
    let mut c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // A server that refuses early (413) may close before all of it is written.
    let _ = c.write_all(request);
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|b| b.1).unwrap_or("");
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.into()));
    (code, body)
}

/// A request with `Connection: close`, so that the answer ends with the connection.
fn request(method: &str, path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: arbor\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for h in headers {
        r.extend_from_slice(format!("{h}\r\n").as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

/// `GET /api/status` answers 200 within `limit` (retrying while something settles).
fn answers_within(w: &World, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let (code, body) = http(&w.sock, &request("GET", "/api/status", &[], b""));
        if code == 200 {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "status is {code} after {limit:?}: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A transaction can start again within `limit`: POST /api/check?wait=true is
/// answered by its outcome, not 409 Busy.
fn not_wedged(w: &World, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let (code, body) = http(&w.sock, &request("POST", "/api/check?wait=true", &[], b""));
        if code == 200 {
            return t.elapsed();
        }
        assert_eq!(code, 409, "{body}");
        assert!(t.elapsed() < limit, "still busy after {limit:?}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The JSON error of a refused request: (status, error name, message).
fn refused(w: &World, req: &[u8]) -> (u16, String, String) {
    let (code, body) = http(&w.sock, req);
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{code}: not the documented JSON error: {body}"
    );
    (
        code,
        body["error"].as_str().unwrap().to_string(),
        body["message"].as_str().unwrap().to_string(),
    )
}

#[test]
fn root_clients_that_hang_up_or_vanish_never_hold_the_daemon() {
    as_root!();
    let w = world();
    // HTTP: a POST whose client hangs up at once or a little later.
    for delay in [0u64, 1, 5, 20, 60] {
        let mut c = UnixStream::connect(&w.sock).unwrap();
        c.write_all(&request("POST", "/api/check", &[], b""))
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        drop(c);
        let took = not_wedged(&w, Duration::from_secs(3));
        println!("hang-up after {delay} ms: the next check ran after {took:?}");
    }
    // A client that goes while its answer is written: serve lives on (SIGPIPE).
    for _ in 0..20 {
        let mut c = UnixStream::connect(&w.sock).unwrap();
        c.write_all(&request("GET", "/api/status", &[], b""))
            .unwrap();
        drop(c);
    }
    let mut events = UnixStream::connect(&w.sock).unwrap();
    events
        .write_all(&request("GET", "/api/events", &[], b""))
        .unwrap();
    let mut first = [0u8; 64];
    let _ = events.read(&mut first);
    drop(events);
    not_wedged(&w, Duration::from_secs(3));
    answers_within(&w, Duration::from_secs(1));
    // D-Bus: a caller that leaves right after Deploy(wait-for-start) (busctl exits).
    let out = w.bus.busctl(&[
        "call",
        "org.arbor.Arbor1",
        ROOT,
        SYSROOT,
        "Deploy",
        "sa{sv}",
        "os/b",
        "1",
        "wait-for-start",
        "b",
        "true",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    loop {
        let cli = arbor(&["--sysroot", &w.s, "--no-wait", "kargs", "--append", "x=1"]);
        if cli.status.success() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the CLI is locked out: {}",
            String::from_utf8_lossy(&cli.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(versions(&w.s), ["1"], "the abandoned deploy did nothing");

    // Sysroot.Cancel frees a transaction waiting for its Start, whoever holds it.
    let conn = client(&w);
    let opts = HashMap::from([("wait-for-start".to_string(), OwnedValue::from(true))]);
    let _path: zbus::zvariant::OwnedObjectPath = conn
        .call_method(
            Some("org.arbor.Arbor1"),
            ROOT,
            Some(SYSROOT),
            "Deploy",
            &("os/b", opts),
        )
        .unwrap()
        .body()
        .deserialize()
        .unwrap();
    let cancel = w
        .bus
        .busctl(&["call", "org.arbor.Arbor1", ROOT, SYSROOT, "Cancel"]);
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    not_wedged(&w, Duration::from_secs(2));
    assert_eq!(versions(&w.s), ["1"]);
    arbor_ok(&["--sysroot", &w.s, "fsck"]);
}

#[test]
fn root_strings_are_checked_before_dbus_and_serve_survives_a_lost_bus() {
    as_root!();
    let mut w = world();
    let put = |body: &[u8]| {
        request(
            "PUT",
            "/api/auto",
            &["Content-Type: application/json"],
            body,
        )
    };
    let before = std::fs::read(Path::new(&w.s).join("arbor.toml")).ok();
    let (code, name, msg) = refused(&w, &put(br#"{"channel": "a\u0000b"}"#));
    assert_eq!(
        (code, name.as_str()),
        (400, "org.freedesktop.DBus.Error.InvalidArgs")
    );
    assert!(msg.contains("NUL"), "{msg}");
    answers_within(&w, Duration::from_secs(1));
    let (code, _, msg) = refused(&w, &put(&[b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}']));
    assert_eq!(code, 400, "{msg}");
    assert_eq!(
        std::fs::read(Path::new(&w.s).join("arbor.toml")).ok(),
        before
    );

    // The bus goes away: 503 meanwhile, and answers again once it is back.
    w.bus.stop();
    let t = Instant::now();
    let (code, name, _) = refused(&w, &request("GET", "/api/status", &[], b""));
    assert_eq!(
        (code, name.as_str()),
        (503, "org.freedesktop.DBus.Error.Disconnected")
    );
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
    w.bus.start_again();
    answers_within(&w, Duration::from_secs(10));
}

#[test]
fn root_oversized_input_is_refused_naming_the_limit() {
    as_root!();
    let w = world();
    let conn = client(&w);
    let error_of = |r: zbus::Result<zbus::Message>| -> (String, String) {
        match r.expect_err("refused") {
            zbus::Error::MethodError(n, m, _) => (n.to_string(), m.unwrap_or_default()),
            e => panic!("not a method error: {e}"),
        }
    };
    let empty: HashMap<String, OwnedValue> = HashMap::new();
    // 100,000 package names: refused at once, not worked through.
    let names: Vec<String> = (0..100_000).map(|i| format!("pkg{i}")).collect();
    let t = Instant::now();
    let (name, msg) = error_of(conn.call_method(
        Some("org.arbor.Arbor1"),
        ROOT,
        Some(SYSROOT),
        "Install",
        &(names, empty.clone()),
    ));
    assert_eq!(name, "org.freedesktop.DBus.Error.InvalidArgs");
    assert!(msg.contains("at most 1024"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // A 1 MB unknown option key is not echoed back.
    let huge = "k".repeat(1 << 20);
    let opts = HashMap::from([(huge, OwnedValue::from(true))]);
    let (name, msg) = error_of(conn.call_method(
        Some("org.arbor.Arbor1"),
        ROOT,
        Some(SYSROOT),
        "Rollback",
        &(opts,),
    ));
    assert_eq!(name, "org.freedesktop.DBus.Error.InvalidArgs");
    assert!(
        msg.len() < 300 && msg.contains("of 1048576 bytes"),
        "{} bytes",
        msg.len()
    );
    // A wrong signature is InvalidArgs, not zbus's own error.
    let (name, msg) = error_of(conn.call_method(
        Some("org.arbor.Arbor1"),
        ROOT,
        Some(SYSROOT),
        "Deploy",
        &("os/b",),
    ));
    assert_eq!(name, "org.freedesktop.DBus.Error.InvalidArgs", "{msg}");
    assert!(msg.contains("sa{sv}"), "{msg}");
    // An over-long client id registers nothing.
    let long = OwnedValue::try_from(ZValue::from("x".repeat(5000))).unwrap();
    let id = HashMap::from([("id".to_string(), long)]);
    let (name, _) = error_of(conn.call_method(
        Some("org.arbor.Arbor1"),
        ROOT,
        Some(SYSROOT),
        "RegisterClient",
        &(id,),
    ));
    assert_eq!(name, "org.freedesktop.DBus.Error.InvalidArgs");
    let out = conn.call_method(
        Some("org.arbor.Arbor1"),
        ROOT,
        Some(SYSROOT),
        "UnregisterClient",
        &(empty,),
    );
    assert!(out.is_err(), "the refused registration was recorded");

    // HTTP: every refusal is the documented JSON, with a status to act on.
    let big = vec![b'x'; 10 << 20];
    for (req, want) in [
        (
            request("POST", "/api/check", &[], &big),
            (413, "PayloadTooLarge"),
        ),
        (
            request("GET", "/api/transactions/abc", &[], b""),
            (400, "org.freedesktop.DBus.Error.InvalidArgs"),
        ),
        (
            request("POST", "/api/check?wait=maybe", &[], b""),
            (400, "org.freedesktop.DBus.Error.InvalidArgs"),
        ),
        (request("GET", "/api/nowhere", &[], b""), (404, "NotFound")),
        (
            request("DELETE", "/api/status", &[], b""),
            (405, "MethodNotAllowed"),
        ),
        (
            request("GET", "/api/transactions/99999", &[], b""),
            (404, "org.freedesktop.DBus.Error.UnknownObject"),
        ),
    ] {
        let (code, name, _) = refused(&w, &req);
        assert_eq!((code, name.as_str()), want);
    }
    let many: String = (0..40)
        .map(|i| format!("\"k{i}\": true"))
        .collect::<Vec<_>>()
        .join(",");
    let (code, _, msg) = refused(
        &w,
        &request(
            "PUT",
            "/api/auto",
            &["Content-Type: application/json"],
            format!("{{{many}}}").as_bytes(),
        ),
    );
    assert!(code == 400 && msg.contains("at most 32"), "{code} {msg}");
    answers_within(&w, Duration::from_secs(1));
    assert_eq!(versions(&w.s), ["1"]);
}

// ---- Generated cases, for a bounded time (scripts/fuzz.sh) ----

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};

/// How long each `fuzz_` test runs (`ARBOR_PROP_SECONDS`, 20 by default).
fn budget() -> Duration {
    Duration::from_secs(
        std::env::var("ARBOR_PROP_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    )
}

/// A runner seeded from `ARBOR_PROP_SEED` (printed, so a failure can be replayed).
fn runner() -> TestRunner {
    let seed: u64 = std::env::var("ARBOR_PROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("ARBOR_PROP_SEED={seed}");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &bytes),
    )
}

/// Draws one value of `s`.
fn draw<T: std::fmt::Debug>(r: &mut TestRunner, s: &impl Strategy<Value = T>) -> T {
    s.new_tree(r).unwrap().current()
}

/// What must not change unless asked: the deployments and their order.
fn state(s: &str) -> Vec<(String, String)> {
    status(s)
        .iter()
        .map(|d| (d["commit"].to_string(), d["serial"].to_string()))
        .collect()
}

/// The property read a legitimate caller makes: answered within a second.
fn daemon_answers(conn: &zbus::blocking::Connection) {
    let t = Instant::now();
    let p = zbus::blocking::fdo::PropertiesProxy::builder(conn)
        .destination("org.arbor.Arbor1")
        .unwrap()
        .path(ROOT)
        .unwrap()
        .build()
        .unwrap();
    let iface = zbus::names::InterfaceName::from_static_str(SYSROOT).unwrap();
    p.get(iface, "Deployments").expect("the daemon answers");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

/// A D-Bus value of a kind the interface takes, or of another, of sizes small to
/// oversized.
fn value() -> impl Strategy<Value = ZValue<'static>> {
    let text = prop_oneof![
        "[a-z/.:-]{0,12}".prop_map(String::from),
        any::<String>(),
        (1usize..6000).prop_map(|n| "v".repeat(n)),
        Just("os/b".to_string()),
        Just("etc".to_string()),
        Just("/etc/hostname".to_string()),
    ];
    let leaf = prop_oneof![
        text.clone().prop_map(ZValue::from),
        any::<bool>().prop_map(ZValue::from),
        any::<u32>().prop_map(ZValue::from),
        any::<i64>().prop_map(ZValue::from),
    ];
    prop_oneof![
        4 => leaf.clone(),
        2 => proptest::collection::vec(text.clone(), 0..40).prop_map(ZValue::from),
        1 => (0usize..3000).prop_map(|n| ZValue::from((0..n).map(|i| format!("p{i}")).collect::<Vec<_>>())),
        2 => proptest::collection::hash_map(
            prop_oneof![
                Just("wait-for-start".to_string()),
                Just("os".to_string()),
                Just("deployment".to_string()),
                Just("id".to_string()),
                "[a-z-]{0,20}".prop_map(String::from),
                (1usize..100_000).prop_map(|n| "k".repeat(n)),
            ],
            leaf.prop_map(|v| OwnedValue::try_from(v).unwrap()),
            0..40,
        )
        .prop_map(ZValue::from),
    ]
}

/// The methods of the Sysroot interface with their signatures, from the checked-in
/// interface file (itself checked against the live daemon by integration/dbus.rs).
fn methods() -> Vec<(String, String)> {
    let xml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.arbor.Arbor1.xml"),
    )
    .unwrap();
    let block = xml
        .split("<interface name=\"org.arbor.Arbor1.Sysroot\">")
        .nth(1)
        .unwrap();
    let block = block.split("</interface>").next().unwrap();
    let mut out = Vec::new();
    for m in block.split("<method name=\"").skip(1) {
        let name = m.split('"').next().unwrap().to_string();
        let body = m.split("</method>").next().unwrap();
        let sig: String = body
            .split("<arg ")
            .skip(1)
            .filter(|a| !a.contains("direction=\"out\""))
            .filter_map(|a| a.split("type=\"").nth(1).and_then(|t| t.split('"').next()))
            .collect();
        out.push((name, sig));
    }
    out
}

#[test]
#[ignore = "generated cases for a bounded time: scripts/fuzz.sh runs it (ARBOR_FUZZ=1)"]
fn fuzz_dbus_methods_with_generated_signatures_options_and_sizes() {
    as_root!();
    let w = world();
    let conn = client(&w);
    let all = methods();
    let mut r = runner();
    let deadline = Instant::now() + budget();
    let mut cases = 0;
    while Instant::now() < deadline {
        let (name, sig) = all[draw(&mut r, &(0..all.len()))].clone();
        let before = state(&w.s);
        let args: Vec<ZValue<'static>> = draw(&mut r, &proptest::collection::vec(value(), 0..4));
        let mut b = zbus::zvariant::StructureBuilder::new();
        for a in &args {
            b = b.append_field(a.try_clone().unwrap());
        }
        let reply = if args.is_empty() {
            conn.call_method(
                Some("org.arbor.Arbor1"),
                ROOT,
                Some(SYSROOT),
                name.as_str(),
                &(),
            )
        } else {
            conn.call_method(
                Some("org.arbor.Arbor1"),
                ROOT,
                Some(SYSROOT),
                name.as_str(),
                &b.build().unwrap(),
            )
        };
        match reply {
            Ok(m) => {
                // A transaction it asked for runs to its end; then all must be sound.
                if let Ok(p) = m.body().deserialize::<zbus::zvariant::OwnedObjectPath>() {
                    w.bus.wait(p.as_str());
                }
            }
            Err(zbus::Error::MethodError(n, msg, _)) => {
                let msg = msg.unwrap_or_default();
                assert!(
                    !n.as_str().starts_with("org.freedesktop.zbus"),
                    "{name}({sig}) with {args:?}: {n}: {msg}"
                );
                assert!(
                    msg.len() < 8192,
                    "{name}: a {}-byte error message",
                    msg.len()
                );
                assert_eq!(
                    state(&w.s),
                    before,
                    "{name} failed ({n}) yet changed the deployments"
                );
            }
            Err(e) => panic!("{name} with {args:?}: {e}"),
        }
        daemon_answers(&conn);
        cases += 1;
    }
    println!("{cases} generated D-Bus calls; the daemon answered after each");
    arbor_ok(&["--sysroot", &w.s, "fsck"]);
}

/// A path with everything but URI-safe characters percent-encoded: a request line
/// that is not HTTP at all is the HTTP layer's to refuse (a bare 400, docs/serve.md),
/// so generated paths are valid URIs that reach the API.
fn percent_encoded(p: &str) -> String {
    p.bytes()
        .map(|b| match b {
            b'/' | b'?' | b'=' | b'&' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b if b.is_ascii_alphanumeric() => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// A request as a client may send it: a method, a path, headers, a body, and where
/// the client hangs up (after so many bytes of it, or never).
fn http_case() -> impl Strategy<Value = (Vec<u8>, Option<usize>)> {
    let method = prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("PUT"),
        Just("DELETE"),
        Just("PATCH"),
        Just("HEAD"),
        Just("OPTIONS"),
        Just("BREW"),
    ];
    let path = prop_oneof![
        Just("/api/status".to_string()),
        Just("/api/check".to_string()),
        Just("/api/auto".to_string()),
        Just("/api/events".to_string()),
        "/api/transactions/[0-9a-z%]{0,24}".prop_map(String::from),
        "/api/(check|apply|rollback)\\?wait=(true|false|1|maybe|)".prop_map(String::from),
        "/[ -~]{0,60}".prop_map(|p: String| percent_encoded(&p)),
        (1usize..9000).prop_map(|n| format!("/api/{}", "a".repeat(n))),
    ];
    let json_body = prop_oneof![
        Just(r#"{"auto_install": true}"#.to_string()),
        Just(r#"{"channel": "a\u0000b"}"#.to_string()),
        "\\{\"[a-z_]{1,16}\": (true|false|\"[ -~]{0,20}\"|[0-9]{1,5}|null|\\[\\])\\}"
            .prop_map(String::from),
    ]
    .prop_map(String::into_bytes);
    let body = prop_oneof![
        Just(Vec::new()),
        json_body,
        proptest::collection::vec(any::<u8>(), 0..300),
        (60_000usize..80_000).prop_map(|n| vec![b'{'; n]),
    ];
    let header = prop_oneof![
        Just("Content-Type: application/json".to_string()),
        Just("Content-Type: text/plain".to_string()),
        Just("Authorization: Bearer nope".to_string()),
        Just("Transfer-Encoding: chunked".to_string()),
        Just("Expect: 100-continue".to_string()),
        "X-[A-Za-z]{1,10}: [ -~]{0,40}".prop_map(String::from),
    ];
    (
        method,
        path,
        proptest::collection::vec(header, 0..4),
        body,
        proptest::option::of(0usize..400),
    )
        .prop_map(|(m, p, hs, body, cut)| {
            let hs: Vec<&str> = hs.iter().map(String::as_str).collect();
            (request(m, &p, &hs, &body), cut)
        })
}

#[test]
#[ignore = "generated cases for a bounded time: scripts/fuzz.sh runs it (ARBOR_FUZZ=1)"]
fn fuzz_http_routes_with_generated_requests_and_hang_ups() {
    as_root!();
    let w = world();
    let mut r = runner();
    let deadline = Instant::now() + budget();
    let mut cases = 0;
    while Instant::now() < deadline {
        let (req, cut) = draw(&mut r, &http_case());
        let before = state(&w.s);
        let text = String::from_utf8_lossy(&req[..req.len().min(120)]).into_owned();
        let asks_change = text.starts_with("POST /api/rollback")
            || text.starts_with("POST /api/apply")
            || text.starts_with("PUT /api/auto");
        let mut c = UnixStream::connect(&w.sock).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        match cut {
            Some(n) => {
                let _ = c.write_all(&req[..n.min(req.len())]);
                drop(c);
            }
            None => {
                let _ = c.write_all(&req);
                let _ = c.shutdown(std::net::Shutdown::Write);
                let mut raw = Vec::new();
                let _ = c.read_to_end(&mut raw);
                let head = String::from_utf8_lossy(&raw[..raw.len().min(400)]).into_owned();
                let code: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                if code >= 400 && !text.starts_with("HEAD") {
                    assert!(
                        head.contains("application/json"),
                        "{text:?}: an error that is not the documented JSON:\n{head}"
                    );
                }
            }
        }
        // Whatever the case did, a dashboard is answered at once afterwards (a
        // transaction it started may still be finishing: it may take a moment).
        answers_within(&w, Duration::from_secs(1));
        not_wedged(&w, Duration::from_secs(5));
        if !asks_change {
            assert_eq!(state(&w.s), before, "{text:?} changed the deployments");
        }
        cases += 1;
    }
    println!("{cases} generated HTTP requests; the API answered after each");
    arbor_ok(&["--sysroot", &w.s, "fsck"]);
}
