//! The linear layers for training, with their bias gradient by a column-sum kernel of ours
//! (`linear.cpp`, compiled at run time by NVRTC with the LayerNorm kernels: `kernels.h`).
use crate::error::Result;
use tch::Tensor;

#[cfg(distill_ffi)]
mod sys {
    use super::super::TensorHandle;
    use std::os::raw::c_char;
    extern "C" {
        pub fn distill_train_linear(
            x: *const TensorHandle,
            weight: *const TensorHandle,
            bias: *const TensorHandle,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut TensorHandle;
        pub fn distill_train_linear_fallbacks() -> i64;
    }
}

/// `x.linear(weight, bias)`, differentiable, for training: aten's forward and its input's
/// and weight's gradients; on CUDA in bf16/fp16 (output width a multiple of 4) the bias's
/// gradient by a kernel that sums the columns over blocks of rows (aten's reduction runs
/// below the memory's bandwidth at these shapes), elsewhere, or should it fail, aten's.
/// Weight and bias of `x`'s dtype.
pub fn train_linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    #[cfg(distill_ffi)]
    {
        let h = super::handles(&[x, weight, bias]);
        super::owned_tensor("linear layer for training", |err, len| {
            // SAFETY: the handles point to live tensors for the duration of the call; the
            // function catches C++ exceptions.
            unsafe { sys::distill_train_linear(h[0], h[1], h[2], err, len) }
        })
    }
    #[cfg(not(distill_ffi))]
    {
        let _ = (x, weight, bias);
        Err(super::unavailable("linear layer for training"))
    }
}

/// How many times the column-sum kernel of [`train_linear`] failed in this process (its
/// first failure turns it off, and aten's sum serves from then on); 0 without the C++ side.
pub fn train_linear_fallbacks() -> i64 {
    #[cfg(distill_ffi)]
    {
        // SAFETY: reads an atomic counter.
        unsafe { sys::distill_train_linear_fallbacks() }
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

    /// The linear layer for training against aten's `linear` under autograd, on `device`
    /// in bf16 over `rows` rows (384 wide in, `out` wide out; deterministic values): the
    /// output and the input's and weight's gradients to the bit (aten's kernels, aten's
    /// products), the bias's within two bf16 steps of the largest (fp32 sums in another
    /// order, rounded once), or to the bit where aten takes it too (`exact`: the CPU).
    fn linear_against_aten(device: Device, rows: i64, out: i64, exact: bool) {
        let opts = (Kind::Float, device);
        let wave = |n: i64, f: f64, scale: f64| (Tensor::arange(n, opts) * f).sin() * scale;
        let x = wave(rows * 384, 0.37, 2.0)
            .view([rows, 384])
            .to_kind(Kind::BFloat16);
        let w = wave(out * 384, 0.011, 0.1)
            .view([out, 384])
            .to_kind(Kind::BFloat16);
        let b = wave(out, 1.3, 0.1).to_kind(Kind::BFloat16);
        let dy = (wave(rows * out, 0.73, 1.0) + 0.05)
            .view([rows, out])
            .to_kind(Kind::BFloat16);
        let run = |ours: bool| {
            let [x, w, b] = [&x, &w, &b].map(|t| t.detach().set_requires_grad(true));
            let y = match ours {
                true => train_linear(&x, &w, &b).unwrap(),
                false => x.linear(&w, Some(&b)),
            };
            (y.to_kind(Kind::Float) * dy.to_kind(Kind::Float))
                .sum(Kind::Float)
                .backward();
            [y.detach(), x.grad(), w.grad(), b.grad()].map(|t| t.to_kind(Kind::Float))
        };
        let (ours, aten) = (run(true), run(false));
        for (i, name) in ["output", "input gradient", "weight gradient"]
            .iter()
            .enumerate()
        {
            let d = (&ours[i] - &aten[i]).abs().max().double_value(&[]);
            assert_eq!(d, 0.0, "{name}, {rows} x {out}");
        }
        let scale = aten[3].abs().max().double_value(&[]);
        let d = (&ours[3] - &aten[3]).abs().max().double_value(&[]) / scale;
        let bound = if exact { 0.0 } else { 2f64.powi(-7) };
        assert!(d <= bound, "bias gradient, {rows} x {out}: {d}");
    }

    /// On the CPU the function runs aten's kernels: its autograd wiring gives aten's values
    /// to the bit.
    #[test]
    fn train_linear_matches_aten_on_the_cpu() {
        linear_against_aten(Device::Cpu, 70, 1152, true);
        linear_against_aten(Device::Cpu, 3, 384, true);
    }

    /// On CUDA the bias's gradient comes from the column-sum kernel: MiniLM's widths, one
    /// row, a ragged last block, a teacher's and a student's step of rows. Runs where a
    /// GPU is, passes trivially elsewhere.
    #[test]
    fn train_linear_bias_gradients_match_aten_on_cuda() {
        if !tch::Cuda::is_available() {
            return;
        }
        let before = train_linear_fallbacks();
        for rows in [1, 1000, 44_032, 150_001] {
            for out in [384, 1152, 1536] {
                linear_against_aten(Device::Cuda(0), rows, out, false);
            }
        }
        // The kernel ran: it never failed.
        assert_eq!(train_linear_fallbacks(), before);
    }
}
