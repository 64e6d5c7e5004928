//! Data formats: text inputs (BEIR JSONL, plain lines), Parquet outputs, atomic writes.
pub mod atomic;
pub mod beir;
pub mod dev;
pub mod embeddings;
pub mod pairs;
pub mod pseudo;
pub mod table;
pub mod text_input;
