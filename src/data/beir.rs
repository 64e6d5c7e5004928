//! BEIR datasets: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`; each file may be
//! gzip-compressed (`corpus.jsonl.gz`), and the qrels may be TREC qrels and be named
//! `qrels/<split>.txt` or `qrels/<split>.qrels` (`data::qrels` tells the forms apart).
use crate::data::lines::is_gzip;
use crate::data::qrels::QrelsReader;
use crate::data::text_input::{parse_beir_line, ReadPolicy, Skipped, TextFormat, TextReader};
use crate::error::{Error, Result};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Texts by id, in file order. A plain JSONL corpus stays on disk: memory holds its ids
/// and where each line lies, and a text is read back from its line when asked for (so a
/// stage's memory does not grow with the corpus's text). Other files (queries, gzipped
/// corpora) and texts pushed later are held in memory.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    pub ids: Vec<String>,
    /// The first `file.len()` texts, on disk.
    file: Option<Arc<TextFile>>,
    /// The texts after those on disk.
    memory: Vec<String>,
    index: HashMap<String, usize, ahash::RandomState>,
}

/// Where the texts on disk lie: one JSONL line each, read back and parsed again. The file
/// stays open, so a file replaced by another (renamed over it) is still read as loaded; a
/// file written in place shows in its length or modification time, checked at each read.
#[derive(Debug)]
struct TextFile {
    path: PathBuf,
    file: std::fs::File,
    stamp: (u64, Option<std::time::SystemTime>),
    offsets: Vec<u64>,
    lens: Vec<u32>,
}

/// A file's length and modification time.
fn stamp(file: &std::fs::File) -> std::io::Result<(u64, Option<std::time::SystemTime>)> {
    let m = file.metadata()?;
    Ok((m.len(), m.modified().ok()))
}

impl TextFile {
    fn len(&self) -> usize {
        self.offsets.len()
    }

    /// The texts of rows `rows`, whose ids must be `ids`: one read of the bytes from the
    /// first line to the last, each line parsed again (on rayon's pool), then the file's
    /// stamp checked ([`TextFile::check_stamp`]). A line that no longer parses, or holds
    /// another id, means the file changed since it was loaded.
    fn read(&self, rows: Range<usize>, ids: &[String]) -> Result<Vec<String>> {
        let texts = self.read_unchecked(rows.clone(), ids)?;
        self.check_stamp(self.offsets.get(rows.start).copied().unwrap_or(0))?;
        Ok(texts)
    }

    /// The file's length and modification time are those it had when it was opened (the
    /// error names the line at `offset`).
    fn check_stamp(&self, offset: u64) -> Result<()> {
        match stamp(&self.file) {
            Ok(s) if s == self.stamp => Ok(()),
            _ => Err(self.changed(
                offset,
                "its length or modification time is not what it was".into(),
            )),
        }
    }

    /// [`TextFile::read`] without the stamp check.
    fn read_unchecked(&self, rows: Range<usize>, ids: &[String]) -> Result<Vec<String>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let from = self.offsets[rows.start];
        let to = self.offsets[rows.end - 1] + u64::from(self.lens[rows.end - 1]);
        let mut bytes = vec![0u8; (to - from) as usize];
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(&mut bytes, from)
            .map_err(|e| self.changed(from, format!("cannot read it again ({e})")))?;
        let parse = |(i, id): (usize, &String)| {
            let at = (self.offsets[i] - from) as usize;
            let raw = &bytes[at..at + self.lens[i] as usize];
            match std::str::from_utf8(raw).ok().map(parse_beir_line) {
                Some(Ok(r)) if r.id == *id => Ok(r.text),
                _ => Err(self.changed(self.offsets[i], format!("`{id}` is no longer there"))),
            }
        };
        let rows: Vec<(usize, &String)> = rows.zip(ids).collect();
        if rows.len() < 64 {
            rows.into_iter().map(parse).collect()
        } else {
            in_order(&rows, |&row| parse(row))
        }
    }

    /// The error for a file that changed under a run, naming the line at `offset` in the
    /// file as it now is (counted through the open file, a block at a time).
    fn changed(&self, offset: u64, what: String) -> Error {
        use std::os::unix::fs::FileExt;
        let (mut line, mut at, mut block) = (1, 0u64, vec![0u8; 1 << 20]);
        while at < offset {
            let want = block.len().min((offset - at) as usize);
            match self.file.read_at(&mut block[..want], at) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    line += block[..n].iter().filter(|&&b| b == b'\n').count();
                    at += n as u64;
                }
            }
        }
        Error::Input {
            path: self.path.clone(),
            line,
            message: format!(
                "the file changed after it was loaded: {what} (rerun once it no longer changes)"
            ),
        }
    }
}

impl Texts {
    /// Every record of `path` that `policy` keeps; with `on_disk` (a plain JSONL file),
    /// the texts are left in the file.
    fn read(path: &Path, policy: ReadPolicy, on_disk: bool) -> Result<(Self, Skipped)> {
        // Opened, and its stamp taken, before the reader opens it: if it is replaced in
        // between, the two are different files (checked below); if it is written while
        // its lines are read, the stamp tells on the first read.
        let opened = match on_disk {
            true => {
                let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                let stamp = stamp(&file).map_err(|e| Error::io(path, e))?;
                Some((file, stamp))
            }
            false => None,
        };
        let mut reader = TextReader::open(path, TextFormat::Jsonl, policy)?;
        if on_disk {
            reader = reader.ids_only()?;
        }
        let mut t = Texts::default();
        let mut offsets = Vec::new();
        let mut lens = Vec::new();
        while let Some((record, span)) = reader.next_record_at()? {
            t.ids.push(record.id);
            if on_disk {
                offsets.push(span.offset);
                lens.push(span.len);
            } else {
                t.memory.push(record.text);
            }
        }
        if let Some((file, stamp)) = opened {
            use std::os::unix::fs::MetadataExt;
            let same = match (file.metadata(), std::fs::metadata(path)) {
                (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
                _ => false,
            };
            if !same {
                return Err(Error::io(
                    path,
                    std::io::Error::other("the file was replaced while it was read; rerun"),
                ));
            }
            offsets.shrink_to_fit();
            lens.shrink_to_fit();
            t.file = Some(Arc::new(TextFile {
                path: path.to_path_buf(),
                file,
                stamp,
                offsets,
                lens,
            }));
        }
        t.ids.shrink_to_fit();
        t.memory.shrink_to_fit();
        // The reader's ids seen are the index: the ids are not copied a third time.
        let (index, skipped) = reader.into_index();
        t.index = index;
        Ok((t, skipped))
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether the texts are read back from their file when asked for.
    pub fn on_disk(&self) -> bool {
        self.file.is_some()
    }

    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Append a text under a new id (the caller checks that `id` is new); it is held in
    /// memory.
    pub fn push(&mut self, id: String, text: String) {
        self.index.insert(id.clone(), self.ids.len());
        self.ids.push(id);
        self.memory.push(text);
    }

    fn on_disk_len(&self) -> usize {
        self.file.as_ref().map_or(0, |f| f.len())
    }

    /// The texts of rows `rows`, in order.
    pub fn range(&self, rows: Range<usize>) -> Result<Vec<Cow<'_, str>>> {
        let split = self.on_disk_len().clamp(rows.start, rows.end);
        let mut out: Vec<Cow<str>> = match &self.file {
            Some(f) if split > rows.start => f
                .read(rows.start..split, &self.ids[rows.start..split])?
                .into_iter()
                .map(Cow::Owned)
                .collect(),
            _ => Vec::new(),
        };
        let after = self.on_disk_len();
        if rows.end > after {
            out.extend(
                self.memory[split - after..rows.end - after]
                    .iter()
                    .map(|t| Cow::Borrowed(t.as_str())),
            );
        }
        Ok(out)
    }

    /// Every text, in order.
    pub fn all(&self) -> Result<Vec<Cow<'_, str>>> {
        self.range(0..self.len())
    }

    /// The text of row `i`.
    pub fn get(&self, i: usize) -> Result<Cow<'_, str>> {
        Ok(self
            .range(i..i + 1)?
            .pop()
            .unwrap_or_else(|| unreachable!("one row was read")))
    }

    /// The text of `id`, `None` when there is no such id.
    pub fn text(&self, id: &str) -> Result<Option<Cow<'_, str>>> {
        self.position(id).map(|i| self.get(i)).transpose()
    }

    /// The texts of rows `rows` (any order, repeats allowed), read on rayon's pool; the
    /// file's stamp is checked once, after them all.
    pub fn gather(&self, rows: &[usize]) -> Result<Vec<Cow<'_, str>>> {
        let on_disk = self.on_disk_len();
        let texts = in_order(rows, |&i| match &self.file {
            Some(f) if i < on_disk => f
                .read_unchecked(i..i + 1, &self.ids[i..i + 1])
                .map(|mut t| Cow::Owned(t.pop().unwrap_or_default())),
            _ => self.get(i),
        })?;
        if let (Some(f), Some(&first)) = (&self.file, rows.iter().find(|&&i| i < on_disk)) {
            f.check_stamp(f.offsets[first])?;
        }
        Ok(texts)
    }

    /// The texts in chunks of `rows` (the last one shorter), each with its first row: read
    /// when the chunk is asked for.
    pub fn chunks(
        &self,
        rows: usize,
    ) -> impl Iterator<Item = Result<(Vec<Cow<'_, str>>, usize)>> + Send + '_ {
        (0..self.len())
            .step_by(rows.max(1))
            .map(move |start| Ok((self.range(start..(start + rows).min(self.len()))?, start)))
    }
}

/// The texts of `rows`, each a row of some `Texts` (several datasets' corpora, say): one
/// [`Texts::gather`] per source, so a file's stamp is checked once per source. An error
/// is the first failing row of the first source that fails (sources in the order they
/// first appear in `rows`).
pub fn gather_from<'a>(rows: &[(&'a Texts, usize)]) -> Result<Vec<Cow<'a, str>>> {
    let mut sources: Vec<(&'a Texts, Vec<usize>)> = Vec::new();
    for (k, &(texts, _)) in rows.iter().enumerate() {
        match sources.iter_mut().find(|(s, _)| std::ptr::eq(*s, texts)) {
            Some((_, ks)) => ks.push(k),
            None => sources.push((texts, vec![k])),
        }
    }
    let mut out = vec![Cow::Borrowed(""); rows.len()];
    for (texts, ks) in sources {
        let wanted: Vec<usize> = ks.iter().map(|&k| rows[k].1).collect();
        for (k, text) in ks.into_iter().zip(texts.gather(&wanted)?) {
            out[k] = text;
        }
    }
    Ok(out)
}

/// `f` of every item, computed on rayon's pool; on a failure, the error of the first
/// failing item in their order (rayon's own collect returns whichever failed first in
/// time), found by going through them again in order.
fn in_order<I: Sync, T: Send>(items: &[I], f: impl Fn(&I) -> Result<T> + Sync) -> Result<Vec<T>> {
    use rayon::prelude::*;
    match items.par_iter().map(&f).collect::<Result<Vec<T>>>() {
        Ok(all) => Ok(all),
        Err(any) => Err(items.iter().find_map(|i| f(i).err()).unwrap_or(any)),
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
        // Only a regular file is read back by offset (not a pipe, not a gzip stream).
        let corpus_file = corpus_path(dir);
        let on_disk = !is_gzip(&corpus_file) && corpus_file.is_file();
        let (corpus, corpus_skipped) = Texts::read(&corpus_file, policy, on_disk)?;
        let (queries, queries_skipped) = Texts::read(&queries_path(dir), policy, false)?;
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
