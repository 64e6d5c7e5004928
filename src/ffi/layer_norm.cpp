// Residual add + LayerNorm fused into one kernel for inference: `LayerNorm(x + residual)`
// in one pass over memory instead of two kernels (aten's add, then aten's layer_norm), for
// bf16/fp16 activations on CUDA. And LayerNorm for training (`distill_train_layer_norm`):
// aten's forward and input gradient, with the weight's and bias's gradients taken by a
// kernel that splits the rows over blocks (aten's, below 64k rows, runs one block per 32
// columns over all rows: 12 blocks at MiniLM's width, 189 us a call at 44k rows on an H200).
// And the linear layers for training (`distill_train_linear`): aten's forward and
// products, the bias's gradient (a sum over the rows) by a column-sum kernel of the same
// kind. There is no CUDA compiler at build time, so the kernel is
// compiled at run time by NVRTC and launched through the CUDA driver API, both loaded with
// dlopen (nvrtc.h): nothing extra is linked, and a machine without them keeps aten's
// kernels. Conventions of the entry points: common.h.
//
// Numerics follow aten's two kernels: the sum is rounded to the activation dtype (as the
// add's output is), then mean and biased variance are taken in fp32 and the result is
// (v - mean) * rsqrt(var + eps) * gamma + beta, rounded once.
#include <ATen/core/Tensor.h>
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
#include "nvrtc.h"

namespace {
using distill::CUcontext;
using distill::CUdevice;
using distill::CUfunction;
using distill::CUmodule;
using distill::nvrtcProgram;
using distill::nvrtcResult;

// One warp per row of H values; each lane holds H/32 of them in registers (pairs of
// 16-bit values, read as 32-bit words: a warp reads 128 contiguous bytes at a time).
const char* kSource = R"CUDA(
typedef unsigned short u16;
__device__ __forceinline__ float to_f(unsigned v) {
#if BF16
  return __uint_as_float(v << 16);
#else
  float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((u16)v)); return f;
#endif
}
__device__ __forceinline__ unsigned from_f(float f) {
  u16 r;
#if BF16
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
#else
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(f));
#endif
  return r;
}
#define PAIRS (H / 64)
#define ROWS_PER_BLOCK 8
extern "C" __global__ void __launch_bounds__(256) add_layer_norm(
    const unsigned* __restrict__ x, const unsigned* __restrict__ res,
    const unsigned* __restrict__ gamma, const unsigned* __restrict__ beta,
    unsigned* __restrict__ out, long long rows, float eps) {
  long long row = (long long)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const unsigned* xr = x + row * (H / 2);
  const unsigned* rr = res + row * (H / 2);
  float v[2 * PAIRS];
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < PAIRS; ++j) {
    unsigned a = xr[lane + 32 * j], b = rr[lane + 32 * j];
    float lo = to_f(from_f(to_f(a & 0xffffu) + to_f(b & 0xffffu)));
    float hi = to_f(from_f(to_f(a >> 16) + to_f(b >> 16)));
    v[2 * j] = lo;
    v[2 * j + 1] = hi;
    sum += lo + hi;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  float mean = sum * (1.f / H);
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < 2 * PAIRS; ++i) {
    float d = v[i] - mean;
    sq += d * d;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, o);
  float rstd = rsqrtf(sq * (1.f / H) + eps);
  unsigned* o_row = out + row * (H / 2);
#pragma unroll
  for (int j = 0; j < PAIRS; ++j) {
    unsigned g = gamma[lane + 32 * j], b = beta[lane + 32 * j];
    float lo = (v[2 * j] - mean) * rstd * to_f(g & 0xffffu) + to_f(b & 0xffffu);
    float hi = (v[2 * j + 1] - mean) * rstd * to_f(g >> 16) + to_f(b >> 16);
    o_row[lane + 32 * j] = from_f(lo) | (from_f(hi) << 16);
  }
}
// A LayerNorm's weight and bias gradients, per block of `per_block` rows: block (x, y)
// sums columns 32x .. 32x + 31 over its rows, dy * (x - mean) * rstd and dy, in fp32 (as
// aten's kernel does), and writes them to row y of `part_g` and `part_b` ([blocks_y, H]).
extern "C" __global__ void __launch_bounds__(256) layer_norm_weight_grads(
    const u16* __restrict__ dy, const u16* __restrict__ x, const float* __restrict__ mean,
    const float* __restrict__ rstd, float* __restrict__ part_g, float* __restrict__ part_b,
    long long rows, long long per_block) {
  int c = blockIdx.x * 32 + threadIdx.x;
  long long first = (long long)blockIdx.y * per_block;
  long long end = first + per_block < rows ? first + per_block : rows;
  float g = 0.f, b = 0.f;
  for (long long r = first + threadIdx.y; r < end; r += 8) {
    float d = to_f(dy[r * H + c]);
    g += d * ((to_f(x[r * H + c]) - mean[r]) * rstd[r]);
    b += d;
  }
  __shared__ float sg[8][32], sb[8][32];
  sg[threadIdx.y][threadIdx.x] = g;
  sb[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0) {
#pragma unroll
    for (int k = 1; k < 8; ++k) {
      g += sg[k][threadIdx.x];
      b += sb[k][threadIdx.x];
    }
    part_g[(long long)blockIdx.y * H + c] = g;
    part_b[(long long)blockIdx.y * H + c] = b;
  }
}
// A bias's gradient, the column sums of dy ([rows, w] with w a multiple of 4, read as
// 8-byte words: 4 columns a lane): block (x, y) of 8 warps sums columns 128x .. 128x + 127
// over its part of the rows (per_block of them from y * per_block, each warp every 8th
// row), in fp32, into row y of `part` ([blocks_y, w]).
extern "C" __global__ void __launch_bounds__(256) column_sums(
    const uint2* __restrict__ dy, float* __restrict__ part, long long rows,
    long long per_block, long long w) {
  long long groups = w / 4, g = (long long)blockIdx.x * 32 + threadIdx.x;
  long long first = (long long)blockIdx.y * per_block;
  long long end = first + per_block < rows ? first + per_block : rows;
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
  if (g < groups) {
#pragma unroll 4
    for (long long r = first + threadIdx.y; r < end; r += 8) {
      uint2 v = dy[r * groups + g];
      s0 += to_f(v.x & 0xffffu);
      s1 += to_f(v.x >> 16);
      s2 += to_f(v.y & 0xffffu);
      s3 += to_f(v.y >> 16);
    }
  }
  __shared__ float sh[8][128];
  int c = threadIdx.x * 4;
  sh[threadIdx.y][c] = s0;
  sh[threadIdx.y][c + 1] = s1;
  sh[threadIdx.y][c + 2] = s2;
  sh[threadIdx.y][c + 3] = s3;
  __syncthreads();
  if (threadIdx.y == 0 && g < groups) {
#pragma unroll
    for (int k = 1; k < 8; ++k) {
      s0 += sh[k][c];
      s1 += sh[k][c + 1];
      s2 += sh[k][c + 2];
      s3 += sh[k][c + 3];
    }
    float* out = part + (long long)blockIdx.y * w + 4 * g;
    out[0] = s0;
    out[1] = s1;
    out[2] = s2;
    out[3] = s3;
  }
}
// The parts' sums, rounded once: block x of 8 warps takes columns 32x .. 32x + 31, warp k
// sums parts k, k + 8, ... in order, and the 8 warps' sums are added in order.
extern "C" __global__ void __launch_bounds__(256) column_sums_finish(
    const float* __restrict__ part, u16* __restrict__ out, long long parts, long long w) {
  long long c = (long long)blockIdx.x * 32 + threadIdx.x;
  float s = 0.f;
  if (c < w) {
#pragma unroll 4
    for (long long y = threadIdx.y; y < parts; y += 8) s += part[y * w + c];
  }
  __shared__ float sh[8][32];
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < w) {
#pragma unroll
    for (int k = 1; k < 8; ++k) s += sh[k][threadIdx.x];
    out[c] = (u16)from_f(s);
  }
}
)CUDA";

// Compile the kernel for hidden size `h` and dtype (bf16 or fp16) with NVRTC; `arch` is
// "sm_90" style (binary) or "compute_90" style (PTX). Returns the image.
std::string compile(int64_t h, bool bf16, const std::string& arch) {
  const auto& api = distill::nvrtc();
  nvrtcProgram prog = nullptr;
  if (api.create(&prog, kSource, "add_layer_norm.cu", 0, nullptr, nullptr) != 0)
    throw std::runtime_error("nvrtcCreateProgram failed");
  std::string def_h = "-DH=" + std::to_string(h), def_t = bf16 ? "-DBF16=1" : "-DBF16=0",
              opt_arch = "--gpu-architecture=" + arch;
  const char* opts[] = {def_h.c_str(), def_t.c_str(), opt_arch.c_str(), "-default-device"};
  nvrtcResult r = api.compile(prog, 4, opts);
  if (r != 0) {
    size_t n = 0;
    api.log_size(prog, &n);
    std::string log(n, '\0');
    api.log(prog, &log[0]);
    api.destroy(&prog);
    throw std::runtime_error("NVRTC could not compile add_layer_norm for " + arch + ": " + log);
  }
  bool binary = arch.rfind("sm_", 0) == 0;
  size_t n = 0;
  (binary ? api.cubin_size : api.ptx_size)(prog, &n);
  std::string image(n, '\0');
  (binary ? api.cubin : api.ptx)(prog, &image[0]);
  api.destroy(&prog);
  return image;
}

struct Key {
  int device;
  int64_t h;
  bool bf16;
  bool operator<(const Key& o) const {
    return std::tie(device, h, bf16) < std::tie(o.device, o.h, o.bf16);
  }
};

// The module's kernels.
struct Kernels {
  CUfunction add_layer_norm;
  CUfunction weight_grads;
  CUfunction column_sums;
  CUfunction column_sums_finish;
};

// The compiled kernels for (device, hidden size, dtype), built on first use.
Kernels kernels(int device, int64_t h, bool bf16) {
  static std::mutex mu;
  static std::map<Key, Kernels> cache;
  std::lock_guard<std::mutex> lock(mu);
  Key key{device, h, bf16};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const auto& drv = distill::driver();
  CUcontext ctx = nullptr;
  distill::check(drv.ctx_get_current(&ctx), "cuCtxGetCurrent");
  CUdevice dev = 0;
  distill::check(drv.device_get(&dev, device), "cuDeviceGet");
  if (!ctx) {
    distill::check(drv.primary_ctx_retain(&ctx, dev), "cuDevicePrimaryCtxRetain");
    distill::check(drv.ctx_set_current(ctx), "cuCtxSetCurrent");
  }
  int major = 0, minor = 0;
  distill::check(drv.device_get_attribute(&major, 75, dev), "cuDeviceGetAttribute(major)");
  distill::check(drv.device_get_attribute(&minor, 76, dev), "cuDeviceGetAttribute(minor)");
  std::string cc = std::to_string(major * 10 + minor), image;
  try {
    image = compile(h, bf16, "sm_" + cc);
  } catch (const std::exception&) {
    // An NVRTC older than the GPU: PTX for the driver to finish.
    image = compile(h, bf16, "compute_" + cc);
  }
  CUmodule module = nullptr;
  distill::check(drv.module_load_data(&module, image.data()), "cuModuleLoadData");
  Kernels k{};
  distill::check(drv.module_get_function(&k.add_layer_norm, module, "add_layer_norm"),
                 "cuModuleGetFunction(add_layer_norm)");
  distill::check(drv.module_get_function(&k.weight_grads, module, "layer_norm_weight_grads"),
                 "cuModuleGetFunction(layer_norm_weight_grads)");
  distill::check(drv.module_get_function(&k.column_sums, module, "column_sums"),
                 "cuModuleGetFunction(column_sums)");
  distill::check(drv.module_get_function(&k.column_sums_finish, module, "column_sums_finish"),
                 "cuModuleGetFunction(column_sums_finish)");
  cache[key] = k;
  return k;
}

// The current stream of `t`'s device, as the driver API takes it.
void* stream_of(const at::Tensor& t) {
  auto stream = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(t.device());
  return stream.id() == 0 ? nullptr : stream.native_handle();
}

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
    auto f = kernels(xc.device().index(), h, xc.scalar_type() == at::kBFloat16).weight_grads;
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

// Whether the weight-gradient kernel has failed in this process, and how many backward
// passes fell back to aten's because it did.
std::atomic<bool> failed{false};
std::atomic<int64_t> fallbacks{0};

// LayerNorm over the last dimension for training: aten's forward and input gradient; the
// weight's and bias's gradients by `weight_grads` where it covers the tensors (else, or
// should it fail, aten's).
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
    const auto &x = saved[0], &weight = saved[1], &bias = saved[2], &mean = saved[3],
               &rstd = saved[4];
    // Once the kernel has failed (no NVRTC, say), aten's for the rest of the process.
    auto dy = grads[0].contiguous();
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
    return {dx, dw, db, at::Tensor()};
  }
};

// The column-sum kernels do not depend on the hidden size: they come from the module of
// the smallest one.
constexpr int64_t kColumnModuleH = 64;

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
  auto k = kernels(c.device().index(), kColumnModuleH, c.scalar_type() == at::kBFloat16);
  void* stream = stream_of(c);
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

// Whether the column-sum kernel has failed in this process, and how many backward passes
// of `TrainLinear` fell back to aten's sum because it did.
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

// How many backward passes of `distill_train_linear` fell back to aten's bias gradient
// because the kernel failed (its first failure turns it off for the process).
extern "C" int64_t distill_train_linear_fallbacks() { return linear_fallbacks.load(); }

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
    // The kernel reads 32-bit words: contiguous, and 4-byte aligned (a view that starts at
    // an odd element is copied).
    auto words = [](const at::Tensor& t) {
      auto c = t.contiguous();
      return reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 4 == 0 ? c : c.clone();
    };
    auto xc = words(*x), rc = words(*residual), wc = words(*weight), bc = words(*bias);
    // The module is loaded into, and the kernel launched on, x's device's context.
    c10::DeviceGuard guard(xc.device());
    auto out = at::empty_like(xc);
    long long rows = xc.numel() / h;
    int device = xc.device().index();
    auto f = kernels(device, h, dtype == at::kBFloat16).add_layer_norm;
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

// How many backward passes of `distill_train_layer_norm` fell back to aten's weight
// gradients because the kernel failed (its first failure turns it off for the process).
extern "C" int64_t distill_train_layer_norm_fallbacks() { return fallbacks.load(); }

// Compile the add + LayerNorm kernel for hidden size `h`, bf16, to PTX for `arch`
// ("compute_90"): checks that NVRTC is present and accepts the source, without a GPU.
// Returns the PTX size, or -1 with the message in `err`.
extern "C" int64_t distill_add_layer_norm_compile(int64_t h, const char* arch, char* err,
                                                  size_t err_len) {
  try {
    return static_cast<int64_t>(compile(h, true, arch).size());
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}
