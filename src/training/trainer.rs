//! The training loop shared by the `train` and `teacher` stages: seeded epochs of
//! examples, micro-batches with gradient accumulation, global-norm
//! clipping, AdamW with a warmup-then-decay schedule, and checkpoints from which a killed
//! run resumes to exactly the weights an uninterrupted run ends with.
//!
//! Everything random is a function of (seed, step): the data order and sampling of each
//! epoch, and the torch generator (dropout), reseeded before every step. A checkpoint
//! therefore needs only the step besides weights and moments.
use super::checkpoint;
use super::curve::LossCurve;
use super::feed::{represented, Prepare, Prepared, Steps};
use super::groups::{Batching, Example, TrainingSet};
use super::optimizer::{AdamW, AdamWConfig};
pub use super::pending::PendingStep;
use super::schedule::{Decay, Schedule};
use crate::distributed::World;
use crate::error::{Error, Result};
use crate::model::work::{Tally, Throughput, Work};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tch::Tensor;

/// Optimisation settings common to both training stages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainSettings {
    pub epochs: usize,
    pub lr: f64,
    pub warmup_ratio: f64,
    pub schedule: Decay,
    /// Queries per micro-batch.
    pub batch_queries: usize,
    /// Negatives per query.
    pub negatives: usize,
    /// How queries are put into batches (left out of the hash when random).
    #[serde(skip_serializing_if = "Batching::is_default")]
    pub batching: Batching,
    pub grad_accumulation: usize,
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    /// Optimizer steps between checkpoints (a checkpoint is also written at the end).
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    /// What is left of the checkpoints once the stage has succeeded (not in the hash: it
    /// changes no output).
    #[serde(skip)]
    pub after_success: super::checkpoint::AfterSuccess,
    pub seed: u64,
    /// Optimizer steps at least: more epochs are run when `epochs` would give fewer (a
    /// small dataset's training does not collapse to a few dozen steps). Left out of the
    /// hash when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_steps: Option<u64>,
}

impl TrainSettings {
    /// The epochs run over `per_epoch` micro-batches: `epochs`, or more when `min_steps`
    /// asks for more optimizer steps.
    pub fn epochs_for(&self, per_epoch: usize) -> usize {
        // Steps are ceil(per_epoch x epochs / accum): enough epochs for min_steps x accum
        // micro-batches.
        let accum = self.grad_accumulation.max(1) as u64;
        let needed = self
            .min_steps
            .map_or(0, |m| (m * accum).div_ceil((per_epoch as u64).max(1)))
            as usize;
        self.epochs.max(needed)
    }
}

/// In-training evaluation: every `every` optimizer steps and after the last, `evaluate`
/// gives nDCG@10 per dataset for the model as it is. The step also gets a checkpoint,
/// whose loss curve holds the evaluation, so a resumed run replays it. With `keep_best`,
/// the checkpoint of the best evaluation (highest mean, the earliest on ties) is kept
/// from pruning and its weights are what the run ends with.
pub struct Monitor<'a> {
    pub every: u64,
    pub keep_best: bool,
    pub evaluate: Box<Evaluate<'a>>,
}

/// nDCG@10 per dataset (name, value) of the model as it is.
pub type Evaluate<'a> = dyn FnMut() -> Result<Vec<(String, f64)>> + 'a;

/// What the training loop reports. The loop knows nothing of stages or logs: its caller
/// (a stage, a benchmark) decides where each event goes.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// Resumed from the checkpoint at `step` (of `total` optimizer steps).
    Resumed { step: u64, total: u64 },
    /// The loop starts with `remaining` of `total` steps to run.
    Started { remaining: u64, total: u64 },
    /// One optimizer step: its loss (the sum over micro-batches), named terms, learning
    /// rate and gradient norm (before clipping).
    Step {
        step: u64,
        epoch: u64,
        lr: f64,
        loss: f32,
        grad_norm: f32,
        terms: Vec<(String, f32)>,
    },
    /// In-training evaluation at `step`: nDCG@10 per dataset.
    Evaluated {
        step: u64,
        values: Vec<(String, f64)>,
    },
    /// A checkpoint of `step` (of `total`) is written.
    CheckpointWritten { step: u64, total: u64 },
    /// The loop is done; taking its `checkpoints` held it `checkpoint_seconds` in all.
    /// `throughput`: what its steps in this process computed, when the task counts it.
    Finished {
        checkpoints: u64,
        checkpoint_seconds: f64,
        throughput: Option<Throughput>,
    },
}

/// The training loop's caller: where its events go, and a hook after every optimizer
/// step (the tests' fault injection).
pub trait Host {
    fn event(&mut self, event: TrainEvent);
    fn after_step(&mut self, _step: u64) {}
    /// What is being trained, for file names (a stage's name).
    fn label(&self) -> String {
        "training".into()
    }
    /// Whether every step waits for the checkpoint being written, so that what is on
    /// disk after a step does not depend on the writer's pace (the tests' faults).
    fn settles_checkpoints(&self) -> bool {
        false
    }
}

/// The event of a checkpoint the writer has finished, if any.
fn written_event(host: &mut dyn Host, step: Option<u64>, total: u64) {
    if let Some(step) = step {
        host.event(TrainEvent::CheckpointWritten { step, total });
    }
}

/// A loss (differentiable) and its named terms (values, for the curve).
pub type Terms = (Tensor, Vec<(String, Tensor)>);

/// A model and a loss over micro-batches of examples, in two steps so that data-parallel
/// ranks can each represent a slice of a micro-batch and share the whole batch's loss
/// ([`crate::distributed`]).
pub trait Task {
    /// The model's representations of `examples` (differentiable): the same number of
    /// rows for every example, in example order.
    fn represent(&self, examples: &[Example]) -> Result<Tensor>;
    /// Total loss of a micro-batch from the representations of all its examples.
    fn loss_from(&self, examples: &[Example], reps: &Tensor) -> Result<Terms>;
    /// Total loss of a micro-batch and its terms.
    fn loss(&self, examples: &[Example]) -> Result<Terms> {
        let reps = self.represent(examples)?;
        self.loss_from(examples, &reps)
    }
    /// The host half of [`Task::represent`] (tokenizing, padding, pinning), which a
    /// thread can run ahead of the device; None when the task has none to hand off.
    fn preparer(&self) -> Option<&dyn Prepare> {
        None
    }
    /// [`Task::represent`] from what its [`Task::preparer`] made of `examples`.
    fn represent_prepared(&self, examples: &[Example], prepared: Prepared) -> Result<Tensor> {
        let _ = prepared;
        self.represent(examples)
    }
    /// The compute copies of the models the task trains (mixed precision), which
    /// [`optimizer_step`] refreshes before the step's forwards and whose gradients it moves
    /// to the masters after each backward pass; none by default.
    fn compute_copies(&self) -> Vec<&crate::model::bert::ComputeCopies> {
        Vec::new()
    }
    /// The model arithmetic of training on `work` ([`crate::model::work`]); None when the
    /// task does not count it.
    fn flops(&self, work: &Work) -> Option<f64> {
        let _ = work;
        None
    }
}

/// The representations of the examples in `range` of `batch`, from `prepared` when a
/// thread has prepared them.
fn represent(
    task: &dyn Task,
    batch: &[Example],
    range: std::ops::Range<usize>,
    prepared: Option<Prepared>,
) -> Result<Tensor> {
    match prepared {
        Some(p) => task.represent_prepared(&batch[range], p),
        None => task.represent(&batch[range]),
    }
}

/// Sizes of a run: micro-batches per epoch, optimizer steps in all.
pub fn plan(set: &TrainingSet, s: &TrainSettings) -> (usize, u64) {
    let per_epoch = set.groups.len().div_ceil(s.batch_queries.max(1));
    let micro = (per_epoch * s.epochs_for(per_epoch)) as u64;
    (per_epoch, micro.div_ceil(s.grad_accumulation.max(1) as u64))
}

/// Seed for the fresh initialisation of a stage's model.
pub fn init_seed(seed: u64, stage: &str) -> i64 {
    (crate::rng::SplitMix64::for_key(seed, &format!("init {stage}")).next_u64() >> 1) as i64
}

fn step_seed(seed: u64, step: u64) -> i64 {
    (crate::rng::SplitMix64::for_key(seed, &format!("step {step}")).next_u64() >> 1) as i64
}

/// One optimizer step: each micro-batch's loss, divided by their number, back-propagated;
/// the gradients clipped to `max_grad_norm` (global norm); AdamW stepped at `lr`. The
/// training loop's step, and `distill bench`'s W3. The loss values come back to the host
/// by a copy that is queued, not waited for ([`PendingStep`]).
/// With `world`, every rank is given the same micro-batches, represents its slice of
/// each, and ends with the one-process gradient ([`backward_shared`]). `prepared`: per
/// micro-batch, what the task's preparer made of the examples this process represents
/// ([`represented`]), when a thread has prepared them ahead.
pub fn optimizer_step(
    task: &dyn Task,
    opt: &mut AdamW,
    batches: &[Vec<Example>],
    prepared: Option<Vec<Prepared>>,
    max_grad_norm: f64,
    lr: f64,
    world: Option<&World>,
) -> Result<PendingStep> {
    opt.zero_grad();
    // The models' compute copies hold this step's weights until the update (retired when
    // `copies` is dropped, on an error too).
    let copies = crate::model::bert::Refreshed::new(task.compute_copies())?;
    let (mut losses, mut terms_of) = (Vec::new(), Vec::new());
    let mut prepared = prepared.map(Vec::into_iter);
    for batch in batches {
        let share = 1.0 / batches.len() as f64;
        let ready = prepared.as_mut().and_then(Iterator::next);
        let (loss, terms) = match world {
            None => {
                let reps = represent(task, batch, 0..batch.len(), ready)?;
                let (loss, terms) = task.loss_from(batch, &reps)?;
                let scaled = loss * share;
                scaled.backward();
                (scaled, terms)
            }
            Some(w) => backward_shared(task, batch, ready, share, w)?,
        };
        copies.transfer()?;
        losses.push(loss.detach());
        terms_of.push(terms);
    }
    drop(copies);
    if let Some(w) = world {
        let grads = opt.grads();
        w.sum(&grads.iter().collect::<Vec<_>>())?;
    }
    let grad_norm = opt.clip_grad_norm(max_grad_norm);
    opt.step(lr)?;
    let mut record = PendingStep::new(&losses, terms_of, Some(grad_norm))?;
    record.lr = lr;
    record.step = opt.step;
    Ok(record)
}

/// This rank's part of a micro-batch's backward pass: it represents its slice of
/// `batch`, the ranks' representations are gathered, the whole batch's loss (times
/// `share`) is computed from them (the same on every rank), and its gradient with
/// respect to this rank's rows is back-propagated through the model. Summed over the
/// ranks, the parameters' gradients are the one-process gradient. Returns the scaled
/// loss (detached) and its terms.
fn backward_shared(
    task: &dyn Task,
    batch: &[Example],
    prepared: Option<Prepared>,
    share: f64,
    w: &World,
) -> Result<Terms> {
    let (rank, size) = (w.rank(), w.size());
    let slices: Vec<_> = (0..size)
        .map(|r| World::slice(batch.len(), r, size))
        .collect();
    let mine = slices[rank].clone();
    // A rank without examples (a micro-batch smaller than the world) represents the
    // first one and back-propagates zeros, so every rank runs the same collectives.
    let local = represent(
        task,
        batch,
        represented(batch.len(), Some((rank, size))),
        prepared,
    )?;
    let per_example = local.size()[0] as usize / mine.len().max(1);
    let counts: Vec<usize> = slices.iter().map(|s| s.len() * per_example).collect();
    let all = w
        .gather_rows(&local.detach(), &counts)?
        .set_requires_grad(true);
    let (loss, terms) = task.loss_from(batch, &all)?;
    let scaled = loss * share;
    scaled.backward();
    let grad = all.grad();
    let start = slices[..rank]
        .iter()
        .map(|s| s.len() * per_example)
        .sum::<usize>();
    let mine_grad = match mine.is_empty() {
        true => local.zeros_like(),
        false => grad.narrow(0, start as i64, counts[rank] as i64),
    };
    (&local * mine_grad.to_kind(local.kind()))
        .sum(local.kind())
        .backward();
    Ok((scaled.detach(), terms))
}

/// Train `vars` (named trainable tensors of the task's model) on `set`. Checkpoints go to
/// `checkpoints`; an existing checkpoint there is resumed from. With `world`, this
/// process is one rank of a data-parallel run: the ranks resume from rank 0's latest
/// checkpoint, start from rank 0's weights, share every micro-batch
/// ([`optimizer_step`]), and only rank 0 evaluates (`monitor`) and writes checkpoints.
#[allow(clippy::too_many_arguments)]
pub fn train(
    host: &mut dyn Host,
    task: &dyn Task,
    vars: BTreeMap<String, Tensor>,
    set: &TrainingSet,
    s: &TrainSettings,
    checkpoints: &Path,
    mut monitor: Option<Monitor>,
    world: Option<&World>,
) -> Result<LossCurve> {
    let primary = world.is_none_or(World::is_primary);
    if !primary {
        monitor = None;
    }
    if set.groups.is_empty() {
        return Err(Error::TrainingData {
            dataset: None,
            message: "no training query has both a positive and a negative".into(),
        });
    }
    std::fs::create_dir_all(checkpoints).map_err(|e| Error::io(checkpoints, e))?;
    let (per_epoch, total_steps) = plan(set, s);
    let schedule = Schedule {
        peak: s.lr,
        warmup_steps: (s.warmup_ratio * total_steps as f64).round() as u64,
        total_steps,
        decay: s.schedule,
    };
    let config = AdamWConfig {
        weight_decay: s.weight_decay,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars, config);
    let mut curve = LossCurve::default();
    let mut latest = checkpoint::list(checkpoints).last().copied();
    if let Some(w) = world {
        let agreed = w.agree(latest.map_or(-1, |step| step as i64))?;
        latest = u64::try_from(agreed).ok();
    }
    if let Some(last) = latest {
        curve = checkpoint::load(checkpoints, last, &mut opt)?;
        host.event(TrainEvent::Resumed {
            step: last,
            total: total_steps,
        });
    }
    if let Some(w) = world {
        let params: Vec<&Tensor> = opt.params.iter().map(|p| &p.param).collect();
        tch::no_grad(|| w.broadcast_from_primary(&params))?;
    }
    host.event(TrainEvent::Started {
        remaining: total_steps - opt.step,
        total: total_steps,
    });
    let mut steps = Steps::new(set, s, per_epoch);
    // The values of a step are read back after the next step has been queued, so the
    // host never waits for the GPU to drain (except before a checkpoint).
    let mut pending: Option<PendingStep> = None;
    // Checkpoints taken and the seconds they held the loop, waits for their writing
    // included (a timing event of the stage); they are written beside the training.
    let (mut taken, mut writer) = ((0u64, 0f64), checkpoint::Writer::default());
    let cuda = match opt.params.first().map(|p| p.param.device()) {
        Some(tch::Device::Cuda(i)) => Some(i as i64),
        _ => None,
    };
    // On CUDA the host's tensors are a step's small buffers: libtorch's intra-op pool
    // only adds barriers (its threads, one per core, compete with the preparing thread,
    // the autograd thread and, under --gpus, the other ranks' threads), so it runs inline.
    let _threads = cuda.map(|_| crate::device::InlineHostOps::new());
    let mut trace = super::trace::StepTrace::from_env(
        &host.label(),
        checkpoints,
        world.map_or(0, World::rank),
        cuda,
    )?;
    let rank_of = world.map(|w| (w.rank(), w.size()));
    // With several ranks, each micro-batch ordered so that the ranks' slices carry
    // near-equal work (every rank orders the same batch alike).
    let mut batches_of = |step: u64| {
        let (epoch, batches) = steps.batches(step);
        match (rank_of, task.preparer()) {
            (Some((_, size)), Some(p)) if size > 1 => {
                let cost = |e: &Example| p.cost(e);
                let ordered = batches
                    .into_iter()
                    .map(|b| super::feed::balanced(b, size, cost))
                    .collect();
                (epoch, ordered)
            }
            _ => (epoch, batches),
        }
    };
    let first_step = opt.step;
    let mut tally = Tally::start();
    super::feed::ahead(task.preparer(), rank_of, |ahead| {
        // Step s + 1's micro-batches are sent to the preparing thread before step s runs.
        let mut next = (opt.step < total_steps).then(|| batches_of(opt.step));
        if let Some((_, b)) = &next {
            ahead.send(b.clone());
        }
        while let Some((epoch, batches)) = next.take() {
            let step = opt.step;
            let prepared = ahead.receive()?;
            tally.add(
                prepared
                    .as_ref()
                    .map(|p| p.iter().map(Prepared::work).sum()),
            );
            if step + 1 < total_steps {
                let following = batches_of(step + 1);
                ahead.send(following.1.clone());
                next = Some(following);
            }
            if let Some(t) = trace.as_mut() {
                t.before(step)?;
            }
            // Dropout's generator: the one-process seed on rank 0, a seed of its own on each
            // other rank, so that the ranks' slices draw independent masks.
            tch::manual_seed(match world.map_or(0, World::rank) {
                0 => step_seed(s.seed, step),
                rank => step_seed(
                    s.seed ^ crate::rng::SplitMix64::for_key(rank as u64, "rank").next_u64(),
                    step,
                ),
            });
            let mut record = optimizer_step(
                task,
                &mut opt,
                &batches,
                prepared,
                s.max_grad_norm,
                schedule.lr(step),
                world,
            )?;
            record.epoch = epoch;
            // After a first step has shown which parameters get gradients, each step's
            // sum over the ranks is one collective on one buffer, in place; on CUDA the
            // zeroing and the clipping take that buffer too.
            if (world.is_some() || opt.fused()) && step == first_step {
                opt.flatten_grads()?;
            }
            if let Some(t) = trace.as_mut() {
                t.after(opt.step)?;
            }
            if let Some(previous) = pending.replace(record) {
                previous.resolve(&mut curve, host)?;
            }
            let last = opt.step == total_steps;
            let evaluate = monitor
                .as_ref()
                .is_some_and(|m| opt.step % m.every.max(1) == 0 || last);
            if primary && (opt.step % s.checkpoint_every.max(1) == 0 || last || evaluate) {
                if let Some(current) = pending.take() {
                    current.resolve(&mut curve, host)?;
                }
                if let Some(m) = monitor.as_mut().filter(|_| evaluate) {
                    let values = (m.evaluate)()?;
                    host.event(TrainEvent::Evaluated {
                        step: opt.step,
                        values: values.clone(),
                    });
                    curve
                        .evals
                        .push(super::curve::EvalPoint::new(opt.step, values));
                }
                let best = curve
                    .best_eval()
                    .filter(|_| monitor.as_ref().is_some_and(|m| m.keep_best))
                    .map(|e| e.step);
                let clock = Instant::now();
                let snapshot = checkpoint::snapshot(&opt, &curve)?;
                let before = writer.start(checkpoints, snapshot, s.keep_checkpoints, best)?;
                taken = (taken.0 + 1, taken.1 + clock.elapsed().as_secs_f64());
                written_event(host, before, total_steps);
            }
            // A fault that fires after this step finds what was written by then on disk.
            let (wait, clock) = (host.settles_checkpoints() || last, Instant::now());
            written_event(host, writer.settle(wait)?, total_steps);
            taken.1 += clock.elapsed().as_secs_f64();
            host.after_step(opt.step);
        }
        Ok(())
    })?;
    let clock = Instant::now();
    written_event(host, writer.settle(true)?, total_steps);
    taken.1 += clock.elapsed().as_secs_f64();
    let loop_seconds = tally.seconds();
    if let Some(last) = pending.take() {
        last.resolve(&mut curve, host)?;
    }
    if let Some(best) = curve
        .best_eval()
        .filter(|_| monitor.as_ref().is_some_and(|m| m.keep_best))
    {
        checkpoint::restore_weights(checkpoints, best.step, &mut opt)?;
    }
    let ranks = world.map_or(1, World::size) as u64;
    let done = (first_step, opt.step - first_step, ranks, loop_seconds);
    host.event(TrainEvent::Finished {
        checkpoints: taken.0,
        checkpoint_seconds: taken.1,
        throughput: tally
            .throughput(|w| task.flops(w), done)
            .filter(|_| primary),
    });
    Ok(curve)
}

#[cfg(test)]
#[path = "trainer_tests.rs"]
mod tests;
