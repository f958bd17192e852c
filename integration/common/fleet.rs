//! Client machines of a fleet for the end-to-end tests (integration/fleet.rs,
//! integration/fleet_hundred.rs): folder sysroots, each with its own machine id and
//! policy, that "boot" by ARBOR_CMDLINE.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::s;

/// One client machine: a folder sysroot with its own machine id and policy, and the
/// kernel command line of its last "boot" (ARBOR_CMDLINE).
pub struct Machine {
    pub sys: String,
    pub id: String,
    pub config: PathBuf,
    pub cmdline: PathBuf,
}

impl Machine {
    pub fn new(dir: &Path, name: &str, url: &str, root_json: &Path) -> Machine {
        Machine::with_remote(dir, name, url, root_json, &[])
    }

    /// [`Machine::new`] with `extra` arguments to `remote add` (mirrors, a timeout).
    pub fn with_remote(
        dir: &Path,
        name: &str,
        url: &str,
        root_json: &Path,
        extra: &[&str],
    ) -> Machine {
        let m = Machine {
            sys: s(&dir.join(name)).to_string(),
            id: format!("{:0>32}", format!("{:x}", blake_ish(name))),
            config: dir.join(format!("{name}.toml")),
            cmdline: dir.join(format!("{name}.cmdline")),
        };
        std::fs::write(&m.config, "reports = \"on\"\n").unwrap();
        m.ok(&["admin", "init-fs", &m.sys]);
        m.ok(&["admin", "os-init", "debian"]);
        let mut add = vec!["remote", "add", "origin", url, "--trust", s(root_json)];
        add.extend_from_slice(extra);
        m.ok(&add);
        m
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(super::arbor_bin());
        if args[0] != "admin" || args[1] != "init-fs" {
            c.args(["--sysroot", &self.sys]);
        }
        c.args(args)
            .env_remove("ARBOR_REPO")
            .env("ARBOR_MACHINE_ID", &self.id)
            .env("ARBOR_CONFIG", &self.config);
        if self.cmdline.exists() {
            c.env("ARBOR_CMDLINE", &self.cmdline);
        }
        c.output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "arbor {args:?} on {} failed:\n{}",
            self.sys,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Shuts down (finalizing what is staged), lets the loader choose, and runs the
    /// health check as the boot would: the booted version.
    pub fn reboot(&self) -> String {
        self.ok(&["finalize-staged"]);
        self.ok(&["boot-select", "--cmdline-out", s(&self.cmdline)]);
        // A failing check is the machine's verdict, not the test's failure.
        let _ = self.run(&["health-check", "--timeout", "5"]);
        self.booted()
    }

    /// Reboots until the loader boots `version` (it gives up on a failing one after
    /// its tries), at most six times: the version booted last.
    pub fn reboot_until(&self, version: &str) -> String {
        let mut booted = String::new();
        for _ in 0..6 {
            booted = self.reboot();
            if booted == version {
                break;
            }
        }
        booted
    }

    /// Where the machine's unsent reports wait.
    pub fn outbox(&self) -> PathBuf {
        Path::new(&self.sys).join("arbor/deploy/debian/var/lib/arbor/reports/outbox")
    }

    pub fn booted(&self) -> String {
        let st: serde_json::Value = serde_json::from_str(&self.ok(&["status", "--json"])).unwrap();
        st["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["booted"] == true)
            .map(|d| d["version"].as_str().unwrap().to_string())
            .unwrap_or_default()
    }

    pub fn phase_of(&self, version: &str) -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["upgrade", "--dry-run", "--phase-override", "--json"]))
                .unwrap();
        let c = v["update"]["considered"].as_array().unwrap();
        c.iter()
            .find(|x| x["version"] == version)
            .unwrap_or_else(|| panic!("{version} not considered: {v:#}"))["device_phase"]
            .as_u64()
            .unwrap()
    }
}

/// A stable, distinct machine id per name.
pub fn blake_ish(name: &str) -> u128 {
    name.bytes().fold(0xcbf29ce484222325u128, |h, b| {
        (h ^ u128::from(b)).wrapping_mul(0x100000001b3)
    })
}

pub fn arbor(args: &[&str]) -> String {
    let out = Command::new(super::arbor_bin())
        .args(args)
        .env_remove("ARBOR_REPO")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "arbor {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn arbor_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&arbor(args)).unwrap()
}

/// A publisher's side for the fleet tests: a build repository with one small tree per
/// version composed (`os/V`), and a published folder `srv/pub` (initialized, empty)
/// that nginx serves from `srv`.
pub struct Publication {
    /// The build repository.
    pub build: String,
    /// What nginx serves (`pub/`, and `reports/` where machines PUT).
    pub srv: PathBuf,
    /// The published folder.
    pub dir: String,
}

impl Publication {
    /// Composes `versions`; `shape` may change each version's tree first.
    pub fn new(work: &Path, versions: &[&str], shape: impl Fn(&str, &Path)) -> Publication {
        let srv = work.join("srv");
        let p = Publication {
            build: super::build_repo_shaped(work, versions, shape),
            dir: s(&srv.join("pub")).to_string(),
            srv,
        };
        arbor(&["publish", "init", &p.dir]);
        p
    }

    /// Publishes `os/V` as version V of channel stable, with `extra` options.
    pub fn add(&self, v: &str, extra: &[&str]) {
        let rev = format!("os/{v}");
        let mut args = vec![
            "--repo",
            &self.build,
            "publish",
            "add",
            &self.dir,
            "--channel",
            "stable",
            "--version",
            v,
            "--ref",
            &rev,
        ];
        args.extend_from_slice(extra);
        arbor(&args);
    }

    /// Sets version V's phase.
    pub fn phase(&self, v: &str, percent: u64) {
        arbor(&[
            "publish",
            "phase",
            &self.dir,
            "--channel",
            "stable",
            "--version",
            v,
            &percent.to_string(),
        ]);
    }

    /// The trust anchor machines add the remote with.
    pub fn root(&self) -> PathBuf {
        Path::new(&self.dir).join("metadata/1.root.json")
    }
}

/// Makes the tree's health check fail ("web is down"): a release that is broken.
pub fn failing_health_check(tree: &Path) {
    let d = tree.join("etc/arbor/health.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("10-web"), "#!/bin/sh\necho web is down\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("10-web"), std::fs::Permissions::from_mode(0o755)).unwrap();
}
