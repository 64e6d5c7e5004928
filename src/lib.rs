//! distill: distil a cross-encoder reranker (the teacher) into a bi-encoder retriever
//! (the student), on libtorch through tch.
pub mod commands;
pub mod data;
pub mod device;
pub mod distributed;
pub mod error;
pub mod ffi;
pub mod model;
pub mod pipeline;
pub mod progress;
pub mod ranking;
pub mod render;
pub mod retrieval;
pub mod rng;
pub mod stages;
pub mod training;

pub use error::{Error, Result};

/// Version of the libtorch the binary was built against, and whether CUDA is usable now.
pub fn runtime_description() -> String {
    format!(
        "libtorch {}, CUDA {}",
        env!("DISTILL_LIBTORCH_VERSION"),
        if tch::Cuda::is_available() {
            format!("available ({} device(s))", tch::Cuda::device_count())
        } else {
            "not available".to_string()
        }
    )
}
