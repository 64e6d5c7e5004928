// The Kineto profiler (`torch.profiler`), for `distill bench --profile`: a Chrome trace of
// the operators and CUDA kernels, comparable with the one `bench_torch.py` writes.
// Conventions: common.h.
#include <torch/csrc/autograd/profiler_kineto.h>
#include <exception>
#include <set>

#include "common.h"

namespace {
std::set<torch::profiler::impl::ActivityType> activities(bool cuda, bool host) {
  std::set<torch::profiler::impl::ActivityType> a;
  if (host || !cuda) a.insert(torch::profiler::impl::ActivityType::CPU);
  if (cuda) a.insert(torch::profiler::impl::ActivityType::CUDA);
  return a;
}
torch::profiler::impl::ProfilerConfig profiler_config() {
  return torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::KINETO);
}
}  // namespace

// Start the Kineto profiler: CPU operators (unless `host` is 0 and `cuda` is not), and
// CUDA kernels when `cuda`. Without the operators the kernels' timeline is the
// unprofiled one: recording every operator slows a host-bound step.
extern "C" int distill_profiler_start(int cuda, int host, char* err, size_t err_len) {
  try {
    auto a = activities(cuda != 0, host != 0);
    torch::autograd::profiler::prepareProfiler(profiler_config(), a);
    torch::autograd::profiler::enableProfiler(profiler_config(), a);
    return 0;
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}

// Stop the profiler and write its Chrome trace (JSON) to `path`.
extern "C" int distill_profiler_stop(const char* path, char* err, size_t err_len) {
  try {
    torch::autograd::profiler::disableProfiler()->save(path);
    return 0;
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}
