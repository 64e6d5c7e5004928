// GPU memory: the peak of the CUDA caching allocator (`torch.cuda.max_memory_allocated`),
// for `distill bench`; pinned, non-blocking host-to-device copies (`pin_memory()` without
// the device argument that tch passes and libtorch now warns about), and device-to-host
// copies that the host waits for through an event instead of a whole-stream sync, and
// copies to the host made later, from another thread, on a stream of the device's pool.
// Conventions: common.h.
#include <ATen/core/Tensor.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <cstdint>
#include <exception>
#include <memory>
#include <vector>

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

// `t` in pinned (page-locked) host memory: `t` itself when it is pinned already, else a
// pinned copy. Returns a new tensor, or nullptr on an error.
extern "C" at::Tensor* distill_pin(at::Tensor* t, char* err, size_t err_len) {
  try {
    return new at::Tensor(t->pin_memory());
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return nullptr;
  }
}

// Copy CUDA tensor `t` into pinned host memory without waiting for the device
// (`t.to("cpu", non_blocking=True)`), and record an event on the device's current stream
// after the copy: `*event` receives it, for `distill_event_wait` and `distill_event_free`.
// The host tensor holds the values once the event has completed. Returns a new tensor,
// or nullptr on an error (no event then).
extern "C" at::Tensor* distill_download_async(at::Tensor* t, void** event, char* err,
                                              size_t err_len) {
  try {
    auto host = t->to(at::TensorOptions().device(at::kCPU), /*non_blocking=*/true);
    auto done = std::make_unique<c10::Event>(t->device().type());
    done->record(c10::impl::getDeviceGuardImpl(t->device().type())->getStream(t->device()));
    *event = done.release();
    return new at::Tensor(std::move(host));
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return nullptr;
  }
}

// Wait until the work recorded before `event` has completed on the device (only that
// work: later launches keep running). 0, or -1 on an error.
extern "C" int distill_event_wait(void* event, char* err, size_t err_len) {
  try {
    static_cast<c10::Event*>(event)->synchronize();
    return 0;
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}

extern "C" void distill_event_free(void* event) { delete static_cast<c10::Event*>(event); }

// An event recorded on the current stream of `t`'s device, after the work queued so far
// (for `distill_download_after`, and `distill_event_free`); nullptr on an error.
extern "C" void* distill_event_mark(at::Tensor* t, char* err, size_t err_len) {
  try {
    auto type = t->device().type();
    auto mark = std::make_unique<c10::Event>(type);
    mark->record(c10::impl::getDeviceGuardImpl(type)->getStream(t->device()));
    return mark.release();
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return nullptr;
  }
}

// Copy the `n` tensors `ts` of one device to ordinary host memory, into `out` (new
// tensors), on a high-priority stream of the device's pool (which does not wait for the
// current stream; the low-priority pool is where ProcessGroupNCCL takes its stream), once
// the work before `mark` has completed. The calling thread waits for these copies alone,
// while work queued after `mark` goes on. 0, or -1 on an error (no tensor in `out` then).
extern "C" int distill_download_after(at::Tensor** ts, size_t n, void* mark, at::Tensor** out,
                                      char* err, size_t err_len) {
  try {
    if (n == 0) return 0;
    auto device = ts[0]->device();
    auto side = c10::impl::getDeviceGuardImpl(device.type())
                    ->getStreamFromGlobalPool(device, /*isHighPriority=*/true);
    c10::StreamGuard guard(side);
    static_cast<c10::Event*>(mark)->block(side);
    std::vector<at::Tensor> host;
    host.reserve(n);
    for (size_t i = 0; i < n; ++i) host.push_back(ts[i]->to(at::TensorOptions().device(at::kCPU)));
    for (size_t i = 0; i < n; ++i) out[i] = new at::Tensor(std::move(host[i]));
    return 0;
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}
