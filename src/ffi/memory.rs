//! GPU memory (`memory.cpp`): the peak of libtorch's CUDA caching allocator, for
//! `distill bench`, and pinned, non-blocking host-to-device copies.
use crate::error::Result;
use tch::{Device, Tensor};

#[cfg(distill_ffi)]
mod sys {
    use super::super::TensorHandle;
    use std::os::raw::c_char;
    extern "C" {
        pub fn distill_cuda_peak_allocated(device: i32) -> i64;
        pub fn distill_cuda_reset_peak(device: i32) -> i32;
        pub fn distill_pinned_upload(
            t: *const TensorHandle,
            device: i32,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut TensorHandle;
    }
}

/// Peak bytes allocated by libtorch's CUDA caching allocator on `device` since the last
/// [`reset_peak_memory`] (`torch.cuda.max_memory_allocated`); None off CUDA.
pub fn peak_memory(device: Device) -> Option<u64> {
    match device {
        #[cfg(distill_ffi)]
        Device::Cuda(n) => {
            // SAFETY: a C function that catches every C++ exception and returns -1.
            let v = unsafe { sys::distill_cuda_peak_allocated(n as i32) };
            u64::try_from(v).ok()
        }
        _ => None,
    }
}

/// Start a new peak-memory window on `device` (no-op off CUDA).
pub fn reset_peak_memory(device: Device) {
    #[cfg(distill_ffi)]
    if let Device::Cuda(n) = device {
        // SAFETY: as in peak_memory.
        unsafe {
            sys::distill_cuda_reset_peak(n as i32);
        }
    }
    let _ = device;
}

/// Copy the CPU tensor `host` to CUDA device `device` through pinned memory, without
/// waiting for the device.
pub fn pinned_upload(host: &Tensor, device: usize) -> Result<Tensor> {
    #[cfg(distill_ffi)]
    {
        super::owned_tensor("copying to the GPU", |err, len| {
            // SAFETY: `host` is live for the call; the function catches C++ exceptions.
            unsafe { sys::distill_pinned_upload(host.as_ptr().cast(), device as i32, err, len) }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = (host, device);
        Err(super::unavailable("pinned copies"))
    }
}
