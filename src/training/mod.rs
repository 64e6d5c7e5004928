//! Training: losses, our AdamW, schedules, checkpoints and their retention, training
//! groups, the loss curve, and the loop shared by the `train` and `teacher` stages.
pub mod checkpoint;
pub mod curve;
pub mod feed;
pub mod groups;
pub mod losses;
pub mod objectives;
pub mod optimizer;
mod pending;
pub mod retention;
pub mod schedule;
pub mod trace;
pub mod trainer;
