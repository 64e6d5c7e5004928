//! Run events. Stages emit them; the log file (`log.jsonl` in the run directory), the
//! terminal lines and the progress bars are consumers, not `println!`s in the stages.
use crate::progress::{Progress, Verbosity};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run: String,
        stages: Vec<String>,
    },
    StageSkipped {
        stage: String,
        reason: String,
    },
    StageStarted {
        stage: String,
        reason: String,
    },
    /// `total` items of work begin (drives the progress bar; not logged).
    WorkStarted {
        stage: String,
        label: String,
        total: u64,
    },
    /// `n` more items done (not logged).
    WorkProgress {
        stage: String,
        n: u64,
    },
    WorkFinished {
        stage: String,
    },
    ShardCommitted {
        stage: String,
        shard: usize,
        shards: usize,
    },
    Warning {
        stage: String,
        message: String,
    },
    /// A health check's warning (`pipeline::health`).
    Health {
        stage: String,
        check: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        dataset: Option<String>,
        value: f64,
        threshold: f64,
        message: String,
    },
    /// One optimizer step of a training stage (logged, not printed): the loss per step in
    /// `log.jsonl`, beside `loss_curve.parquet`.
    TrainStep {
        stage: String,
        step: u64,
        epoch: u64,
        lr: f64,
        loss: f32,
        grad_norm: f32,
        terms: std::collections::BTreeMap<String, f32>,
    },
    /// An in-training evaluation (logged): nDCG@10 per dataset.
    TrainEval {
        stage: String,
        step: u64,
        ndcg10: std::collections::BTreeMap<String, f64>,
    },
    /// Every item a warning counted (the skipped qrels rows): logged, not printed.
    Detail {
        stage: String,
        items: Vec<String>,
    },
    /// How long a part of a stage took (logged; printed with `--verbose`): where a
    /// stage's time goes, on the machine that ran it.
    Timing {
        stage: String,
        part: String,
        seconds: f64,
    },
    /// What a training loop computed (logged; printed with `--verbose`): its steps in
    /// this process from `from_step`, their real rows and tokens (padding left out; with
    /// `ranks` data-parallel ranks, rank 0's slices), the model arithmetic of those tokens
    /// (`model::work::training_flops`) and the loop's seconds.
    Throughput {
        stage: String,
        from_step: u64,
        steps: u64,
        ranks: u64,
        rows: u64,
        tokens: u64,
        flops: f64,
        seconds: f64,
    },
    /// Something worth a line at normal verbosity (e.g. a result taken from the cache).
    Note {
        stage: String,
        message: String,
    },
    StageFinished {
        stage: String,
        seconds: f64,
        rows: u64,
        summary: serde_json::Value,
        /// This process's peak resident set while the stage ran, where the system can
        /// reset and report it (Linux); workers that a stage started report their own.
        #[serde(skip_serializing_if = "Option::is_none")]
        peak_rss_bytes: Option<u64>,
    },
    StagePartial {
        stage: String,
        done: usize,
        total: usize,
    },
    StageFailed {
        stage: String,
        error: String,
    },
    RunFinished {
        ok: bool,
        seconds: f64,
    },
}

/// Receives events: appends the loggable ones to `log.jsonl`, prints lines and drives a
/// progress bar according to the verbosity.
pub struct EventSink {
    log: Option<std::fs::File>,
    verbosity: Verbosity,
    progress: Option<Progress>,
}

impl EventSink {
    pub fn new(log_path: Option<&Path>, verbosity: Verbosity) -> crate::Result<Self> {
        let log = match log_path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| crate::Error::io(p, e))?,
            ),
            None => None,
        };
        Ok(EventSink {
            log,
            verbosity,
            progress: None,
        })
    }

    pub fn emit(&mut self, event: Event) {
        match &event {
            Event::WorkStarted { label, total, .. } => {
                self.progress = Some(Progress::new(label, *total, self.verbosity));
                return;
            }
            Event::WorkProgress { n, .. } => {
                if let Some(p) = &mut self.progress {
                    p.inc(*n);
                }
                return;
            }
            Event::WorkFinished { .. } => {
                if let Some(p) = self.progress.take() {
                    p.finish();
                }
                return;
            }
            _ => {}
        }
        if let Some(f) = &mut self.log {
            let mut value = serde_json::to_value(&event).unwrap_or_default();
            if let Some(m) = value.as_object_mut() {
                m.insert("unix".into(), super::manifest::unix_now().into());
            }
            // One write per line: the `--gpus` workers and ranks append to the same file,
            // and a line written in pieces interleaved with theirs.
            let _ = f.write_all(format!("{value}\n").as_bytes());
        }
        if let Some(line) = self.line(&event) {
            eprintln!("{line}");
        }
    }

    fn line(&self, event: &Event) -> Option<String> {
        let normal = self.verbosity >= Verbosity::Normal;
        let verbose = self.verbosity >= Verbosity::Verbose;
        match event {
            Event::StageSkipped { stage, reason } if normal => {
                Some(format!("{stage}: skipped ({reason})"))
            }
            Event::StageStarted { stage, reason } if normal => {
                Some(format!("{stage}: running ({reason})"))
            }
            Event::ShardCommitted {
                stage,
                shard,
                shards,
            } if verbose => Some(format!(
                "{stage}: shard {} of {shards} committed",
                shard + 1
            )),
            Event::Warning { stage, message } => Some(format!("{stage}: warning: {message}")),
            Event::Health { stage, message, .. } => {
                Some(format!("{stage}: health warning: {message}"))
            }
            Event::Note { stage, message } if normal => Some(format!("{stage}: {message}")),
            Event::Timing {
                stage,
                part,
                seconds,
            } if verbose => Some(format!("{stage}: {part} took {seconds:.2} s")),
            Event::Throughput {
                stage,
                steps,
                ranks,
                rows,
                tokens,
                flops,
                seconds,
                ..
            } if verbose => Some(format!(
                "{stage}: {steps} steps on {rows} rows, {tokens} real tokens, in {seconds:.2} s: \
                 {:.1} TFLOP of model arithmetic, {:.1} TFLOP/s{}",
                flops / 1e12,
                flops / 1e12 / seconds.max(1e-9),
                match *ranks {
                    1 => String::new(),
                    n => format!(" (rank 0's slices of {n})"),
                },
            )),
            Event::StageFinished {
                stage,
                seconds,
                rows,
                summary,
                ..
            } if normal => Some(format!(
                "{stage}: done in {seconds:.1} s, {rows} rows{}",
                if verbose {
                    format!(" {summary}")
                } else {
                    String::new()
                }
            )),
            Event::StagePartial { stage, done, total } if normal => Some(format!(
                "{stage}: this worker's shards are done; {done} of {total} shards exist"
            )),
            Event::StageFailed { stage, error } => Some(format!("{stage}: failed: {error}")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_appending_to_one_log_at_once_write_whole_lines() {
        // As the `--gpus` workers do: each its own handle on the same file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let (sinks, events) = (4, 300);
        std::thread::scope(|s| {
            for k in 0..sinks {
                let path = &path;
                s.spawn(move || {
                    let mut sink = EventSink::new(Some(path), Verbosity::Quiet).unwrap();
                    for i in 0..events {
                        sink.emit(Event::Note {
                            stage: format!("worker {k}"),
                            message: format!("event {i} {}", "x".repeat(200)),
                        });
                    }
                });
            }
        });
        let log = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), sinks * events);
        for line in lines {
            let e: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("a torn line ({err}): {line}"));
            assert_eq!(e["event"], "note");
        }
    }
}
