// Matrix products of 16-bit values through cuBLASLt with each shape's algorithm chosen
// once (gemm.cpp), for the linear layers of training (linear.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace distill::gemm {
// D = op(A) op(B) (+ bias, one value per row of D) in cuBLAS's column-major terms: A is
// m x k (k x m when `trans_a`), B k x n (n x k when `trans_b`), D m x n with leading
// dimension ldd; all of `like`'s dtype (bf16 or fp16) and device, on its current stream,
// accumulated in fp32. Returns false, having done nothing, where cuBLASLt is not there,
// offers no algorithm for the shape or refuses it; the caller then multiplies with aten.
bool matmul(const at::Tensor& like, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
            const void* a, int64_t lda, const void* b, int64_t ldb, void* d, int64_t ldd,
            const void* bias);

// Products `matmul` has run, and those it left to aten, in this process.
int64_t ran();
int64_t declined();
}  // namespace distill::gemm
