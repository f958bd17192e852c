//! A real S3 store for the tests: Ceph's RADOS Gateway (radosgw, Debian trixie's
//! Reef) on its SQLite backend (DBStore), which needs no Ceph cluster. It checks
//! signature version 4 and POST policies as S3 does. The gateway runs from a trixie
//! root built once by mmdebstrap and cached under /var/tmp; each test gets its own
//! data folder, mounted into that root in a private mount namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The test user's access key.
pub const ACCESS_KEY: &str = "ARBORFLEETTEST";
/// … and its secret.
pub const SECRET: &str = "arbor-fleet-secret-not-for-indexes";

const PACKAGES: &str = "radosgw,ceph-common";

/// Where the gateway's data lives inside its root (the test's folder is mounted there).
const DATA: &str = "/var/lib/ceph/radosgw/dbs";

const CONF: &str = "[global]
auth_client_required = none
[client]
rgw backend store = dbstore
rgw config store = dbstore
dbstore db dir = /var/lib/ceph/radosgw/dbs
rgw data = /var/lib/ceph/radosgw/dbs
run dir = /run/ceph
log file = /var/lib/ceph/radosgw/dbs/rgw.log
";

/// A running gateway; stopped at drop.
pub struct Rgw {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    data: PathBuf,
}

fn run(what: &str, c: &mut Command) -> Result<String, String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The gateway's root, built once (about a minute, from Debian's archive).
fn root() -> Result<PathBuf, String> {
    let key = blake3::hash(format!("trixie {PACKAGES}\n{CONF}").as_bytes());
    let dir = PathBuf::from("/var/tmp/arbor-rgw").join(&key.to_hex()[..16]);
    let root = dir.join("root");
    if root.join("usr/bin/radosgw").exists() {
        return Ok(root);
    }
    let tmp = dir.join("root.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    run(
        "mmdebstrap (the radosgw root)",
        Command::new("mmdebstrap")
            .args(["--quiet", "--variant=apt", &format!("--include={PACKAGES}")])
            .arg("trixie")
            .arg(&tmp)
            .arg("http://deb.debian.org/debian"),
    )?;
    std::fs::create_dir_all(tmp.join(DATA.trim_start_matches('/'))).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(tmp.join("run/ceph")).map_err(|e| e.to_string())?;
    std::fs::write(tmp.join("etc/ceph/ceph.conf"), CONF).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &root).map_err(|e| e.to_string())?;
    Ok(root)
}

impl Rgw {
    /// Starts a gateway on a free port with the test user, its data in `scratch`.
    pub fn start(scratch: &Path) -> Result<Rgw, String> {
        let root = root()?;
        let data = scratch.join("rgw");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        // The user first (radosgw-admin on the same SQLite file), then the gateway;
        // /proc and the data folder are mounted into the root only in this namespace.
        let script = format!(
            r#"set -e
mount --bind /proc "$ROOT/proc"
mount --bind "$DATA" "$ROOT{DATA}"
chroot "$ROOT" radosgw-admin -n client.rgw --no-mon-config user create --uid=fleet \
  --display-name=fleet --access-key={ACCESS_KEY} --secret={SECRET} > "$DATA/user.json" 2>&1
exec chroot "$ROOT" radosgw -d --no-mon-config -n client.rgw \
  --rgw-frontends "beast endpoint=127.0.0.1:{port}""#
        );
        let log = std::fs::File::create(data.join("radosgw.out")).map_err(|e| e.to_string())?;
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "bash", "-c", &script])
            .env("ROOT", &root)
            .env("DATA", &data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("unshare: {e}"))?;
        let mut rgw = Rgw {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            data,
        };
        let until = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let out = std::fs::read_to_string(rgw.data.join("radosgw.out")).unwrap_or_default();
            if rgw.child.try_wait().ok().flatten().is_some() || Instant::now() > until {
                return Err(format!("radosgw did not come up:\n{out}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(rgw)
    }

    /// `curl` with the test user's signature (version 4) on `path` (below the
    /// endpoint); the body answered and the status.
    pub fn curl(&self, args: &[&str], path: &str) -> (String, u16) {
        let out = Command::new("curl")
            .args([
                "-s",
                "-w",
                "\n%{http_code}",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
            ])
            .args(["--user", &format!("{ACCESS_KEY}:{SECRET}")])
            // curl 7.88 signs S3 requests without the payload's hash, which S3 wants;
            // every request here has an empty body.
            .args([
                "-H",
                "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ])
            .args(args)
            .arg(format!("{}{path}", self.endpoint))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
        (body.to_string(), code.trim().parse().unwrap_or(0))
    }

    /// Makes a bucket.
    pub fn make_bucket(&self, name: &str) {
        let (body, code) = self.curl(&["-X", "PUT"], &format!("/{name}"));
        assert_eq!(code, 200, "creating bucket {name}: {body}");
    }

    /// The keys in `bucket` under `prefix`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        // curl 7.88 signs the query as written: it must be encoded already.
        let prefix = prefix.replace('/', "%2F");
        let (body, code) = self.curl(&[], &format!("/{bucket}?list-type=2&prefix={prefix}"));
        assert_eq!(code, 200, "listing {bucket}: {body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// The gateway's log, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("radosgw.out")).unwrap_or_default()
    }
}

impl Drop for Rgw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
