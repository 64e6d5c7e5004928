//! Pseudo-queries cut from the corpus, for distillation on documents that the training
//! queries do not reach (a dataset still needs its queries file and training qrels): for
//! each document, up to `n` of its sentences (of at least
//! [`MIN_WORDS`] words), and from each a window of 6 to 14 consecutive words, the length
//! of a typical question. The document is the pseudo-query's labelled positive. This is
//! the inverse cloze task of Lee et al. (2019) used as a query generator, as GPL (Wang et
//! al. 2022) uses a T5 one: the teacher's scores over the student's candidates, not the
//! label, carry what the student learns, and no judged query of the evaluation split is
//! used. Drawn per document from the run seed and the document id, so that the set does
//! not depend on file order.
use crate::data::beir::Dataset;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

pub const MIN_WORDS: usize = 6;
pub const MAX_WORDS: usize = 14;

/// The id of pseudo-query `i` of document `doc`.
pub fn query_id(doc: &str, i: usize) -> String {
    format!("pseudo:{doc}:{i}")
}

/// Up to `n` pseudo-queries of one document.
pub fn for_document(seed: u64, doc: &str, text: &str, n: usize) -> Vec<String> {
    let mut sentences: Vec<Vec<&str>> = split_sentences(text)
        .into_iter()
        .map(|s| s.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() >= MIN_WORDS)
        .collect();
    let mut rng = SplitMix64::for_key(seed, doc);
    rng.shuffle(&mut sentences);
    sentences
        .iter()
        .take(n)
        .map(|words| {
            let longest = MAX_WORDS.min(words.len());
            let len = MIN_WORDS + rng.below((longest - MIN_WORDS + 1) as u64) as usize;
            let start = rng.below((words.len() - len + 1) as u64) as usize;
            words[start..start + len].join(" ")
        })
        .collect()
}

/// Sentences: text up to a `.`, `!` or `?` followed by whitespace (or the end).
fn split_sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '.' | '!' | '?') && chars.peek().is_none_or(|(_, n)| n.is_whitespace()) {
            let end = i + c.len_utf8();
            out.push(text[start..end].trim());
            start = end;
        }
    }
    out.push(text[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// Add `n` pseudo-queries per corpus document to `ds`'s queries, and to the qrels of
/// `split` (when loaded) with their document as the one positive. A pseudo-query id that
/// is already a query id is an error naming it.
pub fn add_to(ds: &mut Dataset, split: &str, n: usize, seed: u64) -> Result<usize> {
    let mut records = Vec::new();
    for (doc, text) in ds.corpus.ids.iter().zip(&ds.corpus.texts) {
        for (i, q) in for_document(seed, doc, text, n).into_iter().enumerate() {
            let id = query_id(doc, i);
            if ds.queries.position(&id).is_some() {
                return Err(Error::Config {
                    path: crate::data::beir::queries_path(&ds.dir),
                    message: format!(
                        "query id `{id}` collides with a pseudo-query id; rename it or set pseudo_queries = 0"
                    ),
                });
            }
            records.push((id, q, doc.clone()));
        }
    }
    let added = records.len();
    for (id, q, doc) in records {
        ds.queries.push(id.clone(), q);
        if let Some(qrels) = ds.qrels.get_mut(split) {
            qrels.entry(id).or_default().insert(doc, 1);
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_on_terminal_punctuation_only() {
        let s = split_sentences("Dr. Smith met 3.5 people. Why? Because! end");
        assert_eq!(
            s,
            vec!["Dr.", "Smith met 3.5 people.", "Why?", "Because!", "end"]
        );
    }

    #[test]
    fn windows_come_from_one_long_enough_sentence() {
        let text =
            "Short one. The quick brown fox jumps over the lazy dog near the river bank today. \
                    Another fairly long sentence with more than six words in it here.";
        let qs = for_document(7, "d1", text, 5);
        assert_eq!(qs.len(), 2, "{qs:?}");
        for q in &qs {
            let n = q.split_whitespace().count();
            assert!((MIN_WORDS..=MAX_WORDS).contains(&n), "{q}");
            assert!(text.contains(q.as_str()), "{q}");
        }
        // Deterministic for a seed and a document id; another seed draws differently.
        assert_eq!(qs, for_document(7, "d1", text, 5));
        let other: Vec<_> = (0..8).map(|s| for_document(s, "d1", text, 1)).collect();
        assert!(other.iter().any(|o| o != &other[0]));
    }

    fn dataset(queries: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let corpus = "{\"_id\": \"d1\", \"text\": \"The river bank was flooded after the long storm last week. It rained.\"}\n\
                      {\"_id\": \"d2\", \"text\": \"Too short.\"}\n";
        std::fs::write(d.path().join("corpus.jsonl"), corpus).unwrap();
        std::fs::write(d.path().join("queries.jsonl"), queries).unwrap();
        std::fs::create_dir_all(d.path().join("qrels")).unwrap();
        std::fs::write(d.path().join("qrels/train.tsv"), "q1\td2\t1\n").unwrap();
        d
    }

    #[test]
    fn pseudo_queries_join_the_training_split_with_their_document() {
        let d = dataset("{\"_id\": \"q1\", \"text\": \"why?\"}\n");
        let mut ds = Dataset::load(d.path(), &["train"], true).unwrap();
        assert_eq!(add_to(&mut ds, "train", 3, 42).unwrap(), 1);
        let id = query_id("d1", 0);
        let q = ds.queries.text(&id).unwrap();
        assert!(ds.corpus.text("d1").unwrap().contains(q), "{q}");
        assert_eq!(ds.qrels["train"][&id].len(), 1);
        assert_eq!(ds.qrels["train"][&id]["d1"], 1);
        assert_eq!(ds.qrels["train"]["q1"]["d2"], 1);
        // A dataset whose own query ids look like ours is refused, naming the id.
        let d = dataset(
            "{\"_id\": \"q1\", \"text\": \"why?\"}\n{\"_id\": \"pseudo:d1:0\", \"text\": \"x\"}\n",
        );
        let mut ds = Dataset::load(d.path(), &["train"], true).unwrap();
        let e = add_to(&mut ds, "train", 3, 42).unwrap_err().to_string();
        assert!(
            e.contains("`pseudo:d1:0`") && e.contains("queries.jsonl"),
            "{e}"
        );
    }
}
