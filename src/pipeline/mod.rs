//! The staged pipeline: configuration, fingerprints, manifests, the run lock, events and
//! the runner that decides what must run.
pub mod config;
pub mod events;
pub mod fingerprint;
pub mod health;
pub mod lock;
pub mod manifest;
pub mod preflight;
pub mod runner;
pub mod workers;

pub use config::Pipeline;
