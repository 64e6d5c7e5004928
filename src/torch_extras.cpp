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
// - Residual add + LayerNorm fused into one kernel for inference on CUDA, compiled at run
//   time by NVRTC (end of this file).
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_foreach_zero.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/stack.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <dirent.h>
#include <dlfcn.h>
#include <link.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <stdexcept>
#include <tuple>
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

// ---------------------------------------------------------------------------------------
// Fused residual add + LayerNorm for inference: `LayerNorm(x + residual)` in one pass over
// memory instead of two kernels (aten's add, then aten's layer_norm), for bf16/fp16
// activations on CUDA. There is no CUDA compiler at build time, so the kernel is compiled
// at run time by NVRTC (the runtime compiler that ships with libtorch's CUDA libraries,
// as aten's own jiterator does) and launched through the CUDA driver API, both loaded with
// dlopen: nothing extra is linked, and a machine without them keeps aten's kernels.
//
// Numerics follow aten's two kernels: the sum is rounded to the activation dtype (as the
// add's output is), then mean and biased variance are taken in fp32 and the result is
// (v - mean) * rsqrt(var + eps) * gamma + beta, rounded once.
namespace fused {
typedef int CUresult;
typedef void* CUmodule;
typedef void* CUfunction;
typedef void* CUstream;
typedef void* CUcontext;
typedef int CUdevice;
typedef int nvrtcResult;
typedef void* nvrtcProgram;

struct Nvrtc {
  nvrtcResult (*create)(nvrtcProgram*, const char*, const char*, int, const char* const*,
                        const char* const*);
  nvrtcResult (*compile)(nvrtcProgram, int, const char* const*);
  nvrtcResult (*log_size)(nvrtcProgram, size_t*);
  nvrtcResult (*log)(nvrtcProgram, char*);
  nvrtcResult (*cubin_size)(nvrtcProgram, size_t*);
  nvrtcResult (*cubin)(nvrtcProgram, char*);
  nvrtcResult (*ptx_size)(nvrtcProgram, size_t*);
  nvrtcResult (*ptx)(nvrtcProgram, char*);
  nvrtcResult (*destroy)(nvrtcProgram*);
};

struct Driver {
  CUresult (*module_load_data)(CUmodule*, const void*);
  CUresult (*module_get_function)(CUfunction*, CUmodule, const char*);
  CUresult (*launch)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                     unsigned, CUstream, void**, void**);
  CUresult (*ctx_get_current)(CUcontext*);
  CUresult (*ctx_set_current)(CUcontext);
  CUresult (*primary_ctx_retain)(CUcontext*, CUdevice);
  CUresult (*device_get)(CUdevice*, int);
  CUresult (*device_get_attribute)(int*, int, CUdevice);
};

template <typename F>
void bind(void* lib, const char* name, F& f) {
  void* p = dlsym(lib, name);
  if (!p) throw std::runtime_error(std::string("symbol ") + name + " not found");
  f = reinterpret_cast<F>(p);
}

// The directory of the first loaded shared object whose file name starts with `prefix`
// (dl_iterate_phdr), or "" when none is loaded.
std::string loaded_dir(const std::string& prefix) {
  struct Query {
    const std::string& prefix;
    std::string dir;
  } q{prefix, ""};
  dl_iterate_phdr(
      [](struct dl_phdr_info* info, size_t, void* out) -> int {
        auto* q = static_cast<Query*>(out);
        std::string name = info->dlpi_name ? info->dlpi_name : "";
        auto slash = name.rfind('/');
        if (slash == std::string::npos || name.compare(slash + 1, q->prefix.size(), q->prefix) != 0)
          return 0;
        q->dir = name.substr(0, slash);
        return 1;
      },
      &q);
  return q.dir;
}

void* open_first(const std::vector<std::string>& names, std::string& tried) {
  for (const auto& n : names) {
    if (void* h = dlopen(n.c_str(), RTLD_NOW | RTLD_GLOBAL)) return h;
    tried += " " + n;
  }
  return nullptr;
}

// NVRTC opens libnvrtc-builtins.so.X.Y by name when it compiles; when libnvrtc itself came
// from a path outside the loader's search path, load the builtins from its directory first
// so that the name resolves to the loaded copy.
void preload_builtins() {
  std::string dir = loaded_dir("libnvrtc.so");
  if (dir.empty()) return;
  if (DIR* d = opendir(dir.c_str())) {
    while (struct dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.rfind("libnvrtc-builtins.so.", 0) == 0)
        dlopen((dir + "/" + n).c_str(), RTLD_NOW | RTLD_GLOBAL);
    }
    closedir(d);
  }
}

// `Api` filled once by `init` (which throws on a missing library or symbol); every later
// call returns it, or throws the first call's error again.
template <typename Api>
const Api& load_once(void (*init)(Api&)) {
  static std::once_flag once;
  static Api api;
  static std::string error;
  std::call_once(once, [&] {
    try {
      init(api);
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  if (!error.empty()) throw std::runtime_error(error);
  return api;
}

const Nvrtc& nvrtc() {
  return load_once<Nvrtc>([](Nvrtc& api) {
    // libtorch's own directory (where libc10.so lies): the pip wheels keep the CUDA
    // libraries at ../../nvidia/cu13/lib from there.
    std::string dir = loaded_dir("libc10.so"), tried;
    std::vector<std::string> names;
    for (const char* v : {"13", "12"}) {
      names.push_back(std::string("libnvrtc.so.") + v);
      names.push_back(dir + "/../../nvidia/cu" + v + "/lib/libnvrtc.so." + v);
      names.push_back(dir + "/../../nvidia/cuda_nvrtc/lib/libnvrtc.so." + v);
    }
    void* lib = open_first(names, tried);
    if (!lib) throw std::runtime_error("libnvrtc not found (tried" + tried + ")");
    preload_builtins();
    bind(lib, "nvrtcCreateProgram", api.create);
    bind(lib, "nvrtcCompileProgram", api.compile);
    bind(lib, "nvrtcGetProgramLogSize", api.log_size);
    bind(lib, "nvrtcGetProgramLog", api.log);
    bind(lib, "nvrtcGetCUBINSize", api.cubin_size);
    bind(lib, "nvrtcGetCUBIN", api.cubin);
    bind(lib, "nvrtcGetPTXSize", api.ptx_size);
    bind(lib, "nvrtcGetPTX", api.ptx);
    bind(lib, "nvrtcDestroyProgram", api.destroy);
  });
}

const Driver& driver() {
  return load_once<Driver>([](Driver& api) {
    std::string tried;
    void* lib = open_first({"libcuda.so.1", "libcuda.so"}, tried);
    if (!lib) throw std::runtime_error("CUDA driver not found (tried" + tried + ")");
    bind(lib, "cuModuleLoadData", api.module_load_data);
    bind(lib, "cuModuleGetFunction", api.module_get_function);
    bind(lib, "cuLaunchKernel", api.launch);
    bind(lib, "cuCtxGetCurrent", api.ctx_get_current);
    bind(lib, "cuCtxSetCurrent", api.ctx_set_current);
    bind(lib, "cuDevicePrimaryCtxRetain", api.primary_ctx_retain);
    bind(lib, "cuDeviceGet", api.device_get);
    bind(lib, "cuDeviceGetAttribute", api.device_get_attribute);
  });
}

void check(CUresult r, const char* what) {
  if (r != 0) throw std::runtime_error(std::string(what) + " failed (CUresult " + std::to_string(r) + ")");
}

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
  const auto& api = nvrtc();
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
  const auto& drv = driver();
  CUcontext ctx = nullptr;
  check(drv.ctx_get_current(&ctx), "cuCtxGetCurrent");
  CUdevice dev = 0;
  check(drv.device_get(&dev, device), "cuDeviceGet");
  if (!ctx) {
    check(drv.primary_ctx_retain(&ctx, dev), "cuDevicePrimaryCtxRetain");
    check(drv.ctx_set_current(ctx), "cuCtxSetCurrent");
  }
  int major = 0, minor = 0;
  check(drv.device_get_attribute(&major, 75, dev), "cuDeviceGetAttribute(major)");
  check(drv.device_get_attribute(&minor, 76, dev), "cuDeviceGetAttribute(minor)");
  std::string cc = std::to_string(major * 10 + minor), image;
  try {
    image = compile(h, bf16, "sm_" + cc);
  } catch (const std::exception&) {
    // An NVRTC older than the GPU: PTX for the driver to finish.
    image = compile(h, bf16, "compute_" + cc);
  }
  CUmodule module = nullptr;
  check(drv.module_load_data(&module, image.data()), "cuModuleLoadData");
  CUfunction f = nullptr;
  check(drv.module_get_function(&f, module, "add_layer_norm"), "cuModuleGetFunction");
  cache[key] = f;
  return f;
}
}  // namespace fused

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
    auto f = fused::kernel(device, h, dtype == at::kBFloat16);
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
      fused::check(fused::driver().launch(f, blocks, 1, 1, 256, 1, 1, 0, handle, args, nullptr),
                   "cuLaunchKernel(add_layer_norm)");
    }
    return new at::Tensor(out);
  } catch (const std::exception& e) {
    report(e, err, err_len);
    return nullptr;
  }
}

// Compile the add + LayerNorm kernel for hidden size `h`, bf16, to PTX for `arch`
// ("compute_90"): checks that NVRTC is present and accepts the source, without a GPU.
// Returns the PTX size, or -1 with the message in `err`.
extern "C" int64_t distill_add_layer_norm_compile(int64_t h, const char* arch, char* err,
                                                  size_t err_len) {
  try {
    return static_cast<int64_t>(fused::compile(h, true, arch).size());
  } catch (const std::exception& e) {
    report(e, err, err_len);
    return -1;
  }
}

// Whether autograd records operations on this thread (torch.is_grad_enabled()).
extern "C" int distill_grad_enabled() { return at::GradMode::is_enabled() ? 1 : 0; }
