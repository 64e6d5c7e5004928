// GPU memory: the peak of the CUDA caching allocator (`torch.cuda.max_memory_allocated`),
// for `distill bench`; pinned, non-blocking host-to-device copies (`pin_memory()` without
// the device argument that tch passes and libtorch now warns about). Conventions:
// common.h.
#include <ATen/core/Tensor.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <cstdint>
#include <exception>

#include "common.h"

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
    distill::report(e, err, err_len);
    return nullptr;
  }
}
