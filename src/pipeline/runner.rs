//! Decide what must run and run it: a stage whose manifest matches its configuration and
//! input fingerprints is skipped; a changed parameter or input reruns that stage and,
//! through the fingerprints of its outputs, whatever reads them.
use super::events::{Event, EventSink};
use super::fingerprint;
use super::lock::RunLock;
use super::manifest::{unix_now, Manifest, OutputFile};
use super::workers::Mode;
use super::Pipeline;
use crate::error::{Error, Result};
use crate::progress::Verbosity;
use crate::stages::{self, FaultInjector, Outcome, ShardSpec, Stage, StageEnv};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Kind;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Rerun this stage and every later one.
    pub from: Option<String>,
    /// Run only this stage (its upstream must be done).
    pub only: Option<String>,
    /// Rerun the selected stages even when done.
    pub force: bool,
    /// Do only this worker's part of the shards (mine, score, eval).
    pub shard: Option<ShardSpec>,
    /// `--gpus N`: run each stage in N worker processes.
    pub workers: Option<super::workers::Workers>,
    pub verbosity: Option<Verbosity>,
    /// Go on past a teacher that fails the gate (`--allow-weak-teacher`; or
    /// `health.allow_weak_teacher`).
    pub allow_weak_teacher: bool,
    /// Health warnings fail the run (`--strict-health`).
    pub strict_health: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageState {
    Done,
    Stale(String),
    Partial {
        done: usize,
        total: usize,
    },
    Pending(String),
    /// The pipeline does not use this stage (e.g. `teacher` when a trained teacher is given).
    Unused,
}

impl std::fmt::Display for StageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageState::Done => write!(f, "done"),
            StageState::Stale(why) => write!(f, "stale ({why})"),
            StageState::Partial { done, total } => write!(f, "partial ({done} of {total} shards)"),
            StageState::Pending(why) => write!(f, "pending ({why})"),
            StageState::Unused => write!(f, "not used by this pipeline"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StageStatus {
    pub stage: String,
    pub state: StageState,
}

/// What a run did, stage by stage.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub ran: Vec<String>,
    pub skipped: Vec<String>,
    pub partial: Vec<String>,
    /// Health warnings of the stages that are done (run or skipped).
    pub health: Vec<super::health::Finding>,
}

/// The gate before `score`: every trained dataset's dev slice must show the teacher's
/// rerank beating the student alone by `health.min_teacher_gain`, unless overridden.
fn gate(p: &Pipeline, teacher: &Manifest, allow: bool, events: &mut EventSink) -> Result<()> {
    let weak = super::health::weak_teacher(&teacher.summary, p.health.min_teacher_gain);
    if weak.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = weak
        .iter()
        .map(|(name, s, t)| {
            format!(
                "{name}: teacher rerank {t:.4} vs student alone {s:.4} ({:+.4})",
                t - s
            )
        })
        .collect();
    let numbers = listed.join("; ");
    if allow || p.health.allow_weak_teacher {
        events.emit(Event::Warning {
            stage: "gate".into(),
            message: format!(
                "weak teacher allowed through the gate (override): {numbers}; the report marks this run"
            ),
        });
        return Ok(());
    }
    let err = Error::WeakTeacher {
        message: format!(
            "teacher gate: on the dev slice the teacher's rerank does not beat the student \
             alone by {} nDCG@10 (health.min_teacher_gain): {numbers}. Nothing was scored. \
             Try a stronger teacher recipe (more steps: teacher_train.min_steps or epochs; \
             pseudo-queries for the teacher: dataset.pseudo_queries; a pointwise term: \
             teacher_train.loss = \"listwise+bce\"), another teacher.path, or go on \
             anyway with --allow-weak-teacher (health.allow_weak_teacher).",
            p.health.min_teacher_gain
        ),
    };
    events.emit(Event::StageFailed {
        stage: "gate".into(),
        error: format!("{err:#}"),
    });
    Err(err)
}

/// A stage's identity for this pipeline: config hash, inputs, and its partial folder.
struct Resolved {
    dir: PathBuf,
    config: serde_json::Value,
    config_hash: String,
    inputs: BTreeMap<String, String>,
    identity: String,
    partial: PathBuf,
    manifest: Option<Manifest>,
    verdict: std::result::Result<(), super::manifest::Staleness>,
}

fn resolve(
    p: &Pipeline,
    stage: &dyn Stage,
    kind: Kind,
    upstream: &BTreeMap<String, Manifest>,
) -> Result<Resolved> {
    let dir = p.run_dir.join(stage.name());
    let config = stage.config(p, kind);
    let config_hash = fingerprint::json(&config);
    let inputs = stage.inputs(p, upstream)?;
    let identity = fingerprint::json(&serde_json::json!({"config": config_hash, "inputs": inputs}));
    let partial = dir.join(format!(".partial-{}", &identity[..16]));
    let manifest = Manifest::read(&dir)?;
    let verdict = match &manifest {
        Some(m) => m.check(&dir, &config_hash, &inputs),
        None => Err(super::manifest::Staleness::Missing),
    };
    Ok(Resolved {
        dir,
        config,
        config_hash,
        inputs,
        identity,
        partial,
        manifest,
        verdict,
    })
}

fn kind_of(p: &Pipeline) -> Result<(tch::Device, Kind)> {
    let device = p.device.resolve()?;
    Ok((device, p.precision.resolve(device)?))
}

/// The state of every stage, without running anything.
pub fn status(p: &Pipeline) -> Result<Vec<StageStatus>> {
    let (_, kind) = kind_of(p)?;
    let mut done: BTreeMap<String, Manifest> = BTreeMap::new();
    let mut out = Vec::new();
    for stage in stages::all() {
        let name = stage.name().to_string();
        if !stage.enabled(p) {
            out.push(StageStatus {
                stage: name,
                state: StageState::Unused,
            });
            continue;
        }
        if let Some(up) = stage.upstream(p).iter().find(|u| !done.contains_key(**u)) {
            out.push(StageStatus {
                stage: name,
                state: StageState::Pending(format!("waiting for {up}")),
            });
            continue;
        }
        let r = resolve(p, stage.as_ref(), kind, &done)?;
        let state = match (&r.verdict, &r.manifest) {
            (Ok(()), Some(m)) => {
                done.insert(name.clone(), m.clone());
                StageState::Done
            }
            (Err(why), m) => match stage.progress(p, &r.partial) {
                Some((d, total)) if r.partial.exists() => StageState::Partial { done: d, total },
                _ if m.is_some() => StageState::Stale(why.to_string()),
                _ => StageState::Pending("not run yet".into()),
            },
            (Ok(()), None) => StageState::Pending("not run yet".into()),
        };
        out.push(StageStatus { stage: name, state });
    }
    Ok(out)
}

fn stage_index(name: &str, key: &str) -> Result<usize> {
    let names: Vec<&str> = stages::all().iter().map(|s| s.name()).collect();
    names
        .iter()
        .position(|n| *n == name)
        .ok_or_else(|| Error::Setting {
            key: key.into(),
            message: format!("unknown stage `{name}` (stages: {})", names.join(", ")),
        })
}

/// Run the pipeline. Returns the report when every requested stage completed (a
/// `--shard` worker completes its own shards).
pub fn run(p: &Pipeline, opts: &RunOptions) -> Result<RunReport> {
    let stages = stages::all();
    let first = match &opts.from {
        Some(s) => Some(stage_index(s, "from")?),
        None => None,
    };
    let only = match (&opts.only, opts.shard) {
        (Some(s), _) => Some(stage_index(s, "only")?),
        (None, Some(_)) => Some(stage_index("score", "shard")?),
        (None, None) => None,
    };
    let splits = |i: usize| super::workers::mode(p, stages[i].name()) == Mode::Shards;
    if opts.shard.is_some() && !only.is_some_and(splits) {
        return Err(Error::Setting {
            key: "shard".into(),
            message: "--shard applies to the mine, score and eval stages only".into(),
        });
    }
    let workers = opts.workers.as_ref().filter(|w| w.count > 1);
    if workers.is_some() && opts.shard.is_some() {
        return Err(Error::Setting {
            key: "gpus".into(),
            message: "--gpus starts its own --shard workers: give one or the other".into(),
        });
    }
    // A data-parallel rank (torchrun's environment) runs one training stage.
    let rank = crate::distributed::rank_from_env()?;
    let trains = |i: usize| super::workers::mode(p, stages[i].name()) == Mode::Ranks;
    if let Some((r, n)) = rank.filter(|_| !only.is_some_and(trains)) {
        return Err(Error::Setting {
            key: "only".into(),
            message: format!(
                "RANK={r} and WORLD_SIZE={n} make this process a data-parallel rank, which \
                 runs one training stage: give --only with a stage that trains (teacher \
                 trained from teacher.base, train, baseline)"
            ),
        });
    }
    // Under a `--gpus` parent, which holds `run.lock` and has cleared the stage's folder,
    // every rank is a worker; started by another launcher, rank 0 takes `run.lock` and
    // clears as a single process does. Workers (`--shard` ones too) share the stage's
    // partial folder with their siblings: they never clear it.
    let parented = std::env::var_os(super::workers::vars::GPUS_PARENT).is_some();
    let follower = rank.is_some_and(|(r, _)| r > 0);
    let worker = opts.shard.is_some() || follower || (rank.is_some() && parented);
    let selected = |i: usize| match (only, first) {
        (Some(o), _) => i == o,
        (None, Some(f)) => i >= f,
        (None, None) => true,
    };
    // `--gpus N` and data-parallel ranks give worker i the i-th GPU it sees; a pipeline
    // that names one GPU (other than the first) would be silently overridden.
    if let (crate::device::DeviceSpec::Cuda(k @ 1..), true) =
        (p.device, workers.is_some() || rank.is_some())
    {
        let how = match workers {
            Some(w) => format!("--gpus {}", w.count),
            None => "a data-parallel rank (RANK, WORLD_SIZE)".into(),
        };
        return Err(Error::Config {
            path: p.file.clone(),
            message: format!(
                "run.device = \"cuda:{k}\" names one GPU, but under {how} worker i uses \
                 the i-th GPU this process sees: write device = \"cuda\" (or \"auto\") \
                 and choose the GPUs with CUDA_VISIBLE_DEVICES"
            ),
        });
    }
    let (device, kind) = kind_of(p)?;
    let device = crate::distributed::local_device(device)?;
    if let Some(w) = workers.filter(|_| device.is_cuda()) {
        w.devices()?;
    }
    // The contents behind the file (datasets, models) are read before anything is written;
    // a `--gpus` parent reads them before it starts any child, so its children do not
    // again (at 1M passages that is seconds a child, every stage).
    let checked = match parented {
        true => Vec::new(),
        false => super::preflight::check(p)?,
    };
    std::fs::create_dir_all(&p.run_dir).map_err(|e| Error::io(&p.run_dir, e))?;
    // A `--gpus` parent holds `run.lock`; its children take their own.
    let lock_name = match (opts.shard, rank) {
        (Some(s), _) => format!("run.shard-{}-of-{}.lock", s.index, s.count),
        (None, Some((rank, world))) if worker => format!("run.rank-{rank}-of-{world}.lock"),
        _ => "run.lock".to_string(),
    };
    // Ranks other than 0 leave the stage folders to rank 0 and log to their own output.
    let lock = RunLock::acquire(&p.run_dir, &lock_name)?;
    let verbosity = opts.verbosity.unwrap_or(Verbosity::Normal);
    let log = p.run_dir.join("log.jsonl");
    let mut events = EventSink::new((!follower).then_some(log.as_path()), verbosity)?;
    if let Some(line) = &lock.took_over {
        events.emit(Event::Warning {
            stage: "run".into(),
            message: line.clone(),
        });
    }
    let mut faults = FaultInjector::from_env();
    let names: Vec<String> = (0..stages.len())
        .filter(|&i| selected(i) && stages[i].enabled(p))
        .map(|i| stages[i].name().to_string())
        .collect();
    events.emit(Event::RunStarted {
        run: p.name.clone(),
        stages: names,
    });
    for w in checked {
        events.emit(Event::Warning {
            stage: "check".into(),
            message: w.message,
        });
        if !w.items.is_empty() {
            events.emit(Event::Detail {
                stage: "check".into(),
                items: w.items,
            });
        }
    }
    let started = Instant::now();
    let mut done: BTreeMap<String, Manifest> = BTreeMap::new();
    let mut report = RunReport::default();
    for (i, stage) in stages.iter().enumerate() {
        let name = stage.name();
        if !stage.enabled(p) {
            continue;
        }
        if let Some(up) = stage.upstream(p).iter().find(|u| !done.contains_key(**u)) {
            if selected(i) {
                let err = Error::Setting {
                    key: "stage".into(),
                    message: format!("stage `{name}` needs `{up}`, which is not done; run it first (without --only)"),
                };
                events.emit(Event::StageFailed {
                    stage: name.into(),
                    error: format!("{err:#}"),
                });
                return Err(err);
            }
            continue;
        }
        let r = resolve(p, stage.as_ref(), kind, &done)?;
        let forced = opts.force || first.is_some_and(|f| i >= f);
        if !selected(i) || (r.verdict.is_ok() && !forced) {
            if let (Ok(()), Some(m)) = (&r.verdict, &r.manifest) {
                if selected(i) {
                    events.emit(Event::StageSkipped {
                        stage: name.into(),
                        reason: "manifest matches".into(),
                    });
                    report.skipped.push(name.into());
                }
                // Every done stage's warnings count (for --strict-health too), selected
                // or not.
                report_health(p, name, m, &mut events, &mut report);
                done.insert(name.into(), m.clone());
            }
            continue;
        }
        // The gate stands before any scoring: a teacher that does not beat the student on
        // the dev slice scores nothing (a score stage already done is not redone).
        if name == "score" {
            if let Some(teacher) = done.get("teacher") {
                if let Err(e) = gate(p, teacher, opts.allow_weak_teacher, &mut events) {
                    events.emit(Event::RunFinished {
                        ok: false,
                        seconds: started.elapsed().as_secs_f64(),
                    });
                    return Err(e);
                }
            }
        }
        let reason = match &r.verdict {
            Ok(()) => "forced".to_string(),
            Err(why) => why.to_string(),
        };
        let clear = (!worker).then_some(forced);
        let spawned = workers.map(|w| (w, super::workers::mode(p, name)));
        let result = match spawned {
            Some((w, mode @ (Mode::Shards | Mode::Ranks))) => {
                let cuda = device.is_cuda();
                events.emit(Event::Note {
                    stage: name.into(),
                    message: format!(
                        "{} workers; their output in {}",
                        w.count,
                        p.run_dir.join("workers").display()
                    ),
                });
                begin_stage(&r, clear)
                    .and_then(|()| match mode {
                        Mode::Shards => shard_rounds(w, p, stage.as_ref(), &r, forced, cuda),
                        _ => w.run(&p.run_dir, name, mode, forced, cuda),
                    })
                    .and_then(|()| match mode {
                        // Every shard exists: the parent assembles them.
                        Mode::Shards => run_stage(
                            p,
                            stage.as_ref(),
                            &r,
                            (forced, Some(false)),
                            device,
                            kind,
                            None,
                            &mut events,
                            &mut faults,
                            reason,
                        ),
                        _ => written_by_ranks(p, stage.as_ref(), kind, &done),
                    })
            }
            _ => run_stage(
                p,
                stage.as_ref(),
                &r,
                (forced, clear),
                device,
                kind,
                opts.shard,
                &mut events,
                &mut faults,
                reason,
            ),
        };
        match result {
            Ok(Some(m)) => {
                report.ran.push(name.into());
                report_health(p, name, &m, &mut events, &mut report);
                done.insert(name.into(), m);
            }
            Ok(None) => report.partial.push(name.into()),
            Err(e) => {
                events.emit(Event::StageFailed {
                    stage: name.into(),
                    error: format!("{e:#}"),
                });
                events.emit(Event::RunFinished {
                    ok: false,
                    seconds: started.elapsed().as_secs_f64(),
                });
                return Err(e);
            }
        }
    }
    let unhealthy = opts.strict_health && !report.health.is_empty();
    events.emit(Event::RunFinished {
        ok: !unhealthy,
        seconds: started.elapsed().as_secs_f64(),
    });
    if unhealthy {
        return Err(Error::Unhealthy {
            count: report.health.len(),
            first: report.health[0].message.clone(),
        });
    }
    Ok(report)
}

/// Emit (terminal line, `log.jsonl` event) and collect the health findings of a done
/// stage.
fn report_health(
    p: &Pipeline,
    stage: &str,
    m: &Manifest,
    events: &mut EventSink,
    report: &mut RunReport,
) {
    for f in super::health::findings(stage, &m.summary, &p.health) {
        events.emit(Event::Health {
            stage: stage.into(),
            check: f.check.clone(),
            dataset: f.dataset.clone(),
            value: f.value,
            threshold: f.threshold,
            message: f.message.clone(),
        });
        report.health.push(f);
    }
}

/// The manifest the ranks of a training stage wrote (rank 0 writes the outputs).
fn written_by_ranks(
    p: &Pipeline,
    stage: &dyn Stage,
    kind: Kind,
    done: &BTreeMap<String, Manifest>,
) -> Result<Option<Manifest>> {
    let r = resolve(p, stage, kind, done)?;
    match (r.verdict, r.manifest) {
        (Ok(()), Some(m)) => Ok(Some(m)),
        _ => Err(Error::output(
            r.dir.join(super::manifest::MANIFEST),
            "every rank exited 0, but the stage's manifest is missing or does not match",
        )),
    }
}

/// Make the stage folder ready for a run: the old manifest goes first (from now on the
/// folder does not look complete); with `clear`, the partial folders of other
/// configurations go too (and this one's when `clear` is `Some(true)`: forced).
fn begin_stage(r: &Resolved, clear: Option<bool>) -> Result<()> {
    std::fs::create_dir_all(&r.dir).map_err(|e| Error::io(&r.dir, e))?;
    let manifest_path = r.dir.join(super::manifest::MANIFEST);
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
    }
    if let Some(forced) = clear {
        clear_partials(&r.dir, &r.partial, forced)?;
    }
    std::fs::create_dir_all(&r.partial).map_err(|e| Error::io(&r.partial, e))
}

/// Remove partial folders of other configurations (and, when forced, this one's too).
fn clear_partials(dir: &Path, keep: &Path, forced: bool) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.filter_map(|e| e.ok()) {
        let path = e.path();
        let is_partial = e.file_name().to_string_lossy().starts_with(".partial-");
        if is_partial && (path != keep || forced) {
            std::fs::remove_dir_all(&path).map_err(|err| Error::io(&path, err))?;
        }
    }
    Ok(())
}

/// A sharded stage's workers, started again while a round commits shards and some
/// remain: eval's reranking parts wait for every student's retrieval, which other
/// workers may owe in the same round.
fn shard_rounds(
    w: &super::workers::Workers,
    p: &Pipeline,
    stage: &dyn Stage,
    r: &Resolved,
    forced: bool,
    cuda: bool,
) -> Result<()> {
    let done = || stage.progress(p, &r.partial);
    loop {
        let before = done().map_or(0, |(d, _)| d);
        w.run(&p.run_dir, stage.name(), Mode::Shards, forced, cuda)?;
        match done() {
            Some((d, total)) if d < total && d > before => continue,
            _ => return Ok(()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_stage(
    p: &Pipeline,
    stage: &dyn Stage,
    r: &Resolved,
    (forced, clear): (bool, Option<bool>),
    device: tch::Device,
    kind: Kind,
    shard: Option<ShardSpec>,
    events: &mut EventSink,
    faults: &mut FaultInjector,
    reason: String,
) -> Result<Option<Manifest>> {
    let name = stage.name();
    // Sharded workers share the partial folder: they never clear it (`clear` is None).
    begin_stage(r, clear)?;
    events.emit(Event::StageStarted {
        stage: name.into(),
        reason,
    });
    let started_unix = unix_now();
    let clock = Instant::now();
    let peak_reset = crate::progress::reset_peak_rss();
    let mut env = StageEnv {
        pipeline: p,
        name,
        dir: r.dir.clone(),
        partial: r.partial.clone(),
        identity: r.identity.clone(),
        forced,
        device,
        kind,
        shard,
        events,
        faults,
    };
    let outcome = stage.run(&mut env);
    for notice in crate::model::bert::take_notices() {
        env.warn(notice);
    }
    let outcome = outcome?;
    let (outputs, rows, summary) = match outcome {
        Outcome::Partial { done, total } => {
            env.emit(Event::StagePartial {
                stage: name.into(),
                done,
                total,
            });
            return Ok(None);
        }
        Outcome::Follower { rank } => {
            env.emit(Event::Note {
                stage: name.into(),
                message: format!("rank {rank} done; rank 0 writes the outputs"),
            });
            return Ok(None);
        }
        Outcome::Complete {
            outputs,
            rows,
            summary,
        } => (outputs, rows, summary),
    };
    // The outputs hashed side by side (eval's TREC runs are hundreds of MB); the first
    // failure in the outputs' order is the one reported.
    let hashing = Instant::now();
    let files = {
        use rayon::prelude::*;
        let hashed: Vec<Result<(String, OutputFile)>> = outputs
            .into_par_iter()
            .map(|o| {
                let path = r.dir.join(&o);
                let bytes = std::fs::metadata(&path)
                    .map_err(|e| Error::io(&path, e))?
                    .len();
                let sha256 = fingerprint::file(&path)?;
                Ok((o, OutputFile { sha256, bytes }))
            })
            .collect();
        hashed.into_iter().collect::<Result<BTreeMap<_, _>>>()?
    };
    env.timing("hashing its outputs", hashing.elapsed().as_secs_f64());
    let seconds = clock.elapsed().as_secs_f64();
    let manifest = Manifest {
        stage: name.into(),
        distill_version: env!("CARGO_PKG_VERSION").into(),
        config_hash: r.config_hash.clone(),
        config: r.config.clone(),
        inputs: r.inputs.clone(),
        outputs: files,
        rows,
        started_unix,
        finished_unix: unix_now(),
        seconds,
        summary: summary.clone(),
    };
    manifest.write(&r.dir)?;
    std::fs::remove_dir_all(&r.partial).map_err(|e| Error::io(&r.partial, e))?;
    env.emit(Event::StageFinished {
        stage: name.into(),
        seconds,
        rows,
        summary,
        peak_rss_bytes: peak_reset.then(crate::progress::peak_rss_bytes).flatten(),
    });
    Ok(Some(manifest))
}
