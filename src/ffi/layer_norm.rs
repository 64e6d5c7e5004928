//! Residual add + LayerNorm in one CUDA kernel for inference (`layer_norm.cpp`), compiled
//! at run time by NVRTC and launched through the CUDA driver API (both loaded by
//! `nvrtc.cpp`).
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
    #[cfg(distill_ffi)]
    {
        let h = super::handles(&[x, residual, weight, bias]);
        super::owned_tensor("fused add + LayerNorm", |err, len| {
            // SAFETY: the handles point to live tensors for the duration of the call; the
            // function catches C++ exceptions.
            unsafe { sys::distill_add_layer_norm(h[0], h[1], h[2], h[3], eps, err, len) }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = (x, residual, weight, bias, eps);
        Err(super::unavailable("fused add + LayerNorm"))
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
