//! Texts to embed: a BEIR corpus/queries JSONL file (`_id`, `text`, optional `title`),
//! `id<TAB>text` lines (MS MARCO's `collection.tsv`, `queries.*.tsv`) or plain text with
//! one text per line; any of them gzip-compressed when the name ends in `.gz`.
use crate::data::lines::{first_nonblank, format_extension, line_text, Lines, ReadAhead};
use crate::error::Result;
use std::collections::HashMap;
use std::path::Path;

/// Input format of `distill encode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TextFormat {
    /// By extension (under any `.gz`): `.jsonl`/`.json` are JSONL, `.tsv` is
    /// `id<TAB>text`; any other file is `id<TAB>text` when its first non-blank line holds
    /// exactly one tab after a non-empty id, else plain text.
    Auto,
    /// One JSON object per line with `_id`, `text` and optional `title`.
    Jsonl,
    /// `id<TAB>text` on each line (exactly one tab).
    Tsv,
    /// One text per line; the id is the line number (1-based).
    Text,
}

/// The format `path` is read in: `format` itself, or what `Auto` detects.
/// Returns the format and, when it was detected from the content, the line it was
/// detected on.
pub fn resolve_format(path: &Path, format: TextFormat) -> Result<(TextFormat, Option<usize>)> {
    if format != TextFormat::Auto {
        return Ok((format, None));
    }
    Ok(match format_extension(path) {
        Some("jsonl" | "json") => (TextFormat::Jsonl, None),
        Some("tsv") => (TextFormat::Tsv, None),
        _ => match first_nonblank(path)? {
            Some((line, text)) if split_tsv(&text).is_ok() => (TextFormat::Tsv, Some(line)),
            _ => (TextFormat::Text, None),
        },
    })
}

/// One text with its id and the 1-based line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRecord {
    pub id: String,
    pub text: String,
    pub line: usize,
}

/// Lines left out by a non-strict read: `(line, id)` of each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Later occurrences of an id already seen (the first one is kept).
    pub duplicates: Vec<(usize, String)>,
    /// Records whose embedded text is empty or only whitespace.
    pub empty: Vec<(usize, String)>,
}

impl Skipped {
    pub fn is_empty(&self) -> bool {
        self.duplicates.is_empty() && self.empty.is_empty()
    }
}

/// What to do with records that parse but are questionable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPolicy {
    /// Duplicate ids (and, unless `allow_empty`, empty texts) are errors; otherwise they
    /// are skipped and counted.
    pub strict: bool,
    /// Keep records with empty text.
    pub allow_empty: bool,
}

/// Check every line of `path` under `policy` as [`TextReader`] reads it, keeping nothing
/// but the ids seen (and each one's line): the number of records kept, or the first error.
pub fn count_texts(path: &Path, format: TextFormat, policy: ReadPolicy) -> Result<usize> {
    let mut reader = TextReader::open(path, format, policy)?.ids_only()?;
    let mut n = 0;
    while reader.next_record()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// The texts of a file, one record at a time, under a [`ReadPolicy`]. Errors name the
/// file and line: malformed JSON, a missing `_id`/`text`, a line that is not
/// `id<TAB>text` in a TSV file, invalid UTF-8, corrupt gzip data always; duplicate ids
/// and empty texts when strict. Blank lines are skipped, except in plain text (where they
/// are texts, with their ids). Only the ids seen so far are kept (with their lines), for the
/// duplicate check.
///
/// Lines are read in blocks of [`BLOCK_LINES`] (for ids alone, on a thread of their own,
/// a few blocks ahead) and each block is parsed on rayon's pool (JSON parsing was a loading
/// stage's largest cost at a million passages); the checks and the errors
/// then go through the block in line order, so the first bad line is the one reported,
/// as when reading line by line.
pub struct TextReader {
    /// The file's lines (read ahead on a thread for [`TextReader::ids_only`]).
    lines: Source,
    /// The file, for errors.
    path: std::path::PathBuf,
    /// How its lines are parsed.
    how: Parsing,
    policy: ReadPolicy,
    /// The ids kept so far, each with its position among the records kept.
    seen: HashMap<String, usize, ahash::RandomState>,
    /// The line of each record kept.
    kept_lines: Vec<usize>,
    /// Parsed lines not yet handed out, in line order, with where each line lies.
    pending: std::collections::VecDeque<(usize, Span, Parsed)>,
    /// A read error met after the pending lines (returned once they are handed out).
    read_error: Option<crate::error::Error>,
    /// What the policy skipped so far.
    pub skipped: Skipped,
}

/// Lines parsed together.
pub const BLOCK_LINES: usize = 4096;

/// Blocks queued ahead of the parsing ([`Lines::read_ahead`]).
const READ_AHEAD: usize = 2;

/// Where a line lies in its (decompressed) file: the offset of its first byte and its
/// length without the line break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u32,
}

/// Where a reader's lines come from.
enum Source {
    Direct(Lines),
    Ahead(ReadAhead),
}

/// How a reader parses its lines.
struct Parsing {
    format: TextFormat,
    detected_on: Option<usize>,
    /// Whether records carry their texts (else only ids: see [`TextReader::ids_only`]).
    keep_text: bool,
}

/// One line, parsed.
enum Parsed {
    Blank,
    /// The record, and whether its text is empty (or only whitespace).
    Record(TextRecord, bool),
    Bad(String),
}

impl TextReader {
    pub fn open(path: &Path, format: TextFormat, policy: ReadPolicy) -> Result<Self> {
        let (format, detected_on) = resolve_format(path, format)?;
        Ok(TextReader {
            lines: Source::Direct(Lines::open(path)?),
            path: path.to_path_buf(),
            how: Parsing {
                format,
                detected_on,
                keep_text: true,
            },
            policy,
            seen: HashMap::default(),
            kept_lines: Vec::new(),
            pending: Default::default(),
            read_error: None,
            skipped: Skipped::default(),
        })
    }

    /// Records without their texts (`text` is empty), checked as before: for a corpus
    /// whose texts stay in the file, loading allocates no text.
    /// Its lines are read ahead on a thread of their own, while a block is parsed.
    pub fn ids_only(mut self) -> Result<Self> {
        self.how.keep_text = false;
        if let Source::Direct(lines) = self.lines {
            self.lines = Source::Ahead(lines.read_ahead(BLOCK_LINES, READ_AHEAD)?);
        }
        Ok(self)
    }

    /// Parse one line of this reader's format (no check across lines).
    fn parse(how: &Parsing, line: usize, raw: &str) -> Parsed {
        let record = |id: String, text: &str| {
            let empty = text.trim().is_empty();
            let text = if how.keep_text {
                text.to_string()
            } else {
                String::new()
            };
            Parsed::Record(TextRecord { id, text, line }, empty)
        };
        match how.format {
            TextFormat::Jsonl | TextFormat::Tsv if raw.trim().is_empty() => Parsed::Blank,
            TextFormat::Jsonl => match parse_beir(raw, how.keep_text) {
                Ok((r, empty)) => Parsed::Record(TextRecord { line, ..r }, empty),
                Err(m) => Parsed::Bad(m),
            },
            TextFormat::Tsv => match split_tsv(raw) {
                Ok((id, text)) => record(id.to_string(), text),
                Err(m) => {
                    let hint = how.detected_on.map(|at| {
                        format!(
                            " (the file reads as `id<TAB>text` from its line {at}; \
                             `--format text` reads each line whole)"
                        )
                    });
                    Parsed::Bad(m + &hint.unwrap_or_default())
                }
            },
            TextFormat::Text | TextFormat::Auto => record(line.to_string(), raw),
        }
    }

    /// Read the next block of lines and parse it (UTF-8 checks included) on rayon's pool.
    /// A read error (corrupt gzip) is returned once the lines before it have been handed
    /// out and checked.
    fn fill(&mut self) {
        let (block, error) = match &mut self.lines {
            Source::Direct(lines) => lines.next_block(BLOCK_LINES),
            Source::Ahead(ahead) => ahead.next_block(),
        };
        self.read_error = error;
        use rayon::prelude::*;
        let how = &self.how;
        let parsed: Vec<(usize, Span, Parsed)> = block
            .lines
            .into_par_iter()
            .map(|l| {
                let raw = &block.bytes[l.range];
                let Ok(len) = u32::try_from(raw.len()) else {
                    let span = Span {
                        offset: l.offset,
                        len: 0,
                    };
                    return (
                        l.number,
                        span,
                        Parsed::Bad("a line longer than 4 GiB".into()),
                    );
                };
                let span = Span {
                    offset: l.offset,
                    len,
                };
                let parsed = match line_text(raw) {
                    Ok(text) => Self::parse(how, l.number, text),
                    Err(m) => Parsed::Bad(m),
                };
                (l.number, span, parsed)
            })
            .collect();
        self.pending.extend(parsed);
    }

    /// The next record the policy keeps, or `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<TextRecord>> {
        Ok(self.next_record_at()?.map(|(record, _)| record))
    }

    /// As [`TextReader::next_record`], with where the record's line lies in the file.
    pub fn next_record_at(&mut self) -> Result<Option<(TextRecord, Span)>> {
        loop {
            if self.pending.is_empty() {
                if let Some(e) = self.read_error.take() {
                    return Err(e);
                }
                self.fill();
            }
            let Some((line, span, parsed)) = self.pending.pop_front() else {
                // Nothing read and no error: the end of the file.
                return match self.read_error.take() {
                    Some(e) => Err(e),
                    None => Ok(None),
                };
            };
            let error = |message: String| crate::error::Error::Input {
                path: self.path.clone(),
                line,
                message,
            };
            let (record, empty) = match parsed {
                Parsed::Blank => continue,
                Parsed::Bad(m) => return Err(error(m)),
                Parsed::Record(r, empty) => (r, empty),
            };
            if let Some(first) = self.seen.get(&record.id).map(|&k| self.kept_lines[k]) {
                if self.policy.strict {
                    return Err(error(format!(
                        "duplicate id `{}` (first seen on line {first})",
                        record.id
                    )));
                }
                self.skipped.duplicates.push((line, record.id));
                continue;
            }
            if !self.policy.allow_empty && empty {
                if self.policy.strict {
                    return Err(error(format!("empty text for `{}`", record.id)));
                }
                self.skipped.empty.push((line, record.id));
                continue;
            }
            self.seen.insert(record.id.clone(), self.kept_lines.len());
            self.kept_lines.push(line);
            return Ok(Some((TextRecord { line, ..record }, span)));
        }
    }
}

impl TextReader {
    /// Once every record is read: the position of each id among the records kept, and
    /// what the policy skipped.
    pub fn into_index(self) -> (HashMap<String, usize, ahash::RandomState>, Skipped) {
        (self.seen, self.skipped)
    }
}

/// An `id<TAB>text` line: exactly one tab, after a non-empty id (trimmed); the text is
/// kept as it is.
fn split_tsv(raw: &str) -> std::result::Result<(&str, &str), String> {
    let columns = raw.split('\t').count();
    match raw.split_once('\t') {
        Some((id, text)) if columns == 2 && !id.trim().is_empty() => Ok((id.trim(), text)),
        Some(_) if columns == 2 => Err("empty id before the tab".into()),
        _ => Err(format!(
            "expected `id<TAB>text` (2 tab-separated columns), found {columns}"
        )),
    }
}

/// The usual shape of a BEIR line, read without building a JSON tree (strings borrowed
/// from the line unless they hold escapes). Anything else (a numeric `_id`, a missing or
/// mistyped key, a repeated key, malformed JSON) goes through [`parse_beir_line`]'s
/// general path, which says what is wrong.
#[derive(serde::Deserialize)]
struct BeirLine<'a> {
    #[serde(rename = "_id", borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    title: Option<std::borrow::Cow<'a, str>>,
}

/// One BEIR JSONL object: the embedded text is `title + " " + text` when the title is
/// non-empty, as BEIR does, else `text`.
pub(crate) fn parse_beir_line(raw: &str) -> std::result::Result<TextRecord, String> {
    parse_beir(raw, true).map(|(r, _)| r)
}

/// [`parse_beir_line`], and whether the embedded text is empty (or only whitespace);
/// without `keep_text`, the record's text is left empty and not built.
fn parse_beir(raw: &str, keep_text: bool) -> std::result::Result<(TextRecord, bool), String> {
    // `title + " " + text` is blank exactly when both are.
    let record = |id: String, title: &str, text: &str| {
        let empty = title.trim().is_empty() && text.trim().is_empty();
        let text = match (keep_text, title.is_empty()) {
            (false, _) => String::new(),
            (true, true) => text.to_string(),
            (true, false) => format!("{title} {text}"),
        };
        (TextRecord { id, text, line: 0 }, empty)
    };
    if let Ok(line) = serde_json::from_str::<BeirLine>(raw) {
        let title = line.title.as_deref().unwrap_or("");
        return Ok(record(line.id.into_owned(), title, &line.text));
    }
    let value: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| format!("malformed JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| "expected a JSON object".to_string())?;
    let id = match obj.get("_id") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(_) => return Err("`_id` must be a string or a number".into()),
        None => return Err("missing key `_id`".into()),
    };
    let text = match obj.get("text") {
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(_) => return Err(format!("`text` of `{id}` must be a string")),
        None => return Err(format!("missing key `text` for `{id}`")),
    };
    let title = match obj.get("title") {
        None | Some(serde_json::Value::Null) => "",
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(_) => return Err(format!("`title` of `{id}` must be a string")),
    };
    Ok(record(id, title, text))
}

#[cfg(test)]
#[path = "text_input_tests.rs"]
mod tests;
