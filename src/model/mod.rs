//! Encoders on tch: BERT, the bi-encoder student, the cross-encoder teacher, their
//! tokenizer, and checkpoint import/export in Hugging Face / sentence-transformers formats.
pub mod batching;
pub mod bert;
pub mod bi_encoder;
pub mod cross_encoder;
pub mod export;
pub mod hf_config;
pub mod pooling;
pub mod tokenizer;
pub mod weights;
pub mod wordpiece;
pub mod work;

pub use bi_encoder::{BiEncoder, Prompts, Side};
pub use cross_encoder::{Activation, CrossEncoder};
