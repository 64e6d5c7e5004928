//! GPU memory (`memory.cpp`): the peak of libtorch's CUDA caching allocator, for
//! `distill bench`; pinned, non-blocking host-to-device copies; device-to-host copies
//! that the host waits for through an event ([`Download`]); copies to the host made later,
//! from another thread, of device work up to a point ([`Mark`], [`download_after`]).
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
        pub fn distill_pin(
            t: *const TensorHandle,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut TensorHandle;
        pub fn distill_download_async(
            t: *const TensorHandle,
            event: *mut *mut std::ffi::c_void,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut TensorHandle;
        pub fn distill_event_wait(
            event: *mut std::ffi::c_void,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
        pub fn distill_event_free(event: *mut std::ffi::c_void);
        pub fn distill_event_mark(
            t: *const TensorHandle,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut std::ffi::c_void;
        pub fn distill_download_after(
            ts: *const *const TensorHandle,
            n: usize,
            mark: *mut std::ffi::c_void,
            out: *mut *mut TensorHandle,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
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

/// The CPU tensor `host` in pinned (page-locked) memory, from which copies to the GPU
/// need not wait for it: `host` itself when it is pinned already.
pub fn pin(host: &Tensor) -> Result<Tensor> {
    #[cfg(distill_ffi)]
    {
        super::owned_tensor("pinning host memory", |err, len| {
            // SAFETY: `host` is live for the call; the function catches C++ exceptions.
            unsafe { sys::distill_pin(host.as_ptr().cast(), err, len) }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = host;
        Err(super::unavailable("pinned memory"))
    }
}

/// A copy of a tensor to the host that may still be in flight: [`Download::wait`] waits
/// for the copy alone, not for work queued on the device after it.
pub struct Download {
    host: Tensor,
    /// The event recorded after the copy (CUDA with the C++ side built in); None when
    /// the copy was made synchronously.
    #[cfg(distill_ffi)]
    event: Option<Event>,
}

/// Start copying `t` to the host. On CUDA the copy goes into pinned memory without
/// waiting for the device, and an event marks its end; elsewhere (or without the C++
/// side) it is an ordinary copy, finished on return.
pub fn download(t: &Tensor) -> Result<Download> {
    #[cfg(distill_ffi)]
    if t.device().is_cuda() {
        let mut event: *mut std::ffi::c_void = std::ptr::null_mut();
        let host = super::owned_tensor("copying to the host", |err, len| {
            // SAFETY: `t` is live for the call and `event` is a valid out-pointer; the
            // function catches C++ exceptions and sets `event` only on success.
            unsafe { sys::distill_download_async(t.as_ptr().cast(), &mut event, err, len) }
        })?;
        return Ok(Download {
            host,
            event: Some(Event(event)),
        });
    }
    let host = t
        .f_to_device(Device::Cpu)
        .map_err(|e| crate::error::Error::torch("copying to the host", e))?;
    Ok(Download {
        host,
        #[cfg(distill_ffi)]
        event: None,
    })
}

impl Download {
    /// The host tensor, once the copy has completed.
    pub fn wait(self) -> Result<Tensor> {
        #[cfg(distill_ffi)]
        if let Some(event) = &self.event {
            super::status("waiting for a copy to the host", |err, len| {
                // SAFETY: the event is live (owned by `self`); the function catches C++
                // exceptions.
                unsafe { sys::distill_event_wait(event.0, err, len) }
            })?;
        }
        Ok(self.host)
    }
}

/// A point in a CUDA device's work: the work queued on its current stream when it was
/// made ([`mark`]), which [`download_after`] waits for, and nothing queued later.
pub struct Mark {
    #[cfg(distill_ffi)]
    event: Event,
}

/// A mark after the work queued so far on the device of `t`; None off CUDA, or without
/// the C++ side (copies to the host there are ordinary ones).
pub fn mark(t: &Tensor) -> Result<Option<Mark>> {
    #[cfg(distill_ffi)]
    if t.device().is_cuda() {
        let mut err = vec![0u8; 1024];
        // SAFETY: `t` is live for the call and `err` is writable for its length; the
        // function catches C++ exceptions.
        let event = unsafe {
            sys::distill_event_mark(t.as_ptr().cast(), err.as_mut_ptr().cast(), err.len())
        };
        if event.is_null() {
            return Err(super::failed("marking the device's work", &err));
        }
        return Ok(Some(Mark {
            event: Event(event),
        }));
    }
    let _ = t;
    Ok(None)
}

/// Copy the tensors `ts` of one device to ordinary host memory once the work before
/// `mark` has completed, on a stream of the device's pool: the calling thread (for example
/// one that writes a checkpoint) waits for these copies alone, while the work queued after
/// the mark (the training's next steps) goes on.
pub fn download_after(ts: &[&Tensor], mark: &Mark) -> Result<Vec<Tensor>> {
    #[cfg(distill_ffi)]
    {
        let handles = super::handles(ts);
        let mut out: Vec<*mut super::TensorHandle> = vec![std::ptr::null_mut(); ts.len()];
        super::status("copying to the host", |err, len| {
            // SAFETY: the tensors and the mark's event are live for the call, `out` has
            // room for one pointer per tensor; the function catches C++ exceptions and
            // fills `out` only on success.
            unsafe {
                sys::distill_download_after(
                    handles.as_ptr(),
                    ts.len(),
                    mark.event.0,
                    out.as_mut_ptr(),
                    err,
                    len,
                )
            }
        })?;
        // SAFETY: on success each pointer is a fresh `at::Tensor*` for the caller.
        Ok(out
            .into_iter()
            .map(|p| unsafe { Tensor::from_ptr(p.cast()) })
            .collect())
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = (ts, mark);
        Err(super::unavailable("copies after a mark"))
    }
}

/// A `c10::Event` allocated by `distill_download_async` or `distill_event_mark`, freed on
/// drop.
#[cfg(distill_ffi)]
struct Event(*mut std::ffi::c_void);

// SAFETY: a recorded CUDA event may be waited for, blocked on and destroyed from any
// thread; the pointer is owned by this value alone.
#[cfg(distill_ffi)]
unsafe impl Send for Event {}

#[cfg(distill_ffi)]
impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `distill_download_async` or `distill_event_mark`,
        // which transferred ownership; it is freed once, here.
        unsafe { sys::distill_event_free(self.0) }
    }
}
