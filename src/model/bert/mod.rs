//! BERT encoder on tch, laid out as Hugging Face's `BertModel` so that checkpoint
//! import is a name mapping: `embeddings.*`, `encoder.layer.N.*`, `pooler.dense.*`.
mod attention;
mod embeddings;
mod layer;

use crate::model::config::BertConfig;
use embeddings::BertEmbeddings;
use layer::BertLayer;
use tch::{nn, nn::Module, Tensor};

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
        }
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
        let mut hidden = self.embeddings.forward_t(input_ids, token_type_ids, train);
        for layer in &self.layers {
            hidden = layer.forward_t(&hidden, mask.as_ref(), train);
        }
        hidden
    }

    /// BERT pooler: tanh(dense(first token)). `[batch, seq, hidden]` -> `[batch, hidden]`.
    pub fn pool(&self, hidden: &Tensor) -> Tensor {
        self.pooler.forward(&hidden.select(1, 0)).tanh()
    }
}
