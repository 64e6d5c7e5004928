//! Evaluation: trec_eval metrics, and the recall of the student against the precision of
//! the teacher.
pub mod metrics;
pub mod rerank;
