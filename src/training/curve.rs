//! The loss curve: one row per optimizer step with the learning rate, the total loss, the
//! gradient norm and each loss term; written to Parquet for the report.
use crate::data::pairs::write_batch;
use crate::error::{Error, Result};
use arrow::array::{ArrayRef, Float32Array, Float64Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LossCurve {
    pub step: Vec<u64>,
    pub epoch: Vec<u64>,
    pub lr: Vec<f64>,
    pub loss: Vec<f32>,
    pub grad_norm: Vec<f32>,
    /// Loss terms by name, aligned with `step`.
    pub terms: Vec<(String, Vec<f32>)>,
    /// In-training evaluations, in step order (none unless asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evals: Vec<EvalPoint>,
}

/// One in-training evaluation: nDCG@10 per dataset after optimizer step `step`, and their
/// mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: u64,
    pub ndcg10: Vec<(String, f64)>,
    pub mean: f64,
}

impl EvalPoint {
    pub fn new(step: u64, ndcg10: Vec<(String, f64)>) -> Self {
        let mean = ndcg10.iter().map(|(_, v)| v).sum::<f64>() / ndcg10.len().max(1) as f64;
        EvalPoint { step, ndcg10, mean }
    }
}

impl LossCurve {
    pub fn push(
        &mut self,
        step: u64,
        epoch: u64,
        lr: f64,
        loss: f32,
        grad_norm: f32,
        terms: &[(String, f32)],
    ) {
        self.step.push(step);
        self.epoch.push(epoch);
        self.lr.push(lr);
        self.loss.push(loss);
        self.grad_norm.push(grad_norm);
        for (name, v) in terms {
            match self.terms.iter_mut().find(|(n, _)| n == name) {
                Some((_, col)) => col.push(*v),
                None => self.terms.push((name.clone(), vec![*v])),
            }
        }
    }

    /// The evaluation with the highest mean (the earliest on ties).
    pub fn best_eval(&self) -> Option<&EvalPoint> {
        self.evals
            .iter()
            .fold(None, |best: Option<&EvalPoint>, e| match best {
                Some(b) if b.mean >= e.mean => Some(b),
                _ => Some(e),
            })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut fields = vec![
            Field::new("step", DataType::UInt64, false),
            Field::new("epoch", DataType::UInt64, false),
            Field::new("lr", DataType::Float64, false),
            Field::new("loss", DataType::Float32, false),
            Field::new("grad_norm", DataType::Float32, false),
        ];
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(self.step.clone())),
            Arc::new(UInt64Array::from(self.epoch.clone())),
            Arc::new(Float64Array::from(self.lr.clone())),
            Arc::new(Float32Array::from(self.loss.clone())),
            Arc::new(Float32Array::from(self.grad_norm.clone())),
        ];
        for (name, values) in &self.terms {
            fields.push(Field::new(name, DataType::Float32, false));
            cols.push(Arc::new(Float32Array::from(values.clone())));
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|source| Error::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        write_batch(path, schema, &batch)
    }
}
