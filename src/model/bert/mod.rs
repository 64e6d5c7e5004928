//! BERT encoder on tch, laid out as Hugging Face's `BertModel` so that checkpoint
//! import is a name mapping: `embeddings.*`, `encoder.layer.N.*`, `pooler.dense.*`.
mod attention;
mod copies;
mod embeddings;
mod layer;

pub use copies::{Affine, ComputeCopies, Refreshed};

use crate::model::batching::Batch;
use crate::model::hf_config::BertConfig;
use attention::Attend;
use embeddings::BertEmbeddings;
use layer::BertLayer;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{nn, nn::Module, Kind, Tensor};

/// A linear layer computed in the dtype of its input (weights cast to it): fp32 master
/// weights run in bf16 when the activations are bf16, and a no-op cast otherwise.
pub(crate) fn linear(l: &nn::Linear, x: &Tensor) -> Tensor {
    linear_in(l, x, None, &AtomicBool::new(false))
}

/// [`linear`] with the layer's compute copy from `copies` (which the forward has taken,
/// see [`ComputeCopies::take`]) when they are in the input's dtype, through
/// [`linear_on_copies`] (`fused`: the model's switch).
fn linear_in(
    l: &nn::Linear,
    x: &Tensor,
    copies: Option<&ComputeCopies>,
    fused: &AtomicBool,
) -> Tensor {
    let kind = x.kind();
    if let Some((w, b)) = copies
        .filter(|c| c.kind() == kind)
        .and_then(|c| c.linear(l))
    {
        return linear_on_copies(x, &w, b.as_ref(), fused);
    }
    let bias = l.bs.as_ref().map(|b| b.to_kind(kind));
    x.linear(&l.ws.to_kind(kind), bias.as_ref())
}

/// `x.linear(w, b)` in training on compute copies: on CUDA while `fused` is on (the
/// model's [`Kernels::fused_add_norm`]) through `ffi::linear::train_linear`, whose bias
/// gradient is a kernel of ours (aten's products otherwise); elsewhere aten's `linear`.
/// Should the function fail, `fused` is turned off with one notice, and aten runs.
fn linear_on_copies(x: &Tensor, w: &Tensor, b: Option<&Tensor>, fused: &AtomicBool) -> Tensor {
    if let (Some(b), true) = (b, x.device().is_cuda() && fused.load(Ordering::Relaxed)) {
        match crate::ffi::linear::train_linear(x, w, b) {
            Ok(y) => return y,
            Err(e) => turn_off(fused, "linear layers for training", &e),
        }
    }
    x.linear(w, b)
}

/// A BERT LayerNorm (Hugging Face keys `LayerNorm.{weight,bias}`), with its epsilon.
#[derive(Debug)]
pub(crate) struct Norm {
    ln: nn::LayerNorm,
    eps: f64,
}

pub(crate) fn layer_norm(p: nn::Path, config: &BertConfig) -> Norm {
    let cfg = nn::LayerNormConfig {
        eps: config.layer_norm_eps,
        ..Default::default()
    };
    Norm {
        ln: nn::layer_norm(p, vec![config.hidden_size], cfg),
        eps: config.layer_norm_eps,
    }
}

/// The kernels a model runs where it has a choice; all on by default. Off, it runs what
/// transformers runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    /// CUDA batches packed, with variable-length flash attention; off, padded through
    /// `scaled_dot_product_attention`.
    pub packed_attention: bool,
    /// The fused add + LayerNorm kernel for inference on CUDA in bf16/fp16, and in training
    /// the LayerNorms on compute copies with their residual add in one kernel on CUDA
    /// (`ffi::layer_norm::train_add_layer_norm`; their weight gradients by a kernel of
    /// ours) and the linear layers on CUDA compute
    /// copies through `ffi::linear::train_linear` (their bias gradient by a kernel of
    /// ours); off, aten's add, layer_norm and linear.
    pub fused_add_norm: bool,
    /// In training with activations in another dtype than the weights, the linear layers'
    /// weights copied once per optimizer step ([`ComputeCopies`]); off, cast in every
    /// forward. The linear layers' values are the same either way (off, the LayerNorms
    /// run in fp32 too: see `low_precision_norms`).
    pub compute_copies: bool,
    /// With the compute copies, the encoder layers' LayerNorms run in the activations'
    /// dtype on copies of their weights too (aten takes their statistics in fp32 and
    /// rounds the output once, as the cast after an fp32 LayerNorm does; the weight and
    /// bias are rounded to the activations' dtype, and so are their gradients once a
    /// backward pass before they are added to the masters', as the linear layers' are); off,
    /// they run in fp32 on the masters, as under torch's autocast, with the activations
    /// cast up before and down after, forward and backward.
    pub low_precision_norms: bool,
}

impl Default for Kernels {
    fn default() -> Self {
        Kernels {
            packed_attention: true,
            fused_add_norm: true,
            compute_copies: true,
            low_precision_norms: true,
        }
    }
}

impl Norm {
    /// The LayerNorm's weight and bias, for compute copies.
    fn affine(&self) -> Option<Affine<'_>> {
        Affine::norm(&self.ln)
    }

    /// The LayerNorm as a group of compute copies of its own, when `norms`
    /// ([`Kernels::low_precision_norms`]).
    fn copy_group(&self, norms: bool) -> Option<Vec<Affine<'_>>> {
        self.affine().filter(|_| norms).map(|a| vec![a])
    }

    /// LayerNorm computed in the dtype of its weights (fp32 for training, for stability),
    /// returned in the dtype of its input.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let wk = self.ln.ws.as_ref().map_or(x.kind(), |w| w.kind());
        self.ln.forward(&x.to_kind(wk)).to_kind(x.kind())
    }

    /// `LayerNorm(x + residual)`, the post-LN residual of BERT. While `fused` is on (the
    /// model's [`Kernels::fused_add_norm`]), in inference on CUDA with bf16/fp16 weights it
    /// runs as one kernel (`ffi::layer_norm::add_layer_norm`: the rounding of aten's two
    /// kernels in one pass over memory). In training, with `copies` (the forward's compute
    /// copies) holding this LayerNorm's weights in the input's dtype, it runs in that dtype
    /// on them ([`Kernels::low_precision_norms`]) while `fused` is on: on CUDA the add and
    /// the LayerNorm in one kernel (`ffi::layer_norm::train_add_layer_norm`), elsewhere
    /// through `ffi::layer_norm::train_layer_norm`. Everywhere else (autograd
    /// recording without copies, shapes the inference kernel does not cover: a broadcast
    /// residual, a width that is not a multiple of 64) as `forward(x + residual)`. Should a
    /// kernel of ours fail, `fused` is turned off (for the model) with one notice, and aten
    /// runs.
    pub fn add_forward(
        &self,
        x: &Tensor,
        residual: &Tensor,
        fused: &AtomicBool,
        copies: Option<&ComputeCopies>,
    ) -> Tensor {
        if let Some(y) = self.fused(x, residual, fused) {
            return y;
        }
        let alike = x.kind() == residual.kind() && x.size() == residual.size();
        if alike && x.device().is_cuda() && fused.load(Ordering::Relaxed) {
            let on_copies = copies
                .filter(|c| c.kind() == x.kind())
                .and_then(|c| c.norm(&self.ln));
            if let Some((w, Some(b))) = on_copies {
                match crate::ffi::layer_norm::train_add_layer_norm(x, residual, &w, &b, self.eps) {
                    Ok(y) => return y,
                    Err(e) => turn_off(fused, "add + LayerNorm for training", &e),
                }
            }
        }
        let sum = x + residual;
        match copies
            .filter(|c| c.kind() == sum.kind())
            .and_then(|c| c.norm(&self.ln))
        {
            Some((w, b)) => {
                if let (Some(b), true) = (&b, fused.load(Ordering::Relaxed)) {
                    match crate::ffi::layer_norm::train_layer_norm(&sum, &w, b, self.eps) {
                        Ok(y) => return y,
                        Err(e) => turn_off(fused, "LayerNorm for training", &e),
                    }
                }
                sum.layer_norm(
                    &self.ln.normalized_shape,
                    Some(&w),
                    b.as_ref(),
                    self.eps,
                    true,
                )
            }
            None => self.forward(&sum),
        }
    }

    fn fused(&self, x: &Tensor, residual: &Tensor, on: &AtomicBool) -> Option<Tensor> {
        let (w, b) = (self.ln.ws.as_ref()?, self.ln.bs.as_ref()?);
        let kind = x.kind();
        let width = x.size().last().copied().unwrap_or(0);
        // What the kernel covers; anything else (a broadcast residual, as the padded
        // path's position embeddings, another width) takes aten for this call only.
        let eligible = on.load(Ordering::Relaxed)
            && x.device().is_cuda()
            && matches!(kind, Kind::BFloat16 | Kind::Half)
            && width > 0
            && width % 64 == 0
            && width <= 4096
            && residual.size() == x.size()
            && [residual, w, b]
                .iter()
                .all(|t| t.kind() == kind && t.device() == x.device())
            && w.numel() == width as usize
            && b.numel() == width as usize
            && !(crate::ffi::autograd::grad_enabled()
                && [x, residual, w, b].iter().any(|t| t.requires_grad()));
        if !eligible {
            return None;
        }
        match crate::ffi::layer_norm::add_layer_norm(x, residual, w, b, self.eps) {
            Ok(y) => Some(y),
            Err(e) => {
                turn_off(on, "fused add + LayerNorm", &e);
                None
            }
        }
    }
}

/// A kernel of ours failed: the model's LayerNorm kernels off (`on`), with one notice.
fn turn_off(on: &AtomicBool, what: &str, e: &crate::error::Error) {
    if on.swap(false, Ordering::Relaxed) {
        if let Ok(mut n) = NOTICES.lock() {
            n.push(format!("{what} turned off, aten runs instead: {e}"));
        }
    }
}

/// Kernel fallbacks decided during a forward pass, for the caller to report (library code
/// does not print): see [`take_notices`].
static NOTICES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The kernel fallbacks noticed since the last call (each is reported once).
pub fn take_notices() -> Vec<String> {
    NOTICES
        .lock()
        .map(|mut n| std::mem::take(&mut *n))
        .unwrap_or_default()
}

/// Whether variable-length flash attention runs on this device (the shim is built in and
/// the GPU has the kernels: Ampere or newer), probed once with a tiny call.
fn varlen_works(device: tch::Device) -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        let _guard = tch::no_grad_guard();
        let x = Tensor::zeros([2, 1, 8], (Kind::BFloat16, device));
        let cu = Tensor::from_slice(&[0i32, 2]).to_device(device);
        crate::ffi::attention::varlen_attention(&x, &x, &x, &cu, 2, 0.0).is_ok()
    })
}

#[derive(Debug)]
pub struct BertModel {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    pooler: nn::Linear,
    /// Dtype of the activations (the weights' dtype unless set otherwise): bf16 with fp32
    /// weights is mixed-precision training, as autocast would do it.
    compute: Kind,
    head_dim: i64,
    /// The kernels chosen for this model.
    kernels: Kernels,
    /// Whether the fused add + LayerNorm kernel runs: `kernels.fused_add_norm`, until the
    /// kernel first fails (then off, see [`Norm::add_forward`]).
    fused_add_norm: AtomicBool,
    /// The compute copies (linear layers, and the layers' LayerNorms), made when training
    /// first asks for them.
    copies: std::sync::OnceLock<Option<ComputeCopies>>,
}

impl BertModel {
    /// Variables are created under `p` with the Hugging Face names.
    pub fn new(p: nn::Path, config: &BertConfig) -> Self {
        let layers = (0..config.num_hidden_layers)
            .map(|i| BertLayer::new(&p / "encoder" / "layer" / i, config))
            .collect();
        let h = config.hidden_size;
        BertModel {
            embeddings: BertEmbeddings::new(&p / "embeddings", config),
            layers,
            pooler: nn::linear(&p / "pooler" / "dense", h, h, Default::default()),
            compute: Kind::Float,
            head_dim: config.head_dim(),
            kernels: Kernels::default(),
            fused_add_norm: AtomicBool::new(Kernels::default().fused_add_norm),
            copies: std::sync::OnceLock::new(),
        }
    }

    /// The compute copies for training ([`Self::copy_groups`]), made on the first call: on
    /// CUDA, when [`Kernels::compute_copies`] is on, the activations' dtype is not the
    /// weights' and the C++ side is built in; None otherwise. (The CPU's training batches
    /// are cut by length into several forwards, which cast; the unit tests make copies on
    /// the CPU too.)
    pub fn compute_copies(&self) -> Option<&ComputeCopies> {
        self.copies
            .get_or_init(|| {
                let wanted = self.kernels.compute_copies
                    && (self.pooler.ws.device().is_cuda() || cfg!(test))
                    && crate::ffi::available()
                    && self.compute != self.pooler.ws.kind();
                wanted.then(|| ComputeCopies::new(&self.copy_groups(), self.compute))
            })
            .as_ref()
    }

    /// The layers in the groups their copies are made in: Q, K and V together (the packed
    /// path multiplies them as one), every other linear layer of the encoder alone, and
    /// with [`Kernels::low_precision_norms`] each encoder layer's LayerNorms alone. (The
    /// pooler casts: the cross-encoder pools in fp32; the embeddings' LayerNorm takes the
    /// fp32 sum of the embeddings.)
    fn copy_groups(&self) -> Vec<Vec<Affine<'_>>> {
        let norms = self.kernels.low_precision_norms;
        self.layers
            .iter()
            .flat_map(|l| l.copy_groups(norms))
            .collect()
    }

    /// The compute copies, when this forward takes them (see [`ComputeCopies::take`]).
    fn take_copies(&self) -> Option<&ComputeCopies> {
        self.copies.get()?.as_ref().filter(|c| c.take(self.compute))
    }

    /// Choose the kernels this model runs (all on by default); setting them turns our
    /// LayerNorm kernels back on after a failure, if chosen.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
        *self.fused_add_norm.get_mut() = kernels.fused_add_norm;
        self.copies = std::sync::OnceLock::new();
    }

    /// Run the encoder with activations in `kind` (e.g. bf16 over fp32 master weights).
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute = kind;
        self.copies = std::sync::OnceLock::new();
    }

    pub fn compute_kind(&self) -> Kind {
        self.compute
    }

    /// Whether batches run packed (no padding, variable-length flash attention): on
    /// CUDA in bf16/fp16 with the C++ side built in, unless turned off with
    /// [`Kernels::packed_attention`].
    fn packs(&self, batch: &Batch) -> bool {
        batch.packing.is_some() && self.packs_on(batch.input_ids.device())
    }

    /// Whether batches on `device` run packed (see [`Self::forward_t`]).
    pub fn packs_on(&self, device: tch::Device) -> bool {
        device.is_cuda()
            && matches!(self.compute, Kind::BFloat16 | Kind::Half)
            && self.head_dim % 8 == 0
            && self.head_dim <= 256
            && self.kernels.packed_attention
            && varlen_works(device)
    }

    /// Token states `[batch, seq, hidden]` in the compute dtype; padding positions are
    /// masked out of attention (padded path) or never computed (packed path, where they
    /// come out as zeros).
    pub fn forward_t(&self, batch: &Batch, train: bool) -> Tensor {
        self.token_states(batch, train).padded()
    }

    /// Token states as the path computed them: packed batches stay packed, so that pooling
    /// reads the real tokens only (a training step's 1,088 rows of up to 512 tokens hold
    /// about 200k real tokens in 557k padded slots).
    pub fn token_states(&self, batch: &Batch, train: bool) -> TokenStates {
        if let Some(p) = batch.packing.as_ref().filter(|_| self.packs(batch)) {
            let gather = |t: &Tensor| t.view([-1]).index_select(0, &p.index);
            let mut hidden = self
                .embeddings
                .forward_t(
                    &gather(&batch.input_ids),
                    &gather(&batch.token_type_ids),
                    Some(&p.positions),
                    &self.fused_add_norm,
                    train,
                )
                .to_kind(self.compute);
            let copies = self.take_copies();
            for layer in &self.layers {
                hidden = layer.forward_t(
                    &hidden,
                    &Attend::Packed(p),
                    &self.fused_add_norm,
                    copies,
                    train,
                );
            }
            let (b, l) = batch.input_ids.size2().unwrap_or((0, 0));
            // The filler rows are dropped; the rows' offsets and lengths from the packing's.
            let cu = p.cu_seqlens.to_kind(Kind::Int64);
            let starts = cu.narrow(0, 0, b);
            return TokenStates::Packed {
                tokens: hidden.narrow(0, 0, p.tokens),
                lengths: cu.narrow(0, 1, b) - &starts,
                starts,
                index: p.index.narrow(0, 0, p.tokens),
                shape: (b, l),
            };
        }
        let mask = (!batch.unpadded).then(|| batch.attention_mask.gt(0).unsqueeze(1).unsqueeze(1));
        let mut hidden = self
            .embeddings
            .forward_t(
                &batch.input_ids,
                &batch.token_type_ids,
                None,
                &self.fused_add_norm,
                train,
            )
            .to_kind(self.compute);
        let copies = self.take_copies();
        for layer in &self.layers {
            hidden = layer.forward_t(
                &hidden,
                &Attend::Padded(mask.as_ref()),
                &self.fused_add_norm,
                copies,
                train,
            );
        }
        TokenStates::Padded(hidden)
    }

    /// BERT pooler: tanh(dense(first token)). `first`: each row's first token state
    /// `[batch, hidden]` ([`TokenStates::first`]).
    pub fn pool(&self, first: &Tensor) -> Tensor {
        linear(&self.pooler, first).tanh()
    }
}

/// A batch's token states in the compute dtype, as [`BertModel::token_states`] computed them.
pub enum TokenStates {
    /// `[batch, seq, hidden]`, padding positions masked out of attention.
    Padded(Tensor),
    /// The rows' real tokens end to end, `[tokens, hidden]`, in row order.
    Packed {
        tokens: Tensor,
        /// `[batch]` int64: each row's first token in `tokens`.
        starts: Tensor,
        /// `[batch]` int64: each row's token count (at least 1: every text has [CLS]).
        lengths: Tensor,
        /// `[tokens]` int64: each token's flat place (`row * seq + column`) when padded.
        index: Tensor,
        /// (batch, seq) of the padded batch.
        shape: (i64, i64),
    },
}

impl TokenStates {
    /// `[batch, seq, hidden]`, zeros at the padding positions of a packed batch.
    pub fn padded(self) -> Tensor {
        match self {
            TokenStates::Padded(hidden) => hidden,
            TokenStates::Packed {
                tokens,
                index,
                shape: (b, l),
                ..
            } => {
                let h = tokens.size()[1];
                Tensor::zeros([b * l, h], (tokens.kind(), tokens.device()))
                    .index_copy(0, &index, &tokens)
                    .view([b, l, h])
            }
        }
    }

    /// Each row's first token state, `[batch, hidden]`.
    pub fn first(&self) -> Tensor {
        match self {
            TokenStates::Padded(hidden) => hidden.select(1, 0),
            TokenStates::Packed { tokens, starts, .. } => tokens.index_select(0, starts),
        }
    }
}
