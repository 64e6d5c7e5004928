//! Residual add + LayerNorm in one CUDA kernel for inference and for training, and
//! LayerNorm for training with its weight gradient by a kernel of ours (`layer_norm.cpp`):
//! compiled at run time by NVRTC and launched through the CUDA driver API (`kernels.h`,
//! both loaded by `nvrtc.cpp`).
use crate::error::Result;
use tch::Tensor;

#[cfg(distill_ffi)]
mod sys {
    use super::super::TensorHandle;
    use std::os::raw::c_char;
    extern "C" {
        pub fn distill_add_layer_norm(
            x: *const TensorHandle,
            residual: *const TensorHandle,
            weight: *const TensorHandle,
            bias: *const TensorHandle,
            eps: f64,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut TensorHandle;
        pub fn distill_train_layer_norm(
            x: *const TensorHandle,
            weight: *const TensorHandle,
            bias: *const TensorHandle,
            eps: f64,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut TensorHandle;
        pub fn distill_train_layer_norm_fallbacks() -> i64;
        pub fn distill_train_add_layer_norm(
            x: *const TensorHandle,
            residual: *const TensorHandle,
            weight: *const TensorHandle,
            bias: *const TensorHandle,
            eps: f64,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut TensorHandle;
        pub fn distill_train_add_layer_norm_fallbacks() -> i64;
        pub fn distill_add_layer_norm_compile(
            h: i64,
            arch: *const c_char,
            err: *mut c_char,
            err_len: usize,
        ) -> i64;
    }
}

/// `layer_norm(x + residual)` over the last dimension in one kernel (compiled at run time
/// by NVRTC, see `src/ffi/layer_norm.cpp`): CUDA bf16/fp16 tensors of one shape, weight
/// and bias of their dtype, hidden size a multiple of 64. Not differentiable: for
/// inference.
pub fn add_layer_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    add_norm(AddNorm::Inference, [x, residual, weight, bias], eps)
}

/// Which add + LayerNorm entry point [`add_norm`] calls.
#[derive(Clone, Copy)]
enum AddNorm {
    Inference,
    Training,
}

/// `layer_norm(x + residual)` by the C++ entry point of `kind`, tensors in the order x,
/// residual, weight, bias.
fn add_norm(kind: AddNorm, tensors: [&Tensor; 4], eps: f64) -> Result<Tensor> {
    let what = match kind {
        AddNorm::Inference => "fused add + LayerNorm",
        AddNorm::Training => "add + LayerNorm for training",
    };
    #[cfg(distill_ffi)]
    {
        let f = match kind {
            AddNorm::Inference => sys::distill_add_layer_norm,
            AddNorm::Training => sys::distill_train_add_layer_norm,
        };
        let h = super::handles(&tensors);
        super::owned_tensor(what, |err, len| {
            // SAFETY: the handles point to live tensors for the duration of the call; the
            // function catches C++ exceptions.
            unsafe { f(h[0], h[1], h[2], h[3], eps, err, len) }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = (tensors, eps);
        Err(super::unavailable(what))
    }
}

/// `layer_norm(x)` over the last dimension, differentiable, for training: aten's forward
/// and input gradient; on CUDA in bf16/fp16 (hidden size a multiple of 64) the weight's and
/// bias's gradients by a kernel that spreads the rows over blocks (aten's runs one block
/// per 32 columns below 64k rows), elsewhere, or should it fail, aten's. Weight and bias of
/// `x`'s dtype, one value per column.
pub fn train_layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    #[cfg(distill_ffi)]
    {
        let h = super::handles(&[x, weight, bias]);
        super::owned_tensor("LayerNorm for training", |err, len| {
            // SAFETY: the handles point to live tensors for the duration of the call; the
            // function catches C++ exceptions.
            unsafe { sys::distill_train_layer_norm(h[0], h[1], h[2], eps, err, len) }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = (x, weight, bias, eps);
        Err(super::unavailable("LayerNorm for training"))
    }
}

/// How many times the weight-gradient kernel of [`train_layer_norm`] failed in this
/// process (at most once a thread: its first failure turns it off, and aten's gradients
/// serve from then on); 0 without the C++ side.
pub fn train_layer_norm_fallbacks() -> i64 {
    #[cfg(distill_ffi)]
    {
        // SAFETY: reads an atomic counter.
        unsafe { sys::distill_train_layer_norm_fallbacks() }
    }
    #[cfg(not(distill_ffi))]
    {
        0
    }
}

/// `layer_norm(x + residual)` over the last dimension, differentiable, for training: on
/// CUDA in bf16/fp16 (one shape, hidden size a multiple of 64 up to 4096) the add and the
/// LayerNorm in one kernel of ours, which also keeps the rounded sum and each row's mean
/// and 1/std for the backward pass (the inference kernel's arithmetic: the sum rounded to
/// the dtype, mean and variance in fp32, the output rounded once); elsewhere, or should it
/// fail, aten's add and layer_norm. The backward pass is [`train_layer_norm`]'s on the sum,
/// whose input gradient is both `x`'s and `residual`'s.
pub fn train_add_layer_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    add_norm(AddNorm::Training, [x, residual, weight, bias], eps)
}

/// How many times the kernel of [`train_add_layer_norm`] failed in this process (its first
/// failure turns it off, and aten's add and layer_norm serve from then on); 0 without the
/// C++ side.
pub fn train_add_layer_norm_fallbacks() -> i64 {
    #[cfg(distill_ffi)]
    {
        // SAFETY: reads an atomic counter.
        unsafe { sys::distill_train_add_layer_norm_fallbacks() }
    }
    #[cfg(not(distill_ffi))]
    {
        0
    }
}

/// Compile the fused add + LayerNorm kernel (bf16, hidden size `h`) to PTX for `arch`
/// (e.g. "compute_90") without running it: whether NVRTC is present and takes the source.
/// Returns the size of the PTX.
pub fn add_layer_norm_compile(h: i64, arch: &str) -> Result<usize> {
    #[cfg(distill_ffi)]
    {
        let arch = std::ffi::CString::new(arch).map_err(|e| {
            crate::error::Error::torch("architecture name", tch::TchError::Torch(e.to_string()))
        })?;
        // NVRTC's log can be long: a larger buffer than the other entry points'.
        let mut err = vec![0u8; 4096];
        // SAFETY: `arch` is a live C string; the function catches C++ exceptions.
        let n = unsafe {
            sys::distill_add_layer_norm_compile(
                h,
                arch.as_ptr(),
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        usize::try_from(n)
            .map_err(|_| super::failed("compiling the fused add + LayerNorm kernel", &err))
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = (h, arch);
        Err(super::unavailable("fused add + LayerNorm"))
    }
}

#[cfg(all(test, distill_ffi))]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// LayerNorm for training against aten's `layer_norm` under autograd, on `device` in
    /// bf16 over `rows` rows of width 384: the output and the input's gradient to the bit
    /// (aten's kernels both), the weight's and bias's within two bf16 steps of the largest
    /// (fp32 sums in another order, each rounded to bf16 once), or to the bit where aten
    /// takes them too (`exact`: the CPU, where the function only wires aten's kernels).
    fn against_aten(device: Device, rows: i64, exact: bool) {
        let opts = (Kind::Float, device);
        let x = (Tensor::randn([rows, 384], opts) * 2.0 + 0.3).to_kind(Kind::BFloat16);
        let w = (Tensor::randn([384], opts) * 0.2 + 1.0).to_kind(Kind::BFloat16);
        let b = (Tensor::randn([384], opts) * 0.1).to_kind(Kind::BFloat16);
        let dy = Tensor::randn([rows, 384], opts).to_kind(Kind::BFloat16);
        let run = |ours: bool| {
            let [x, w, b] = [&x, &w, &b].map(|t| t.detach().set_requires_grad(true));
            let y = match ours {
                true => train_layer_norm(&x, &w, &b, 1e-12).unwrap(),
                false => x.layer_norm([384], Some(&w), Some(&b), 1e-12, true),
            };
            (y.to_kind(Kind::Float) * dy.to_kind(Kind::Float))
                .sum(Kind::Float)
                .backward();
            [y.detach(), x.grad(), w.grad(), b.grad()].map(|t| t.to_kind(Kind::Float))
        };
        let (ours, aten) = (run(true), run(false));
        for (i, name) in ["output", "input gradient"].iter().enumerate() {
            let d = (&ours[i] - &aten[i]).abs().max().double_value(&[]);
            assert_eq!(d, 0.0, "{name}, {rows} rows");
        }
        for (i, name) in [(2, "weight gradient"), (3, "bias gradient")] {
            let scale = aten[i].abs().max().double_value(&[]);
            let d = (&ours[i] - &aten[i]).abs().max().double_value(&[]) / scale;
            let bound = if exact { 0.0 } else { 2f64.powi(-7) };
            assert!(d <= bound, "{name}, {rows} rows: {d}");
        }
    }

    /// On the CPU the function runs aten's forward and backward: its autograd wiring (what
    /// it saves, the order of its gradients) gives aten's values to the bit.
    #[test]
    fn train_layer_norm_matches_aten_on_the_cpu() {
        tch::manual_seed(3);
        against_aten(Device::Cpu, 64, true);
    }

    /// On CUDA the weight's and bias's gradients come from the split kernel: row counts
    /// below and above aten's 64k switch, one block's worth and a ragged last block. Runs
    /// where a GPU is (the device machine: BENCHMARKS.md), passes trivially elsewhere.
    #[test]
    fn train_layer_norm_weight_gradients_match_aten_on_cuda() {
        if !tch::Cuda::is_available() {
            return;
        }
        tch::manual_seed(3);
        let before = train_layer_norm_fallbacks();
        for rows in [1, 63, 1000, 44_032, 70_001] {
            against_aten(Device::Cuda(0), rows, false);
        }
        // The kernel ran: it never failed.
        assert_eq!(train_layer_norm_fallbacks(), before);
    }

    /// The add + LayerNorm for training against aten's add and `layer_norm` under autograd,
    /// on `device` in bf16 over `rows` rows of width 384 (deterministic values): the
    /// output, and the gradients of x and the residual (equal), within one bf16 step of the
    /// largest where the kernel takes the statistics its way (two passes, where aten's
    /// Welford differs in the last bits), the weight's and bias's within two; or all to the
    /// bit (`exact`: the CPU, where the function runs aten's kernels).
    fn add_norm_against_aten(device: Device, rows: i64, exact: bool) {
        let opts = (Kind::Float, device);
        let wave = |n: i64, f: f64, scale: f64| (Tensor::arange(n, opts) * f).sin() * scale;
        let x = (wave(rows * 384, 0.37, 2.0) + 0.3)
            .view([rows, 384])
            .to_kind(Kind::BFloat16);
        let r = wave(rows * 384, 0.19, 1.0)
            .view([rows, 384])
            .to_kind(Kind::BFloat16);
        let w = (wave(384, 1.1, 0.2) + 1.0).to_kind(Kind::BFloat16);
        let b = wave(384, 0.7, 0.1).to_kind(Kind::BFloat16);
        let dy = wave(rows * 384, 0.53, 1.0)
            .view([rows, 384])
            .to_kind(Kind::BFloat16);
        let run = |ours: bool| {
            let [x, r, w, b] = [&x, &r, &w, &b].map(|t| t.detach().set_requires_grad(true));
            let y = match ours {
                true => train_add_layer_norm(&x, &r, &w, &b, 1e-12).unwrap(),
                false => (&x + &r).layer_norm([384], Some(&w), Some(&b), 1e-12, true),
            };
            (y.to_kind(Kind::Float) * dy.to_kind(Kind::Float))
                .sum(Kind::Float)
                .backward();
            [y.detach(), x.grad(), r.grad(), w.grad(), b.grad()].map(|t| t.to_kind(Kind::Float))
        };
        let (ours, aten) = (run(true), run(false));
        let names = [
            "output",
            "x's gradient",
            "residual's gradient",
            "weight's",
            "bias's",
        ];
        for (i, name) in names.iter().enumerate() {
            let scale = aten[i].abs().max().double_value(&[]).max(1e-30);
            let d = (&ours[i] - &aten[i]).abs().max().double_value(&[]) / scale;
            let steps = if i < 3 { 1 } else { 2 };
            // A bf16 step is at most 2^-7 of a value (at the bottom of its binade).
            let bound = if exact {
                0.0
            } else {
                steps as f64 * 2f64.powi(-7)
            };
            assert!(d <= bound, "{name}, {rows} rows: {d}");
        }
    }

    /// On the CPU the function runs aten's add, layer_norm and backward: its autograd
    /// wiring (the sum's gradient to both inputs) gives aten's values to the bit.
    #[test]
    fn train_add_layer_norm_matches_aten_on_the_cpu() {
        add_norm_against_aten(Device::Cpu, 70, true);
    }

    /// On CUDA the forward is the fused kernel. Runs where a GPU is, passes trivially
    /// elsewhere.
    #[test]
    fn train_add_layer_norm_matches_aten_on_cuda() {
        if !tch::Cuda::is_available() {
            return;
        }
        let before = train_add_layer_norm_fallbacks();
        for rows in [1, 7, 1000, 44_032] {
            add_norm_against_aten(Device::Cuda(0), rows, false);
        }
        assert_eq!(train_add_layer_norm_fallbacks(), before);
    }

    #[test]
    fn add_layer_norm_kernel_compiles_with_nvrtc() {
        // No GPU needed, but the CUDA torch wheel that `make setup` installs: its NVRTC
        // compiles the fused kernel's source to PTX for Hopper and Ampere, at MiniLM's and
        // BERT-base's widths.
        for (h, arch) in [(384, "compute_90"), (768, "compute_80")] {
            let ptx = add_layer_norm_compile(h, arch).unwrap();
            assert!(ptx > 1000, "{h} {arch}: {ptx} bytes of PTX");
        }
        // An architecture NVRTC does not know comes back as an error with its log.
        let e = add_layer_norm_compile(384, "compute_10")
            .unwrap_err()
            .to_string();
        assert!(e.contains("compute_10"), "{e}");
    }
}
