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
// - Variable-length (packed, unpadded) flash attention, `_flash_attention_forward` with
//   cumulative sequence lengths, as flash-attn's `flash_attn_varlen_func`; differentiable
//   through the dispatcher's autograd.
// - Pinned, non-blocking host-to-device copies (`pin_memory()` without the device
//   argument that tch passes and libtorch now warns about).
// - The Kineto profiler (`torch.profiler`), for `distill bench --profile`: a Chrome trace
//   of the operators and CUDA kernels, comparable with the one `bench_torch.py` writes.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_foreach_zero.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/stack.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <cstdint>
#include <cstring>
#include <exception>
#include <set>
#include <string>
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
    report(e, err, err_len);
    return nullptr;
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

namespace {
std::set<torch::profiler::impl::ActivityType> activities(bool cuda) {
  std::set<torch::profiler::impl::ActivityType> a{torch::profiler::impl::ActivityType::CPU};
  if (cuda) a.insert(torch::profiler::impl::ActivityType::CUDA);
  return a;
}
torch::profiler::impl::ProfilerConfig profiler_config() {
  return torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::KINETO);
}
}  // namespace

// Start the Kineto profiler (CPU operators, and CUDA kernels when `cuda`).
extern "C" int distill_profiler_start(int cuda, char* err, size_t err_len) {
  try {
    auto a = activities(cuda != 0);
    torch::autograd::profiler::prepareProfiler(profiler_config(), a);
    torch::autograd::profiler::enableProfiler(profiler_config(), a);
    return 0;
  } catch (const std::exception& e) {
    report(e, err, err_len);
    return -1;
  }
}

// Stop the profiler and write its Chrome trace (JSON) to `path`.
extern "C" int distill_profiler_stop(const char* path, char* err, size_t err_len) {
  try {
    torch::autograd::profiler::disableProfiler()->save(path);
    return 0;
  } catch (const std::exception& e) {
    report(e, err, err_len);
    return -1;
  }
}

// Flash attention over packed sequences: q, k, v `[tokens, heads, head_dim]` (bf16/fp16,
// CUDA), `cu_seqlens` int32 `[sequences + 1]` (offsets of each sequence), `max_len` the
// longest sequence. Returns a new `[tokens, heads, head_dim]` tensor, or nullptr on an
// error. Autograd records the op when the inputs require gradients.
extern "C" at::Tensor* distill_varlen_attention(at::Tensor* q, at::Tensor* k, at::Tensor* v,
                                                at::Tensor* cu_seqlens, int64_t max_len,
                                                double dropout, char* err, size_t err_len) {
  try {
    auto r = at::_flash_attention_forward(*q, *k, *v, *cu_seqlens, *cu_seqlens, max_len, max_len,
                                          dropout, false, false);
    return new at::Tensor(std::get<0>(r));
  } catch (const std::exception& e) {
    report(e, err, err_len);
    return nullptr;
  }
}

// Copy a CPU tensor to CUDA device `device` through pinned memory with a non-blocking
// copy (`t.pin_memory().to(device, non_blocking=True)`). Returns a new tensor, or
// nullptr on an error.
extern "C" at::Tensor* distill_pinned_upload(at::Tensor* t, int device, char* err,
                                             size_t err_len) {
  try {
    auto pinned = t->pin_memory();
    return new at::Tensor(pinned.to(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)),
                                    /*non_blocking=*/true));
  } catch (const std::exception& e) {
    report(e, err, err_len);
    return nullptr;
  }
}
