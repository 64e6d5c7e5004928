//! Link libtorch_cuda unconditionally and record an rpath to the libtorch that the
//! build used, so the binary runs without LD_LIBRARY_PATH and uses a GPU when present.
use std::path::PathBuf;
use std::process::Command;

/// The C++ side of `src/ffi/` (see `src/ffi/mod.rs`), and the headers they share.
const FFI_SOURCES: [&str; 10] = [
    "src/ffi/memory.cpp",
    "src/ffi/optim.cpp",
    "src/ffi/attention.cpp",
    "src/ffi/profiler.cpp",
    "src/ffi/autograd.cpp",
    "src/ffi/nvrtc.cpp",
    "src/ffi/kernels.cpp",
    "src/ffi/layer_norm.cpp",
    "src/ffi/linear.cpp",
    "src/ffi/distributed.cpp",
];
const FFI_HEADERS: [&str; 3] = ["src/ffi/common.h", "src/ffi/kernels.h", "src/ffi/nvrtc.h"];

fn libtorch_lib_dir() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    if let Ok(dir) = std::env::var("LIBTORCH_LIB") {
        return Some(PathBuf::from(dir).join("lib"));
    }
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(dir).join("lib"));
    }
    // Same interpreter choice as torch-sys with LIBTORCH_USE_PYTORCH=1.
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import torch, os; print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.trim()).join("lib"))
}

fn torch_version() -> String {
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    Command::new(python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(distill_ffi)");
    println!(
        "cargo:rustc-env=DISTILL_LIBTORCH_VERSION={}",
        torch_version()
    );
    let Some(lib) = libtorch_lib_dir() else {
        println!("cargo:warning=libtorch not located; no rpath recorded (set LIBTORCH_USE_PYTORCH=1 with the venv active)");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // libtorch functions tch does not expose (src/ffi/*.cpp, one file per concern), against
    // libtorch's own headers.
    for header in FFI_HEADERS {
        println!("cargo:rerun-if-changed={header}");
    }
    let include = lib.with_file_name("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(&include)
        .warnings(false);
    // ProcessGroupNCCL lives in libtorch_cuda (src/ffi/distributed.cpp).
    if lib.join("libtorch_cuda.so").exists() {
        build.define("DISTILL_NCCL", None);
    }
    for source in FFI_SOURCES {
        println!("cargo:rerun-if-changed={source}");
        build.file(source);
    }
    build.compile("distill_ffi");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-cfg=distill_ffi");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
