//! BEIR datasets: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`.
use crate::data::text_input::{read_texts_with, ReadPolicy, Skipped, TextFormat, TextRecord};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Texts by id, in file order.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    pub ids: Vec<String>,
    pub texts: Vec<String>,
    index: HashMap<String, usize>,
}

impl Texts {
    fn from_records(records: Vec<TextRecord>) -> Self {
        let mut t = Texts::default();
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

pub fn corpus_path(dir: &Path) -> PathBuf {
    dir.join("corpus.jsonl")
}

pub fn queries_path(dir: &Path) -> PathBuf {
    dir.join("queries.jsonl")
}

pub fn qrels_path(dir: &Path, split: &str) -> PathBuf {
    dir.join("qrels").join(format!("{split}.tsv"))
}

impl Dataset {
    /// Load `dir` with the qrels of `splits`. With `strict`, duplicate ids, empty texts and
    /// qrels naming unknown ids are errors naming file and line; otherwise they are
    /// skipped and counted in `warnings`. Malformed lines are always errors.
    pub fn load(dir: &Path, splits: &[&str], strict: bool) -> Result<Self> {
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
            let file = format!("qrels/{split}.tsv");
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

/// Read `query-id \t corpus-id \t score` lines; a first line whose score is not an integer
/// is a header. A repeated (query, doc) pair keeps its last grade, as pytrec_eval does.
pub fn read_qrels(
    path: &Path,
    queries: &Texts,
    corpus: &Texts,
    strict: bool,
) -> Result<(Qrels, Unknown)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut qrels = Qrels::new();
    let mut unknown = Vec::new();
    for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line_no = i + 1;
        let err = |message: String| Error::Input {
            path: path.to_path_buf(),
            line: line_no,
            message,
        };
        let bytes = line.map_err(|e| Error::io(path, e))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| err(format!("invalid UTF-8 ({e})")))?;
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = text.split('\t').collect();
        if cols.len() != 3 {
            return Err(err(format!(
                "expected 3 tab-separated columns (query-id, corpus-id, score), found {}",
                cols.len()
            )));
        }
        let Ok(score) = cols[2].trim().parse::<i64>() else {
            if line_no == 1 {
                continue; // header
            }
            return Err(err(format!("score `{}` is not an integer", cols[2])));
        };
        let (q, d) = (cols[0].trim(), cols[1].trim());
        let known_q = queries.position(q).is_some();
        let known_d = corpus.position(d).is_some();
        if !known_q || !known_d {
            if strict {
                let what = if known_q {
                    format!("document `{d}` is not in the corpus")
                } else {
                    format!("query `{q}` is not in queries.jsonl")
                };
                return Err(err(what));
            }
            unknown.push((line_no, q.to_string(), d.to_string()));
            continue;
        }
        qrels
            .entry(q.to_string())
            .or_default()
            .insert(d.to_string(), score);
    }
    Ok((qrels, unknown))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &str) {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn fixture(qrels: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "corpus.jsonl",
            "{\"_id\": \"d1\", \"title\": \"A\", \"text\": \"one\"}\n{\"_id\": \"d2\", \"text\": \"two\"}\n",
        );
        write(
            d.path(),
            "queries.jsonl",
            "{\"_id\": \"q1\", \"text\": \"which?\"}\n",
        );
        write(d.path(), "qrels/test.tsv", qrels);
        d
    }

    #[test]
    fn loads_a_dataset_with_header_and_grades() {
        let d = fixture("query-id\tcorpus-id\tscore\nq1\td2\t2\nq1\td1\t0\n");
        let ds = Dataset::load(d.path(), &["test"], true).unwrap();
        assert_eq!(ds.corpus.text("d1"), Some("A one"));
        assert_eq!(ds.qrels["test"]["q1"]["d2"], 2);
        assert_eq!(ds.qrels["test"]["q1"]["d1"], 0);
        assert!(ds.warnings.is_empty());
    }

    #[test]
    fn unknown_ids_in_qrels_are_errors_or_counted() {
        let d = fixture("query-id\tcorpus-id\tscore\nq1\td9\t1\nq7\td1\t1\nq1\td1\t1\n");
        let err = Dataset::load(d.path(), &["test"], true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test.tsv:2: document `d9` is not in the corpus"),
            "{err}"
        );
        let ds = Dataset::load(d.path(), &["test"], false).unwrap();
        assert_eq!(ds.warnings.unknown_qrels.len(), 2);
        assert_eq!(ds.qrels["test"]["q1"].len(), 1);
        assert_eq!(ds.warnings.summary().len(), 1);
    }

    #[test]
    fn malformed_qrels_lines_are_errors_even_when_lenient() {
        let d = fixture("q1\td1\n");
        let err = Dataset::load(d.path(), &["test"], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test.tsv:1: expected 3 tab-separated columns"),
            "{err}"
        );
        let d = fixture("h\th\th\nq1\td1\tx\n");
        let err = Dataset::load(d.path(), &["test"], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test.tsv:2: score `x` is not an integer"),
            "{err}"
        );
    }

    #[test]
    fn missing_split_names_the_file() {
        let d = fixture("q1\td1\t1\n");
        let err = Dataset::load(d.path(), &["train"], true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("qrels/train.tsv"), "{err}");
    }
}
