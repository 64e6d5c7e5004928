//! Safe wrappers over `src/torch_extras.cpp`: libtorch functions that tch does not
//! expose. Peak GPU memory of the caching allocator; the multi-tensor kernels that
//! `torch.optim.AdamW(fused=True)` and `clip_grad_norm_(foreach=True)` use. When the
//! build could not compile the shim (libtorch headers not found), `available()` is false
//! and callers keep their per-tensor paths.
use crate::error::{Error, Result};
use tch::{Device, Tensor};

#[cfg(distill_torch_extras)]
mod ffi {
    use std::os::raw::c_char;
    /// tch's tensor handle (`at::Tensor*` on the C++ side).
    pub type TensorHandle = std::ffi::c_void;
    extern "C" {
        pub fn distill_cuda_peak_allocated(device: i32) -> i64;
        pub fn distill_cuda_reset_peak(device: i32) -> i32;
        pub fn distill_fused_adamw(
            params: *const *const TensorHandle,
            grads: *const *const TensorHandle,
            exp_avgs: *const *const TensorHandle,
            exp_avg_sqs: *const *const TensorHandle,
            steps: *const *const TensorHandle,
            n: usize,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
        pub fn distill_clip_grad_norm(
            grads: *const *const TensorHandle,
            n: usize,
            max_norm: f64,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut TensorHandle;
        pub fn distill_zero_grads(
            grads: *const *const TensorHandle,
            n: usize,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
        pub fn distill_varlen_attention(
            q: *const TensorHandle,
            k: *const TensorHandle,
            v: *const TensorHandle,
            cu_seqlens: *const TensorHandle,
            max_len: i64,
            dropout: f64,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut TensorHandle;
        pub fn distill_pinned_upload(
            t: *const TensorHandle,
            device: i32,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut TensorHandle;
        pub fn distill_add_layer_norm(
            x: *const TensorHandle,
            residual: *const TensorHandle,
            weight: *const TensorHandle,
            bias: *const TensorHandle,
            eps: f64,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut TensorHandle;
        pub fn distill_add_layer_norm_compile(
            h: i64,
            arch: *const c_char,
            err: *mut c_char,
            err_len: usize,
        ) -> i64;
        pub fn distill_grad_enabled() -> i32;
        pub fn distill_profiler_start(cuda: i32, err: *mut c_char, err_len: usize) -> i32;
        pub fn distill_profiler_stop(path: *const c_char, err: *mut c_char, err_len: usize) -> i32;
    }
}

/// Whether the shim was built into this binary.
pub fn available() -> bool {
    cfg!(distill_torch_extras)
}

/// Peak bytes allocated by libtorch's CUDA caching allocator on `device` since the last
/// [`reset_peak_memory`] (`torch.cuda.max_memory_allocated`); None off CUDA.
pub fn peak_memory(device: Device) -> Option<u64> {
    match device {
        #[cfg(distill_torch_extras)]
        Device::Cuda(n) => {
            // SAFETY: a C function that catches every C++ exception and returns -1.
            let v = unsafe { ffi::distill_cuda_peak_allocated(n as i32) };
            u64::try_from(v).ok()
        }
        _ => None,
    }
}

/// Start a new peak-memory window on `device` (no-op off CUDA).
pub fn reset_peak_memory(device: Device) {
    #[cfg(distill_torch_extras)]
    if let Device::Cuda(n) = device {
        // SAFETY: as in peak_memory.
        unsafe {
            ffi::distill_cuda_reset_peak(n as i32);
        }
    }
    let _ = device;
}

#[cfg(not(distill_torch_extras))]
fn unavailable(what: &str) -> Error {
    Error::torch(
        what,
        tch::TchError::Torch("not built into this binary".into()),
    )
}

#[cfg(distill_torch_extras)]
fn handles(ts: &[&Tensor]) -> Vec<*const ffi::TensorHandle> {
    ts.iter().map(|t| t.as_ptr().cast()).collect()
}

#[cfg(distill_torch_extras)]
fn failed(what: &str, err: &[u8]) -> Error {
    let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
    Error::torch(
        what,
        tch::TchError::Torch(String::from_utf8_lossy(&err[..end]).into_owned()),
    )
}

/// Call a shim function that returns a fresh `at::Tensor*` (null on an error, with the
/// message written into the buffer it is given) and take ownership of the result.
#[cfg(distill_torch_extras)]
fn owned_tensor(
    what: &str,
    call: impl FnOnce(*mut std::os::raw::c_char, usize) -> *mut ffi::TensorHandle,
) -> Result<Tensor> {
    let mut err = vec![0u8; 1024];
    let out = call(err.as_mut_ptr().cast(), err.len());
    if out.is_null() {
        return Err(failed(what, &err));
    }
    // SAFETY: a non-null result is a fresh `at::Tensor*` allocated by the shim for the
    // caller; the returned Tensor owns and frees it.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// One fused AdamW update of `params` (all on one device, fp32), as
/// `torch.optim.AdamW(fused=True)`; `steps` hold the step number after this update.
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    steps: &[&Tensor],
    lr: f64,
    (beta1, beta2, weight_decay, eps): (f64, f64, f64, f64),
) -> Result<()> {
    let n = params.len();
    let same = [grads.len(), exp_avgs.len(), exp_avg_sqs.len(), steps.len()];
    if same.iter().any(|&m| m != n) {
        return Err(Error::torch(
            "fused AdamW",
            tch::TchError::Shape("tensor lists of different lengths".into()),
        ));
    }
    #[cfg(distill_torch_extras)]
    {
        let mut err = vec![0u8; 1024];
        let (p, g, m, v, s) = (
            handles(params),
            handles(grads),
            handles(exp_avgs),
            handles(exp_avg_sqs),
            handles(steps),
        );
        // SAFETY: the handles point to live tensors for the duration of the call; the
        // function catches C++ exceptions.
        let rc = unsafe {
            ffi::distill_fused_adamw(
                p.as_ptr(),
                g.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                s.as_ptr(),
                n,
                lr,
                beta1,
                beta2,
                weight_decay,
                eps,
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        if rc != 0 {
            return Err(failed("fused AdamW", &err));
        }
        Ok(())
    }
    #[cfg(not(distill_torch_extras))]
    {
        let _ = (lr, beta1, beta2, weight_decay, eps);
        Err(unavailable("fused AdamW"))
    }
}

/// Global L2 norm of `grads` (fp32, a 0-dim tensor on their device) and, with
/// `max_norm` > 0, the gradients scaled in place by `min(1, max_norm / (norm + 1e-6))`,
/// with the multi-tensor kernels and without waiting for the device.
pub fn clip_grad_norm(grads: &[&Tensor], max_norm: f64) -> Result<Tensor> {
    #[cfg(distill_torch_extras)]
    {
        let g = handles(grads);
        owned_tensor("gradient clipping", |err, len| {
            // SAFETY: the handles point to live tensors for the duration of the call; the
            // function catches C++ exceptions.
            unsafe { ffi::distill_clip_grad_norm(g.as_ptr(), g.len(), max_norm, err, len) }
        })
    }
    #[cfg(not(distill_torch_extras))]
    {
        let _ = (grads, max_norm);
        Err(unavailable("gradient clipping"))
    }
}

/// Zero `grads` in place with one multi-tensor launch.
pub fn zero_grads(grads: &[&Tensor]) -> Result<()> {
    #[cfg(distill_torch_extras)]
    {
        let mut err = vec![0u8; 1024];
        let g = handles(grads);
        // SAFETY: as in fused_adamw.
        let rc = unsafe {
            ffi::distill_zero_grads(g.as_ptr(), g.len(), err.as_mut_ptr().cast(), err.len())
        };
        if rc != 0 {
            return Err(failed("zeroing gradients", &err));
        }
        Ok(())
    }
    #[cfg(not(distill_torch_extras))]
    {
        let _ = grads;
        Err(unavailable("zeroing gradients"))
    }
}

/// Flash attention over packed sequences (`flash_attn_varlen_func`): `q`, `k`, `v`
/// `[tokens, heads, head_dim]` in bf16 or fp16 on CUDA, `cu_seqlens` int32 offsets
/// `[sequences + 1]`, `max_len` the longest sequence; `[tokens, heads, head_dim]` out,
/// differentiable.
pub fn varlen_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    max_len: i64,
    dropout: f64,
) -> Result<Tensor> {
    #[cfg(distill_torch_extras)]
    {
        let h = handles(&[q, k, v, cu_seqlens]);
        owned_tensor("variable-length attention", |err, len| {
            // SAFETY: as in clip_grad_norm.
            unsafe {
                ffi::distill_varlen_attention(h[0], h[1], h[2], h[3], max_len, dropout, err, len)
            }
        })
    }
    #[cfg(not(distill_torch_extras))]
    {
        let _ = (q, k, v, cu_seqlens, max_len, dropout);
        Err(unavailable("variable-length attention"))
    }
}

/// Copy the CPU tensor `host` to CUDA device `device` through pinned memory, without
/// waiting for the device.
pub fn pinned_upload(host: &Tensor, device: usize) -> Result<Tensor> {
    #[cfg(distill_torch_extras)]
    {
        owned_tensor("copying to the GPU", |err, len| {
            // SAFETY: `host` is live for the call; the function catches C++ exceptions.
            unsafe { ffi::distill_pinned_upload(host.as_ptr().cast(), device as i32, err, len) }
        })
    }
    #[cfg(not(distill_torch_extras))]
    {
        let _ = (host, device);
        Err(unavailable("pinned copies"))
    }
}

/// `layer_norm(x + residual)` over the last dimension in one kernel (compiled at run time
/// by NVRTC, see `src/torch_extras.cpp`): CUDA bf16/fp16 tensors of one shape, weight and
/// bias of their dtype, hidden size a multiple of 64. Not differentiable: for inference.
pub fn add_layer_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    #[cfg(distill_torch_extras)]
    {
        let h = handles(&[x, residual, weight, bias]);
        owned_tensor("fused add + LayerNorm", |err, len| {
            // SAFETY: as in clip_grad_norm.
            unsafe { ffi::distill_add_layer_norm(h[0], h[1], h[2], h[3], eps, err, len) }
        })
    }
    #[cfg(not(distill_torch_extras))]
    {
        let _ = (x, residual, weight, bias, eps);
        Err(unavailable("fused add + LayerNorm"))
    }
}

/// Compile the fused add + LayerNorm kernel (bf16, hidden size `h`) to PTX for `arch`
/// (e.g. "compute_90") without running it: whether NVRTC is present and takes the source.
/// Returns the size of the PTX.
pub fn add_layer_norm_compile(h: i64, arch: &str) -> Result<usize> {
    #[cfg(distill_torch_extras)]
    {
        let arch = std::ffi::CString::new(arch)
            .map_err(|e| Error::torch("architecture name", tch::TchError::Torch(e.to_string())))?;
        let mut err = vec![0u8; 4096];
        // SAFETY: `arch` is a live C string; the function catches C++ exceptions.
        let n = unsafe {
            ffi::distill_add_layer_norm_compile(
                h,
                arch.as_ptr(),
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        usize::try_from(n).map_err(|_| failed("compiling the fused add + LayerNorm kernel", &err))
    }
    #[cfg(not(distill_torch_extras))]
    {
        let _ = (h, arch);
        Err(unavailable("fused add + LayerNorm"))
    }
}

/// Whether autograd records operations on this thread (`torch.is_grad_enabled()`);
/// true when the shim is not built in.
pub fn grad_enabled() -> bool {
    #[cfg(distill_torch_extras)]
    {
        // SAFETY: a C function without arguments that cannot throw.
        unsafe { ffi::distill_grad_enabled() != 0 }
    }
    #[cfg(not(distill_torch_extras))]
    {
        true
    }
}

/// Start libtorch's Kineto profiler (`torch.profiler`): CPU operators, and CUDA kernels
/// when `cuda`. [`profiler_stop`] writes the trace.
pub fn profiler_start(cuda: bool) -> Result<()> {
    #[cfg(distill_torch_extras)]
    {
        let mut err = vec![0u8; 1024];
        // SAFETY: a C function that catches every C++ exception.
        let rc = unsafe {
            ffi::distill_profiler_start(i32::from(cuda), err.as_mut_ptr().cast(), err.len())
        };
        if rc != 0 {
            return Err(failed("starting the profiler", &err));
        }
        Ok(())
    }
    #[cfg(not(distill_torch_extras))]
    {
        let _ = cuda;
        Err(unavailable("the profiler"))
    }
}

/// Stop the profiler started by [`profiler_start`] and write its Chrome trace (JSON).
pub fn profiler_stop(path: &std::path::Path) -> Result<()> {
    #[cfg(distill_torch_extras)]
    {
        let mut err = vec![0u8; 1024];
        let c = std::ffi::CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| Error::config(path, "path holds a NUL byte"))?;
        // SAFETY: `c` outlives the call; the function catches C++ exceptions.
        let rc =
            unsafe { ffi::distill_profiler_stop(c.as_ptr(), err.as_mut_ptr().cast(), err.len()) };
        if rc != 0 {
            return Err(failed("writing the profile", &err));
        }
        Ok(())
    }
    #[cfg(not(distill_torch_extras))]
    {
        let _ = path;
        Err(unavailable("the profiler"))
    }
}

#[cfg(all(test, distill_torch_extras))]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn foreach_clip_matches_the_per_tensor_norm() {
        let a = Tensor::from_slice(&[3.0f32, 0.0]);
        let b = Tensor::from_slice(&[0.0f32, 4.0]);
        let norm = clip_grad_norm(&[&a, &b], 1.0).unwrap().double_value(&[]);
        assert!((norm - 5.0).abs() < 1e-6);
        let a = Vec::<f32>::try_from(&a).unwrap();
        assert!((a[0] - 0.6).abs() < 1e-5);
        zero_grads(&[&b]).unwrap();
        assert_eq!(b.abs().sum(Kind::Float).double_value(&[]), 0.0);
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

    #[test]
    fn fused_adamw_matches_our_per_tensor_update() {
        // Same start, same gradient, two steps: the fused kernel (on the CPU here) and
        // the per-tensor update of train::optimizer agree.
        use crate::training::optimizer::{AdamW, AdamWConfig};
        let start = [0.5f32, -1.0, 2.0];
        let grad = [0.1f32, -0.3, 0.7];
        let p = Tensor::from_slice(&start).set_requires_grad(true);
        let mut opt = AdamW::new(
            [("w".to_string(), p.shallow_clone())].into(),
            AdamWConfig::default(),
        );
        let q = Tensor::from_slice(&start);
        let (m, v) = (q.zeros_like(), q.zeros_like());
        for step in 1..=2 {
            (&p * Tensor::from_slice(&grad)).sum(Kind::Float).backward();
            opt.step(1e-2).unwrap();
            opt.zero_grad();
            let g = Tensor::from_slice(&grad);
            let s = Tensor::from(step as f32);
            fused_adamw(
                &[&q],
                &[&g],
                &[&m],
                &[&v],
                &[&s],
                1e-2,
                (0.9, 0.999, 0.01, 1e-8),
            )
            .unwrap();
        }
        let (a, b) = (
            Vec::<f32>::try_from(&p.detach()).unwrap(),
            Vec::<f32>::try_from(&q).unwrap(),
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }
}
