// Residual add + LayerNorm fused into one kernel for inference: `LayerNorm(x + residual)`
// in one pass over memory instead of two kernels (aten's add, then aten's layer_norm), for
// bf16/fp16 activations on CUDA. There is no CUDA compiler at build time, so the kernel is
// compiled at run time by NVRTC and launched through the CUDA driver API, both loaded with
// dlopen (nvrtc.h): nothing extra is linked, and a machine without them keeps aten's
// kernels. Conventions of the entry points: common.h.
//
// Numerics follow aten's two kernels: the sum is rounded to the activation dtype (as the
// add's output is), then mean and biased variance are taken in fp32 and the result is
// (v - mean) * rsqrt(var + eps) * gamma + beta, rounded once.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>
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

// The compiled kernel for (device, hidden size, dtype), built on first use.
CUfunction kernel(int device, int64_t h, bool bf16) {
  static std::mutex mu;
  static std::map<Key, CUfunction> cache;
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
  CUfunction f = nullptr;
  distill::check(drv.module_get_function(&f, module, "add_layer_norm"), "cuModuleGetFunction");
  cache[key] = f;
  return f;
}
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
    auto f = kernel(device, h, dtype == at::kBFloat16);
    if (rows > 0) {
      auto stream = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(xc.device());
      void* handle = stream.id() == 0 ? nullptr : stream.native_handle();
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
