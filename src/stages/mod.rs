//! Pipeline stages. A stage is a function of (its configuration, the fingerprints of its
//! inputs): it writes its outputs under temporary names, renames them into place, and the
//! runner writes `manifest.json` last. Long stages commit closed, renamed shards into a
//! partial folder named after their configuration and inputs, so a killed run loses at
//! most the shard in flight and a changed run never reuses foreign shards.
pub mod corpus_parts;
pub mod eval;
pub mod mine;
pub mod paths;
pub mod report;
pub mod score;
pub mod shared;
pub mod teacher;
pub mod train;

use crate::error::{Error, Result};
use crate::pipeline::events::{Event, EventSink};
use crate::pipeline::Pipeline;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// `--shard I/N`: this process does shards `j` with `j % N == I`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for ShardSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Setting {
            key: "shard".into(),
            message: format!("`{s}` is not I/N with 0 <= I < N"),
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) =
            (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(ShardSpec { index, count })
    }
}

impl ShardSpec {
    pub fn owns(&self, shard: usize) -> bool {
        shard % self.count == self.index
    }
}

/// What a stage run produced.
#[derive(Debug)]
pub enum Outcome {
    /// Outputs (file names inside the stage folder) are in place.
    Complete {
        outputs: Vec<String>,
        rows: u64,
        summary: serde_json::Value,
    },
    /// A `--shard` worker finished its part; `done` of `total` shards exist.
    Partial { done: usize, total: usize },
    /// A data-parallel rank other than 0 took its part in training; rank 0 writes the
    /// outputs ([`crate::distributed`]).
    Follower { rank: usize },
}

/// Everything a stage needs to run.
pub struct StageEnv<'a> {
    pub pipeline: &'a Pipeline,
    pub name: &'static str,
    /// `<run dir>/<stage>`.
    pub dir: PathBuf,
    /// Folder of committed shards for this configuration and these inputs.
    pub partial: PathBuf,
    /// sha256 of the stage's config hash and input fingerprints (what names its partial
    /// folder, and keys the caches of whole stage results).
    pub identity: String,
    /// `--force` (or `--from`) asked for this stage: cached whole results are not reused.
    pub forced: bool,
    pub device: Device,
    pub kind: Kind,
    pub shard: Option<ShardSpec>,
    pub events: &'a mut EventSink,
    pub faults: &'a mut FaultInjector,
}

impl StageEnv<'_> {
    pub fn emit(&mut self, event: Event) {
        self.events.emit(event);
    }

    /// Log how long `part` of the stage took since `since`, and start the next part's
    /// clock.
    pub fn timed(&mut self, part: &str, since: &mut std::time::Instant) {
        let stage = self.name.to_string();
        self.emit(Event::Timing {
            stage,
            part: part.into(),
            seconds: since.elapsed().as_secs_f64(),
        });
        *since = std::time::Instant::now();
    }

    /// Log the time a part of the stage took in all (summed over its occurrences, which
    /// may overlap other parts: a part within a part).
    pub fn timing(&mut self, part: &str, seconds: f64) {
        let stage = self.name.to_string();
        self.emit(Event::Timing {
            stage,
            part: part.into(),
            seconds,
        });
    }

    pub fn warn(&mut self, message: String) {
        let stage = self.name.to_string();
        self.events.emit(Event::Warning { stage, message });
    }

    /// Path of shard `index` in the partial folder.
    pub fn shard_path(&self, prefix: &str, index: usize) -> PathBuf {
        self.partial.join(format!("{prefix}-{index:05}.parquet"))
    }

    /// Whether the shard at `path` is committed and reads back whole (`read`). A shard that
    /// exists but does not read back (a kill or a full disk can leave one) is removed with a
    /// warning, so that the stage redoes it instead of failing on it at every run.
    pub fn usable_shard<T>(&mut self, path: &Path, read: impl FnOnce(&Path) -> Result<T>) -> bool {
        if !path.exists() {
            return false;
        }
        match read(path) {
            Ok(_) => true,
            Err(e) => {
                self.warn(format!(
                    "shard {} does not read back ({e}); it is removed and redone",
                    path.display()
                ));
                let _ = std::fs::remove_file(path);
                false
            }
        }
    }

    /// Record that shard `index` of `total` was committed (and let a test fault fire).
    pub fn committed(&mut self, index: usize, total: usize) {
        let stage = self.name.to_string();
        self.events.emit(Event::ShardCommitted {
            stage,
            shard: index,
            shards: total,
        });
        self.faults.after_commit();
    }
}

/// A stage hosts the training loop: its events become the stage's log lines, progress
/// bar and shard records.
impl crate::training::trainer::Host for StageEnv<'_> {
    fn label(&self) -> String {
        self.name.to_string()
    }

    fn event(&mut self, event: crate::training::trainer::TrainEvent) {
        use crate::training::trainer::TrainEvent as T;
        let stage = self.name.to_string();
        match event {
            T::Resumed { step, total } => self.warn(format!(
                "resuming from the checkpoint at step {step} of {total}"
            )),
            T::Started { remaining, .. } => self.emit(Event::WorkStarted {
                label: format!("{stage} steps"),
                stage,
                total: remaining,
            }),
            T::Step {
                step,
                epoch,
                lr,
                loss,
                grad_norm,
                terms,
            } => {
                self.emit(Event::WorkProgress {
                    stage: stage.clone(),
                    n: 1,
                });
                self.emit(Event::TrainStep {
                    stage,
                    step,
                    epoch,
                    lr,
                    loss,
                    grad_norm,
                    terms: terms.into_iter().collect(),
                });
            }
            T::Evaluated { step, values } => self.emit(Event::TrainEval {
                stage,
                step,
                ndcg10: values.into_iter().collect(),
            }),
            T::CheckpointWritten { step, total } => {
                self.committed((step - 1) as usize, total as usize)
            }
            T::Finished {
                checkpoints,
                checkpoint_seconds,
                throughput,
            } => {
                self.emit(Event::WorkFinished {
                    stage: stage.clone(),
                });
                if let Some(t) = throughput {
                    self.emit(Event::Throughput {
                        stage,
                        from_step: t.from_step,
                        steps: t.steps,
                        ranks: t.ranks,
                        rows: t.work.rows,
                        tokens: t.work.tokens,
                        flops: t.flops,
                        seconds: t.seconds,
                    });
                }
                if checkpoints > 0 {
                    let part = format!("of which taking {checkpoints} checkpoints");
                    self.timing(&part, checkpoint_seconds);
                }
            }
        }
    }

    fn after_step(&mut self, step: u64) {
        self.faults.after_step(self.name, step);
    }

    fn settles_checkpoints(&self) -> bool {
        self.faults.armed()
    }
}

/// Fault injection for the crash-recovery tests: with `DISTILL_FAULT_AFTER_SHARDS=N` the
/// process aborts (as if killed with SIGKILL) right after its N-th committed shard; with
/// `DISTILL_FAULT_AT_STEP=N` (or `STAGE:N`), right after training step N of any (that)
/// training stage, checkpoint or not. `DISTILL_FAULT_HANG_AFTER_SHARDS=N` makes the
/// process stop working (sleep) after its N-th committed shard instead, so that a test can
/// kill its parent while it runs.
#[derive(Debug, Default)]
pub struct FaultInjector {
    remaining: Option<usize>,
    hang: bool,
    at_step: Option<(Option<String>, u64)>,
}

impl FaultInjector {
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok();
        let at_step = var("DISTILL_FAULT_AT_STEP").and_then(|v| match v.split_once(':') {
            Some((stage, n)) => n.parse().ok().map(|n| (Some(stage.to_string()), n)),
            None => v.parse().ok().map(|n| (None, n)),
        });
        let hang = var("DISTILL_FAULT_HANG_AFTER_SHARDS").and_then(|v| v.parse().ok());
        FaultInjector {
            remaining: hang.or(var("DISTILL_FAULT_AFTER_SHARDS").and_then(|v| v.parse().ok())),
            hang: hang.is_some(),
            at_step,
        }
    }

    /// Whether a fault is set: a training stage then waits at each step for the
    /// checkpoint being written, so that the fault finds the same files on disk however
    /// fast they are written.
    pub fn armed(&self) -> bool {
        self.remaining.is_some() || self.at_step.is_some()
    }

    pub fn after_step(&mut self, stage: &str, step: u64) {
        let hit = self
            .at_step
            .as_ref()
            .is_some_and(|(s, n)| *n == step && s.as_deref().is_none_or(|s| s == stage));
        if hit {
            eprintln!("DISTILL_FAULT_AT_STEP: aborting");
            std::process::abort();
        }
    }

    fn after_commit(&mut self) {
        if let Some(n) = &mut self.remaining {
            *n = n.saturating_sub(1);
            if *n == 0 && self.hang {
                eprintln!("DISTILL_FAULT_HANG_AFTER_SHARDS: hanging");
                std::thread::sleep(std::time::Duration::from_secs(600));
            }
            if *n == 0 {
                eprintln!("DISTILL_FAULT_AFTER_SHARDS: aborting");
                std::process::abort();
            }
        }
    }
}

/// One stage of the pipeline.
pub trait Stage {
    fn name(&self) -> &'static str;
    /// Whether this pipeline uses the stage at all.
    fn enabled(&self, _: &Pipeline) -> bool {
        true
    }
    /// Stages whose outputs this one reads.
    fn upstream(&self, p: &Pipeline) -> Vec<&'static str>;
    /// The settings that determine the output (hashed into the manifest).
    fn config(&self, p: &Pipeline, kind: Kind) -> serde_json::Value;
    /// Fingerprints of every input; `upstream` holds the manifests of upstream stages.
    fn inputs(
        &self,
        p: &Pipeline,
        upstream: &BTreeMap<String, crate::pipeline::manifest::Manifest>,
    ) -> Result<BTreeMap<String, String>>;
    /// Shards done and in total in a partial folder, for `status`.
    fn progress(&self, p: &Pipeline, partial: &Path) -> Option<(usize, usize)>;
    fn run(&self, env: &mut StageEnv) -> Result<Outcome>;
}

const PLAN: &str = "plan.json";

/// The data-parallel group of a training stage when the environment makes this process
/// one of several ranks ([`crate::distributed::World::from_env`]).
pub fn world(env: &StageEnv) -> Result<Option<crate::distributed::World>> {
    crate::distributed::World::from_env(env.device)
}

/// Record in a partial folder how many shards (or training steps) make the stage, so that
/// `status` can show progress.
pub fn write_plan(partial: &Path, total: usize) -> Result<()> {
    let path = partial.join(PLAN);
    std::fs::write(&path, serde_json::json!({"shards": total}).to_string())
        .map_err(|e| Error::io(&path, e))
}

pub fn read_plan(partial: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(partial.join(PLAN)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("shards")?.as_u64().map(|n| n as usize)
}

/// Progress of a training stage: the step of its newest checkpoint, of the planned steps.
pub fn training_progress(partial: &Path) -> Option<(usize, usize)> {
    read_plan(partial).map(|total| {
        let done = crate::training::checkpoint::list(&partial.join("checkpoints"))
            .last()
            .copied();
        (done.unwrap_or(0) as usize, total)
    })
}

/// The end of a training stage, once its model is exported to `model_dir`: write the loss
/// curve, move the checkpoints out of the partial folder, and list the outputs.
pub fn finish_training(
    env: &StageEnv,
    curve: &crate::training::curve::LossCurve,
    (checkpoints, after): (&Path, crate::training::checkpoint::AfterSuccess),
    model_dir: &str,
    stats: &crate::training::groups::GroupStats,
) -> Result<Outcome> {
    const CURVE: &str = "loss_curve.parquet";
    curve.write(&env.dir.join(CURVE))?;
    crate::training::checkpoint::publish(checkpoints, &env.dir.join("checkpoints"), after)?;
    // Every file of the exported model (weights, configs, tokenizer, pooling): a missing
    // or changed one makes the stage stale.
    let mut outputs = model_files(&env.dir, model_dir)?;
    outputs.push(CURVE.into());
    Ok(Outcome::Complete {
        outputs,
        rows: curve.step.len() as u64,
        summary: {
            let mut summary = serde_json::json!({
                "groups": stats,
                "steps": curve.step.len(),
                "final_loss": curve.loss.last(),
            });
            let ends = crate::pipeline::health::loss_summary(&curve.loss);
            for (k, v) in ends.as_object().into_iter().flatten() {
                summary[k] = v.clone();
            }
            summary
        },
    })
}

/// The files under `root/dir`, as paths relative to `root` (sorted).
pub fn model_files(root: &Path, dir: &str) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, &root.join(dir), &mut out)?;
    out.sort();
    Ok(out)
}

/// Number of `.parquet` files in a folder (committed shards).
pub fn count_shards(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(prefix) && n.ends_with(".parquet")
                })
                .count()
        })
        .unwrap_or(0)
}

/// All stages in pipeline order.
pub fn all() -> Vec<Box<dyn Stage>> {
    vec![
        Box::new(mine::Mine),
        Box::new(teacher::Teacher),
        Box::new(score::Score),
        Box::new(train::Train::DISTILLED),
        Box::new(train::Train::BASELINE),
        Box::new(eval::Eval),
        Box::new(report::Report),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_spec_parses_and_partitions() {
        let s: ShardSpec = "1/3".parse().unwrap();
        assert!(s.owns(1) && s.owns(4) && !s.owns(0));
        assert!("3/3".parse::<ShardSpec>().is_err());
        assert!("x".parse::<ShardSpec>().is_err());
        assert!("0/0".parse::<ShardSpec>().is_err());
    }
}
