//! The corpus encoded in parts by several `--shard` workers: the student's length-sorted
//! batches over the whole corpus (what one process encodes) are cut into parts of
//! consecutive batches, each committed as a closed Parquet file in the stage's partial
//! folder. A worker encodes its own parts (`j % N == I`), then any part still missing
//! (from the last: those nobody started yet), and assembles the whole from the files.
//! Every row goes through the very batch it goes through in one process, so the
//! embeddings, and the cache entry written from them, are the same bytes.
use super::StageEnv;
use crate::data::beir::Texts;
use crate::data::embeddings::{read_embeddings, write_embeddings};
use crate::error::{Error, Result, TorchContext};
use crate::model::{BiEncoder, Side};
use crate::pipeline::events::Event;
use crate::stages::ShardSpec;
use tch::Tensor;

/// Rows per part (at least; a part ends with a whole batch). `DISTILL_CORPUS_PART_ROWS`
/// sets it (the tests use tiny parts); it is part of the files' names, so parts of
/// another size are never mixed in.
const PART_ROWS: usize = 4096;

fn part_rows() -> usize {
    std::env::var("DISTILL_CORPUS_PART_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(PART_ROWS)
}

/// Consecutive runs of `batches` holding at least `rows` rows each (the last fewer).
fn parts(batches: &[Vec<usize>], rows: usize) -> Vec<&[Vec<usize>]> {
    let mut out = Vec::new();
    let (mut start, mut n) = (0, 0);
    for (i, b) in batches.iter().enumerate() {
        n += b.len();
        if n >= rows {
            out.push(&batches[start..=i]);
            (start, n) = (i + 1, 0);
        }
    }
    if start < batches.len() {
        out.push(&batches[start..]);
    }
    out
}

/// The rows a part covers, ascending (the order of its file's rows).
fn covered(part: &[Vec<usize>]) -> Vec<usize> {
    let mut rows: Vec<usize> = part.iter().flatten().copied().collect();
    rows.sort_unstable();
    rows
}

/// Which parts `worker` encodes, in order: its own, then the others from the last.
fn order(total: usize, worker: ShardSpec) -> Vec<usize> {
    let own = (0..total).filter(|&j| worker.owns(j));
    own.chain((0..total).rev().filter(|&j| !worker.owns(j)))
        .collect()
}

/// The embeddings of `corpus` by `student` (`[n, dim]`, fp32 on the CPU), encoded in
/// parts shared with the other workers; `key` names the corpus (the cache key).
pub fn encode(
    env: &mut StageEnv,
    student: &BiEncoder,
    worker: ShardSpec,
    key: &str,
    (label, corpus): (&str, &Texts),
) -> Result<Tensor> {
    let batch_size = env.pipeline.student.batch_size;
    let encoded = student.tokenize(Side::Document, &corpus.texts)?;
    let lengths: Vec<usize> = encoded.iter().map(|e| e.len()).collect();
    let batches = crate::model::batching::length_sorted_batches(&lengths, batch_size, None);
    let rows = part_rows();
    let parts = parts(&batches, rows);
    let prefix = format!("emb-{}-r{rows}", &key[..16]);
    let paths: Vec<_> = (0..parts.len())
        .map(|j| env.shard_path(&prefix, j))
        .collect();
    let dim = student.dim() as usize;
    let stage = env.name.to_string();
    env.emit(Event::WorkStarted {
        stage: stage.clone(),
        label: format!("encode {label}"),
        total: corpus.len() as u64,
    });
    let mut encoded_here = 0;
    for j in order(parts.len(), worker) {
        if env.usable_shard(&paths[j], read_embeddings) {
            continue;
        }
        encoded_here += 1;
        let events = &mut *env.events;
        let emb = student.encode_batches(&encoded, parts[j], &mut |n| {
            events.emit(Event::WorkProgress {
                stage: stage.clone(),
                n: n as u64,
            })
        })?;
        let values =
            Vec::<f32>::try_from(emb.flatten(0, -1)).ctx(|| "reading embeddings".into())?;
        let ids: Vec<String> = covered(parts[j])
            .into_iter()
            .map(|r| corpus.ids[r].clone())
            .collect();
        write_embeddings(&paths[j], &ids, &values, dim, &[])?;
    }
    env.emit(Event::WorkFinished {
        stage: stage.clone(),
    });
    env.emit(Event::Note {
        stage,
        message: format!(
            "{label}: {encoded_here} of {} corpus parts encoded here",
            parts.len()
        ),
    });
    let mut values = vec![0f32; corpus.len() * dim];
    for (part, path) in parts.iter().zip(&paths) {
        let (ids, part_values, got_dim) = read_embeddings(path)?;
        let rows = covered(part);
        let same = got_dim == dim && ids.iter().eq(rows.iter().map(|&r| &corpus.ids[r]));
        if !same {
            return Err(Error::output(
                path,
                "the part does not hold the rows it should",
            ));
        }
        for (k, &r) in rows.iter().enumerate() {
            values[r * dim..(r + 1) * dim].copy_from_slice(&part_values[k * dim..(k + 1) * dim]);
        }
    }
    Tensor::f_from_slice(&values)
        .and_then(|t| t.f_view([corpus.len() as i64, dim as i64]))
        .ctx(|| format!("assembling the embeddings of {label}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_batches_in_order_with_at_least_the_rows_asked() {
        let batches: Vec<Vec<usize>> = vec![vec![3, 1], vec![0, 4], vec![2]];
        let p = parts(&batches, 3);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0], &batches[..2]);
        assert_eq!(p[1], &batches[2..]);
        assert_eq!(covered(p[0]), vec![0, 1, 3, 4]);
        assert_eq!(parts(&batches, 100).len(), 1);
        assert!(parts(&[], 3).is_empty());
    }

    #[test]
    fn a_worker_does_its_own_parts_first_then_the_rest_from_the_last() {
        let w = ShardSpec { index: 1, count: 2 };
        assert_eq!(order(5, w), vec![1, 3, 4, 2, 0]);
    }
}
