//! Input files as numbered lines: plain, or gzip-compressed when the name ends in `.gz`
//! (decompressed as a stream, never whole in memory). Errors name the file and the line.
use crate::error::{Error, Result};
use flate2::bufread::MultiGzDecoder;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Whether `path` is read through gzip: its name ends in `.gz`.
pub fn is_gzip(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// The extension that names the format, under any `.gz`: `corpus.jsonl.gz` and
/// `corpus.jsonl` give `jsonl`; `README` gives `None`.
pub fn format_extension(path: &Path) -> Option<&str> {
    let inner = if is_gzip(path) {
        Path::new(path.file_stem()?)
    } else {
        path
    };
    inner.extension().and_then(|e| e.to_str())
}

/// The lines of a file, in order, numbered from 1.
pub struct Lines {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    gzip: bool,
    line: usize,
    /// Bytes read so far: in a plain file, the offset of the next line.
    consumed: u64,
}

impl Lines {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let gzip = is_gzip(path);
        // MultiGzDecoder reads every member of a file that holds several (pigz, bgzip).
        let reader: Box<dyn BufRead + Send> = if gzip {
            Box::new(BufReader::new(MultiGzDecoder::new(BufReader::new(file))))
        } else {
            Box::new(BufReader::new(file))
        };
        Ok(Lines {
            path: path.to_path_buf(),
            reader,
            gzip,
            line: 0,
            consumed: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next line's number and text (without `\n` or `\r\n`); `None` at the end.
    /// Invalid UTF-8 and corrupt gzip data are errors naming the file and line.
    pub fn next_line(&mut self) -> Result<Option<(usize, String)>> {
        Ok(self.next_line_at()?.map(|(line, _, text)| (line, text)))
    }

    /// As [`Lines::next_line`], with the offset of the line's first byte in the
    /// (decompressed) stream: in a plain file, where the line can be read again.
    pub fn next_line_at(&mut self) -> Result<Option<(usize, u64, String)>> {
        let at = self.consumed;
        let mut buf = Vec::new();
        let n = match self.reader.read_until(b'\n', &mut buf) {
            Ok(n) => n,
            Err(e) if self.gzip => {
                return Err(Error::Input {
                    path: self.path.clone(),
                    line: self.line + 1,
                    message: format!("corrupt or truncated gzip data ({e})"),
                })
            }
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        if n == 0 {
            return Ok(None);
        }
        self.consumed += n as u64;
        self.line += 1;
        let mut text = String::from_utf8(buf)
            .map_err(|e| self.error(format!("invalid UTF-8 ({})", e.utf8_error())))?;
        let kept = text.trim_end_matches(['\n', '\r']).len();
        text.truncate(kept);
        Ok(Some((self.line, at, text)))
    }

    /// An input error at the last line read.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::Input {
            path: self.path.clone(),
            line: self.line,
            message: message.into(),
        }
    }
}

/// The first line of `path` that is not blank, with its number; `None` for a file of
/// blank lines. What a format is detected from.
pub fn first_nonblank(path: &Path) -> Result<Option<(usize, String)>> {
    let mut lines = Lines::open(path)?;
    while let Some((n, text)) = lines.next_line()? {
        if !text.trim().is_empty() {
            return Ok(Some((n, text)));
        }
    }
    Ok(None)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::Write;

    fn all(path: &Path) -> Result<Vec<(usize, String)>> {
        let mut lines = Lines::open(path)?;
        let mut out = Vec::new();
        while let Some(l) = lines.next_line()? {
            out.push(l);
        }
        Ok(out)
    }

    /// `bytes` gzipped: the data modules' tests write their `.gz` inputs with it.
    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn format_extension_looks_under_gz() {
        let ext = |p: &str| format_extension(Path::new(p)).map(str::to_string);
        assert_eq!(ext("a/corpus.jsonl.gz").as_deref(), Some("jsonl"));
        assert_eq!(ext("collection.tsv").as_deref(), Some("tsv"));
        assert_eq!(ext("texts.gz"), None);
        assert_eq!(ext("README"), None);
    }

    #[test]
    fn gzip_and_plain_read_the_same_lines_and_several_members_are_one_file() {
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("a.txt");
        std::fs::write(&plain, "one\r\ntwo\n\nthree").unwrap();
        let gz = d.path().join("a.txt.gz");
        // Two gzip members, as pigz or concatenation writes them.
        let mut bytes = gzip(b"one\r\ntwo\n");
        bytes.extend(gzip(b"\nthree"));
        std::fs::write(&gz, bytes).unwrap();
        let want = all(&plain).unwrap();
        assert_eq!(want.len(), 4);
        assert_eq!(want[3], (4, "three".to_string()));
        assert_eq!(all(&gz).unwrap(), want);
        assert_eq!(first_nonblank(&gz).unwrap(), Some((1, "one".into())));
    }

    #[test]
    fn corrupt_gzip_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let not_gzip = d.path().join("corpus.jsonl.gz");
        std::fs::write(&not_gzip, "{\"_id\": \"a\"}\n").unwrap();
        let truncated = d.path().join("queries.jsonl.gz");
        let whole = gzip(&b"x\n".repeat(1000));
        std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
        for path in [&not_gzip, &truncated] {
            let err = all(path).unwrap_err().to_string();
            let want = format!("{}:", path.display());
            assert!(err.starts_with(&want), "{err}");
            assert!(err.contains("corrupt or truncated gzip data"), "{err}");
        }
    }
}
