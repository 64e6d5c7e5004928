//! `distill bench`: the four GPU workloads of the performance issue, run through the same
//! code paths as the pipeline (length-sorted encoding, cross-encoder scoring, a student
//! distillation step with our AdamW, chunked exact top-k), and, in the same invocation,
//! the identical workloads in PyTorch + transformers (`scripts/bench_torch.py`).
//!
//! - W1 encode: bi-encoder forward + mean pooling + normalise, 256 passages a batch,
//!   lengths uniform in [128, 256].
//! - W2 score: cross-encoder forward on pairs, 256 a batch, lengths uniform in [128, 256]
//!   (segment A 16 to 32 tokens).
//! - W3 train: one distillation step: 64 queries (16 to 32 tokens) x (1 positive + 7
//!   negatives, 100 to 200 tokens), margin-MSE + InfoNCE, AdamW, bf16 activations.
//! - W4 mine: exact top-100 of 100,000 queries over 1,000,000 embeddings (dim 384).
//!
//! The model is the student directory (MiniLM-L6 shapes; its weights do not matter for
//! speed); W2's classifier head is fresh. "Useful" FLOPs count the matmuls of the real,
//! unpadded tokens only ([`crate::model::work`], held to torch's FlopCounterMode; the
//! formula of `bench_torch.py`).
use crate::error::{Error, Result};
use crate::ffi::memory::{peak_memory, reset_peak_memory};
use crate::model::bert::Kernels;
use crate::model::tokenizer::Encoded;
use crate::model::work::{forward_flops, Work};
use crate::model::{BiEncoder, CrossEncoder};
use crate::rng::SplitMix64;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[path = "bench_train.rs"]
mod train;
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    W1,
    W2,
    W3,
    W4,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::W1 => "w1",
            Workload::W2 => "w2",
            Workload::W3 => "w3",
            Workload::W4 => "w4",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Workload::W1 => "passages/s",
            Workload::W2 => "pairs/s",
            Workload::W3 | Workload::W4 => "queries/s",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchSettings {
    pub model: PathBuf,
    pub workloads: Vec<Workload>,
    pub device: Device,
    /// Seconds of timed work per workload and implementation.
    pub seconds: f64,
    /// Shrunken shapes for a CPU smoke test.
    pub small: bool,
    /// Python interpreter for the PyTorch side; None runs distill only.
    pub python: Option<PathBuf>,
    pub script: PathBuf,
    /// The GPU's dense bf16 peak, TFLOP/s.
    pub peak_tflops: f64,
    pub seed: u64,
    /// Write a Kineto trace of a few units of each workload and implementation here
    /// (`<w>-distill.json`, `<w>-pytorch.json`).
    pub profile: Option<PathBuf>,
    /// CUDA batches packed with variable-length flash attention (the default), or padded.
    pub packed: bool,
    /// The fused add + LayerNorm kernel for inference on CUDA (the default), or aten's.
    pub fused: bool,
}

impl BenchSettings {
    /// The kernels the models run, as `packed` and `fused` choose them.
    fn kernels(&self) -> Kernels {
        Kernels {
            packed_attention: self.packed,
            fused_add_norm: self.fused,
            ..Kernels::default()
        }
    }
}

/// One implementation on one workload.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Measurement {
    pub workload: String,
    #[serde(rename = "impl")]
    pub implementation: String,
    pub items: u64,
    pub seconds: f64,
    pub items_per_s: f64,
    pub peak_mem_bytes: u64,
    pub useful_tokens: u64,
    pub useful_flops: f64,
    #[serde(default)]
    pub note: String,
}

/// Shapes of the workloads, full size or small.
struct Shapes {
    batch: usize,
    batches: usize,
    len: (usize, usize),
    queries: usize,
    query_len: (usize, usize),
    doc_len: (usize, usize),
    docs_per_query: usize,
    search: (i64, i64, i64, i64),
}

impl Shapes {
    fn new(small: bool) -> Self {
        if small {
            Shapes {
                batch: 8,
                batches: 4,
                len: (16, 32),
                queries: 8,
                query_len: (8, 12),
                doc_len: (16, 32),
                docs_per_query: 8,
                search: (1_000, 10_000, 256, 4_096),
            }
        } else {
            Shapes {
                batch: 256,
                batches: 16,
                len: (128, 256),
                queries: 64,
                query_len: (16, 32),
                doc_len: (100, 200),
                docs_per_query: 8,
                // queries, passages, query chunk, corpus chunk
                search: (100_000, 1_000_000, 4_096, 262_144),
            }
        }
    }
}

fn uniform(rng: &mut SplitMix64, (lo, hi): (usize, usize)) -> usize {
    lo + (rng.next_u64() % (hi - lo + 1) as u64) as usize
}

/// Random token ids ([CLS] ... [SEP]) of lengths uniform in `len`; with `pair`, the first
/// 16 to 32 tokens are segment 0 and the rest segment 1.
fn random_inputs(rng: &mut SplitMix64, n: usize, len: (usize, usize), pair: bool) -> Vec<Encoded> {
    (0..n)
        .map(|_| {
            let l = uniform(rng, len);
            let mut ids: Vec<i64> = (0..l)
                .map(|_| 1000 + (rng.next_u64() % 29_000) as i64)
                .collect();
            ids[0] = 101;
            ids[l - 1] = 102;
            let a = if pair {
                uniform(rng, (16, 32)).min(l)
            } else {
                l
            };
            if pair {
                ids[a - 1] = 102;
            }
            let type_ids = (0..l).map(|j| i64::from(j >= a)).collect();
            Encoded { ids, type_ids }
        })
        .collect()
}

fn sync(device: Device) {
    if let Device::Cuda(n) = device {
        tch::Cuda::synchronize(n as i64);
    }
}

/// Run `unit` `warmup` times (once per distinct input, so that shape-specific kernel
/// plans are built before the clock starts, as `bench_torch.py` does), then repeatedly
/// for `seconds`; `unit` returns (items, useful tokens, useful FLOPs) of one call.
fn timed(
    s: &BenchSettings,
    w: Workload,
    warmup: usize,
    mut unit: impl FnMut() -> Result<(u64, u64, f64)>,
) -> Result<Measurement> {
    for _ in 0..warmup.max(1) {
        unit()?;
    }
    sync(s.device);
    reset_peak_memory(s.device);
    let start = Instant::now();
    let (mut items, mut tokens, mut flops) = (0u64, 0u64, 0f64);
    while start.elapsed().as_secs_f64() < s.seconds || items == 0 {
        let (a, b, c) = unit()?;
        items += a;
        tokens += b;
        flops += c;
    }
    sync(s.device);
    let seconds = start.elapsed().as_secs_f64();
    let peak_mem_bytes = peak_memory(s.device).unwrap_or(0);
    if let Some(dir) = &s.profile {
        crate::ffi::profiler::profiler_start(s.device.is_cuda(), true)?;
        for _ in 0..3 {
            unit()?;
        }
        sync(s.device);
        crate::ffi::profiler::profiler_stop(&dir.join(format!("{}-distill.json", w.name())))?;
    }
    Ok(Measurement {
        workload: w.name().into(),
        implementation: "distill".into(),
        items,
        seconds,
        items_per_s: items as f64 / seconds,
        peak_mem_bytes,
        useful_tokens: tokens,
        useful_flops: flops,
        note: String::new(),
    })
}

/// The real tokens of `inputs` and `mult` times their forward pass's model FLOPs
/// ([`crate::model::work::forward_flops`]) at MiniLM-L6's shape.
fn flops_of(inputs: &[Encoded], mult: f64) -> (u64, f64) {
    let work: Work = inputs
        .iter()
        .map(|e| {
            let n = e.len() as u64;
            Work {
                rows: 1,
                tokens: n,
                squares: n * n,
            }
        })
        .sum();
    let minilm = crate::model::hf_config::BertConfig {
        hidden_size: 384,
        num_hidden_layers: 6,
        intermediate_size: 1536,
        ..Default::default()
    };
    (work.tokens, mult * forward_flops(&minilm, &work))
}

fn run_distill(s: &BenchSettings, w: Workload) -> Result<Measurement> {
    let shapes = Shapes::new(s.small);
    let mut rng = SplitMix64::for_key(s.seed, w.name());
    tch::manual_seed(s.seed as i64);
    let kind = if s.device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    match w {
        Workload::W1 => {
            let mut model = BiEncoder::load(&s.model, s.device, kind, Some(512))?;
            let inputs = random_inputs(&mut rng, shapes.batch * shapes.batches, shapes.len, false);
            let (tokens, flops) = flops_of(&inputs, 1.0);
            let check = path_differences(s, &inputs[..shapes.batch], |kernels, e| {
                model.set_kernels(kernels);
                model.encode_tokenized(e, shapes.batch, &mut |_| {})
            })?;
            model.set_kernels(s.kernels());
            let mut m = timed(s, w, 1, || {
                let _ = model.encode_tokenized(&inputs, shapes.batch, &mut |_| {})?;
                Ok((inputs.len() as u64, tokens, flops))
            })?;
            m.note = check;
            Ok(m)
        }
        Workload::W2 => {
            let mut model = CrossEncoder::from_encoder(&s.model, Some(512), s.device, kind)?;
            let inputs = random_inputs(&mut rng, shapes.batch * shapes.batches, shapes.len, true);
            let (tokens, flops) = flops_of(&inputs, 1.0);
            let check = path_differences(s, &inputs[..shapes.batch], |kernels, e| {
                model.set_kernels(kernels);
                Ok(Tensor::from_slice(&model.logits_tokenized(
                    e,
                    shapes.batch,
                    &mut |_| {},
                )?))
            })?;
            model.set_kernels(s.kernels());
            let mut m = timed(s, w, 1, || {
                model.logits_tokenized(&inputs, shapes.batch, &mut |_| {})?;
                Ok((inputs.len() as u64, tokens, flops))
            })?;
            m.note = check;
            Ok(m)
        }
        Workload::W3 => train::run_train(s, &shapes, &mut rng),
        Workload::W4 => {
            let (nq, nc, q_chunk, c_chunk) = shapes.search;
            let normal = |n: i64| {
                let t = Tensor::randn([n, 384], (Kind::Float, s.device));
                let norm = t.norm_scalaropt_dim(2, [1].as_slice(), true);
                (t / norm).to_kind(kind)
            };
            let (queries, corpus) = (normal(nq), normal(nc));
            let mut next = 0i64;
            timed(s, w, ((nq + q_chunk - 1) / q_chunk) as usize, || {
                let len = q_chunk.min(nq - next);
                let q = queries.narrow(0, next, len);
                crate::retrieval::top_k(&q, &corpus, 100, c_chunk as usize)?;
                next = (next + len) % nq;
                Ok((len as u64, 0, 2.0 * (len * nc * 384) as f64))
            })
        }
    }
}

/// On CUDA, the largest differences from the product path's outputs on `inputs` (notes for
/// the table): packed against padded attention (both with aten's add + LayerNorm), and
/// the fused add + LayerNorm kernel against aten's (both packed); empty elsewhere. `run`
/// sets the kernels on its model and runs it; the caller sets its own choice back after.
fn path_differences(
    s: &BenchSettings,
    inputs: &[Encoded],
    mut run: impl FnMut(Kernels, &[Encoded]) -> Result<Tensor>,
) -> Result<String> {
    if !s.device.is_cuda() {
        return Ok(String::new());
    }
    let mut with = |packed_attention: bool, fused_add_norm: bool| {
        let kernels = Kernels {
            packed_attention,
            fused_add_norm,
            ..Kernels::default()
        };
        run(kernels, inputs)
    };
    let (padded, packed, fused) = (with(false, false), with(true, false), with(true, true));
    let (padded, packed, fused) = (padded?, packed?, fused?);
    let max_diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    Ok(format!(
        "packed vs padded outputs: max |diff| {:.2e}; fused add+LayerNorm vs aten: max |diff| {:.2e}{}",
        max_diff(&packed, &padded),
        max_diff(&fused, &packed),
        fused_kernel_check(s.device),
    ))
}

/// The fused add + LayerNorm kernel against aten's add then layer_norm on random bf16
/// rows of width 384 (a note for the table): how many outputs differ, and by how much; or
/// why the kernel is not available (the model then runs aten's kernels).
fn fused_kernel_check(device: Device) -> String {
    let _guard = tch::no_grad_guard();
    let bf16 = (Kind::BFloat16, device);
    let (x, r) = (
        Tensor::randn([8192, 384], bf16),
        Tensor::randn([8192, 384], bf16),
    );
    let (w, b) = (Tensor::randn([384], bf16), Tensor::randn([384], bf16));
    let fused = match crate::ffi::layer_norm::add_layer_norm(&x, &r, &w, &b, 1e-12) {
        Ok(t) => t.to_kind(Kind::Float),
        Err(e) => return format!("; fused kernel not available: {e}"),
    };
    let aten = (&x + &r)
        .layer_norm([384], Some(&w), Some(&b), 1e-12, false)
        .to_kind(Kind::Float);
    let differ = fused.ne_tensor(&aten).sum(Kind::Int64).int64_value(&[]);
    format!(
        "; kernel alone on 8192x384 bf16: {differ} of {} outputs differ, max |diff| {:.2e}",
        fused.numel(),
        (&fused - &aten).abs().max().double_value(&[])
    )
}

/// The PyTorch side: `bench_torch.py` prints one JSON line.
fn run_torch(s: &BenchSettings, python: &PathBuf, w: Workload) -> Result<Measurement> {
    let device = if s.device.is_cuda() { "cuda" } else { "cpu" };
    let mut cmd = std::process::Command::new(python);
    cmd.arg(&s.script)
        .args(["--workload", w.name(), "--device", device])
        .args([
            "--seconds",
            &s.seconds.to_string(),
            "--seed",
            &s.seed.to_string(),
        ]);
    if s.small {
        cmd.arg("--small");
    }
    if let Some(dir) = &s.profile {
        cmd.arg("--profile")
            .arg(dir.join(format!("{}-pytorch.json", w.name())));
    }
    let out = cmd.output().map_err(|e| Error::io(python, e))?;
    if !out.status.success() {
        return Err(Error::config(
            &s.script,
            format!(
                "{} failed: {}",
                w.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|source| Error::Json {
        path: s.script.clone(),
        source,
    })
}

/// Run every workload with distill, then with PyTorch (when a Python is given); each
/// measurement is passed to `report` as soon as it exists.
pub fn run(s: &BenchSettings, report: &mut dyn FnMut(&Measurement)) -> Result<Vec<Measurement>> {
    let mut all = Vec::new();
    for &w in &s.workloads {
        let m = run_distill(s, w)?;
        report(&m);
        all.push(m);
        if let Some(python) = &s.python {
            let m = run_torch(s, python, w)?;
            report(&m);
            all.push(m);
        }
    }
    Ok(all)
}

/// The comparison table (Markdown): throughput, ratio to PyTorch, peak memory, and the
/// share of the bf16 peak that the useful FLOPs represent.
pub fn table(s: &BenchSettings, all: &[Measurement]) -> String {
    let mut out = String::from(
        "| workload | impl | throughput | distill / PyTorch | peak GPU memory (GiB) | useful TFLOP/s | share of bf16 peak |\n|---|---|---|---|---|---|---|\n",
    );
    for m in all {
        let w = s
            .workloads
            .iter()
            .find(|w| w.name() == m.workload)
            .copied()
            .unwrap_or(Workload::W1);
        let torch = all
            .iter()
            .find(|o| o.workload == m.workload && o.implementation == "pytorch");
        let ratio = match torch {
            Some(t) if m.implementation == "distill" && t.items_per_s > 0.0 => {
                format!("{:.2}x", m.items_per_s / t.items_per_s)
            }
            _ => "-".into(),
        };
        let tflops = m.useful_flops / m.seconds / 1e12;
        out.push_str(&format!(
            "| {} | {} | {:.0} {} | {} | {:.2} | {:.1} | {:.1}% |\n",
            m.workload,
            m.implementation,
            m.items_per_s,
            w.unit(),
            ratio,
            m.peak_mem_bytes as f64 / (1u64 << 30) as f64,
            tflops,
            100.0 * tflops / s.peak_tflops
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_pairs_have_two_segments() {
        let mut rng = SplitMix64::new(1);
        for e in random_inputs(&mut rng, 20, (40, 60), true) {
            assert!((40..=60).contains(&e.len()));
            assert_eq!((e.ids[0], *e.ids.last().unwrap()), (101, 102));
            let a = e.type_ids.iter().filter(|&&t| t == 0).count();
            assert!((16..=32).contains(&a));
            assert_eq!(e.ids[a - 1], 102);
        }
    }
}
