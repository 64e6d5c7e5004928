//! Training groups: for every training query, its positives and its negatives (with
//! teacher scores when they exist), and a seeded plan of (query, positive, negatives)
//! examples per epoch.
use crate::data::beir::{gather_from, Dataset, Texts};
use crate::data::pairs::PairTable;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How an epoch's queries are put into batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Batching {
    /// A seeded shuffle, cut into batches.
    #[default]
    Random,
    /// Topic-aware (in the manner of TAS, Hofstätter et al. 2021): each batch is a seed
    /// query (in the shuffled order) and the queries sharing most candidate documents with
    /// it, so that in-batch negatives come from the same topic ([`TrainingSet::topic_order`]).
    Topic,
}

impl Batching {
    /// Left out of run hashes, so that runs from before the key keep theirs.
    pub fn is_default(&self) -> bool {
        *self == Batching::default()
    }
}

/// Index of a text in [`TrainingSet::texts`].
pub type TextId = usize;

/// One document of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub id: String,
    pub text: TextId,
    /// Teacher score (0 when the table has none).
    pub teacher: f32,
}

#[derive(Debug, Clone)]
pub struct QueryGroup {
    pub dataset: String,
    pub query_id: String,
    pub text: TextId,
    pub positives: Vec<Doc>,
    pub negatives: Vec<Doc>,
    /// Ids of every labelled positive of the query (for in-batch masking).
    pub positive_ids: BTreeSet<String>,
}

impl QueryGroup {
    /// The query's text, then every positive's and negative's.
    pub fn texts(&self) -> impl Iterator<Item = TextId> + '_ {
        std::iter::once(self.text)
            .chain(self.positives.iter().chain(&self.negatives).map(|d| d.text))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupStats {
    pub queries: usize,
    pub dropped_without_negatives: usize,
    pub excluded_false_negatives: usize,
    /// Pseudo-queries left out by `train.pseudo_keep` ([`pseudo_left_out`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub pseudo_left_out: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The (dataset, query id) of the pseudo-queries to leave out so that each document keeps
/// at most `keep` of its own among the queries `among` accepts: of those the teacher
/// confirms (it scores the document above every other candidate of the pseudo-query), the
/// ones on which the student does worst (the document's rank in the student's ranking of
/// the corpus, the largest first; on ties, the pseudo-query drawn first). Pseudo-queries
/// that the teacher does not confirm are left out: their window does not single out their
/// document. `table` (read from `source`) must have teacher scores.
pub fn pseudo_left_out(
    table: &PairTable,
    source: &std::path::Path,
    keep: usize,
    among: impl Fn(&str, &str) -> bool,
) -> Result<BTreeSet<(String, String)>> {
    let teacher = table.teacher_score.as_ref().ok_or_else(|| {
        Error::config(
            source,
            "has no teacher scores, which train.pseudo_keep needs",
        )
    })?;
    // Per pseudo-query: its document and index, the document's rank and score, the best
    // other candidate's score.
    struct Seen<'a> {
        doc: &'a str,
        index: usize,
        rank: Option<i32>,
        positive: f32,
        best_other: f32,
    }
    let mut seen: BTreeMap<(&str, &str), Seen> = BTreeMap::new();
    for (i, &score) in teacher.iter().enumerate() {
        let (ds, qid) = (table.dataset[i].as_str(), table.query_id[i].as_str());
        let Some((doc, index)) = crate::data::pseudo::parse_query_id(qid) else {
            continue;
        };
        if !among(ds, qid) {
            continue;
        }
        let s = seen.entry((ds, qid)).or_insert(Seen {
            doc,
            index,
            rank: None,
            positive: 0.0,
            best_other: f32::NEG_INFINITY,
        });
        if table.is_positive[i] && table.doc_id[i] == doc {
            s.rank = Some(table.rank[i]);
            s.positive = score;
        } else {
            s.best_other = s.best_other.max(score);
        }
    }
    // Per (dataset, document): (rank, index, query id) of its confirmed pseudo-queries.
    type Confirmed<'a> = Vec<(i32, usize, &'a str)>;
    let mut by_doc: BTreeMap<(&str, &str), Confirmed> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for ((ds, qid), s) in seen {
        match s.rank {
            Some(rank) if s.positive > s.best_other => {
                by_doc
                    .entry((ds, s.doc))
                    .or_default()
                    .push((rank, s.index, qid));
            }
            _ => {
                out.insert((ds.to_string(), qid.to_string()));
            }
        }
    }
    for ((ds, _), mut queries) in by_doc {
        queries.sort_by_key(|&(rank, index, _)| (std::cmp::Reverse(rank), index));
        out.extend(
            queries
                .into_iter()
                .skip(keep)
                .map(|(_, _, qid)| (ds.to_string(), qid.to_string())),
        );
    }
    Ok(out)
}

/// One training example: a query, one of its positives, `n` of its negatives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub query: usize,
    pub positive: usize,
    pub negatives: Vec<usize>,
}

/// The groups of a training run and their texts, each loaded once and referred to by
/// index (a document in several groups is one text).
#[derive(Debug, Clone, Default)]
pub struct TrainingSet {
    pub texts: Vec<String>,
    pub groups: Vec<QueryGroup>,
    pub stats: GroupStats,
}

impl TrainingSet {
    /// Groups from `candidates` or `teacher_scores` rows, in table order. With
    /// `exclude_false_negatives`, rows flagged as likely false negatives are left out of
    /// the negatives. Queries left without a negative are dropped (counted).
    pub fn from_table(
        table: &PairTable,
        datasets: &BTreeMap<String, Dataset>,
        exclude_false_negatives: bool,
    ) -> Result<Self> {
        let mut groups: Vec<QueryGroup> = Vec::new();
        let mut index: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut stats = GroupStats::default();
        // Texts by (dataset, document id): each document's text is copied once, read
        // after the loop (on rayon's pool: a corpus on disk is read line by line).
        let mut texts: Vec<String> = Vec::new();
        let mut doc_text: HashMap<(&str, &str), TextId> = HashMap::new();
        let mut to_read: Vec<(TextId, &Dataset, usize)> = Vec::new();
        for i in 0..table.len() {
            let (ds_name, qid, did) = (&table.dataset[i], &table.query_id[i], &table.doc_id[i]);
            let ds = datasets.get(ds_name).ok_or_else(|| Error::TrainingData {
                dataset: Some(ds_name.clone()),
                message: "named by the training table, but not in the pipeline".into(),
            })?;
            let missing = |what: &str, id: &str| Error::TrainingData {
                dataset: Some(ds_name.clone()),
                message: format!(
                    "{what} `{id}` of the training table is not in {}",
                    ds.dir.display()
                ),
            };
            let key = (ds_name.clone(), qid.clone());
            let g = match index.get(&key) {
                Some(&g) => g,
                None => {
                    let text = ds.queries.text(qid)?.ok_or_else(|| missing("query", qid))?;
                    texts.push(text.into_owned());
                    let positive_ids =
                        ds.qrels
                            .values()
                            .filter_map(|q| q.get(qid))
                            .flat_map(|docs| {
                                docs.iter().filter(|(_, &g)| g > 0).map(|(d, _)| d.clone())
                            });
                    groups.push(QueryGroup {
                        dataset: ds_name.clone(),
                        query_id: qid.clone(),
                        text: texts.len() - 1,
                        positives: Vec::new(),
                        negatives: Vec::new(),
                        positive_ids: positive_ids.collect(),
                    });
                    index.insert(key, groups.len() - 1);
                    groups.len() - 1
                }
            };
            let text = match doc_text.get(&(ds_name.as_str(), did.as_str())) {
                Some(&t) => t,
                None => {
                    let row = ds
                        .corpus
                        .position(did)
                        .ok_or_else(|| missing("document", did))?;
                    texts.push(String::new());
                    to_read.push((texts.len() - 1, ds, row));
                    doc_text.insert((ds_name, did), texts.len() - 1);
                    texts.len() - 1
                }
            };
            let doc = Doc {
                id: did.clone(),
                text,
                teacher: table.teacher_score.as_ref().map_or(0.0, |t| t[i]),
            };
            let group = &mut groups[g];
            if table.is_positive[i] {
                group.positive_ids.insert(did.clone());
                group.positives.push(doc);
            } else if exclude_false_negatives
                && table.is_false_negative.as_ref().is_some_and(|f| f[i])
            {
                stats.excluded_false_negatives += 1;
            } else {
                group.negatives.push(doc);
            }
        }
        let rows: Vec<(&Texts, usize)> = to_read
            .iter()
            .map(|&(_, ds, row)| (&ds.corpus, row))
            .collect();
        for ((slot, _, _), text) in to_read.iter().zip(gather_from(&rows)?) {
            texts[*slot] = text.into_owned();
        }
        let before = groups.len();
        groups.retain(|g| !g.negatives.is_empty() && !g.positives.is_empty());
        stats.dropped_without_negatives = before - groups.len();
        stats.queries = groups.len();
        Ok(TrainingSet {
            texts,
            groups,
            stats,
        })
    }

    /// Only the groups for which `keep(dataset, query id)` holds (the teacher's fold and
    /// pseudo-query choices); the stats count the queries kept.
    pub fn retain(mut self, keep: impl Fn(&str, &str) -> bool) -> Self {
        self.groups.retain(|g| keep(&g.dataset, &g.query_id));
        self.stats.queries = self.groups.len();
        self
    }

    /// With at most `keep` pseudo-queries per document, picked among the set's own groups
    /// ([`pseudo_left_out`]; `table`, read from `source`, is the one the set was built
    /// from); those left out are counted in the stats.
    pub fn keep_pseudo(
        mut self,
        table: &PairTable,
        source: &std::path::Path,
        keep: usize,
    ) -> Result<Self> {
        let present: BTreeSet<(&str, &str)> = self
            .groups
            .iter()
            .map(|g| (g.dataset.as_str(), g.query_id.as_str()))
            .collect();
        let left_out = pseudo_left_out(table, source, keep, |ds, q| present.contains(&(ds, q)))?;
        let before = self.groups.len();
        self.groups
            .retain(|g| !left_out.contains(&(g.dataset.clone(), g.query_id.clone())));
        self.stats.pseudo_left_out = before - self.groups.len();
        self.stats.queries = self.groups.len();
        Ok(self)
    }

    /// Examples of one epoch: queries in a seeded order (put into topic batches of
    /// `topic_batch` queries when given); for each, a seeded positive and `n` negatives
    /// (without replacement when the query has `n`, else cycling through a seeded order of
    /// what it has). Depends only on (seed, epoch), so a resumed run replays the same data.
    pub fn epoch(
        &self,
        seed: u64,
        epoch: usize,
        n: usize,
        topic_batch: Option<usize>,
    ) -> Vec<Example> {
        let mut order: Vec<usize> = (0..self.groups.len()).collect();
        SplitMix64::for_key(seed, &format!("epoch {epoch}")).shuffle(&mut order);
        if let Some(batch) = topic_batch {
            order = self.topic_order(&order, batch);
        }
        order
            .into_iter()
            .map(|q| {
                let g = &self.groups[q];
                let key = format!("epoch {epoch}\u{0}{}\u{0}{}", g.dataset, g.query_id);
                let mut rng = SplitMix64::for_key(seed, &key);
                let positive = rng.below(g.positives.len() as u64) as usize;
                let all: Vec<usize> = (0..g.negatives.len()).collect();
                let mut negatives = rng.sample(&all, n);
                let mut cycle = 0;
                while negatives.len() < n {
                    negatives.push(negatives[cycle]);
                    cycle += 1;
                }
                Example {
                    query: q,
                    positive,
                    negatives,
                }
            })
            .collect()
    }
}

impl TrainingSet {
    /// `order` regrouped into batches of `batch` queries: the first query of `order` not
    /// yet placed opens a batch, which takes the unplaced queries sharing most documents
    /// (positives and negatives, within a dataset) with it, earlier in `order` first on
    /// ties, then the next unplaced queries of `order` if too few share any. Every query
    /// is placed once; only the last batch may be short.
    pub fn topic_order(&self, order: &[usize], batch: usize) -> Vec<usize> {
        let batch = batch.max(1);
        let n = order.len();
        let docs = |g: usize| {
            let g = &self.groups[g];
            g.positives
                .iter()
                .chain(&g.negatives)
                .map(move |d| (g.dataset.as_str(), d.id.as_str()))
        };
        let mut rank = vec![0; self.groups.len()];
        let mut postings: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (r, &g) in order.iter().enumerate() {
            rank[g] = r;
            for d in docs(g) {
                postings.entry(d).or_default().push(g);
            }
        }
        let mut placed = vec![false; self.groups.len()];
        let mut out = Vec::with_capacity(n);
        let mut cursor = 0;
        while out.len() < n {
            while placed[order[cursor]] {
                cursor += 1;
            }
            let first = order[cursor];
            placed[first] = true;
            let start = out.len();
            out.push(first);
            let mut shared: HashMap<usize, u32> = HashMap::new();
            let mut seen = BTreeSet::new();
            for d in docs(first).filter(|d| seen.insert(*d)) {
                for &g in &postings[&d] {
                    if !placed[g] {
                        *shared.entry(g).or_default() += 1;
                    }
                }
            }
            let mut near: Vec<(u32, usize)> = shared.into_iter().map(|(g, c)| (c, g)).collect();
            near.sort_unstable_by_key(|&(c, g)| (std::cmp::Reverse(c), rank[g]));
            for (_, g) in near.into_iter().take(batch - 1) {
                placed[g] = true;
                out.push(g);
            }
            let mut k = cursor;
            while out.len() - start < batch && k < n {
                if !placed[order[k]] {
                    placed[order[k]] = true;
                    out.push(order[k]);
                }
                k += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn set(negatives: usize) -> TrainingSet {
        let doc = |i: usize| Doc {
            id: format!("d{i}"),
            text: 0,
            teacher: 0.0,
        };
        let groups = (0..4)
            .map(|q| QueryGroup {
                dataset: "x".into(),
                query_id: format!("q{q}"),
                text: 0,
                positives: vec![doc(100), doc(101)],
                negatives: (0..negatives).map(doc).collect(),
                positive_ids: BTreeSet::new(),
            })
            .collect();
        TrainingSet {
            groups,
            ..Default::default()
        }
    }

    #[test]
    fn epochs_are_seeded_shuffles_with_distinct_negatives() {
        let s = set(10);
        let e0 = s.epoch(1, 0, 3, None);
        assert_eq!(e0, s.epoch(1, 0, 3, None));
        assert_ne!(e0, s.epoch(1, 1, 3, None));
        let mut qs: Vec<usize> = e0.iter().map(|e| e.query).collect();
        qs.sort();
        assert_eq!(qs, vec![0, 1, 2, 3]);
        for e in &e0 {
            let mut n = e.negatives.clone();
            n.sort();
            n.dedup();
            assert_eq!(n.len(), 3);
        }
    }

    #[test]
    fn short_groups_cycle_their_negatives() {
        let e = set(2).epoch(5, 0, 5, None);
        assert!(e.iter().all(|x| x.negatives.len() == 5));
        assert!(e.iter().all(|x| x.negatives[2] == x.negatives[0]));
    }

    #[test]
    fn topic_batches_gather_queries_that_share_documents() {
        let doc = |i: usize| Doc {
            id: format!("d{i}"),
            text: 0,
            teacher: 0.0,
        };
        // Queries 0..12 in three topics (q % 3) whose documents are disjoint; the same
        // document ids in another dataset (query 12) are another topic.
        let group = |q: usize, dataset: &str| QueryGroup {
            dataset: dataset.into(),
            query_id: format!("q{q}"),
            text: 0,
            positives: vec![doc(100 + q)],
            negatives: (0..4).map(|j| doc(10 * (q % 3) + j)).collect(),
            positive_ids: BTreeSet::new(),
        };
        let mut groups: Vec<QueryGroup> = (0..12).map(|q| group(q, "x")).collect();
        groups.push(group(0, "y"));
        let set = TrainingSet {
            groups,
            ..Default::default()
        };
        let x = TrainingSet {
            groups: set.groups[..12].to_vec(),
            ..Default::default()
        };
        for seed in 0..5 {
            let order: Vec<usize> = x
                .epoch(seed, 0, 2, Some(4))
                .iter()
                .map(|e| e.query)
                .collect();
            let mut all = order.clone();
            all.sort();
            assert_eq!(all, (0..12).collect::<Vec<_>>());
            // Each batch is one topic.
            for b in order.chunks(4) {
                assert!(b.iter().all(|&g| g % 3 == b[0] % 3), "{order:?}");
            }
        }
        // Documents are shared within a dataset only: query 12 (dataset y) shares none, so
        // its batch is filled in order (0, 1, 2). Query 3 then gathers what is left of its
        // topic (6, 9) and fills in with 4; query 5 takes 8 and 11, and fills in with 7.
        let order: Vec<usize> = std::iter::once(12).chain(0..12).collect();
        assert_eq!(
            set.topic_order(&order, 4),
            vec![12, 0, 1, 2, 3, 6, 9, 4, 5, 8, 11, 7, 10]
        );
        for seed in 0..5 {
            let e = set.epoch(seed, 0, 2, Some(4));
            let order: Vec<usize> = e.iter().map(|x| x.query).collect();
            // The same (seed, epoch) replays; the random batching is the plain shuffle.
            assert_eq!(e, set.epoch(seed, 0, 2, Some(4)));
            let mut shuffled: Vec<usize> = (0..13).collect();
            SplitMix64::for_key(seed, "epoch 0").shuffle(&mut shuffled);
            assert_eq!(order[0], shuffled[0]);
            let plain: Vec<usize> = set
                .epoch(seed, 0, 2, None)
                .iter()
                .map(|x| x.query)
                .collect();
            assert_eq!(plain, shuffled);
        }
    }

    #[test]
    fn pseudo_keep_takes_the_confirmed_pseudo_queries_the_student_ranks_worst() {
        let mut t = PairTable {
            teacher_score: Some(Vec::new()),
            ..Default::default()
        };
        // (dataset, query, document, student rank, positive, teacher score)
        let rows = [
            // d1's windows 0..4: window 1 is not confirmed (a negative scores higher);
            // of the others, window 3 (rank 9) and then 0 and 2 (rank 4, 0 first).
            ("x", "pseudo:d1:0", "d1", 4, true, 2.0),
            ("x", "pseudo:d1:0", "d9", 1, false, 1.0),
            ("x", "pseudo:d1:1", "d1", 50, true, 1.0),
            ("x", "pseudo:d1:1", "d9", 1, false, 1.5),
            ("x", "pseudo:d1:2", "d1", 4, true, 3.0),
            ("x", "pseudo:d1:2", "d9", 2, false, -1.0),
            ("x", "pseudo:d1:3", "d1", 9, true, 0.5),
            ("x", "pseudo:d1:3", "d9", 3, false, 0.4),
            // A tie with the best negative is not a confirmation.
            ("x", "pseudo:d2:0", "d2", 7, true, 1.0),
            ("x", "pseudo:d2:0", "d1", 1, false, 1.0),
            // The same ids in another dataset are another document; real queries stay.
            ("y", "pseudo:d1:0", "d1", 1, true, 1.0),
            ("y", "pseudo:d1:0", "d2", 2, false, 0.0),
            ("x", "q1", "d1", 30, true, -5.0),
            ("x", "q1", "d2", 1, false, 5.0),
        ];
        for (ds, q, d, rank, positive, score) in rows {
            t.dataset.push(ds.into());
            t.query_id.push(q.into());
            t.doc_id.push(d.into());
            t.rank.push(rank);
            t.student_score.push(0.0);
            t.is_positive.push(positive);
            t.teacher_score.as_mut().unwrap().push(score);
        }
        let left_out = [
            (2, vec!["pseudo:d1:1", "pseudo:d1:2", "pseudo:d2:0"]),
            (
                1,
                vec!["pseudo:d1:0", "pseudo:d1:1", "pseudo:d1:2", "pseudo:d2:0"],
            ),
        ];
        for (keep, ids) in left_out {
            let want: BTreeSet<(String, String)> = ids
                .into_iter()
                .map(|q| ("x".to_string(), q.to_string()))
                .collect();
            let got = pseudo_left_out(&t, Path::new("t"), keep, |_, _| true).unwrap();
            assert_eq!(got, want, "keep {keep}");
        }
        // Queries outside `among` (such as those dropped for want of negatives) are
        // neither picked nor counted: without window 3, d1 keeps 0 and 2.
        let got = pseudo_left_out(&t, Path::new("t"), 2, |_, q| q != "pseudo:d1:3").unwrap();
        let want: BTreeSet<(String, String)> = ["pseudo:d1:1", "pseudo:d2:0"]
            .into_iter()
            .map(|q| ("x".to_string(), q.to_string()))
            .collect();
        assert_eq!(got, want);
        // Without teacher scores, an error naming the key.
        t.teacher_score = None;
        let e = pseudo_left_out(&t, Path::new("scores.parquet"), 2, |_, _| true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("scores.parquet") && e.contains("train.pseudo_keep"),
            "{e}"
        );
        assert_eq!(
            crate::data::pseudo::parse_query_id("pseudo:a:b:12"),
            Some(("a:b", 12))
        );
        assert_eq!(crate::data::pseudo::parse_query_id("q1"), None);
    }
}
