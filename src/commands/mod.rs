//! User commands that are not pipeline stages.
pub mod bench;
pub mod encode;
pub mod export_data;
pub mod export_formats;
pub mod trend;
