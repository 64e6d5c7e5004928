//! User commands that are not pipeline stages.
pub mod encode;
pub mod trend;
