//! Content fingerprints (sha256, hex) of files, model directories and JSON values.
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

use crate::data::atomic::hex;

/// sha256 of a file's content, memoised for the process by (path, size, mtime): a run
/// fingerprints the same model and dataset files for several stages.
pub fn file(path: &Path) -> Result<String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Key = (std::path::PathBuf, u64, Option<std::time::SystemTime>);
    static MEMO: OnceLock<Mutex<HashMap<Key, String>>> = OnceLock::new();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let key: Key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    let memo = MEMO.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(hit) = memo.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(hit);
    }
    let digest = hash_file(path)?;
    if let Ok(mut m) = memo.lock() {
        m.insert(key, digest.clone());
    }
    Ok(digest)
}

/// sha256 of a file's content, read now (not memoised): what an output is checked with.
pub fn content(path: &Path) -> Result<String> {
    hash_file(path)
}

fn hash_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// sha256 over the names and contents of every file under `dir` (sorted, recursive).
pub fn directory(dir: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    for rel in files {
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(file(&dir.join(&rel))?.as_bytes());
    }
    Ok(hex(&h.finalize()))
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // editor and setup stamps, partial writes
        }
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if name != "README.md" {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// sha256 of the canonical JSON of a value (serde_json sorts map keys in `Value`).
pub fn json(value: &impl serde::Serialize) -> String {
    let canonical = serde_json::to_value(value)
        .and_then(|v| serde_json::to_vec(&v))
        .unwrap_or_default();
    hex(&Sha256::digest(&canonical))
}

/// sha256 of a string.
pub fn text(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_fingerprint_follows_content_and_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "1").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), "2").unwrap();
        let f1 = directory(d.path()).unwrap();
        std::fs::write(d.path().join(".stamp"), "ignored").unwrap();
        assert_eq!(directory(d.path()).unwrap(), f1);
        std::fs::write(d.path().join("sub/b"), "3").unwrap();
        assert_ne!(directory(d.path()).unwrap(), f1);
    }

    #[test]
    fn json_fingerprint_ignores_key_order() {
        let a = serde_json::json!({"x": 1, "y": [1, 2]});
        let b: serde_json::Value = serde_json::from_str(r#"{"y": [1, 2], "x": 1}"#).unwrap();
        assert_eq!(json(&a), json(&b));
        assert_ne!(json(&a), json(&serde_json::json!({"x": 2, "y": [1, 2]})));
    }
}
