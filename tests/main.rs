//! Integration tests, built as one binary. Reference values come from Hugging Face
//! transformers / sentence-transformers through `scripts/make_fixtures.py` and
//! `scripts/reference.py` (run `make fixtures`); nothing here is typed in by hand.
mod checkpoint_import;
mod cli;
mod common;
mod config_checks;
mod data_parallel;
mod demo;
mod eval;
mod eval_command;
mod export_data;
mod export_roundtrip;
mod gpus;
mod health;
mod inputs;
mod layers;
mod memory;
mod parity;
mod pipeline;
mod report;
mod rerank_command;
mod stage_hashes;
mod train;
mod train_outputs;
mod train_runs;
