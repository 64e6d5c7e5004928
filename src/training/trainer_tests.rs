//! Tests of the training loop's data-parallel step.
use super::{backward_shared, Task, Terms};
use crate::distributed::World;
use crate::error::Result;
use crate::training::groups::Example;
use crate::training::objectives::{student_loss, LossConfig};
use tch::{Device, Kind, Tensor};

/// Embeddings looked up in a table (the model), under the student's loss with
/// symmetric InfoNCE and KL against made-up teacher scores.
struct Table {
    emb: Tensor,
    loss: LossConfig,
}

const K: usize = 3;

impl Task for Table {
    fn represent(&self, examples: &[Example]) -> Result<Tensor> {
        let rows: Vec<i64> = examples
            .iter()
            .flat_map(|e| {
                std::iter::once(e.query)
                    .chain(std::iter::once(e.positive))
                    .chain(e.negatives.iter().copied())
                    .map(|i| i as i64)
            })
            .collect();
        Ok(self.emb.index_select(0, &Tensor::from_slice(&rows)))
    }

    fn loss_from(&self, examples: &[Example], reps: &Tensor) -> Result<Terms> {
        let b = examples.len() as i64;
        let rows = reps.view([b, 1 + K as i64, -1]);
        let q = rows.select(1, 0);
        let d = rows.narrow(1, 1, K as i64).reshape([b * K as i64, -1]);
        let teacher: Vec<f32> = (0..b as usize * K).map(|i| (i % 5) as f32).collect();
        let masked = vec![false; b as usize * b as usize * K];
        Ok(student_loss(&q, &d, &teacher, &masked, &self.loss))
    }
}

/// The same table on every thread: from a seeded generator of its own, not the global one
/// (which this binary's tests, run in parallel, share: two ranks seeding and drawing it in
/// turn got different tables).
fn table() -> Table {
    let mut rng = crate::rng::SplitMix64::for_key(5, "table");
    let values: Vec<f32> = (0..40 * 8)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
        .collect();
    Table {
        emb: Tensor::from_slice(&values)
            .view([40, 8])
            .set_requires_grad(true),
        loss: LossConfig {
            margin_mse: 0.0,
            kl: 1.0,
            infonce: 1.0,
            student_scale: 1.0,
            kl_student_temperature: 1.0,
            kl_teacher_temperature: 1.0,
            infonce_scale: 20.0,
            infonce_symmetric: true,
            exclude_false_negatives: false,
        },
    }
}

/// Five examples (3 and 2 on two ranks), each with its own texts.
fn batch() -> Vec<Example> {
    (0..5)
        .map(|i| Example {
            query: 8 * i,
            positive: 8 * i + 1,
            negatives: (8 * i + 2..8 * i + 2 + K - 1).collect(),
        })
        .collect()
}

#[test]
fn gathered_ranks_give_the_one_process_loss_and_gradient_and_misalignment_would_not() {
    let batch = batch();
    let one = table();
    let (loss, _) = one.loss(&batch).unwrap();
    loss.backward();
    let (want_loss, want_grad) = (loss.double_value(&[]), one.emb.grad());

    // The rows in a wrong order (rank 1's block first): another loss, so a gather
    // that mixed up the ranks' rows would be seen.
    let reps = one.represent(&batch).unwrap().detach();
    let rows = (1 + K as i64) * 3;
    let swapped = Tensor::cat(
        &[
            reps.narrow(0, rows, reps.size()[0] - rows),
            reps.narrow(0, 0, rows),
        ],
        0,
    );
    let (wrong, _) = one.loss_from(&batch, &swapped).unwrap();
    assert!((wrong.double_value(&[]) - want_loss).abs() > 1e-3);

    let port = crate::distributed::free_port().unwrap();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let batch = batch.clone();
            std::thread::spawn(move || {
                let w = World::join(Device::Cpu, "127.0.0.1", port, rank, 2).unwrap();
                let task = table();
                let (loss, _) = backward_shared(&task, &batch, None, 1.0, &w).unwrap();
                let grad = task.emb.grad();
                w.sum(&[&grad]).unwrap();
                (loss.double_value(&[]), grad)
            })
        })
        .collect();
    for r in ranks {
        let (loss, grad) = r.join().unwrap();
        assert!((loss - want_loss).abs() < 1e-6, "{loss} vs {want_loss}");
        let diff = (&grad - &want_grad).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "gradient differs by {diff}");
        assert!(grad.abs().sum(Kind::Float).double_value(&[]) > 1e-3);
    }
}

/// A small BERT trained on a fixed batch: each example's texts encoded, their mean token
/// states pulled towards zero.
struct Encoder {
    vs: tch::nn::VarStore,
    bert: crate::model::bert::BertModel,
    texts: Vec<crate::model::tokenizer::Encoded>,
    /// Two forwards a micro-batch (as the CPU's batches cut by length), not one.
    split: bool,
}

impl Encoder {
    /// With the weights of `like` when given. Without dropout: the tests of this binary
    /// run in parallel and share the generator.
    fn new(copies: bool, split: bool, like: Option<&tch::nn::VarStore>) -> Encoder {
        let config = crate::model::hf_config::BertConfig {
            vocab_size: 64,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 64,
            max_position_embeddings: 64,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            ..Default::default()
        };
        let mut vs = tch::nn::VarStore::new(Device::Cpu);
        let mut bert = crate::model::bert::BertModel::new(vs.root() / "bert", &config);
        if let Some(like) = like {
            vs.copy(like).unwrap();
        }
        bert.set_compute_kind(Kind::BFloat16);
        bert.set_kernels(crate::model::bert::Kernels {
            compute_copies: copies,
            low_precision_norms: false,
            ..Default::default()
        });
        let texts = (0..8)
            .map(|r: i64| crate::model::tokenizer::Encoded {
                ids: (0..5 + 3 * r).map(|t| 1 + (11 * r + 5 * t) % 60).collect(),
                type_ids: vec![0; 5 + 3 * r as usize],
            })
            .collect();
        Encoder {
            vs,
            bert,
            texts,
            split,
        }
    }
}

impl Task for Encoder {
    fn represent(&self, examples: &[Example]) -> Result<Tensor> {
        let items: Vec<&crate::model::tokenizer::Encoded> = examples
            .iter()
            .flat_map(|e| [e.query, e.positive])
            .map(|t| &self.texts[t])
            .collect();
        let cut = if self.split { items.len() / 2 } else { 0 };
        let parts = [&items[..cut], &items[cut..]]
            .into_iter()
            .filter(|part| !part.is_empty())
            .map(|part| {
                let batch = crate::model::batching::HostBatch::new(part, 0, Device::Cpu)
                    .upload(Device::Cpu);
                let hidden = self.bert.forward_t(&batch, true).to_kind(Kind::Float);
                // The first forward of a pass took the copies (when there are any).
                if let Some(c) = self.bert.compute_copies() {
                    assert!(!c.available(), "a forward left the copies untaken");
                }
                let pooled = self.bert.pool(&hidden.select(1, 0).to_kind(Kind::BFloat16));
                hidden.mean_dim(1, false, Kind::Float) + pooled.to_kind(Kind::Float)
            })
            .collect::<Vec<_>>();
        Ok(Tensor::cat(&parts, 0))
    }

    fn loss_from(&self, _: &[Example], reps: &Tensor) -> Result<Terms> {
        Ok(((reps - 0.5).square().mean(Kind::Float), Vec::new()))
    }

    fn compute_copies(&self) -> Vec<&crate::model::bert::ComputeCopies> {
        self.bert.compute_copies().into_iter().collect()
    }
}

/// Mixed precision (bf16 activations over fp32 weights, here on the CPU): training with
/// the linear layers' compute copies (the LayerNorms in fp32) ends with the same weights,
/// to the bit, as casting in every forward, over steps of two micro-batches (so the
/// copies' gradients are moved to the masters after each backward pass), with one forward
/// a micro-batch and with two (the second casts: summed into the copies, its gradient
/// would be rounded to bf16); the copies serve only inside a step.
#[test]
fn compute_copies_train_to_the_weights_of_casting_in_every_forward() {
    for split in [false, true] {
        copies_against_casts(split);
    }
}

fn copies_against_casts(split: bool) {
    let examples: Vec<Example> = (0..4)
        .map(|i| Example {
            query: 2 * i,
            positive: 2 * i + 1,
            negatives: Vec::new(),
        })
        .collect();
    let start = Encoder::new(false, split, None);
    let run = |copies: bool| {
        let task = Encoder::new(copies, split, Some(&start.vs));
        assert_eq!(task.compute_copies().len(), usize::from(copies));
        let mut opt = crate::training::optimizer::AdamW::new(
            task.vs.variables().into_iter().collect(),
            Default::default(),
        );
        for _ in 0..3 {
            let micro = [examples[..2].to_vec(), examples[2..].to_vec()];
            super::optimizer_step(&task, &mut opt, &micro, None, 1.0, 1e-3, None).unwrap();
            if let Some(c) = task.compute_copies().first() {
                assert!(!c.available(), "the copies outlived the step");
            }
        }
        let mut weights: Vec<(String, Tensor)> = task.vs.variables().into_iter().collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        weights
    };
    let (with, without) = (run(true), run(false));
    assert_eq!(with.len(), without.len());
    let mut moved: f64 = 0.0;
    for ((name, a), (_, b)) in with.iter().zip(&without) {
        let diff = (a - b).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "{name} differs by {diff} (split: {split})");
        let first = start.vs.variables()[name].shallow_clone();
        moved = moved.max((a - first).abs().max().double_value(&[]));
    }
    assert!(moved > 1e-4, "training did not move the weights ({moved})");
}
