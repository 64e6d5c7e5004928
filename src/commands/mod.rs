//! User commands that are not pipeline stages.
pub mod bench;
pub mod encode;
pub mod eval_model;
pub mod export_data;
pub mod export_formats;
pub mod rerank_run;
pub mod trend;
