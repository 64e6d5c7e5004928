//! `distill rerank`: a TREC run file rescored by a cross-encoder. Each query's top K
//! documents of the input run (in TREC order: score descending, then document id
//! descending) are scored with the query's and the documents' texts from a BEIR folder,
//! and written as a TREC run in the cross-encoder's order, atomically.
use crate::data::beir::{self, Dataset};
use crate::device::Runtime;
use crate::error::{Error, Result};
use crate::model::CrossEncoder;
use crate::progress::{Progress, Verbosity};
use crate::ranking::rerank::{self, Reranker};
use crate::ranking::trec;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct RerankSettings {
    /// Cross-encoder directory.
    pub model: PathBuf,
    /// Input TREC run.
    pub run: PathBuf,
    /// BEIR folder with the run's queries and documents.
    pub data: PathBuf,
    /// Output TREC run.
    pub output: PathBuf,
    /// Documents rescored per query.
    pub top_k: usize,
    /// The output lines' tag (last column).
    pub tag: String,
    pub max_length: Option<usize>,
    pub runtime: Runtime,
    /// Skip (and count) duplicate ids and empty texts of the BEIR files instead of
    /// stopping on them.
    pub lenient: bool,
    pub verbosity: Verbosity,
}

#[derive(Debug, Clone)]
pub struct RerankSummary {
    pub queries: usize,
    pub pairs: usize,
    pub seconds: f64,
}

impl std::fmt::Display for RerankSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reranked {} pairs of {} queries in {:.2} s",
            self.pairs, self.queries, self.seconds
        )
    }
}

pub fn run(s: &RerankSettings) -> Result<RerankSummary> {
    if s.top_k == 0 {
        return Err(Error::Setting {
            key: "top-k".into(),
            message: "must be at least 1".into(),
        });
    }
    if s.tag.is_empty() || s.tag.contains(char::is_whitespace) {
        return Err(Error::Setting {
            key: "tag".into(),
            message: format!("`{}` is not one non-empty word", s.tag),
        });
    }
    let (device, kind) = s.runtime.resolve()?;
    let ds = Dataset::load(&s.data, &[], !s.lenient)?;
    let file = trec::read_run(&s.run, |q, d| {
        if ds.queries.position(q).is_none() {
            let at = beir::queries_path(&s.data);
            return Err(format!("query `{q}` is not in {}", at.display()));
        }
        if ds.corpus.position(d).is_none() {
            let at = beir::corpus_path(&s.data);
            return Err(format!("document `{d}` is not in {}", at.display()));
        }
        Ok(())
    })?;
    if file.is_empty() {
        return Err(Error::config(&s.run, "the run has no lines"));
    }
    let run = trec::top_k(&file, s.top_k);
    let model = CrossEncoder::load(&s.model, s.max_length, device, kind)?;
    let ids: Vec<&String> = run.keys().collect();
    // Every query id of the run was found in the queries file as it was read.
    let texts = ids
        .iter()
        .map(|q| Ok(ds.queries.text(q)?.unwrap_or_default()))
        .collect::<Result<Vec<_>>>()?;
    let reranker = Reranker {
        model: &model,
        k: s.top_k,
        batch_size: s.runtime.batch_size,
    };
    let pairs = reranker.pairs(&run);
    let started = Instant::now();
    let mut progress = Progress::new("rerank", pairs as u64, s.verbosity);
    let reranked = rerank::rerank(reranker, &run, (&ids, &texts), &ds.corpus, &mut |n| {
        progress.inc(n as u64)
    })?;
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    trec::write_run(&s.output, &reranked, &s.tag)?;
    Ok(RerankSummary {
        queries: ids.len(),
        pairs,
        seconds,
    })
}
