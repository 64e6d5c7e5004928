//! Device and precision settings: parsed and validated before any model is loaded.
use crate::error::{Error, Result};
use tch::{Device, Kind};

/// Where tensors live: `auto` picks the first CUDA device when one is visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Setting {
            key: "device".into(),
            message: format!("`{s}` is not one of auto, cpu, cuda, cuda:N"),
        };
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse().map(DeviceSpec::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Resolve to a tch device, failing clearly when CUDA is requested but absent.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto => Ok(Device::cuda_if_available()),
            DeviceSpec::Cuda(n) => {
                let count = tch::Cuda::device_count();
                if (n as i64) < count {
                    Ok(Device::Cuda(n))
                } else {
                    Err(Error::Setting {
                        key: "device".into(),
                        message: format!(
                            "cuda:{n} requested but {count} CUDA device(s) are visible \
                             (check the driver, CUDA_VISIBLE_DEVICES, or use --device cpu)"
                        ),
                    })
                }
            }
        }
    }
}

/// Numeric precision of the model weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 on CUDA, fp32 on CPU.
    Auto,
    /// bf16 wherever the processor computes it natively (CUDA, or a CPU with bf16
    /// instructions), fp32 elsewhere.
    Fast,
    Fp32,
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Precision::Auto),
            "fast" => Ok(Precision::Fast),
            "fp32" | "float32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(Error::Setting {
                key: "precision".into(),
                message: format!("`{s}` is not one of auto, fast, fp32, bf16"),
            }),
        }
    }
}

impl Precision {
    /// The tensor kind used on `device`: `auto` is bf16 on CUDA and fp32 on CPU (the
    /// exact-parity path); `fast` is bf16 on the CPU too where it has bf16 instructions
    /// (AVX512_BF16, which the processors with AMX also have; BF16 on Arm). bf16 on any
    /// CPU is allowed; it is fast only on those.
    pub fn resolve(self, device: Device) -> Result<Kind> {
        Ok(self.resolve_with(device, cpu_has_bf16()))
    }

    fn resolve_with(self, device: Device, cpu_bf16: bool) -> Kind {
        match (self, device) {
            (Precision::Fast, Device::Cpu) if cpu_bf16 => Kind::BFloat16,
            (Precision::Fp32, _) | (Precision::Auto | Precision::Fast, Device::Cpu) => Kind::Float,
            (Precision::Auto | Precision::Fast | Precision::Bf16, _) => Kind::BFloat16,
        }
    }
}

/// Whether this CPU has bf16 matrix instructions (what oneDNN needs for fast bf16 GEMMs).
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("bf16")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Where, in what precision and in what batches a command runs its models (the options
/// `distill encode`, `eval` and `rerank` share).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Runtime {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// auto (bf16 on CUDA, fp32 on CPU), fast (bf16 on CUDA and on CPUs with bf16
    /// instructions, fp32 on others), fp32 or bf16.
    #[arg(long, default_value = "auto")]
    pub precision: Precision,
    /// Texts (or query-document pairs) per batch (batches are sorted by length).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

impl Runtime {
    /// The tch device and tensor kind, once the batch size is checked (at least 1).
    pub fn resolve(&self) -> Result<(Device, Kind)> {
        if self.batch_size == 0 {
            return Err(Error::Setting {
                key: "batch-size".into(),
                message: "must be at least 1".into(),
            });
        }
        let device = self.device.resolve()?;
        Ok((device, self.precision.resolve(device)?))
    }
}

/// libtorch's intra-op threads set to one while it lives, and set back on drop: host
/// operations run inline on the thread that drives the GPU instead of waking a team of
/// threads per operation, which would compete with the threads preparing the next work
/// (one per core) and stall the launches. The setting is libtorch's, for the process:
/// other threads' host operations meanwhile run with it too.
pub struct InlineHostOps(i32);

impl InlineHostOps {
    pub fn new() -> Self {
        let before = tch::get_num_threads();
        tch::set_num_threads(1);
        InlineHostOps(before)
    }

    /// One while `device` is a GPU; nothing on the CPU, where libtorch's threads do the
    /// model's own work.
    pub fn on(device: Device) -> Option<Self> {
        device.is_cuda().then(Self::new)
    }
}

impl Default for InlineHostOps {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for InlineHostOps {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        let err = "gpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("`gpu`"), "{err}");
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn precision_on_cpu() {
        assert_eq!(Precision::Auto.resolve(Device::Cpu).unwrap(), Kind::Float);
        assert_eq!(
            Precision::Auto.resolve(Device::Cuda(0)).unwrap(),
            Kind::BFloat16
        );
        assert_eq!(
            Precision::Bf16.resolve(Device::Cpu).unwrap(),
            Kind::BFloat16
        );
        assert_eq!(
            Precision::Fp32.resolve(Device::Cuda(0)).unwrap(),
            Kind::Float
        );
        assert_eq!("fast".parse::<Precision>().unwrap(), Precision::Fast);
        let fast = |device, cpu_bf16| Precision::Fast.resolve_with(device, cpu_bf16);
        assert_eq!(fast(Device::Cpu, true), Kind::BFloat16);
        assert_eq!(fast(Device::Cpu, false), Kind::Float);
        assert_eq!(fast(Device::Cuda(0), false), Kind::BFloat16);
        assert_eq!(Precision::Auto.resolve_with(Device::Cpu, true), Kind::Float);
    }
}
