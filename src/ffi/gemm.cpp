// Matrix products through cuBLASLt with each shape's algorithm chosen once (gemm.h).
// aten asks cuBLAS to choose an algorithm on every product; in a trace of the teacher's
// training step on an H200 that was about 40 us of host time per product, 74 products a
// step, and the host, not the GPU, bounded the step (BENCHMARKS.md). Here the first
// product of a shape (sizes, transposes, leading dimensions, the operands' alignments,
// bias or none) asks cuBLASLt's heuristic once; the descriptors and the algorithm are kept
// for the process, and every later product of that shape is one cublasLtMatmul call.
// cuBLASLt's functions are found in the process (libtorch_cuda loads the library): the
// binary does not link it, and without it `matmul` declines and aten multiplies.
// Conventions: common.h.
#include "gemm.h"

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <dlfcn.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "kernels.h"

namespace {
std::atomic<int64_t> ran_count{0};
std::atomic<int64_t> declined_count{0};
}  // namespace

namespace {
// cuBLASLt's C interface, the part used here, declared from cublasLt.h (CUDA 12 and 13;
// PyPI's CUDA headers lack what that header includes): opaque handles, enum values, the
// layouts of an algorithm and of a heuristic's result.
using cublasStatus_t = int;  // 0: success
using cublasLtHandle_t = void*;
using cublasLtMatmulDesc_t = void*;
using cublasLtMatrixLayout_t = void*;
using cublasLtMatmulPreference_t = void*;
using cudaStream_t = void*;
struct cublasLtMatmulAlgo_t {
  uint64_t data[8];
};
struct cublasLtMatmulHeuristicResult_t {
  cublasLtMatmulAlgo_t algo;
  size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
};
constexpr int CUBLAS_COMPUTE_32F = 68;
constexpr int CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14;
constexpr int32_t CUBLAS_OP_N = 0, CUBLAS_OP_T = 1;
constexpr int CUBLASLT_MATMUL_DESC_TRANSA = 3, CUBLASLT_MATMUL_DESC_TRANSB = 4,
              CUBLASLT_MATMUL_DESC_EPILOGUE = 7, CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8;
constexpr uint32_t CUBLASLT_EPILOGUE_BIAS = 4;
constexpr int CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
              CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
              CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
              CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
              CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8;

using Create = cublasStatus_t (*)(cublasLtHandle_t*);
using DescCreate = cublasStatus_t (*)(cublasLtMatmulDesc_t*, int, int);
using DescSet = cublasStatus_t (*)(cublasLtMatmulDesc_t, int, const void*, size_t);
using LayoutCreate = cublasStatus_t (*)(cublasLtMatrixLayout_t*, int, uint64_t, uint64_t,
                                        int64_t);
using PrefCreate = cublasStatus_t (*)(cublasLtMatmulPreference_t*);
using PrefSet = cublasStatus_t (*)(cublasLtMatmulPreference_t, int, const void*, size_t);
using PrefDestroy = cublasStatus_t (*)(cublasLtMatmulPreference_t);
using Heuristic = cublasStatus_t (*)(cublasLtHandle_t, cublasLtMatmulDesc_t,
                                     cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                     cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                     cublasLtMatmulPreference_t, int,
                                     cublasLtMatmulHeuristicResult_t*, int*);
using Matmul = cublasStatus_t (*)(cublasLtHandle_t, cublasLtMatmulDesc_t, const void*,
                                  const void*, cublasLtMatrixLayout_t, const void*,
                                  cublasLtMatrixLayout_t, const void*, const void*,
                                  cublasLtMatrixLayout_t, void*, cublasLtMatrixLayout_t,
                                  const cublasLtMatmulAlgo_t*, void*, size_t, cudaStream_t);
}  // namespace

namespace {
// cuBLASLt's entry points, as loaded in this process.
struct Lt {
  Create create = nullptr;
  DescCreate desc_create = nullptr;
  DescSet desc_set = nullptr;
  LayoutCreate layout_create = nullptr;
  PrefCreate pref_create = nullptr;
  PrefSet pref_set = nullptr;
  PrefDestroy pref_destroy = nullptr;
  Heuristic heuristic = nullptr;
  Matmul matmul = nullptr;
  bool ok = false;
};

template <typename F>
void find(F& f, const char* name) {
  f = reinterpret_cast<F>(dlsym(RTLD_DEFAULT, name));
}

const Lt& lt() {
  static const Lt api = [] {
    Lt a;
    find(a.create, "cublasLtCreate");
    find(a.desc_create, "cublasLtMatmulDescCreate");
    find(a.desc_set, "cublasLtMatmulDescSetAttribute");
    find(a.layout_create, "cublasLtMatrixLayoutCreate");
    find(a.pref_create, "cublasLtMatmulPreferenceCreate");
    find(a.pref_set, "cublasLtMatmulPreferenceSetAttribute");
    find(a.pref_destroy, "cublasLtMatmulPreferenceDestroy");
    find(a.heuristic, "cublasLtMatmulAlgoGetHeuristic");
    find(a.matmul, "cublasLtMatmul");
    a.ok = a.create && a.desc_create && a.desc_set && a.layout_create && a.pref_create &&
           a.pref_set && a.pref_destroy && a.heuristic && a.matmul;
    return a;
  }();
  return api;
}

// The workspace cuBLASLt's algorithms may use (aten gives its own 32 MiB on Hopper).
constexpr size_t kWorkspace = 32u << 20;

// The largest power of two, up to 16, that divides the address (cuBLASLt's alignment
// preference).
uint32_t alignment(const void* p) {
  auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t n = 16;
  while (n > 1 && a % n != 0) n /= 2;
  return n;
}

struct Key {
  int device;
  bool bf16, trans_a, trans_b, bias;
  int64_t m, n, k, lda, ldb, ldd;
  uint32_t align_a, align_b, align_d, align_bias;
  bool operator<(const Key& o) const {
    return std::tie(device, bf16, trans_a, trans_b, bias, m, n, k, lda, ldb, ldd, align_a,
                    align_b, align_d, align_bias) <
           std::tie(o.device, o.bf16, o.trans_a, o.trans_b, o.bias, o.m, o.n, o.k, o.lda, o.ldb,
                    o.ldd, o.align_a, o.align_b, o.align_d, o.align_bias);
  }
};

// A shape's descriptors and algorithm (`usable` false: cuBLASLt offered none, and aten
// multiplies that shape).
struct Plan {
  bool usable = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

struct State {
  std::mutex mu;
  std::map<Key, Plan> plans;
  std::map<int, cublasLtHandle_t> handles;
  std::map<std::pair<int, void*>, at::Tensor> workspaces;  // by (device, stream)
};

State& state() {
  static State* s = new State();  // lives to the end of the process
  return *s;
}

bool ok(cublasStatus_t s) { return s == 0; }

// The plan of `key`, made on first use (under the state's lock).
Plan make_plan(const Lt& api, cublasLtHandle_t handle, const Key& key) {
  Plan p;
  auto dtype = key.bf16 ? CUDA_R_16BF : CUDA_R_16F;
  int32_t ta = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  int32_t tb = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (!ok(api.desc_create(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F)) ||
      !ok(api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta))) ||
      !ok(api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb))))
    return p;
  if (key.bias) {
    uint32_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    if (!ok(api.desc_set(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue))))
      return p;
  }
  // Stored column-major: A is (trans_a ? k x m : m x k), B (trans_b ? n x k : k x n).
  if (!ok(api.layout_create(&p.a, dtype, key.trans_a ? key.k : key.m,
                            key.trans_a ? key.m : key.k, key.lda)) ||
      !ok(api.layout_create(&p.b, dtype, key.trans_b ? key.n : key.k,
                            key.trans_b ? key.k : key.n, key.ldb)) ||
      !ok(api.layout_create(&p.d, dtype, key.m, key.n, key.ldd)))
    return p;
  cublasLtMatmulPreference_t pref = nullptr;
  if (!ok(api.pref_create(&pref))) return p;
  uint64_t workspace = kWorkspace;
  bool set = ok(api.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                             sizeof(workspace)));
  const std::pair<int, uint32_t> aligns[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d}};
  for (const auto& [attr, value] : aligns)
    set = set && ok(api.pref_set(pref, attr, &value, sizeof(value)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (set && ok(api.heuristic(handle, p.desc, p.a, p.b, p.d, p.d, pref, 1, &result, &found)) &&
      found > 0 && ok(result.state) && result.workspaceSize <= kWorkspace) {
    p.algo = result.algo;
    p.usable = true;
  }
  api.pref_destroy(pref);
  return p;
}
}  // namespace

namespace distill::gemm {
bool matmul(const at::Tensor& like, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
            const void* a, int64_t lda, const void* b, int64_t ldb, void* d, int64_t ldd,
            const void* bias) {
  const auto& api = lt();
  auto dtype = like.scalar_type();
  if (!api.ok || !like.is_cuda() || (dtype != at::kBFloat16 && dtype != at::kHalf) || m <= 0 ||
      n <= 0 || k <= 0) {
    declined_count.fetch_add(1);
    return false;
  }
  int device = like.device().index();
  Key key{device,     dtype == at::kBFloat16, trans_a,      trans_b,      bias != nullptr,
          m,          n,                      k,            lda,          ldb,
          ldd,        alignment(a),           alignment(b), alignment(d), alignment(bias)};
  c10::DeviceGuard guard(like.device());
  void* stream = distill::kernels::stream_of(like);
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  auto h = s.handles.find(device);
  if (h == s.handles.end()) {
    cublasLtHandle_t handle = nullptr;
    if (!ok(api.create(&handle))) {
      declined_count.fetch_add(1);
      return false;
    }
    h = s.handles.emplace(device, handle).first;
  }
  auto p = s.plans.find(key);
  if (p == s.plans.end()) p = s.plans.emplace(key, make_plan(api, h->second, key)).first;
  const Plan& plan = p->second;
  if (!plan.usable) {
    declined_count.fetch_add(1);
    return false;
  }
  auto w = s.workspaces.find({device, stream});
  if (w == s.workspaces.end()) {
    auto buffer = at::empty({static_cast<int64_t>(kWorkspace)}, like.options().dtype(at::kByte));
    w = s.workspaces.emplace(std::make_pair(device, stream), buffer).first;
  }
  if (bias && !ok(api.desc_set(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                               sizeof(bias)))) {
    declined_count.fetch_add(1);
    return false;
  }
  const float one = 1.f, zero = 0.f;
  if (!ok(api.matmul(h->second, plan.desc, &one, a, plan.a, b, plan.b, &zero, d, plan.d, d,
                     plan.d, &plan.algo, w->second.mutable_data_ptr(), kWorkspace,
                     stream))) {
    declined_count.fetch_add(1);
    return false;
  }
  ran_count.fetch_add(1);
  return true;
}
}  // namespace distill::gemm


namespace distill::gemm {
int64_t ran() { return ran_count.load(); }
int64_t declined() { return declined_count.load(); }
}  // namespace distill::gemm
