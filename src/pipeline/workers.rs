//! `distill run --gpus N`: one worker process per device on one host. The parent runs
//! the pipeline stage by stage; a stage that splits into shards (mine, score, eval) runs
//! as N children `distill run P --only STAGE --shard i/N`, then once more in the parent
//! to assemble (every shard exists by then); a training stage (teacher, train, baseline)
//! runs as N children `distill run P --only STAGE` with the data-parallel environment
//! ([`vars`]), whose rank 0 writes the outputs. Each child's stdout and stderr go to
//! `<run>/workers/STAGE-rank-I.log`. When one child fails, the others are killed and the
//! stage fails naming the rank and its log; a rerun reuses every committed shard. When the
//! parent dies, however it dies, the kernel kills its children.
use crate::error::{Error, Result};
use crate::stages::paths::StageId;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Names of the environment variables of a data-parallel worker (as torchrun sets them).
pub mod vars {
    pub use crate::distributed::{
        LISTEN_FD, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE,
    };
    /// Set for every child of a `--gpus` parent (which holds `run.lock`).
    pub const GPUS_PARENT: &str = "DISTILL_GPUS_PARENT";
    /// NVLink multicast (NVLS) off: set to 0 for every worker.
    pub const NCCL_NVLS_ENABLE: &str = "NCCL_NVLS_ENABLE";
    /// The devices a worker sees: its own for a `--shard` worker, all N for a rank
    /// (which uses the `LOCAL_RANK`-th, so that NCCL reaches its peers over NVLink).
    pub const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";
}

/// How `--gpus N` runs a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// N `--shard i/N` workers, then the parent assembles.
    Shards,
    /// N data-parallel ranks.
    Ranks,
    /// The parent alone.
    InProcess,
}

/// How `--gpus N` runs `stage` of `p`: the trainings as ranks (the teacher only when it
/// is trained: a given one is only evaluated, in the parent).
pub fn mode(p: &super::Pipeline, stage: &str) -> Mode {
    let is = |ids: &[StageId]| ids.iter().any(|id| id.name() == stage);
    if is(&[StageId::Mine, StageId::Score, StageId::Eval]) {
        Mode::Shards
    } else if is(&[StageId::Train, StageId::Baseline])
        || (is(&[StageId::Teacher]) && p.teacher_from_base)
    {
        Mode::Ranks
    } else {
        Mode::InProcess
    }
}

/// `--gpus N`: how many workers, and the command line that makes a child `distill run`
/// on the same pipeline (the parent adds `--only`, `--shard` and `--force`).
#[derive(Debug, Clone)]
pub struct Workers {
    pub count: usize,
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// A started child: its rank, process and log file.
struct Worker {
    rank: usize,
    child: Child,
    log: PathBuf,
}

/// Where worker `rank`'s output of `stage` goes.
pub fn log_path(run_dir: &Path, stage: &str, rank: usize) -> PathBuf {
    run_dir
        .join("workers")
        .join(format!("{stage}-rank-{rank}.log"))
}

impl Workers {
    /// Run `stage` in N children (`mode`: shards or ranks) and wait for all of them.
    /// `cuda`: give child i device i alone. On the first child that fails, the others
    /// are killed (and reaped) and the error names the stage, the rank and its log.
    pub fn run(
        &self,
        run_dir: &Path,
        stage: &str,
        mode: Mode,
        forced: bool,
        cuda: bool,
    ) -> Result<()> {
        let devices = match cuda {
            true => Some(self.devices()?),
            false => None,
        };
        // Rank 0 inherits the listening socket of its rendezvous store, so no other
        // process can take the port before it serves there. The parent's copy closes
        // when the stage's children have been started.
        let listener = match mode {
            Mode::Ranks => Some(crate::distributed::listener()?),
            _ => None,
        };
        let port = listener.as_ref().map(|(_, port)| *port);
        let mut started: Vec<Worker> = Vec::new();
        for rank in 0..self.count {
            let mut cmd = Command::new(&self.program);
            cmd.args(&self.args).args(["--only", stage]);
            cmd.env(vars::GPUS_PARENT, "1");
            if forced {
                cmd.arg("--force");
            }
            match port {
                Some(port) => {
                    let (rank, world) = (rank.to_string(), self.count.to_string());
                    cmd.env(vars::RANK, &rank)
                        .env(vars::WORLD_SIZE, world)
                        .env(vars::LOCAL_RANK, &rank)
                        .env(vars::MASTER_ADDR, "127.0.0.1")
                        .env(vars::MASTER_PORT, port.to_string())
                        .env(vars::NCCL_NVLS_ENABLE, "0");
                    if let (true, Some((socket, _))) = (rank == "0", &listener) {
                        use std::os::fd::AsRawFd;
                        let fd = socket.as_raw_fd();
                        cmd.env(vars::LISTEN_FD, fd.to_string());
                        crate::ffi::process::inherit_fd(&mut cmd, fd);
                    }
                }
                None => {
                    cmd.arg("--shard").arg(format!("{rank}/{}", self.count));
                }
            }
            if let Some(devices) = &devices {
                let visible = match mode {
                    Mode::Ranks => devices.join(","),
                    _ => devices[rank].clone(),
                };
                cmd.env(vars::CUDA_VISIBLE_DEVICES, visible);
            }
            // N processes on GPUs share the host's cores (crate::distributed::share_cores).
            // Not on the CPU, where libtorch's results depend on its thread count: there
            // the workers keep the one-process threads, and so its bytes.
            if cuda {
                cmd.env(vars::LOCAL_WORLD_SIZE, self.count.to_string());
            }
            let log = log_path(run_dir, stage, rank);
            match spawn(cmd, &log) {
                Ok(child) => started.push(Worker { rank, child, log }),
                Err(e) => {
                    stop(&mut started);
                    return Err(e);
                }
            }
        }
        drop(listener);
        wait_all(stage, started)
    }

    /// The device each child sees: `i`, or the i-th of the parent's own
    /// `CUDA_VISIBLE_DEVICES` when it has one; an error when the host shows fewer.
    pub fn devices(&self) -> Result<Vec<String>> {
        let visible: Vec<String> = match std::env::var(vars::CUDA_VISIBLE_DEVICES) {
            Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
            _ => (0..tch::Cuda::device_count().max(0) as usize)
                .map(|i| i.to_string())
                .collect(),
        };
        if visible.len() < self.count {
            return Err(Error::Setting {
                key: "gpus".into(),
                message: format!(
                    "{} workers asked for, but this host shows {} CUDA device(s)",
                    self.count,
                    visible.len()
                ),
            });
        }
        Ok(visible[..self.count].to_vec())
    }
}

/// Start `cmd` with stdout and stderr appended to `log`.
fn spawn(mut cmd: Command, log: &Path) -> Result<Child> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(log, e))?;
    let err = out.try_clone().map_err(|e| Error::io(log, e))?;
    // A parent killed outright (SIGKILL, the OOM killer) takes its workers with it,
    // rather than leaving them to finish and hold their locks against the rerun.
    crate::ffi::process::die_with_parent(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| Error::io(log, e))
}

/// Wait until every worker exited 0, or one did not: then kill the others.
fn wait_all(stage: &str, mut running: Vec<Worker>) -> Result<()> {
    while !running.is_empty() {
        let mut i = 0;
        while i < running.len() {
            let status = running[i]
                .child
                .try_wait()
                .map_err(|e| Error::io(&running[i].log, e))?;
            match status {
                None => i += 1,
                Some(s) if s.success() => {
                    running.swap_remove(i);
                }
                Some(s) => {
                    let failed = running.swap_remove(i);
                    stop(&mut running);
                    return Err(Error::Worker {
                        stage: stage.into(),
                        rank: failed.rank,
                        status: describe(s),
                        log: failed.log,
                    });
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// SIGKILL every worker still running and reap it.
fn stop(running: &mut Vec<Worker>) {
    for w in running.iter_mut() {
        let _ = w.child.kill();
    }
    for mut w in running.drain(..) {
        let _ = w.child.wait();
    }
}

fn describe(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => format!("ended ({s})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Workers that are `sh -c SCRIPT` (the stage arguments land in `$0 $1 ...`).
    fn shell(script: &str) -> Workers {
        Workers {
            count: 2,
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
        }
    }

    #[test]
    fn ranks_get_the_data_parallel_environment_and_their_own_logs() {
        let dir = tempfile::tempdir().unwrap();
        let script = "echo \"$RANK $WORLD_SIZE $LOCAL_RANK $MASTER_ADDR $NCCL_NVLS_ENABLE $0 $1\"";
        shell(script)
            .run(dir.path(), "train", Mode::Ranks, false, false)
            .unwrap();
        for rank in 0..2 {
            let log = std::fs::read_to_string(log_path(dir.path(), "train", rank)).unwrap();
            assert_eq!(
                log.trim(),
                format!("{rank} 2 {rank} 127.0.0.1 0 --only train")
            );
        }
        shell("echo \"$0 $1 $2 $3 $4 [$RANK]\"")
            .run(dir.path(), "score", Mode::Shards, true, false)
            .unwrap();
        let log = std::fs::read_to_string(log_path(dir.path(), "score", 1)).unwrap();
        assert_eq!(log.trim(), "--only score --force --shard 1/2 []");
    }

    #[test]
    fn rank_0_inherits_the_listening_socket_of_the_rendezvous_port() {
        let dir = tempfile::tempdir().unwrap();
        let script = "if [ -n \"$DISTILL_MASTER_LISTEN_FD\" ]; then \
                      readlink /proc/$$/fd/$DISTILL_MASTER_LISTEN_FD; else echo none; fi";
        shell(script)
            .run(dir.path(), "train", Mode::Ranks, false, false)
            .unwrap();
        let log = |rank| std::fs::read_to_string(log_path(dir.path(), "train", rank)).unwrap();
        assert!(log(0).starts_with("socket:["), "{}", log(0));
        assert_eq!(log(1).trim(), "none");
    }

    #[test]
    fn a_failing_worker_stops_the_others_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let script = "if [ \"$RANK\" = 1 ]; then exit 3; fi; sleep 60";
        let err = shell(script)
            .run(dir.path(), "train", Mode::Ranks, false, false)
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the parent waited for the sleeping rank"
        );
        match err {
            Error::Worker {
                stage,
                rank,
                status,
                log,
                ..
            } => {
                assert_eq!((stage.as_str(), rank), ("train", 1));
                assert_eq!(status, "exited with code 3");
                assert_eq!(log, log_path(dir.path(), "train", 1));
            }
            other => panic!("{other}"),
        }
    }
}
