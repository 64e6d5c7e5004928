// Autograd's state: whether it records, and a parameter's gradient. Conventions: common.h.
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <exception>

#include "common.h"

// Whether autograd records operations on this thread (torch.is_grad_enabled()).
extern "C" int distill_grad_enabled() { return at::GradMode::is_enabled() ? 1 : 0; }

// Clear the gradients of `n` tensors (`t.grad = None` in Python).
extern "C" int distill_reset_grads(at::Tensor** ts, size_t n, char* err, size_t err_len) {
  try {
    for (size_t i = 0; i < n; ++i) ts[i]->mutable_grad().reset();
    return 0;
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}

// Make `grad` the gradient of `param` (`param.grad = grad` in Python): the backward pass
// then adds into it in place.
extern "C" int distill_set_grad(at::Tensor* param, at::Tensor* grad, char* err, size_t err_len) {
  try {
    TORCH_CHECK(grad->sizes() == param->sizes() && grad->scalar_type() == param->scalar_type() &&
                    grad->device() == param->device(),
                "set_grad: the gradient's shape, dtype or device is not the parameter's");
    param->mutable_grad() = *grad;
    return 0;
  } catch (const std::exception& e) {
    distill::report(e, err, err_len);
    return -1;
  }
}
