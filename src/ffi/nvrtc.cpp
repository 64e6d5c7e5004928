// NVRTC and the CUDA driver API loaded with dlopen (see nvrtc.h).
#include "nvrtc.h"

#include <dirent.h>
#include <dlfcn.h>
#include <link.h>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace distill {
namespace {
template <typename F>
void bind(void* lib, const char* name, F& f) {
  void* p = dlsym(lib, name);
  if (!p) throw std::runtime_error(std::string("symbol ") + name + " not found");
  f = reinterpret_cast<F>(p);
}

// The directory of the first loaded shared object whose file name starts with `prefix`
// (dl_iterate_phdr), or "" when none is loaded.
std::string loaded_dir(const std::string& prefix) {
  struct Query {
    const std::string& prefix;
    std::string dir;
  } q{prefix, ""};
  dl_iterate_phdr(
      [](struct dl_phdr_info* info, size_t, void* out) -> int {
        auto* q = static_cast<Query*>(out);
        std::string name = info->dlpi_name ? info->dlpi_name : "";
        auto slash = name.rfind('/');
        if (slash == std::string::npos || name.compare(slash + 1, q->prefix.size(), q->prefix) != 0)
          return 0;
        q->dir = name.substr(0, slash);
        return 1;
      },
      &q);
  return q.dir;
}

void* open_first(const std::vector<std::string>& names, std::string& tried) {
  for (const auto& n : names) {
    if (void* h = dlopen(n.c_str(), RTLD_NOW | RTLD_GLOBAL)) return h;
    tried += " " + n;
  }
  return nullptr;
}

// NVRTC opens libnvrtc-builtins.so.X.Y by name when it compiles; when libnvrtc itself came
// from a path outside the loader's search path, load the builtins from its directory first
// so that the name resolves to the loaded copy.
void preload_builtins() {
  std::string dir = loaded_dir("libnvrtc.so");
  if (dir.empty()) return;
  if (DIR* d = opendir(dir.c_str())) {
    while (struct dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.rfind("libnvrtc-builtins.so.", 0) == 0)
        dlopen((dir + "/" + n).c_str(), RTLD_NOW | RTLD_GLOBAL);
    }
    closedir(d);
  }
}

// `Api` filled once by `init` (which throws on a missing library or symbol); every later
// call returns it, or throws the first call's error again.
template <typename Api>
const Api& load_once(void (*init)(Api&)) {
  static std::once_flag once;
  static Api api;
  static std::string error;
  std::call_once(once, [&] {
    try {
      init(api);
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  if (!error.empty()) throw std::runtime_error(error);
  return api;
}
}  // namespace

const Nvrtc& nvrtc() {
  return load_once<Nvrtc>([](Nvrtc& api) {
    // libtorch's own directory (where libc10.so lies): the pip wheels keep the CUDA
    // libraries at ../../nvidia/cu13/lib from there.
    std::string dir = loaded_dir("libc10.so"), tried;
    std::vector<std::string> names;
    for (const char* v : {"13", "12"}) {
      names.push_back(std::string("libnvrtc.so.") + v);
      names.push_back(dir + "/../../nvidia/cu" + v + "/lib/libnvrtc.so." + v);
      names.push_back(dir + "/../../nvidia/cuda_nvrtc/lib/libnvrtc.so." + v);
    }
    void* lib = open_first(names, tried);
    if (!lib) throw std::runtime_error("libnvrtc not found (tried" + tried + ")");
    preload_builtins();
    bind(lib, "nvrtcCreateProgram", api.create);
    bind(lib, "nvrtcCompileProgram", api.compile);
    bind(lib, "nvrtcGetProgramLogSize", api.log_size);
    bind(lib, "nvrtcGetProgramLog", api.log);
    bind(lib, "nvrtcGetCUBINSize", api.cubin_size);
    bind(lib, "nvrtcGetCUBIN", api.cubin);
    bind(lib, "nvrtcGetPTXSize", api.ptx_size);
    bind(lib, "nvrtcGetPTX", api.ptx);
    bind(lib, "nvrtcDestroyProgram", api.destroy);
  });
}

const Driver& driver() {
  return load_once<Driver>([](Driver& api) {
    std::string tried;
    void* lib = open_first({"libcuda.so.1", "libcuda.so"}, tried);
    if (!lib) throw std::runtime_error("CUDA driver not found (tried" + tried + ")");
    bind(lib, "cuModuleLoadData", api.module_load_data);
    bind(lib, "cuModuleGetFunction", api.module_get_function);
    bind(lib, "cuLaunchKernel", api.launch);
    bind(lib, "cuCtxGetCurrent", api.ctx_get_current);
    bind(lib, "cuCtxSetCurrent", api.ctx_set_current);
    bind(lib, "cuDevicePrimaryCtxRetain", api.primary_ctx_retain);
    bind(lib, "cuDeviceGet", api.device_get);
    bind(lib, "cuDeviceGetAttribute", api.device_get_attribute);
  });
}

void check(CUresult r, const char* what) {
  if (r != 0) throw std::runtime_error(std::string(what) + " failed (CUresult " + std::to_string(r) + ")");
}
}  // namespace distill
