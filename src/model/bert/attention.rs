//! BERT self-attention through libtorch's `scaled_dot_product_attention`.
use super::{Affine, ComputeCopies};
use crate::model::batching::Packing;
use crate::model::hf_config::BertConfig;
use std::sync::atomic::AtomicBool;
use tch::{nn, Tensor};

/// Hugging Face keys: `attention.self.{query,key,value}.{weight,bias}`,
/// `attention.output.dense.{weight,bias}`, `attention.output.LayerNorm.{weight,bias}`.
#[derive(Debug)]
pub struct BertAttention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    output: nn::Linear,
    layer_norm: super::Norm,
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

    /// The linear layers in the groups their compute copies are made in: Q, K and V
    /// together, the output alone; with `norms`, the LayerNorm alone.
    pub fn copy_groups(&self, norms: bool) -> Vec<Vec<Affine<'_>>> {
        let mut groups = vec![
            [&self.query, &self.key, &self.value]
                .map(Affine::linear)
                .to_vec(),
            vec![Affine::linear(&self.output)],
        ];
        groups.extend(self.layer_norm.copy_group(norms));
        groups
    }

    /// `hidden`: `[batch, seq, hidden]` (padded) or `[tokens, hidden]` (packed). Returns
    /// the same shape. `fused`: the model's fused add + LayerNorm switch (see
    /// `Norm::add_forward`).
    pub fn forward_t(
        &self,
        hidden: &Tensor,
        attend: &Attend,
        fused: &AtomicBool,
        copies: Option<&ComputeCopies>,
        train: bool,
    ) -> Tensor {
        let dropout = if train { self.attention_dropout } else { 0.0 };
        let context = match attend {
            Attend::Padded(mask) => {
                let q = super::linear_in(&self.query, hidden, copies, fused);
                let k = super::linear_in(&self.key, hidden, copies, fused);
                let v = super::linear_in(&self.value, hidden, copies, fused);
                let (b, l, h) = hidden.size3().unwrap_or((0, 0, 0));
                let split = |x: Tensor| x.view([b, l, self.heads, self.head_dim]).transpose(1, 2);
                let context = Tensor::scaled_dot_product_attention(
                    &split(q),
                    &split(k),
                    &split(v),
                    *mask,
                    dropout,
                    false,
                    None,
                    false,
                );
                context.transpose(1, 2).reshape([b, l, h])
            }
            Attend::Packed(p) => {
                // One GEMM for the three projections (weights concatenated, as fused
                // QKV kernels do); q, k, v are strided views of its output.
                let (t, h) = hidden.size2().unwrap_or((0, 0));
                let kind = hidden.kind();
                let (lq, lk, lv) = (&self.query, &self.key, &self.value);
                let copy = copies
                    .filter(|c| c.kind() == kind)
                    .and_then(|c| c.group(&[lq, lk, lv]));
                let on_copies = copy.is_some();
                let (w, b) = copy.unwrap_or_else(|| {
                    let w = Tensor::cat(&[&lq.ws, &lk.ws, &lv.ws], 0).to_kind(kind);
                    let b = match (&lq.bs, &lk.bs, &lv.bs) {
                        (Some(a), Some(b), Some(c)) => {
                            Some(Tensor::cat(&[a, b, c], 0).to_kind(kind))
                        }
                        _ => None,
                    };
                    (w, b)
                });
                // One unbind, not three selects: in training its backward is one stack,
                // where each select's backward fills a zeroed copy of the whole output.
                let qkv = match on_copies {
                    true => super::linear_on_copies(hidden, &w, b.as_ref(), fused),
                    false => hidden.linear(&w, b.as_ref()),
                };
                let qkv = qkv.view([t, 3, self.heads, self.head_dim]).unbind(1);
                crate::ffi::attention::varlen_attention(
                    &qkv[0],
                    &qkv[1],
                    &qkv[2],
                    &p.cu_seqlens,
                    p.max_len,
                    dropout,
                )
                .unwrap_or_else(|e| panic!("{e}"))
                .view([t, h])
            }
        };
        let out = super::linear_in(&self.output, &context, copies, fused)
            .dropout(self.hidden_dropout, train);
        self.layer_norm.add_forward(&out, hidden, fused, copies)
    }
}

/// How tokens see each other: a padded batch with its key mask (`[batch, 1, 1, seq]`
/// bool, true = attend; None when no row is padded), or packed sequences.
pub enum Attend<'a> {
    Padded(Option<&'a Tensor>),
    Packed(&'a Packing),
}
