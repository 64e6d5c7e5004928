//! Exact inner-product search in chunks: memory is bounded by
//! `queries x corpus_chunk` scores, not by `queries x corpus`.
use crate::error::{Result, TorchContext};
use tch::{Kind, Tensor};

/// Top-k documents of each query, best first (ties: lower document index first).
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    pub indices: Vec<Vec<i64>>,
    pub scores: Vec<Vec<f32>>,
}

/// Columns per block in [`block_top_k`].
const BLOCK: i64 = 128;

/// Top-`k` of each row of `scores` `[rows, n]` (values, column indices; unsorted), exact,
/// without a top-k over the whole row: the maximum of each block of `block` columns
/// is taken, the `k` blocks with the largest maxima are kept (every top-`k` element lies
/// in one of them: a block outside them has `k` blocks above its maximum, so `k`
/// larger elements), and the top-`k` is taken over their `k x block` columns (plus the
/// columns after the last whole block). Rows narrower than `4 k block` go straight to
/// top-k.
fn block_top_k(scores: &Tensor, k: i64, block: i64) -> Result<(Tensor, Tensor)> {
    let (rows, n) = scores.size2().ctx(|| "scores".into())?;
    if n < 4 * k * block {
        return scores.f_topk(k, 1, true, false).ctx(|| "top-k".into());
    }
    let device = scores.device();
    let blocks = n / block;
    let whole = scores
        .narrow(1, 0, blocks * block)
        .view([rows, blocks, block]);
    let maxima = whole.amax([2].as_slice(), false);
    let (_, chosen) = maxima
        .f_topk(k, 1, true, false)
        .ctx(|| "top-k of block maxima".into())?;
    let offsets = Tensor::arange(block, (Kind::Int64, device));
    let mut values = whole
        .gather(
            1,
            &chosen.unsqueeze(2).expand([rows, k, block], false),
            false,
        )
        .view([rows, k * block]);
    let mut columns =
        (chosen.unsqueeze(2) * block + offsets.view([1, 1, block])).view([rows, k * block]);
    let tail = n - blocks * block;
    if tail > 0 {
        values = Tensor::cat(&[values, scores.narrow(1, blocks * block, tail)], 1);
        let tail_columns = (Tensor::arange(tail, (Kind::Int64, device)) + blocks * block)
            .unsqueeze(0)
            .expand([rows, tail], false);
        columns = Tensor::cat(&[columns, tail_columns], 1);
    }
    let (v, pos) = values
        .f_topk(k, 1, true, false)
        .ctx(|| "top-k of the chosen blocks".into())?;
    Ok((v, columns.gather(1, &pos, false)))
}

/// `queries`: `[nq, d]`, `corpus`: `[nc, d]` (same device and dtype). Scores are dot
/// products in the embeddings' kind, ranked as their fp32 widening.
pub fn top_k(queries: &Tensor, corpus: &Tensor, k: usize, corpus_chunk: usize) -> Result<Ranking> {
    Ok(search(queries, corpus, k, corpus_chunk, &[])?.0)
}

/// [`top_k`], and for each `(query row, document row)` pair the document's score and its
/// 1-based rank in the query's ranking of the whole corpus (1 + documents scoring
/// strictly higher), counted in the same pass over the corpus: each chunk's scores serve
/// both.
pub fn search(
    queries: &Tensor,
    corpus: &Tensor,
    k: usize,
    corpus_chunk: usize,
    pairs: &[(i64, i64)],
) -> Result<(Ranking, Vec<(f32, i64)>)> {
    let _guard = tch::no_grad_guard();
    let device = queries.device();
    let nc = corpus.size()[0];
    let nq = queries.size()[0];
    let k = (k as i64).min(nc);
    let chunk = (corpus_chunk as i64).max(1);
    let ranks = Ranks::new(queries, corpus, pairs)?;
    let mut above = ranks
        .as_ref()
        .map(|_| Tensor::zeros([pairs.len() as i64], (Kind::Int64, device)));
    let mut best: Option<(Tensor, Tensor)> = None;
    let mut start = 0i64;
    while start < nc {
        let len = chunk.min(nc - start);
        let block = corpus
            .f_narrow(0, start, len)
            .ctx(|| "corpus chunk".into())?;
        // Scores stay in the embeddings' kind: top-k of bf16 scores is the top-k of
        // their exact fp32 widening, without writing a second, wider score matrix.
        let scores = queries
            .f_matmul(&block.tr())
            .ctx(|| "query x corpus scores".into())?;
        if let (Some(r), Some(above)) = (&ranks, above.as_mut()) {
            *above += r.count_above(&scores, start)?;
        }
        if k > 0 {
            let (v, i) = block_top_k(&scores, k.min(len), BLOCK)?;
            let i = i + start;
            best = Some(match best {
                None => (v, i),
                Some((bv, bi)) => {
                    let v = Tensor::cat(&[bv, v], 1);
                    let i = Tensor::cat(&[bi, i], 1);
                    let width = v.size()[1];
                    let (v2, pos) = v
                        .f_topk(k.min(width), 1, true, true)
                        .ctx(|| "merging top-k".into())?;
                    (v2, i.gather(1, &pos, false))
                }
            });
        }
        start += len;
    }
    let ranking = to_host(best, nq, device)?;
    let ranked = match (ranks, above) {
        (Some(r), Some(above)) => {
            let own =
                Vec::<f32>::try_from(r.own.to_device(tch::Device::Cpu)).ctx(|| "scores".into())?;
            let above =
                Vec::<i64>::try_from(above.to_device(tch::Device::Cpu)).ctx(|| "ranks".into())?;
            own.into_iter()
                .zip(above)
                .map(|(s, a)| (s, a + 1))
                .collect()
        }
        _ => Vec::new(),
    };
    Ok((ranking, ranked))
}

/// What [`search`] needs to rank its pairs: each pair's own score (fp32) and, unless
/// the pairs are the queries' rows in order, the score rows to compare it with.
struct Ranks {
    own: Tensor,
    /// The query row of each pair; `None` when they are `0..nq`.
    rows: Option<Tensor>,
    /// The document row of each pair.
    docs: Tensor,
}

impl Ranks {
    fn new(queries: &Tensor, corpus: &Tensor, pairs: &[(i64, i64)]) -> Result<Option<Self>> {
        if pairs.is_empty() {
            return Ok(None);
        }
        let device = queries.device();
        let qi: Vec<i64> = pairs.iter().map(|p| p.0).collect();
        let di: Vec<i64> = pairs.iter().map(|p| p.1).collect();
        let identity = qi.len() as i64 == queries.size()[0]
            && qi.iter().enumerate().all(|(r, &q)| q == r as i64);
        let qi = Tensor::from_slice(&qi).to_device(device);
        let di = Tensor::from_slice(&di).to_device(device);
        let q = queries
            .f_index_select(0, &qi)
            .ctx(|| "pair queries".into())?;
        let d = corpus
            .f_index_select(0, &di)
            .ctx(|| "pair documents".into())?;
        Ok(Some(Ranks {
            own: (&q * &d).sum_dim_intlist([1].as_slice(), false, Kind::Float),
            rows: (!identity).then_some(qi),
            docs: di,
        }))
    }

    /// For each pair, the documents of a chunk's `scores` (`[nq, len]`, from corpus row
    /// `start`) other than the pair's own that score strictly above the pair's own score.
    /// (The own document's score in the chunk is another GEMM's rounding of the own
    /// score, which can land above it.)
    fn count_above(&self, scores: &Tensor, start: i64) -> Result<Tensor> {
        let rows = match &self.rows {
            Some(qi) => scores
                .f_index_select(0, qi)
                .ctx(|| "pair score rows".into())?,
            None => scores.shallow_clone(),
        };
        // bf16 scores against fp32 own scores: compared in fp32, without a wider copy.
        let own = self.own.unsqueeze(1);
        let above = rows
            .gt_tensor(&own)
            .sum_dim_intlist([1].as_slice(), false, Kind::Int64);
        let len = scores.size()[1];
        let column = &self.docs - start;
        let inside = column.ge(0).logical_and(&column.lt(len));
        let itself = rows
            .gather(1, &column.clamp(0, len - 1).unsqueeze(1), false)
            .gt_tensor(&own)
            .squeeze_dim(1)
            .logical_and(&inside);
        Ok(above - itself.to_kind(Kind::Int64))
    }
}

/// The merged top-k on the host, each row sorted best first (ties: lower index first).
fn to_host(best: Option<(Tensor, Tensor)>, nq: i64, device: tch::Device) -> Result<Ranking> {
    let (v, i) = best.unwrap_or_else(|| {
        let empty = Tensor::zeros([nq, 0], (Kind::Float, device));
        (empty.shallow_clone(), empty.to_kind(Kind::Int64))
    });
    // One copy of each matrix to the host (not one per row).
    let width = v.size()[1] as usize;
    let v = Vec::<f32>::try_from(
        v.to_kind(Kind::Float)
            .to_device(tch::Device::Cpu)
            .reshape([-1]),
    )
    .ctx(|| "scores".into())?;
    let i = Vec::<i64>::try_from(i.to_device(tch::Device::Cpu).reshape([-1]))
        .ctx(|| "indices".into())?;
    let mut ranking = Ranking {
        indices: Vec::with_capacity(nq as usize),
        scores: Vec::with_capacity(nq as usize),
    };
    for row in 0..nq as usize {
        let (scores, idx) = (
            &v[row * width..(row + 1) * width],
            &i[row * width..(row + 1) * width],
        );
        let mut pairs: Vec<(f32, i64)> = scores.iter().copied().zip(idx.iter().copied()).collect();
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranking.scores.push(pairs.iter().map(|p| p.0).collect());
        ranking.indices.push(pairs.iter().map(|p| p.1).collect());
    }
    Ok(ranking)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_search_equals_full_search() {
        tch::manual_seed(3);
        let q = Tensor::randn([5, 8], (Kind::Float, tch::Device::Cpu));
        let c = Tensor::randn([37, 8], (Kind::Float, tch::Device::Cpu));
        let full = top_k(&q, &c, 10, 1000).unwrap();
        for chunk in [1, 4, 10, 36] {
            let got = top_k(&q, &c, 10, chunk).unwrap();
            assert_eq!(got.indices, full.indices, "chunk {chunk}");
            // Other GEMM shapes round differently, by an ulp or so.
            for (a, b) in got
                .scores
                .iter()
                .flatten()
                .zip(full.scores.iter().flatten())
            {
                assert!((a - b).abs() < 1e-5, "chunk {chunk}: {a} vs {b}");
            }
        }
        // Brute force on the CPU.
        let s = Vec::<Vec<f32>>::try_from(q.matmul(&c.tr())).unwrap();
        for (row, got) in s.iter().zip(&full.indices) {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let want: Vec<i64> = order[..10].iter().map(|&i| i as i64).collect();
            assert_eq!(got, &want);
        }
    }

    #[test]
    fn block_top_k_equals_top_k() {
        tch::manual_seed(5);
        // 3 rows x 1,000 columns (7 whole blocks of 128 and a tail of 104), plus a row whose
        // best columns all sit in one block and in the tail.
        let s = Tensor::randn([4, 1000], (Kind::Float, tch::Device::Cpu));
        let ramp =
            |n: i64, base: f64| Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 0.01 + base;
        s.get(3).narrow(0, 130, 5).copy_(&ramp(5, 9.0));
        s.get(3).narrow(0, 990, 3).copy_(&ramp(3, 8.0));
        for (k, block) in [(3, 16), (5, 8), (1, 128)] {
            let (v, i) = block_top_k(&s, k, block).unwrap();
            let (want_v, want_i) = s.topk(k, 1, true, true);
            let (v, order) = v.sort(1, true);
            let i = i.gather(1, &order, false);
            assert_eq!(
                Vec::<Vec<f32>>::try_from(&v).unwrap(),
                Vec::<Vec<f32>>::try_from(&want_v).unwrap()
            );
            assert_eq!(
                Vec::<Vec<i64>>::try_from(&i).unwrap(),
                Vec::<Vec<i64>>::try_from(&want_i).unwrap()
            );
        }
    }

    #[test]
    fn rank_counts_strictly_better_documents() {
        let q = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        let c = Tensor::from_slice(&[0.5f32, 0.0, 0.9, 0.0, 0.1, 0.0, 0.9, 1.0]).view([4, 2]);
        let rank = |pairs: &[(i64, i64)], chunk| search(&q, &c, 2, chunk, pairs).unwrap().1;
        let r = rank(&[(0, 0), (0, 2), (0, 3), (0, 1)], 3);
        assert_eq!(r, vec![(0.5, 3), (0.1, 4), (0.9, 1), (0.9, 1)]);
        assert_eq!(rank(&[(0, 2)], 1)[0], (0.1, 4));
    }

    /// A chunk's count leaves out the pair's own document even when its score in the
    /// chunk is above the own score, and counts every other document above it; bf16
    /// scores are compared with fp32 own scores as their widening.
    #[test]
    fn count_above_leaves_the_document_itself_out() {
        let ranks = Ranks {
            own: Tensor::from_slice(&[0.5f32, 0.25]),
            rows: None,
            docs: Tensor::from_slice(&[5i64, 9]),
        };
        // Chunk of columns 4..8: row 0's own document (5) rounds above 0.5, column 6 is
        // above too; row 1's own document (9) lies outside the chunk.
        let scores =
            Tensor::from_slice(&[0.1f32, 0.51, 0.75, 0.5, 0.3, 0.2, 0.25, 0.26]).view([2, 4]);
        for kind in [Kind::Float, Kind::BFloat16] {
            let got = ranks.count_above(&scores.to_kind(kind), 4).unwrap();
            assert_eq!(Vec::<i64>::try_from(&got).unwrap(), vec![1, 2], "{kind:?}");
        }
        // The same scores as columns 6..10: row 0's own document is outside the chunk,
        // row 1's (9, column 3) rounds above its own score and is left out.
        let got = ranks.count_above(&scores, 6).unwrap();
        assert_eq!(Vec::<i64>::try_from(&got).unwrap(), vec![2, 1]);
    }

    /// Ranks from the search's own pass equal a count over the whole score matrix (the
    /// document itself left out: its score in another GEMM can round above its own), for
    /// pairs that are the queries' rows in order and for any other pairs (several per
    /// query, some queries without one); the top-k is the one `top_k` returns.
    #[test]
    fn ranks_from_the_search_pass_equal_brute_force() {
        tch::manual_seed(11);
        let q = Tensor::randn([6, 8], (Kind::Float, tch::Device::Cpu));
        let c = Tensor::randn([53, 8], (Kind::Float, tch::Device::Cpu));
        let s = Vec::<Vec<f32>>::try_from(q.matmul(&c.tr())).unwrap();
        let identity: Vec<(i64, i64)> = (0..6).map(|r| (r, (7 * r + 3) % 53)).collect();
        let other = vec![(0, 5), (0, 40), (2, 0), (2, 52), (5, 17), (5, 5), (5, 30)];
        for pairs in [identity, other] {
            for chunk in [7, 53, 100] {
                let (ranking, ranked) = search(&q, &c, 10, chunk, &pairs).unwrap();
                assert_eq!(ranking, top_k(&q, &c, 10, chunk).unwrap());
                for (&(qr, d), &(score, rank)) in pairs.iter().zip(&ranked) {
                    let own = s[qr as usize][d as usize];
                    assert!((score - own).abs() < 1e-5, "{score} vs {own}");
                    let others = s[qr as usize]
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != d as usize);
                    let above = others.filter(|&(_, &x)| x > score).count();
                    assert_eq!(rank, above as i64 + 1, "pair ({qr}, {d}), chunk {chunk}");
                }
            }
        }
    }
}
