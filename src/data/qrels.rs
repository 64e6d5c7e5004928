//! Relevance judgements as files hold them: BEIR (`query-id<TAB>corpus-id<TAB>score`,
//! with or without the header line) or TREC (`query-id iteration doc-id relevance`,
//! whitespace-separated), told apart by content; plain or gzip (`.gz`).
//!
//! The first line that is not blank decides: 3 tab-separated columns are BEIR (and that
//! line is the header, `query-id corpus-id score`, when its score is not an integer), 4
//! whitespace-separated columns are TREC (the iteration column is not read). Every later
//! line must have the same form: a file mixing the two is an error naming the line.
use crate::data::lines::Lines;
use crate::error::Result;
use std::path::Path;

/// The form of a qrels file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QrelsFormat {
    Beir,
    Trec,
}

impl QrelsFormat {
    fn describe(self) -> &'static str {
        match self {
            QrelsFormat::Beir => "BEIR qrels (query-id<TAB>corpus-id<TAB>score)",
            QrelsFormat::Trec => "TREC qrels (query-id iteration doc-id relevance)",
        }
    }
}

/// One judgement and the line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub line: usize,
    pub query: String,
    pub doc: String,
    pub grade: i64,
}

/// The judgements of a qrels file, read a line at a time.
pub struct QrelsReader {
    lines: Lines,
    /// The file's form and the line that decided it.
    format: Option<(QrelsFormat, usize)>,
}

impl QrelsReader {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(QrelsReader {
            lines: Lines::open(path)?,
            format: None,
        })
    }

    /// The form read so far (`None` before the first line that is not blank).
    pub fn format(&self) -> Option<QrelsFormat> {
        self.format.map(|(f, _)| f)
    }

    /// An input error at the last line read.
    pub fn error(&self, message: impl Into<String>) -> crate::error::Error {
        self.lines.error(message)
    }

    /// The next judgement; `None` at the end. Errors name the file and line.
    pub fn next_judgement(&mut self) -> Result<Option<Judgement>> {
        while let Some((line, text)) = self.lines.next_line()? {
            if text.trim().is_empty() {
                continue;
            }
            let tabs: Vec<&str> = text.split('\t').collect();
            let words: Vec<&str> = text.split_whitespace().collect();
            let (format, since) = match self.format {
                Some(known) => known,
                None => {
                    let format = if tabs.len() == 3 {
                        QrelsFormat::Beir
                    } else if words.len() == 4 {
                        QrelsFormat::Trec
                    } else {
                        return Err(self.lines.error(format!(
                            "expected 3 tab-separated columns (query-id, corpus-id, score) or \
                             4 whitespace-separated TREC columns (query-id, iteration, doc-id, \
                             relevance), found {} tab-separated, {} whitespace-separated",
                            tabs.len(),
                            words.len()
                        )));
                    };
                    self.format = Some((format, line));
                    if format == QrelsFormat::Beir && !is_integer(tabs[2]) {
                        continue; // the header
                    }
                    (format, line)
                }
            };
            let (query, doc, grade) = match format {
                QrelsFormat::Beir if tabs.len() == 3 => (tabs[0], tabs[1], tabs[2]),
                QrelsFormat::Trec if words.len() == 4 => (words[0], words[2], words[3]),
                _ => return Err(self.lines.error(mismatch(format, since, &tabs, &words))),
            };
            let what = match format {
                QrelsFormat::Beir => "score",
                QrelsFormat::Trec => "relevance",
            };
            let grade = grade.trim().parse::<i64>().map_err(|_| {
                self.lines
                    .error(format!("{what} `{grade}` is not an integer"))
            })?;
            return Ok(Some(Judgement {
                line,
                query: query.trim().to_string(),
                doc: doc.trim().to_string(),
                grade,
            }));
        }
        Ok(None)
    }
}

fn is_integer(s: &str) -> bool {
    s.trim().parse::<i64>().is_ok()
}

/// Why a line does not fit the form of its file.
fn mismatch(format: QrelsFormat, since: usize, tabs: &[&str], words: &[&str]) -> String {
    let other = match format {
        QrelsFormat::Beir if words.len() == 4 => Some(QrelsFormat::Trec),
        QrelsFormat::Trec if tabs.len() == 3 => Some(QrelsFormat::Beir),
        _ => None,
    };
    let expected = match format {
        QrelsFormat::Beir => format!(
            "expected 3 tab-separated columns (query-id, corpus-id, score), found {}",
            tabs.len()
        ),
        QrelsFormat::Trec => format!(
            "expected 4 whitespace-separated columns (query-id, iteration, doc-id, relevance), \
             found {}",
            words.len()
        ),
    };
    match other {
        Some(other) => format!(
            "a {} line in a file read as {} from its line {since}: a file holds one format",
            other.describe(),
            format.describe()
        ),
        None => expected,
    }
}

#[cfg(test)]
#[path = "qrels_tests.rs"]
mod tests;
