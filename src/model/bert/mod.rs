//! BERT encoder on tch, laid out as Hugging Face's `BertModel` so that checkpoint
//! import is a name mapping: `embeddings.*`, `encoder.layer.N.*`, `pooler.dense.*`.
mod attention;
mod embeddings;
mod layer;

use crate::model::config::BertConfig;
use embeddings::BertEmbeddings;
use layer::BertLayer;
use tch::{nn, nn::Module, Kind, Tensor};

/// A linear layer computed in the dtype of its input (weights cast to it): fp32 master
/// weights run in bf16 when the activations are bf16, and a no-op cast otherwise.
pub(crate) fn linear(l: &nn::Linear, x: &Tensor) -> Tensor {
    let kind = x.kind();
    let bias = l.bs.as_ref().map(|b| b.to_kind(kind));
    x.linear(&l.ws.to_kind(kind), bias.as_ref())
}

/// LayerNorm computed in the dtype of its weights (fp32 for training, for stability),
/// returned in the dtype of its input.
pub(crate) fn norm(l: &nn::LayerNorm, x: &Tensor) -> Tensor {
    let wk = l.ws.as_ref().map_or(x.kind(), |w| w.kind());
    l.forward(&x.to_kind(wk)).to_kind(x.kind())
}

pub(crate) fn layer_norm(p: nn::Path, config: &BertConfig) -> nn::LayerNorm {
    let cfg = nn::LayerNormConfig {
        eps: config.layer_norm_eps,
        ..Default::default()
    };
    nn::layer_norm(p, vec![config.hidden_size], cfg)
}

#[derive(Debug)]
pub struct BertModel {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    pooler: nn::Linear,
    /// Dtype of the activations (the weights' dtype unless set otherwise): bf16 with fp32
    /// weights is mixed-precision training, as autocast would do it.
    compute: Kind,
}

impl BertModel {
    /// Variables are created under `p` with the Hugging Face names.
    pub fn new(p: nn::Path, config: &BertConfig) -> Self {
        let layers = (0..config.num_hidden_layers)
            .map(|i| BertLayer::new(&p / "encoder" / "layer" / i, config))
            .collect();
        let h = config.hidden_size;
        BertModel {
            embeddings: BertEmbeddings::new(&p / "embeddings", config),
            layers,
            pooler: nn::linear(&p / "pooler" / "dense", h, h, Default::default()),
            compute: Kind::Float,
        }
    }

    /// Run the encoder with activations in `kind` (e.g. bf16 over fp32 master weights).
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute = kind;
    }

    pub fn compute_kind(&self) -> Kind {
        self.compute
    }

    /// Token states. `input_ids`, `attention_mask`, `token_type_ids`: `[batch, seq]`
    /// int64; returns `[batch, seq, hidden]` in the weights' dtype. Padding positions are
    /// masked out of attention; `unpadded` skips the mask when no row is padded.
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: &Tensor,
        unpadded: bool,
        train: bool,
    ) -> Tensor {
        let mask = (!unpadded).then(|| attention_mask.gt(0).unsqueeze(1).unsqueeze(1));
        let mut hidden = self
            .embeddings
            .forward_t(input_ids, token_type_ids, train)
            .to_kind(self.compute);
        for layer in &self.layers {
            hidden = layer.forward_t(&hidden, mask.as_ref(), train);
        }
        hidden
    }

    /// BERT pooler: tanh(dense(first token)). `[batch, seq, hidden]` -> `[batch, hidden]`.
    pub fn pool(&self, hidden: &Tensor) -> Tensor {
        linear(&self.pooler, &hidden.select(1, 0)).tanh()
    }
}
