//! A registry of the test's own that serves a publication's staging folder as arbor
//! lays it out in a registry (docs/registry.md) and misbehaves on demand, as the real
//! one cannot be made to: 429 with `Retry-After`, blobs that break off, a manifest
//! whose bytes are not its digest, a tag that moves mid-fetch, and a login by the bearer-token exchange (it is its
//! own token service).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::Digest;

/// How it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// As a registry should.
    None,
    /// 429 with `Retry-After: secs` to the first `n` requests.
    TooMany { n: u32, secs: u64 },
    /// Every blob's body stops half-way.
    Truncated,
    /// The metadata manifest's `Docker-Content-Digest` is not its bytes' digest.
    WrongManifestDigest,
    /// The metadata tag moves after its first read: later reads get a manifest of
    /// no files (a publisher's push in progress, or a registry that lies).
    TagMoves,
}

struct State {
    fault: Fault,
    served: u32,
    /// `Some((user, password))`: the bearer exchange is required.
    login: Option<(String, String)>,
    log: Vec<(String, u16)>,
}

/// The running registry; stops with the test process.
pub struct FakeRegistry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    state: Arc<Mutex<State>>,
}

const TOKEN: &str = "tok-3f9a";

impl FakeRegistry {
    /// Serves the publication in `staging` as repository `arbor/os`.
    pub fn start(staging: PathBuf) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State {
            fault: Fault::None,
            served: 0,
            login: None,
            log: Vec::new(),
        }));
        let (shared, h) = (state.clone(), host.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (staging, state, host) = (staging.clone(), shared.clone(), h.clone());
                std::thread::spawn(move || answer(conn, &staging, &state, &host));
            }
        });
        FakeRegistry { host, state }
    }

    /// `oci://HOST/arbor/os`.
    pub fn url(&self) -> String {
        format!("oci://{}/arbor/os", self.host)
    }

    /// Misbehaves from now on (and forgets the requests seen).
    pub fn fault(&self, f: Fault) {
        let mut s = self.state.lock().unwrap();
        s.fault = f;
        s.served = 0;
        s.log.clear();
    }

    /// Asks for the bearer exchange, its token service taking `user` and `password`.
    pub fn require_login(&self, user: &str, password: &str) {
        self.state.lock().unwrap().login = Some((user.into(), password.into()));
    }

    /// The requests since the last [`FakeRegistry::fault`], with the status sent.
    pub fn log(&self) -> Vec<(String, u16)> {
        self.state.lock().unwrap().log.clone()
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Every file of the folder by its SHA-256.
fn blobs(dir: &Path) -> HashMap<String, PathBuf> {
    super::walk_files(dir)
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/.oci/"))
        .map(|p| (sha(&std::fs::read(&p).unwrap()), p))
        .collect()
}

/// The metadata manifest as `publish` pushes it: every root, the newest snapshot and
/// targets, the timestamp.
fn metadata_manifest(dir: &Path) -> Vec<u8> {
    let meta = dir.join("metadata");
    let mut names: Vec<String> = std::fs::read_dir(&meta)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let newest = |suffix: &str| {
        names
            .iter()
            .filter_map(|n| Some((n.strip_suffix(suffix)?.parse::<u64>().ok()?, n.clone())))
            .max()
            .map(|(_, n)| n)
    };
    let mut files: Vec<String> = names
        .iter()
        .filter(|n| n.ends_with(".root.json"))
        .cloned()
        .collect();
    files.extend(newest(".snapshot.json"));
    files.extend(newest(".targets.json"));
    files.push("timestamp.json".into());
    let layers: Vec<serde_json::Value> = files
        .iter()
        .map(|n| {
            let b = std::fs::read(meta.join(n)).unwrap();
            serde_json::json!({
                "mediaType": "application/vnd.arbor.file.v1",
                "digest": format!("sha256:{}", sha(&b)),
                "size": b.len(),
                "annotations": {"org.opencontainers.image.title": format!("metadata/{n}")}
            })
        })
        .collect();
    publication_manifest(layers)
}

/// An OCI 1.1 artifact manifest of the publication's type with these layers.
fn publication_manifest(layers: Vec<serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.arbor.publication.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": format!("sha256:{}", sha(b"{}")), "size": 2},
        "layers": layers
    }))
    .unwrap()
}

fn send(conn: &mut TcpStream, status: u16, headers: &[(String, String)], body: &[u8], cut: bool) {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let end = if cut { body.len() / 2 } else { body.len() };
    let _ = conn.write_all(&body[..end]);
}

fn answer(mut conn: TcpStream, staging: &Path, state: &Mutex<State>, host: &str) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut auth = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            auth = Some(v.trim().to_string());
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (fault, served, login) = {
        let mut s = state.lock().unwrap();
        s.served += 1;
        (s.fault.clone(), s.served, s.login.clone())
    };
    let mut reply = |status: u16, headers: Vec<(String, String)>, body: &[u8], cut: bool| {
        state.lock().unwrap().log.push((path.clone(), status));
        send(&mut conn, status, &headers, body, cut);
    };
    if let Fault::TooMany { n, secs } = fault
        && served <= n
    {
        return reply(
            429,
            vec![("Retry-After".into(), secs.to_string())],
            b"slow down",
            false,
        );
    }
    if let Some((user, password)) = &login {
        if path.starts_with("/token") {
            use base64::Engine;
            let login =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let want = format!("Basic {login}");
            return if auth.as_deref() == Some(want.as_str()) && path.contains("scope=repository") {
                reply(
                    200,
                    vec![],
                    format!("{{\"token\":\"{TOKEN}\"}}").as_bytes(),
                    false,
                )
            } else {
                reply(401, vec![], b"bad login", false)
            };
        }
        if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
            let challenge = format!(
                "Bearer realm=\"http://{host}/token\",service=\"fake\",scope=\"repository:arbor/os:pull\""
            );
            return reply(
                401,
                vec![("WWW-Authenticate".into(), challenge)],
                b"login",
                false,
            );
        }
    }
    if path == "/v2/arbor/os/manifests/arbor-metadata" {
        let read_before = state
            .lock()
            .unwrap()
            .log
            .iter()
            .any(|(p, st)| *p == path && *st == 200);
        let body = if fault == Fault::TagMoves && read_before {
            publication_manifest(Vec::new())
        } else {
            metadata_manifest(staging)
        };
        let digest = if fault == Fault::WrongManifestDigest {
            format!("sha256:{}", sha(b"another manifest"))
        } else {
            format!("sha256:{}", sha(&body))
        };
        let headers = vec![
            ("Docker-Content-Digest".into(), digest),
            (
                "Content-Type".into(),
                "application/vnd.oci.image.manifest.v1+json".into(),
            ),
        ];
        return reply(200, headers, &body, false);
    }
    if let Some(d) = path.strip_prefix("/v2/arbor/os/blobs/sha256:") {
        return match blobs(staging).get(d) {
            Some(p) => reply(
                200,
                vec![],
                &std::fs::read(p).unwrap(),
                fault == Fault::Truncated,
            ),
            None => reply(404, vec![], b"blob unknown", false),
        };
    }
    reply(404, vec![], b"not found", false)
}
