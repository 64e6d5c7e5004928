//! sentence-transformers pooling: token states -> one vector per input.
use crate::error::{Error, Result};
use crate::model::bert::TokenStates;
use crate::model::hf_config::PoolingConfig;
use std::path::Path;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    Cls,
    Max,
    Mean,
    MeanSqrtLen,
}

/// The pooling modes of a `Pooling` module, concatenated in sentence-transformers' order
/// (cls, max, mean, mean-sqrt-len) when several are enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pooling {
    modes: Vec<PoolingMode>,
}

impl Pooling {
    pub fn new(modes: Vec<PoolingMode>) -> Self {
        Pooling { modes }
    }

    pub fn mean() -> Self {
        Pooling::new(vec![PoolingMode::Mean])
    }

    /// From `1_Pooling/config.json` (`path` is only used in errors). A `pooling_mode`
    /// key (sentence-transformers 6) wins over the legacy booleans and keeps its order.
    pub fn from_config(config: &PoolingConfig, path: &Path) -> Result<Self> {
        if !config.include_prompt {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                message: "include_prompt = false (prompt tokens left out of pooling) is not \
                          implemented"
                    .into(),
            });
        }
        if let Some(mode) = &config.pooling_mode {
            return Self::from_mode_names(mode, path);
        }
        if config.pooling_mode_weightedmean_tokens || config.pooling_mode_lasttoken {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                message: "weighted-mean and last-token pooling are not implemented".into(),
            });
        }
        let flags = [
            (config.pooling_mode_cls_token, PoolingMode::Cls),
            (config.pooling_mode_max_tokens, PoolingMode::Max),
            (config.pooling_mode_mean_tokens, PoolingMode::Mean),
            (
                config.pooling_mode_mean_sqrt_len_tokens,
                PoolingMode::MeanSqrtLen,
            ),
        ];
        let modes: Vec<_> = flags.iter().filter(|f| f.0).map(|f| f.1).collect();
        if modes.is_empty() {
            return Err(Error::model(path, "no pooling mode is enabled"));
        }
        Ok(Pooling::new(modes))
    }

    fn from_mode_names(value: &serde_json::Value, path: &Path) -> Result<Self> {
        let names: Vec<&serde_json::Value> = match value {
            serde_json::Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        let modes = names
            .into_iter()
            .map(|v| match v.as_str() {
                Some("cls") => Ok(PoolingMode::Cls),
                Some("max") => Ok(PoolingMode::Max),
                Some("mean") => Ok(PoolingMode::Mean),
                Some("mean_sqrt_len_tokens") => Ok(PoolingMode::MeanSqrtLen),
                Some(m @ ("weightedmean" | "lasttoken")) => Err(Error::Unsupported {
                    path: path.to_path_buf(),
                    message: format!("pooling mode `{m}` is not implemented"),
                }),
                _ => Err(Error::model(path, format!("invalid pooling_mode {v}"))),
            })
            .collect::<Result<Vec<_>>>()?;
        if modes.is_empty() {
            return Err(Error::model(path, "pooling_mode is empty"));
        }
        Ok(Pooling::new(modes))
    }

    pub fn modes(&self) -> &[PoolingMode] {
        &self.modes
    }

    /// Output dimension for token states of width `hidden`.
    pub fn dim(&self, hidden: i64) -> i64 {
        hidden * self.modes.len() as i64
    }

    /// [`Pooling::forward`] of a batch's token states: a packed batch's from its real
    /// tokens alone, each row's sums taken over its own tokens in order (`segment_reduce`,
    /// no atomics: the same bits on every run), where padding them would fill and read a
    /// `[batch, seq, hidden]` tensor several times the tokens' size, forward and backward.
    /// With max pooling the batch is padded first: `segment_reduce`'s backward gives a
    /// negative gradient whole to each of tied maxima (`amax` splits it among them).
    pub fn forward_states(&self, states: TokenStates, attention_mask: &Tensor) -> Tensor {
        match states {
            TokenStates::Packed {
                tokens,
                starts,
                lengths,
                ..
            } if !self.modes.contains(&PoolingMode::Max) => {
                self.forward_packed(&tokens, &starts, &lengths)
            }
            other => self.forward(&other.padded(), attention_mask),
        }
    }

    /// The modes other than max over packed `tokens` `[tokens, hidden]`, rows starting at
    /// `starts` with `lengths` tokens each.
    fn forward_packed(&self, tokens: &Tensor, starts: &Tensor, lengths: &Tensor) -> Tensor {
        let hidden = tokens.to_kind(Kind::Float);
        // unsafe_: the lengths are the packing's, which add up to the tokens (the check
        // would read them back on the host, a wait per batch).
        let segments = |reduce: &str, initial: f64| {
            Tensor::segment_reduce(&hidden, reduce, Some(lengths), None, None, 0, true, initial)
        };
        let count = || lengths.to_kind(Kind::Float).clamp_min(1e-9).unsqueeze(1);
        let parts: Vec<Tensor> = self
            .modes
            .iter()
            .map(|mode| match mode {
                PoolingMode::Cls => hidden.index_select(0, starts),
                PoolingMode::Mean => segments("sum", 0.0) / count(),
                PoolingMode::MeanSqrtLen => segments("sum", 0.0) / count().sqrt(),
                PoolingMode::Max => unreachable!("max pooling pads the batch first"),
            })
            .collect();
        Self::concatenated(parts)
    }

    /// `hidden`: `[batch, seq, hidden]` (any float dtype), `attention_mask`: `[batch, seq]`.
    /// Returns `[batch, dim]` in fp32, computed as sentence-transformers does.
    pub fn forward(&self, hidden: &Tensor, attention_mask: &Tensor) -> Tensor {
        let hidden = hidden.to_kind(Kind::Float);
        let mask = attention_mask
            .unsqueeze(-1)
            .expand_as(&hidden)
            .to_kind(Kind::Float);
        let parts: Vec<Tensor> = self
            .modes
            .iter()
            .map(|mode| match mode {
                PoolingMode::Cls => hidden.select(1, 0),
                PoolingMode::Max => hidden
                    .masked_fill(&mask.eq(0.0), f64::NEG_INFINITY)
                    .amax([1].as_slice(), false),
                PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
                    let sum = (&hidden * &mask).sum_dim_intlist([1].as_slice(), false, Kind::Float);
                    let count = mask
                        .sum_dim_intlist([1].as_slice(), false, Kind::Float)
                        .clamp_min(1e-9);
                    if *mode == PoolingMode::Mean {
                        sum / count
                    } else {
                        sum / count.sqrt()
                    }
                }
            })
            .collect();
        Self::concatenated(parts)
    }

    /// The modes' vectors side by side (a mode alone as it is).
    fn concatenated(mut parts: Vec<Tensor>) -> Tensor {
        match parts.len() {
            1 => parts.remove(0),
            _ => Tensor::cat(&parts, 1),
        }
    }

    /// The `1_Pooling/config.json` that sentence-transformers reads back.
    pub fn to_config(&self, hidden: i64) -> PoolingConfig {
        let has = |m| self.modes.contains(&m);
        PoolingConfig {
            pooling_mode: None,
            embedding_dimension: None,
            word_embedding_dimension: hidden,
            pooling_mode_cls_token: has(PoolingMode::Cls),
            pooling_mode_mean_tokens: has(PoolingMode::Mean),
            pooling_mode_max_tokens: has(PoolingMode::Max),
            pooling_mode_mean_sqrt_len_tokens: has(PoolingMode::MeanSqrtLen),
            pooling_mode_weightedmean_tokens: false,
            pooling_mode_lasttoken: false,
            include_prompt: true,
        }
    }
}

/// L2 normalisation as `torch.nn.functional.normalize(x, p=2, dim=1)`: x / max(|x|, 1e-12).
pub fn l2_normalize(x: &Tensor) -> Tensor {
    let norm = x
        .norm_scalaropt_dim(2, [1].as_slice(), true)
        .clamp_min(1e-12);
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (Tensor, Tensor) {
        // Two rows; the second has one padding position holding a large value that
        // must not leak into any pooled output.
        let hidden = Tensor::from_slice(&[
            1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, //
            -1.0, 0.5, 2.0, -3.0, 100.0, 100.0,
        ])
        .view([2, 3, 2]);
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0]).view([2, 3]);
        (hidden, mask)
    }

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        Vec::<Vec<f32>>::try_from(t).unwrap()
    }

    #[test]
    fn each_mode_ignores_padding() {
        let (h, m) = fixture();
        let pool = |mode| rows(&Pooling::new(vec![mode]).forward(&h, &m));
        assert_eq!(
            pool(PoolingMode::Cls),
            vec![vec![1.0, 2.0], vec![-1.0, 0.5]]
        );
        assert_eq!(pool(PoolingMode::Max), vec![vec![5.0, 6.0], vec![2.0, 0.5]]);
        assert_eq!(
            pool(PoolingMode::Mean),
            vec![vec![3.0, 4.0], vec![0.5, -1.25]]
        );
        let s = pool(PoolingMode::MeanSqrtLen);
        assert!((s[0][0] - 9.0 / 3f32.sqrt()).abs() < 1e-6);
        assert!((s[1][1] - (-2.5 / 2f32.sqrt())).abs() < 1e-6);
    }

    /// The fixture's real tokens packed: its rows' 3 and 2 tokens end to end.
    fn packed(hidden: &Tensor) -> TokenStates {
        let index = Tensor::from_slice(&[0i64, 1, 2, 3, 4]);
        TokenStates::Packed {
            tokens: hidden.view([6, 2]).index_select(0, &index),
            starts: Tensor::from_slice(&[0i64, 3]),
            lengths: Tensor::from_slice(&[3i64, 2]),
            index,
            shape: (2, 3),
        }
    }

    /// The pooled rows of `states` under `pool` and the gradient of `weight`-weighted rows
    /// with respect to the fixture-shaped `x` behind them.
    fn pooled_and_grad(
        pool: &Pooling,
        x: &Tensor,
        pack: bool,
        mask: &Tensor,
        weight: &Tensor,
    ) -> (Tensor, Tensor) {
        let x = x.copy().set_requires_grad(true);
        let states = match pack {
            true => packed(&x),
            false => TokenStates::Padded(x.shallow_clone()),
        };
        let out = pool.forward_states(states, mask);
        (out.shallow_clone() * weight).sum(Kind::Float).backward();
        (out.detach(), x.grad())
    }

    #[test]
    fn packed_states_pool_and_backpropagate_as_the_padded_batch() {
        let (h, m) = fixture();
        let modes = [
            PoolingMode::Cls,
            PoolingMode::Mean,
            PoolingMode::MeanSqrtLen,
        ];
        let pool = Pooling::new(modes.to_vec());
        // A weight per output, some negative, so that every mode's gradient reaches the
        // tokens.
        let w = (Tensor::arange(6, (Kind::Float, tch::Device::Cpu)) * 2.1)
            .sin()
            .view([1, 6]);
        let (a, ga) = pooled_and_grad(&pool, &h, true, &m, &w);
        let (b, gb) = pooled_and_grad(&pool, &h, false, &m, &w);
        assert_eq!(rows(&a), rows(&b));
        assert_eq!(rows(&a), rows(&pool.forward(&h, &m)));
        let diff = (ga - &gb).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
        // The padding position's value reached no output, so it gets no gradient.
        let padding = gb.view([-1]).narrow(0, 10, 2);
        assert_eq!(Vec::<f32>::try_from(padding).unwrap(), [0.0, 0.0]);
        // Padded back, the packed states are the fixture with its padding zeroed.
        let back = packed(&h).padded().view([6, 2]);
        assert_eq!(rows(&back)[4], vec![2.0f32, -3.0]);
        assert_eq!(rows(&back)[5], vec![0.0, 0.0]);
    }

    #[test]
    fn max_pooling_splits_a_negative_gradient_among_tied_maxima_packed_or_not() {
        // Row 0's first column peaks at 5.0 twice; its output is weighted -1.
        let h = Tensor::from_slice(&[
            5.0f32, 1.0, 5.0, 2.0, 3.0, 0.0, //
            -1.0, 0.5, 2.0, -3.0, 100.0, 100.0,
        ])
        .view([2, 3, 2]);
        let m = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0]).view([2, 3]);
        let pool = Pooling::new(vec![PoolingMode::Max]);
        let w = Tensor::from_slice(&[-1.0f32, 1.0]).view([1, 2]);
        for pack in [true, false] {
            let (out, grad) = pooled_and_grad(&pool, &h, pack, &m, &w);
            assert_eq!(rows(&out), vec![vec![5.0, 2.0], vec![2.0, 0.5]]);
            let g = Vec::<f32>::try_from(grad.view([-1])).unwrap();
            assert_eq!(g[0], -0.5, "packed: {pack}");
            assert_eq!(g[2], -0.5, "packed: {pack}");
            assert_eq!(g[4], 0.0, "packed: {pack}");
        }
    }

    #[test]
    fn several_modes_concatenate_in_sentence_transformers_order() {
        let (h, m) = fixture();
        let p = Pooling::new(vec![PoolingMode::Cls, PoolingMode::Mean]);
        assert_eq!(p.dim(2), 4);
        assert_eq!(rows(&p.forward(&h, &m))[0], vec![1.0, 2.0, 3.0, 4.0]);
        let config = p.to_config(2);
        let back = Pooling::from_config(&config, Path::new("x")).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn reads_sentence_transformers_6_mode_names_in_order() {
        let config = PoolingConfig {
            pooling_mode: Some(serde_json::json!(["mean", "cls"])),
            ..Default::default()
        };
        let p = Pooling::from_config(&config, Path::new("x")).unwrap();
        assert_eq!(p.modes(), &[PoolingMode::Mean, PoolingMode::Cls]);
        let bad = PoolingConfig {
            pooling_mode: Some(serde_json::json!("lasttoken")),
            ..Default::default()
        };
        let err = Pooling::from_config(&bad, Path::new("p.json")).unwrap_err();
        assert!(err.to_string().contains("lasttoken"), "{err}");
    }

    #[test]
    fn normalize_gives_unit_rows_and_keeps_zero_rows() {
        let x = Tensor::from_slice(&[3.0f32, 4.0, 0.0, 0.0]).view([2, 2]);
        assert_eq!(
            rows(&l2_normalize(&x)),
            vec![vec![0.6, 0.8], vec![0.0, 0.0]]
        );
    }
}
