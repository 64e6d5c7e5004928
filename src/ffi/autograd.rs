//! Autograd's state (`autograd.cpp`): whether it records, and a parameter's gradient.
use crate::error::Result;
use tch::Tensor;

#[cfg(distill_ffi)]
mod sys {
    use super::super::TensorHandle;
    use std::os::raw::c_char;
    extern "C" {
        pub fn distill_grad_enabled() -> i32;
        pub fn distill_reset_grads(
            ts: *const *const TensorHandle,
            n: usize,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
        pub fn distill_set_grad(
            param: *const TensorHandle,
            grad: *const TensorHandle,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
    }
}

/// Whether autograd records operations on this thread (`torch.is_grad_enabled()`);
/// true when the C++ side is not built in.
pub fn grad_enabled() -> bool {
    #[cfg(distill_ffi)]
    {
        // SAFETY: a C function without arguments that cannot throw.
        unsafe { sys::distill_grad_enabled() != 0 }
    }
    #[cfg(not(distill_ffi))]
    {
        true
    }
}

/// Clear the gradients of `tensors` (`t.grad = None` in Python).
pub fn reset_grads(tensors: &[&Tensor]) -> Result<()> {
    #[cfg(distill_ffi)]
    {
        let h = super::handles(tensors);
        super::status("clearing gradients", |err, len| {
            // SAFETY: the handles point to live tensors for the call; the function catches
            // C++ exceptions.
            unsafe { sys::distill_reset_grads(h.as_ptr(), h.len(), err, len) }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = tensors;
        Err(super::unavailable("clearing gradients"))
    }
}

/// Make `grad` (of `param`'s shape, dtype and device) the gradient of `param`, as
/// `param.grad = grad` in Python: backward passes add into it in place, so a view of a
/// larger buffer stays one.
pub fn set_grad(param: &Tensor, grad: &Tensor) -> Result<()> {
    #[cfg(distill_ffi)]
    {
        let (p, g) = (param.as_ptr(), grad.as_ptr());
        super::status("setting a gradient", |err, len| {
            // SAFETY: both handles point to live tensors for the call; the function
            // catches C++ exceptions.
            unsafe { sys::distill_set_grad(p.cast(), g.cast(), err, len) }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = (param, grad);
        Err(super::unavailable("setting a gradient"))
    }
}
