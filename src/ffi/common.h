// Conventions of distill's C entry points into libtorch (one .cpp file per concern, the
// Rust side in the .rs file of the same name): tensors arrive as tch's handles
// (`at::Tensor*`); every function catches C++ exceptions and returns -1 (or a negative
// value, or nullptr for a tensor) and, where it can, writes the message into the
// caller's buffer `err` of `err_len` bytes, NUL-terminated.
#pragma once

#include <cstddef>
#include <cstring>
#include <exception>

namespace distill {
// Write `e`'s message into the caller's error buffer (truncated to fit).
inline void report(const std::exception& e, char* err, size_t len) {
  if (err && len) {
    std::strncpy(err, e.what(), len - 1);
    err[len - 1] = 0;
  }
}
}  // namespace distill
