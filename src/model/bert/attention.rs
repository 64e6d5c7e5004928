//! BERT self-attention through libtorch's `scaled_dot_product_attention`.
use crate::model::config::BertConfig;
use tch::{nn, Tensor};

/// Hugging Face keys: `attention.self.{query,key,value}.{weight,bias}`,
/// `attention.output.dense.{weight,bias}`, `attention.output.LayerNorm.{weight,bias}`.
#[derive(Debug)]
pub struct BertAttention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    output: nn::Linear,
    layer_norm: nn::LayerNorm,
    heads: i64,
    head_dim: i64,
    attention_dropout: f64,
    hidden_dropout: f64,
}

impl BertAttention {
    pub fn new(p: nn::Path, config: &BertConfig) -> Self {
        let h = config.hidden_size;
        let s = &p / "self";
        let o = &p / "output";
        let lin = |path: nn::Path| nn::linear(path, h, h, Default::default());
        BertAttention {
            query: lin(&s / "query"),
            key: lin(&s / "key"),
            value: lin(&s / "value"),
            output: lin(&o / "dense"),
            layer_norm: super::layer_norm(&o / "LayerNorm", config),
            heads: config.num_attention_heads,
            head_dim: config.head_dim(),
            attention_dropout: config.attention_probs_dropout_prob,
            hidden_dropout: config.hidden_dropout_prob,
        }
    }

    /// `hidden`: `[batch, seq, hidden]`; `mask`: `[batch, 1, 1, seq]` bool (true = attend),
    /// or `None` when no row is padded. Returns `[batch, seq, hidden]`.
    pub fn forward_t(&self, hidden: &Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let (b, l, h) = hidden.size3().unwrap_or((0, 0, 0));
        let split = |x: Tensor| x.view([b, l, self.heads, self.head_dim]).transpose(1, 2);
        let q = split(super::linear(&self.query, hidden));
        let k = split(super::linear(&self.key, hidden));
        let v = split(super::linear(&self.value, hidden));
        let dropout = if train { self.attention_dropout } else { 0.0 };
        let context =
            Tensor::scaled_dot_product_attention(&q, &k, &v, mask, dropout, false, None, false);
        let context = context.transpose(1, 2).reshape([b, l, h]);
        let out = super::linear(&self.output, &context).dropout(self.hidden_dropout, train);
        super::norm(&self.layer_norm, &(out + hidden))
    }
}
