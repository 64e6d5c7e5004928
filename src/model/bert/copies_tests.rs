use super::super::{layer_norm, Norm};
use super::*;
use crate::model::hf_config::BertConfig;
use tch::{Device, Kind, Tensor};

/// `n` values spread over [-1, 1] without a pattern a LayerNorm would cancel (the
/// global generator is shared with the tests running beside this one).
fn spread(n: i64, phase: f64) -> Tensor {
    (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 1.7 + phase).sin()
}

/// A LayerNorm of width 64 with weights away from the identity, and a bf16 input and
/// residual.
fn setup() -> (nn::VarStore, Norm, Tensor, Tensor) {
    let vs = nn::VarStore::new(Device::Cpu);
    let config = BertConfig {
        hidden_size: 64,
        ..Default::default()
    };
    let mut norm = layer_norm(vs.root() / "ln", &config);
    tch::no_grad(|| {
        let (w, b) = (norm.ln.ws.as_mut().unwrap(), norm.ln.bs.as_mut().unwrap());
        w.copy_(&(spread(64, 0.1) * 0.3 + 1.0));
        b.copy_(&(spread(64, 0.2) * 0.1));
    });
    let x = (spread(6 * 64, 0.3).view([6, 64]) * 2.0 + 0.5)
        .to_kind(Kind::BFloat16)
        .set_requires_grad(true);
    let residual = spread(6 * 64, 0.4).view([6, 64]).to_kind(Kind::BFloat16);
    (vs, norm, x, residual)
}

/// How `LayerNorm(x + residual)` runs in [`run`].
#[derive(Clone, Copy, PartialEq)]
enum Path {
    /// On the compute copies of the LayerNorm's weights, moved to the masters after the
    /// backward pass.
    Copies,
    /// aten's LayerNorm in bf16 on weights cast to bf16 (leaves of their own).
    Cast,
    /// As without copies: in fp32 on the masters, the activations cast up and down.
    Fp32,
}

/// `LayerNorm(x + residual)` and the gradients of a fixed weighting of its output, along
/// `path`, with the model's LayerNorm kernels switched `on` (on the CPU the training one
/// runs aten's forward and backward through a function of ours). Returns the output, the
/// input's gradient, the weight's and the bias's.
fn run(path: Path, on: bool) -> (Tensor, Tensor, Tensor, Tensor) {
    let (_vs, norm, x, residual) = setup();
    let copies = ComputeCopies::new(&[vec![norm.affine().unwrap()]], Kind::BFloat16);
    copies.refresh().unwrap();
    let taken = path == Path::Copies && copies.take(Kind::BFloat16);
    let fused = AtomicBool::new(on);
    let (w, b) = (norm.ln.ws.as_ref().unwrap(), norm.ln.bs.as_ref().unwrap());
    let cast = [w, b].map(|t| t.detach().to_kind(Kind::BFloat16).set_requires_grad(true));
    let y = match path {
        Path::Cast => {
            (&x + &residual).layer_norm([64], Some(&cast[0]), Some(&cast[1]), 1e-12, true)
        }
        _ => norm.add_forward(&x, &residual, &fused, taken.then_some(&copies)),
    };
    assert_eq!(y.kind(), Kind::BFloat16);
    let weights = Tensor::linspace(-1.0, 1.0, 64, (Kind::Float, Device::Cpu));
    (y.to_kind(Kind::Float) * &weights)
        .sum(Kind::Float)
        .backward();
    if path == Path::Cast {
        let [dw, db] = cast.map(|t| t.grad().to_kind(Kind::Float));
        return (y.detach(), x.grad(), dw, db);
    }
    // On the copies, the masters get their gradients only from the transfer.
    assert_eq!(w.grad().defined(), path == Path::Fp32);
    copies.transfer().unwrap();
    assert!(w.grad().defined() && b.grad().defined());
    assert_eq!(w.grad().kind(), Kind::Float);
    (y.detach(), x.grad(), w.grad(), b.grad())
}

fn relative(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

/// A LayerNorm on the bf16 compute copies of its weights runs aten's bf16 LayerNorm on
/// the masters rounded to bf16: the same output and gradients to the bit, the weights'
/// reaching the masters widened to fp32. Its output is the fp32 LayerNorm's to bf16's
/// rounding (the gradients' precision is the kernel's: the CPU's bf16 kernel is coarser
/// than CUDA's, BENCHMARKS.md).
#[test]
fn a_layer_norm_on_bf16_copies_runs_the_bf16_layer_norm_on_rounded_masters() {
    let cast = run(Path::Cast, false);
    for on in [false, true] {
        let copies = run(Path::Copies, on);
        for (name, a, b) in [
            ("output", &copies.0, &cast.0),
            ("input gradient", &copies.1, &cast.1),
            ("weight gradient", &copies.2, &cast.2),
            ("bias gradient", &copies.3, &cast.3),
        ] {
            assert_eq!(relative(a, b), 0.0, "{name} (kernels on: {on})");
        }
    }
    let copies = run(Path::Copies, false);
    let fp32 = run(Path::Fp32, false);
    let r = relative(&copies.0, &fp32.0);
    assert!(r > 0.0 && r <= 2f64.powi(-7), "output: {r}");
}
