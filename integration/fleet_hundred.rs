//! The fleet test (docs/fleet.md): a hundred client machines, each a folder sysroot
//! with its own machine id and report key, each its own process with its own timer
//! (`arbor auto-update` under a policy whose check interval is seconds: the time
//! compression), some of them in a network namespace behind a shaped link, and the
//! publisher's rollout controller running beside them. A broken release halts on its
//! canaries; a good one then rolls out to every machine in its steps. The test prints
//! the timeline (and writes it to target/fleet-timeline.txt, which scripts/test.sh
//! shows).
#![allow(clippy::print_stdout)] // the timeline

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::fleet::{Machine, Publication, arbor, arbor_json, failing_health_check};
use common::nginx::Nginx;
use common::{s, scratch};

const MACHINES: usize = 100;
/// Machines that run in the network namespace.
const SHAPED: usize = 10;
const STEPS: &str = "5,20,50,100";

/// How the namespace's link is shaped, both ways: latency with jitter, loss and a
/// rate cap.
const NETEM: &str = "delay 40ms 10ms loss 1% rate 8mbit";

/// A network namespace joined to this one, its link shaped by netem: by a veth pair
/// where this kernel has sch_netem, else through a router VM whose kernel has it
/// (common/netem_router.rs), else (no qemu or corpus) by a tbf rate cap alone, said
/// so. Removed at drop.
struct Netns {
    name: String,
    /// Where servers listen for the namespace's machines (this namespace's address).
    server_ip: &'static str,
    /// The veth pair's end here, when the link is one.
    host_if: Option<String>,
    router: Option<common::netem_router::NetemRouter>,
    /// How the link is shaped, in words for the timeline.
    shaping: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    common::netem_router::ip(args).map(drop)
}

fn tc(ns: Option<&str>, args: &str) -> Result<(), String> {
    let mut c = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "tc"]);
            c
        }
        None => Command::new("tc"),
    };
    let out = c
        .args(args.split_whitespace())
        .output()
        .map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

impl Netns {
    fn create(scratch: &Path) -> Result<Netns, String> {
        let id = std::process::id() % 10000;
        let mut ns = Netns {
            name: format!("arbor-fleet-{id}"),
            server_ip: "10.251.0.1",
            host_if: None,
            router: None,
            shaping: String::new(),
        };
        ip(&["netns", "add", &ns.name])?;
        // Whether this kernel has netem, tried on the namespace's loopback.
        let netem_here = tc(Some(&ns.name), "qdisc add dev lo root netem delay 1ms");
        let mut no_router = String::new();
        if let Err(why) = &netem_here {
            match common::netem_router::NetemRouter::start(
                &ns.name,
                NETEM,
                &id.to_string(),
                scratch,
            ) {
                Ok(router) => {
                    ns.router = Some(router);
                    ns.server_ip = common::netem_router::SERVER_IP;
                    ns.shaping = format!(
                        "netem {NETEM}, both ways, in a router VM (this kernel lacks sch_netem: {why})"
                    );
                    return Ok(ns);
                }
                Err(e) => no_router = e,
            }
        }
        let host_if = format!("afh{id}");
        let peer = format!("afn{id}");
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
        ])?;
        ns.host_if = Some(host_if.clone());
        ip(&["link", "set", &peer, "netns", &ns.name])?;
        ip(&["addr", "add", "10.251.0.1/24", "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &ns.name, "ip"];
            a.extend_from_slice(args);
            ip(&a)
        };
        inside(&["addr", "add", "10.251.0.2/24", "dev", &peer])?;
        inside(&["link", "set", &peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        // Both directions: downloads leave by the host's end, reports by the peer's.
        let qdisc = match netem_here {
            Ok(()) => format!("netem {NETEM}"),
            Err(_) => "tbf rate 8mbit burst 64kb latency 400ms".to_string(),
        };
        tc(None, &format!("qdisc add dev {host_if} root {qdisc}"))?;
        tc(
            Some(&ns.name),
            &format!("qdisc add dev {peer} root {qdisc}"),
        )?;
        ns.shaping = match netem_here {
            Ok(()) => qdisc,
            Err(e) => {
                format!(
                    "{qdisc} (netem refused: {e}; no router VM either ({no_router}), so no latency or loss)"
                )
            }
        };
        Ok(ns)
    }

    /// The round trip of a TCP connect from the namespace to `url`, by curl.
    fn connect_time(&self, url: &str) -> f64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "curl", "-s", "-o", "/dev/null"])
            .args(["-w", "%{time_connect}", url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        drop(self.router.take());
        if let Some(i) = &self.host_if {
            let _ = ip(&["link", "del", i]);
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// One machine's process: boots, then runs `arbor auto-update` on its own timer and
/// reboots whenever an update is staged or its boot is still being judged.
const AGENT: &str = r#"
set -u
a() { "$ARBOR" --sysroot "$SYS" "$@"; }
boot() {
  a finalize-staged >/dev/null 2>&1
  a boot-select --cmdline-out "$CMDLINE" >/dev/null 2>&1
  export ARBOR_CMDLINE=$CMDLINE
  a health-check --timeout 5 >/dev/null 2>&1
  echo "$(date +%s.%N) boot" >> "$LOG"
}
boot
while [ ! -e "$STOP" ]; do
  sleep "$TICK"
  out=$(a auto-update --json 2>>"$LOG.err")
  state=$(printf '%s' "$out" | grep -o '"state": *"[a-z-]*"' | head -1 | grep -o '[a-z-]*"$' | tr -d '"')
  case $state in
    staged)
      v=$(a update-status --json | grep -o '"version": *"[^"]*"' | head -1 | cut -d'"' -f4)
      echo "$(date +%s.%N) staged $v" >> "$LOG"
      boot ;;
    testing|rolling-back) boot ;;
  esac
done
"#;

struct Agent {
    machine: Machine,
    log: PathBuf,
    child: Child,
    shaped: bool,
}

/// What the controller decided, with the seconds since the start.
#[derive(Debug)]
struct Event {
    at: f64,
    what: String,
}

/// Runs the controller once; returns its decisions that changed something.
fn controller(p: &str, reports: &Path) -> Vec<String> {
    let run = arbor_json(&[
        "publish",
        "rollout",
        p,
        "--channel",
        "stable",
        "--reports",
        s(reports),
        "--json",
    ]);
    run["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["decision"] != "hold")
        .map(|d| match d["decision"].as_str().unwrap() {
            "widen" => format!(
                "{} widened {}% -> {}%",
                d["version"].as_str().unwrap(),
                d["from"],
                d["to"]
            ),
            _ => format!(
                "{} HALTED: {} of {} machines failed",
                d["version"].as_str().unwrap(),
                d["failures"],
                d["machines"]
            ),
        })
        .collect()
}

fn status_line(p: &str, reports: &Path) -> String {
    let st = arbor_json(&[
        "publish",
        "status",
        p,
        "--channel",
        "stable",
        "--reports",
        s(reports),
        "--json",
    ]);
    st["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            format!(
                "{}@{}%{}: {} good {} failed {} rolled back",
                v["version"].as_str().unwrap(),
                v["phase"],
                if v["withdrawn"] == true {
                    " withdrawn"
                } else {
                    ""
                },
                v["good"],
                v["failed"],
                v["rolled_back"]
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

#[test]
#[ignore = "a hundred machine processes for minutes; scripts/test.sh runs it with ARBOR_TORTURE=1"]
fn root_torture_a_hundred_machines_halt_a_broken_release_and_take_a_good_one() {
    as_root!();
    let t = scratch();
    let begun = Instant::now();
    let since = || begun.elapsed().as_secs_f64();
    let publ = Publication::new(t.path(), &["1", "2", "3"], |v, tree| {
        if v == "2" {
            failing_health_check(tree)
        }
    });
    let (srv, p) = (publ.srv.clone(), publ.dir.clone());
    let reports = srv.join("reports");
    let add = |v: &str, phase: &str| publ.add(v, &["--phase", phase]);
    add("1", "100");
    let netns = Netns::create(t.path());
    let host = netns.as_ref().map_or("127.0.0.1", |ns| ns.server_ip);
    let nginx = Nginx::start_with_reports_on(&srv, &t.path().join("nginx"), host);
    arbor(&[
        "publish",
        "rollout-rules",
        &p,
        "--channel",
        "stable",
        "--reports",
        &format!("{}reports", nginx.url),
        "--steps",
        STEPS,
        "--min-good",
        "3",
        "--max-failed",
        "10",
        "--soak",
        "3s",
    ]);
    let mut timeline: Vec<Event> = Vec::new();
    // netem's delay is there: a connect from the namespace takes a round trip, twice
    // 40 ms less the jitter at most (a sixteenth of it when tc misreads its ticks).
    let rtt = netns.as_ref().map_or(0.0, |ns| ns.connect_time(&nginx.url));
    if netns
        .as_ref()
        .is_ok_and(|ns| ns.shaping.starts_with("netem"))
    {
        assert!(rtt >= 0.05, "a connect through netem took {rtt:.3} s");
    }
    timeline.push(Event {
        at: since(),
        what: match &netns {
            Ok(ns) => format!(
                "{SHAPED} of {MACHINES} machines in namespace {} behind {} (connect {:.0} ms)",
                ns.name,
                ns.shaping,
                rtt * 1000.0
            ),
            Err(e) => format!("no network namespace ({e}): every machine on loopback"),
        },
    });

    // One machine installed, then copied: each copy its own machine (id, key, policy).
    let url = format!("{}pub", nginx.url);
    let template = Machine::new(t.path(), "template", &url, &publ.root());
    template.ok(&["deploy", "origin:stable"]);
    let now =
        String::from_utf8(Command::new("date").arg("+%H:%M").output().unwrap().stdout).unwrap();
    let stop = t.path().join("stop");
    let mut agents: Vec<Agent> = (0..MACHINES)
        .map(|i| {
            let name = format!("m{i:03}");
            let sys = t.path().join(&name);
            let cp = Command::new("cp")
                .args(["-a", &template.sys, s(&sys)])
                .status()
                .unwrap();
            assert!(cp.success());
            let machine = Machine {
                sys: s(&sys).to_string(),
                id: format!("{:032x}", common::fleet::blake_ish(&name)),
                config: t.path().join(format!("{name}.toml")),
                cmdline: t.path().join(format!("{name}.cmdline")),
            };
            std::fs::write(
                &machine.config,
                format!(
                    "check_interval = \"2s\"\nauto_install = true\npreferred_time = \"{}\"\n\
                     reports = \"on\"\n",
                    now.trim()
                ),
            )
            .unwrap();
            let log = t.path().join(format!("{name}.log"));
            let shaped = netns.is_ok() && i < SHAPED;
            let mut c = match &netns {
                Ok(ns) if shaped => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", &ns.name, "bash", "-c", AGENT]);
                    c
                }
                _ => {
                    let mut c = Command::new("bash");
                    c.args(["-c", AGENT]);
                    c
                }
            };
            let child = c
                .env("ARBOR", common::arbor_bin())
                .env("SYS", &machine.sys)
                .env("CMDLINE", &machine.cmdline)
                .env("LOG", &log)
                .env("STOP", &stop)
                .env("TICK", format!("{}", 2.0 + (i % 10) as f64 / 10.0))
                .env("ARBOR_MACHINE_ID", &machine.id)
                .env("ARBOR_CONFIG", &machine.config)
                .env_remove("ARBOR_REPO")
                .spawn()
                .unwrap();
            Agent {
                machine,
                log,
                child,
                shaped,
            }
        })
        .collect();
    let booted_everywhere = |version: &str, agents: &[Agent]| {
        agents
            .iter()
            .filter(|a| a.machine.booted() == version)
            .count()
    };
    let wait_for = |what: &str, limit: Duration, f: &mut dyn FnMut() -> bool| {
        let until = Instant::now() + limit;
        while !f() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    wait_for(
        "every machine to report version 1 good",
        Duration::from_secs(240),
        &mut || std::fs::read_dir(reports.join("stable")).map_or(0, |d| d.count()) >= MACHINES,
    );
    timeline.push(Event {
        at: since(),
        what: format!(
            "all {MACHINES} machines booted 1: {}",
            status_line(&p, &reports)
        ),
    });

    // The broken release, to the first step's canaries.
    let first_step = STEPS.split(',').next().unwrap();
    add("2", first_step);
    let published_2 = since();
    timeline.push(Event {
        at: published_2,
        what: format!("2 published at {first_step}% (it fails its health check)"),
    });
    let mut halted_at = None;
    let mut first_failure_at = None;
    wait_for(
        "the rollout of 2 to halt",
        Duration::from_secs(180),
        &mut || {
            let before = since();
            let st = status_line(&p, &reports);
            if first_failure_at.is_none() && !st.contains("2@5%: 0 good 0 failed 0 rolled back") {
                first_failure_at = Some(before);
            }
            for d in controller(&p, &reports) {
                timeline.push(Event {
                    at: since(),
                    what: d.clone(),
                });
                if d.contains("HALTED") {
                    halted_at = Some(since());
                }
            }
            timeline.push(Event {
                at: since(),
                what: st,
            });
            std::thread::sleep(Duration::from_secs(2));
            halted_at.is_some()
        },
    );

    // The good release rolls out in its steps, the controller every two seconds.
    add("3", first_step);
    timeline.push(Event {
        at: since(),
        what: format!("3 published at {first_step}%"),
    });
    let mut widened = Vec::new();
    wait_for(
        "every machine to boot 3",
        Duration::from_secs(420),
        &mut || {
            for d in controller(&p, &reports) {
                timeline.push(Event {
                    at: since(),
                    what: d.clone(),
                });
                widened.push(d);
            }
            let on_3 = booted_everywhere("3", &agents);
            timeline.push(Event {
                at: since(),
                what: format!("{on_3} machines run 3; {}", status_line(&p, &reports)),
            });
            std::thread::sleep(Duration::from_secs(2));
            on_3 == MACHINES
        },
    );
    std::fs::write(&stop, "").unwrap();
    for a in agents.iter_mut() {
        let _ = a.child.wait();
    }

    // The timeline, then what must hold.
    let mut text = String::new();
    for e in &timeline {
        text.push_str(&format!("fleet: {:7.1} s  {}\n", e.at, e.what));
    }
    std::fs::write(t.path().join("timeline.txt"), &text).unwrap();
    // scripts/test.sh shows it, as the crash sweep's table.
    let shown = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fleet-timeline.txt");
    std::fs::write(shown, &text).unwrap();
    println!("{text}");

    let mut staged_2 = Vec::new();
    for a in &agents {
        let log = std::fs::read_to_string(&a.log).unwrap_or_default();
        if log.lines().any(|l| l.ends_with("staged 2")) {
            staged_2.push(arbor_remote::index::device_phase(
                &a.machine.id,
                "stable",
                "2",
            ));
        }
    }
    let canaries = agents
        .iter()
        .filter(|a| arbor_remote::index::device_phase(&a.machine.id, "stable", "2") < 5)
        .count();
    assert!(canaries > 0, "no machine is in 2's first step");
    assert!(!staged_2.is_empty(), "no canary staged 2");
    assert!(
        staged_2.iter().all(|b| *b < 5),
        "a machine outside the canary phase staged 2: buckets {staged_2:?}"
    );
    // Halted within one check interval of the controller (2 s) and one of the
    // machines (2 s), after the failure was there to read.
    let (first, halted) = (first_failure_at.unwrap(), halted_at.unwrap());
    assert!(
        halted - first <= 8.0,
        "halted {:.1} s after the first failure",
        halted - first
    );
    for step in ["5% -> 20%", "20% -> 50%", "50% -> 100%"] {
        assert!(
            widened.iter().any(|w| w.contains(step)),
            "no widening {step}: {widened:?}"
        );
    }
    let shaped: Vec<_> = agents.iter().filter(|a| a.shaped).collect();
    assert!(netns.is_err() || shaped.len() == SHAPED);
    let mut versions = BTreeMap::new();
    for a in &agents {
        *versions.entry(a.machine.booted()).or_insert(0) += 1;
    }
    assert_eq!(versions.get("3"), Some(&MACHINES), "{versions:?}");
}
