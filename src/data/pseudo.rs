//! Pseudo-queries cut from the corpus, for distillation on documents that the training
//! queries do not reach (a dataset still needs its queries file and training qrels): for
//! each document, up to `n` windows of 6 to 14 consecutive words (the length of a typical
//! question) from its sentences of at least [`MIN_WORDS`] words, one per sentence, then
//! (`per_sentence` above 1) more from each sentence where the earlier ones are not. The
//! document is the pseudo-query's labelled positive. This is the inverse cloze task of
//! Lee et al. (2019) used as a query generator, as GPL (Wang et al. 2022) uses a T5 one:
//! the teacher's scores over the student's candidates, not the label, carry what the
//! student learns, and no judged query of the evaluation split is used. Drawn per
//! document from the run seed and the document id, so that the set does not depend on
//! file order.
//!
//! [`Windows::Informative`] keeps the drawn sentence and length but places the window
//! where its words are rarest in the corpus (highest summed IDF), so that it names what
//! sets its document apart, as a real question does, rather than a generic stretch such
//! as "but one out of every six produced".
use std::collections::{HashMap, HashSet};

use crate::data::beir::Dataset;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

pub const MIN_WORDS: usize = 6;
pub const MAX_WORDS: usize = 14;

/// The id of pseudo-query `i` of document `doc`.
pub fn query_id(doc: &str, i: usize) -> String {
    format!("pseudo:{doc}:{i}")
}

/// Where a pseudo-query's window sits in its sentence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Windows {
    /// Drawn uniformly.
    #[default]
    Random,
    /// Where the summed IDF of its words is highest (the first such place).
    Informative,
    /// Drawn uniformly, then turned into a cloze question ([`as_question`]): one
    /// name or number is taken out as the answer and a question word put in front.
    Question,
}

impl Windows {
    /// Left out of run hashes, so that runs from before the key keep theirs.
    pub fn is_default(&self) -> bool {
        *self == Windows::default()
    }
}

/// The document and index of a pseudo-query id ([`query_id`]); `None` for other ids.
pub fn parse_query_id(id: &str) -> Option<(&str, usize)> {
    let (doc, i) = id.strip_prefix("pseudo:")?.rsplit_once(':')?;
    Some((doc, i.parse().ok()?))
}

/// Which documents get pseudo-queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every corpus document.
    #[default]
    All,
    /// Only documents that no query of the training split judges relevant (in BEIR's
    /// layout, those of the articles or topics that training does not reach), so that the
    /// pseudo-queries go where real ones are missing.
    Uncovered,
}

impl Scope {
    /// Left out of run hashes, so that runs from before the key keep theirs.
    pub fn is_default(&self) -> bool {
        *self == Scope::default()
    }
}

/// Inverse document frequencies of a corpus's words, `ln(N / (1 + df))`, a word being its
/// lowercased letters and digits.
pub struct Idf {
    docs: f64,
    df: HashMap<String, u32>,
}

fn word_key(w: &str) -> String {
    w.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

impl Idf {
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let (mut docs, mut df) = (0usize, HashMap::<String, u32>::new());
        for t in texts {
            docs += 1;
            let mut words: Vec<String> = t.split_whitespace().map(word_key).collect();
            words.sort_unstable();
            words.dedup();
            for w in words.into_iter().filter(|w| !w.is_empty()) {
                *df.entry(w).or_default() += 1;
            }
        }
        Idf {
            docs: docs as f64,
            df,
        }
    }

    /// A word without letters or digits weighs nothing.
    pub fn of(&self, word: &str) -> f64 {
        let k = word_key(word);
        if k.is_empty() {
            return 0.0;
        }
        let df = self.df.get(&k).copied().unwrap_or(0) as f64;
        (self.docs / (1.0 + df)).ln()
    }
}

/// Start of the `len`-word window of `words` with the highest summed IDF (the first).
fn informative_start(words: &[&str], len: usize, idf: &Idf) -> usize {
    let w: Vec<f64> = words.iter().map(|x| idf.of(x)).collect();
    let mut sum: f64 = w[..len].iter().sum();
    let (mut best, mut best_sum) = (0, sum);
    for s in 1..=words.len() - len {
        sum += w[s + len - 1] - w[s - 1];
        if sum > best_sum + 1e-9 {
            (best, best_sum) = (s, sum);
        }
    }
    best
}

/// Whether a word can be (part of) an answer: it has a digit, or starts with a capital
/// (`sentence_initial` words only with a digit, their capital saying nothing).
fn answerish(word: &str, sentence_initial: bool) -> bool {
    let core = word.trim_matches(|c: char| !c.is_alphanumeric());
    core.chars().any(|c| c.is_ascii_digit())
        || (!sentence_initial && core.chars().next().is_some_and(char::is_uppercase))
}

/// The question word for an answer: a year asks "when", another number "how many", a
/// name "what".
fn question_word(answer: &[&str]) -> &'static str {
    let cores: Vec<&str> = answer
        .iter()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .collect();
    let year = |c: &str| c.len() == 4 && c.parse::<u32>().is_ok_and(|y| (1000..2100).contains(&y));
    if cores.len() == 1 && year(cores[0]) {
        "when"
    } else if cores.iter().any(|c| c.chars().any(|x| x.is_ascii_digit())) {
        "how many"
    } else {
        "what"
    }
}

/// A window of document `text` as a cloze question: one maximal run of [`answerish`]
/// words, chosen by `rng` among those that occur once in `text` (a name the document keeps
/// repeating is its topic, which questions name, not an answer) and leave at least
/// [`MIN_WORDS`]` - 2` words, is taken out; the question word goes in front and a `?` at
/// the end. `at_sentence_start`: the window's first word begins its sentence. A window
/// without such a run stays as it is.
pub fn as_question(
    window: &[&str],
    at_sentence_start: bool,
    text: &str,
    rng: &mut SplitMix64,
) -> String {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < window.len() {
        let start = i;
        while i < window.len() && answerish(window[i], at_sentence_start && i == 0) {
            i += 1;
        }
        if i > start {
            let answer = window[start..i].join(" ");
            let answer = answer.trim_matches(|c: char| !c.is_alphanumeric());
            if window.len() - (i - start) >= MIN_WORDS - 2 && text.matches(answer).count() == 1 {
                runs.push((start, i));
            }
        } else {
            i += 1;
        }
    }
    if runs.is_empty() {
        return window.join(" ");
    }
    let (a, b) = runs[rng.below(runs.len() as u64) as usize];
    let mut rest: Vec<&str> = window[..a].iter().chain(&window[b..]).copied().collect();
    if let Some(last) = rest.last_mut() {
        *last = last.trim_end_matches(|c: char| !c.is_alphanumeric());
    }
    format!("{} {}?", question_word(&window[a..b]), rest.join(" "))
}

/// Up to `n` pseudo-queries of one document: a window from each sentence (in a seeded
/// order), then, with `per_sentence` above 1, a second window from each sentence in the
/// widest stretch of words its earlier windows leave (when that stretch has at least
/// [`MIN_WORDS`] words), and so on. `idf` places the windows ([`Windows::Informative`]),
/// else they are drawn; `question` turns each into a cloze question
/// ([`Windows::Question`]), from a generator of its own so that the windows are those of
/// [`Windows::Random`].
pub fn for_document(
    seed: u64,
    doc: &str,
    text: &str,
    n: usize,
    per_sentence: usize,
    idf: Option<&Idf>,
    question: bool,
) -> Vec<String> {
    let mut sentences: Vec<Vec<&str>> = split_sentences(text)
        .into_iter()
        .map(|s| s.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() >= MIN_WORDS)
        .collect();
    let mut rng = SplitMix64::for_key(seed, doc);
    rng.shuffle(&mut sentences);
    // (sentence, start, length) of each window, in the order they are drawn.
    let mut windows: Vec<(usize, usize, usize)> = Vec::new();
    'passes: for pass in 0..per_sentence {
        for (s, words) in sentences.iter().enumerate() {
            if windows.len() >= n {
                break 'passes;
            }
            let (from, room) = if pass == 0 {
                (0, words.len())
            } else {
                let placed = windows.iter().filter(|w| w.0 == s).map(|w| (w.1, w.2));
                match widest_gap(words.len(), placed) {
                    Some(gap) if gap.1 >= MIN_WORDS => gap,
                    _ => continue,
                }
            };
            let longest = MAX_WORDS.min(room);
            let len = MIN_WORDS + rng.below((longest - MIN_WORDS + 1) as u64) as usize;
            let drawn = from + rng.below((room - len + 1) as u64) as usize;
            let start = idf.map_or(drawn, |idf| {
                from + informative_start(&words[from..from + room], len, idf)
            });
            windows.push((s, start, len));
        }
    }
    windows
        .into_iter()
        .enumerate()
        .map(|(i, (s, start, len))| {
            let window = &sentences[s][start..start + len];
            if question {
                let mut qrng = SplitMix64::for_key(seed, &query_id(doc, i));
                as_question(window, start == 0, text, &mut qrng)
            } else {
                window.join(" ")
            }
        })
        .collect()
}

/// (start, length) of the longest run of a `len`-word sentence's words that no window of
/// `placed` (start, length) covers; the first of equals; `None` when all are covered.
fn widest_gap(len: usize, placed: impl Iterator<Item = (usize, usize)>) -> Option<(usize, usize)> {
    let mut covered = vec![false; len];
    for (start, n) in placed {
        covered[start..start + n].iter_mut().for_each(|c| *c = true);
    }
    let mut best: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < len {
        if covered[i] {
            i += 1;
            continue;
        }
        let j = (i..len).find(|&j| covered[j]).unwrap_or(len);
        if best.is_none_or(|b| j - i > b.1) {
            best = Some((i, j - i));
        }
        i = j;
    }
    best
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

/// Add up to `n` pseudo-queries per corpus document in `scope` (`per_sentence` windows
/// per sentence of at least [`MIN_WORDS`] words at most, so short documents get fewer;
/// [`for_document`]) to `ds`'s queries, and to the
/// qrels of `split` with their document as the one positive. A pseudo-query id that is
/// already a query id is an error naming it. For [`Scope::Uncovered`], `split`'s qrels
/// must be loaded; for [`Scope::All`], they get the pseudo-queries when loaded.
pub fn add_to(
    ds: &mut Dataset,
    split: &str,
    n: usize,
    per_sentence: usize,
    windows: Windows,
    scope: Scope,
    seed: u64,
) -> Result<usize> {
    let idf = (windows == Windows::Informative)
        .then(|| Idf::new(ds.corpus.texts.iter().map(String::as_str)));
    let covered: HashSet<&str> = match (scope, ds.qrels.get(split)) {
        (Scope::All, _) => HashSet::new(),
        (Scope::Uncovered, Some(qrels)) => qrels
            .values()
            .flat_map(|docs| docs.iter().filter(|(_, &g)| g > 0).map(|(d, _)| d.as_str()))
            .collect(),
        (Scope::Uncovered, None) => {
            return Err(Error::Config {
                path: crate::data::beir::qrels_path(&ds.dir, split),
                message: "pseudo_scope = \"uncovered\" needs the training qrels loaded".into(),
            })
        }
    };
    let mut records = Vec::new();
    let question = windows == Windows::Question;
    for (doc, text) in ds.corpus.ids.iter().zip(&ds.corpus.texts) {
        if covered.contains(doc.as_str()) {
            continue;
        }
        for (i, q) in for_document(seed, doc, text, n, per_sentence, idf.as_ref(), question)
            .into_iter()
            .enumerate()
        {
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
        let qs = for_document(7, "d1", text, 5, 1, None, false);
        assert_eq!(qs.len(), 2, "{qs:?}");
        for q in &qs {
            let n = q.split_whitespace().count();
            assert!((MIN_WORDS..=MAX_WORDS).contains(&n), "{q}");
            assert!(text.contains(q.as_str()), "{q}");
        }
        // Deterministic for a seed and a document id; another seed draws differently.
        assert_eq!(qs, for_document(7, "d1", text, 5, 1, None, false));
        let other: Vec<_> = (0..8)
            .map(|s| for_document(s, "d1", text, 1, 1, None, false))
            .collect();
        assert!(other.iter().any(|o| o != &other[0]));
    }

    #[test]
    fn further_windows_per_sentence_fill_the_widest_uncovered_stretch() {
        let text = "one two three four five six seven eight nine ten eleven twelve thirteen \
                    fourteen fifteen sixteen seventeen eighteen nineteen twenty. \
                    alpha beta gamma delta epsilon zeta eta. \
                    a b c d e f g h i j k l m n o p q r s t u v w x y z aa bb cc dd.";
        let sentences: Vec<Vec<&str>> = split_sentences(text)
            .into_iter()
            .map(|s| s.split_whitespace().collect())
            .collect();
        // Where a window sits: (sentence, start).
        let locate = |q: &str| -> (usize, usize) {
            let w: Vec<&str> = q.split_whitespace().collect();
            for (s, words) in sentences.iter().enumerate() {
                if let Some(i) =
                    (0..=words.len().saturating_sub(w.len())).find(|&i| words[i..].starts_with(&w))
                {
                    return (s, i);
                }
            }
            panic!("{q} is no window of the text");
        };
        for seed in 0..20 {
            let one = for_document(seed, "d", text, 10, 1, None, false);
            let three = for_document(seed, "d", text, 10, 3, None, false);
            // The first pass is the one-per-sentence set, in the same order.
            assert_eq!(one.len(), 3);
            assert_eq!(three[..3], one[..]);
            // Later windows: within their sentence, clear of its earlier windows, in the
            // widest stretch they leave; a sentence whose stretches are all too short
            // gets none.
            let mut placed: Vec<Vec<(usize, usize)>> = vec![Vec::new(); 3];
            for q in &three {
                let n = q.split_whitespace().count();
                assert!((MIN_WORDS..=MAX_WORDS).contains(&n), "{q}");
                let (s, start) = locate(q);
                if !placed[s].is_empty() {
                    let gap = widest_gap(sentences[s].len(), placed[s].iter().copied()).unwrap();
                    assert!(
                        start >= gap.0 && start + n <= gap.0 + gap.1,
                        "{q} outside {gap:?}"
                    );
                }
                placed[s].push((start, n));
            }
            // The 7-word sentence has room for one window only; the 30-word one for at
            // least two (a first window leaves 16 words, 8 of them on one side).
            assert_eq!(placed[1].len(), 1);
            assert!(placed[2].len() >= 2, "{placed:?}");
            // `n` caps the pool, first passes first.
            assert_eq!(for_document(seed, "d", text, 4, 3, None, false), three[..4]);
        }
        assert_eq!(widest_gap(10, [(2, 3), (7, 1)].into_iter()), Some((0, 2)));
        assert_eq!(widest_gap(10, [(0, 3), (5, 1)].into_iter()), Some((6, 4)));
        assert_eq!(widest_gap(4, [(0, 4)].into_iter()), None);
    }

    #[test]
    fn informative_windows_sit_on_the_rarest_words() {
        let texts = [
            "the river and the bank of the town",
            "the river and the bank of the hill",
            "the cat and the dog of the town",
        ];
        let idf = Idf::new(texts);
        // df: the 3, of 3, and 3, river 2, bank 2, town 2, cat 1; unseen words 0.
        assert!((idf.of("The,") - (3.0f64 / 4.0).ln()).abs() < 1e-12);
        assert!((idf.of("Pickawillany") - 3.0f64.ln()).abs() < 1e-12);
        assert!((idf.of("cat") - (3.0f64 / 2.0).ln()).abs() < 1e-12);
        assert_eq!(idf.of("--"), 0.0);
        let words: Vec<&str> = "the of and the Miami rivers near Pickawillany the of and the"
            .split_whitespace()
            .collect();
        assert_eq!(informative_start(&words, 4, &idf), 4);
        // Ties go to the first: "and the Miami ... Pickawillany" and "the Miami ...
        // Pickawillany the" weigh the same.
        assert_eq!(informative_start(&words, 6, &idf), 2);
        assert_eq!(informative_start(&words, words.len(), &idf), 0);
        // Through for_document: the same sentence and length as the drawn window.
        let text = "The of and the Miami rivers near Pickawillany the of and the cat.";
        for seed in 0..20 {
            let drawn = for_document(seed, "d", text, 1, 1, None, false);
            let placed = for_document(seed, "d", text, 1, 1, Some(&idf), false);
            assert_eq!(
                drawn[0].split_whitespace().count(),
                placed[0].split_whitespace().count()
            );
            assert!(placed[0].contains("Pickawillany"), "{placed:?}");
        }
    }

    #[test]
    fn question_windows_take_out_one_answer() {
        let words = |s: &'static str| s.split_whitespace().collect::<Vec<_>>();
        let mut rng = SplitMix64::new(1);
        // One run each: a year, a number, a name; the window's capital first word is no
        // answer when it starts its sentence.
        let w = words("In 1066 the army crossed the channel quickly.");
        assert_eq!(
            as_question(&w, true, &w.join(" "), &mut rng),
            "when In the army crossed the channel quickly?"
        );
        let w = words("the army had 7,000 men and many horses");
        assert_eq!(
            as_question(&w, false, &w.join(" "), &mut rng),
            "how many the army had men and many horses?"
        );
        let w = words("champion Denver Broncos defeated the other champion,");
        assert_eq!(
            as_question(&w, false, &w.join(" "), &mut rng),
            "what champion defeated the other champion?"
        );
        // Mid-sentence, a capital first word is a name.
        assert_eq!(
            as_question(
                &words("Denver defeated the other champion easily"),
                false,
                "Denver defeated the other champion easily",
                &mut rng
            ),
            "what defeated the other champion easily?"
        );
        // Nothing to take out, or a run that would leave too little: unchanged.
        let w = words("the army crossed the channel quickly");
        assert_eq!(as_question(&w, false, &w.join(" "), &mut rng), w.join(" "));
        let w = words("The Royal Navy Fleet Air Arm crossed");
        assert_eq!(as_question(&w, false, &w.join(" "), &mut rng), w.join(" "));
        // A name its document repeats is its topic, not an answer.
        let w = words("the army had 7,000 men and many horses");
        assert_eq!(
            as_question(
                &w,
                false,
                "7,000 men. the army had 7,000 men and many horses",
                &mut rng
            ),
            w.join(" ")
        );
        // Any of three runs, as the generator draws; the others stay.
        let w = words("the Normans reached Sicily in 1061 with few ships");
        let drawn: std::collections::BTreeSet<String> = (0..32)
            .map(|s| as_question(&w, false, &w.join(" "), &mut SplitMix64::new(s)))
            .collect();
        let expect = [
            "when the Normans reached Sicily in with few ships?",
            "what the reached Sicily in 1061 with few ships?",
            "what the Normans reached in 1061 with few ships?",
        ];
        assert_eq!(drawn, expect.iter().map(|e| e.to_string()).collect());
        // Through for_document: the windows of Windows::Random, each as a question.
        let text = "The Normans reached Sicily in 1061 with a few ships and men. \
                    Their leader Robert Guiscard took Palermo after a long siege.";
        let plain = for_document(3, "d", text, 2, 1, None, false);
        let asked = for_document(3, "d", text, 2, 1, None, true);
        for (p, q) in plain.iter().zip(&asked) {
            assert!(q.ends_with('?'), "{q}");
            let p: Vec<&str> = p.split_whitespace().collect();
            let q: Vec<&str> = q.trim_end_matches('?').split_whitespace().collect();
            // The question word, then the window's words in order less one run.
            assert!(
                q.len() < p.len() + 2 && q.len() >= p.len() - 3,
                "{p:?} {q:?}"
            );
            let body = &q[if q[0] == "how" { 2 } else { 1 }..];
            let mut it = p.iter();
            assert!(
                body.iter().all(
                    |w| it.any(|x| x.trim_end_matches(|c: char| !c.is_alphanumeric())
                        == w.trim_end_matches(|c: char| !c.is_alphanumeric()))
                ),
                "{p:?} {q:?}"
            );
        }
        assert_eq!(asked, for_document(3, "d", text, 2, 1, None, true));
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
        assert_eq!(
            add_to(&mut ds, "train", 3, 1, Windows::Random, Scope::All, 42).unwrap(),
            1
        );
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
        let e = add_to(&mut ds, "train", 3, 1, Windows::Random, Scope::All, 42)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`pseudo:d1:0`") && e.contains("queries.jsonl"),
            "{e}"
        );
    }

    #[test]
    fn the_uncovered_scope_skips_documents_that_training_queries_judge_relevant() {
        let d = tempfile::tempdir().unwrap();
        let long = |id: &str| {
            format!("{{\"_id\": \"{id}\", \"text\": \"The river bank of {id} was flooded after the long storm.\"}}\n")
        };
        let corpus: String = ["d1", "d2", "d3"].iter().map(|i| long(i)).collect();
        std::fs::write(d.path().join("corpus.jsonl"), corpus).unwrap();
        std::fs::write(
            d.path().join("queries.jsonl"),
            "{\"_id\": \"q1\", \"text\": \"why?\"}\n",
        )
        .unwrap();
        std::fs::create_dir_all(d.path().join("qrels")).unwrap();
        // d1 is judged relevant; d2 is judged, but not relevant (grade 0).
        std::fs::write(d.path().join("qrels/train.tsv"), "q1\td1\t1\nq1\td2\t0\n").unwrap();
        std::fs::write(d.path().join("qrels/test.tsv"), "q1\td3\t1\n").unwrap();
        let load = |splits: &[&str]| Dataset::load(d.path(), splits, true).unwrap();
        let mut all = load(&["train"]);
        assert_eq!(
            add_to(&mut all, "train", 1, 1, Windows::Random, Scope::All, 7).unwrap(),
            3
        );
        let mut some = load(&["train"]);
        assert_eq!(
            add_to(
                &mut some,
                "train",
                1,
                1,
                Windows::Random,
                Scope::Uncovered,
                7
            )
            .unwrap(),
            2
        );
        assert!(some.queries.position(&query_id("d1", 0)).is_none());
        // The documents it keeps get the pseudo-queries of the all scope.
        for doc in ["d2", "d3"] {
            let id = query_id(doc, 0);
            assert_eq!(some.queries.text(&id), all.queries.text(&id));
            assert_eq!(some.qrels["train"][&id][doc], 1);
        }
        // Without the training qrels the scope cannot be decided: an error naming them.
        let mut bare = load(&["test"]);
        let e = add_to(
            &mut bare,
            "train",
            1,
            1,
            Windows::Random,
            Scope::Uncovered,
            7,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("train.tsv") && e.contains("uncovered"), "{e}");
        // Through the pipeline's dataset, a stage that loads only the evaluation split
        // sees the same pseudo-queries, and no training qrels.
        let r = crate::pipeline::config::DatasetRef {
            name: "x".into(),
            path: d.path().to_path_buf(),
            train_split: "train".into(),
            eval_split: "test".into(),
            strict: true,
            pseudo_queries: 1,
            pseudo_windows: Windows::Random,
            pseudo_scope: Scope::Uncovered,
            pseudo_per_sentence: 1,
            watch: false,
        };
        let eval = r.load(&["test"], 7).unwrap();
        assert_eq!(eval.queries.len(), some.queries.len());
        assert_eq!(eval.qrels.keys().collect::<Vec<_>>(), vec!["test"]);
    }
}
