//! libtorch functions that tch does not expose, one module (and one C++ file beside it)
//! per concern, compiled by `build.rs` against the venv's libtorch headers:
//!
//! - [`memory`]: peak GPU memory of the caching allocator, pinned host-to-device copies;
//! - [`optim`]: the multi-tensor kernels of `torch.optim.AdamW(fused=True)` and
//!   `clip_grad_norm_(foreach=True)`, and zeroing gradients in one launch;
//! - [`attention`]: variable-length (packed) flash attention;
//! - [`profiler`]: libtorch's Kineto profiler;
//! - [`layer_norm`]: residual add + LayerNorm in one CUDA kernel, for inference and for
//!   training, and LayerNorm's weight gradients in training;
//! - [`linear`]: the linear layers for training, their bias gradients by a kernel of ours
//!   (both compiled at run time by NVRTC from `kernels.cpp`, loaded with the CUDA driver by
//!   `nvrtc.cpp`; neither has a Rust side);
//! - [`autograd`]: whether autograd records on this thread;
//! - [`distributed`]: c10d process groups (NCCL, Gloo) and their collectives;
//! - [`process`]: the C library's `prctl`, so that workers die with their parent (no
//!   libtorch involved).
//!
//! Conventions of the C entry points (`common.h`): tensors cross as tch's handles
//! (`at::Tensor*`); every function catches C++ exceptions and reports a failure by its
//! return value (negative, or a null tensor) with the message written into an error
//! buffer that the caller passes. When the build could not compile the C++ (libtorch
//! headers not found), [`available`] is false, every wrapper returns an error, and callers
//! keep their per-tensor paths.
pub mod attention;
pub mod autograd;
pub mod distributed;
pub mod layer_norm;
pub mod linear;
pub mod memory;
pub mod optim;
pub mod process;
pub mod profiler;

use crate::error::Error;
#[cfg(distill_ffi)]
use {crate::error::Result, tch::Tensor};

/// tch's tensor handle (`at::Tensor*` on the C++ side).
#[cfg(distill_ffi)]
type TensorHandle = std::ffi::c_void;

/// Whether the C++ side was built into this binary.
pub fn available() -> bool {
    cfg!(distill_ffi)
}

/// The error of a wrapper whose C++ side is not built in.
#[cfg(not(distill_ffi))]
fn unavailable(what: &str) -> Error {
    Error::torch(
        what,
        tch::TchError::Torch("not built into this binary".into()),
    )
}

#[cfg(distill_ffi)]
fn handles(ts: &[&Tensor]) -> Vec<*const TensorHandle> {
    ts.iter().map(|t| t.as_ptr().cast()).collect()
}

/// The error whose message a C entry point wrote, NUL-terminated, into `err`.
#[cfg(distill_ffi)]
fn failed(what: &str, err: &[u8]) -> Error {
    let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
    Error::torch(
        what,
        tch::TchError::Torch(String::from_utf8_lossy(&err[..end]).into_owned()),
    )
}

/// Call a C entry point that returns a status (0 on success, negative on an error, with
/// the message written into the buffer it is given).
#[cfg(distill_ffi)]
fn status(what: &str, call: impl FnOnce(*mut std::os::raw::c_char, usize) -> i32) -> Result<()> {
    let mut err = vec![0u8; 1024];
    if call(err.as_mut_ptr().cast(), err.len()) != 0 {
        return Err(failed(what, &err));
    }
    Ok(())
}

/// Call a C entry point that returns a fresh `at::Tensor*` (null on an error, with the
/// message written into the buffer it is given) and take ownership of the result.
#[cfg(distill_ffi)]
fn owned_tensor(
    what: &str,
    call: impl FnOnce(*mut std::os::raw::c_char, usize) -> *mut TensorHandle,
) -> Result<Tensor> {
    let mut err = vec![0u8; 1024];
    let out = call(err.as_mut_ptr().cast(), err.len());
    if out.is_null() {
        return Err(failed(what, &err));
    }
    // SAFETY: a non-null result is a fresh `at::Tensor*` allocated by the C++ side for
    // the caller; the returned Tensor owns and frees it.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}
