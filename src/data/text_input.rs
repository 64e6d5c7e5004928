//! Texts to embed: a BEIR corpus/queries JSONL file (`_id`, `text`, optional `title`),
//! `id<TAB>text` lines (MS MARCO's `collection.tsv`, `queries.*.tsv`) or plain text with
//! one text per line; any of them gzip-compressed when the name ends in `.gz`.
use crate::data::lines::{first_nonblank, format_extension, Lines};
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
    let mut reader = TextReader::open(path, format, policy)?;
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
/// Lines are read in blocks of [`BLOCK_LINES`] and parsed on rayon's pool (JSON parsing
/// was a loading stage's largest cost at a million passages); the checks and the errors
/// then go through the block in line order, so the first bad line is the one reported,
/// as when reading line by line.
pub struct TextReader {
    lines: Lines,
    format: TextFormat,
    detected_on: Option<usize>,
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

/// Where a line lies in its (decompressed) file: the offset of its first byte and its
/// length without the line break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u32,
}

/// One line, parsed.
enum Parsed {
    Blank,
    Record(TextRecord),
    Bad(String),
}

impl TextReader {
    pub fn open(path: &Path, format: TextFormat, policy: ReadPolicy) -> Result<Self> {
        let (format, detected_on) = resolve_format(path, format)?;
        Ok(TextReader {
            lines: Lines::open(path)?,
            format,
            detected_on,
            policy,
            seen: HashMap::default(),
            kept_lines: Vec::new(),
            pending: Default::default(),
            read_error: None,
            skipped: Skipped::default(),
        })
    }

    /// Parse one line of this reader's format (no check across lines).
    fn parse(format: TextFormat, detected_on: Option<usize>, line: usize, raw: String) -> Parsed {
        match format {
            TextFormat::Jsonl | TextFormat::Tsv if raw.trim().is_empty() => Parsed::Blank,
            TextFormat::Jsonl => match parse_beir_line(&raw) {
                Ok(r) => Parsed::Record(r),
                Err(m) => Parsed::Bad(m),
            },
            TextFormat::Tsv => match split_tsv(&raw) {
                Ok((id, text)) => Parsed::Record(TextRecord {
                    id: id.to_string(),
                    text: text.to_string(),
                    line,
                }),
                Err(m) => {
                    let hint = detected_on.map(|at| {
                        format!(
                            " (the file reads as `id<TAB>text` from its line {at}; \
                             `--format text` reads each line whole)"
                        )
                    });
                    Parsed::Bad(m + &hint.unwrap_or_default())
                }
            },
            TextFormat::Text | TextFormat::Auto => Parsed::Record(TextRecord {
                id: line.to_string(),
                text: raw,
                line,
            }),
        }
    }

    /// Read the next block of lines and parse it. A read error (invalid UTF-8, corrupt
    /// gzip) is returned once the lines before it have been handed out and checked.
    fn fill(&mut self) {
        let mut raw = Vec::with_capacity(BLOCK_LINES);
        while raw.len() < BLOCK_LINES {
            match self.lines.next_line_at() {
                Ok(Some(l)) => raw.push(l),
                Ok(None) => break,
                Err(e) => {
                    self.read_error = Some(e);
                    break;
                }
            }
        }
        let (format, detected_on) = (self.format, self.detected_on);
        use rayon::prelude::*;
        let parsed: Vec<(usize, Span, Parsed)> = raw
            .into_par_iter()
            .map(|(line, offset, text)| {
                let Ok(len) = u32::try_from(text.len()) else {
                    let span = Span { offset, len: 0 };
                    return (line, span, Parsed::Bad("a line longer than 4 GiB".into()));
                };
                let span = Span { offset, len };
                (line, span, Self::parse(format, detected_on, line, text))
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
                path: self.lines.path().to_path_buf(),
                line,
                message,
            };
            let record = match parsed {
                Parsed::Blank => continue,
                Parsed::Bad(m) => return Err(error(m)),
                Parsed::Record(r) => r,
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
            if !self.policy.allow_empty && record.text.trim().is_empty() {
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
    if let Ok(line) = serde_json::from_str::<BeirLine>(raw) {
        let text = match line.title.as_deref() {
            None | Some("") => line.text.into_owned(),
            Some(title) => format!("{title} {}", line.text),
        };
        return Ok(TextRecord {
            id: line.id.into_owned(),
            text,
            line: 0,
        });
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
    let text = if title.is_empty() {
        text.to_string()
    } else {
        format!("{title} {text}")
    };
    Ok(TextRecord { id, text, line: 0 })
}

#[cfg(test)]
#[path = "text_input_tests.rs"]
mod tests;
