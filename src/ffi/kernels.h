// distill's CUDA kernels (kernels.cpp): one NVRTC module per device, hidden size and dtype,
// compiled from one source on first use and launched through the CUDA driver API (both
// loaded with dlopen, nvrtc.h): the fused add + LayerNorm for inference and for training,
// the LayerNorm's weight gradients (layer_norm.cpp), the column sums of the linear
// layers' bias gradients (linear.cpp) and the compute copies' gradients added into the
// masters' (optim.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "nvrtc.h"

namespace distill::kernels {
// A module's kernels.
struct Kernels {
  CUfunction add_layer_norm;
  CUfunction add_layer_norm_train;
  CUfunction weight_grads;
  CUfunction column_sums;
  CUfunction column_sums_finish;
  CUfunction add_widened;
};

// The spans one launch of `add_widened` takes (its `MAX_SPANS`, defined from this).
constexpr int kMaxSpans = 64;

// The kernels that do not depend on the hidden size (the column sums, `add_widened`) come
// from the module of the smallest one.
constexpr int64_t kAnyModuleH = 64;

// The compiled kernels for (device, hidden size, dtype), built on first use.
Kernels get(int device, int64_t h, bool bf16);

// The kernels' source compiled for hidden size `h` and dtype (bf16 or fp16) with NVRTC;
// `arch` is "sm_90" style (binary) or "compute_90" style (PTX). Returns the image.
std::string compile(int64_t h, bool bf16, const std::string& arch);

// The current stream of `t`'s device, as the driver API takes it.
void* stream_of(const at::Tensor& t);
}  // namespace distill::kernels
