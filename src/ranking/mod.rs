//! Evaluation: trec_eval metrics, TREC run files, and the recall of the student against
//! the precision of the teacher.
pub mod evaluation;
pub mod metrics;
pub mod rerank;
pub mod trec;
