//! A student evaluated on one split of a BEIR dataset, alone and reranked by a
//! cross-encoder: what the eval stage and `distill eval` share. The student's run over
//! every judged query (the query itself left out, as BEIR does), the reranker's run over
//! its top documents, their per-query measures, the share of the reranker's top 10 found
//! in the student's own top 10, the TREC run files and the per-query table.
use crate::data::beir::{self, Dataset, Qrels};
use crate::data::table::write_columns;
use crate::error::{Error, Result};
use crate::model::BiEncoder;
use crate::ranking::metrics::{trec_order, Measures};
use crate::ranking::rerank::{self, Depth, Reranker, Runs};
use crate::ranking::trec::write_run;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// The judged queries of a split and their texts, in id order (a judged query missing
/// from the queries file is an error naming the file and the query).
pub fn judged_texts<'a>(
    ds: &'a Dataset,
    judged: &'a Qrels,
) -> Result<(Vec<&'a String>, Vec<Cow<'a, str>>)> {
    let queries: Vec<&String> = judged.keys().collect();
    let texts = queries
        .iter()
        .map(|q| {
            ds.queries.text(q)?.ok_or_else(|| {
                Error::config(
                    beir::queries_path(&ds.dir),
                    format!("query `{q}` is judged but missing"),
                )
            })
        })
        .collect::<Result<_>>()?;
    Ok((queries, texts))
}

/// A student's run over a split's judged queries and, once reranked, the reranker's run.
pub struct SplitRuns<'a> {
    queries: Vec<&'a String>,
    texts: Vec<Cow<'a, str>>,
    pub student: Runs,
    pub reranked: Option<Runs>,
}

/// The student's run: each judged query of `judged` (with its text from `ds`) against
/// `corpus`, the embeddings of `ds.corpus` in its order, top `depth.top_k`.
pub fn retrieve<'a>(
    student: &BiEncoder,
    corpus: &Tensor,
    ds: &'a Dataset,
    judged: &'a Qrels,
    depth: Depth,
) -> Result<SplitRuns<'a>> {
    let (queries, texts) = judged_texts(ds, judged)?;
    let student = rerank::retrieve(student, corpus, &ds.corpus, &queries, &texts, depth)?;
    Ok(SplitRuns {
        queries,
        texts,
        student,
        reranked: None,
    })
}

impl SplitRuns<'_> {
    /// Have `reranker` rescore each query's top documents of the student's run (`ds`: the
    /// dataset retrieved from); `progress` is called with the pairs scored per batch.
    pub fn rerank(
        &mut self,
        reranker: Reranker,
        ds: &Dataset,
        progress: &mut dyn FnMut(usize),
    ) -> Result<()> {
        let run = rerank::rerank(
            reranker,
            &self.student,
            (&self.queries, &self.texts),
            &ds.corpus,
            progress,
        )?;
        self.reranked = Some(run);
        Ok(())
    }

    /// Per query its measures against `judged`, for the student and the reranked run, and
    /// the share of the reranked top 10 found in the student's top 10.
    pub fn measure(&self, judged: &Qrels) -> SystemEval {
        let recall = match &self.reranked {
            Some(r) => top10_recall(&self.queries, &self.student, r),
            None => BTreeMap::new(),
        };
        SystemEval {
            student: SystemRun::of(&self.student, judged),
            teacher: self.reranked.as_ref().map(|r| SystemRun::of(r, judged)),
            recall,
        }
    }

    /// Write the student's run and the reranked one (when there is one) into `dir` as
    /// [`run_files`] names them, tagged `distill-<label>` and `distill-<label>+teacher`;
    /// returns the files written (relative to `dir`).
    pub fn write(&self, dir: &Path, dataset: &str, label: &str) -> Result<Vec<String>> {
        let files = run_files(dataset, label);
        let mut written = Vec::new();
        for (file, run, tag) in [
            (&files[0], Some(&self.student), label.to_string()),
            (
                &files[1],
                self.reranked.as_ref(),
                format!("{label}+teacher"),
            ),
        ] {
            if let Some(run) = run {
                write_run(&dir.join(file), run, &format!("distill-{tag}"))?;
                written.push(file.clone());
            }
        }
        Ok(written)
    }
}

/// The TREC run files of the student `label` on `dataset`, relative to the output folder:
/// its own run and the reranked one.
pub fn run_files(dataset: &str, label: &str) -> [String; 2] {
    [
        format!("runs/{dataset}.{label}.trec"),
        format!("runs/{dataset}.{label}+teacher.trec"),
    ]
}

/// Each query's first `n` documents of `run` in TREC order, with their scores.
pub fn top_of(run: &Runs, n: usize) -> Runs {
    run.iter()
        .map(|(q, docs)| {
            let mut docs = docs.clone();
            trec_order(&mut docs);
            docs.truncate(n);
            (q.clone(), docs)
        })
        .collect()
}

/// Per query of `queries`, the documents among the first `k` (TREC order) of any of
/// `runs` for it, each once, in id order (scored 0: what a reranker scores once for
/// several students).
pub fn union(queries: &[&String], runs: &[&Runs], k: usize) -> Runs {
    queries
        .iter()
        .map(|q| {
            let mut docs = std::collections::BTreeSet::new();
            for run in runs {
                let mut ranked = run.get(*q).cloned().unwrap_or_default();
                trec_order(&mut ranked);
                docs.extend(ranked.into_iter().take(k).map(|(d, _)| d));
            }
            let docs = docs.into_iter().map(|d| (d, 0.0)).collect();
            ((*q).clone(), docs)
        })
        .collect()
}

/// The reranked run of one student out of a reranker's scores of a union: per query of
/// `queries`, the first `k` of its `candidates` (TREC order) with their scores in
/// `scores`. A candidate without a score is an error naming `source`.
pub fn reranked_from(
    queries: &[&String],
    candidates: &Runs,
    k: usize,
    scores: &Runs,
    source: &Path,
) -> Result<Runs> {
    let mut out = Runs::new();
    for q in queries {
        let scored: std::collections::HashMap<&str, f32> = scores
            .get(*q)
            .map(|docs| docs.iter().map(|(d, s)| (d.as_str(), *s)).collect())
            .unwrap_or_default();
        let mut ordered = candidates.get(*q).cloned().unwrap_or_default();
        trec_order(&mut ordered);
        let docs = ordered
            .into_iter()
            .take(k)
            .map(|(d, _)| match scored.get(d.as_str()) {
                Some(&s) => Ok((d, s)),
                None => Err(Error::Output {
                    path: source.to_path_buf(),
                    message: format!("no reranker score for query `{q}` and document `{d}`"),
                }),
            })
            .collect::<Result<Vec<_>>>()?;
        out.insert((*q).clone(), docs);
    }
    Ok(out)
}

/// Per query, the share of `reranked`'s top 10 found in `student`'s top 10 (0 for a
/// query the reranker returned nothing for).
pub fn top10_recall(queries: &[&String], student: &Runs, reranked: &Runs) -> BTreeMap<String, f64> {
    let top10 = |run: &Runs, qid: &String| {
        let mut r = run.get(qid).cloned().unwrap_or_default();
        trec_order(&mut r);
        r.into_iter().take(10).map(|(d, _)| d).collect::<Vec<_>>()
    };
    queries
        .iter()
        .map(|qid| {
            let (t, s) = (top10(reranked, qid), top10(student, qid));
            let found = t.iter().filter(|d| s.contains(d)).count();
            let share = if t.is_empty() {
                0.0
            } else {
                found as f64 / t.len() as f64
            };
            ((*qid).clone(), share)
        })
        .collect()
}

/// One system's results on one split: per judged query, its measures.
#[derive(Serialize, Deserialize, Default)]
pub struct SystemRun {
    pub per_query: Vec<(String, Measures)>,
}

impl SystemRun {
    pub fn of(run: &Runs, judged: &Qrels) -> Self {
        SystemRun {
            per_query: rerank::per_query(run, judged),
        }
    }

    /// The measures averaged over the queries.
    pub fn mean(&self) -> Measures {
        Measures::mean(&self.per_query.iter().map(|(_, m)| *m).collect::<Vec<_>>())
    }
}

/// One student evaluated on one split: alone, reranked (the teacher), and per query the
/// share of the reranker's top 10 in the student's own top 10 (empty without a reranker).
#[derive(Serialize, Deserialize)]
pub struct SystemEval {
    pub student: SystemRun,
    pub teacher: Option<SystemRun>,
    #[serde(default)]
    pub recall: BTreeMap<String, f64>,
}

/// The measures as a JSON object, by [`Measures::NAMES`].
pub fn measures_json(m: &Measures) -> serde_json::Value {
    Measures::NAMES
        .iter()
        .zip(m.values())
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

impl SystemEval {
    /// The mean measures: `student`, and with a reranker `student+teacher`, `gap`
    /// (reranked minus student) and `student_recall_of_teacher_top10`.
    pub fn summary(&self) -> serde_json::Value {
        let sm = self.student.mean();
        let mut out = json!({ "student": measures_json(&sm) });
        if let Some(t) = &self.teacher {
            let tm = t.mean();
            let gap: serde_json::Map<_, _> = Measures::NAMES
                .iter()
                .zip(sm.values().iter().zip(tm.values()))
                .map(|(n, (a, b))| (n.to_string(), json!(b - a)))
                .collect();
            let recall = self.recall.values().sum::<f64>() / self.recall.len().max(1) as f64;
            out["student+teacher"] = measures_json(&tm);
            out["gap"] = gap.into();
            out["student_recall_of_teacher_top10"] = json!(recall);
        }
        out
    }
}

/// The per-query table: one row per (dataset, model, judged query), with the student's
/// measures (`student <name>`) and, for reranked systems, the reranker's
/// (`teacher <name>`) and `student_recall_of_teacher_top10`; float columns in name order.
#[derive(Default)]
pub struct PerQueryTable {
    dataset: Vec<String>,
    model: Vec<String>,
    query: Vec<String>,
    floats: BTreeMap<String, Vec<f64>>,
}

impl PerQueryTable {
    pub fn push(&mut self, dataset: &str, model: &str, e: &SystemEval) {
        for (i, (q, m)) in e.student.per_query.iter().enumerate() {
            self.dataset.push(dataset.to_string());
            self.model.push(model.to_string());
            self.query.push(q.clone());
            self.add("student", m);
            if let Some((_, t)) = e.teacher.as_ref().and_then(|t| t.per_query.get(i)) {
                self.add("teacher", t);
                let recall = e.recall.get(q).copied().unwrap_or(0.0);
                self.floats
                    .entry("student_recall_of_teacher_top10".into())
                    .or_default()
                    .push(recall);
            }
        }
    }

    fn add(&mut self, system: &str, m: &Measures) {
        for (n, v) in Measures::NAMES.iter().zip(m.values()) {
            self.floats
                .entry(format!("{system} {n}"))
                .or_default()
                .push(v);
        }
    }

    pub fn len(&self) -> usize {
        self.query.len()
    }

    pub fn is_empty(&self) -> bool {
        self.query.is_empty()
    }

    /// Write the table to `path` as Parquet, atomically (columns `dataset`, `model`,
    /// `query_id`, then the measures).
    pub fn write(self, path: &Path) -> Result<()> {
        let floats: Vec<(String, Vec<f64>)> = self.floats.into_iter().collect();
        write_columns(
            path,
            &[
                ("dataset", self.dataset),
                ("model", self.model),
                ("query_id", self.query),
            ],
            &floats,
        )
    }
}

#[cfg(test)]
#[path = "evaluation_tests.rs"]
mod tests;
