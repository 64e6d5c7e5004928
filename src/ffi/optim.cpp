// The multi-tensor ("foreach" / fused) optimizer kernels that
// `torch.optim.AdamW(fused=True)` and `clip_grad_norm_(foreach=True)` use: one launch for
// all parameters instead of one per parameter and operation. Conventions: common.h.
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/_foreach_copy.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_foreach_zero.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/stack.h>
#include <exception>
#include <vector>

#include "common.h"

namespace {
std::vector<at::Tensor> gather(at::Tensor** ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*ts[i]);
  return out;
}
}  // namespace

// AdamW over n parameters in one fused kernel (torch.optim.AdamW(fused=True)): `steps`
// are 0-dim float tensors on the parameters' device holding the step number after this
// update (1-based), as PyTorch keeps them.
extern "C" int distill_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs,
                                   at::Tensor** exp_avg_sqs, at::Tensor** steps, size_t n,
                                   double lr, double beta1, double beta2, double weight_decay,
                                   double eps, char* err, size_t err_len) {
  try {
    at::_fused_adamw_(gather(params, n), gather(grads, n), gather(exp_avgs, n),
                      gather(exp_avg_sqs, n), {}, gather(steps, n), lr, beta1, beta2,
                      weight_decay, eps, false, false);
    return 0;
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}

// The global L2 norm of n gradients (fp32, as clip_grad_norm_ computes it) as a new 0-dim
// tensor on their device, and, when `max_norm` > 0, the gradients scaled in place by
// min(1, max_norm / (norm + 1e-6)), computed on the device: nothing waits for the GPU.
// Returns nullptr on an error.
extern "C" at::Tensor* distill_clip_grad_norm(at::Tensor** grads, size_t n, double max_norm,
                                              char* err, size_t err_len) {
  try {
    auto g = gather(grads, n);
    auto norms = at::_foreach_norm(g, 2, at::kFloat);
    auto total = at::stack(norms).norm();
    if (max_norm > 0) {
      // As clip_grad_norm_: max_norm / (total + 1e-6), which Python computes as
      // reciprocal() * max_norm, clamped to 1.
      auto coef = total.add(1e-6).reciprocal().mul(max_norm).clamp_max(1.0);
      at::_foreach_mul_(g, coef);
    }
    return new at::Tensor(total);
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return nullptr;
  }
}

// Zero n gradients in place (one multi-tensor launch).
extern "C" int distill_zero_grads(at::Tensor** grads, size_t n, char* err, size_t err_len) {
  try {
    at::_foreach_zero_(gather(grads, n));
    return 0;
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}

// Copy src[i] into dst[i] (of the same shapes, any dtypes) with one multi-tensor copy:
// the compute copies' refresh from the fp32 masters.
extern "C" int distill_copy_all(at::Tensor** dst, at::Tensor** src, size_t n, char* err,
                                size_t err_len) {
  try {
    at::NoGradGuard no_grad;
    at::_foreach_copy_(gather(dst, n), gather(src, n), /*non_blocking=*/false);
    return 0;
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}

// For each i, rows [offsets[i], offsets[i] + rows[i]) of leaves[i]'s gradient, when it
// has one, added into masters[i]'s gradient in the master's dtype, or copied to be it
// where the master has none; then every leaf's gradient cleared (the next backward pass
// makes a new one without adding). The compute copies' transfer after a backward pass.
extern "C" int distill_add_grads(at::Tensor** masters, at::Tensor** leaves, int64_t* offsets,
                                 int64_t* rows, size_t n, char* err, size_t err_len) {
  try {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < n; ++i) {
      const auto& g = leaves[i]->grad();
      if (!g.defined()) continue;
      // A part that fills its leaf (every layer but Q, K and V) is the gradient itself.
      auto part = offsets[i] == 0 && rows[i] == g.size(0) && g.sizes() == masters[i]->sizes()
                      ? g
                      : g.narrow(0, offsets[i], rows[i]).view(masters[i]->sizes());
      auto& mg = masters[i]->mutable_grad();
      if (mg.defined()) {
        mg.add_(part);
      } else {
        mg = part.to(masters[i]->scalar_type(), /*non_blocking=*/false, /*copy=*/true);
      }
    }
    for (size_t i = 0; i < n; ++i) leaves[i]->mutable_grad().reset();
    return 0;
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}
