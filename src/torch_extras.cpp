// libtorch functions that tch does not expose, called from Rust through plain C entry
// points. Tensors arrive as tch's handles (`at::Tensor*`). Every function catches C++
// exceptions: it returns -1 (or a negative value) and, where it can, writes the message
// into `err`.
//
// - Peak GPU memory of the caching allocator (`torch.cuda.max_memory_allocated`), for
//   `distill bench`.
// - The multi-tensor ("foreach" / fused) optimizer kernels that `torch.optim.AdamW(fused=True)`
//   and `clip_grad_norm_(foreach=True)` use: one launch for all parameters instead of one
//   per parameter and operation.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_foreach_zero.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/stack.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <cstdint>
#include <cstring>
#include <exception>
#include <vector>

namespace {
std::vector<at::Tensor> gather(at::Tensor** ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*ts[i]);
  return out;
}

void report(const std::exception& e, char* err, size_t len) {
  if (err && len) {
    std::strncpy(err, e.what(), len - 1);
    err[len - 1] = 0;
  }
}
}  // namespace

extern "C" int64_t distill_cuda_peak_allocated(int device) {
  try {
    auto* a = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    return a->getDeviceStats(static_cast<c10::DeviceIndex>(device)).allocated_bytes[0].peak;
  } catch (...) {
    return -1;
  }
}

extern "C" int distill_cuda_reset_peak(int device) {
  try {
    c10::getDeviceAllocator(c10::DeviceType::CUDA)
        ->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (...) {
    return -1;
  }
}

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
    report(e, err, err_len);
    return -1;
  }
}

// The global L2 norm of n gradients (as clip_grad_norm_ computes it, in fp32), and, when
// `max_norm` > 0 and the norm exceeds it, the gradients scaled in place to that norm.
// Returns the norm before clipping, or -1 on an error.
extern "C" double distill_clip_grad_norm(at::Tensor** grads, size_t n, double max_norm,
                                         char* err, size_t err_len) {
  try {
    auto g = gather(grads, n);
    auto norms = at::_foreach_norm(g, 2, at::kFloat);
    double total = at::stack(norms).norm().item<double>();
    if (max_norm > 0) {
      double coef = max_norm / (total + 1e-6);
      if (coef < 1.0) at::_foreach_mul_(g, coef);
    }
    return total;
  } catch (const std::exception& e) {
    report(e, err, err_len);
    return -1;
  }
}

// Zero n gradients in place (one multi-tensor launch).
extern "C" int distill_zero_grads(at::Tensor** grads, size_t n, char* err, size_t err_len) {
  try {
    at::_foreach_zero_(gather(grads, n));
    return 0;
  } catch (const std::exception& e) {
    report(e, err, err_len);
    return -1;
  }
}
