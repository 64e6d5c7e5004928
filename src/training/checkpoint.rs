//! Training checkpoints: weights, AdamW moments, the step (which fixes the scheduler, the
//! data cursor and the per-step RNG seeds) and the loss curve so far. Each checkpoint is a
//! folder written under a temporary name and renamed into place.
use super::curve::LossCurve;
use super::optimizer::AdamW;
use crate::error::{read_json, Error, Result, TorchContext};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct State {
    step: u64,
    curve: LossCurve,
}

fn folder(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:08}"))
}

/// Steps of the complete checkpoints in `dir`.
pub fn list(dir: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    steps.sort_unstable();
    steps
}

/// Copies of `named` that share no memory with the originals (which the next optimizer
/// step changes in place while a snapshot is written), contiguous: on a GPU, copies on
/// the device, queued in order with the training (the writer's thread takes them to the
/// host, [`Snapshot::write`]); on the CPU, copies in ordinary memory.
fn tensors(named: impl Iterator<Item = (String, Tensor)>) -> Vec<(String, Tensor)> {
    named
        .map(|(n, t)| {
            // Not `copy()`, which zeroes its new tensor first.
            let mut c = t.empty_like();
            c.copy_(&t.detach());
            (n, c.contiguous())
        })
        .collect()
}

/// A checkpoint taken: copies of the parameters and moments of an optimizer and its
/// state, to be written ([`Snapshot::write`]) while training goes on.
pub struct Snapshot {
    step: u64,
    files: Vec<(&'static str, Vec<(String, Tensor)>)>,
    /// On a GPU, the point in the device's work after the copies, which the writer's
    /// copies to the host wait for (and nothing queued later).
    copied: Option<crate::ffi::memory::Mark>,
    state: String,
}

/// Take the checkpoint of `opt` at its current step. On a GPU the copies are queued on
/// the device and the host does not wait for them: taking a checkpoint holds the training
/// for a few launches, where copying the teacher's 273 MB to the host held it 0.13 s
/// (BENCHMARKS.md).
pub fn snapshot(opt: &AdamW, curve: &LossCurve) -> Result<Snapshot> {
    let of = |f: fn(&super::optimizer::ParamState) -> &Tensor| {
        tensors(
            opt.params
                .iter()
                .map(|p| (p.name.clone(), f(p).shallow_clone())),
        )
    };
    let state = State {
        step: opt.step,
        curve: curve.clone(),
    };
    let state = serde_json::to_string(&state).map_err(|source| Error::Json {
        path: PathBuf::from("state.json"),
        source,
    })?;
    let files = vec![
        ("weights.safetensors", of(|p| &p.param)),
        ("exp_avg.safetensors", of(|p| &p.exp_avg)),
        ("exp_avg_sq.safetensors", of(|p| &p.exp_avg_sq)),
    ];
    let copied = match files.iter().flat_map(|(_, ts)| ts).next() {
        Some((_, t)) => crate::ffi::memory::mark(t)?,
        None => None,
    };
    Ok(Snapshot {
        step: opt.step,
        files,
        copied,
        state,
    })
}

impl Snapshot {
    /// Write the checkpoint into `dir`: a folder under a temporary name, renamed into
    /// place once whole.
    pub fn write(self, dir: &Path) -> Result<()> {
        let target = folder(dir, self.step);
        let tmp = dir.join(format!(".tmp-step-{:08}", self.step));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        for (name, ts) in &self.files {
            let path = tmp.join(name);
            // A file's tensors on the host at a time (on a GPU, copied here).
            let host: Vec<(String, Tensor)> = match &self.copied {
                Some(mark) => {
                    let on_device: Vec<&Tensor> = ts.iter().map(|(_, t)| t).collect();
                    let copies = crate::ffi::memory::download_after(&on_device, mark)?;
                    ts.iter().map(|(n, _)| n.clone()).zip(copies).collect()
                }
                None => ts
                    .iter()
                    .map(|(n, t)| (n.clone(), t.shallow_clone()))
                    .collect(),
            };
            Tensor::write_safetensors(&host, &path)
                .ctx(|| format!("writing {}", path.display()))?;
        }
        let path = tmp.join("state.json");
        std::fs::write(&path, &self.state).map_err(|e| Error::io(&path, e))?;
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))
    }
}

/// Checkpoints written on a thread of their own while training goes on (one at a time;
/// dropped, it waits for the one being written, so that no write outlives the training):
/// on a GPU the thread also takes the snapshot's copies to the host. A checkpoint counts
/// once its folder is renamed into place, so a run killed while one is written resumes
/// from the one before.
#[derive(Default)]
pub struct Writer {
    running: Option<(u64, std::thread::JoinHandle<Result<()>>)>,
}

impl Writer {
    /// Write `snapshot` into `dir`, then keep `keep_last` checkpoints (and `best`), on
    /// the writer's thread, once the checkpoint before it is written; returns that one's
    /// step, if one was being written.
    pub fn start(
        &mut self,
        dir: &Path,
        snapshot: Snapshot,
        keep_last: usize,
        best: Option<u64>,
    ) -> Result<Option<u64>> {
        let before = self.finish()?;
        let step = snapshot.step;
        let target = folder(dir, step);
        let dir = dir.to_path_buf();
        let thread = std::thread::Builder::new().name(format!("checkpoint {step}"));
        let handle = thread
            .spawn(move || {
                snapshot.write(&dir)?;
                prune(&dir, keep_last, best)
            })
            .map_err(|e| Error::io(&target, e))?;
        self.running = Some((step, handle));
        Ok(before)
    }

    /// The step of the checkpoint being written if it is now written, or, with `wait`,
    /// once it is (an error if its writing failed).
    pub fn settle(&mut self, wait: bool) -> Result<Option<u64>> {
        match &self.running {
            Some((_, handle)) if wait || handle.is_finished() => self.finish(),
            _ => Ok(None),
        }
    }

    /// Wait for the checkpoint being written, if any; returns its step.
    pub fn finish(&mut self) -> Result<Option<u64>> {
        let Some((step, handle)) = self.running.take() else {
            return Ok(None);
        };
        match handle.join() {
            Ok(written) => written.map(|()| Some(step)),
            Err(_) => Err(Error::Output {
                path: PathBuf::from(format!("step-{step:08}")),
                message: "the thread writing this checkpoint panicked".into(),
            }),
        }
    }
}

impl Drop for Writer {
    /// A training that ends early (an error) still waits for the write it started; that
    /// write's own error, if any, is not the one reported.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn restore_into(file: &Path, targets: BTreeMap<&str, &mut Tensor>) -> Result<()> {
    let loaded: BTreeMap<String, Tensor> = Tensor::read_safetensors(file)
        .ctx(|| format!("reading {}", file.display()))?
        .into_iter()
        .collect();
    let _guard = tch::no_grad_guard();
    for (name, t) in targets {
        let src = loaded.get(name).ok_or_else(|| Error::MissingTensor {
            path: file.to_path_buf(),
            name: name.to_string(),
        })?;
        t.f_copy_(&src.to_device(t.device()))
            .ctx(|| format!("restoring `{name}`"))?;
    }
    Ok(())
}

/// Load checkpoint `step` into `opt` (parameters, moments, step); returns the loss curve.
pub fn load(dir: &Path, step: u64, opt: &mut AdamW) -> Result<LossCurve> {
    let f = folder(dir, step);
    let state: State = read_json(&f.join("state.json"))?;
    restore_into(
        &f.join("weights.safetensors"),
        opt.params
            .iter_mut()
            .map(|p| (p.name.as_str(), &mut p.param))
            .collect(),
    )?;
    restore_into(
        &f.join("exp_avg.safetensors"),
        opt.params
            .iter_mut()
            .map(|p| (p.name.as_str(), &mut p.exp_avg))
            .collect(),
    )?;
    restore_into(
        &f.join("exp_avg_sq.safetensors"),
        opt.params
            .iter_mut()
            .map(|p| (p.name.as_str(), &mut p.exp_avg_sq))
            .collect(),
    )?;
    opt.step = state.step;
    Ok(state.curve)
}

/// Load only the parameters of checkpoint `step` into `opt` (the best one's, at the end
/// of a run that keeps it).
pub fn restore_weights(dir: &Path, step: u64, opt: &mut AdamW) -> Result<()> {
    restore_into(
        &folder(dir, step).join("weights.safetensors"),
        opt.params
            .iter_mut()
            .map(|p| (p.name.as_str(), &mut p.param))
            .collect(),
    )
}

/// Apply the retention policy: delete all but the last `keep_last`, and `best`.
pub fn prune(dir: &Path, keep_last: usize, best: Option<u64>) -> Result<()> {
    for step in super::retention::to_delete(&list(dir), keep_last, best) {
        let f = folder(dir, step);
        std::fs::remove_dir_all(&f).map_err(|e| Error::io(&f, e))?;
    }
    Ok(())
}

/// What is left of a training stage's resume checkpoints once it has succeeded
/// (`checkpoints_after_success`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterSuccess {
    /// None: the exported model is the stage's result.
    #[default]
    Remove,
    /// The newest checkpoint's weights (and its state), without the optimizer moments.
    Last,
    /// Every checkpoint the retention policy kept, moments included.
    All,
}

/// Settle the checkpoints of a finished run (in its partial folder, which the runner then
/// removes) at `dest` as `policy` says, replacing what an earlier run left there.
pub fn publish(from: &Path, dest: &Path, policy: AfterSuccess) -> Result<()> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    }
    match policy {
        AfterSuccess::Remove => return Ok(()),
        AfterSuccess::All => {}
        AfterSuccess::Last => {
            let steps = list(from);
            for &step in steps.iter().rev().skip(1) {
                let f = folder(from, step);
                std::fs::remove_dir_all(&f).map_err(|e| Error::io(&f, e))?;
            }
            if let Some(&last) = steps.last() {
                for moments in ["exp_avg.safetensors", "exp_avg_sq.safetensors"] {
                    let f = folder(from, last).join(moments);
                    std::fs::remove_file(&f).map_err(|e| Error::io(&f, e))?;
                }
            }
        }
    }
    std::fs::rename(from, dest).map_err(|e| Error::io(dest, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoint folders as `Snapshot::write` leaves them, with placeholder files.
    fn fake(dir: &Path, steps: &[u64]) {
        for &s in steps {
            let f = folder(dir, s);
            std::fs::create_dir_all(&f).unwrap();
            for name in [
                "weights.safetensors",
                "exp_avg.safetensors",
                "exp_avg_sq.safetensors",
                "state.json",
            ] {
                std::fs::write(f.join(name), name).unwrap();
            }
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for step in list(dir) {
            for e in std::fs::read_dir(folder(dir, step)).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                out.push(format!("{step}/{name}"));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn publish_follows_the_policy_and_replaces_an_old_folder() {
        let d = tempfile::tempdir().unwrap();
        for (policy, want) in [
            (AfterSuccess::Remove, None),
            (
                AfterSuccess::Last,
                Some(vec!["6/state.json", "6/weights.safetensors"]),
            ),
            (
                AfterSuccess::All,
                Some(vec![
                    "4/exp_avg.safetensors",
                    "4/exp_avg_sq.safetensors",
                    "4/state.json",
                    "4/weights.safetensors",
                    "6/exp_avg.safetensors",
                    "6/exp_avg_sq.safetensors",
                    "6/state.json",
                    "6/weights.safetensors",
                ]),
            ),
        ] {
            let (from, dest) = (d.path().join("partial"), d.path().join("published"));
            fake(&from, &[4, 6]);
            fake(&dest, &[1]);
            publish(&from, &dest, policy).unwrap();
            match want {
                None => assert!(!dest.exists(), "{policy:?}"),
                Some(want) => assert_eq!(files(&dest), want, "{policy:?}"),
            }
            let _ = std::fs::remove_dir_all(&from);
            let _ = std::fs::remove_dir_all(&dest);
        }
    }

    /// A snapshot of a model on the CPU holds copies: an optimizer step made while it is
    /// written does not reach the files, which load back as the values it was taken with.
    #[test]
    fn a_snapshot_on_the_cpu_is_not_changed_by_the_next_step() {
        a_snapshot_is_not_changed_by_the_next_step(tch::Device::Cpu);
    }

    /// On CUDA the snapshot holds the values it was taken with: not the next step's
    /// in-place update queued behind its copies, and not memory read before the copies
    /// ran. Runs where a GPU is, passes trivially elsewhere.
    #[test]
    fn a_snapshot_on_cuda_is_not_changed_by_the_next_step() {
        if tch::Cuda::is_available() && crate::ffi::available() {
            a_snapshot_is_not_changed_by_the_next_step(tch::Device::Cuda(0));
        }
    }

    fn a_snapshot_is_not_changed_by_the_next_step(device: tch::Device) {
        use super::super::optimizer::AdamWConfig;
        let opts = (tch::Kind::Float, device);
        // Large enough on CUDA that copying it takes a while.
        let start = (Tensor::arange(1 << 22, opts) * 0.001).sin();
        let mut opt = AdamW::new(
            [("w".to_string(), start.copy())].into(),
            AdamWConfig::default(),
        );
        opt.step = 3;
        if device.is_cuda() {
            // Tens of milliseconds of device work that the parameter waits for (adding
            // zero), so that its copy is still queued when the snapshot is written: a copy
            // to the host that did not wait for the snapshot's mark would read it early.
            let mut heavy = Tensor::randn([4096, 4096], opts);
            for _ in 0..20 {
                heavy = heavy.matmul(&heavy).tanh();
            }
            let _ = opt.params[0]
                .param
                .g_add_(&(heavy.sum(tch::Kind::Float) * 0.0));
        }
        let snap = snapshot(&opt, &LossCurve::default()).unwrap();
        let _ = opt.params[0].param.g_add_scalar_(10.0);
        let _ = opt.params[0].exp_avg.g_add_scalar_(10.0);
        let d = tempfile::tempdir().unwrap();
        snap.write(d.path()).unwrap();
        let mut fresh = AdamW::new(
            [(
                "w".to_string(),
                Tensor::zeros([1 << 22], (tch::Kind::Float, tch::Device::Cpu)),
            )]
            .into(),
            AdamWConfig::default(),
        );
        load(d.path(), 3, &mut fresh).unwrap();
        assert!(fresh.params[0]
            .param
            .equal(&start.to_device(tch::Device::Cpu)));
        assert_eq!(
            fresh.params[0]
                .exp_avg
                .abs()
                .sum(tch::Kind::Float)
                .double_value(&[]),
            0.0
        );
    }
}
