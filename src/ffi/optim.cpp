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
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <utility>
#include <vector>

#include "common.h"
#include "kernels.h"

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

namespace {
// Whether the add_widened kernel has failed in this process (then aten's add serves for the
// rest of it), and how many times it failed.
std::atomic<bool> widen_failed{false};
std::atomic<int64_t> widen_fallbacks{0};

// What one launch of the kernel takes, laid out as its `Spans` (kernels.cpp).
struct Spans {
  const void* src[distill::kernels::kMaxSpans];
  void* dst[distill::kernels::kMaxSpans];
  long long n[distill::kernels::kMaxSpans];
};

// Whether the kernel covers adding `part` into `mg`: both on CUDA and contiguous, the
// master's gradient fp32, the part bf16 or fp16, of the same size.
bool widen_covers(const at::Tensor& mg, const at::Tensor& part) {
  auto dtype = part.scalar_type();
  return mg.is_cuda() && part.device() == mg.device() && mg.scalar_type() == at::kFloat &&
         (dtype == at::kBFloat16 || dtype == at::kHalf) && mg.is_contiguous() &&
         part.is_contiguous() && mg.numel() == part.numel() && mg.numel() > 0;
}

// mg += part for each (mg, part) of adds[from, from + kMaxSpans) (all covered, of one dtype
// and device) in one launch; returns the end of those it took.
size_t add_widened(const std::vector<std::pair<at::Tensor, at::Tensor>>& adds, size_t from) {
  const auto& first = adds[from].second;
  bool bf16 = first.scalar_type() == at::kBFloat16;
  c10::DeviceGuard guard(first.device());
  auto k = distill::kernels::get(first.device().index(), distill::kernels::kAnyModuleH, bf16);
  Spans spans{};
  int count = 0;
  long long longest = 0;
  size_t end = std::min(adds.size(), from + distill::kernels::kMaxSpans);
  for (size_t i = from; i < end; ++i, ++count) {
    spans.src[count] = adds[i].second.const_data_ptr();
    spans.dst[count] = adds[i].first.mutable_data_ptr();
    spans.n[count] = adds[i].first.numel();
    longest = std::max(longest, spans.n[count]);
  }
  auto blocks = static_cast<unsigned>(std::min<long long>(256, (longest + 255) / 256));
  void* args[] = {&spans, &count};
  distill::check(distill::driver().launch(k.add_widened, blocks, static_cast<unsigned>(count), 1,
                                          256, 1, 1, 0, distill::kernels::stream_of(first), args,
                                          nullptr),
                 "cuLaunchKernel(add_widened)");
  return end;
}
}  // namespace

// For each i, rows [offsets[i], offsets[i] + rows[i]) of leaves[i]'s gradient, when it
// has one, added into masters[i]'s gradient in the master's dtype, or copied to be it
// where the master has none; then every leaf's gradient cleared (the next backward pass
// makes a new one without adding). The compute copies' transfer after a backward pass: on
// CUDA the adds of 16-bit gradients into fp32 ones run as one kernel for all the parts
// (`add_widened`, the same sums as aten's add), where aten launched one per part.
extern "C" int distill_add_grads(at::Tensor** masters, at::Tensor** leaves, int64_t* offsets,
                                 int64_t* rows, size_t n, char* err, size_t err_len) {
  try {
    at::NoGradGuard no_grad;
    std::vector<std::pair<at::Tensor, at::Tensor>> widened;
    for (size_t i = 0; i < n; ++i) {
      const auto& g = leaves[i]->grad();
      if (!g.defined()) continue;
      // A part that fills its leaf (every layer but Q, K and V) is the gradient itself.
      auto part = offsets[i] == 0 && rows[i] == g.size(0) && g.sizes() == masters[i]->sizes()
                      ? g
                      : g.narrow(0, offsets[i], rows[i]).view(masters[i]->sizes());
      auto& mg = masters[i]->mutable_grad();
      if (!mg.defined()) {
        mg = part.to(masters[i]->scalar_type(), /*non_blocking=*/false, /*copy=*/true);
      } else if (!widen_failed.load() && widen_covers(mg, part) &&
                 (widened.empty() ||
                  (part.scalar_type() == widened.front().second.scalar_type() &&
                   part.device() == widened.front().second.device()))) {
        widened.emplace_back(mg, part);
      } else {
        mg.add_(part);
      }
    }
    for (size_t at = 0; at < widened.size();) {
      try {
        at = add_widened(widened, at);
      } catch (const c10::OutOfMemoryError&) {
        throw;
      } catch (const std::exception&) {
        // A launch that failed added nothing (it fails before it starts): aten's adds
        // for what is left, and for the rest of the process.
        widen_failed.store(true);
        widen_fallbacks.fetch_add(1);
        for (; at < widened.size(); ++at) widened[at].first.add_(widened[at].second);
      }
    }
    for (size_t i = 0; i < n; ++i) leaves[i]->mutable_grad().reset();
    return 0;
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}

// How many times the kernel of `distill_add_grads` failed (its first failure turns it off
// for the process).
extern "C" int64_t distill_add_grads_fallbacks() { return widen_fallbacks.load(); }
