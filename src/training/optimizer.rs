//! AdamW owned by us (tch's optimisers cannot save their state): decoupled weight decay
//! as `torch.optim.AdamW`, parameter groups without decay for biases and LayerNorm
//! weights, global-norm gradient clipping, and state that checkpoints exactly.
use crate::error::{Result, TorchContext};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Whether a parameter gets weight decay: not biases, not LayerNorm weights (the usual
/// transformers grouping).
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm"))
}

/// One trainable tensor with its moment estimates.
pub struct ParamState {
    pub name: String,
    pub param: Tensor,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    pub decay: bool,
}

pub struct AdamW {
    pub config: AdamWConfig,
    pub params: Vec<ParamState>,
    /// Updates made so far.
    pub step: u64,
    /// On CUDA, the step as a device scalar for the fused kernel (not saved: it is
    /// `step`, rewritten before every update).
    device_step: Option<Tensor>,
    /// The buffer the gradients are views of, once [`AdamW::flatten_grads`] has made them,
    /// and how many gradients it holds.
    flat: Option<(Tensor, usize)>,
}

impl AdamW {
    /// Over the named trainable variables (sorted by name for a stable order).
    pub fn new(vars: BTreeMap<String, Tensor>, config: AdamWConfig) -> Self {
        let params = vars
            .into_iter()
            .map(|(name, param)| {
                let z = || Tensor::zeros_like(&param).to_kind(Kind::Float);
                ParamState {
                    decay: decays(&name),
                    exp_avg: z(),
                    exp_avg_sq: z(),
                    name,
                    param,
                }
            })
            .collect();
        AdamW {
            config,
            params,
            step: 0,
            device_step: None,
            flat: None,
        }
    }

    /// On CUDA (when the libtorch shim is built in), updates, clipping and zeroing run as
    /// multi-tensor kernels, as `torch.optim.AdamW(fused=True)` does; on the CPU they run
    /// per tensor (the path the parity tests hold to torch.optim.AdamW within 1e-6).
    pub fn fused(&self) -> bool {
        crate::ffi::available()
            && self
                .params
                .first()
                .is_some_and(|p| p.param.device().is_cuda())
    }

    /// The parameters' gradients (those that exist), sharing their storage.
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.param.grad())
            .filter(|g| g.defined())
            .collect()
    }

    /// Make the gradients that exist views of one buffer, in parameter order, with their
    /// values, so that a data-parallel sum of them is one collective on that memory, in
    /// place, with nothing copied in or out ([`crate::distributed::World::sum`]); backward
    /// passes add into the views in place; zeroing, and on CUDA clipping, then take the
    /// one buffer too. A parameter without a gradient keeps none (the update skips it, as
    /// before). Nothing changes when the gradients differ in dtype or device.
    pub fn flatten_grads(&mut self) -> Result<()> {
        let grads: Vec<(&Tensor, Tensor)> = self
            .params
            .iter()
            .map(|p| (&p.param, p.param.grad()))
            .filter(|(_, g)| g.defined())
            .collect();
        let Some((_, first)) = grads.first() else {
            return Ok(());
        };
        let (kind, device) = (first.kind(), first.device());
        if grads
            .iter()
            .any(|(_, g)| g.kind() != kind || g.device() != device)
        {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let total: i64 = grads.iter().map(|(_, g)| g.numel() as i64).sum();
        let flat = Tensor::zeros([total], (kind, device));
        let mut at = 0;
        for (param, old) in &grads {
            let n = old.numel() as i64;
            let mut view = flat.narrow(0, at, n).view(old.size().as_slice());
            view.copy_(old);
            crate::ffi::autograd::set_grad(param, &view)?;
            at += n;
        }
        self.flat = Some((flat, grads.len()));
        Ok(())
    }

    /// The buffer of [`AdamW::flatten_grads`] when it holds every gradient there is (a
    /// parameter whose first gradient came later has one of its own, and the gradients
    /// are then zeroed and clipped one by one).
    fn covering(&self, grads: &[Tensor]) -> Option<&Tensor> {
        let (flat, n) = self.flat.as_ref()?;
        (*n == grads.len()).then_some(flat)
    }

    pub fn zero_grad(&mut self) {
        let grads = self.grads();
        if let Some(flat) = self.covering(&grads) {
            let _ = flat.shallow_clone().zero_();
            return;
        }
        if self.fused() {
            let refs: Vec<&Tensor> = grads.iter().collect();
            if crate::ffi::optim::zero_grads(&refs).is_ok() {
                return;
            }
        }
        for mut g in grads {
            let _ = g.zero_();
        }
    }

    /// Scale gradients so that their global L2 norm is at most `max_norm` (as
    /// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping as a 0-dim
    /// fp32 tensor (on CUDA it stays on the device, so nothing waits for the GPU).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        let _guard = tch::no_grad_guard();
        let grads = self.grads();
        if grads.is_empty() {
            return Tensor::from(0f32);
        }
        if let Some(flat) = self.covering(&grads).filter(|_| self.fused()) {
            return clip_flat(flat, max_norm);
        }
        if self.fused() {
            let refs: Vec<&Tensor> = grads.iter().collect();
            if let Ok(norm) = crate::ffi::optim::clip_grad_norm(&refs, max_norm) {
                return norm;
            }
        }
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.to_kind(Kind::Float).norm().unsqueeze(0))
            .collect();
        let total = Tensor::cat(&norms, 0).norm().double_value(&[]);
        if max_norm > 0.0 {
            let coef = max_norm / (total + 1e-6);
            if coef < 1.0 {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(coef);
                }
            }
        }
        Tensor::from(total as f32)
    }

    /// One AdamW update at learning rate `lr`, exactly as `torch.optim.AdamW`.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        if self.fused() {
            return self.fused_step(lr);
        }
        for p in &mut self.params {
            let grad = p.param.grad();
            if !grad.defined() {
                continue;
            }
            let g = grad.to_kind(Kind::Float);
            if p.decay && c.weight_decay != 0.0 {
                let _ = p.param.g_mul_scalar_(1.0 - lr * c.weight_decay);
            }
            let _ = p.exp_avg.lerp_(&g, 1.0 - c.beta1);
            let _ = p.exp_avg_sq.g_mul_scalar_(c.beta2);
            let _ = p.exp_avg_sq.g_add_(&(&g * &g * (1.0 - c.beta2)));
            let denom = p.exp_avg_sq.sqrt() / bias2.sqrt() + c.eps;
            let update = (&p.exp_avg / denom) * (lr / bias1);
            let _ = p
                .param
                .f_sub_(&update.to_kind(p.param.kind()))
                .ctx(|| format!("updating `{}`", p.name))?;
        }
        Ok(())
    }

    /// The update of `step` with the fused kernel, one launch per weight-decay group.
    fn fused_step(&mut self, lr: f64) -> Result<()> {
        let c = self.config;
        let device = self.params[0].param.device();
        let step = self
            .device_step
            .get_or_insert_with(|| Tensor::zeros([], (Kind::Float, device)));
        let _ = step.fill_(self.step as f64);
        let step = step.shallow_clone();
        for decay in [true, false] {
            let group: Vec<(&ParamState, Tensor)> = self
                .params
                .iter()
                .filter(|p| p.decay == decay)
                .map(|p| (p, p.param.grad()))
                .filter(|(_, g)| g.defined())
                .collect();
            if group.is_empty() {
                continue;
            }
            let params: Vec<&Tensor> = group.iter().map(|(p, _)| &p.param).collect();
            let grads: Vec<&Tensor> = group.iter().map(|(_, g)| g).collect();
            let m: Vec<&Tensor> = group.iter().map(|(p, _)| &p.exp_avg).collect();
            let v: Vec<&Tensor> = group.iter().map(|(p, _)| &p.exp_avg_sq).collect();
            let steps = vec![&step; group.len()];
            let wd = if decay { c.weight_decay } else { 0.0 };
            crate::ffi::optim::fused_adamw(
                &params,
                &grads,
                &m,
                &v,
                &steps,
                lr,
                (c.beta1, c.beta2, wd, c.eps),
            )?;
        }
        Ok(())
    }
}

/// [`AdamW::clip_grad_norm`] of gradients that are views of `flat` (fp32): the L2 norm of
/// the one buffer and, when `max_norm` > 0, the buffer scaled by
/// min(1, max_norm / (norm + 1e-6)) as clip_grad_norm_ computes it, on the device: one
/// reduction, a few scalar operations and one product, where the multi-tensor kernels took
/// every gradient from a list the host builds. The norm's sum runs in another order than
/// the per-tensor norms' (the same value to fp32's rounding).
fn clip_flat(flat: &Tensor, max_norm: f64) -> Tensor {
    let _guard = tch::no_grad_guard();
    let norm = flat.to_kind(Kind::Float).norm();
    if max_norm > 0.0 {
        let coef = ((&norm + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
        let _ = flat.shallow_clone().g_mul_(&coef);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_excludes_bias_and_layer_norm() {
        assert!(decays("encoder.layer.0.attention.self.query.weight"));
        assert!(!decays("encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("embeddings.LayerNorm.weight"));
    }

    /// AdamW with its defaults over parameters `a` and `b`.
    fn over_a_and_b(a: &Tensor, b: &Tensor) -> AdamW {
        let vars = [
            ("a".into(), a.shallow_clone()),
            ("b".into(), b.shallow_clone()),
        ];
        AdamW::new(vars.into(), AdamWConfig::default())
    }

    /// Flattened, the gradients are views of one buffer that backward passes add into in
    /// place (what lets a data-parallel sum run on that buffer): the first pass's values
    /// are kept, the second's added, in parameter order, and zeroing clears it.
    #[test]
    #[cfg(distill_ffi)]
    fn flattened_gradients_accumulate_in_one_buffer() {
        let a = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[3.0f32, 4.0, 5.0])
            .view([3, 1])
            .set_requires_grad(true);
        let mut opt = over_a_and_b(&a, &b);
        let loss = || (&a * 2.0).sum(Kind::Float) + (&b * &b).sum(Kind::Float);
        // Before any backward pass there is no gradient to flatten.
        opt.flatten_grads().unwrap();
        assert!(opt.grads().is_empty());
        loss().backward();
        opt.flatten_grads().unwrap();
        loss().backward();
        let grads = opt.grads();
        assert_eq!(grads.len(), 2);
        // One storage: b's gradient starts where a's ends.
        let (pa, pb) = (grads[0].data_ptr() as usize, grads[1].data_ptr() as usize);
        assert_eq!(pb - pa, 2 * 4);
        let flat = grads[0].as_strided([5], [1], None);
        assert_eq!(
            Vec::<f32>::try_from(&flat).unwrap(),
            vec![4.0, 4.0, 12.0, 16.0, 20.0]
        );
        opt.zero_grad();
        assert_eq!(flat.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    /// A parameter whose first gradient comes after the flattening has a gradient of its
    /// own: zeroing then zeroes it too (one by one), not the buffer alone.
    #[test]
    #[cfg(distill_ffi)]
    fn a_gradient_outside_the_flattened_buffer_is_still_zeroed() {
        let a = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[3.0f32]).set_requires_grad(true);
        let mut opt = over_a_and_b(&a, &b);
        (&a * 2.0).sum(Kind::Float).backward();
        opt.flatten_grads().unwrap();
        (&b * &b).sum(Kind::Float).backward();
        assert_eq!(opt.grads().len(), 2);
        opt.zero_grad();
        for g in opt.grads() {
            assert_eq!(g.abs().sum(Kind::Float).double_value(&[]), 0.0);
        }
    }

    /// Clipping one buffer gives the per-tensor path's norm and scaled gradients (the
    /// multi-tensor kernels' on these CPU tensors) within fp32's rounding, clipped or not.
    #[test]
    fn clipping_the_flat_buffer_matches_the_per_tensor_norms() {
        let values: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin()).collect();
        for max_norm in [0.0, 5.0, 100.0] {
            let flat = Tensor::from_slice(&values);
            let parts = [flat.narrow(0, 0, 384), flat.narrow(0, 384, 616)].map(|t| t.copy());
            let expected = crate::ffi::optim::clip_grad_norm(&[&parts[0], &parts[1]], max_norm)
                .unwrap()
                .double_value(&[]);
            let norm = clip_flat(&flat, max_norm).double_value(&[]);
            assert!(
                (norm - expected).abs() <= 1e-6 * expected,
                "{norm} vs {expected}"
            );
            let d = (&flat - Tensor::cat(&parts, 0))
                .abs()
                .max()
                .double_value(&[]);
            assert!(d <= 1e-7, "max_norm {max_norm}: {d}");
        }
    }

    /// On CUDA (the fused path), training with the gradients flattened after the first
    /// step (zeroed and clipped as one buffer from then on) ends where the per-tensor
    /// zeroing and clipping end, within fp32's rounding of the norm, with the clip active.
    /// Runs where a GPU is, passes trivially elsewhere.
    #[test]
    fn flattened_gradients_train_as_per_tensor_ones_on_cuda() {
        if !tch::Cuda::is_available() || !crate::ffi::available() {
            return;
        }
        let device = tch::Device::Cuda(0);
        let run = |flatten: bool| {
            let opts = (Kind::Float, device);
            let a = (Tensor::arange(384, opts) * 0.37)
                .sin()
                .set_requires_grad(true);
            let b = (Tensor::arange(1536, opts) * 0.11)
                .cos()
                .view([4, 384])
                .set_requires_grad(true);
            let mut opt = over_a_and_b(&a, &b);
            assert!(opt.fused());
            for step in 0..4 {
                opt.zero_grad();
                let loss =
                    (&a * 3.0).square().sum(Kind::Float) + (&b - 0.5).square().sum(Kind::Float);
                loss.backward();
                let norm = opt.clip_grad_norm(1.0).double_value(&[]);
                assert!(norm > 1.0, "the clip is active ({norm})");
                opt.step(1e-2).unwrap();
                if flatten && step == 0 {
                    opt.flatten_grads().unwrap();
                    assert!(opt.flat.as_ref().is_some_and(|(_, n)| *n == 2));
                }
            }
            Tensor::cat(&[a.detach(), b.detach().view([-1])], 0)
        };
        let (flat, apart) = (run(true), run(false));
        let d = (&flat - &apart).abs().max().double_value(&[]);
        assert!(d <= 1e-6, "{d}");
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let p = Tensor::from_slice(&[1.0f32, 1.0]).set_requires_grad(true);
        (&p * Tensor::from_slice(&[3.0f32, 4.0]))
            .sum(Kind::Float)
            .backward();
        let mut opt = AdamW::new(
            [("w".to_string(), p.shallow_clone())].into(),
            AdamWConfig::default(),
        );
        let norm = opt.clip_grad_norm(1.0).double_value(&[]);
        assert!((norm - 5.0).abs() < 1e-6);
        let g = Vec::<f32>::try_from(p.grad()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5);
    }
}
