// Residual add + LayerNorm fused into one kernel for inference: `LayerNorm(x + residual)`
// in one pass over memory instead of two kernels (aten's add, then aten's layer_norm), for
// bf16/fp16 activations on CUDA. For training, the same kernel keeping the sum and the
// rows' statistics (`distill_train_add_layer_norm`), and LayerNorm alone
// (`distill_train_layer_norm`): aten's input gradient, with the weight's and bias's
// gradients taken by a kernel that splits the rows over blocks (aten's, below 64k rows,
// runs one block per 32 columns over all rows: 12 blocks at MiniLM's width, 189 us a call
// at 44k rows on an H200). The kernels are compiled at run time by NVRTC (kernels.h): a
// machine without it keeps aten's kernels. Conventions of the entry points: common.h.
//
// Numerics follow aten's two kernels: the sum is rounded to the activation dtype (as the
// add's output is), then mean and biased variance are taken in fp32 and the result is
// (v - mean) * rsqrt(var + eps) * gamma + beta, rounded once.
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/native_layer_norm.h>
#include <ATen/ops/native_layer_norm_backward.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>
#include <algorithm>
#include <atomic>
#include <vector>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <cstdint>
#include <exception>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>

#include "common.h"
#include "kernels.h"
#include "nvrtc.h"

namespace {
using distill::kernels::stream_of;


// Whether the weight-gradient kernel covers a LayerNorm of `x` (rows x h) whose statistics
// are `mean` and `rstd`: CUDA bf16/fp16, h a multiple of 64 up to 4096, fp32 statistics,
// one per row.
bool weight_grads_cover(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd) {
  auto dtype = x.scalar_type();
  int64_t h = x.dim() >= 1 ? x.size(-1) : 0;
  return x.is_cuda() && (dtype == at::kBFloat16 || dtype == at::kHalf) && h > 0 &&
         h % 64 == 0 && h <= 4096 && mean.scalar_type() == at::kFloat &&
         rstd.scalar_type() == at::kFloat && mean.numel() == x.numel() / h &&
         rstd.numel() == mean.numel();
}

// The weight's and bias's gradients of a LayerNorm (in `kind`), by the split kernel.
std::tuple<at::Tensor, at::Tensor> weight_grads(const at::Tensor& dy, const at::Tensor& x,
                                                const at::Tensor& mean, const at::Tensor& rstd,
                                                at::ScalarType kind) {
  int64_t h = x.size(-1), rows = x.numel() / h, tiles = h / 32;
  auto dyc = dy.contiguous(), xc = x.contiguous(), mc = mean.contiguous(), rc = rstd.contiguous();
  c10::DeviceGuard guard(xc.device());
  // At most about 2,048 blocks, the rows split in parts of about 64 or more (fewer when
  // there are fewer rows than parts would need).
  int64_t blocks_y = std::max<int64_t>(1, std::min<int64_t>((rows + 63) / 64, 2048 / tiles));
  int64_t per_block = std::max<int64_t>(1, (rows + blocks_y - 1) / blocks_y);
  blocks_y = std::max<int64_t>(1, (rows + per_block - 1) / per_block);
  auto part = at::zeros({2, blocks_y, h}, xc.options().dtype(at::kFloat));
  if (rows > 0) {
    bool bf16 = xc.scalar_type() == at::kBFloat16;
    auto f = distill::kernels::get(xc.device().index(), h, bf16).weight_grads;
    const void* pd = dyc.const_data_ptr();
    const void* px = xc.const_data_ptr();
    const void* pm = mc.const_data_ptr();
    const void* pr = rc.const_data_ptr();
    void* pg = part.mutable_data_ptr();
    void* pb = static_cast<float*>(pg) + blocks_y * h;
    long long n = rows, per = per_block;
    void* args[] = {&pd, &px, &pm, &pr, &pg, &pb, &n, &per};
    distill::check(distill::driver().launch(f, static_cast<unsigned>(tiles),
                                            static_cast<unsigned>(blocks_y), 1, 32, 8, 1, 0,
                                            stream_of(xc), args, nullptr),
                   "cuLaunchKernel(layer_norm_weight_grads)");
  }
  auto sums = part.sum(1);
  return {sums[0].to(kind), sums[1].to(kind)};
}

// Whether the weight-gradient kernel has failed in this process (then aten's gradients serve
// for the rest of it), and how many times it failed.
std::atomic<bool> failed{false};
std::atomic<int64_t> fallbacks{0};

// A LayerNorm's backward pass for training from its input `x` and statistics: aten's input
// gradient; the weight's and bias's gradients by `weight_grads` where it covers the tensors
// (else, or should it fail, aten's).
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_backward(const at::Tensor& grad,
                                                             const at::Tensor& x,
                                                             const at::Tensor& weight,
                                                             const at::Tensor& bias,
                                                             const at::Tensor& mean,
                                                             const at::Tensor& rstd) {
  // Once the kernel has failed (no NVRTC, say), aten's for the rest of the process.
  auto dy = grad.contiguous();
  std::vector<int64_t> shape{x.size(-1)};
  bool split = !failed.load() && weight_grads_cover(x, mean, rstd);
  auto [dx, dw, db] = at::native_layer_norm_backward(dy, x, shape, mean, rstd, weight, bias,
                                                     {true, !split, !split});
  if (split) {
    try {
      std::tie(dw, db) = weight_grads(dy, x, mean, rstd, weight.scalar_type());
    } catch (const c10::OutOfMemoryError&) {
      throw;  // as aten's own allocations would
    } catch (const std::exception&) {
      failed.store(true);
      fallbacks.fetch_add(1);
      auto again = at::native_layer_norm_backward(dy, x, shape, mean, rstd, weight, bias,
                                                  {false, true, true});
      dw = std::get<1>(again);
      db = std::get<2>(again);
    }
  }
  return {dx, dw, db};
}

// LayerNorm over the last dimension for training: aten's forward, `norm_backward`.
struct TrainNorm : public torch::autograd::Function<TrainNorm> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& weight, const at::Tensor& bias, double eps) {
    auto out = at::native_layer_norm(x, {x.size(-1)}, weight, bias, eps);
    ctx->save_for_backward({x, weight, bias, std::get<1>(out), std::get<2>(out)});
    return std::get<0>(out);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto [dx, dw, db] = norm_backward(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4]);
    return {dx, dw, db, at::Tensor()};
  }
};

// Whether the training add + LayerNorm kernel covers x + residual with weight and bias:
// contiguous-able CUDA bf16/fp16 tensors of one shape and dtype, the width a multiple of 64
// up to 4096.
bool add_norm_covers(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                     const at::Tensor& bias) {
  auto dtype = x.scalar_type();
  int64_t h = x.dim() >= 1 ? x.size(-1) : 0;
  bool same = residual.sizes() == x.sizes() && weight.numel() == h && bias.numel() == h;
  for (const at::Tensor* t : {&residual, &weight, &bias})
    same = same && t->scalar_type() == dtype && t->device() == x.device();
  return x.is_cuda() && (dtype == at::kBFloat16 || dtype == at::kHalf) && h > 0 &&
         h % 64 == 0 && h <= 4096 && same;
}

// A tensor's contiguous form whose data is 4-byte aligned (the kernels read 32-bit words; a
// view that starts at an odd element is copied).
at::Tensor words(const at::Tensor& t) {
  auto c = t.contiguous();
  return reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 4 == 0 ? c : c.clone();
}

// LayerNorm(x + residual) for training by the fused kernel: the output, the rounded sum, and
// each row's mean and 1/std (shaped as aten's: the leading dimensions and 1).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_norm_train(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
    const at::Tensor& bias, double eps) {
  auto xc = words(x), rc = words(residual), wc = words(weight), bc = words(bias);
  c10::DeviceGuard guard(xc.device());
  int64_t h = xc.size(-1);
  long long rows = xc.numel() / h;
  auto out = at::empty_like(xc), sum = at::empty_like(xc);
  auto stat_shape = xc.sizes().vec();
  stat_shape.back() = 1;
  auto mean = at::empty(stat_shape, xc.options().dtype(at::kFloat));
  auto rstd = at::empty(stat_shape, xc.options().dtype(at::kFloat));
  if (rows > 0) {
    bool bf16 = xc.scalar_type() == at::kBFloat16;
    auto f = distill::kernels::get(xc.device().index(), h, bf16).add_layer_norm_train;
    const void* px = xc.const_data_ptr();
    const void* pr = rc.const_data_ptr();
    const void* pw = wc.const_data_ptr();
    const void* pb = bc.const_data_ptr();
    void* po = out.mutable_data_ptr();
    void* ps = sum.mutable_data_ptr();
    void* pm = mean.mutable_data_ptr();
    void* pv = rstd.mutable_data_ptr();
    float e = static_cast<float>(eps);
    void* args[] = {&px, &pr, &pw, &pb, &po, &ps, &pm, &pv, &rows, &e};
    unsigned blocks = static_cast<unsigned>((rows + 7) / 8);
    distill::check(
        distill::driver().launch(f, blocks, 1, 1, 256, 1, 1, 0, stream_of(xc), args, nullptr),
        "cuLaunchKernel(add_layer_norm_train)");
  }
  return {out, sum, mean, rstd};
}

// Whether the training add + LayerNorm kernel has failed in this process (then aten's add
// and layer_norm serve for the rest of it), and how many times it failed.
std::atomic<bool> add_norm_failed{false};
std::atomic<int64_t> add_norm_fallbacks{0};

// LayerNorm(x + residual) over the last dimension for training: the fused kernel where it
// covers the tensors (else, or should it fail, aten's add and layer_norm), then
// `norm_backward` on the sum, whose input gradient is both x's and the residual's.
struct TrainAddNorm : public torch::autograd::Function<TrainAddNorm> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& residual, const at::Tensor& weight,
                            const at::Tensor& bias, double eps) {
    at::Tensor out, sum, mean, rstd;
    if (!add_norm_failed.load() && add_norm_covers(x, residual, weight, bias)) {
      try {
        std::tie(out, sum, mean, rstd) = add_norm_train(x, residual, weight, bias, eps);
      } catch (const c10::OutOfMemoryError&) {
        throw;
      } catch (const std::exception&) {
        add_norm_failed.store(true);
        add_norm_fallbacks.fetch_add(1);
      }
    }
    if (!out.defined()) {
      sum = at::add(x, residual);
      std::tie(out, mean, rstd) = at::native_layer_norm(sum, {sum.size(-1)}, weight, bias, eps);
    }
    ctx->save_for_backward({sum, weight, bias, mean, rstd});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto [dx, dw, db] = norm_backward(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4]);
    return {dx, dx, dw, db, at::Tensor()};
  }
};

}  // namespace


// LayerNorm(x + residual) over the last dimension, for contiguous CUDA bf16/fp16 tensors of
// the same shape and dtype, with weight and bias of that dtype. Returns a new tensor, or
// nullptr on an error (a dtype or size the kernel does not cover, no NVRTC or driver).
extern "C" at::Tensor* distill_add_layer_norm(at::Tensor* x, at::Tensor* residual,
                                              at::Tensor* weight, at::Tensor* bias, double eps,
                                              char* err, size_t err_len) {
  try {
    auto dtype = x->scalar_type();
    TORCH_CHECK(x->is_cuda(), "add_layer_norm: CUDA tensors only");
    TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kHalf, "add_layer_norm: bf16/fp16 only");
    TORCH_CHECK(x->dim() >= 1, "add_layer_norm: a 0-dim tensor");
    int64_t h = x->size(-1);
    TORCH_CHECK(h > 0 && h % 64 == 0 && h <= 4096, "add_layer_norm: hidden size ", h,
                " not covered");
    for (const at::Tensor* t : {residual, weight, bias})
      TORCH_CHECK(t->scalar_type() == dtype && t->device() == x->device(),
                  "add_layer_norm: residual, weight and bias must share x's dtype and device");
    TORCH_CHECK(residual->sizes() == x->sizes(), "add_layer_norm: residual's shape differs from x's");
    TORCH_CHECK(weight->numel() == h && bias->numel() == h, "add_layer_norm: weight/bias size");
    auto xc = words(*x), rc = words(*residual), wc = words(*weight), bc = words(*bias);
    // The module is loaded into, and the kernel launched on, x's device's context.
    c10::DeviceGuard guard(xc.device());
    auto out = at::empty_like(xc);
    long long rows = xc.numel() / h;
    int device = xc.device().index();
    auto f = distill::kernels::get(device, h, dtype == at::kBFloat16).add_layer_norm;
    if (rows > 0) {
      void* handle = stream_of(xc);
      const void* px = xc.const_data_ptr();
      const void* pr = rc.const_data_ptr();
      const void* pw = wc.const_data_ptr();
      const void* pb = bc.const_data_ptr();
      void* po = out.mutable_data_ptr();
      float e = static_cast<float>(eps);
      void* args[] = {&px, &pr, &pw, &pb, &po, &rows, &e};
      unsigned blocks = static_cast<unsigned>((rows + 7) / 8);
      distill::check(
          distill::driver().launch(f, blocks, 1, 1, 256, 1, 1, 0, handle, args, nullptr),
          "cuLaunchKernel(add_layer_norm)");
    }
    return new at::Tensor(out);
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return nullptr;
  }
}

// LayerNorm of `x` over its last dimension with `weight` and `bias` (x's dtype and
// device), for training: differentiable, its weight gradient by the split kernel on CUDA
// (`TrainNorm`). Returns a new tensor, or nullptr on an error.
extern "C" at::Tensor* distill_train_layer_norm(at::Tensor* x, at::Tensor* weight,
                                                at::Tensor* bias, double eps, char* err,
                                                size_t err_len) {
  try {
    TORCH_CHECK(x->dim() >= 1, "train_layer_norm: a 0-dim tensor");
    int64_t h = x->size(-1);
    for (const at::Tensor* t : {weight, bias})
      TORCH_CHECK(t->scalar_type() == x->scalar_type() && t->device() == x->device() &&
                      t->dim() == 1 && t->size(0) == h,
                  "train_layer_norm: weight and bias must be x's dtype and device, of its width");
    return new at::Tensor(TrainNorm::apply(*x, *weight, *bias, eps));
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return nullptr;
  }
}

// LayerNorm(x + residual) over the last dimension for training, with `weight` and `bias`
// (x's dtype and device): differentiable (`TrainAddNorm`). Returns a new tensor, or nullptr
// on an error.
extern "C" at::Tensor* distill_train_add_layer_norm(at::Tensor* x, at::Tensor* residual,
                                                    at::Tensor* weight, at::Tensor* bias,
                                                    double eps, char* err, size_t err_len) {
  try {
    TORCH_CHECK(x->dim() >= 1, "train_add_layer_norm: a 0-dim tensor");
    int64_t h = x->size(-1);
    TORCH_CHECK(residual->sizes() == x->sizes(),
                "train_add_layer_norm: residual's shape differs from x's");
    for (const at::Tensor* t : {residual, weight, bias})
      TORCH_CHECK(t->scalar_type() == x->scalar_type() && t->device() == x->device(),
                  "train_add_layer_norm: residual, weight and bias must be x's dtype and device");
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == h && bias->dim() == 1 &&
                    bias->size(0) == h,
                "train_add_layer_norm: weight and bias must be of x's width");
    return new at::Tensor(TrainAddNorm::apply(*x, *residual, *weight, *bias, eps));
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return nullptr;
  }
}

// How many times the kernel of `distill_train_add_layer_norm` failed (its first failure
// turns it off for the process).
extern "C" int64_t distill_train_add_layer_norm_fallbacks() { return add_norm_fallbacks.load(); }

// How many times the weight-gradient kernel of `distill_train_layer_norm` failed (its first
// failure turns it off for the process).
extern "C" int64_t distill_train_layer_norm_fallbacks() { return fallbacks.load(); }
