//! A student's ranking of a corpus and a teacher's rerank of its top documents: what the
//! eval stage measures on the test splits and the teacher stage on the dev slice.
use crate::data::beir::Texts;
use crate::error::Result;
use crate::model::{BiEncoder, CrossEncoder};
use crate::ranking::metrics::{evaluate, trec_order, Judgements, Measures};
use crate::retrieval;
use std::collections::BTreeMap;
use tch::Tensor;

/// Per query id, its (document id, score) list.
pub type Runs = BTreeMap<String, Vec<(String, f32)>>;

/// Sizes and batches of a retrieval.
#[derive(Debug, Clone, Copy)]
pub struct Depth {
    /// Documents retrieved per query.
    pub top_k: usize,
    /// Corpus rows per scoring block.
    pub corpus_chunk: usize,
    /// Texts per student encoding batch.
    pub batch_size: usize,
}

/// The student's run: for each query (`ids` with their `texts`), its top `top_k`
/// documents of `corpus` (`embeddings`: the corpus's, in its order), the query itself left
/// out as BEIR does.
pub fn retrieve<S: AsRef<str> + Sync>(
    student: &BiEncoder,
    embeddings: &Tensor,
    corpus: &Texts,
    ids: &[&String],
    texts: &[S],
    depth: Depth,
) -> Result<Runs> {
    let q = student
        .encode(
            crate::model::Side::Query,
            texts,
            depth.batch_size,
            &mut |_| {},
        )?
        .to_device(embeddings.device());
    let ranking = retrieval::top_k(&q, embeddings, depth.top_k + 1, depth.corpus_chunk)?;
    Ok(ids
        .iter()
        .enumerate()
        .map(|(row, qid)| {
            let docs = ranking.indices[row]
                .iter()
                .zip(&ranking.scores[row])
                .map(|(&i, &s)| (corpus.ids[i as usize].clone(), s))
                .filter(|(doc, _)| doc != *qid)
                .take(depth.top_k)
                .collect();
            ((*qid).clone(), docs)
        })
        .collect())
}

/// A cross-encoder reranking each query's top `k` documents, `batch_size` pairs at a time.
#[derive(Clone, Copy)]
pub struct Reranker<'a> {
    pub model: &'a CrossEncoder,
    pub k: usize,
    pub batch_size: usize,
}

impl Reranker<'_> {
    /// How many pairs reranking `run` scores.
    pub fn pairs(&self, run: &Runs) -> usize {
        run.values().map(|docs| docs.len().min(self.k)).sum()
    }
}

/// The teacher's run: each query's top `k` documents of `run` (in TREC order) scored by
/// the reranker's model; every query of `ids` has an entry. `texts[i]` is the text of
/// `ids[i]`; `progress` is called with the number of pairs scored after each batch. The
/// documents' texts are read a chunk of pairs at a time, on the thread that tokenizes
/// ahead of the device; a document not in `corpus` reads as an empty text.
pub fn rerank<S: AsRef<str> + Sync>(
    reranker: Reranker,
    run: &Runs,
    (ids, texts): (&[&String], &[S]),
    corpus: &Texts,
    progress: &mut dyn FnMut(usize),
) -> Result<Runs> {
    // (query row, document row in the corpus) of each pair, and its owners.
    let mut rows: Vec<(usize, Option<usize>)> = Vec::new();
    let mut owners: Vec<(&String, String)> = Vec::new();
    for (q, qid) in ids.iter().enumerate() {
        let mut ordered = run.get(*qid).cloned().unwrap_or_default();
        trec_order(&mut ordered);
        for (doc, _) in ordered.into_iter().take(reranker.k) {
            rows.push((q, corpus.position(&doc)));
            owners.push((*qid, doc));
        }
    }
    let chunks = rows
        .chunks(crate::model::batching::chunk_rows())
        .map(|chunk| {
            let known: Vec<usize> = chunk.iter().filter_map(|&(_, d)| d).collect();
            let mut docs = corpus.gather(&known)?.into_iter();
            Ok(chunk
                .iter()
                .map(|&(q, d)| {
                    let doc = d.and_then(|_| docs.next()).unwrap_or_default();
                    (texts[q].as_ref(), doc)
                })
                .collect())
        });
    let scores = reranker
        .model
        .score_stream(chunks, reranker.batch_size, progress)?;
    let mut out = Runs::new();
    for qid in ids {
        out.insert((*qid).clone(), Vec::new());
    }
    for ((qid, doc), s) in owners.into_iter().zip(scores) {
        out.entry(qid.clone()).or_default().push((doc, s));
    }
    Ok(out)
}

/// Per query of `run`, its measures against `judged`.
pub fn per_query(run: &Runs, judged: &BTreeMap<String, Judgements>) -> Vec<(String, Measures)> {
    use rayon::prelude::*;
    let queries: Vec<(&String, &Vec<(String, f32)>)> = run.iter().collect();
    let none = Judgements::default();
    queries
        .par_iter()
        .map(|&(q, r)| (q.clone(), evaluate(r, judged.get(q).unwrap_or(&none))))
        .collect()
}

/// The mean measures of `run` over its queries.
pub fn mean(run: &Runs, judged: &BTreeMap<String, Judgements>) -> Measures {
    Measures::mean(
        &per_query(run, judged)
            .into_iter()
            .map(|(_, m)| m)
            .collect::<Vec<_>>(),
    )
}
