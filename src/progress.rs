//! Progress reporting: an indicatif bar on a terminal, periodic plain lines otherwise,
//! nothing with `--quiet`.
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How much the user wants to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// Progress of one task over a known number of items.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: Option<PlainLines>,
}

struct PlainLines {
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
    every: Duration,
}

impl Progress {
    pub fn new(label: &str, total: u64, verbosity: Verbosity) -> Self {
        if verbosity == Verbosity::Quiet {
            return Progress {
                bar: None,
                plain: None,
            };
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(label.to_string());
            return Progress {
                bar: Some(bar),
                plain: None,
            };
        }
        let now = Instant::now();
        Progress {
            bar: None,
            plain: Some(PlainLines {
                label: label.to_string(),
                total,
                done: 0,
                started: now,
                last: now,
                every: Duration::from_secs(10),
            }),
        }
    }

    pub fn inc(&mut self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        if let Some(p) = &mut self.plain {
            p.done += n;
            if p.last.elapsed() >= p.every {
                p.last = Instant::now();
                let secs = p.started.elapsed().as_secs_f64();
                eprintln!(
                    "{}: {}/{} ({:.1}/s)",
                    p.label,
                    p.done,
                    p.total,
                    p.done as f64 / secs.max(1e-9)
                );
            }
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Start this process's peak resident set size afresh from its current size (Linux:
/// `/proc/self/clear_refs`), so that [`peak_rss_bytes`] measures what comes after. False
/// where the system has no such reset (the peak then stays the whole process's).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// This process's peak resident set size in bytes (`VmHWM` of `/proc/self/status`), where
/// the system reports it (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
