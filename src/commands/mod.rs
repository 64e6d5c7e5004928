//! User commands that are not pipeline stages.
pub mod bench;
pub mod encode;
pub mod eval_model;
pub mod rerank_run;
pub mod trend;
