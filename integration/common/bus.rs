//! A private `dbus-daemon` for the daemon tests: the system bus's default-deny policy,
//! our real policy file included, and `arbord` activatable from a service file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The daemon under test.
pub fn arbord_bin() -> String {
    super::workspace_bin("arbord")
        .to_string_lossy()
        .into_owned()
}

/// A running private bus; killed (with any daemon it started) at drop.
pub struct Bus {
    /// Holds the socket, the config and the service file.
    pub dir: tempfile::TempDir,
    /// The bus address for clients.
    pub address: String,
    bus: Child,
    start: Start,
}

/// How the bus is started (again).
struct Start {
    config: PathBuf,
    cmdline: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl Start {
    fn spawn(&self, socket: &Path) -> Child {
        let mut cmd = Command::new("dbus-daemon");
        cmd.arg(format!("--config-file={}", self.config.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .env("ARBOR_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        match &self.cmdline {
            Some(c) => cmd.env("ARBOR_CMDLINE", c),
            None => cmd.env_remove("ARBOR_CMDLINE"),
        };
        let bus = cmd.spawn().expect("starting dbus-daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "dbus-daemon never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        bus
    }
}

impl Bus {
    /// Starts a bus on which `arbord --sysroot SYSROOT --idle-exit IDLE` is activated
    /// by the first call to org.arbor.Arbor1. `cmdline` names the "booted" deployment
    /// (ARBOR_CMDLINE) for the activated daemon.
    pub fn launch(sysroot: &str, idle: u64, cmdline: Option<&Path>) -> Bus {
        Bus::launch_env(sysroot, idle, cmdline, &[])
    }

    /// [`Bus::launch`] with more environment for the bus, which its activated daemon
    /// inherits (`ARBOR_FAILPOINTS`).
    pub fn launch_env(
        sysroot: &str,
        idle: u64,
        cmdline: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Bus {
        let dir = tempfile::Builder::new()
            .prefix("arbor-bus.")
            .tempdir_in("/var/tmp")
            .unwrap();
        // Others (the `nobody` client) must reach the socket.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let services = dir.path().join("services");
        std::fs::create_dir(&services).unwrap();
        std::fs::write(
            services.join("org.arbor.Arbor1.service"),
            format!(
                "[D-BUS Service]\nName=org.arbor.Arbor1\nExec={} --sysroot {sysroot} --idle-exit {idle}\nUser=root\n",
                arbord_bin()
            ),
        )
        .unwrap();
        let socket = dir.path().join("bus.sock");
        let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.arbor.Arbor1.conf");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<busconfig>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{services}</servicedir>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <policy context="default">
    <allow own="org.freedesktop.PolicyKit1"/>
    <allow send_destination="org.freedesktop.PolicyKit1"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"#,
                socket = socket.display(),
                services = services.display(),
                policy = policy.display(),
            ),
        )
        .unwrap();
        let start = Start {
            config,
            cmdline: cmdline.map(Path::to_path_buf),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let bus = start.spawn(&socket);
        Bus {
            address: format!("unix:path={}", socket.display()),
            dir,
            bus,
            start,
        }
    }

    /// Stops the bus (and the daemon on it) as a crash of the bus would.
    pub fn stop(&mut self) {
        if self.daemon_running() {
            let _ = Command::new("kill")
                .arg(self.daemon_pid().to_string())
                .status();
        }
        let _ = self.bus.kill();
        let _ = self.bus.wait();
        let _ = std::fs::remove_file(self.socket());
    }

    /// Starts the bus again at the same address after [`Bus::stop`].
    pub fn start_again(&mut self) {
        self.bus = self.start.spawn(&self.socket());
    }

    /// Runs `busctl --address=… ARGS…`.
    pub fn busctl(&self, args: &[&str]) -> Output {
        Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs busctl as `nobody` (uid 65534, no groups).
    pub fn busctl_as_nobody(&self, args: &[&str]) -> Output {
        Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "busctl",
            ])
            .arg(format!("--address={}", self.address))
            .args(args)
            .output()
            .unwrap()
    }

    /// Calls a Sysroot method with gdbus as `nobody`; returns its output.
    pub fn gdbus_call_as_nobody(&self, method: &str, args: &[&str]) -> Output {
        Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "gdbus",
                "call",
            ])
            .args(["--address", &self.address, "--dest", "org.arbor.Arbor1"])
            .args(["--object-path", "/org/arbor/Arbor1", "--method"])
            .arg(format!("org.arbor.Arbor1.Sysroot.{method}"))
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `gdbus ARGS… --address …`.
    pub fn gdbus(&self, args: &[&str]) -> Output {
        Command::new("gdbus")
            .args(args)
            .args(["--address", &self.address])
            .output()
            .unwrap()
    }

    /// A property of ours as busctl's JSON (`{"type":…,"data":…}`).
    pub fn property(&self, path: &str, iface: &str, name: &str) -> serde_json::Value {
        let out = self.busctl(&[
            "--json=short",
            "get-property",
            "org.arbor.Arbor1",
            path,
            iface,
            name,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["data"].clone()
    }

    /// A document property (`a{sv}`) as plain JSON, busctl's variant wrappers taken
    /// off: what the CLI prints in JSON for the same document.
    pub fn document(&self, path: &str, iface: &str, name: &str) -> serde_json::Value {
        plain(&self.property(path, iface, name))
    }

    /// Calls a Sysroot method with busctl; returns the transaction path.
    pub fn start(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec![
            "--json=short",
            "call",
            "org.arbor.Arbor1",
            "/org/arbor/Arbor1",
            "org.arbor.Arbor1.Sysroot",
        ];
        all.extend_from_slice(args);
        let out = self.busctl(&all);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        Ok(v["data"][0].as_str().unwrap().to_string())
    }

    /// Waits until transaction PATH is no longer running; returns (Success,
    /// ErrorMessage).
    pub fn wait(&self, path: &str) -> (bool, String) {
        let t = "org.arbor.Arbor1.Transaction";
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.property(path, t, "Running") == serde_json::json!(true) {
            assert!(Instant::now() < deadline, "{path} never finished");
            std::thread::sleep(Duration::from_millis(50));
        }
        (
            self.property(path, t, "Success").as_bool().unwrap(),
            self.property(path, t, "ErrorMessage")
                .as_str()
                .unwrap()
                .to_string(),
        )
    }

    /// True while someone owns org.arbor.Arbor1 (asked without activating it).
    pub fn daemon_running(&self) -> bool {
        let out = self.busctl(&[
            "--json=short",
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            "s",
            "org.arbor.Arbor1",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["data"][0].as_bool().unwrap()
    }

    /// The pid of the daemon owning the name.
    pub fn daemon_pid(&self) -> u32 {
        let out = self.busctl(&[
            "--json=short",
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetConnectionUnixProcessID",
            "s",
            "org.arbor.Arbor1",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["data"][0].as_u64().unwrap() as u32
    }

    /// Starts the real polkitd on this bus, in a mount namespace where it sees only
    /// our actions file and the given rules (JavaScript). Killed when dropped.
    pub fn polkitd(&self, rules: &str) -> Polkitd {
        let pk = self.dir.path().join("polkit");
        let (actions, rules_dir) = (pk.join("actions"), pk.join("rules"));
        std::fs::create_dir_all(&actions).unwrap();
        std::fs::create_dir_all(&rules_dir).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.arbor.Arbor1.policy"),
            actions.join("org.arbor.Arbor1.policy"),
        )
        .unwrap();
        std::fs::write(rules_dir.join("50-test.rules"), rules).unwrap();
        // polkitd runs as its own user: it must read them.
        Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&pk)
            .status()
            .unwrap();
        let script = format!(
            "mount --bind {a} /usr/share/polkit-1/actions && \
             mount --bind {r} /etc/polkit-1/rules.d && \
             mount --bind {r} /usr/share/polkit-1/rules.d && \
             exec /usr/lib/polkit-1/polkitd --no-debug",
            a = actions.display(),
            r = rules_dir.display()
        );
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting polkitd (package polkitd)");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.busctl(&["status", "org.freedesktop.PolicyKit1"]);
            if out.status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "polkitd never took its name");
            std::thread::sleep(Duration::from_millis(50));
        }
        Polkitd(child)
    }

    /// The socket path, for clients that take a path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("bus.sock")
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        if self.daemon_running() {
            let _ = Command::new("kill")
                .arg(self.daemon_pid().to_string())
                .status();
        }
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

/// A running polkitd; killed at drop.
pub struct Polkitd(Child);

impl Drop for Polkitd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// busctl's JSON of a D-Bus value with its variant wrappers (`{"type": …, "data": …}`)
/// taken off, recursively.
pub fn plain(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        J::Object(m) if m.len() == 2 && m.contains_key("type") && m.contains_key("data") => {
            plain(&m["data"])
        }
        J::Object(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), plain(v))).collect()),
        J::Array(a) => J::Array(a.iter().map(plain).collect()),
        other => other.clone(),
    }
}

/// `v` without its null members: a D-Bus dictionary leaves out what JSON writes as
/// null (docs/wire-format.md), so a document read from both compares this way.
pub fn without_nulls(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        J::Object(m) => J::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        J::Array(a) => J::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}
