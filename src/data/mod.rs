//! Data formats: text inputs (BEIR JSONL, `id<TAB>text`, plain lines; plain or gzip),
//! qrels (BEIR, TREC), Parquet outputs, atomic writes.
pub mod atomic;
pub mod beir;
pub mod concat;
pub mod dev;
pub mod embeddings;
pub mod lines;
pub mod pairs;
pub mod pseudo;
pub mod qrels;
pub mod table;
pub mod text_input;
