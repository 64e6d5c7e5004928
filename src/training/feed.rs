//! What the training loop feeds each optimizer step: its micro-batches of examples
//! ([`Steps`]), and their host work (tokenizing, padding, pinning) done on a thread one
//! step ahead of the device ([`ahead`]), so that the device does not wait for the host
//! between steps.
use super::groups::{Batching, Example, TrainingSet};
use super::trainer::TrainSettings;
use crate::error::{Error, Result};
use std::ops::Range;
use std::sync::mpsc;

/// The host half of representing examples: no device, so it may run on another thread.
pub trait Prepare: Sync {
    fn prepare(&self, examples: &[Example]) -> Result<Prepared>;
    /// The device work of representing `example`, in any unit common to the examples
    /// ([`balanced`] evens it out over data-parallel ranks); the same for every example
    /// by default.
    fn cost(&self, example: &Example) -> f64 {
        let _ = example;
        1.0
    }
}

/// The device work of encoding a sequence of `tokens` tokens with a BERT encoder of width
/// `hidden`, in token units: the linear layers take about 24 hidden² multiply-adds a token
/// and attention 4 tokens x hidden, so attention adds tokens / (6 hidden) to each token.
pub fn sequence_cost(tokens: usize, hidden: i64) -> f64 {
    let t = tokens as f64;
    t * (1.0 + t / (6.0 * hidden.max(1) as f64))
}

/// `batch` in the order whose slices for `size` data-parallel ranks
/// ([`crate::distributed::World::slice`]: as many examples each as before) carry near-equal
/// `cost`: the examples go, the costliest first, to the rank with the least so far that has
/// room, and each rank keeps its examples in batch order. The ranks wait for the slowest
/// at every gather and sum; the losses are means over the batch's queries (with in-batch
/// negatives over all of them), the same in any order up to the rounding of their sums
/// (`objectives` tests). On the CPU too, where batches are padded and their cost is
/// rather their count times their longest text: the order is then a guess, never wrong.
/// Every rank reorders the same batch alike.
pub fn balanced(batch: Vec<Example>, size: usize, cost: impl Fn(&Example) -> f64) -> Vec<Example> {
    let n = batch.len();
    if size < 2 || n <= size {
        return batch;
    }
    let costs: Vec<f64> = batch.iter().map(cost).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]).then(a.cmp(&b)));
    let room: Vec<usize> = (0..size)
        .map(|r| crate::distributed::World::slice(n, r, size).len())
        .collect();
    let mut load = vec![0.0f64; size];
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); size];
    for i in order {
        let rank = (0..size)
            .filter(|&r| members[r].len() < room[r])
            .min_by(|&a, &b| load[a].total_cmp(&load[b]))
            .unwrap_or(0);
        load[rank] += costs[i];
        members[rank].push(i);
    }
    let mut slots: Vec<Option<Example>> = batch.into_iter().map(Some).collect();
    members
        .into_iter()
        .flat_map(|mut m| {
            m.sort_unstable();
            m
        })
        .filter_map(|i| slots[i].take())
        .collect()
}

/// A micro-batch prepared on the host: its batches, in the order the task runs them.
pub type Prepared = crate::model::batching::PaddedBatches;

/// The examples of a micro-batch of `len` that a process represents: all of them alone;
/// as rank `rank` of `size`, its slice (the first example when the slice is empty, so
/// that every rank runs the same collectives; see the trainer's `backward_shared`).
pub fn represented(len: usize, rank_of: Option<(usize, usize)>) -> Range<usize> {
    match rank_of {
        None => 0..len,
        Some((rank, size)) => {
            let mine = crate::distributed::World::slice(len, rank, size);
            match mine.is_empty() {
                true => 0..1.min(len),
                false => mine,
            }
        }
    }
}

/// The micro-batches of each optimizer step of a run: `accum` micro-batches of
/// `batch_queries` examples a step, from each epoch's plan (built once per epoch).
pub struct Steps<'a> {
    set: &'a TrainingSet,
    s: &'a TrainSettings,
    per_epoch: usize,
    total_micro: u64,
    plan: Option<(usize, Vec<Example>)>,
}

impl<'a> Steps<'a> {
    pub fn new(set: &'a TrainingSet, s: &'a TrainSettings, per_epoch: usize) -> Self {
        Steps {
            set,
            s,
            per_epoch,
            total_micro: (per_epoch * s.epochs_for(per_epoch)) as u64,
            plan: None,
        }
    }

    /// Step `step`'s epoch and micro-batches.
    pub fn batches(&mut self, step: u64) -> (usize, Vec<Vec<Example>>) {
        let (s, per_epoch) = (self.s, self.per_epoch);
        let accum = s.grad_accumulation.max(1) as u64;
        let micro = step * accum..((step + 1) * accum).min(self.total_micro);
        let mut epoch = 0;
        let mut batches = Vec::with_capacity(micro.clone().count());
        for m in micro {
            epoch = m as usize / per_epoch;
            if self.plan.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let topic = (s.batching == Batching::Topic).then_some(s.batch_queries);
                let examples = self.set.epoch(s.seed, epoch, s.negatives, topic);
                self.plan = Some((epoch, examples));
            }
            let examples = self.plan.as_ref().map_or(&[][..], |p| &p.1[..]);
            let idx = m as usize % per_epoch;
            let end = ((idx + 1) * s.batch_queries).min(examples.len());
            batches.push(examples[idx * s.batch_queries..end].to_vec());
        }
        (epoch, batches)
    }
}

/// The main thread's side of a preparing thread: [`Ahead::send`] a step's micro-batches,
/// [`Ahead::receive`] them prepared, in the order sent.
pub struct Ahead {
    jobs: Option<mpsc::SyncSender<Vec<Vec<Example>>>>,
    done: Option<mpsc::Receiver<Result<Vec<Prepared>>>>,
    sent: usize,
}

impl Ahead {
    /// Start preparing a step's micro-batches (no-op without a preparer).
    pub fn send(&mut self, batches: Vec<Vec<Example>>) {
        if let Some(jobs) = &self.jobs {
            // A closed channel means the thread has stopped on an error, which
            // `receive` returns.
            if jobs.send(batches).is_ok() {
                self.sent += 1;
            }
        }
    }

    /// The oldest sent step's prepared micro-batches; None when nothing was sent (no
    /// preparer), in which case the step prepares its own.
    pub fn receive(&mut self) -> Result<Option<Vec<Prepared>>> {
        if self.sent == 0 {
            return Ok(None);
        }
        self.sent -= 1;
        let done = self.done.as_ref().ok_or_else(stopped)?;
        done.recv().map_err(|_| stopped())?.map(Some)
    }
}

fn stopped() -> Error {
    Error::torch(
        "preparing training batches",
        tch::TchError::Torch("the preparing thread stopped".into()),
    )
}

/// Run `body` with a thread that prepares, with `preparer`, what this process
/// represents ([`represented`]) of the micro-batches `body` sends it, one step ahead
/// (a queue of one step). Without a preparer, nothing runs beside `body`.
pub fn ahead<R>(
    preparer: Option<&dyn Prepare>,
    rank_of: Option<(usize, usize)>,
    body: impl FnOnce(&mut Ahead) -> Result<R>,
) -> Result<R> {
    let Some(preparer) = preparer else {
        return body(&mut Ahead {
            jobs: None,
            done: None,
            sent: 0,
        });
    };
    std::thread::scope(|scope| {
        let (jobs, job_rx) = mpsc::sync_channel::<Vec<Vec<Example>>>(1);
        let (done_tx, done) = mpsc::sync_channel(1);
        scope.spawn(move || {
            let work = move || {
                for batches in job_rx {
                    let prepared = batches
                        .iter()
                        .map(|b| preparer.prepare(&b[represented(b.len(), rank_of)]))
                        .collect::<Result<Vec<_>>>();
                    let failed = prepared.is_err();
                    // The receiver is gone when `body` has returned: stop.
                    if done_tx.send(prepared).is_err() || failed {
                        break;
                    }
                }
            };
            // A step's host work has a whole step of the device to hide behind: a few
            // threads of its own (for the teacher's tokenizer), rather than the global
            // pool's one per core, which would compete with the threads that launch the
            // device's work (and, under --gpus, with the other ranks').
            let threads = (rayon::current_num_threads() / 4).clamp(1, 4);
            match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
                Ok(pool) => pool.install(work),
                Err(_) => work(),
            }
        });
        // `body` owns both ends, so the thread sees them close when it returns.
        body(&mut Ahead {
            jobs: Some(jobs),
            done: Some(done),
            sent: 0,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::{ahead, balanced, represented, sequence_cost, Prepare, Prepared};
    use crate::error::{Error, Result};
    use crate::model::batching::HostBatch;
    use crate::model::tokenizer::Encoded;
    use crate::training::groups::Example;
    use tch::Device;

    /// One row per example: its query id as the only token; fails on query 99.
    struct Queries;

    impl Prepare for Queries {
        fn prepare(&self, examples: &[Example]) -> Result<Prepared> {
            if examples.iter().any(|e| e.query == 99) {
                return Err(Error::Setting {
                    key: "query".into(),
                    message: "99".into(),
                });
            }
            let rows: Vec<Encoded> = examples
                .iter()
                .map(|e| Encoded {
                    ids: vec![e.query as i64],
                    type_ids: vec![0],
                })
                .collect();
            let items: Vec<&Encoded> = rows.iter().collect();
            Ok(Prepared::in_order(vec![HostBatch::new(
                &items,
                0,
                Device::Cpu,
            )]))
        }
    }

    fn step(queries: &[usize]) -> Vec<Vec<Example>> {
        vec![queries
            .iter()
            .map(|&query| Example {
                query,
                positive: 0,
                negatives: vec![],
            })
            .collect()]
    }

    fn ids(prepared: Vec<Prepared>) -> Vec<i64> {
        let first = prepared.into_iter().next().unwrap();
        let ids = first.run(Device::Cpu, |b| b.input_ids.shallow_clone());
        Vec::<i64>::try_from(ids.view([-1])).unwrap()
    }

    #[test]
    fn steps_come_back_prepared_in_the_order_sent_with_this_ranks_slice() {
        let got = ahead(Some(&Queries), Some((1, 2)), |a| {
            a.send(step(&[1, 2, 3, 4]));
            a.send(step(&[5, 6, 7]));
            let first = ids(a.receive()?.unwrap());
            a.send(step(&[8]));
            let second = ids(a.receive()?.unwrap());
            let third = ids(a.receive()?.unwrap());
            assert!(a.receive()?.is_none(), "nothing more was sent");
            Ok((first, second, third))
        })
        .unwrap();
        // Rank 1 of 2 represents the second half; of one example, the first (the
        // slice is empty).
        assert_eq!(got, (vec![3, 4], vec![7], vec![8]));
        assert_eq!(represented(3, Some((1, 2))), 2..3);
        assert_eq!(represented(1, Some((1, 2))), 0..1);
        assert_eq!(represented(3, None), 0..3);
    }

    #[test]
    fn a_failed_preparation_is_returned_when_its_step_is_received() {
        let err = ahead(Some(&Queries), None, |a| {
            a.send(step(&[1]));
            a.send(step(&[99]));
            assert_eq!(ids(a.receive()?.unwrap()), vec![1]);
            a.receive().map(|_| ())
        })
        .unwrap_err();
        assert!(err.to_string().contains("99"), "{err}");
    }

    #[test]
    fn without_a_preparer_each_step_prepares_its_own() {
        let got = ahead(None, None, |a| {
            a.send(step(&[1]));
            a.receive()
        })
        .unwrap();
        assert!(got.is_none());
    }

    /// Costs made to load two contiguous halves unevenly: the first examples cost most.
    fn uneven(n: usize) -> Vec<Example> {
        (0..n)
            .map(|i| Example {
                query: i,
                positive: (n - i) * (n - i),
                negatives: vec![],
            })
            .collect()
    }

    /// Balanced slices: the same examples, as many per rank as `World::slice` gives, each
    /// rank's in batch order, and the ranks' loads within the costliest example of each
    /// other, where the contiguous slices were not.
    #[test]
    fn balanced_slices_carry_near_equal_costs_with_the_same_counts() {
        let cost = |e: &Example| e.positive as f64;
        for (n, size) in [(13, 2), (32, 2), (30, 4), (7, 3)] {
            let batch = uneven(n);
            let load = |b: &[Example], r: usize| -> f64 {
                b[crate::distributed::World::slice(n, r, size)]
                    .iter()
                    .map(cost)
                    .sum()
            };
            let spread = |b: &[Example]| {
                let loads: Vec<f64> = (0..size).map(|r| load(b, r)).collect();
                loads.iter().cloned().fold(f64::MIN, f64::max)
                    - loads.iter().cloned().fold(f64::MAX, f64::min)
            };
            let before = spread(&batch);
            let out = balanced(batch.clone(), size, cost);
            let mut queries: Vec<usize> = out.iter().map(|e| e.query).collect();
            for r in 0..size {
                let slice = &queries[crate::distributed::World::slice(n, r, size)];
                assert!(slice.windows(2).all(|w| w[0] < w[1]), "rank {r}: {slice:?}");
            }
            let after = spread(&out);
            let costliest = (n * n) as f64;
            assert!(after <= costliest, "{n} over {size}: spread {after}");
            assert!(after < before, "{n} over {size}: {after} against {before}");
            queries.sort_unstable();
            assert_eq!(queries, (0..n).collect::<Vec<_>>());
        }
        // One rank, or no more examples than ranks: the batch as it was.
        let batch = uneven(5);
        for size in [1, 5, 8] {
            let out = balanced(batch.clone(), size, cost);
            assert!(out.iter().zip(&batch).all(|(a, b)| a.query == b.query));
        }
    }

    #[test]
    fn sequence_cost_adds_attention_in_proportion_to_length() {
        assert_eq!(sequence_cost(0, 384), 0.0);
        assert_eq!(sequence_cost(2304, 384), 2.0 * 2304.0);
        assert!(sequence_cost(512, 384) / 512.0 > sequence_cost(128, 384) / 128.0);
    }
}
