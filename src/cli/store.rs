//! The object store's commands: init, commit, checkout, log, show, ls, cat, diff, refs,
//! fsck, prune.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::output::{human_bytes, json, print_commit};
use super::{Cli, OutputArgs, lock_wait};
use arbor_store::checkout::CheckoutMode;
use arbor_store::commit::{CommitOptions, commit_tree};
use arbor_store::diff::{ChangeKind, diff_commits};
use arbor_store::inspect;
use arbor_store::refs::RefName;
use arbor_store::{Repo, fsck, prune};
use arbor_sysroot::Sysroot;
use arbor_sysroot::verify::CheckoutChange;

/// `arbor commit`.
#[derive(Args, Debug)]
pub struct CommitArgs {
    /// The branch to commit to (created if absent).
    #[arg(short, long = "branch", value_name = "REF")]
    pub branch: String,
    /// One-line summary.
    #[arg(short, long, default_value = "")]
    pub subject: String,
    /// Longer description.
    #[arg(long, default_value = "")]
    pub body: String,
    /// Metadata, such as version=12.4 (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Commit time in seconds since the epoch (default: $SOURCE_DATE_EPOCH, else now).
    #[arg(long, value_name = "SECS")]
    pub timestamp: Option<i64>,
    /// Do not record the branch's current commit as parent.
    #[arg(long)]
    pub orphan: bool,
    /// Leave out device nodes, sockets and fifos instead of failing.
    #[arg(long)]
    pub skip_special: bool,
    /// Rehash every file even when the inode cache knows it unchanged.
    #[arg(long)]
    pub no_cache: bool,
    /// The directory tree to commit.
    pub tree: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor checkout`.
#[derive(Args, Debug)]
pub struct CheckoutArgs {
    /// Hardlink every file to the store (fails across filesystems).
    #[arg(long, conflicts_with = "copy")]
    pub hardlink: bool,
    /// Copy every file: the checkout shares no inode with the store.
    #[arg(long)]
    pub copy: bool,
    /// Branch, remote:branch, or commit id (REV^ for its parent).
    pub rev: String,
    /// A new directory to create.
    pub dest: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor log`.
#[derive(Args, Debug)]
pub struct LogArgs {
    /// Branch or commit.
    pub rev: String,
    /// Show at most N commits.
    #[arg(short = 'n', long)]
    pub max_count: Option<usize>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// A command that takes one revision.
#[derive(Args, Debug)]
pub struct RevArgs {
    /// Branch or commit.
    pub rev: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor ls`.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// List subdirectories too.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Branch or commit.
    pub rev: String,
    /// Path inside the commit.
    #[arg(default_value = "/")]
    pub path: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor cat`.
#[derive(Args, Debug)]
pub struct CatArgs {
    /// Branch or commit.
    pub rev: String,
    /// Path of a regular file inside the commit.
    pub path: String,
}

/// `arbor fsck`.
#[derive(Args, Debug)]
pub struct FsckArgs {
    /// Delete the objects found corrupt, so that fetching (or committing) them again
    /// repairs the store; the exit status still says what was found.
    #[arg(long)]
    pub delete: bool,
    /// Also compare each deployment's checkout with its commit, reporting every path
    /// outside /etc and /var that was changed, added or removed (sysroot only).
    #[arg(long)]
    pub deployments: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor diff`.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The older commit.
    pub from: String,
    /// The newer commit.
    pub to: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor refs`.
#[derive(Args, Debug)]
pub struct RefsArgs {
    /// Delete this ref instead of listing (its commits stay until pruned).
    #[arg(long, value_name = "REF")]
    pub delete: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Report what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn parse_metadata(pairs: &[String]) -> Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--metadata '{p}': expected KEY=VALUE"),
        })
        .collect()
}

/// `arbor init`.
pub fn init(cli: &Cli, out: &OutputArgs) -> Result<i32> {
    let repo = Repo::init(&cli.repo_path())?;
    if out.json {
        json(&serde_json::json!({ "repo": repo.path() }))?;
    } else {
        println!(
            "initialized an empty repository at {}",
            repo.path().display()
        );
    }
    Ok(0)
}

/// `arbor commit`.
pub fn commit(cli: &Cli, a: &CommitArgs) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    let opts = CommitOptions {
        branch: RefName::parse(&a.branch)?,
        subject: a.subject.clone(),
        body: a.body.clone(),
        metadata: parse_metadata(&a.metadata)?,
        timestamp: match a.timestamp {
            Some(t) => t,
            None => arbor_store::commit::default_timestamp()?,
        },
        orphan: a.orphan,
        skip_special: a.skip_special,
        use_cache: !a.no_cache,
        progress: None,
    };
    let r = super::output::with_progress("committing", |progress| {
        commit_tree(
            &repo,
            &a.tree,
            &CommitOptions { progress, ..opts },
            lock_wait(cli),
        )
    })?;
    if a.output.json {
        return json(&r).map(|_| 0);
    }
    println!("{}", r.commit);
    let s = &r.stats;
    eprintln!(
        "{} regular files ({} hashed, {} known unchanged from the inode cache), {} symlinks, {} directories; \
         {} new objects, {} written",
        s.files,
        s.files_hashed,
        s.files_from_cache,
        s.symlinks,
        s.dirs,
        s.objects_written,
        human_bytes(s.bytes_written)
    );
    for p in &s.skipped_special {
        eprintln!("skipped special file {p}");
    }
    Ok(0)
}

/// `arbor checkout`.
pub fn checkout(cli: &Cli, a: &CheckoutArgs) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    let mode = if a.copy {
        CheckoutMode::Copy
    } else if a.hardlink {
        CheckoutMode::Hardlink
    } else {
        CheckoutMode::Auto
    };
    let id = repo.resolve_rev(&a.rev)?;
    let r = super::output::with_progress("checking out", |p| {
        arbor_store::checkout::checkout(&repo, &id, &a.dest, mode, p)
    })?;
    if a.output.json {
        return json(&r).map(|_| 0);
    }
    if let Some(reason) = &r.copy_reason {
        eprintln!("note: {reason}: copying files instead of hardlinking");
    }
    let how = if r.mode == CheckoutMode::Copy {
        "copied"
    } else {
        "hardlinked"
    };
    println!(
        "checked out {} into {} ({} files {how}, {} directories)",
        r.commit,
        r.dest.display(),
        r.files,
        r.dirs
    );
    Ok(0)
}

/// `arbor log`.
pub fn log(cli: &Cli, a: &LogArgs) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    let entries = inspect::log(&repo, &repo.resolve_rev(&a.rev)?, a.max_count)?;
    if a.output.json {
        return json(&entries).map(|_| 0);
    }
    entries.iter().for_each(print_commit);
    Ok(0)
}

/// `arbor show`.
pub fn show(cli: &Cli, a: &RevArgs) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    let c = inspect::show_commit(&repo, &repo.resolve_rev(&a.rev)?)?;
    if a.output.json {
        return json(&c).map(|_| 0);
    }
    print_commit(&c);
    println!("Tree:    {}\nMeta:    {}", c.root_tree, c.root_meta);
    Ok(0)
}

/// `arbor ls`.
pub fn ls(cli: &Cli, a: &LsArgs) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    let entries = inspect::list(&repo, &repo.resolve_rev(&a.rev)?, &a.path, a.recursive)?;
    if a.output.json {
        return json(&entries).map(|_| 0);
    }
    for e in entries {
        let target = e
            .target
            .as_ref()
            .map(|t| format!(" -> {t}"))
            .unwrap_or_default();
        println!(
            "{}{:05o} {} {} {:>10} {}{target}",
            e.type_char(),
            e.mode & 0o7777,
            e.uid,
            e.gid,
            e.size,
            e.path
        );
    }
    Ok(0)
}

/// `arbor cat`.
pub fn cat(cli: &Cli, a: &CatArgs) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    let mut f = inspect::open_content(&repo, &repo.resolve_rev(&a.rev)?, &a.path)?;
    let mut out = std::io::stdout().lock();
    std::io::copy(&mut f, &mut out).context("writing to stdout")?;
    out.flush()?;
    Ok(0)
}

/// `arbor diff`.
pub fn diff(cli: &Cli, a: &DiffArgs) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    let (from, to) = (repo.resolve_rev(&a.from)?, repo.resolve_rev(&a.to)?);
    let changes = diff_commits(&repo, &from, &to)?;
    if a.output.json {
        return json(&serde_json::json!({ "from": from, "to": to, "changes": changes })).map(|_| 0);
    }
    for c in changes {
        let tag = match c.change {
            ChangeKind::Added => 'A',
            ChangeKind::Removed => 'D',
            ChangeKind::Modified => 'M',
        };
        println!("{tag}    {}{}", c.path, if c.dir { "/" } else { "" });
    }
    Ok(0)
}

/// `arbor refs`.
pub fn refs(cli: &Cli, a: &RefsArgs) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    if let Some(name) = &a.delete {
        let r = RefName::parse(name)?;
        if repo.read_ref(&r)?.is_none() {
            bail!("no ref named '{r}'");
        }
        let lock = arbor_core::lock::WriterLock::acquire(
            repo.root_fd(),
            repo.path(),
            "lock",
            lock_wait(cli),
        )?;
        repo.write_ref(&lock, &r, None)?;
        return Ok(0);
    }
    let refs = repo.list_refs()?;
    if a.output.json {
        let list: Vec<_> = refs
            .iter()
            .map(|(r, id)| serde_json::json!({ "ref": r.to_string(), "commit": id }))
            .collect();
        return json(&list).map(|_| 0);
    }
    for (r, id) in refs {
        println!("{r}\t{id}");
    }
    Ok(0)
}

/// `arbor fsck`.
pub fn fsck(cli: &Cli, a: &FsckArgs) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    // On a sysroot, every deployment's commit is a root too (whatever the
    // repository recorded), and --deployments compares the checkouts.
    let sysroot = match cli.repo {
        None => Some(Sysroot::open(&cli.sysroot)?),
        Some(_) if a.deployments => {
            bail!("--deployments checks a sysroot: leave out --repo")
        }
        Some(_) => None,
    };
    let extra = match &sysroot {
        Some(s) => arbor_sysroot::deploy::deployment_roots(s)?,
        None => Vec::new(),
    };
    let report = fsck::fsck(&repo, &extra)?;
    let deleted = match a.delete {
        true => Some(fsck::delete_corrupt(&repo, &report, lock_wait(cli))?),
        false => None,
    };
    let checkouts = match (&sysroot, a.deployments) {
        (Some(s), true) => Some(arbor_sysroot::verify::verify_deployments(s)?),
        _ => None,
    };
    let outcome = arbor_sysroot::verify::SysrootFsck {
        outcome: fsck::FsckOutcome { report, deleted },
        checkouts,
    };
    let report = &outcome.outcome.report;
    let deleted = outcome.outcome.deleted.as_deref().unwrap_or(&[]);
    let changed = outcome.checkouts.as_deref().unwrap_or(&[]);
    let clean = report.is_clean() && changed.is_empty();
    if a.output.json {
        json(&outcome)?;
    } else {
        for p in &report.problems {
            let used = p
                .used_by
                .as_ref()
                .map(|u| format!(" (used by {u})"))
                .unwrap_or_default();
            println!("{}: {}{used}", p.problem, p.detail);
        }
        for c in changed {
            let what = match c.change {
                CheckoutChange::Modified => "modified",
                CheckoutChange::Added => "added",
                CheckoutChange::Removed => "removed",
            };
            println!("deployment {}: {what} {}", c.deployment, c.path);
        }
        let problems = report.problems.len() + changed.len();
        println!(
            "checked {} objects and {} refs and deployments{}: {}",
            report.objects_checked,
            report.refs_checked,
            match &outcome.checkouts {
                Some(_) => ", with their checkouts",
                None => "",
            },
            if problems == 0 {
                "no problems".to_string()
            } else {
                format!("{problems} problems")
            }
        );
        for d in deleted {
            println!("deleted corrupt {} object {}", d.kind, d.id);
        }
        if !deleted.is_empty() {
            println!(
                "fetch or commit the same content again to repair the store, and \
                 deploy again where a deployment used it"
            );
        }
    }
    Ok(if clean { 0 } else { 1 })
}

/// `arbor prune`.
pub fn prune(cli: &Cli, a: &PruneArgs) -> Result<i32> {
    // A sysroot's repository is pruned as an operation on the sysroot, which keeps
    // every deployed commit; a bare repository (--repo) keeps its refs' commits.
    if cli.repo.is_none() {
        let req = arbor_ops::Request::Prune { dry_run: a.dry_run };
        return super::outcome::run_and_print(cli, &req, &a.output);
    }
    let repo = Repo::open(&cli.repo_path())?;
    let r = prune::prune(&repo, prune::Owner::Take, &[], a.dry_run, lock_wait(cli))?;
    if a.output.json {
        return json(&r).map(|_| 0);
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} {} objects ({}), kept {}",
        r.objects_removed,
        human_bytes(r.bytes_removed),
        r.objects_kept
    );
    Ok(0)
}
