// Collectives between the processes of a data-parallel run, through libtorch's own c10d:
// a TCPStore rendezvous (MASTER_ADDR / MASTER_PORT, rank 0 serving it), then
// ProcessGroupNCCL for CUDA tensors or ProcessGroupGloo for CPU tensors. Conventions:
// common.h.
//
// The PyPI wheel's headers for the two backends cannot be compiled here:
// ProcessGroupGloo.hpp includes gloo's headers, which the wheel does not ship, and
// ProcessGroupNCCL.hpp needs nvcc's `crt/` headers. So both are declared below with only
// what is called: their exported constructors (and the options' constructor or factory).
// Each object is used only through c10d::Backend's virtual functions; its storage is
// over-sized (`reserved_`, with the default alignment, so that libtorch's deleting
// destructor frees it as it was allocated), and its constructor, vtable and destructor
// are libtorch's.
// NCCL is in libtorch_cuda, linked when present (DISTILL_NCCL).
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "common.h"

namespace c10d {
// Larger than libtorch's own objects (ProcessGroupGloo and ProcessGroupNCCL are a few
// KiB in 2.11, their options less than one).
constexpr size_t kReserved = 1 << 16;

class TORCH_API ProcessGroupGloo : public Backend {
 public:
  struct TORCH_API Options : public Backend::Options {
    static c10::intrusive_ptr<Options> create_default(std::chrono::milliseconds timeout);
  };
  explicit ProcessGroupGloo(const c10::intrusive_ptr<Store>& store, int rank, int size,
                            c10::intrusive_ptr<Options> options);
  ~ProcessGroupGloo() override;

 private:
  char reserved_[kReserved];
};

#ifdef DISTILL_NCCL
class TORCH_API ProcessGroupNCCL : public Backend {
 public:
  struct Options : Backend::Options {
    explicit Options(bool is_high_priority_stream);
    ~Options() override;

   private:
    char reserved_[kReserved];
  };
  ProcessGroupNCCL(c10::intrusive_ptr<Store> store, int rank, int size,
                   c10::intrusive_ptr<Options> options);
  ~ProcessGroupNCCL() override;

 private:
  char reserved_[kReserved];
};
#endif
}  // namespace c10d

namespace {
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

void wait(const c10::intrusive_ptr<c10d::Work>& work) {
  if (!work->wait()) {
    throw std::runtime_error("a collective did not complete");
  }
}
}  // namespace

// Join the group of `size` processes as `rank`, meeting at host:port (rank 0 serves the
// store there). `nccl` picks ProcessGroupNCCL for the tensors of CUDA device `nccl - 1`
// (made the process's current device), else (0) Gloo for CPU tensors. `listen_fd` >= 0:
// rank 0 serves the store on this socket, already bound to `port` and listening (handed
// down by the process that chose the port, so that no other process can take it between).
extern "C" void* distill_pg_new(int nccl, const char* host, int port, int rank, int size,
                                int64_t timeout_ms, int listen_fd, char* err,
                                size_t err_len) {
  try {
    if (nccl) {
      c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)
          ->setDevice(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(nccl - 1)));
    }
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = rank == 0;
    opts.numWorkers = static_cast<std::size_t>(size);
    opts.waitWorkers = true;
    opts.timeout = timeout;
    if (listen_fd >= 0 && rank == 0) {
      opts.masterListenFd = listen_fd;
    }
    auto group = std::make_unique<Group>();
    group->store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    if (nccl) {
#ifdef DISTILL_NCCL
      auto options = c10::make_intrusive<c10d::ProcessGroupNCCL::Options>(false);
      options->timeout = timeout;
      group->backend =
          c10::make_intrusive<c10d::ProcessGroupNCCL>(group->store, rank, size, options);
#else
      throw std::runtime_error("this binary was built without libtorch_cuda (no NCCL)");
#endif
    } else {
      auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
      group->backend =
          c10::make_intrusive<c10d::ProcessGroupGloo>(group->store, rank, size, options);
    }
    return group.release();
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return nullptr;
  }
}

// Leave the group (NCCL's communicators are shut down first, as destroy_process_group
// does) and free it.
extern "C" void distill_pg_free(void* group) {
  auto* g = static_cast<Group*>(group);
  try {
    g->backend->shutdown();
  } catch (...) {
  }
  delete g;
}

// The `n` tensors as one flat tensor over their memory when they lie end to end in one
// buffer, in order (an optimizer's gradients made views of one buffer); undefined otherwise.
static at::Tensor end_to_end(at::Tensor** ts, size_t n) {
  const auto& first = *ts[0];
  auto size = static_cast<int64_t>(first.element_size());
  auto start = static_cast<const char*>(first.data_ptr());
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const auto& t = *ts[i];
    if (!t.is_contiguous() || t.device() != first.device() ||
        !t.storage().is_alias_of(first.storage()) ||
        static_cast<const char*>(t.data_ptr()) != start + total * size) {
      return at::Tensor();
    }
    total += t.numel();
  }
  // as_strided checks that the storage holds `total` elements from the first's offset.
  return first.as_strided({total}, {1});
}

// Sum `n` tensors of one dtype over the group, in place: when they lie end to end in one
// buffer, one collective on that memory; otherwise flattened into one buffer (one
// collective), then copied back by one multi-tensor copy (`_foreach_copy_`: a launch or
// two on CUDA, where a copy per tensor cost the host a launch each).
extern "C" int distill_pg_allreduce_sum(void* group, at::Tensor** ts, size_t n, char* err,
                                        size_t err_len) {
  try {
    auto& backend = static_cast<Group*>(group)->backend;
    for (size_t i = 0; i < n; ++i) {
      TORCH_CHECK(ts[i]->scalar_type() == ts[0]->scalar_type(),
                  "allreduce_sum: tensors of different dtypes");
    }
    if (n == 0) return 0;
    if (auto whole = end_to_end(ts, n); whole.defined()) {
      std::vector<at::Tensor> flat{whole};
      wait(backend->allreduce(flat, c10d::AllreduceOptions{}));
      return 0;
    }
    std::vector<at::Tensor> parts;
    parts.reserve(n);
    for (size_t i = 0; i < n; ++i) parts.push_back(ts[i]->reshape({-1}));
    std::vector<at::Tensor> flat{at::cat(parts)};
    wait(backend->allreduce(flat, c10d::AllreduceOptions{}));
    std::vector<at::Tensor> dst, src;
    dst.reserve(n);
    src.reserve(n);
    int64_t at = 0;
    for (size_t i = 0; i < n; ++i) {
      auto len = ts[i]->numel();
      dst.push_back(*ts[i]);
      src.push_back(flat[0].narrow(0, at, len).view(ts[i]->sizes()));
      at += len;
    }
    at::_foreach_copy_(dst, src, /*non_blocking=*/false);
    return 0;
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}

// Every rank's `input` (the same shape on each), concatenated along dim 0 in rank order.
extern "C" at::Tensor* distill_pg_allgather(void* group, at::Tensor* input, char* err,
                                            size_t err_len) {
  try {
    auto& backend = static_cast<Group*>(group)->backend;
    auto size = backend->getSize();
    std::vector<at::Tensor> inputs{input->contiguous()};
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < size; ++r) outputs[0].push_back(at::empty_like(inputs[0]));
    wait(backend->allgather(outputs, inputs, c10d::AllgatherOptions{}));
    return new at::Tensor(at::cat(outputs[0], 0));
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return nullptr;
  }
}

// Overwrite `n` tensors with rank `root`'s, in place.
extern "C" int distill_pg_broadcast(void* group, at::Tensor** ts, size_t n, int root,
                                    char* err, size_t err_len) {
  try {
    auto& backend = static_cast<Group*>(group)->backend;
    for (size_t i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*ts[i]};
      c10d::BroadcastOptions opts;
      opts.rootRank = root;
      wait(backend->broadcast(one, opts));
    }
    return 0;
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}
