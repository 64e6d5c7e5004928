//! Autograd's thread-local state (`autograd.cpp`).

#[cfg(distill_ffi)]
mod sys {
    extern "C" {
        pub fn distill_grad_enabled() -> i32;
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
