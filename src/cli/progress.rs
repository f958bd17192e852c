//! The progress every operation shows on the terminal: its steps as lines on stderr,
//! and a download bar when stderr is a terminal.

use super::output::PrintSteps;
use arbor_core::progress::{Download, Observer};

/// Step messages, and a download bar when stderr is a terminal.
pub struct Term {
    steps: PrintSteps,
    bar: Option<indicatif::ProgressBar>,
}

impl Term {
    /// A display for this process's stderr.
    pub fn new() -> Term {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} downloading {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap(),
            );
            b
        });
        Term {
            steps: PrintSteps,
            bar,
        }
    }
}

impl Observer for Term {
    fn task_begin(&self, task: &str) {
        self.steps.task_begin(task)
    }
    fn message(&self, text: &str) {
        self.steps.message(text)
    }
    fn download(&self, d: &Download) {
        if let Some(b) = &self.bar {
            b.set_length(d.bytes_total);
            b.set_position(d.bytes_done);
            if d.bytes_done >= d.bytes_total {
                b.finish_and_clear();
            }
        }
    }
}
