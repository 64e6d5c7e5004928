// Autograd's thread-local state.
#include <ATen/core/grad_mode.h>

// Whether autograd records operations on this thread (torch.is_grad_enabled()).
extern "C" int distill_grad_enabled() { return at::GradMode::is_enabled() ? 1 : 0; }
