//! The corpus encoded in parts by several `--shard` workers: a part is one chunk of
//! [`crate::model::batching::chunk_rows`] consecutive documents, the unit one process
//! encodes at a time ([`crate::model::BiEncoder::encode_stream`]), committed as a closed
//! Parquet file in the stage's partial folder. A worker encodes its own parts
//! (`j % N == I`), then any part still missing (from the last: those nobody started yet),
//! and hands the whole to the caller part by part, in order, from the files. Every row
//! goes through the very batch it goes through in one process, so the embeddings, and the
//! cache entry written from them, are the same bytes.
use super::StageEnv;
use crate::data::beir::Texts;
use crate::data::embeddings::{read_embeddings, write_embeddings};
use crate::error::{Error, Result, TorchContext};
use crate::model::{BiEncoder, Side};
use crate::pipeline::events::Event;
use crate::stages::ShardSpec;
use tch::Tensor;

/// Which parts `worker` encodes, in order: its own, then the others from the last.
fn order(total: usize, worker: ShardSpec) -> Vec<usize> {
    let own = (0..total).filter(|&j| worker.owns(j));
    own.chain((0..total).rev().filter(|&j| !worker.owns(j)))
        .collect()
}

/// The embeddings of `corpus` by `student`, encoded in parts shared with the other
/// workers (`key` names the corpus: the cache key), handed to `put` in row order as
/// (first row, `[rows, dim]` fp32 CPU tensor).
pub fn encode(
    env: &mut StageEnv,
    student: &BiEncoder,
    worker: ShardSpec,
    key: &str,
    (label, corpus): (&str, &Texts),
    put: &mut dyn FnMut(usize, Tensor) -> Result<()>,
) -> Result<()> {
    let batch_size = env.pipeline.student.batch_size;
    let rows = crate::model::batching::chunk_rows();
    let total = corpus.len().div_ceil(rows);
    let range = |j: usize| j * rows..((j + 1) * rows).min(corpus.len());
    let prefix = format!("emb-{}-c{rows}", &key[..16]);
    let paths: Vec<_> = (0..total).map(|j| env.shard_path(&prefix, j)).collect();
    let dim = student.dim() as usize;
    let stage = env.name.to_string();
    env.emit(Event::WorkStarted {
        stage: stage.clone(),
        label: format!("encode {label}"),
        total: corpus.len() as u64,
    });
    let missing: Vec<usize> = order(total, worker)
        .into_iter()
        .filter(|&j| !env.usable_shard(&paths[j], read_embeddings))
        .collect();
    {
        let events = &mut *env.events;
        let chunks = missing.iter().map(|&j| Ok((corpus.range(range(j))?, j)));
        student.encode_stream(
            student.prompt(Side::Document),
            chunks,
            batch_size,
            &mut |n| {
                events.emit(Event::WorkProgress {
                    stage: stage.clone(),
                    n: n as u64,
                })
            },
            &mut |j, emb: Tensor| {
                let values =
                    Vec::<f32>::try_from(emb.flatten(0, -1)).ctx(|| "reading embeddings".into())?;
                write_embeddings(&paths[j], &corpus.ids[range(j)], &values, dim, &[])
            },
        )?;
    }
    env.emit(Event::WorkFinished {
        stage: stage.clone(),
    });
    env.emit(Event::Note {
        stage,
        message: format!(
            "{label}: {} of {total} corpus parts encoded here",
            missing.len()
        ),
    });
    for (j, path) in paths.iter().enumerate() {
        let (ids, values, got_dim) = read_embeddings(path)?;
        let same = got_dim == dim && ids.iter().eq(corpus.ids[range(j)].iter());
        if !same {
            return Err(Error::output(
                path,
                "the part does not hold the rows it should",
            ));
        }
        let part = Tensor::f_from_slice(&values)
            .and_then(|t| t.f_view([ids.len() as i64, dim as i64]))
            .ctx(|| format!("reading {}", path.display()))?;
        put(range(j).start, part)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_does_its_own_parts_first_then_the_rest_from_the_last() {
        let w = ShardSpec { index: 1, count: 2 };
        assert_eq!(order(5, w), vec![1, 3, 4, 2, 0]);
    }
}
