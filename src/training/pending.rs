//! A training step's loss values on their way to the host: queued as one copy after the
//! step, read once the next step has been queued, so that the host never waits for the
//! device between steps.
use super::curve::LossCurve;
use super::trainer::{Host, TrainEvent};
use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// One optimizer step whose loss values are still on their way to the host.
pub struct PendingStep {
    pub(super) step: u64,
    pub(super) epoch: usize,
    pub(super) lr: f64,
    /// Number of micro-batches.
    micro: usize,
    /// Per micro-batch: the names of its loss terms.
    terms: Vec<Vec<String>>,
    grad_norm: bool,
    /// The step's scalars, in one tensor: per micro-batch its loss divided by the number
    /// of micro-batches, then every micro-batch's terms, then the gradient norm.
    values: crate::ffi::memory::Download,
}

impl PendingStep {
    /// Queue the copy of a step's scalars to the host, in one copy that the host will
    /// wait for alone: reading the values later does not wait for whatever the device has
    /// been given after this step.
    pub(super) fn new(
        losses: &[Tensor],
        terms: Vec<Vec<(String, Tensor)>>,
        grad_norm: Option<Tensor>,
    ) -> Result<Self> {
        let mut scalars: Vec<Tensor> = losses.iter().map(|t| t.to_kind(Kind::Float)).collect();
        scalars.extend(terms.iter().flatten().map(|(_, t)| t.to_kind(Kind::Float)));
        if let Some(g) = &grad_norm {
            scalars.push(
                g.to_kind(Kind::Float)
                    .to_device(scalars.first().map_or(g.device(), Tensor::device)),
            );
        }
        let values = match scalars.is_empty() {
            true => Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)),
            false => Tensor::stack(&scalars, 0),
        };
        Ok(PendingStep {
            step: 0,
            epoch: 0,
            lr: 0.0,
            micro: losses.len(),
            terms: terms
                .into_iter()
                .map(|m| m.into_iter().map(|(name, _)| name).collect())
                .collect(),
            grad_norm: grad_norm.is_some(),
            values: crate::ffi::memory::download(&values)?,
        })
    }

    /// Read the step's values, add them to the curve, report progress.
    pub(super) fn resolve(self, curve: &mut LossCurve, host: &mut dyn Host) -> Result<()> {
        let n = self.micro;
        let values = Vec::<f32>::try_from(self.values.wait()?)
            .map_err(|e| Error::torch("reading the loss", e))?;
        let loss_sum: f64 = values[..n].iter().map(|&v| f64::from(v)).sum();
        let mut terms: Vec<(String, f32)> = Vec::new();
        let mut at = n;
        for micro in &self.terms {
            for name in micro {
                let v = values[at] / n as f32;
                at += 1;
                match terms.iter_mut().find(|(t, _)| t == name) {
                    Some((_, acc)) => *acc += v,
                    None => terms.push((name.clone(), v)),
                }
            }
        }
        let grad_norm = if self.grad_norm { values[at] } else { 0.0 };
        curve.push(
            self.step,
            self.epoch as u64,
            self.lr,
            loss_sum as f32,
            grad_norm,
            &terms,
        );
        host.event(TrainEvent::Step {
            step: self.step,
            epoch: self.epoch as u64,
            lr: self.lr,
            loss: loss_sum as f32,
            grad_norm,
            terms,
        });
        Ok(())
    }
}
