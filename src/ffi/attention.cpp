// Variable-length (packed, unpadded) flash attention, `_flash_attention_forward` with
// cumulative sequence lengths, as flash-attn's `flash_attn_varlen_func`; differentiable
// through the dispatcher's autograd. Conventions: common.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <cstdint>
#include <exception>
#include <tuple>

#include "common.h"

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
    distill::report(e, err, err_len);
    return nullptr;
  }
}
