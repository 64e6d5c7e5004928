//! The teacher's dev slice: a seeded sample of a dataset's labelled training queries held
//! out of every training (the teacher's and the student's), on which the teacher's rerank
//! is checked against the student alone before anything is scored, and the distilled
//! student against the base one after training. Pseudo-queries are never in it.
use crate::rng::SplitMix64;
use serde::Serialize;
use std::collections::BTreeSet;

/// How many training queries the dev slice takes from each dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DevQueries {
    /// 10% of the labelled training queries (rounded up), at least 50 where that is at
    /// most a quarter of the split, at most 500, and never the whole split.
    #[default]
    Auto,
    /// Exactly this many (all but one at most); 0 turns the slice, and the gate, off.
    Count(usize),
}

impl DevQueries {
    pub fn is_off(&self) -> bool {
        *self == DevQueries::Count(0)
    }

    /// The slice's size for a split of `n` labelled queries.
    pub fn size(&self, n: usize) -> usize {
        match *self {
            DevQueries::Auto => n
                .div_ceil(10)
                .max(50.min(n / 4))
                .min(500)
                .min(n.saturating_sub(1)),
            DevQueries::Count(k) => k.min(n.saturating_sub(1)),
        }
    }
}

/// The dev slice of `dataset`: `setting.size(n)` of the `queries` (the ids of its labelled
/// training queries; pseudo-queries are ignored), drawn with `seed`. The draw depends only
/// on the seed, the dataset's name and the set of ids, not on their order.
pub fn slice(dataset: &str, queries: &[&str], setting: DevQueries, seed: u64) -> BTreeSet<String> {
    let mut ids: Vec<&str> = queries
        .iter()
        .copied()
        .filter(|q| crate::data::pseudo::parse_query_id(q).is_none())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let k = setting.size(ids.len());
    let mut rng = SplitMix64::for_key(seed, &format!("dev slice\u{0}{dataset}"));
    // A partial Fisher-Yates shuffle: the first k places are a uniform sample.
    for i in 0..k {
        let j = i + (rng.next_u64() % (ids.len() - i) as u64) as usize;
        ids.swap(i, j);
    }
    ids.into_iter().take(k).map(str::to_string).collect()
}

/// The fold (of `folds`) a training query belongs to for cross-fitted teacher scores
/// (`teacher_train.folds`): seeded, and a function of the dataset and the query id alone,
/// so every stage that asks agrees.
pub fn fold_of(seed: u64, dataset: &str, query_id: &str, folds: usize) -> usize {
    if folds <= 1 {
        return 0;
    }
    let mut rng = SplitMix64::for_key(seed, &format!("fold\u{0}{dataset}\u{0}{query_id}"));
    (rng.next_u64() % folds as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_seeded_balanced_and_stable() {
        let f = |seed, q: &str| fold_of(seed, "x", q, 2);
        let counts = (0..1000).fold([0usize; 2], |mut c, i| {
            c[f(7, &format!("q{i}"))] += 1;
            c
        });
        // Roughly half each (a binomial(1000, 0.5) is within 80 of 500 almost surely).
        assert!(counts[0].abs_diff(500) < 80, "{counts:?}");
        assert_eq!(f(7, "q1"), f(7, "q1"));
        // Another seed or dataset draws other folds for some queries.
        assert!((0..50).any(|i| f(7, &format!("q{i}")) != f(8, &format!("q{i}"))));
        assert!((0..50).any(|i| {
            let q = format!("q{i}");
            fold_of(7, "x", &q, 2) != fold_of(7, "y", &q, 2)
        }));
        assert!((0..100).all(|i| fold_of(7, "x", &format!("q{i}"), 3) < 3));
        assert_eq!(fold_of(7, "x", "q1", 1), 0);
    }

    #[test]
    fn sizes_follow_the_rule() {
        let auto = DevQueries::Auto;
        // 10%, at least 50 where a quarter of the split allows it, at most 500.
        assert_eq!(auto.size(809), 81);
        assert_eq!(auto.size(300), 50);
        assert_eq!(auto.size(100), 25);
        assert_eq!(auto.size(16), 4);
        assert_eq!(auto.size(7845), 500);
        assert_eq!(auto.size(0), 0);
        // A split of one query keeps it for training.
        assert_eq!(auto.size(1), 0);
        assert_eq!(auto.size(2), 1);
        assert_eq!(DevQueries::Count(30).size(100), 30);
        assert_eq!(DevQueries::Count(30).size(10), 9);
        assert_eq!(DevQueries::Count(0).size(10), 0);
        assert!(DevQueries::Count(0).is_off() && !auto.is_off());
    }

    #[test]
    fn slice_is_seeded_order_free_and_skips_pseudo_queries() {
        let ids: Vec<String> = (0..200).map(|i| format!("q{i}")).collect();
        let mut refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        refs.push("pseudo:d1:0");
        let a = slice("x", &refs, DevQueries::Auto, 7);
        assert_eq!(a.len(), 50);
        assert!(a.iter().all(|q| !q.starts_with("pseudo:")));
        refs.reverse();
        assert_eq!(slice("x", &refs, DevQueries::Auto, 7), a);
        assert_ne!(slice("x", &refs, DevQueries::Auto, 8), a);
        assert_ne!(slice("y", &refs, DevQueries::Auto, 7), a);
        assert!(slice("x", &refs, DevQueries::Count(0), 7).is_empty());
    }
}
