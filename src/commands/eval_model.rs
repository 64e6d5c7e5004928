//! `distill eval`: a sentence-transformers model on the evaluation split of BEIR datasets,
//! without a pipeline, through the eval stage's own code (`ranking::evaluation`): the
//! student's run over every judged query, optionally a cross-encoder's rerank of its top
//! documents, trec_eval's measures; `metrics.json`, `per_query.parquet` and TREC runs.
use crate::data::beir::{self, Dataset};
use crate::device::Runtime;
use crate::error::{Error, Result};
use crate::model::{BiEncoder, CrossEncoder};
use crate::pipeline::config::defaults::MINE_CORPUS_CHUNK;
use crate::progress::{Progress, Verbosity};
use crate::ranking::evaluation::{self, PerQueryTable, SystemEval};
use crate::ranking::metrics::Measures;
use crate::ranking::rerank::{Depth, Reranker};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The output files, relative to `--output`.
pub const METRICS: &str = "metrics.json";
pub const PER_QUERY: &str = "per_query.parquet";
/// The label of the evaluated model in run file names and tags (as the eval stage's
/// `base`, `distilled`): `runs/<dataset>.student.trec`, `runs/<dataset>.student+teacher.trec`.
pub const LABEL: &str = "student";

#[derive(Debug, Clone)]
pub struct EvalSettings {
    pub model: PathBuf,
    pub data: Vec<PathBuf>,
    pub split: String,
    pub output: PathBuf,
    /// A cross-encoder reranking the student's top `rerank_k` of each query.
    pub rerank: Option<PathBuf>,
    pub rerank_k: usize,
    pub rerank_max_length: Option<usize>,
    pub runtime: Runtime,
    pub max_seq_length: Option<usize>,
    pub top_k: usize,
    /// Skip (and count) duplicate ids, empty texts and qrels naming unknown ids instead of
    /// stopping on them.
    pub lenient: bool,
    pub verbosity: Verbosity,
}

/// One dataset's mean measures.
#[derive(Debug, Clone)]
pub struct DatasetResult {
    pub name: String,
    pub queries: usize,
    pub student: Measures,
    pub reranked: Option<Measures>,
}

#[derive(Debug, Clone)]
pub struct EvalOutcome {
    pub datasets: Vec<DatasetResult>,
    /// What lenient loading left out, one line per dataset and kind.
    pub warnings: Vec<String>,
}

/// A dataset as `--data` names it: its name (the folder's), folder and loaded split.
struct Input {
    name: String,
    dir: PathBuf,
    ds: Dataset,
}

fn setting(key: &str, message: &str) -> Error {
    Error::Setting {
        key: key.into(),
        message: message.into(),
    }
}

/// The dataset name of a BEIR folder: its last component.
fn dataset_name(dir: &Path) -> Result<String> {
    let named = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    match named {
        Some(n) => Ok(n),
        None => std::fs::canonicalize(dir)
            .map_err(|e| Error::io(dir, e))?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::config(dir, "a BEIR folder needs a name")),
    }
}

/// Load every dataset's corpus, queries and qrels of `split`, checking what can be
/// checked before a model is loaded: the split's qrels file exists, names are distinct,
/// and at least one query is judged.
fn load_inputs(s: &EvalSettings) -> Result<(Vec<Input>, Vec<String>)> {
    let mut inputs: Vec<Input> = Vec::new();
    let mut warnings = Vec::new();
    for dir in &s.data {
        let name = dataset_name(dir)?;
        if let Some(other) = inputs.iter().find(|i| i.name == name) {
            return Err(Error::config(
                dir,
                format!(
                    "dataset name `{name}` is also that of {} (outputs are named by folder)",
                    other.dir.display()
                ),
            ));
        }
        let qrels = beir::qrels_path(dir, &s.split);
        if !qrels.exists() {
            return Err(Error::config(
                &qrels,
                format!(
                    "no qrels for split `{}` (splits here: {})",
                    s.split,
                    splits_in(dir)
                ),
            ));
        }
        let ds = Dataset::load(dir, &[&s.split], !s.lenient)?;
        if ds.qrels[&s.split].is_empty() {
            return Err(Error::config(
                &qrels,
                "judges no query: no line names a query of queries.jsonl and a document of \
                 corpus.jsonl",
            ));
        }
        warnings.extend(
            ds.warnings
                .summary()
                .into_iter()
                .map(|w| format!("{name}: {w}")),
        );
        inputs.push(Input {
            name,
            dir: dir.clone(),
            ds,
        });
    }
    Ok((inputs, warnings))
}

/// The splits of a BEIR folder (`qrels/*.tsv`), for an error message.
fn splits_in(dir: &Path) -> String {
    let mut found: Vec<String> = std::fs::read_dir(dir.join("qrels"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".tsv").map(str::to_string)
        })
        .collect();
    found.sort();
    match found.is_empty() {
        true => "none".into(),
        false => found.join(", "),
    }
}

/// One dataset: its corpus encoded, every judged query retrieved and (with a reranker)
/// reranked, both runs written into the output folder; their measures.
fn evaluate(
    s: &EvalSettings,
    (student, reranker): (&BiEncoder, Option<Reranker>),
    depth: Depth,
    Input { name, ds, .. }: &Input,
) -> Result<SystemEval> {
    let judged = &ds.qrels[&s.split];
    let mut progress = Progress::new(
        &format!("encode {name}"),
        ds.corpus.len() as u64,
        s.verbosity,
    );
    let corpus = student.encode_to_device(
        crate::model::Side::Document,
        &ds.corpus,
        s.runtime.batch_size,
        &mut |n| progress.inc(n as u64),
    )?;
    progress.finish();
    let mut runs = evaluation::retrieve(student, &corpus, ds, judged, depth)?;
    if let Some(r) = reranker {
        let total = r.pairs(&runs.student) as u64;
        let mut progress = Progress::new(&format!("rerank {name}"), total, s.verbosity);
        runs.rerank(r, ds, &mut |n| progress.inc(n as u64))?;
        progress.finish();
    }
    runs.write(&s.output, name, LABEL)?;
    Ok(runs.measure(judged))
}

pub fn run(s: &EvalSettings) -> Result<EvalOutcome> {
    for (key, value) in [("top-k", s.top_k), ("rerank-k", s.rerank_k)] {
        if value == 0 {
            return Err(setting(key, "must be at least 1"));
        }
    }
    let (device, kind) = s.runtime.resolve()?;
    let (inputs, warnings) = load_inputs(s)?;
    let student = BiEncoder::load(&s.model, device, kind, s.max_seq_length)?;
    let cross = match &s.rerank {
        Some(dir) => Some(CrossEncoder::load(dir, s.rerank_max_length, device, kind)?),
        None => None,
    };
    let reranker = cross.as_ref().map(|model| Reranker {
        model,
        k: s.rerank_k,
        batch_size: s.runtime.batch_size,
    });
    let depth = Depth {
        top_k: s.top_k,
        corpus_chunk: MINE_CORPUS_CHUNK,
        batch_size: s.runtime.batch_size,
    };
    let model_label = s.model.display().to_string();
    let mut per_dataset = serde_json::Map::new();
    let mut table = PerQueryTable::default();
    let mut results = Vec::new();
    for input in &inputs {
        let Input { name, dir, ds } = input;
        let judged = &ds.qrels[&s.split];
        let e = evaluate(s, (&student, reranker), depth, input)?;
        let mut entry = e.summary();
        entry["path"] = json!(dir.display().to_string());
        entry["queries"] = json!(judged.len());
        per_dataset.insert(name.clone(), entry);
        table.push(name, &model_label, &e);
        results.push(DatasetResult {
            name: name.clone(),
            queries: judged.len(),
            student: e.student.mean(),
            reranked: e.teacher.as_ref().map(|t| t.mean()),
        });
    }
    let metrics = json!({
        "model": model_label,
        "split": s.split,
        "top_k": s.top_k,
        "max_seq_length": student.spec.max_seq_length,
        "device": format!("{device:?}"),
        "precision": crate::stages::shared::kind_name(kind),
        "rerank": s.rerank.as_ref().map(|dir| json!({
            "model": dir.display().to_string(),
            "k": s.rerank_k,
        })),
        "datasets": per_dataset,
    });
    crate::data::atomic::write_json(&s.output.join(METRICS), &metrics)?;
    table.write(&s.output.join(PER_QUERY))?;
    Ok(EvalOutcome {
        datasets: results,
        warnings,
    })
}

/// The headline measures per dataset and system, as a plain-text table.
pub fn table(outcome: &EvalOutcome) -> String {
    const SHOWN: [(&str, usize); 5] = [
        ("nDCG@10", 0),
        ("MRR@10", 1),
        ("P@10", 2),
        ("R@100", 4),
        ("MAP@100", 6),
    ];
    let mut rows: Vec<(String, &str, usize, Measures)> = Vec::new();
    for d in &outcome.datasets {
        rows.push((d.name.clone(), LABEL, d.queries, d.student));
        if let Some(r) = d.reranked {
            rows.push((d.name.clone(), "student+teacher", d.queries, r));
        }
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(7);
    let mut out = format!("{:<width$}  {:<15}  {:>7}", "dataset", "system", "queries");
    for (name, _) in SHOWN {
        out.push_str(&format!("  {name:>7}"));
    }
    out.push('\n');
    for (name, system, queries, m) in rows {
        out.push_str(&format!("{name:<width$}  {system:<15}  {queries:>7}"));
        let values = m.values();
        for (_, i) in SHOWN {
            out.push_str(&format!("  {:>7.4}", values[i]));
        }
        out.push('\n');
    }
    out
}
