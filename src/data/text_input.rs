//! Texts to embed: a BEIR corpus/queries JSONL file (`_id`, `text`, optional `title`) or
//! plain text with one text per line.
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

/// Input format of `distill encode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TextFormat {
    /// `.jsonl` / `.json` files are BEIR JSONL, anything else plain text.
    Auto,
    /// One JSON object per line with `_id`, `text` and optional `title`.
    Jsonl,
    /// One text per line; the id is the line number (1-based).
    Text,
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

/// Read every text of `path`: duplicate ids are errors, empty texts are kept.
pub fn read_texts(path: &Path, format: TextFormat) -> Result<Vec<TextRecord>> {
    let policy = ReadPolicy {
        strict: true,
        allow_empty: true,
    };
    read_texts_with(path, format, policy).map(|(records, _)| records)
}

/// Read every text of `path` under `policy`. Errors name the file and line: malformed
/// JSON, a missing `_id`/`text`, invalid UTF-8 always; duplicate ids and empty texts when
/// strict. Blank lines are skipped.
pub fn read_texts_with(
    path: &Path,
    format: TextFormat,
    policy: ReadPolicy,
) -> Result<(Vec<TextRecord>, Skipped)> {
    let format = match format {
        TextFormat::Auto => match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "json") => TextFormat::Jsonl,
            _ => TextFormat::Text,
        },
        f => f,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let mut records = Vec::new();
    let mut skipped = Skipped::default();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut buf = Vec::new();
    let mut line = 0usize;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        line += 1;
        let input_err = |message: String| Error::Input {
            path: path.to_path_buf(),
            line,
            message,
        };
        let raw =
            std::str::from_utf8(&buf).map_err(|e| input_err(format!("invalid UTF-8 ({e})")))?;
        let raw = raw.trim_end_matches(['\n', '\r']);
        let record = match format {
            TextFormat::Jsonl => {
                if raw.trim().is_empty() {
                    continue;
                }
                parse_beir_line(raw).map_err(input_err)?
            }
            _ => TextRecord {
                id: line.to_string(),
                text: raw.to_string(),
                line,
            },
        };
        if let Some(&first) = seen.get(&record.id) {
            if policy.strict {
                return Err(input_err(format!(
                    "duplicate id `{}` (first seen on line {first})",
                    record.id
                )));
            }
            skipped.duplicates.push((line, record.id));
            continue;
        }
        if !policy.allow_empty && record.text.trim().is_empty() {
            if policy.strict {
                return Err(input_err(format!("empty text for `{}`", record.id)));
            }
            skipped.empty.push((line, record.id));
            continue;
        }
        seen.insert(record.id.clone(), line);
        records.push(TextRecord { line, ..record });
    }
    Ok((records, skipped))
}

/// One BEIR JSONL object: the embedded text is `title + " " + text` when the title is
/// non-empty, as BEIR does, else `text`.
fn parse_beir_line(raw: &str) -> std::result::Result<TextRecord, String> {
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
mod tests {
    use super::*;
    use std::io::Write;

    fn file(content: &[u8], ext: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
        f.write_all(content).unwrap();
        f
    }

    #[test]
    fn reads_beir_jsonl_with_titles() {
        let f = file(
            b"{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"body\"}\n\n{\"_id\": 7, \"text\": \"x\"}\n",
            ".jsonl",
        );
        let r = read_texts(f.path(), TextFormat::Auto).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].id.as_str(), r[0].text.as_str()), ("d1", "T body"));
        assert_eq!((r[1].id.as_str(), r[1].line), ("7", 3));
    }

    #[test]
    fn errors_name_the_line() {
        let cases: [(&[u8], &str); 5] = [
            (
                b"{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"a\", \"text\": \"y\"}\n",
                "line 1",
            ),
            (b"{\"text\": \"x\"}\n", "missing key `_id`"),
            (
                b"{\"_id\": \"a\", \"text\": \"x\"}\n{not json\n",
                "malformed JSON",
            ),
            (b"{\"_id\": \"a\", \"text\": 3}\n", "must be a string"),
            (b"{\"_id\": \"a\", \"text\": \"\xff\"}\n", "invalid UTF-8"),
        ];
        for (content, needle) in cases {
            let f = file(content, ".jsonl");
            let err = read_texts(f.path(), TextFormat::Auto)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
            assert!(err.contains(&f.path().display().to_string()), "{err}");
        }
    }

    #[test]
    fn lenient_read_skips_and_counts_duplicates_and_empty_texts() {
        let f = file(
            b"{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"a\", \"text\": \"y\"}\n{\"_id\": \"b\", \"text\": \"  \"}\n",
            ".jsonl",
        );
        let lenient = ReadPolicy {
            strict: false,
            allow_empty: false,
        };
        let (r, skipped) = read_texts_with(f.path(), TextFormat::Auto, lenient).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].text, "x");
        assert_eq!(skipped.duplicates, vec![(2, "a".to_string())]);
        assert_eq!(skipped.empty, vec![(3, "b".to_string())]);
        let strict = ReadPolicy {
            strict: true,
            allow_empty: false,
        };
        let f = file(b"{\"_id\": \"b\", \"text\": \"\"}\n", ".jsonl");
        let err = read_texts_with(f.path(), TextFormat::Auto, strict).unwrap_err();
        assert!(err.to_string().contains(":1: empty text for `b`"), "{err}");
    }

    #[test]
    fn plain_text_ids_are_line_numbers() {
        let f = file(b"first\r\nsecond\n", ".txt");
        let r = read_texts(f.path(), TextFormat::Auto).unwrap();
        assert_eq!(r[1].id, "2");
        assert_eq!(r[0].text, "first");
    }
}
