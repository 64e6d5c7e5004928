//! Data formats: text inputs (BEIR JSONL, plain lines), Parquet outputs, atomic writes.
pub mod atomic;
pub mod embeddings;
pub mod text_input;
