//! A Kineto trace of a range of optimizer steps, for finding where a training step's time
//! goes (`scripts/profile_summary.py` reads it). Asked for through the environment, so
//! that any training stage of any run can be traced without a setting that would enter
//! its hash: `DISTILL_PROFILE_STEPS=FROM..TO` traces steps FROM to TO - 1 (counted from
//! 0 in the whole run, resumed or not) and `DISTILL_PROFILE_DIR` names the folder;
//! on CUDA, `DISTILL_PROFILE_HOST=0` leaves out the host's operators (the kernels and the
//! CUDA runtime's calls stay), for the kernels' timeline as an unprofiled step runs it.
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub const STEPS_VAR: &str = "DISTILL_PROFILE_STEPS";
pub const DIR_VAR: &str = "DISTILL_PROFILE_DIR";
pub const HOST_VAR: &str = "DISTILL_PROFILE_HOST";

/// The traced step range of one training, and where its trace goes.
pub struct StepTrace {
    from: u64,
    to: u64,
    path: PathBuf,
    cuda: Option<i64>,
    /// Whether the host's operators are recorded too.
    host: bool,
    running: bool,
}

impl StepTrace {
    /// The trace the environment asks for, if any. The file is
    /// `DIR/{label}-{checkpoints}-rank{R}.json` (`label` a stage's name, `checkpoints`
    /// the checkpoints folder's name), so that the teacher's fold trainings and the ranks
    /// do not overwrite each other.
    pub fn from_env(
        label: &str,
        checkpoints: &Path,
        rank: usize,
        cuda: Option<i64>,
    ) -> Result<Option<Self>> {
        let Ok(spec) = std::env::var(STEPS_VAR) else {
            return Ok(None);
        };
        let (from, to) = parse_range(&spec).ok_or_else(|| Error::Setting {
            key: STEPS_VAR.into(),
            message: format!("environment variable {STEPS_VAR}=`{spec}` is not a step range FROM..TO with FROM < TO"),
        })?;
        let dir = std::env::var(DIR_VAR).map_err(|_| Error::Setting {
            key: DIR_VAR.into(),
            message: format!("{STEPS_VAR} is set but {DIR_VAR} (the traces' folder) is not"),
        })?;
        let folder = checkpoints
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let training = format!("{label}-{folder}");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Some(StepTrace {
            from,
            to,
            path: Path::new(&dir).join(format!("{training}-rank{rank}.json")),
            cuda,
            host: std::env::var(HOST_VAR).map_or(true, |v| v != "0"),
            running: false,
        }))
    }

    /// Call before optimizer step `step` is queued.
    pub fn before(&mut self, step: u64) -> Result<()> {
        if step == self.from && !self.running {
            self.sync();
            crate::ffi::profiler::profiler_start(self.cuda.is_some(), self.host)?;
            self.running = true;
        }
        Ok(())
    }

    /// Call once `done` steps have been queued: the trace is written after step TO - 1,
    /// the device drained first so that its kernels are in it.
    pub fn after(&mut self, done: u64) -> Result<()> {
        if self.running && done >= self.to {
            self.sync();
            crate::ffi::profiler::profiler_stop(&self.path)?;
            self.running = false;
        }
        Ok(())
    }

    fn sync(&self) {
        if let Some(i) = self.cuda {
            tch::Cuda::synchronize(i);
        }
    }
}

/// `FROM..TO` with FROM < TO.
fn parse_range(spec: &str) -> Option<(u64, u64)> {
    let (a, b) = spec.trim().split_once("..")?;
    let (from, to) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (from < to).then_some((from, to))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn step_ranges_parse_and_empty_or_malformed_ones_do_not() {
        assert_eq!(parse_range("10..20"), Some((10, 20)));
        assert_eq!(parse_range(" 0 .. 1 "), Some((0, 1)));
        for bad in ["20..10", "5..5", "10", "a..b", "1..", "..3", "-1..3"] {
            assert_eq!(parse_range(bad), None, "{bad}");
        }
    }
}
