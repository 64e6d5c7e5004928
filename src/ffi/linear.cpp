// The linear layers for training (`distill_train_linear`): aten's forward and products,
// the bias's gradient (a sum over the rows) by a column-sum kernel of ours (kernels.h),
// where aten's reduction runs well below the memory's bandwidth at these shapes.
// Conventions of the entry points: common.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>

#include "common.h"
#include "kernels.h"

namespace {
// Whether the column-sum kernels cover dy ([rows, w]): CUDA bf16/fp16, w a multiple of 4.
bool column_sums_cover(const at::Tensor& dy) {
  auto dtype = dy.scalar_type();
  return dy.is_cuda() && (dtype == at::kBFloat16 || dtype == at::kHalf) && dy.dim() == 2 &&
         dy.size(1) > 0 && dy.size(1) % 4 == 0;
}

// The column sums of dy ([rows, w]) in its dtype, by the split kernel and its finish.
at::Tensor column_sums(const at::Tensor& dy) {
  int64_t rows = dy.size(0), w = dy.size(1), tiles = (w + 127) / 128;
  auto c = dy.contiguous();
  if (reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 8 != 0) c = c.clone();
  c10::DeviceGuard guard(c.device());
  // About 1,024 blocks (8 per SM on an H200), the rows split in parts of 64 or more: few
  // enough parts for the finish to read them at once.
  int64_t blocks_y = std::max<int64_t>(1, std::min<int64_t>((rows + 63) / 64, 1024 / tiles));
  int64_t per_block = std::max<int64_t>(1, (rows + blocks_y - 1) / blocks_y);
  blocks_y = std::max<int64_t>(1, (rows + per_block - 1) / per_block);
  auto out = at::empty({w}, c.options());
  if (rows == 0) return out.zero_();
  auto part = at::empty({blocks_y, w}, c.options().dtype(at::kFloat));
  bool bf16 = c.scalar_type() == at::kBFloat16;
  auto k = distill::kernels::get(c.device().index(), distill::kernels::kAnyModuleH, bf16);
  void* stream = distill::kernels::stream_of(c);
  const void* pd = c.const_data_ptr();
  void* pp = part.mutable_data_ptr();
  long long n = rows, per = per_block, width = w, parts = blocks_y;
  void* args[] = {&pd, &pp, &n, &per, &width};
  distill::check(distill::driver().launch(k.column_sums, static_cast<unsigned>(tiles),
                                          static_cast<unsigned>(blocks_y), 1, 32, 8, 1, 0,
                                          stream, args, nullptr),
                 "cuLaunchKernel(column_sums)");
  const void* ppc = pp;
  void* po = out.mutable_data_ptr();
  void* finish[] = {&ppc, &po, &parts, &width};
  distill::check(distill::driver().launch(k.column_sums_finish,
                                          static_cast<unsigned>((w + 31) / 32), 1, 1, 32, 8, 1,
                                          0, stream, finish, nullptr),
                 "cuLaunchKernel(column_sums_finish)");
  return out;
}

// Whether the column-sum kernel has failed in this process (then aten's sum serves for the
// rest of it), and how many times it failed.
std::atomic<bool> linear_failed{false};
std::atomic<int64_t> linear_fallbacks{0};

// A linear layer for training: aten's `linear` forward; in backward the input's and the
// weight's gradients as aten's addmm backward takes them for a contiguous weight
// (grad.mm(weight) and grad^T.mm(x)), the bias's by the column-sum kernel where it covers the gradient (else,
// or should it fail, aten's sum over the rows).
struct TrainLinear : public torch::autograd::Function<TrainLinear> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& weight, const at::Tensor& bias) {
    ctx->save_for_backward({x, weight});
    return at::linear(x, weight, bias);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &weight = saved[1];
    int64_t out = weight.size(0), in = weight.size(1);
    auto dy = grads[0].contiguous().view({-1, out});
    at::Tensor dx, dw, db;
    if (ctx->needs_input_grad(0)) dx = dy.mm(weight).view(x.sizes());
    if (ctx->needs_input_grad(1)) dw = dy.t().mm(x.reshape({-1, in}));
    if (ctx->needs_input_grad(2)) {
      if (!linear_failed.load() && column_sums_cover(dy)) {
        try {
          db = column_sums(dy);
        } catch (const c10::OutOfMemoryError&) {
          throw;  // as aten's own allocations would
        } catch (const std::exception&) {
          linear_failed.store(true);
          linear_fallbacks.fetch_add(1);
        }
      }
      if (!db.defined()) db = dy.sum(0);
    }
    return {dx, dw, db};
  }
};
}  // namespace

// A linear layer of `x` with `weight` and `bias` (x's dtype and device) for training:
// differentiable, its bias gradient by the column-sum kernel on CUDA (`TrainLinear`).
// Returns a new tensor, or nullptr on an error.
extern "C" at::Tensor* distill_train_linear(at::Tensor* x, at::Tensor* weight, at::Tensor* bias,
                                            char* err, size_t err_len) {
  try {
    TORCH_CHECK(weight->dim() == 2 && x->dim() >= 1 && x->size(-1) == weight->size(1),
                "train_linear: x's width must be the weight's input width");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight->size(0),
                "train_linear: the bias must have one value per output");
    for (const at::Tensor* t : {weight, bias})
      TORCH_CHECK(t->scalar_type() == x->scalar_type() && t->device() == x->device(),
                  "train_linear: weight and bias must be x's dtype and device");
    return new at::Tensor(TrainLinear::apply(*x, *weight, *bias));
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return nullptr;
  }
}

// How many times the column-sum kernel of `distill_train_linear` failed (its first failure
// turns it off for the process).
extern "C" int64_t distill_train_linear_fallbacks() { return linear_fallbacks.load(); }
