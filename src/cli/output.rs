//! Text formatting shared by the subcommands.

use serde::Serialize;

use arbor_store::inspect::CommitInfo;

/// Prints a value as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS +0000` for a Unix time (UTC).
pub fn utc(secs: i64) -> String {
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S +0000").to_string(),
        None => format!("@{secs} (out of range)"),
    }
}

/// A commit as `arbor log` and `arbor show` print it.
pub fn print_commit(c: &CommitInfo) {
    println!("commit {}", c.id);
    if let Some(p) = &c.parent {
        println!("Parent:  {p}");
    }
    println!("Date:    {}", utc(c.timestamp));
    for (k, v) in &c.metadata {
        println!("{:<8} {v}", format!("{k}:"));
    }
    println!();
    for line in c.subject.lines().chain(c.body.lines()) {
        println!("    {line}");
    }
    println!();
}

/// Runs `f` with a progress counter, drawing a spinner with its counts on stderr while
/// it runs when stderr is a terminal; otherwise `f` gets no counter and nothing is
/// drawn (the result lines printed afterwards are the plain output).
pub fn with_progress<T>(
    what: &str,
    f: impl FnOnce(Option<std::sync::Arc<arbor_core::progress::Progress>>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return f(None);
    }
    let progress = std::sync::Arc::new(arbor_core::progress::Progress::default());
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .expect("valid template"),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drawer = {
        let (progress, bar, stop, what) = (
            progress.clone(),
            bar.clone(),
            stop.clone(),
            what.to_string(),
        );
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (items, bytes) = progress.get();
                bar.set_message(format!("{what}: {items} entries, {}", human_bytes(bytes)));
                bar.tick();
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let result = f(Some(progress));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = drawer.join();
    bar.finish_and_clear();
    result
}

/// Bytes in a unit people read.
pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Prints a transaction's steps and messages on stderr as plain lines (`arbor: …`),
/// so a long command says what it is doing, on a terminal or in a log.
pub struct PrintSteps;

impl arbor_core::progress::Observer for PrintSteps {
    fn task_begin(&self, task: &str) {
        eprintln!("arbor: {task} …");
    }

    fn message(&self, text: &str) {
        eprintln!("arbor: {text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 +0000");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 +0000");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 +0000");
        assert_eq!(utc(-1), "1969-12-31 23:59:59 +0000");
    }

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
    }
}
