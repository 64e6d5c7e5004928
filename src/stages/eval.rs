//! Stage `eval`: for each dataset's evaluation split, the base student and the distilled
//! student retrieve the top-k documents of every judged query (the corpus embedded once
//! per student and cached); their rankings are scored with trec_eval's metrics; the
//! teacher reranks each student's top `rerank_k` (the student's recall against the
//! teacher's precision); and the recall of the teacher's top 10 by the student's own top
//! 10 says how much the reranker still adds. Outputs `metrics.json`,
//! `per_query.parquet` and TREC run files. The work is done in units (a student on a
//! dataset), each committed in the partial folder: `--shard I/N` workers split them.
use super::paths::eval::{METRICS, PER_QUERY};
use super::paths::StageId;
use super::shared::upstream_output;
use super::{Outcome, Stage, StageEnv};
use crate::data::beir::Dataset;
use crate::error::{Error, Result};
use crate::model::CrossEncoder;
use crate::pipeline::config::{DatasetRef, PromptNames};
use crate::pipeline::fingerprint;
use crate::pipeline::manifest::Manifest;
use crate::pipeline::Pipeline;
use crate::ranking::evaluation::{self, run_files, PerQueryTable, SystemEval};
use crate::ranking::metrics::Judgements;
use crate::ranking::rerank::Depth;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

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

    /// Unit by unit (a student on a dataset, see [`units`]), each committed in the
    /// partial folder; a `--shard` worker does the units it owns, a run without it the
    /// rest, and assembles `metrics.json` and the per-query table from every unit.
    fn run(&self, env: &mut StageEnv) -> Result<Outcome> {
        let p = env.pipeline;
        let runs_dir = env.dir.join("runs");
        std::fs::create_dir_all(&runs_dir).map_err(|e| Error::io(&runs_dir, e))?;
        let units = units(p);
        super::write_plan(&env.partial, units.len())?;
        let mut teacher: Option<CrossEncoder> = None;
        let mut split: Option<(usize, LoadedSplit)> = None;
        for (u, &(di, label, ref path)) in units.iter().enumerate() {
            let file = unit_path(&env.partial, u);
            let read = crate::error::read_json::<UnitResult>;
            if env.shard.is_some_and(|w| !w.owns(u)) || env.usable_shard(&file, read) {
                continue;
            }
            if teacher.is_none() {
                let dir = super::paths::teacher_dir(p);
                let t = CrossEncoder::load(&dir, p.teacher.max_length, env.device, env.kind)?;
                teacher = Some(t);
            }
            if split.as_ref().is_none_or(|(i, _)| *i != di) {
                split = Some((di, LoadedSplit::load(p, &p.datasets[di])?));
            }
            let (Some(teacher), Some((_, loaded))) = (&teacher, &split) else {
                continue; // both were just set
            };
            let result = self.unit(env, teacher, (label, path), &p.datasets[di], loaded)?;
            crate::data::atomic::write_json(&file, &result)?;
            env.committed(u, units.len());
        }
        let done = count_units(&env.partial);
        // Workers never assemble: others may still be writing. A run without --shard does.
        if env.shard.is_some() {
            return Ok(Outcome::Partial {
                done,
                total: units.len(),
            });
        }
        let mut metrics = serde_json::Map::new();
        let mut table = PerQueryTable::default();
        let mut outputs = vec![METRICS.to_string(), PER_QUERY.to_string()];
        let results = (0..units.len())
            .map(|u| crate::error::read_json::<UnitResult>(&unit_path(&env.partial, u)))
            .collect::<Result<Vec<_>>>()?;
        for (di, d) in p.datasets.iter().enumerate() {
            let per_student: Vec<(&str, &UnitResult)> = units
                .iter()
                .zip(&results)
                .filter(|((i, ..), _)| *i == di)
                .map(|((_, label, _), r)| (*label, r))
                .collect();
            let queries = per_student.first().map_or(0, |(_, r)| r.queries);
            let mut per_dataset = serde_json::Map::new();
            per_dataset.insert("queries".into(), queries.into());
            if d.watch {
                per_dataset.insert("role".into(), "watch".into());
            }
            if let Some(dev_queries) = per_student.first().and_then(|(_, r)| r.dev_queries) {
                let mut on_dev = serde_json::Map::new();
                on_dev.insert("queries".into(), dev_queries.into());
                for (label, r) in &per_student {
                    on_dev.insert((*label).into(), r.dev.clone().unwrap_or_default());
                }
                per_dataset.insert("dev".into(), serde_json::Value::Object(on_dev));
            }
            for (label, r) in &per_student {
                per_dataset.insert((*label).into(), r.eval.summary());
                outputs.extend(run_files(&d.name, label));
                table.push(&d.name, label, &r.eval);
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
        Ok(Outcome::Complete {
            outputs,
            rows: n as u64,
            summary: serde_json::Value::Object(metrics),
        })
    }
}

/// Eval's units of work, in order: (dataset index, student label, student folder) for
/// every dataset and every student of [`students`].
fn units(p: &Pipeline) -> Vec<(usize, &'static str, PathBuf)> {
    (0..p.datasets.len())
        .flat_map(|di| students(p).into_iter().map(move |(l, path)| (di, l, path)))
        .collect()
}

fn unit_path(partial: &Path, u: usize) -> PathBuf {
    partial.join(format!("unit-{u:05}.json"))
}

fn count_units(partial: &Path) -> usize {
    std::fs::read_dir(partial).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("unit-") && n.ends_with(".json")
            })
            .count()
    })
}

/// One unit's results: the student on the split (its TREC runs are in the stage folder)
/// and, with a dev slice, its headline measures there.
#[derive(serde::Serialize, serde::Deserialize)]
struct UnitResult {
    /// Judged queries of the split.
    queries: usize,
    /// Queries of the dev slice (none when it is off or empty).
    dev_queries: Option<usize>,
    dev: Option<serde_json::Value>,
    eval: SystemEval,
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
    /// One unit: the student `label` (at `path`) on a dataset's split, its headline
    /// measures on the dev slice (when there is one) and its evaluation (the base
    /// student's from the cache when it can).
    fn unit(
        &self,
        env: &mut StageEnv,
        teacher: &CrossEncoder,
        (label, path): (&str, &Path),
        d: &DatasetRef,
        loaded: &LoadedSplit,
    ) -> Result<UnitResult> {
        let p = env.pipeline;
        // The corpus embedded for the dev slice serves the evaluation split too (at 8.8M
        // passages, reading them back from the cache takes about 45 s).
        let mut corpus = None;
        let dev = match loaded.dev.is_empty() {
            true => None,
            false => {
                let max_length = (label == "base").then_some(p.student.max_length).flatten();
                let student = p.load_student(path, env.device, env.kind, max_length)?;
                let fp = fingerprint::directory(path)?;
                let (ds, dev) = (&loaded.ds, &loaded.dev);
                let embedded = super::shared::corpus_embeddings(env, &student, &fp, d, ds)?;
                let (m, _) =
                    super::shared::evaluate_slice(env, (&student, &embedded), None, ds, dev)?;
                corpus = Some(embedded);
                Some(super::shared::headline_measures(&m))
            }
        };
        let split = Split {
            d,
            ds: &loaded.ds,
            judged: &loaded.judged,
        };
        let eval = if label == "base" {
            self.base_cached(env, teacher, path, &split, corpus)?
        } else {
            self.system(env, teacher, (path, label), &split, corpus)?
        };
        Ok(UnitResult {
            queries: loaded.judged.len(),
            dev_queries: (!loaded.dev.is_empty()).then_some(loaded.dev.len()),
            dev,
            eval,
        })
    }

    /// One student on one dataset: its run (top-k, the query itself left out), the
    /// teacher's rerank of its top `rerank_k`, their measures, and per query the share
    /// of the teacher's top 10 found in the student's own top 10. Writes both TREC runs.
    /// `corpus`: the corpus as this student embedded it, when the unit has it already.
    fn system(
        &self,
        env: &mut StageEnv,
        teacher: &CrossEncoder,
        (path, label): (&Path, &str),
        split: &Split,
        corpus: Option<Tensor>,
    ) -> Result<SystemEval> {
        let Split { d, ds, judged } = *split;
        let p = env.pipeline;
        // The distilled student reads at the length it was trained and saved with.
        let max_length = match label {
            "base" => p.student.max_length,
            _ => None,
        };
        let mut clock = std::time::Instant::now();
        let part = |what: &str| format!("{label} student on {}'s {}: {what}", d.name, d.eval_split);
        let student = p.load_student(path, env.device, env.kind, max_length)?;
        let corpus = match corpus {
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
        let mut runs = evaluation::retrieve(&student, &corpus, ds, judged, depth)?;
        env.timed(&part("encoding the queries and searching"), &mut clock);
        let reranker = super::shared::teacher_reranker(p, teacher);
        let pairs = reranker.pairs(&runs.student);
        runs.rerank(reranker, ds, &mut |_| {})?;
        env.timed(&part(&format!("reranking {pairs} pairs")), &mut clock);
        runs.write(&env.dir, &d.name, label)?;
        Ok(runs.measure(judged))
    }

    /// The base student's evaluation, from `<output_root>/cache/eval` when the same
    /// student, teacher, dataset files and eval settings were evaluated before (the base
    /// student does not change from night to night; its numbers need computing once).
    fn base_cached(
        &self,
        env: &mut StageEnv,
        teacher: &CrossEncoder,
        path: &Path,
        split: &Split,
        corpus: Option<Tensor>,
    ) -> Result<SystemEval> {
        let d = split.d;
        let p = env.pipeline;
        let mut data = BTreeMap::new();
        super::shared::dataset_inputs(d, &[&d.eval_split], &mut data)?;
        let key = fingerprint::json(&json!({
            "student": fingerprint::directory(path)?,
            "teacher": fingerprint::directory(&super::paths::teacher_dir(p))?,
            "data": data,
            "split": d.eval_split,
            "strict": d.strict,
            "eval": p.eval,
            "corpus_chunk": p.mine.corpus_chunk,
            "student_max_seq_length": p.student.max_length,
            "teacher_max_length": p.teacher.max_length,
            "precision": super::shared::kind_name(env.kind),
            "device": format!("{:?}", env.device),
            "distill_version": env!("CARGO_PKG_VERSION"),
        }));
        let cache = p.cache_dir.join("eval").join(key);
        let result = cache.join("result.json");
        let files = run_files(&d.name, "base");
        let names = ["student.trec", "teacher.trec"];
        let entries = [result.clone(), cache.join(names[0]), cache.join(names[1])];
        let hit = result.exists()
            && entries
                .iter()
                .all(|f| super::shared::cache_entry_ok(env, f));
        if hit {
            let hit: SystemEval = crate::error::read_json(&result)?;
            for (file, name) in files.iter().zip(names) {
                copy_atomic(&cache.join(name), &env.dir.join(file))?;
            }
            let stage = env.name.to_string();
            env.emit(crate::pipeline::events::Event::Note {
                stage,
                message: format!(
                    "{}: base student's evaluation from {}",
                    d.name,
                    cache.display()
                ),
            });
            return Ok(hit);
        }
        let fresh = self.system(env, teacher, (path, "base"), split, corpus)?;
        std::fs::create_dir_all(&cache).map_err(|e| Error::io(&cache, e))?;
        for (file, name) in files.iter().zip(names) {
            copy_atomic(&env.dir.join(file), &cache.join(name))?;
            super::shared::record_cache_entry(&cache.join(name))?;
        }
        // Written last: a cache entry without result.json (and its record) is never read.
        crate::data::atomic::write_json(&result, &fresh)?;
        super::shared::record_cache_entry(&result)?;
        Ok(fresh)
    }
}
