// NVRTC (the runtime compiler that ships with libtorch's CUDA libraries, as aten's own
// jiterator uses it) and the CUDA driver API, both loaded with dlopen on first use:
// nothing extra is linked, and a machine without them keeps aten's kernels. Used by
// layer_norm.cpp to compile and launch its kernel.
#pragma once

#include <cstddef>

namespace distill {
typedef int CUresult;
typedef void* CUmodule;
typedef void* CUfunction;
typedef void* CUstream;
typedef void* CUcontext;
typedef int CUdevice;
typedef int nvrtcResult;
typedef void* nvrtcProgram;

// The NVRTC functions distill calls.
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

// The CUDA driver functions distill calls.
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

// NVRTC, loaded on the first call (libnvrtc.so.13 or .12, from the loader's search path or
// the pip wheels' CUDA directories beside libtorch). Throws std::runtime_error when it is
// missing, on this and every later call.
const Nvrtc& nvrtc();

// The CUDA driver (libcuda.so.1), loaded on the first call; throws as `nvrtc()` does.
const Driver& driver();

// Throw std::runtime_error naming `what` unless `r` is CUDA_SUCCESS.
void check(CUresult r, const char* what);
}  // namespace distill
