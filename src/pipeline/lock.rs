//! One writer per run directory: `run.lock` holds the owner's pid and host. A lock whose
//! process is gone (same host, no /proc entry) is stale and taken over.
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize, Deserialize)]
struct Owner {
    pid: u32,
    host: String,
    started_unix: u64,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Held while a run writes its directory; removed on drop.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// Take `dir/<name>`. Fails with a clear error when a live process holds it.
    pub fn acquire(dir: &Path, name: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(name);
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let owner = Owner {
                        pid: std::process::id(),
                        host: host(),
                        started_unix: super::manifest::unix_now(),
                    };
                    let text = serde_json::to_string(&owner).unwrap_or_default();
                    f.write_all(text.as_bytes())
                        .map_err(|e| Error::io(&path, e))?;
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner: Option<Owner> = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| serde_json::from_str(&s).ok());
                    match owner {
                        Some(o) if o.host == host() && !alive(o.pid) => {
                            // Stale: its process is gone.
                            let _ = std::fs::remove_file(&path);
                        }
                        Some(o) => {
                            return Err(Error::config(
                                &path,
                                format!(
                                    "run directory is locked by pid {} on {} (started at unix time {}); \
                                     wait for it to finish, or delete the lock if that process is gone",
                                    o.pid, o.host, o.started_unix
                                ),
                            ))
                        }
                        None => {
                            // Being written right now, or garbage: wait a moment, then judge again.
                            std::thread::sleep(std::time::Duration::from_millis(200));
                            let again = std::fs::read_to_string(&path).unwrap_or_default();
                            if serde_json::from_str::<Owner>(&again).is_err() {
                                let _ = std::fs::remove_file(&path);
                            }
                        }
                    }
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::config(&path, "could not take the run lock"))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_stale_locks_are_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(d.path(), "run.lock").unwrap();
        let err = RunLock::acquire(d.path(), "run.lock")
            .unwrap_err()
            .to_string();
        assert!(err.contains("locked by pid"), "{err}");
        drop(first);
        assert!(!d.path().join("run.lock").exists());
        // A lock left by a process that no longer exists.
        let stale = Owner {
            pid: u32::MAX - 1,
            host: host(),
            started_unix: 0,
        };
        std::fs::write(
            d.path().join("run.lock"),
            serde_json::to_string(&stale).unwrap(),
        )
        .unwrap();
        let _taken = RunLock::acquire(d.path(), "run.lock").unwrap();
    }
}
