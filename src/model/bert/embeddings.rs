//! BERT input embeddings: word + token type + absolute position, then LayerNorm and dropout.
use crate::model::hf_config::BertConfig;
use std::sync::atomic::AtomicBool;
use tch::{nn, nn::Module, Kind, Tensor};

/// Hugging Face keys: `embeddings.{word,position,token_type}_embeddings.weight`,
/// `embeddings.LayerNorm.{weight,bias}`.
#[derive(Debug)]
pub struct BertEmbeddings {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: nn::Embedding,
    layer_norm: super::Norm,
    dropout: f64,
}

impl BertEmbeddings {
    pub fn new(p: nn::Path, config: &BertConfig) -> Self {
        let emb = |name: &str, n: i64| {
            nn::embedding(&p / name, n, config.hidden_size, Default::default())
        };
        BertEmbeddings {
            word_embeddings: emb("word_embeddings", config.vocab_size),
            position_embeddings: emb("position_embeddings", config.max_position_embeddings),
            token_type_embeddings: emb("token_type_embeddings", config.type_vocab_size),
            layer_norm: super::layer_norm(&p / "LayerNorm", config),
            dropout: config.hidden_dropout_prob,
        }
    }

    /// `input_ids`, `token_type_ids`: `[batch, seq]` int64 -> `[batch, seq, hidden]`; or,
    /// with `positions`, packed `[tokens]` ids, segments and positions -> `[tokens, hidden]`.
    /// `fused`: the model's fused add + LayerNorm switch (see `Norm::add_forward`).
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        positions: Option<&Tensor>,
        fused: &AtomicBool,
        train: bool,
    ) -> Tensor {
        let positions = match positions {
            Some(p) => p.shallow_clone(),
            None => {
                let seq = input_ids.size()[1];
                Tensor::arange(seq, (Kind::Int64, input_ids.device())).unsqueeze(0)
            }
        };
        // Same summation order as transformers: (word + token type) + position.
        let x = self.word_embeddings.forward(input_ids)
            + self.token_type_embeddings.forward(token_type_ids);
        self.layer_norm
            .add_forward(
                &x,
                &self.position_embeddings.forward(&positions),
                fused,
                None,
            )
            .dropout(self.dropout, train)
    }
}
