//! c10d process groups (`distributed.cpp`): a TCPStore rendezvous, then NCCL for CUDA
//! tensors or Gloo for CPU tensors; sum, gather and broadcast across the group's
//! processes. [`crate::distributed`] builds data-parallel training on these.
use crate::error::Result;
use tch::Tensor;

#[cfg(distill_ffi)]
mod sys {
    use super::super::TensorHandle;
    use std::os::raw::{c_char, c_void};
    extern "C" {
        pub fn distill_pg_new(
            nccl: i32,
            host: *const c_char,
            port: i32,
            rank: i32,
            size: i32,
            timeout_ms: i64,
            listen_fd: i32,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut c_void;
        pub fn distill_pg_free(group: *mut c_void);
        pub fn distill_pg_allreduce_sum(
            group: *mut c_void,
            ts: *const *const TensorHandle,
            n: usize,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
        pub fn distill_pg_allgather(
            group: *mut c_void,
            input: *const TensorHandle,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut TensorHandle;
        pub fn distill_pg_broadcast(
            group: *mut c_void,
            ts: *const *const TensorHandle,
            n: usize,
            root: i32,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
    }
}

/// Which c10d backend carries the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `ProcessGroupNCCL`: tensors of this CUDA device (made the process's current one).
    Nccl(usize),
    /// `ProcessGroupGloo`: CPU tensors.
    Gloo,
}

/// One process's membership of a c10d process group.
pub struct ProcessGroup {
    #[cfg(distill_ffi)]
    raw: *mut std::ffi::c_void,
    pub rank: usize,
    pub size: usize,
}

// SAFETY: the group is used by one thread at a time (it is owned, and every call takes
// `&self` from the training loop's thread); c10d's backends are thread-safe besides.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Join the group of `size` processes as `rank`: rank 0 serves a TCPStore at
    /// `host:port` (on `listen_fd` when given: a socket already bound to `port` and
    /// listening), the others connect to it; all wait up to `timeout` for each other.
    pub fn join(
        backend: Backend,
        host: &str,
        port: u16,
        (rank, size): (usize, usize),
        listen_fd: Option<i32>,
        timeout: std::time::Duration,
    ) -> Result<ProcessGroup> {
        #[cfg(distill_ffi)]
        {
            let what =
                format!("joining the process group at {host}:{port} as rank {rank} of {size}");
            let host = std::ffi::CString::new(host)
                .map_err(|_| super::failed(&what, b"the host name holds a NUL byte\0"))?;
            let mut err = vec![0u8; 1024];
            // SAFETY: `host` and `err` are live for the call; the function catches C++
            // exceptions and returns null on an error.
            let raw = unsafe {
                sys::distill_pg_new(
                    match backend {
                        Backend::Nccl(device) => device as i32 + 1,
                        Backend::Gloo => 0,
                    },
                    host.as_ptr(),
                    i32::from(port),
                    rank as i32,
                    size as i32,
                    timeout.as_millis() as i64,
                    listen_fd.unwrap_or(-1),
                    err.as_mut_ptr().cast(),
                    err.len(),
                )
            };
            if raw.is_null() {
                return Err(super::failed(&what, &err));
            }
            Ok(ProcessGroup { raw, rank, size })
        }
        #[cfg(not(distill_ffi))]
        {
            let _ = (backend, host, port, timeout);
            let _ = (rank, size, listen_fd);
            Err(super::unavailable("process groups"))
        }
    }

    /// Sum `tensors` over the group, in place (one collective for all of them).
    pub fn all_reduce_sum(&self, tensors: &[&Tensor]) -> Result<()> {
        #[cfg(distill_ffi)]
        {
            let handles = super::handles(tensors);
            super::status("summing over the process group", |err, len| {
                // SAFETY: the handles point to live tensors for the call; the function
                // catches C++ exceptions.
                unsafe {
                    sys::distill_pg_allreduce_sum(
                        self.raw,
                        handles.as_ptr(),
                        handles.len(),
                        err,
                        len,
                    )
                }
            })
        }
        #[cfg(not(distill_ffi))]
        {
            let _ = tensors;
            Err(super::unavailable("process groups"))
        }
    }

    /// Every rank's `input` (the same shape on each), concatenated along dim 0 in rank
    /// order.
    pub fn all_gather(&self, input: &Tensor) -> Result<Tensor> {
        #[cfg(distill_ffi)]
        {
            super::owned_tensor("gathering over the process group", |err, len| {
                // SAFETY: `input` is live for the call; the function catches C++
                // exceptions.
                unsafe { sys::distill_pg_allgather(self.raw, input.as_ptr().cast(), err, len) }
            })
        }
        #[cfg(not(distill_ffi))]
        {
            let _ = input;
            Err(super::unavailable("process groups"))
        }
    }

    /// Overwrite `tensors` with rank `root`'s, in place.
    pub fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<()> {
        #[cfg(distill_ffi)]
        {
            let handles = super::handles(tensors);
            super::status("broadcasting over the process group", |err, len| {
                // SAFETY: as in all_reduce_sum.
                unsafe {
                    sys::distill_pg_broadcast(
                        self.raw,
                        handles.as_ptr(),
                        handles.len(),
                        root as i32,
                        err,
                        len,
                    )
                }
            })
        }
        #[cfg(not(distill_ffi))]
        {
            let _ = (tensors, root);
            Err(super::unavailable("process groups"))
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        #[cfg(distill_ffi)]
        // SAFETY: `raw` came from distill_pg_new and is freed once, here.
        unsafe {
            sys::distill_pg_free(self.raw)
        }
    }
}
