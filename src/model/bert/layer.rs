//! One BERT transformer layer: attention, then the GELU feed-forward block.
use super::attention::{Attend, BertAttention};
use super::{Affine, ComputeCopies};
use crate::model::hf_config::BertConfig;
use std::sync::atomic::AtomicBool;
use tch::{nn, Tensor};

/// Hugging Face keys under `encoder.layer.N.`: `attention.*`, `intermediate.dense.*`,
/// `output.dense.*`, `output.LayerNorm.*`.
#[derive(Debug)]
pub struct BertLayer {
    attention: BertAttention,
    intermediate: nn::Linear,
    output: nn::Linear,
    layer_norm: super::Norm,
    activation: Activation,
    hidden_dropout: f64,
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    Gelu,
    GeluTanh,
    Relu,
}

impl BertLayer {
    pub fn new(p: nn::Path, config: &BertConfig) -> Self {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let activation = match config.hidden_act.as_str() {
            "gelu_new" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            _ => Activation::Gelu,
        };
        BertLayer {
            attention: BertAttention::new(&p / "attention", config),
            intermediate: nn::linear(&p / "intermediate" / "dense", h, i, Default::default()),
            output: nn::linear(&p / "output" / "dense", i, h, Default::default()),
            layer_norm: super::layer_norm(&p / "output" / "LayerNorm", config),
            activation,
            hidden_dropout: config.hidden_dropout_prob,
        }
    }

    /// The layer's linear layers (and with `norms` its LayerNorms) in the groups their
    /// compute copies are made in.
    pub fn copy_groups(&self, norms: bool) -> Vec<Vec<Affine<'_>>> {
        let mut groups = self.attention.copy_groups(norms);
        groups.push(vec![Affine::linear(&self.intermediate)]);
        groups.push(vec![Affine::linear(&self.output)]);
        groups.extend(self.layer_norm.copy_group(norms));
        groups
    }

    /// `[batch, seq, hidden]` -> `[batch, seq, hidden]`, or packed `[tokens, hidden]`;
    /// `fused`: the model's fused add + LayerNorm switch (see `Norm::add_forward`).
    /// `copies`: the model's compute copies when they serve this forward.
    pub fn forward_t(
        &self,
        hidden: &Tensor,
        attend: &Attend,
        fused: &AtomicBool,
        copies: Option<&ComputeCopies>,
        train: bool,
    ) -> Tensor {
        let attended = self
            .attention
            .forward_t(hidden, attend, fused, copies, train);
        let x = super::linear_in(&self.intermediate, &attended, copies, fused);
        let x = match self.activation {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
        };
        let x =
            super::linear_in(&self.output, &x, copies, fused).dropout(self.hidden_dropout, train);
        self.layer_norm.add_forward(&x, &attended, fused, copies)
    }
}
