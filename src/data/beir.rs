//! BEIR datasets: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`; each file may be
//! gzip-compressed (`corpus.jsonl.gz`), and the qrels may be TREC qrels and be named
//! `qrels/<split>.txt` or `qrels/<split>.qrels` (`data::qrels` tells the forms apart).
use crate::data::qrels::QrelsReader;
use crate::data::text_input::{read_texts_with, ReadPolicy, Skipped, TextFormat, TextRecord};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Texts by id, in file order.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    pub ids: Vec<String>,
    pub texts: Vec<String>,
    index: HashMap<String, usize, ahash::RandomState>,
}

impl Texts {
    fn from_records(records: Vec<TextRecord>) -> Self {
        let mut t = Texts::default();
        t.ids.reserve(records.len());
        t.texts.reserve(records.len());
        t.index.reserve(records.len());
        for r in records {
            t.index.insert(r.id.clone(), t.ids.len());
            t.ids.push(r.id);
            t.texts.push(r.text);
        }
        t
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Append a text under a new id (the caller checks that `id` is new).
    pub fn push(&mut self, id: String, text: String) {
        self.index.insert(id.clone(), self.ids.len());
        self.ids.push(id);
        self.texts.push(text);
    }

    pub fn text(&self, id: &str) -> Option<&str> {
        self.position(id).map(|i| self.texts[i].as_str())
    }
}

/// Relevance judgements of one split: query id -> (doc id -> grade), sorted by id.
pub type Qrels = BTreeMap<String, BTreeMap<String, i64>>;

/// What a non-strict load left out, for the stage summary and the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadWarnings {
    pub corpus: Skipped,
    pub queries: Skipped,
    /// `(qrels file, line, query id, doc id)` of qrels naming an unknown query or document.
    pub unknown_qrels: Vec<(String, usize, String, String)>,
}

impl LoadWarnings {
    pub fn is_empty(&self) -> bool {
        self.corpus.is_empty() && self.queries.is_empty() && self.unknown_qrels.is_empty()
    }

    /// One line per kind of problem with counts, for logs.
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut push = |what: &str, n: usize| {
            if n > 0 {
                out.push(format!("{n} {what}"));
            }
        };
        push("duplicate corpus ids skipped", self.corpus.duplicates.len());
        push("empty documents skipped", self.corpus.empty.len());
        push("duplicate query ids skipped", self.queries.duplicates.len());
        push("empty queries skipped", self.queries.empty.len());
        push(
            "qrels naming an unknown query or document skipped",
            self.unknown_qrels.len(),
        );
        out
    }
}

/// A BEIR dataset with the qrels of the requested splits.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub corpus: Texts,
    pub queries: Texts,
    pub qrels: BTreeMap<String, Qrels>,
    pub warnings: LoadWarnings,
}

/// The names a file may have, in order of preference: each of `names`, then gzipped.
fn with_gz(names: &[String]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| [n.clone(), format!("{n}.gz")])
        .collect()
}

fn corpus_names() -> Vec<String> {
    with_gz(&["corpus.jsonl".into()])
}

fn queries_names() -> Vec<String> {
    with_gz(&["queries.jsonl".into()])
}

fn qrels_names(split: &str) -> Vec<String> {
    let names = ["tsv", "txt", "qrels"].map(|ext| format!("qrels/{split}.{ext}"));
    with_gz(&names)
}

/// The files of `dir` that `names` name, in the order of `names`.
fn present(dir: &Path, names: &[String]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect()
}

/// The first of `names` that is a file in `dir`, else the first name (the BEIR one, which
/// a missing-file error then names).
fn locate(dir: &Path, names: &[String]) -> PathBuf {
    present(dir, names)
        .into_iter()
        .next()
        .unwrap_or_else(|| dir.join(&names[0]))
}

/// The corpus file that is read: `corpus.jsonl` or `corpus.jsonl.gz`.
pub fn corpus_path(dir: &Path) -> PathBuf {
    locate(dir, &corpus_names())
}

/// The queries file that is read: `queries.jsonl` or `queries.jsonl.gz`.
pub fn queries_path(dir: &Path) -> PathBuf {
    locate(dir, &queries_names())
}

/// The qrels file of `split` that is read: `qrels/<split>.tsv`, `.txt` or `.qrels`, each
/// possibly with `.gz`.
pub fn qrels_path(dir: &Path, split: &str) -> PathBuf {
    locate(dir, &qrels_names(split))
}

/// Refuse a file that is there under two of its names (`corpus.jsonl` and
/// `corpus.jsonl.gz`, `qrels/test.tsv` and `qrels/test.txt`): which one is meant is not
/// guessed.
pub fn check_unique(dir: &Path, splits: &[&str]) -> Result<()> {
    let mut files = vec![corpus_names(), queries_names()];
    files.extend(splits.iter().map(|s| qrels_names(s)));
    for names in files {
        if let [a, b, ..] = present(dir, &names).as_slice() {
            let rel = |p: &Path| p.strip_prefix(dir).unwrap_or(p).display().to_string();
            return Err(Error::config(
                dir,
                format!(
                    "both `{}` and `{}` are there: keep one (which one is meant is not guessed)",
                    rel(a),
                    rel(b)
                ),
            ));
        }
    }
    Ok(())
}

impl Dataset {
    /// Load `dir` with the qrels of `splits`. With `strict`, duplicate ids, empty texts and
    /// qrels naming unknown ids are errors naming file and line; otherwise they are
    /// skipped and counted in `warnings`. Malformed lines are always errors.
    pub fn load(dir: &Path, splits: &[&str], strict: bool) -> Result<Self> {
        check_unique(dir, splits)?;
        let policy = ReadPolicy {
            strict,
            allow_empty: false,
        };
        let (corpus, corpus_skipped) =
            read_texts_with(&corpus_path(dir), TextFormat::Jsonl, policy)?;
        let (queries, queries_skipped) =
            read_texts_with(&queries_path(dir), TextFormat::Jsonl, policy)?;
        let corpus = Texts::from_records(corpus);
        let queries = Texts::from_records(queries);
        let mut warnings = LoadWarnings {
            corpus: corpus_skipped,
            queries: queries_skipped,
            unknown_qrels: Vec::new(),
        };
        let mut qrels = BTreeMap::new();
        for split in splits {
            let path = qrels_path(dir, split);
            let (q, unknown) = read_qrels(&path, &queries, &corpus, strict)?;
            let file = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .display()
                .to_string();
            warnings.unknown_qrels.extend(
                unknown
                    .into_iter()
                    .map(|(line, q, d)| (file.clone(), line, q, d)),
            );
            qrels.insert(split.to_string(), q);
        }
        Ok(Dataset {
            dir: dir.to_path_buf(),
            corpus,
            queries,
            qrels,
            warnings,
        })
    }
}

type Unknown = Vec<(usize, String, String)>;

/// Read the judgements of a qrels file (`data::qrels`: BEIR, with or without its header,
/// or TREC). A repeated (query, doc) pair keeps its last grade, as pytrec_eval does.
/// Judgements naming an unknown query or document are errors when `strict`, else returned
/// as `(line, query, doc)`.
pub fn read_qrels(
    path: &Path,
    queries: &Texts,
    corpus: &Texts,
    strict: bool,
) -> Result<(Qrels, Unknown)> {
    let mut reader = QrelsReader::open(path)?;
    let mut qrels = Qrels::new();
    let mut unknown = Vec::new();
    while let Some(j) = reader.next_judgement()? {
        let known_q = queries.position(&j.query).is_some();
        let known_d = corpus.position(&j.doc).is_some();
        if !known_q || !known_d {
            if strict {
                let what = if known_q {
                    format!("document `{}` is not in the corpus", j.doc)
                } else {
                    format!("query `{}` is not in the queries", j.query)
                };
                return Err(reader.error(what));
            }
            unknown.push((j.line, j.query, j.doc));
            continue;
        }
        qrels.entry(j.query).or_default().insert(j.doc, j.grade);
    }
    Ok((qrels, unknown))
}

#[cfg(test)]
#[path = "beir_tests.rs"]
mod tests;
