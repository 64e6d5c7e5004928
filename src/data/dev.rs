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

#[cfg(test)]
mod tests {
    use super::*;

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
