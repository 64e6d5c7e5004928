//! Stage `eval`: for each dataset's evaluation split, the base student and the distilled
//! student retrieve the top-k documents of every judged query (the corpus embedded once
//! per student and cached); their rankings are scored with trec_eval's metrics; the
//! teacher reranks each student's top `rerank_k` (the student's recall against the
//! teacher's precision); and the recall of the teacher's top 10 by the student's own top
//! 10 says how much the reranker still adds. Outputs `metrics.json`,
//! `per_query.parquet` and TREC run files. The work is done in units, each committed in
//! the partial folder (`--shard I/N` workers split them): a student's retrieval on a
//! dataset, and a part of a dataset's queries that the teacher scores against the union of
//! the students' candidates ([`Unit`]).
use super::paths::eval::{METRICS, PER_QUERY};
use super::paths::StageId;
use super::shared::upstream_output;
use super::{Outcome, Stage, StageEnv};
use crate::data::beir::Dataset;
use crate::error::{Error, Result};
use crate::model::BiEncoder;
use crate::model::CrossEncoder;
use crate::pipeline::config::{DatasetRef, PromptNames};
use crate::pipeline::fingerprint;
use crate::pipeline::manifest::Manifest;
use crate::pipeline::Pipeline;
use crate::ranking::evaluation::{self, run_files, PerQueryTable, SystemEval, SystemRun};
use crate::ranking::metrics::Judgements;
use crate::ranking::rerank::{Depth, Runs};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

#[path = "eval_parts.rs"]
mod parts;
use parts::{
    count_units, rerank_part, retrieval_units, unit_path, units, Bits, RerankedPart, Unit,
};

pub struct Eval;

/// The students compared: the base one, the one the `train` stage produced, and the
/// contrastive baseline when the pipeline trains one.
fn students(p: &Pipeline) -> Vec<(&'static str, PathBuf)> {
    let mut out = vec![
        ("base", p.student.path.clone()),
        (
            "distilled",
            p.run_dir
                .join(StageId::Train.name())
                .join(super::paths::train::MODEL_DIR),
        ),
    ];
    if p.train.baseline.is_some() {
        out.push((
            "baseline",
            p.run_dir
                .join("baseline")
                .join(super::paths::train::MODEL_DIR),
        ));
    }
    out
}

/// What changes eval's outputs: the fields of its configuration hash.
#[derive(serde::Serialize)]
struct EvalHash<'a> {
    eval: &'a crate::pipeline::config::EvalConfig,
    /// Per dataset: name, split, and `watch` for a watch dataset.
    splits: Vec<Vec<&'a str>>,
    precision: &'static str,
    student_max_seq_length: Option<usize>,
    #[serde(skip_serializing_if = "PromptNames::is_default")]
    student_prompts: &'a PromptNames,
    teacher_max_length: Option<usize>,
    /// Both students on the dev slice (left out when it is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    dev: Option<EvalDevHash>,
}

#[derive(serde::Serialize)]
struct EvalDevHash {
    dev_queries: crate::data::dev::DevQueries,
    seed: u64,
}

impl Stage for Eval {
    fn name(&self) -> &'static str {
        StageId::Eval.name()
    }

    fn upstream(&self, p: &Pipeline) -> Vec<&'static str> {
        match p.train.baseline {
            Some(_) => vec![
                StageId::Teacher.name(),
                StageId::Train.name(),
                StageId::Baseline.name(),
            ],
            None => vec![StageId::Teacher.name(), StageId::Train.name()],
        }
    }

    fn config(&self, p: &Pipeline, kind: Kind) -> serde_json::Value {
        let splits = p
            .datasets
            .iter()
            .map(|d| {
                let mut split = vec![d.name.as_str(), d.eval_split.as_str()];
                split.extend(d.watch.then_some("watch"));
                split
            })
            .collect();
        super::shared::hashed(&EvalHash {
            eval: &p.eval,
            splits,
            precision: super::shared::kind_name(kind),
            student_max_seq_length: p.student.max_length,
            student_prompts: &p.student_prompts,
            teacher_max_length: p.teacher.max_length,
            dev: (!p.dev_queries.is_off()).then_some(EvalDevHash {
                dev_queries: p.dev_queries,
                seed: p.seed,
            }),
        })
    }

    fn inputs(
        &self,
        p: &Pipeline,
        upstream: &BTreeMap<String, Manifest>,
    ) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        out.insert(
            "base_student".into(),
            fingerprint::directory(&p.student.path)?,
        );
        out.insert(
            "distilled_student".into(),
            upstream_output(
                p,
                upstream,
                StageId::Train.name(),
                super::paths::train::WEIGHTS,
            )?,
        );
        if p.train.baseline.is_some() {
            out.insert(
                "baseline_student".into(),
                upstream_output(
                    p,
                    upstream,
                    StageId::Baseline.name(),
                    super::paths::train::WEIGHTS,
                )?,
            );
        }
        let teacher = if p.teacher_from_base {
            upstream_output(
                p,
                upstream,
                StageId::Teacher.name(),
                super::paths::teacher::WEIGHTS,
            )?
        } else {
            fingerprint::directory(&p.teacher.path)?
        };
        out.insert("teacher".into(), teacher);
        for d in &p.datasets {
            let mut splits = vec![d.eval_split.as_str()];
            if !d.watch && !p.dev_queries.is_off() {
                splits.push(&d.train_split);
            }
            super::shared::dataset_inputs(d, &splits, &mut out)?;
        }
        Ok(out)
    }

    fn progress(&self, _: &Pipeline, partial: &Path) -> Option<(usize, usize)> {
        super::read_plan(partial).map(|total| (count_units(partial), total))
    }

    /// Unit by unit (see [`Unit`]), each committed in the partial folder: every
    /// student's retrieval, then the teacher's scores of the union of their top
    /// `rerank_k`, a part of each dataset's queries at a time. A `--shard` worker does the
    /// units it owns (a reranking part once the dataset's retrievals are all committed;
    /// `distill run --gpus N` starts the workers again while that makes progress), a run
    /// without it the rest, and assembles `metrics.json`, the teacher's runs and the
    /// per-query table from every unit.
    fn run(&self, env: &mut StageEnv) -> Result<Outcome> {
        let p = env.pipeline;
        let runs_dir = env.dir.join("runs");
        std::fs::create_dir_all(&runs_dir).map_err(|e| Error::io(&runs_dir, e))?;
        let units = units(p);
        super::write_plan(&env.partial, units.len())?;
        let mut teacher: Option<CrossEncoder> = None;
        let mut split: Option<(usize, LoadedSplit)> = None;
        // The retrievals of the dataset whose parts are being reranked, read back.
        let mut read_back: Option<(usize, Vec<(PathBuf, Runs)>)> = None;
        // Seconds reading the parts' retrievals back and writing the units, in all.
        let (mut reading, mut writing) = (0.0, 0.0);
        for (u, unit) in units.iter().enumerate() {
            let di = unit.dataset();
            // A part's students: every retrieval of its dataset, read back (before anything
            // is loaded for it) once for the dataset's parts, dropped at another dataset's
            // first unit.
            if read_back.as_ref().is_some_and(|(i, _)| *i != di) {
                read_back = None;
            }
            let file = unit_path(&env.partial, u);
            if env.shard.is_some_and(|w| !w.owns(u)) || usable(env, unit, &file) {
                continue;
            }
            if matches!(unit, Unit::Rerank { .. }) && read_back.is_none() {
                let clock = std::time::Instant::now();
                let students = parts::read_retrievals(env, &units, di)?;
                reading += clock.elapsed().as_secs_f64();
                let Some(students) = students else {
                    continue; // a later round's, or the assembling run's
                };
                read_back = Some((di, students));
            }
            if split.as_ref().is_none_or(|(i, _)| *i != di) {
                let clock = std::time::Instant::now();
                split = Some((di, LoadedSplit::load(p, &p.datasets[di])?));
                let part = format!("loading {}", p.datasets[di].name);
                env.timing(&part, clock.elapsed().as_secs_f64());
            }
            let Some((_, loaded)) = &split else {
                continue; // just set
            };
            let d = &p.datasets[di];
            match unit {
                Unit::Retrieve { label, path, .. } => {
                    let result = self.retrieve(env, (label, path), d, loaded)?;
                    let clock = std::time::Instant::now();
                    crate::data::atomic::write_json_compact(&file, &result)?;
                    writing += clock.elapsed().as_secs_f64();
                }
                &Unit::Rerank { part, .. } => {
                    if teacher.is_none() {
                        let (dir, clock) =
                            (super::paths::teacher_dir(p), std::time::Instant::now());
                        let t =
                            CrossEncoder::load(&dir, p.teacher.max_length, env.device, env.kind)?;
                        teacher = Some(t);
                        env.timing("loading the teacher", clock.elapsed().as_secs_f64());
                    }
                    let Some(teacher) = &teacher else {
                        continue; // just set
                    };
                    let students = match &read_back {
                        Some((i, students)) if *i == di => students,
                        _ => {
                            return Err(Error::Output {
                                path: env.partial.clone(),
                                message: format!("no retrievals read back for {}", d.name),
                            })
                        }
                    };
                    let scored = rerank_part(env, teacher, (d, loaded), part, students)?;
                    let clock = std::time::Instant::now();
                    crate::data::atomic::write_json_compact(&file, &scored)?;
                    writing += clock.elapsed().as_secs_f64();
                }
            }
            env.committed(u, units.len());
        }
        for (part, seconds) in [
            (
                "reading the retrievals back for the teacher's parts",
                reading,
            ),
            ("writing the units", writing),
        ] {
            if seconds > 0.0 {
                env.timing(part, seconds);
            }
        }
        let done = count_units(&env.partial);
        // Workers never assemble: others may still be writing. A run without --shard does.
        if env.shard.is_some() {
            return Ok(Outcome::Partial {
                done,
                total: units.len(),
            });
        }
        assemble(env, &units)
    }
}

/// Every unit's results into `metrics.json`, the teacher's TREC runs and the per-query
/// table (every unit is committed).
fn assemble(env: &mut StageEnv, units: &[Unit]) -> Result<Outcome> {
    let p = env.pipeline;
    let mut clock = std::time::Instant::now();
    let mut metrics = serde_json::Map::new();
    let mut table = PerQueryTable::default();
    let mut outputs = vec![METRICS.to_string(), PER_QUERY.to_string()];
    for (di, d) in p.datasets.iter().enumerate() {
        let mut parts = Vec::new();
        for (u, unit) in units.iter().enumerate() {
            if matches!(unit, &Unit::Rerank { dataset, .. } if dataset == di) {
                let path = unit_path(&env.partial, u);
                parts.push(crate::error::read_json::<RerankedPart>(&path)?);
            }
        }
        let mut per_dataset = serde_json::Map::new();
        per_dataset.insert("queries".into(), 0.into());
        if d.watch {
            per_dataset.insert("role".into(), "watch".into());
        }
        let mut per_student: Vec<(&str, SystemEval)> = Vec::new();
        for (s, u) in retrieval_units(units, di).into_iter().enumerate() {
            let Unit::Retrieve { label, .. } = &units[u] else {
                continue;
            };
            let r: Retrieved = crate::error::read_json(&unit_path(&env.partial, u))?;
            // The parts in order: their queries are contiguous ranges in id order.
            let mut reranked = Runs::new();
            let mut teacher = SystemRun {
                per_query: Vec::new(),
            };
            let mut recall = BTreeMap::new();
            for part in &mut parts {
                let Some(e) = part.students.get_mut(s) else {
                    return Err(Error::Output {
                        path: env.partial.clone(),
                        message: format!("a reranking part of {} lacks student `{label}`", d.name),
                    });
                };
                let e = std::mem::take(e);
                reranked.extend(e.run.into_runs());
                teacher.per_query.extend(e.teacher.per_query);
                recall.extend(e.recall);
            }
            let files = run_files(&d.name, label);
            let tag = format!("distill-{label}+teacher");
            crate::ranking::trec::write_run(&env.dir.join(&files[1]), &reranked, &tag)?;
            per_dataset.insert("queries".into(), r.queries.into());
            if let Some(dev_queries) = r.dev_queries {
                let on_dev = per_dataset
                    .entry("dev")
                    .or_insert_with(|| json!({ "queries": dev_queries }));
                on_dev[*label] = r.dev.unwrap_or_default();
            }
            let eval = SystemEval {
                student: r.run.student,
                teacher: Some(teacher),
                recall,
            };
            per_student.push((label, eval));
        }
        for (label, e) in &per_student {
            per_dataset.insert((*label).into(), e.summary());
            outputs.extend(run_files(&d.name, label));
            table.push(&d.name, label, e);
        }
        // What the teacher's loss terms add over the same recipe without them.
        if p.train.baseline.is_some() {
            let student = |m: &str| per_dataset[m]["student"]["ndcg@10"].as_f64();
            if let (Some(d), Some(b)) = (student("distilled"), student("baseline")) {
                per_dataset.insert("gain_from_teacher".into(), json!(d - b));
            }
        }
        metrics.insert(d.name.clone(), serde_json::Value::Object(per_dataset));
    }
    crate::data::atomic::write_json(&env.dir.join(METRICS), &metrics)?;
    let n = table.len();
    table.write(&env.dir.join(PER_QUERY))?;
    env.timed(
        "assembling the metrics, the teacher's TREC runs and the per-query table",
        &mut clock,
    );
    Ok(Outcome::Complete {
        outputs,
        rows: n as u64,
        summary: serde_json::Value::Object(metrics),
    })
}

/// Whether unit `unit`'s committed file reads back (one that does not is removed).
fn usable(env: &mut StageEnv, unit: &Unit, file: &Path) -> bool {
    match unit {
        Unit::Retrieve { .. } => env.usable_shard(file, crate::error::read_json::<Retrieved>),
        Unit::Rerank { .. } => env.usable_shard(file, crate::error::read_json::<RerankedPart>),
    }
}

/// A retrieval unit's results: the student on the split (its TREC run is in the stage
/// folder), its candidates for the teacher and, with a dev slice, its headline measures
/// there.
#[derive(serde::Serialize, serde::Deserialize)]
struct Retrieved {
    /// Judged queries of the split.
    queries: usize,
    /// Queries of the dev slice (none when it is off or empty).
    dev_queries: Option<usize>,
    dev: Option<serde_json::Value>,
    #[serde(flatten)]
    run: StudentRun,
}

/// What a student's retrieval leaves for the rest of the stage (and what the base
/// student's cache entry holds): its per-query measures and, per judged query, its first
/// `max(rerank_k, 10)` documents in TREC order with their scores.
#[derive(serde::Serialize, serde::Deserialize)]
struct StudentRun {
    student: SystemRun,
    candidates: Bits,
}

/// A dataset's evaluation split as loaded (and its dev slice).
struct LoadedSplit {
    ds: Dataset,
    judged: BTreeMap<String, Judgements>,
    dev: BTreeMap<String, Judgements>,
}

impl LoadedSplit {
    fn load(p: &Pipeline, d: &DatasetRef) -> Result<Self> {
        let with_dev = !d.watch && !p.dev_queries.is_off();
        let mut splits = vec![d.eval_split.as_str()];
        if with_dev && d.train_split != d.eval_split {
            splits.push(&d.train_split);
        }
        let ds = Dataset::load(&d.path, &splits, d.strict)?;
        let judged: BTreeMap<String, Judgements> = ds.qrels[&d.eval_split].clone();
        let dev = match with_dev {
            true => super::shared::dev_slice(p, d, &ds),
            false => BTreeMap::new(),
        };
        Ok(LoadedSplit { ds, judged, dev })
    }
}

/// One dataset's evaluation split: its reference, its loaded files and its judgements.
#[derive(Clone, Copy)]
struct Split<'a> {
    d: &'a DatasetRef,
    ds: &'a Dataset,
    judged: &'a BTreeMap<String, Judgements>,
}

fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).map_err(|e| Error::io(from, e))?;
    crate::data::atomic::write_bytes(to, &bytes)
}

impl Eval {
    /// A retrieval unit: the student `label` (at `path`) on a dataset's split, its
    /// headline measures on the dev slice (when there is one) and its run (the base
    /// student's from the cache when it can).
    fn retrieve(
        &self,
        env: &mut StageEnv,
        (label, path): (&str, &Path),
        d: &DatasetRef,
        loaded: &LoadedSplit,
    ) -> Result<Retrieved> {
        let p = env.pipeline;
        // The base student reads at the pipeline's length; the trained ones at the length
        // they were trained and saved with.
        let max_length = (label == "base").then_some(p.student.max_length).flatten();
        let mut student = None;
        // The corpus embedded for the dev slice serves the evaluation split too (at 8.8M
        // passages, reading them back from the cache takes about 45 s).
        let mut corpus = None;
        let mut clock = std::time::Instant::now();
        let dev = match loaded.dev.is_empty() {
            true => None,
            false => {
                let model = p.load_student(path, env.device, env.kind, max_length)?;
                let fp = fingerprint::directory(path)?;
                let (ds, dev) = (&loaded.ds, &loaded.dev);
                let embedded = super::shared::corpus_embeddings(env, &model, &fp, d, ds)?;
                let (m, _) =
                    super::shared::evaluate_slice(env, (&model, &embedded), None, ds, dev)?;
                corpus = Some(embedded);
                student = Some(model);
                let part = format!(
                    "{label} student on {}'s dev slice: loading it, embedding the corpus, searching",
                    d.name
                );
                env.timed(&part, &mut clock);
                Some(super::shared::headline_measures(&m))
            }
        };
        let split = Split {
            d,
            ds: &loaded.ds,
            judged: &loaded.judged,
        };
        let run = match label {
            "base" => self.base_cached(env, path, &split, (student, corpus))?,
            _ => self.system(env, (path, label), &split, (student, corpus))?,
        };
        Ok(Retrieved {
            queries: loaded.judged.len(),
            dev_queries: (!loaded.dev.is_empty()).then_some(loaded.dev.len()),
            dev,
            run,
        })
    }

    /// One student on one dataset: its run (top-k, the query itself left out), written as
    /// its TREC run, its measures and its candidates for the teacher. `loaded`: the
    /// student and the corpus as it embedded it, when the unit has them already.
    fn system(
        &self,
        env: &mut StageEnv,
        (path, label): (&Path, &str),
        split: &Split,
        loaded: (Option<BiEncoder>, Option<Tensor>),
    ) -> Result<StudentRun> {
        let Split { d, ds, judged } = *split;
        let p = env.pipeline;
        let max_length = (label == "base").then_some(p.student.max_length).flatten();
        let mut clock = std::time::Instant::now();
        let part = |what: &str| format!("{label} student on {}'s {}: {what}", d.name, d.eval_split);
        let student = match loaded.0 {
            Some(s) => s,
            None => p.load_student(path, env.device, env.kind, max_length)?,
        };
        let corpus = match loaded.1 {
            Some(c) => c,
            None => {
                let fp = fingerprint::directory(path)?;
                super::shared::corpus_embeddings(env, &student, &fp, d, ds)?
            }
        };
        env.timed(&part("loading it and its corpus embeddings"), &mut clock);
        let depth = Depth {
            top_k: p.eval.top_k,
            corpus_chunk: p.mine.corpus_chunk,
            batch_size: p.student.batch_size,
        };
        let runs = evaluation::retrieve(&student, &corpus, ds, judged, depth)?;
        env.timed(&part("encoding the queries and searching"), &mut clock);
        runs.write(&env.dir, &d.name, label)?;
        let run = StudentRun {
            student: SystemRun::of(&runs.student, judged),
            candidates: Bits::exact(evaluation::top_of(&runs.student, p.eval.rerank_k.max(10))),
        };
        env.timed(&part("writing its TREC run, its measures"), &mut clock);
        Ok(run)
    }

    /// The base student's run, from `<output_root>/cache/eval` when the same student,
    /// dataset files and eval settings were evaluated before (the base student does not
    /// change from night to night; its run needs computing once). The teacher reranks its
    /// candidates with the others' every night.
    fn base_cached(
        &self,
        env: &mut StageEnv,
        path: &Path,
        split: &Split,
        loaded: (Option<BiEncoder>, Option<Tensor>),
    ) -> Result<StudentRun> {
        let d = split.d;
        let p = env.pipeline;
        let mut data = BTreeMap::new();
        super::shared::dataset_inputs(d, &[&d.eval_split], &mut data)?;
        let key = fingerprint::json(&json!({
            "entry": "student run",
            "student": fingerprint::directory(path)?,
            "data": data,
            "split": d.eval_split,
            "strict": d.strict,
            "eval": p.eval,
            "corpus_chunk": p.mine.corpus_chunk,
            "student_max_seq_length": p.student.max_length,
            "student_prompts": p.student_prompts,
            "precision": super::shared::kind_name(env.kind),
            "device": format!("{:?}", env.device),
            "distill_version": env!("CARGO_PKG_VERSION"),
        }));
        let cache = p.cache_dir.join("eval").join(key);
        let result = cache.join("result.json");
        let file = run_files(&d.name, "base")[0].clone();
        let trec = cache.join("student.trec");
        let hit = [&result, &trec]
            .iter()
            .all(|f| f.exists() && super::shared::cache_entry_ok(env, f));
        if hit {
            let hit: StudentRun = crate::error::read_json(&result)?;
            copy_atomic(&trec, &env.dir.join(&file))?;
            let stage = env.name.to_string();
            env.emit(crate::pipeline::events::Event::Note {
                stage,
                message: format!("{}: base student's run from {}", d.name, cache.display()),
            });
            return Ok(hit);
        }
        let fresh = self.system(env, (path, "base"), split, loaded)?;
        std::fs::create_dir_all(&cache).map_err(|e| Error::io(&cache, e))?;
        copy_atomic(&env.dir.join(&file), &trec)?;
        super::shared::record_cache_entry(&trec)?;
        // Written last: a cache entry without result.json (and its record) is never read.
        crate::data::atomic::write_json(&result, &fresh)?;
        super::shared::record_cache_entry(&result)?;
        Ok(fresh)
    }
}
