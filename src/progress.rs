//! Progress bars for long imports, loads and saves: drawn on stderr when it is a terminal,
//! silent when it is piped or redirected.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A set of progress bars, or nothing when stderr is not a terminal (or `quiet`).
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars on stderr if it is a terminal and not `quiet`.
    pub fn new(quiet: bool) -> Progress {
        let on = !quiet && std::io::stderr().is_terminal();
        Progress {
            multi: on.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    /// No bars at all.
    pub fn hidden() -> Progress {
        Progress { multi: None }
    }

    /// Prints a line on standard output, above the bars when they are drawn.
    pub fn println(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                if m.println(line).is_err() {
                    println!("{line}");
                }
            }
            None => println!("{line}"),
        }
    }

    /// A byte-counting bar labelled `label`, of `total` bytes if known.
    pub fn bytes(&self, label: &str, total: Option<u64>) -> ProgressBar {
        let Some(m) = &self.multi else {
            return ProgressBar::hidden();
        };
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(
                    "{prefix:<20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{prefix:<20} {spinner} {bytes} {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        let bar = m.add(bar);
        bar.set_prefix(label.to_string());
        bar
    }
}
