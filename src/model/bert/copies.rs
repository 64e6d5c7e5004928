//! Compute copies: the low-precision weights of a model's linear layers (and LayerNorms,
//! see [`crate::model::bert::Kernels::low_precision_norms`]) in mixed-precision
//! training, made once per optimizer step from the fp32 masters, where
//! before every forward cast each weight (and every backward ran that cast's node and an
//! accumulation into the master's gradient). A trace of the teacher's step on an H200
//! showed those casts as 74 forward operations and 74 backward nodes of about 330, the
//! host time that bounds a step on two GPUs (BENCHMARKS.md).
//!
//! Each group of layers (Q, K and V together, as the packed path multiplies them in one
//! product; every other layer alone) has one leaf tensor for its weights and one for its
//! biases, rows end to end. [`ComputeCopies::refresh`] copies the masters into them
//! with one multi-tensor copy; the forward uses them while they are live; after each
//! backward pass [`ComputeCopies::transfer`] adds the leaves' gradients, widened to fp32,
//! into the masters' (or makes them the masters' where there were none) and clears the
//! leaves'. For the linear layers the values are those of the casts: a bf16 gradient
//! widened to fp32 and added to the master's is what the cast's backward and the
//! accumulation computed. (A LayerNorm's copies serve a bf16 LayerNorm, where casting ran
//! an fp32 one: see `Kernels::low_precision_norms`.) (With one
//! forward a backward pass, as the packed path runs, to the bit; a second forward in a
//! pass casts, and its gradient reaches the master in another order of fp32 sums.)
use crate::error::Result;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{nn, Kind, Tensor};

/// A master weight or bias and the rows of a leaf that hold its copy.
struct Part {
    master: Tensor,
    leaf: usize,
    offset: i64,
    rows: i64,
}

/// A layer's parameters as the copies see them: a weight (a linear layer's `[out, in]`,
/// a LayerNorm's `[width]`) and its bias, if it has one.
#[derive(Clone, Copy)]
pub struct Affine<'a> {
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
}

impl<'a> Affine<'a> {
    pub fn linear(l: &'a nn::Linear) -> Self {
        Affine {
            weight: &l.ws,
            bias: l.bs.as_ref(),
        }
    }

    /// A LayerNorm's weight and bias; None for a LayerNorm without a weight.
    pub fn norm(ln: &'a nn::LayerNorm) -> Option<Self> {
        Some(Affine {
            weight: ln.ws.as_ref()?,
            bias: ln.bs.as_ref(),
        })
    }
}

/// The compute copies of a model's linear layers (and LayerNorms).
pub struct ComputeCopies {
    kind: Kind,
    leaves: Vec<Tensor>,
    parts: Vec<Part>,
    /// Per part, the view of its leaf that [`ComputeCopies::refresh`] copies into.
    views: Vec<Tensor>,
    /// By a layer's master weight (its data pointer): its weight part and bias part.
    by_weight: HashMap<usize, (usize, Option<usize>)>,
    /// Whether the copies hold the masters' current values (from a refresh to the end of
    /// the optimizer step).
    live: AtomicBool,
    /// Whether a forward has used them since the last refresh or transfer.
    taken: AtomicBool,
}

impl std::fmt::Debug for ComputeCopies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeCopies")
            .field("kind", &self.kind)
            .field("leaves", &self.leaves.len())
            .field("parts", &self.parts.len())
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish()
    }
}

fn key(weight: &Tensor) -> usize {
    weight.data_ptr() as usize
}

impl ComputeCopies {
    /// Copies in `kind` of `groups` of layers (each group's weights have the same shape
    /// past their first dimension, as linear layers that take one input). A group whose
    /// layers do not all have biases, or all lack them, gets no copies: its layers cast.
    pub fn new(groups: &[Vec<Affine>], kind: Kind) -> Self {
        let _guard = tch::no_grad_guard();
        let mut copies = ComputeCopies {
            kind,
            leaves: Vec::new(),
            parts: Vec::new(),
            views: Vec::new(),
            by_weight: HashMap::new(),
            live: AtomicBool::new(false),
            taken: AtomicBool::new(false),
        };
        let uniform = |g: &&Vec<Affine>| {
            g.iter().all(|l| l.bias.is_some()) || g.iter().all(|l| l.bias.is_none())
        };
        for group in groups.iter().filter(|g| !g.is_empty()).filter(uniform) {
            let rows: i64 = group.iter().map(|l| l.weight.size()[0]).sum();
            let first = group[0].weight;
            let mut shape = first.size();
            shape[0] = rows;
            let leaf_w = copies.leaf(&shape, first.device());
            let leaf_b = group
                .iter()
                .all(|l| l.bias.is_some())
                .then(|| copies.leaf(&[rows], first.device()));
            let mut offset = 0;
            for l in group {
                let n = l.weight.size()[0];
                let w = copies.part(l.weight, leaf_w, offset, n);
                let b = match (leaf_b, l.bias) {
                    (Some(leaf), Some(bs)) => Some(copies.part(bs, leaf, offset, n)),
                    _ => None,
                };
                copies.by_weight.insert(key(l.weight), (w, b));
                offset += n;
            }
        }
        copies
    }

    fn leaf(&mut self, shape: &[i64], device: tch::Device) -> usize {
        let t = Tensor::zeros(shape, (self.kind, device)).set_requires_grad(true);
        self.leaves.push(t);
        self.leaves.len() - 1
    }

    fn part(&mut self, master: &Tensor, leaf: usize, offset: i64, rows: i64) -> usize {
        self.views.push(self.leaves[leaf].narrow(0, offset, rows));
        self.parts.push(Part {
            master: master.shallow_clone(),
            leaf,
            offset,
            rows,
        });
        self.parts.len() - 1
    }

    /// The tensor of `part` for a forward: its leaf when it fills it, else its rows.
    fn tensor(&self, part: usize) -> Tensor {
        let p = &self.parts[part];
        let leaf = &self.leaves[p.leaf];
        match leaf.size()[0] == p.rows {
            true => leaf.shallow_clone(),
            false => leaf.narrow(0, p.offset, p.rows),
        }
    }

    /// The copies' dtype.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether the copies serve a forward in `kind` that starts now: they are live,
    /// autograd records, and no forward has used them since the last refresh or transfer.
    /// One forward a backward pass: a second would sum its gradient into the copies' in
    /// bf16, where casting sums the masters' in fp32 (the CPU's batches cut by length run
    /// several forwards a micro-batch; the packed path on CUDA runs one), so a second
    /// forward casts.
    pub fn take(&self, kind: Kind) -> bool {
        kind == self.kind
            && self.live.load(Ordering::Relaxed)
            && crate::ffi::autograd::grad_enabled()
            && !self.taken.swap(true, Ordering::Relaxed)
    }

    /// Whether a forward could take the copies now (live and not taken).
    #[cfg(test)]
    pub fn available(&self) -> bool {
        self.live.load(Ordering::Relaxed) && !self.taken.load(Ordering::Relaxed)
    }

    /// The copy of linear layer `l` (weight, bias), if it has one.
    pub fn linear(&self, l: &nn::Linear) -> Option<(Tensor, Option<Tensor>)> {
        self.of(&l.ws)
    }

    /// The copy of LayerNorm `ln` (weight, bias), if it has one.
    pub fn norm(&self, ln: &nn::LayerNorm) -> Option<(Tensor, Option<Tensor>)> {
        self.of(ln.ws.as_ref()?)
    }

    fn of(&self, weight: &Tensor) -> Option<(Tensor, Option<Tensor>)> {
        let &(w, b) = self.by_weight.get(&key(weight))?;
        Some((self.tensor(w), b.map(|b| self.tensor(b))))
    }

    /// The copy of `layers` multiplied as one (weights' rows end to end, as Q, K and V),
    /// if they are one group in this order.
    pub fn group(&self, layers: &[&nn::Linear]) -> Option<(Tensor, Option<Tensor>)> {
        let parts: Vec<(usize, Option<usize>)> = layers
            .iter()
            .map(|l| self.by_weight.get(&key(&l.ws)).copied())
            .collect::<Option<_>>()?;
        let (w0, b0) = *parts.first()?;
        let leaf = self.parts[w0].leaf;
        let mut offset = 0;
        for &(w, _) in &parts {
            let p = &self.parts[w];
            if p.leaf != leaf || p.offset != offset {
                return None;
            }
            offset += p.rows;
        }
        if self.leaves[leaf].size()[0] != offset {
            return None;
        }
        let bias = b0.map(|b| self.leaves[self.parts[b].leaf].shallow_clone());
        Some((self.leaves[leaf].shallow_clone(), bias))
    }

    /// Copy the masters' values into the copies (one multi-tensor copy) and make them
    /// live: forwards with autograd recording use them until [`ComputeCopies::retire`].
    pub fn refresh(&self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        // A step that failed between a backward pass and its transfer leaves gradients.
        crate::ffi::autograd::reset_grads(&self.leaves.iter().collect::<Vec<_>>())?;
        let views: Vec<&Tensor> = self.views.iter().collect();
        let masters: Vec<&Tensor> = self.parts.iter().map(|p| &p.master).collect();
        crate::ffi::optim::copy_all(&views, &masters)?;
        self.taken.store(false, Ordering::Relaxed);
        self.live.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Add the copies' gradients (widened) into the masters' gradients, or make them the
    /// masters' where there are none, and clear the copies' gradients. A master whose copy
    /// got no gradient keeps what it has.
    pub fn transfer(&self) -> Result<()> {
        let masters: Vec<&Tensor> = self.parts.iter().map(|p| &p.master).collect();
        let leaves: Vec<&Tensor> = self.parts.iter().map(|p| &self.leaves[p.leaf]).collect();
        let spans: Vec<(i64, i64)> = self.parts.iter().map(|p| (p.offset, p.rows)).collect();
        crate::ffi::optim::add_grads(&masters, &leaves, &spans)?;
        self.taken.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// The masters are about to change: forwards cast them again until the next refresh.
    pub fn retire(&self) {
        self.live.store(false, Ordering::Relaxed);
    }
}

/// Compute copies refreshed for one optimizer step, retired when dropped (so a step that
/// fails half-way leaves none live).
pub struct Refreshed<'a>(Vec<&'a ComputeCopies>);

impl<'a> Refreshed<'a> {
    /// Refresh `copies` ([`ComputeCopies::refresh`]) for a step.
    pub fn new(copies: Vec<&'a ComputeCopies>) -> Result<Self> {
        let refreshed = Refreshed(copies);
        for c in &refreshed.0 {
            c.refresh()?;
        }
        Ok(refreshed)
    }

    /// After a backward pass: [`ComputeCopies::transfer`] of each.
    pub fn transfer(&self) -> Result<()> {
        self.0.iter().try_for_each(|c| c.transfer())
    }
}

impl Drop for Refreshed<'_> {
    fn drop(&mut self) {
        for c in &self.0 {
            c.retire();
        }
    }
}

#[cfg(all(test, distill_ffi))]
#[path = "copies_tests.rs"]
mod tests;
