// The source of distill's CUDA kernels, compiled at run time by NVRTC (there is no CUDA
// compiler at build time) for the hidden size and dtype of the tensors, one module per
// device, hidden size and dtype (kernels.h). Conventions of the entry points: common.h.
#include <ATen/core/Tensor.h>
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
using distill::CUcontext;
using distill::CUdevice;
using distill::CUmodule;
using distill::nvrtcProgram;

// The kernels, for hidden size H (a compile-time constant) and 16-bit values of one dtype
// (BF16: bf16, else fp16). The LayerNorms run one warp per row of H values; each lane holds
// H/32 of them in registers (pairs of 16-bit values, read as 32-bit words: a warp reads 128
// contiguous bytes at a time).
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
// One warp per row: LayerNorm(x + residual) with gamma and beta; for training (TRAIN) also
// the rounded sum (`sum_out`, which the backward pass normalises again) and the row's mean
// and 1/std in fp32 (`mean_out`, `rstd_out`), as aten's layer_norm returns them.
template <bool TRAIN>
__device__ __forceinline__ void add_norm(
    const unsigned* __restrict__ x, const unsigned* __restrict__ res,
    const unsigned* __restrict__ gamma, const unsigned* __restrict__ beta,
    unsigned* __restrict__ out, unsigned* __restrict__ sum_out, float* __restrict__ mean_out,
    float* __restrict__ rstd_out, long long rows, float eps) {
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
    unsigned lo16 = from_f(to_f(a & 0xffffu) + to_f(b & 0xffffu));
    unsigned hi16 = from_f(to_f(a >> 16) + to_f(b >> 16));
    if (TRAIN) sum_out[row * (H / 2) + lane + 32 * j] = lo16 | (hi16 << 16);
    float lo = to_f(lo16);
    float hi = to_f(hi16);
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
  if (TRAIN && lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
  unsigned* o_row = out + row * (H / 2);
#pragma unroll
  for (int j = 0; j < PAIRS; ++j) {
    unsigned g = gamma[lane + 32 * j], b = beta[lane + 32 * j];
    float lo = (v[2 * j] - mean) * rstd * to_f(g & 0xffffu) + to_f(b & 0xffffu);
    float hi = (v[2 * j + 1] - mean) * rstd * to_f(g >> 16) + to_f(b >> 16);
    o_row[lane + 32 * j] = from_f(lo) | (from_f(hi) << 16);
  }
}
extern "C" __global__ void __launch_bounds__(256) add_layer_norm(
    const unsigned* __restrict__ x, const unsigned* __restrict__ res,
    const unsigned* __restrict__ gamma, const unsigned* __restrict__ beta,
    unsigned* __restrict__ out, long long rows, float eps) {
  add_norm<false>(x, res, gamma, beta, out, nullptr, nullptr, nullptr, rows, eps);
}
extern "C" __global__ void __launch_bounds__(256) add_layer_norm_train(
    const unsigned* __restrict__ x, const unsigned* __restrict__ res,
    const unsigned* __restrict__ gamma, const unsigned* __restrict__ beta,
    unsigned* __restrict__ out, unsigned* __restrict__ sum_out, float* __restrict__ mean_out,
    float* __restrict__ rstd_out, long long rows, float eps) {
  add_norm<true>(x, res, gamma, beta, out, sum_out, mean_out, rstd_out, rows, eps);
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
// The compute copies' gradients moved to the masters' (copies.rs): for each of `count`
// spans k (blockIdx.y), dst[k][i] += widen(src[k][i]) in fp32, each sum rounded once, as
// aten's add of a 16-bit tensor into an fp32 one computes it; one launch for up to
// MAX_SPANS parts (kMaxSpans, kernels.h, defines it).
struct Spans {
  const u16* src[MAX_SPANS];
  float* dst[MAX_SPANS];
  long long n[MAX_SPANS];
};
extern "C" __global__ void __launch_bounds__(256) add_widened(Spans s, int count) {
  int k = blockIdx.y;
  if (k >= count) return;
  const u16* __restrict__ src = s.src[k];
  float* __restrict__ dst = s.dst[k];
  long long n = s.n[k], stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] += to_f(src[i]);
}
)CUDA";

}  // namespace

namespace distill::kernels {
std::string compile(int64_t h, bool bf16, const std::string& arch) {
  const auto& api = distill::nvrtc();
  nvrtcProgram prog = nullptr;
  if (api.create(&prog, kSource, "add_layer_norm.cu", 0, nullptr, nullptr) != 0)
    throw std::runtime_error("nvrtcCreateProgram failed");
  std::string def_h = "-DH=" + std::to_string(h), def_t = bf16 ? "-DBF16=1" : "-DBF16=0",
              def_spans = "-DMAX_SPANS=" + std::to_string(kMaxSpans),
              opt_arch = "--gpu-architecture=" + arch;
  const char* opts[] = {def_h.c_str(), def_t.c_str(), def_spans.c_str(), opt_arch.c_str(),
                        "-default-device"};
  nvrtcResult r = api.compile(prog, 5, opts);
  if (r != 0) {
    size_t n = 0;
    api.log_size(prog, &n);
    std::string log(n, '\0');
    api.log(prog, &log[0]);
    api.destroy(&prog);
    throw std::runtime_error("NVRTC could not compile distill's kernels for " + arch + ": " + log);
  }
  bool binary = arch.rfind("sm_", 0) == 0;
  size_t n = 0;
  (binary ? api.cubin_size : api.ptx_size)(prog, &n);
  std::string image(n, '\0');
  (binary ? api.cubin : api.ptx)(prog, &image[0]);
  api.destroy(&prog);
  return image;
}
}  // namespace distill::kernels

namespace {
struct Key {
  int device;
  int64_t h;
  bool bf16;
  bool operator<(const Key& o) const {
    return std::tie(device, h, bf16) < std::tie(o.device, o.h, o.bf16);
  }
};

}  // namespace

namespace distill::kernels {
Kernels get(int device, int64_t h, bool bf16) {
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
  distill::check(drv.module_get_function(&k.add_layer_norm_train, module, "add_layer_norm_train"),
                 "cuModuleGetFunction(add_layer_norm_train)");
  distill::check(drv.module_get_function(&k.weight_grads, module, "layer_norm_weight_grads"),
                 "cuModuleGetFunction(layer_norm_weight_grads)");
  distill::check(drv.module_get_function(&k.column_sums, module, "column_sums"),
                 "cuModuleGetFunction(column_sums)");
  distill::check(drv.module_get_function(&k.column_sums_finish, module, "column_sums_finish"),
                 "cuModuleGetFunction(column_sums_finish)");
  distill::check(drv.module_get_function(&k.add_widened, module, "add_widened"),
                 "cuModuleGetFunction(add_widened)");
  cache[key] = k;
  return k;
}

void* stream_of(const at::Tensor& t) {
  auto stream = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(t.device());
  return stream.id() == 0 ? nullptr : stream.native_handle();
}
}  // namespace distill::kernels

// Compile the add + LayerNorm kernel for hidden size `h`, bf16, to PTX for `arch`
// ("compute_90"): checks that NVRTC is present and accepts the source, without a GPU.
// Returns the PTX size, or -1 with the message in `err`.
extern "C" int64_t distill_add_layer_norm_compile(int64_t h, const char* arch, char* err,
                                                  size_t err_len) {
  try {
    return static_cast<int64_t>(distill::kernels::compile(h, true, arch).size());
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}
