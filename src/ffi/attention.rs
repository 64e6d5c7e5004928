//! Variable-length (packed, unpadded) flash attention (`attention.cpp`).
use crate::error::Result;
use tch::Tensor;

#[cfg(distill_ffi)]
mod sys {
    use super::super::TensorHandle;
    use std::os::raw::c_char;
    extern "C" {
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
    #[cfg(distill_ffi)]
    {
        let h = super::handles(&[q, k, v, cu_seqlens]);
        super::owned_tensor("variable-length attention", |err, len| {
            // SAFETY: the handles point to live tensors for the duration of the call; the
            // function catches C++ exceptions.
            unsafe {
                sys::distill_varlen_attention(h[0], h[1], h[2], h[3], max_len, dropout, err, len)
            }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = (q, k, v, cu_seqlens, max_len, dropout);
        Err(super::unavailable("variable-length attention"))
    }
}
