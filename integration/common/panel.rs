//! A headless settings panel on the test bus: `integration/clients/panel.py`, a real
//! GLib (Gio through Python's `gi`) client, driven line by line. Tests send it
//! commands and read back the signals, property changes and replies it saw, in order.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running panel; killed at drop.
pub struct Panel {
    child: Child,
    input: ChildStdin,
    events: Receiver<Value>,
    /// Every event seen so far, in order.
    pub seen: Vec<Value>,
}

impl Panel {
    /// Starts a panel connected to the bus at `address` and waits until it listens.
    pub fn connect(address: &str) -> Panel {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/clients/panel.py");
        let mut child = Command::new("/usr/bin/python3")
            .args([script, address])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the panel (python3-gi)");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for line in output.lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("the panel printed {line:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut p = Panel {
            child,
            input,
            events,
            seen: Vec::new(),
        };
        p.until(Duration::from_secs(20), |e| e["ready"] == true);
        p
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) {
        writeln!(self.input, "{line}").unwrap();
    }

    /// Reads events until one satisfies `pred` (returned) or `timeout` passes (a test
    /// failure listing what was seen).
    pub fn until(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "the panel waited {timeout:?} in vain; it saw:\n{}",
                    self.tail()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the panel exited; it saw:\n{}", self.tail())
                }
            }
        }
    }

    /// Sends a command and returns its reply (`ok`, `value` or `error`).
    pub fn ask(&mut self, line: &str) -> Value {
        self.send(line);
        let cmd = line.split_whitespace().next().unwrap_or("").to_string();
        self.until(Duration::from_secs(120), |e| e["reply"] == cmd.as_str())
    }

    /// [`Panel::ask`], asserting success; returns the value.
    pub fn ok(&mut self, line: &str) -> Value {
        let r = self.ask(line);
        assert_eq!(r["ok"], true, "{line}: {r}");
        r["value"].clone()
    }

    /// Waits for the `Finished` of the transaction at `path`: (success, message).
    pub fn finished(&mut self, path: &str, timeout: Duration) -> (bool, String) {
        let e = self.until(timeout, |e| e["signal"] == "Finished" && e["path"] == path);
        (
            e["args"][0].as_bool().unwrap(),
            e["args"][1].as_str().unwrap().to_string(),
        )
    }

    /// The signals named `name` seen so far from the object at `path`, their arguments.
    pub fn signals(&self, path: &str, name: &str) -> Vec<Vec<Value>> {
        self.seen
            .iter()
            .filter(|e| e["signal"] == name && e["path"] == path)
            .map(|e| e["args"].as_array().unwrap().clone())
            .collect()
    }

    /// Kills the panel as a crash would: its bus connection drops.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn tail(&self) -> String {
        let from = self.seen.len().saturating_sub(30);
        self.seen[from..]
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Panel {
    fn drop(&mut self) {
        self.kill();
    }
}
