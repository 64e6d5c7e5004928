//! One writer per run directory: `run.lock` holds the owner's pid, host, boot and the
//! process's start time. A lock on this host is stale, and taken over (with a line in the
//! log), when it comes from another boot, when its process is gone, or when its pid now
//! belongs to another process (pid reuse: the start time differs).
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize, Deserialize)]
struct Owner {
    pid: u32,
    host: String,
    started_unix: u64,
    /// `/proc/sys/kernel/random/boot_id` (empty in locks written before it was recorded).
    #[serde(default)]
    boot_id: String,
    /// The process's start time in clock ticks since boot (`/proc/<pid>/stat`, field 22).
    #[serde(default)]
    start_ticks: Option<u64>,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Start time of process `pid` in clock ticks since boot; None when it does not exist.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after the last
    // ')' start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Why a lock on this host no longer holds: None while its process runs.
fn stale_because(o: &Owner) -> Option<&'static str> {
    if !o.boot_id.is_empty() && o.boot_id != boot_id() {
        return Some("it was taken before the machine last booted");
    }
    if !alive(o.pid) {
        return Some("its process is gone");
    }
    match (o.start_ticks, start_ticks(o.pid)) {
        (Some(then), Some(now)) if then != now => {
            Some("its pid now belongs to another process (another start time)")
        }
        _ => None,
    }
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether process `pid` runs: it exists and is not a zombie (dead, not yet reaped: a
/// killed worker whose parent died too waits to be reaped by init, and holds nothing).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the command name's closing parenthesis.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X"))
}

/// Held while a run writes its directory; removed on drop.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    /// Set when a stale lock was taken over: what it said and why it was stale.
    pub took_over: Option<String>,
}

impl RunLock {
    /// Take `dir/<name>`. Fails with a clear error when a live process holds it.
    pub fn acquire(dir: &Path, name: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(name);
        let mut took_over = None;
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let pid = std::process::id();
                    let owner = Owner {
                        pid,
                        host: host(),
                        started_unix: super::manifest::unix_now(),
                        boot_id: boot_id(),
                        start_ticks: start_ticks(pid),
                    };
                    let text = serde_json::to_string(&owner).unwrap_or_default();
                    f.write_all(text.as_bytes())
                        .map_err(|e| Error::io(&path, e))?;
                    return Ok(RunLock { path, took_over });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner: Option<Owner> = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| serde_json::from_str(&s).ok());
                    let stale = owner
                        .as_ref()
                        .filter(|o| o.host == host())
                        .and_then(stale_because);
                    match owner {
                        Some(o) if stale.is_some() => {
                            took_over = Some(format!(
                                "took over the stale lock {} of pid {} (started at unix time {}): {}",
                                path.display(),
                                o.pid,
                                o.started_unix,
                                stale.unwrap_or_default()
                            ));
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
        let me = std::process::id();
        let write = |o: &Owner| {
            std::fs::write(d.path().join("run.lock"), serde_json::to_string(o).unwrap()).unwrap()
        };
        let owner = |pid: u32, boot: String, ticks: Option<u64>| Owner {
            pid,
            host: host(),
            started_unix: 0,
            boot_id: boot,
            start_ticks: ticks,
        };
        // A live holder (this very process, its own start time) keeps its lock.
        write(&owner(me, boot_id(), start_ticks(me)));
        assert!(RunLock::acquire(d.path(), "run.lock").is_err());
        // Stale: a process that no longer exists; a pid reused by another process (a live
        // pid, another start time); a lock from another boot.
        let cases = [
            (owner(u32::MAX - 1, boot_id(), None), "its process is gone"),
            (
                owner(me, boot_id(), start_ticks(me).map(|t| t + 1)),
                "belongs to another process",
            ),
            (owner(me, "another-boot".into(), start_ticks(me)), "booted"),
        ];
        for (stale, why) in cases {
            write(&stale);
            let taken = RunLock::acquire(d.path(), "run.lock").unwrap();
            let line = taken.took_over.clone().unwrap_or_default();
            assert!(line.contains(why) && line.contains("took over"), "{line}");
            drop(taken);
        }
    }

    #[test]
    fn a_zombie_holds_no_lock() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not yet reaped: a zombie until `wait`.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while alive(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the zombie counts as alive"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        child.wait().unwrap();
        assert!(alive(std::process::id()));
    }
}
