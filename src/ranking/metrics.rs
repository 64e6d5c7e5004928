//! Retrieval metrics with trec_eval's definitions (as pytrec_eval computes them): a run
//! is sorted by score, descending, ties broken by document id in reverse lexicographic
//! order; a document is relevant when its grade is at least 1; nDCG uses the grade as
//! gain with log2(rank + 1) discounts; P@k divides by k; queries judged in the qrels but
//! without a relevant document score 0; queries absent from the qrels are not evaluated.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One query's judged documents: id -> grade.
pub type Judgements = BTreeMap<String, i64>;

/// The measures distill reports, per query or averaged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Measures {
    pub ndcg_10: f64,
    pub mrr_10: f64,
    pub p_10: f64,
    pub recall_10: f64,
    pub recall_100: f64,
    pub recall_1000: f64,
    pub map_100: f64,
}

impl Measures {
    pub const NAMES: [&'static str; 7] = [
        "ndcg@10",
        "mrr@10",
        "p@10",
        "recall@10",
        "recall@100",
        "recall@1000",
        "map@100",
    ];

    pub fn values(&self) -> [f64; 7] {
        [
            self.ndcg_10,
            self.mrr_10,
            self.p_10,
            self.recall_10,
            self.recall_100,
            self.recall_1000,
            self.map_100,
        ]
    }

    /// Mean over queries (an empty list gives zeros).
    pub fn mean(all: &[Measures]) -> Measures {
        let n = all.len().max(1) as f64;
        let sum = |f: fn(&Measures) -> f64| all.iter().map(f).sum::<f64>() / n;
        Measures {
            ndcg_10: sum(|m| m.ndcg_10),
            mrr_10: sum(|m| m.mrr_10),
            p_10: sum(|m| m.p_10),
            recall_10: sum(|m| m.recall_10),
            recall_100: sum(|m| m.recall_100),
            recall_1000: sum(|m| m.recall_1000),
            map_100: sum(|m| m.map_100),
        }
    }
}

/// Sort `(doc id, score)` as trec_eval does: score descending, then doc id descending
/// (scores of f32 or f64; an f32 compares as the f64 it converts to, exactly).
pub fn trec_order<S: Copy + Into<f64>>(run: &mut [(String, S)]) {
    run.sort_by(|a, b| {
        let (sa, sb): (f64, f64) = (a.1.into(), b.1.into());
        sb.total_cmp(&sa).then_with(|| b.0.cmp(&a.0))
    });
}

/// Measures of one query. `run` need not be sorted.
pub fn evaluate(run: &[(String, f32)], judged: &Judgements) -> Measures {
    let mut ranked = run.to_vec();
    trec_order(&mut ranked);
    let grade = |d: &str| judged.get(d).copied().unwrap_or(0);
    let relevant = judged.values().filter(|&&g| g >= 1).count();
    let rel_at: Vec<bool> = ranked.iter().map(|(d, _)| grade(d) >= 1).collect();
    let hits = |k: usize| rel_at.iter().take(k).filter(|&&r| r).count() as f64;
    let recall = |k: usize| {
        if relevant == 0 {
            0.0
        } else {
            hits(k) / relevant as f64
        }
    };
    let mrr_10 = rel_at
        .iter()
        .take(10)
        .position(|&r| r)
        .map_or(0.0, |i| 1.0 / (i + 1) as f64);
    let dcg: f64 = ranked
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, (d, _))| grade(d).max(0) as f64 / ((i + 2) as f64).log2())
        .sum();
    let mut ideal: Vec<i64> = judged.values().copied().filter(|&g| g > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, &g)| g as f64 / ((i + 2) as f64).log2())
        .sum();
    let mut precision_sum = 0.0;
    let mut found = 0usize;
    for (i, &r) in rel_at.iter().take(100).enumerate() {
        if r {
            found += 1;
            precision_sum += found as f64 / (i + 1) as f64;
        }
    }
    Measures {
        ndcg_10: if idcg > 0.0 { dcg / idcg } else { 0.0 },
        mrr_10,
        p_10: hits(10) / 10.0,
        recall_10: recall(10),
        recall_100: recall(100),
        recall_1000: recall(1000),
        map_100: if relevant == 0 {
            0.0
        } else {
            precision_sum / relevant as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(v: &[(&str, f32)]) -> Vec<(String, f32)> {
        v.iter().map(|(d, s)| (d.to_string(), *s)).collect()
    }

    #[test]
    fn ties_break_by_reverse_doc_id_and_grades_are_gains() {
        // The pytrec_eval values of this case are in tests/eval.rs's fixture too; here the
        // arithmetic is spelled out: order d3, d4, d2, d1.
        let judged: Judgements = [("d1".into(), 1), ("d2".into(), 2), ("d3".into(), 0)].into();
        let m = evaluate(
            &run(&[("d1", 0.5), ("d2", 0.5), ("d3", 0.9), ("d4", 0.5)]),
            &judged,
        );
        assert!((m.mrr_10 - 1.0 / 3.0).abs() < 1e-12);
        let dcg = 2.0 / 4f64.log2() + 1.0 / 5f64.log2();
        let idcg = 2.0 + 1.0 / 3f64.log2();
        assert!((m.ndcg_10 - dcg / idcg).abs() < 1e-12);
        assert!((m.map_100 - (1.0 / 3.0 + 2.0 / 4.0) / 2.0).abs() < 1e-12);
        assert_eq!(m.p_10, 0.2);
        let none: Judgements = [("d9".into(), 0)].into();
        assert_eq!(evaluate(&run(&[("d1", 1.0)]), &none), Measures::default());
    }
}
