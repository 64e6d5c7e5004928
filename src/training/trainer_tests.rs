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

fn table() -> Table {
    tch::manual_seed(5);
    Table {
        emb: Tensor::randn([40, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true),
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
