//! The multi-tensor ("foreach" / fused) optimizer kernels (`optim.cpp`) that
//! `torch.optim.AdamW(fused=True)` and `clip_grad_norm_(foreach=True)` use: one launch for
//! all parameters instead of one per parameter and operation.
use crate::error::{Error, Result};
use tch::Tensor;

#[cfg(distill_ffi)]
mod sys {
    use super::super::TensorHandle;
    use std::os::raw::c_char;
    extern "C" {
        pub fn distill_fused_adamw(
            params: *const *const TensorHandle,
            grads: *const *const TensorHandle,
            exp_avgs: *const *const TensorHandle,
            exp_avg_sqs: *const *const TensorHandle,
            steps: *const *const TensorHandle,
            n: usize,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
        pub fn distill_clip_grad_norm(
            grads: *const *const TensorHandle,
            n: usize,
            max_norm: f64,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut TensorHandle;
        pub fn distill_zero_grads(
            grads: *const *const TensorHandle,
            n: usize,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
        pub fn distill_copy_all(
            dst: *const *const TensorHandle,
            src: *const *const TensorHandle,
            n: usize,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
        pub fn distill_add_grads(
            masters: *const *const TensorHandle,
            leaves: *const *const TensorHandle,
            offsets: *const i64,
            rows: *const i64,
            n: usize,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
        pub fn distill_add_grads_fallbacks() -> i64;
    }
}

/// An error unless every list length in `lengths` is the same (`what`: the operation).
fn same_lengths(what: &str, lengths: &[usize]) -> Result<()> {
    match lengths.windows(2).all(|w| w[0] == w[1]) {
        true => Ok(()),
        false => Err(Error::torch(
            what,
            tch::TchError::Shape("lists of different lengths".into()),
        )),
    }
}

/// One fused AdamW update of `params` (all on one device, fp32), as
/// `torch.optim.AdamW(fused=True)`; `steps` hold the step number after this update.
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    steps: &[&Tensor],
    lr: f64,
    (beta1, beta2, weight_decay, eps): (f64, f64, f64, f64),
) -> Result<()> {
    let n = params.len();
    let lengths = [
        n,
        grads.len(),
        exp_avgs.len(),
        exp_avg_sqs.len(),
        steps.len(),
    ];
    same_lengths("fused AdamW", &lengths)?;
    #[cfg(distill_ffi)]
    {
        use super::handles;
        let (p, g, m, v, s) = (
            handles(params),
            handles(grads),
            handles(exp_avgs),
            handles(exp_avg_sqs),
            handles(steps),
        );
        super::status("fused AdamW", |err, len| {
            // SAFETY: the handles point to live tensors for the duration of the call; the
            // function catches C++ exceptions.
            unsafe {
                sys::distill_fused_adamw(
                    p.as_ptr(),
                    g.as_ptr(),
                    m.as_ptr(),
                    v.as_ptr(),
                    s.as_ptr(),
                    n,
                    lr,
                    beta1,
                    beta2,
                    weight_decay,
                    eps,
                    err,
                    len,
                )
            }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = (lr, beta1, beta2, weight_decay, eps);
        Err(super::unavailable("fused AdamW"))
    }
}

/// Global L2 norm of `grads` (fp32, a 0-dim tensor on their device) and, with
/// `max_norm` > 0, the gradients scaled in place by `min(1, max_norm / (norm + 1e-6))`,
/// with the multi-tensor kernels and without waiting for the device.
pub fn clip_grad_norm(grads: &[&Tensor], max_norm: f64) -> Result<Tensor> {
    #[cfg(distill_ffi)]
    {
        let g = super::handles(grads);
        super::owned_tensor("gradient clipping", |err, len| {
            // SAFETY: as in fused_adamw.
            unsafe { sys::distill_clip_grad_norm(g.as_ptr(), g.len(), max_norm, err, len) }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = (grads, max_norm);
        Err(super::unavailable("gradient clipping"))
    }
}

/// Zero `grads` in place with one multi-tensor launch.
pub fn zero_grads(grads: &[&Tensor]) -> Result<()> {
    #[cfg(distill_ffi)]
    {
        let g = super::handles(grads);
        super::status("zeroing gradients", |err, len| {
            // SAFETY: as in fused_adamw.
            unsafe { sys::distill_zero_grads(g.as_ptr(), g.len(), err, len) }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = grads;
        Err(super::unavailable("zeroing gradients"))
    }
}

/// Copy `src[i]` into `dst[i]` (same shapes, any dtypes) with one multi-tensor copy.
pub fn copy_all(dst: &[&Tensor], src: &[&Tensor]) -> Result<()> {
    same_lengths("copying tensors", &[dst.len(), src.len()])?;
    #[cfg(distill_ffi)]
    {
        let (d, s) = (super::handles(dst), super::handles(src));
        super::status("copying tensors", |err, len| {
            // SAFETY: as in fused_adamw.
            unsafe { sys::distill_copy_all(d.as_ptr(), s.as_ptr(), d.len(), err, len) }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        Err(super::unavailable("copying tensors"))
    }
}

/// For each i, rows `spans[i]` (offset, count) of `leaves[i]`'s gradient, when it has
/// one, added into `masters[i]`'s gradient (in the master's dtype), or copied to be it
/// where the master has none; then the leaves' gradients cleared. On CUDA the adds of
/// bf16 or fp16 gradients into fp32 ones run as one kernel (up to 64 parts a launch), with
/// aten's sums; elsewhere, or should the kernel fail, aten adds each part.
pub fn add_grads(masters: &[&Tensor], leaves: &[&Tensor], spans: &[(i64, i64)]) -> Result<()> {
    same_lengths(
        "adding gradients",
        &[masters.len(), leaves.len(), spans.len()],
    )?;
    #[cfg(distill_ffi)]
    {
        let (m, l) = (super::handles(masters), super::handles(leaves));
        let offsets: Vec<i64> = spans.iter().map(|s| s.0).collect();
        let rows: Vec<i64> = spans.iter().map(|s| s.1).collect();
        super::status("adding gradients", |err, len| {
            // SAFETY: as in fused_adamw; `offsets` and `rows` hold `m.len()` values.
            unsafe {
                sys::distill_add_grads(
                    m.as_ptr(),
                    l.as_ptr(),
                    offsets.as_ptr(),
                    rows.as_ptr(),
                    m.len(),
                    err,
                    len,
                )
            }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        Err(super::unavailable("adding gradients"))
    }
}

/// How many times the kernel of [`add_grads`] failed in this process (its first failure
/// turns it off, and aten's adds serve from then on); 0 without the C++ side.
pub fn add_grads_fallbacks() -> i64 {
    #[cfg(distill_ffi)]
    {
        // SAFETY: reads an atomic counter.
        unsafe { sys::distill_add_grads_fallbacks() }
    }
    #[cfg(not(distill_ffi))]
    {
        0
    }
}

#[cfg(all(test, distill_ffi))]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn foreach_clip_matches_the_per_tensor_norm() {
        let a = Tensor::from_slice(&[3.0f32, 0.0]);
        let b = Tensor::from_slice(&[0.0f32, 4.0]);
        let norm = clip_grad_norm(&[&a, &b], 1.0).unwrap().double_value(&[]);
        assert!((norm - 5.0).abs() < 1e-6);
        let a = Vec::<f32>::try_from(&a).unwrap();
        assert!((a[0] - 0.6).abs() < 1e-5);
        zero_grads(&[&b]).unwrap();
        assert_eq!(b.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn fused_adamw_matches_our_per_tensor_update() {
        // Same start, same gradient, two steps: the fused kernel (on the CPU here) and
        // the per-tensor update of train::optimizer agree.
        use crate::training::optimizer::{AdamW, AdamWConfig};
        let start = [0.5f32, -1.0, 2.0];
        let grad = [0.1f32, -0.3, 0.7];
        let p = Tensor::from_slice(&start).set_requires_grad(true);
        let mut opt = AdamW::new(
            [("w".to_string(), p.shallow_clone())].into(),
            AdamWConfig::default(),
        );
        let q = Tensor::from_slice(&start);
        let (m, v) = (q.zeros_like(), q.zeros_like());
        for step in 1..=2 {
            (&p * Tensor::from_slice(&grad)).sum(Kind::Float).backward();
            opt.step(1e-2).unwrap();
            opt.zero_grad();
            let g = Tensor::from_slice(&grad);
            let s = Tensor::from(step as f32);
            fused_adamw(
                &[&q],
                &[&g],
                &[&m],
                &[&v],
                &[&s],
                1e-2,
                (0.9, 0.999, 0.01, 1e-8),
            )
            .unwrap();
        }
        let (a, b) = (
            Vec::<f32>::try_from(&p.detach()).unwrap(),
            Vec::<f32>::try_from(&q).unwrap(),
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    /// `add_grads` against aten's adds, on `device`: 100 parts (two launches of the
    /// kernel on CUDA) of three shapes, some the rows of a leaf shared by three parts (as Q,
    /// K and V), one leaf without a gradient and one master without one. The masters'
    /// gradients equal `master + widened part` to the bit, and the leaves' are cleared.
    fn add_grads_against_aten(device: Device) {
        let opts = (Kind::Float, device);
        let wave = |n: i64, f: f64| (Tensor::arange(n, opts) * f).sin();
        let shapes: [&[i64]; 3] = [&[384], &[12, 384], &[1536, 384]];
        let (mut masters, mut leaves, mut spans, mut expected) = (vec![], vec![], vec![], vec![]);
        for i in 0..100i64 {
            let shape = shapes[(i % 3) as usize];
            let numel: i64 = shape.iter().product();
            let master = Tensor::zeros(shape, opts).set_requires_grad(true);
            let shared = i % 3 == 1;
            let rows = shape[0] * if shared { 3 } else { 1 };
            let mut leaf_shape = shape.to_vec();
            leaf_shape[0] = rows;
            let leaf = Tensor::zeros(leaf_shape.as_slice(), (Kind::BFloat16, device))
                .set_requires_grad(true);
            let offset = if shared { shape[0] } else { 0 };
            let g = wave(numel * rows / shape[0], 0.01 * (i + 1) as f64).to_kind(Kind::BFloat16);
            let has_leaf_grad = i != 7;
            if has_leaf_grad {
                crate::ffi::autograd::set_grad(&leaf, &g.view(leaf_shape.as_slice())).unwrap();
            }
            let part = g.narrow(0, offset * numel / shape[0], numel).view(shape);
            let start = wave(numel, 0.003 * (i + 2) as f64).view(shape) * 100.0;
            let want = match (i, has_leaf_grad) {
                (_, false) => start.shallow_clone(),
                (11, true) => part.to_kind(Kind::Float),
                _ => &start + part.to_kind(Kind::Float),
            };
            if i != 11 {
                crate::ffi::autograd::set_grad(&master, &start).unwrap();
            }
            expected.push(want);
            masters.push(master);
            leaves.push(leaf);
            spans.push((offset, shape[0]));
        }
        let before = add_grads_fallbacks();
        let (m, l): (Vec<&Tensor>, Vec<&Tensor>) =
            (masters.iter().collect(), leaves.iter().collect());
        add_grads(&m, &l, &spans).unwrap();
        for (i, (m, want)) in masters.iter().zip(&expected).enumerate() {
            let d = (m.grad() - want).abs().max().double_value(&[]);
            assert_eq!(d, 0.0, "part {i}");
        }
        assert!(leaves.iter().all(|l| !l.grad().defined()));
        assert_eq!(
            add_grads_fallbacks(),
            before,
            "the kernel ran without failing"
        );
    }

    #[test]
    fn adding_gradients_matches_aten_on_the_cpu() {
        add_grads_against_aten(Device::Cpu);
    }

    /// Runs where a GPU is, passes trivially elsewhere.
    #[test]
    fn adding_gradients_matches_aten_on_cuda() {
        if tch::Cuda::is_available() {
            add_grads_against_aten(Device::Cuda(0));
        }
    }
}
