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
#[derive(Default)]
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
    pub fn new<S: AsRef<str>>(texts: impl IntoIterator<Item = S>) -> Self {
        let mut idf = Idf::default();
        for t in texts {
            idf.add(t.as_ref());
        }
        idf
    }

    /// Count one more document.
    pub fn add(&mut self, text: &str) {
        self.docs += 1.0;
        let mut words: Vec<String> = text.split_whitespace().map(word_key).collect();
        words.sort_unstable();
        words.dedup();
        for w in words.into_iter().filter(|w| !w.is_empty()) {
            *self.df.entry(w).or_default() += 1;
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
    // The corpus is read a chunk at a time (it may be on disk), once for the weights.
    let rows = 4096;
    let idf = match windows == Windows::Informative {
        true => {
            let mut idf = Idf::default();
            for chunk in ds.corpus.chunks(rows) {
                chunk?.0.iter().for_each(|t| idf.add(t));
            }
            Some(idf)
        }
        false => None,
    };
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
    for chunk in ds.corpus.chunks(rows) {
        let (texts, start) = chunk?;
        for (doc, text) in ds.corpus.ids[start..].iter().zip(&texts) {
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
#[path = "pseudo_tests.rs"]
mod tests;
