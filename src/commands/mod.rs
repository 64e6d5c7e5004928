//! User commands that are not pipeline stages.
pub mod bench;
pub mod encode;
pub mod trend;
