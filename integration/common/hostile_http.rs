//! A web server that serves a published folder and misbehaves on demand, as captive
//! portals, overloaded mirrors and broken proxies do: an HTML page for every path,
//! a 404 or a 500 on some paths, or a connection that stalls after the headers.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Serves the folder.
    Honest,
    /// A 200 with an HTML page, for every path.
    Portal,
    /// A 404 for paths containing this.
    Missing(String),
    /// A 500 for the first `n` requests of every path, then the file.
    Flaky(u32),
    /// Headers, then nothing, for paths containing this.
    Stall(String),
}

struct State {
    behaviour: Behaviour,
    seen: std::collections::HashMap<String, u32>,
    log: Vec<(String, u16)>,
}

/// The running server; stops with the test process.
pub struct HostileServer {
    /// Its base URL (ends with `/`).
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl HostileServer {
    /// Serves `root` on a free port of 127.0.0.1.
    pub fn start(root: PathBuf) -> HostileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            behaviour: Behaviour::Honest,
            seen: Default::default(),
            log: Vec::new(),
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (root, state) = (root.clone(), shared.clone());
                std::thread::spawn(move || answer(conn, &root, &state));
            }
        });
        HostileServer { url, state }
    }

    /// Changes how it answers from now on (and forgets what it saw).
    pub fn behave(&self, b: Behaviour) {
        let mut s = self.state.lock().unwrap();
        s.behaviour = b;
        s.seen.clear();
        s.log.clear();
    }

    /// The requests since the last [`HostileServer::behave`], with the status sent.
    pub fn log(&self) -> Vec<(String, u16)> {
        self.state.lock().unwrap().log.clone()
    }
}

fn answer(mut conn: TcpStream, root: &std::path::Path, state: &Mutex<State>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // The headers: read and ignored (no Range support: a resumed download starts over).
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (behaviour, count) = {
        let mut s = state.lock().unwrap();
        let n = s.seen.entry(path.clone()).or_insert(0);
        *n += 1;
        let n = *n;
        (s.behaviour.clone(), n)
    };
    let file = root.join(path.trim_start_matches('/'));
    let (status, body): (u16, Vec<u8>) = match &behaviour {
        Behaviour::Portal => (
            200,
            b"<html><body>Sign in to the Wi-Fi</body></html>".to_vec(),
        ),
        Behaviour::Missing(p) if path.contains(p.as_str()) => (404, b"not found".to_vec()),
        Behaviour::Flaky(n) if count <= *n => (500, b"overloaded".to_vec()),
        Behaviour::Stall(p) if path.contains(p.as_str()) => {
            state.lock().unwrap().log.push((path, 200));
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
            std::thread::sleep(Duration::from_secs(120));
            return;
        }
        _ => match std::fs::read(&file) {
            Ok(b) if file.is_file() => (200, b),
            _ => (404, b"not found".to_vec()),
        },
    };
    state.lock().unwrap().log.push((path, status));
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&body);
}
