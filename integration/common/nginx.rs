//! A real nginx serving a folder on 127.0.0.1, for the remote-update tests: its access
//! log says what a client fetched, and it can be stopped and started mid-test.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running nginx; stopped at drop.
pub struct Nginx {
    conf: PathBuf,
    dir: PathBuf,
    /// `http://127.0.0.1:PORT/`.
    pub url: String,
}

/// A port of 127.0.0.1 nothing listens on (now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Nginx {
    /// Serves `root` from a new nginx whose files live in `dir`. `slow_deltas` limits
    /// each delta download to that many bytes a second (to interrupt one mid-way).
    pub fn start(root: &Path, dir: &Path, slow_deltas: Option<u32>) -> Nginx {
        let limit = slow_deltas
            .map(|r| format!("location ~ /deltas/ {{ limit_rate {r}; }}"))
            .unwrap_or_default();
        Nginx::start_with(root, dir, "127.0.0.1", &limit)
    }

    /// Serves `root`, and takes health reports by WebDAV `PUT` below `/reports/`
    /// (stored in `root/reports/`), as a fleet's report location would.
    pub fn start_with_reports(root: &Path, dir: &Path) -> Nginx {
        Nginx::start_with_reports_on(root, dir, "127.0.0.1")
    }

    /// [`Nginx::start_with_reports`] listening on `host` (an address of this
    /// machine that network namespaces reach too).
    pub fn start_with_reports_on(root: &Path, dir: &Path, host: &str) -> Nginx {
        // nginx creates the folders below the location's, not its own; its workers
        // (nobody) write there.
        let reports = root.join("reports");
        std::fs::create_dir_all(&reports).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&reports, std::fs::Permissions::from_mode(0o777)).unwrap();
        Nginx::start_with(
            root,
            dir,
            host,
            "location /reports/ { dav_methods PUT; create_full_put_path on; \
             dav_access user:rw group:r all:r; client_max_body_size 8k; }",
        )
    }

    /// A CDN edge in front of `origin` (a URL ending in `/`): nginx with `proxy_cache`,
    /// keeping every file for a week except `timestamp.json` (1 s) and 404 answers
    /// (1 s: the next root version appears one day), one request upstream per file
    /// however many clients miss it at once: the setup docs/remote.md recommends.
    pub fn start_edge(origin: &str, dir: &Path) -> Nginx {
        let d = dir.display();
        // The upstream without a path: the request's own path goes to it unchanged.
        let origin = origin.trim_end_matches('/');
        let cache = format!(
            "proxy_cache_path {d}/cache levels=1:2 keys_zone=edge:10m max_size=4g \
             inactive=7d use_temp_path=off;"
        );
        let locations = format!(
            "proxy_cache edge; proxy_cache_lock on; proxy_cache_lock_timeout 120s; \
             proxy_cache_lock_age 120s; \
             location ~ /metadata/timestamp\\.json$ {{ proxy_pass {origin}; \
             proxy_cache_valid 200 1s; }} \
             location / {{ proxy_pass {origin}; proxy_cache_valid 200 7d; \
             proxy_cache_valid 404 1s; }}"
        );
        Nginx::start_conf(dir, "127.0.0.1", &cache, &locations)
    }

    /// Serves `root` with `extra` in the server block.
    fn start_with(root: &Path, dir: &Path, host: &str, extra: &str) -> Nginx {
        let server = format!("root {}; {extra}", root.display());
        Nginx::start_conf(dir, host, "", &server)
    }

    /// Starts nginx with `http_extra` in the http block and `server` in the server's.
    fn start_conf(dir: &Path, host: &str, http_extra: &str, server: &str) -> Nginx {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n default_type application/octet-stream;\n access_log {d}/access.log;\n\
                 client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n{http_extra}\n\
                 server {{ listen {host}:{port}; {server} }}\n}}\n"
            ),
        )
        .unwrap();
        let n = Nginx {
            conf,
            dir: dir.to_path_buf(),
            url: format!("http://{host}:{port}/"),
        };
        n.resume();
        n
    }

    fn nginx(&self, extra: &[&str]) -> std::process::Output {
        Command::new("nginx")
            .arg("-c")
            .arg(&self.conf)
            .args(extra)
            .output()
            .expect("nginx is needed (scripts/setup.sh installs nginx-light)")
    }

    /// Waits (up to 5 s) until the port is open (or closed); true when it got there.
    fn wait_listening(&self, open: bool) -> bool {
        let addr = self.url.trim_start_matches("http://").trim_end_matches('/');
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() == open {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }

    /// Starts it (again).
    pub fn resume(&self) {
        let out = self.nginx(&[]);
        assert!(
            out.status.success(),
            "nginx: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(self.wait_listening(true), "nginx did not start listening");
    }

    /// Stops it, waiting until the port is closed.
    pub fn stop(&self) {
        let _ = self.nginx(&["-s", "stop"]);
        self.wait_listening(false);
    }

    /// The access log as (path, status, bytes sent) lines.
    pub fn requests(&self) -> Vec<(String, u16, u64)> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // ... "GET /path HTTP/1.1" status bytes ...
                let i = f.iter().position(|x| *x == "\"GET")?;
                Some((
                    f[i + 1].to_string(),
                    f[i + 3].parse().ok()?,
                    f[i + 4].parse().ok()?,
                ))
            })
            .collect()
    }

    /// Forgets the requests logged so far.
    pub fn clear_log(&self) {
        std::fs::write(self.dir.join("access.log"), "").unwrap();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}
