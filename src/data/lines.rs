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

/// Lines read together by [`Lines::next_block`].
#[derive(Debug, Default)]
pub struct LineBlock {
    /// The lines' bytes, end to end.
    pub bytes: Vec<u8>,
    pub lines: Vec<RawLine>,
}

/// One line of a [`LineBlock`].
#[derive(Debug, Clone)]
pub struct RawLine {
    /// 1-based.
    pub number: usize,
    /// Where the line starts in the (decompressed) stream.
    pub offset: u64,
    /// Its bytes in the block, without the line break (`\n`, `\r\n`).
    pub range: std::ops::Range<usize>,
}

/// A block line's text, or the message for invalid UTF-8.
pub fn line_text(bytes: &[u8]) -> std::result::Result<&str, String> {
    std::str::from_utf8(bytes).map_err(utf8_message)
}

fn utf8_message(e: std::str::Utf8Error) -> String {
    format!("invalid UTF-8 ({e})")
}

/// Read-ahead of a file's reader: large blocks, few system calls.
const READ_BUFFER: usize = 1 << 18;

/// The lines of a file, in order, numbered from 1.
pub struct Lines {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    gzip: bool,
    line: usize,
    /// Bytes read so far: in a plain file, the offset of the next line.
    consumed: u64,
    /// The room a block's bytes start with.
    block_bytes: usize,
}

impl Lines {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let gzip = is_gzip(path);
        // MultiGzDecoder reads every member of a file that holds several (pigz, bgzip).
        let reader: Box<dyn BufRead + Send> = if gzip {
            Box::new(BufReader::with_capacity(
                READ_BUFFER,
                MultiGzDecoder::new(BufReader::new(file)),
            ))
        } else {
            Box::new(BufReader::with_capacity(READ_BUFFER, file))
        };
        Ok(Lines {
            path: path.to_path_buf(),
            reader,
            gzip,
            line: 0,
            consumed: 0,
            block_bytes: 0,
        })
    }

    /// The next line's number and text (without `\n` or `\r\n`); `None` at the end.
    /// Invalid UTF-8 and corrupt gzip data are errors naming the file and line.
    pub fn next_line(&mut self) -> Result<Option<(usize, String)>> {
        let mut buf = Vec::new();
        let Some(line) = self.read_raw(&mut buf)? else {
            return Ok(None);
        };
        buf.truncate(line.range.end);
        let text = String::from_utf8(buf).map_err(|e| self.error(utf8_message(e.utf8_error())))?;
        Ok(Some((line.number, text)))
    }

    /// Up to `max` lines, their bytes end to end in one buffer (no allocation per line,
    /// and no UTF-8 check: [`line_text`] makes it where the line is parsed). A read error
    /// after some lines comes back with them.
    pub fn next_block(&mut self, max: usize) -> (LineBlock, Option<Error>) {
        let mut block = LineBlock {
            bytes: Vec::with_capacity(self.block_bytes),
            lines: Vec::with_capacity(max),
        };
        while block.lines.len() < max {
            match self.read_raw(&mut block.bytes) {
                Ok(Some(line)) => block.lines.push(line),
                Ok(None) => break,
                Err(e) => return (block, Some(e)),
            }
        }
        // The next block starts with room for this one's bytes (no doubling as it grows).
        self.block_bytes = block.bytes.len().next_power_of_two();
        (block, None)
    }

    /// Blocks of up to `max` lines ([`Lines::next_block`]) read on a thread of their
    /// own: `depth` blocks wait in the queue, so with the one being read and the one the
    /// caller holds, `depth + 2` blocks exist at most. The thread ends at the end of the
    /// file, at an error, or at its next block once the [`ReadAhead`] is dropped (on a
    /// pipe that never delivers that block, it waits in its read until the process
    /// ends).
    pub fn read_ahead(mut self, max: usize, depth: usize) -> Result<ReadAhead> {
        let path = self.path.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(depth);
        std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || loop {
                let (block, error) = self.next_block(max);
                let last = block.lines.is_empty() || error.is_some();
                // A send fails once the reader is dropped: the thread ends with it.
                if tx.send((block, error)).is_err() || last {
                    break;
                }
            })
            .map_err(|e| Error::io(&path, e))?;
        Ok(ReadAhead {
            path,
            blocks: rx,
            ended: false,
        })
    }

    /// Append the next line's bytes (with its line break) to `buf`; `None` at the end.
    fn read_raw(&mut self, buf: &mut Vec<u8>) -> Result<Option<RawLine>> {
        let (at, start) = (self.consumed, buf.len());
        let n = match self.reader.read_until(b'\n', buf) {
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
        let mut end = buf.len();
        while end > start && matches!(buf[end - 1], b'\n' | b'\r') {
            end -= 1;
        }
        Ok(Some(RawLine {
            number: self.line,
            offset: at,
            range: start..end,
        }))
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

/// The blocks of a [`Lines`] read on a thread ([`Lines::read_ahead`]).
pub struct ReadAhead {
    path: PathBuf,
    blocks: std::sync::mpsc::Receiver<(LineBlock, Option<Error>)>,
    ended: bool,
}

impl ReadAhead {
    /// The next block, as [`Lines::next_block`] returns it; an empty block at the end.
    pub fn next_block(&mut self) -> (LineBlock, Option<Error>) {
        if self.ended {
            return (LineBlock::default(), None);
        }
        match self.blocks.recv() {
            Ok((block, error)) => {
                self.ended = block.lines.is_empty() || error.is_some();
                (block, error)
            }
            Err(_) => {
                self.ended = true;
                let lost = std::io::Error::other("the reading thread ended early");
                (LineBlock::default(), Some(Error::io(&self.path, lost)))
            }
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
