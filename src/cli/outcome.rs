//! Printing the outcome of a library operation as text (`--json` prints it as is).

use anyhow::Result;

use super::output::{human_bytes, json, utc};
use super::{Cli, OutputArgs, run_op};
use arbor_ops::update::{Action, UpdateResult};
use arbor_ops::{Outcome, Request, UpgradeOutcome};
use arbor_store::dpkg::PackageDiff;
use arbor_sysroot::Sysroot;
use arbor_sysroot::deploy::DeployResult;
use arbor_sysroot::status::{Role, StatusRow};

/// Runs `req` and prints what it did: the JSON document with `--json`, else text.
pub fn run_and_print(cli: &Cli, req: &Request, output: &OutputArgs) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let out = run_op(cli, &sysroot, req)?;
    if output.json {
        json(&out)?;
    } else {
        print_outcome(&out, req);
    }
    start_switch(&out)?;
    Ok(0)
}

/// Starts the switch `--apply` (or the policy's `apply`) prepared, once the outcome
/// is printed: this process ends with the userspace it runs in.
pub fn start_switch(out: &Outcome) -> Result<()> {
    if let Some(s) = out.switch() {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        arbor_live::activate::start(s)?;
    }
    Ok(())
}

/// The outcome of a request in words.
fn print_outcome(out: &Outcome, req: &Request) {
    match (out, req) {
        (Outcome::Deployed(r), Request::Deploy(d)) => print_deployed(r, d.stage),
        (Outcome::Deployed(r), _) => print_deployed(r, false),
        (Outcome::Update(r), _) => print_update(r, Action::Stage, false),
        (Outcome::Upgrade(u), Request::Upgrade(q)) => print_upgrade(u, q.action, q.dry_run),
        (Outcome::Upgrade(u), _) => print_upgrade(u, Action::Stage, false),
        (Outcome::Order(o), _) => print_status(&o.deployments),
        (Outcome::Kargs(k), _) => println!("{}", k.kargs.join(" ")),
        (Outcome::Cleanup(r), _) => println!(
            "removed {} deployments, {} kernel folders, {} objects ({})",
            r.deployments_removed.len(),
            r.boot_folders_removed.len(),
            r.prune.objects_removed,
            human_bytes(r.prune.bytes_removed)
        ),
        (Outcome::Prune(r), _) => println!(
            "{} {} objects ({}), kept {}",
            if r.dry_run { "would remove" } else { "removed" },
            r.objects_removed,
            human_bytes(r.bytes_removed),
            r.objects_kept
        ),
        (Outcome::Deployment(d), Request::Undeploy(i)) => {
            println!("removed deployment {i} ({}/{})", d.os, d.dir_name())
        }
        (Outcome::Deployment(d), Request::Pin { index, .. }) => println!(
            "deployment {index} is {}",
            if d.origin.pinned {
                "pinned"
            } else {
                "no longer pinned"
            }
        ),
        (Outcome::Reset(r), _) => {
            let d = &r.deploy.deployment;
            println!(
                "reset ({}) as {}/{}: it boots next",
                r.level.as_str(),
                d.os,
                d.dir_name()
            );
            if let Some(v) = &r.var {
                eprintln!("a new /var ({v}), keeping: {}", r.kept.join(" "));
            }
            eprintln!(
                "{} stays as the rollback with its /etc and /var: 'arbor rollback' undoes the reset",
                r.previous
            );
        }
        (Outcome::EtcRestore(r), _) => {
            for p in &r.restored {
                println!("restored {p} from the image of {}", r.deployment);
            }
            eprintln!(
                "the /etc as it was is kept as snapshot {} ('arbor ls {} /')",
                r.snapshot, r.snapshot
            );
        }
        _ => println!("done"),
    }
}

/// A new deployment, as deploy, install and the others report it.
pub fn print_deployed(r: &DeployResult, staged: bool) {
    let d = &r.deployment;
    let verb = if staged { "staged" } else { "deployed" };
    println!("{verb} {} as {}/{}", d.commit, d.os, d.dir_name());
    let l = &d.origin.layers;
    if !l.is_empty() {
        let names = |v: Vec<String>| {
            if v.is_empty() {
                "-".into()
            } else {
                v.join(" ")
            }
        };
        eprintln!(
            "layered: {}; removed from the base: {}",
            names(l.installed_names()),
            names(l.remove.clone())
        );
    }
    if staged {
        eprintln!("it becomes the default boot entry at shutdown ('arbor finalize-staged')");
        return;
    }
    print_etc_merge(&r.etc_merge);
    for gone in &r.removed {
        eprintln!("removed deployment {gone}");
    }
    eprintln!("it boots next; 'arbor rollback' goes back");
}

/// What the `/etc` merge did: counts, and every conflict by name.
pub fn print_etc_merge(entries: &[arbor_sysroot::etc::merge::MergeEntry]) {
    use arbor_sysroot::etc::merge::MergeOutcome;
    let count = |o: MergeOutcome| entries.iter().filter(|e| e.outcome == o).count();
    let kept = count(MergeOutcome::KeptLocal) + count(MergeOutcome::KeptDeleted);
    if kept > 0 {
        eprintln!("/etc: kept {kept} local changes from the previous deployment");
    }
    for e in entries
        .iter()
        .filter(|e| e.outcome == MergeOutcome::MergedEntries)
    {
        eprintln!(
            "/etc: merged /etc/{} entry by entry: local users and groups kept, new ones added",
            e.path
        );
    }
    for e in entries
        .iter()
        .filter(|e| e.outcome == MergeOutcome::Conflict)
    {
        eprintln!(
            "/etc: conflict in /etc/{}: your version stays; the new default is in /etc/{}",
            e.path,
            e.saved.as_deref().unwrap_or_default()
        );
    }
}

/// `upgrade`'s outcome: the channel's report, or the local deploy, or nothing new.
pub fn print_upgrade(u: &UpgradeOutcome, action: Action, dry_run: bool) {
    if let Some(i) = &u.image {
        print_image(i, u.deploy.as_ref());
        return;
    }
    match (&u.update, &u.deploy) {
        (Some(r), _) => print_update(r, action, dry_run),
        (None, Some(d)) => print_deployed(d, false),
        (None, None) => println!("no upgrade: the deployment is at the tip of its ref"),
    }
}

/// What following a registry image did, in words.
fn print_image(i: &arbor_ops::image_follow::ImageUpdate, deploy: Option<&DeployResult>) {
    let held = if i.pinned {
        " (held at this digest)"
    } else {
        ""
    };
    let Some(d) = deploy else {
        if i.digest == i.previous {
            println!("no upgrade: {} is {}{held}, as deployed", i.image, i.digest);
        } else {
            println!(
                "image update available: {} is {} (deployed: {})",
                i.image, i.digest, i.previous
            );
        }
        return;
    };
    println!(
        "image {} {}{held}: fetched {} layers ({}), {} kept from an earlier import",
        i.image,
        i.digest,
        i.layers_fetched,
        human_bytes(i.fetched_bytes),
        i.layers_reused
    );
    print_deployed(d, i.staged);
}

/// Prints an update's result as text.
pub fn print_update(r: &UpdateResult, action: Action, dry_run: bool) {
    for m in &r.mirrors_skipped {
        eprintln!("mirror skipped: {m}");
    }
    for c in &r.considered {
        println!(
            "version {:<12} rollout {:>3}%  this device's phase {:>2}  {}",
            c.version,
            c.phase,
            c.device_phase,
            match (c.offered, c.withdrawn) {
                (true, _) => "offered",
                (false, true) => "withdrawn",
                (false, false) => "not yet",
            }
        );
    }
    if let Some(v) = &r.withdrawn {
        println!(
            "version {v} was withdrawn by its publisher: its staged deployment was dropped, \
             the booted deployment boots again"
        );
    }
    let Some(v) = &r.offered else {
        println!(
            "no update: {}:{} has nothing newer for this device",
            r.remote, r.channel
        );
        print_activation(r);
        return;
    };
    println!(
        "update: {} {} ({}){}",
        r.channel,
        v.version,
        v.commit.short(),
        if v.critical { " critical" } else { "" }
    );
    if let Some(d) = &r.packages {
        print_package_diff(d);
    }
    if let Some(p) = &r.plan {
        if p.present {
            println!("already in the repository: nothing to download");
        }
        for (i, c) in p.candidates.iter().enumerate() {
            let how = match &c.from {
                Some(from) => format!("{} delta(s) from {}", c.deltas.len(), from.short()),
                None if p.full_estimated => {
                    format!("full fetch of at most {} objects", p.missing_objects)
                }
                None => format!("full fetch of {} objects", p.missing_objects),
            };
            println!(
                "{} {:<7} {:>10}  {how}",
                if i == 0 { "*" } else { " " },
                c.kind,
                human_bytes(c.bytes)
            );
        }
    }
    if dry_run {
        match &r.etc_conflicts {
            None => println!(
                "/etc conflicts: not known until the update is downloaded \
                 ('arbor upgrade --download-only', then --dry-run again)"
            ),
            Some(c) if c.is_empty() => println!("/etc conflicts: none"),
            Some(c) => {
                for p in c {
                    println!(
                        "/etc conflict: /etc/{p} (changed here and by the update: yours \
                         is kept, the new default saved as /etc/{p}{})",
                        arbor_sysroot::etc::merge::DIST_SUFFIX
                    );
                }
            }
        }
        print_activation(r);
        return;
    }
    if let Some(f) = &r.fetched {
        println!(
            "fetched {} by {} ({} transferred)",
            f.commit,
            f.method,
            human_bytes(f.bytes)
        );
    }
    match (action, &r.deployment) {
        (_, Some(d)) if r.current.is_none() => println!("deployed {d}: it boots next"),
        (_, Some(d)) => println!("staged {d}: it runs after the next reboot"),
        (Action::Download, _) => println!("downloaded; 'arbor upgrade' stages it"),
        _ => {}
    }
    print_activation(r);
}

/// The activation ladder's choice for the update (docs/activation.md), when known,
/// and what `--apply` did with it.
fn print_activation(r: &UpdateResult) {
    if let Some(a) = &r.activation {
        println!("mildest way to apply it: {}", a.step);
        for p in &a.passed_over {
            println!("  not {p}");
        }
    }
    let Some(ap) = &r.applied else { return };
    if !ap.note.is_empty() {
        eprintln!("{}", ap.note);
    }
    match &ap.switch {
        _ if ap.step == "live" => match ap.restarted.as_slice() {
            [] => println!("applied live"),
            units => println!("applied live; restarted {}", units.join(" ")),
        },
        Some(s) => println!(
            "applying by {}: {} ({}) comes up now",
            s.step,
            if s.version.is_empty() {
                "the update"
            } else {
                &s.version
            },
            s.deployment
        ),
        None => println!("apply it by {}", ap.step),
    }
}

/// Prints package changes one per line, as `arbor db diff` does.
pub fn print_package_diff(d: &PackageDiff) {
    for c in &d.upgraded {
        println!("upgraded   {}:{} {} -> {}", c.name, c.arch, c.from, c.to);
    }
    for c in &d.downgraded {
        println!("downgraded {}:{} {} -> {}", c.name, c.arch, c.from, c.to);
    }
    for p in &d.removed {
        println!("removed    {} {}", p.key(), p.version);
    }
    for p in &d.added {
        println!("added      {} {}", p.key(), p.version);
    }
    if *d == PackageDiff::default() {
        println!("no package changes");
    }
}

/// Prints deployments in boot order with their roles, as `status` does.
pub fn print_status(list: &[StatusRow]) {
    if list.is_empty() {
        println!("no deployments");
        return;
    }
    for StatusRow {
        deployment: d,
        role,
        ..
    } in list
    {
        let role = match role {
            Role::Booted => "booted",
            Role::Pending => "pending",
            Role::Rollback => "rollback",
            Role::Other => "",
            Role::Staged => "staged",
        };
        let mark = if d.booted { '●' } else { ' ' };
        println!(
            "{mark} {} {role}{}",
            d.index,
            if d.origin.pinned { " (pinned)" } else { "" }
        );
        println!(
            "    {} {}",
            d.os,
            d.version.as_deref().unwrap_or("(no version)")
        );
        println!("    Commit:    {}", d.commit);
        if let Some(image) = &d.image {
            println!("    Image:     {image}");
        }
        println!("    Date:      {}", utc(d.timestamp));
        match &d.origin.override_commit {
            Some(c) => println!(
                "    Origin:    {} (held at {})",
                d.origin.refspec,
                c.short()
            ),
            None => println!("    Origin:    {}", d.origin.refspec),
        }
        if let Some(b) = &d.base {
            println!("    Base:      {b}");
        }
        if d.hotfix {
            let name = d
                .hotfix_name
                .as_deref()
                .map(|n| format!("'{n}', "))
                .unwrap_or_default();
            println!(
                "    Hotfix:    {name}a kept /usr overlay ('arbor usroverlay --list' shows it)"
            );
        }
        let l = &d.origin.layers;
        if !l.installed_names().is_empty() {
            println!("    Layered:   {}", l.installed_names().join(" "));
        }
        if !l.remove.is_empty() {
            println!("    Removed:   {}", l.remove.join(" "));
        }
        if !d.kargs.is_empty() {
            println!("    Kargs:     {}", d.kargs.join(" "));
        }
        if let Some(t) = d.tries {
            println!(
                "    Boot:      not yet marked good; {} tries left ({} used)",
                t.left, t.done
            );
        }
    }
}
