//! The boot commands: the loader's menu, the staged deployment finalized at shutdown,
//! boot counting (select, complete) and the health check that decides a boot is good.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::output::json;
use super::{Cli, OutputArgs, lock_wait};
use arbor_sysroot::Sysroot;
use arbor_sysroot::deploy;

/// `arbor boot-select`.
#[derive(Args, Debug)]
pub struct BootSelectArgs {
    /// Also write the chosen kernel command line to FILE (for ARBOR_CMDLINE).
    #[arg(long, value_name = "FILE")]
    pub cmdline_out: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor health-check`.
#[derive(Args, Debug)]
pub struct HealthCheckArgs {
    /// Seconds each check may take before it is killed and counts as failed.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// On a running system, first wait up to this many seconds for systemd to finish
    /// starting the system (for a run by hand during the boot; the unit is ordered
    /// after multi-user.target instead).
    #[arg(long, value_name = "SECONDS")]
    pub wait_for_startup: Option<u64>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor grub-config`.
#[derive(Args, Debug)]
pub struct GrubConfigArgs {
    /// Prefix for paths under /boot ("/boot" when /boot is not its own partition).
    #[arg(long, default_value = "")]
    pub boot_prefix: String,
}

/// `arbor grub-config`.
pub fn grub_config(cli: &Cli, a: &GrubConfigArgs) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    print!(
        "{}",
        arbor_boot::grub::fragment(
            &sysroot
                .deployments()?
                .iter()
                .map(arbor_sysroot::Deployment::grub_entry)
                .collect::<Vec<_>>(),
            &a.boot_prefix
        )
    );
    Ok(0)
}

/// `arbor finalize-staged`.
pub fn finalize_staged(cli: &Cli, out: &OutputArgs) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let wait = lock_wait(cli);
    match deploy::finalize_staged(&sysroot, wait)? {
        r if out.json => return json(&serde_json::json!({ "finalized": r })).map(|_| 0),
        Some(r) => println!(
            "finalized {}/{}: it boots next",
            r.deployment.os,
            r.deployment.dir_name()
        ),
        None => println!("nothing staged"),
    };
    Ok(0)
}

/// `arbor boot-select`.
pub fn boot_select(cli: &Cli, a: &BootSelectArgs) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let wait = lock_wait(cli);
    let sel = arbor_sysroot::health::boot_select(&sysroot, wait)?;
    if let Some(f) = &a.cmdline_out {
        std::fs::write(f, format!("{}\n", sel.cmdline))
            .with_context(|| format!("writing {}", f.display()))?;
    }
    if a.output.json {
        return json(&sel).map(|_| 0);
    }
    for s in &sel.skipped {
        eprintln!("skipped {s}: no tries left");
    }
    println!("{}", sel.cmdline);
    Ok(0)
}

/// `arbor boot-complete`.
pub fn boot_complete(cli: &Cli, out: &OutputArgs) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let wait = lock_wait(cli);
    let d = arbor_sysroot::health::boot_complete(&sysroot, wait)?;
    if out.json {
        return json(&d).map(|_| 0);
    }
    println!("deployment {} ({}) is marked good", d.index, d.dir_name());
    Ok(0)
}

/// `arbor health-check`.
pub fn health_check(cli: &Cli, a: &HealthCheckArgs) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let wait = lock_wait(cli);
    if let Some(secs) = a.wait_for_startup {
        arbor_sysroot::health::wait_for_startup(&sysroot, std::time::Duration::from_secs(secs));
    }
    let r = arbor_ops::health_check(&sysroot, std::time::Duration::from_secs(a.timeout), wait)?;
    if a.output.json {
        json(&r)?;
    } else {
        for c in &r.checks {
            println!(
                "{} {}: {}",
                if c.passed { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            );
            if !c.passed && !c.output.is_empty() {
                for l in c.output.lines() {
                    println!("     | {l}");
                }
            }
        }
        println!(
            "{}",
            if r.passed {
                "healthy: the boot is marked good"
            } else {
                "unhealthy: the boot was not marked good"
            }
        );
    }
    Ok(if r.passed { 0 } else { 1 })
}
