//! Atomic file writes: write beside the target under a temporary name, then rename.
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Lower-case hex of `bytes` (how sha256 digests are written down).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes (sha256) every byte written through it: a file written through it
/// has its content's digest when it is closed, without being read again.
pub struct Sha256Writer<W> {
    inner: W,
    hash: Sha256,
}

impl<W: std::io::Write> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Sha256Writer {
            inner,
            hash: Sha256::new(),
        }
    }

    /// The inner writer (flushed) and the hex sha256 of everything written.
    pub fn finish(mut self) -> std::io::Result<(W, String)> {
        self.inner.flush()?;
        Ok((self.inner, hex(&self.hash.finalize())))
    }
}

impl<W: std::io::Write> std::io::Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The temporary path used while `path` is being written.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// A file being written under its temporary name ([`temp_path`]): [`AtomicFile::commit`]
/// syncs it and renames it into place; dropped uncommitted, it is removed, so `path` is
/// either untouched or whole. For writers that write over a long loop; a single closure
/// is simpler with [`write_atomic`].
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    /// Create the temporary file (and `path`'s folder).
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let tmp = temp_path(path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
        })
    }

    /// The path the file will have once committed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle to write through (the same open file).
    pub fn handle(&self) -> Result<File> {
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| Error::io(&self.tmp, std::io::Error::other("already committed")))?;
        file.try_clone().map_err(|e| Error::io(&self.tmp, e))
    }

    /// Sync the data and rename the file into place.
    pub fn commit(mut self) -> Result<()> {
        // On an error the file is still open, so dropping `self` removes it.
        if let Some(file) = &self.file {
            file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.file = None;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Create `path` by running `write` on a temporary file and renaming it into place once
/// `write` succeeded and the data is synced. On failure the temporary file is removed
/// and `path` is untouched.
pub fn write_atomic(path: &Path, write: impl FnOnce(File) -> Result<()>) -> Result<()> {
    let file = AtomicFile::create(path)?;
    write(file.handle()?)?;
    file.commit()
}

/// Write `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |mut f| {
        use std::io::Write;
        f.write_all(bytes).map_err(|e| Error::io(path, e))
    })
}

/// Write `value` as pretty JSON to `path` atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_bytes(path, text.as_bytes())
}

/// Write `value` as compact JSON (one line) to `path` atomically: for a stage's own
/// work files, which are large and read by no one else.
pub fn write_json_compact(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_bytes(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let r = write_atomic(&target, |_| Err(Error::config("x", "boom")));
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomic(&target, |mut f| {
            use std::io::Write;
            f.write_all(b"ok").map_err(|e| Error::io("x", e))
        })
        .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"ok");
    }
}
