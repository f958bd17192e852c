//! A real registry (Debian's `docker-registry`, the CNCF distribution registry) on
//! 127.0.0.1 for the registry tests: filesystem storage in the test's folder, an
//! optional htpasswd login, or pull-through (proxy) mode in front of another registry
//! as a regional mirror. Its access log (stderr) says what a client fetched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::nginx::free_port;

/// A running registry; stopped at drop.
pub struct Registry {
    child: Option<Child>,
    conf: PathBuf,
    dir: PathBuf,
    /// `127.0.0.1:PORT`.
    pub host: String,
}

impl Registry {
    /// A registry storing in `dir`, asking for `login` (user, password) when given.
    pub fn start(dir: &Path, login: Option<(&str, &str)>) -> Registry {
        Registry::start_with(dir, login, None)
    }

    /// A pull-through mirror of the registry at `upstream` (`127.0.0.1:PORT`).
    pub fn start_proxy(dir: &Path, upstream: &str) -> Registry {
        Registry::start_with(dir, None, Some(upstream))
    }

    fn start_with(dir: &Path, login: Option<(&str, &str)>, upstream: Option<&str>) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let d = dir.display();
        let mut conf = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n"
        );
        if let Some((user, password)) = login {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd is needed (scripts/setup.sh installs apache2-utils)");
            assert!(out.status.success());
            std::fs::write(dir.join("htpasswd"), out.stdout).unwrap();
            conf.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: arbor-test\n    path: {d}/htpasswd\n"
            ));
        }
        if let Some(up) = upstream {
            conf.push_str(&format!("proxy:\n  remoteurl: http://{up}\n"));
        }
        let path = dir.join("config.yml");
        std::fs::write(&path, conf).unwrap();
        let mut r = Registry {
            child: None,
            conf: path,
            dir: dir.to_path_buf(),
            host: format!("127.0.0.1:{port}"),
        };
        r.resume();
        r
    }

    /// Starts it (again), waiting until it answers.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("access.log"))
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry is needed (scripts/setup.sh installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(&self.host).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("docker-registry did not start listening on {}", self.host);
    }

    /// Stops it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `oci://HOST/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!("oci://{}/{name}", self.host)
    }

    /// The file holding a blob's bytes in its storage.
    pub fn blob_file(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!(
            "data/docker/registry/v2/blobs/sha256/{}/{sha256}/data",
            &sha256[..2]
        ))
    }

    /// The access log as (method, path, status, bytes sent).
    pub fn requests(&self) -> Vec<(String, String, u16, u64)> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                // ... "GET /v2/... HTTP/1.1" 200 1234 ...
                let q = l.split('"').nth(1)?;
                let mut req = q.split_whitespace();
                let (method, path) = (req.next()?.to_string(), req.next()?.to_string());
                let mut rest = l.split('"').nth(2)?.split_whitespace();
                let status = rest.next()?.parse().ok()?;
                let bytes = rest.next()?.parse().unwrap_or(0);
                Some((method, path, status, bytes))
            })
            .collect()
    }

    /// Forgets the requests logged so far.
    pub fn clear_log(&self) {
        std::fs::write(self.dir.join("access.log"), "").unwrap();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
