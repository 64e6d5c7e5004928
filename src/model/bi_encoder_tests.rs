use super::*;
use crate::model::batching::HostBatch;
use crate::model::bert::TokenStates;

/// On CUDA in bf16 (where batches are packed): a packed batch's embeddings, pooled from its
/// real tokens, and the weights' gradients through them are those of the same token states
/// padded and pooled as sentence-transformers pools; each row's first token is the padded
/// batch's first column; and the packed path agrees with padded attention to bf16's
/// rounding. Passes trivially without a GPU (the CPU pads every batch); needs the tiny
/// fixture (`make fixtures`), read relative to the package root.
#[test]
fn packed_token_states_pool_as_the_padded_batch_on_cuda() {
    if !tch::Cuda::is_available() {
        return;
    }
    let device = Device::Cuda(0);
    let dir = Path::new("tests/fixtures/generated/tiny_bi_mean");
    let mut model = BiEncoder::load(dir, device, Kind::BFloat16, None).unwrap();
    let texts: Vec<String> = (1..=24)
        .map(|n| {
            (0..n * 3)
                .map(|w| format!("w{}", (w * 7 + n) % 50))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let encoded = model.tokenize(Side::Document, &texts).unwrap();
    let items: Vec<&Encoded> = encoded.iter().collect();
    let batch = HostBatch::new(&items, model.tokenizer.pad_id(), device).upload(device);
    let weight = (Tensor::arange(model.spec.config.hidden_size, (Kind::Float, device)) * 0.7).sin();
    // The pooled rows and every weight's gradient of a fixed weighting of them.
    let pooled_and_grads = |model: &BiEncoder, pack: bool| {
        model.vs.variables().values().for_each(|v| {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        });
        let states = model.bert.token_states(&batch, false);
        assert!(
            matches!(states, TokenStates::Packed { .. }),
            "the batch ran padded"
        );
        let pooled = match pack {
            true => model
                .spec
                .pooling
                .forward_states(states, &batch.attention_mask),
            false => model
                .spec
                .pooling
                .forward(&states.padded(), &batch.attention_mask),
        };
        (&pooled * &weight).sum(Kind::Float).backward();
        // Every variable the pooled rows reach (the token type embeddings' second row,
        // say, is never read, and the whole tensor may have no gradient).
        let mut grads: Vec<(String, Tensor)> = model
            .vs
            .variables()
            .into_iter()
            .filter(|(_, v)| v.grad().defined())
            .map(|(name, v)| (name, v.grad().to_kind(Kind::Float)))
            .collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        (pooled.detach(), grads)
    };
    let (packed, packed_grads) = pooled_and_grads(&model, true);
    let (padded, padded_grads) = pooled_and_grads(&model, false);
    assert!(packed_grads.len() > 10, "{} gradients", packed_grads.len());
    assert_eq!(packed_grads.len(), padded_grads.len());
    let largest = |t: &Tensor| t.abs().max().double_value(&[]);
    assert!(largest(&(&packed - &padded)) <= 1e-6 * largest(&padded).max(1.0));
    for ((name, a), (_, b)) in packed_grads.iter().zip(&padded_grads) {
        // bf16 weights: their gradients are rounded to bf16 once either way.
        assert!(largest(&(a - b)) <= 1e-2 * largest(b).max(1e-6), "{name}");
    }
    let first = model.bert.token_states(&batch, false).first();
    let column = model.bert.token_states(&batch, false).padded().select(1, 0);
    assert_eq!(largest(&(first - column).to_kind(Kind::Float)), 0.0);
    // The packed path against padded attention: the same model to bf16's rounding.
    model.set_kernels(Kernels {
        packed_attention: false,
        ..Kernels::default()
    });
    let other = tch::no_grad(|| {
        let hidden = model.bert.forward_t(&batch, false);
        model.spec.pooling.forward(&hidden, &batch.attention_mask)
    });
    assert!(
        largest(&(&other - &packed)) < 3e-2,
        "{}",
        largest(&(&other - &packed))
    );
}
