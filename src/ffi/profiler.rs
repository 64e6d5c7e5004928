//! libtorch's Kineto profiler (`profiler.cpp`, `torch.profiler`), for
//! `distill bench --profile`: a Chrome trace of the operators and CUDA kernels,
//! comparable with the one `bench_torch.py` writes.
use crate::error::Result;

#[cfg(distill_ffi)]
mod sys {
    use std::os::raw::c_char;
    extern "C" {
        pub fn distill_profiler_start(
            cuda: i32,
            host: i32,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
        pub fn distill_profiler_stop(path: *const c_char, err: *mut c_char, err_len: usize) -> i32;
    }
}

/// Start libtorch's Kineto profiler (`torch.profiler`): CPU operators (unless `host` is
/// false on CUDA, for the kernels' timeline as it runs unprofiled: recording every
/// operator slows a step bound by its host), and CUDA kernels when `cuda`.
/// [`profiler_stop`] writes the trace.
pub fn profiler_start(cuda: bool, host: bool) -> Result<()> {
    #[cfg(distill_ffi)]
    {
        super::status("starting the profiler", |err, len| {
            // SAFETY: a C function that catches every C++ exception.
            unsafe { sys::distill_profiler_start(i32::from(cuda), i32::from(host), err, len) }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = (cuda, host);
        Err(super::unavailable("the profiler"))
    }
}

/// Stop the profiler started by [`profiler_start`] and write its Chrome trace (JSON).
pub fn profiler_stop(path: &std::path::Path) -> Result<()> {
    #[cfg(distill_ffi)]
    {
        let c = std::ffi::CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| crate::error::Error::config(path, "path holds a NUL byte"))?;
        super::status("writing the profile", |err, len| {
            // SAFETY: `c` outlives the call; the function catches C++ exceptions.
            unsafe { sys::distill_profiler_stop(c.as_ptr(), err, len) }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = path;
        Err(super::unavailable("the profiler"))
    }
}
