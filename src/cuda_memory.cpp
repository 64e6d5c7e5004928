// Peak GPU memory of libtorch's caching allocator (what torch.cuda.max_memory_allocated
// reports), for `distill bench`. tch does not expose the allocator's statistics; this
// reaches them through c10's device-generic allocator interface. Errors (no CUDA) give -1.
#include <c10/core/CachingDeviceAllocator.h>
#include <cstdint>
extern "C" int64_t distill_cuda_peak_allocated(int device) {
  try {
    auto* a = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    auto stats = a->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    return stats.allocated_bytes[0].peak;
  } catch (...) { return -1; }
}
extern "C" int distill_cuda_reset_peak(int device) {
  try {
    c10::getDeviceAllocator(c10::DeviceType::CUDA)->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (...) { return -1; }
}
