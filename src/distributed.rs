//! Data-parallel training over the processes of one run (`distill run --gpus N`, or any
//! launcher that sets torchrun's variables): each process is a rank of a c10d process
//! group (NCCL on CUDA, Gloo on CPU; [`crate::ffi::distributed`]), joined through a
//! TCPStore at `MASTER_ADDR:MASTER_PORT`.
//!
//! A micro-batch is the same on every rank; each rank encodes a contiguous slice of its
//! examples, the representations are gathered, and every rank computes the whole
//! micro-batch's loss from them (so in-batch negatives and their labels are those of the
//! one-process batch, whatever N). The gradient of that loss with respect to a rank's own
//! representations is back-propagated through its encoder, and the parameters' gradients
//! are summed over the ranks: the one-process gradient, so the global batch does not
//! depend on N. Rank 0 writes checkpoints and outputs.
use crate::error::{Error, Result};
use crate::ffi::distributed::{Backend, ProcessGroup};
use tch::{Device, Kind, Tensor};

/// torchrun's environment: this process's rank, the number of processes, and where rank 0
/// serves the rendezvous store.
pub const RANK: &str = "RANK";
pub const WORLD_SIZE: &str = "WORLD_SIZE";
pub const LOCAL_RANK: &str = "LOCAL_RANK";
pub const MASTER_ADDR: &str = "MASTER_ADDR";
pub const MASTER_PORT: &str = "MASTER_PORT";
/// How many of the run's processes share this host (its cores are split between them).
pub const LOCAL_WORLD_SIZE: &str = "LOCAL_WORLD_SIZE";
/// For rank 0 of a `--gpus` parent's ranks: the number of an inherited socket, already
/// bound to `MASTER_PORT` and listening, on which it serves the rendezvous store.
pub const LISTEN_FD: &str = "DISTILL_MASTER_LISTEN_FD";

/// How long a rank waits for the others (rendezvous, every collective), in seconds:
/// `DISTILL_DIST_TIMEOUT` or an hour. Rank 0 alone evaluates in training and writes
/// checkpoints while the others wait at their next collective.
pub const TIMEOUT_VAR: &str = "DISTILL_DIST_TIMEOUT";
const DEFAULT_TIMEOUT_S: u64 = 60 * 60;

fn timeout() -> Result<std::time::Duration> {
    match std::env::var(TIMEOUT_VAR) {
        Err(_) => Ok(std::time::Duration::from_secs(DEFAULT_TIMEOUT_S)),
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(std::time::Duration::from_secs)
            .map_err(|_| Error::Setting {
                key: TIMEOUT_VAR.into(),
                message: format!(
                    "environment variable {TIMEOUT_VAR}=`{v}` is not a number of seconds"
                ),
            }),
    }
}

/// This process's (rank, world size) when the environment makes it one of several; None
/// for a single process (no `WORLD_SIZE`, or 1).
pub fn rank_from_env() -> Result<Option<(usize, usize)>> {
    let read = |key: &str| -> Result<Option<usize>> {
        match std::env::var(key) {
            Err(_) => Ok(None),
            Ok(v) => v.trim().parse().map(Some).map_err(|_| Error::Setting {
                key: key.into(),
                message: format!("environment variable {key}=`{v}` is not a whole number"),
            }),
        }
    };
    let Some(size) = read(WORLD_SIZE)?.filter(|&n| n > 1) else {
        return Ok(None);
    };
    let rank = read(RANK)?.ok_or_else(|| Error::Setting {
        key: RANK.into(),
        message: format!("{WORLD_SIZE}={size} is set but {RANK} is not"),
    })?;
    if rank >= size {
        return Err(Error::Setting {
            key: RANK.into(),
            message: format!("{RANK}={rank} is not below {WORLD_SIZE}={size}"),
        });
    }
    Ok(Some((rank, size)))
}

/// Give this process its share of the host's cores when `LOCAL_WORLD_SIZE` says that N
/// processes of one run share the host: libtorch's intra-op threads and rayon's pool
/// (tokenization) each get cores / N. Without it every process starts a thread per core
/// and, oversubscribed, two workers on two GPUs ran slower than one (BENCHMARKS.md).
/// Call it before anything uses rayon's pool.
pub fn share_cores() {
    let Some(n) = std::env::var(LOCAL_WORLD_SIZE)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 1)
    else {
        return;
    };
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let share = (cores / n).max(1);
    tch::set_num_threads(share as i32);
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(share)
        .build_global();
}

/// The device of this process: `cuda:LOCAL_RANK` when `device` is CUDA and the
/// environment makes the process a rank (each rank sees every GPU of the host, so that
/// NCCL connects them through NVLink rather than host memory), else `device`.
pub fn local_device(device: Device) -> Result<Device> {
    let (Device::Cuda(_), Some((rank, _))) = (device, rank_from_env()?) else {
        return Ok(device);
    };
    let local = match std::env::var(LOCAL_RANK) {
        Ok(v) => v.trim().parse::<usize>().map_err(|_| Error::Setting {
            key: LOCAL_RANK.into(),
            message: format!("environment variable {LOCAL_RANK}=`{v}` is not a whole number"),
        })?,
        Err(_) => rank,
    };
    let count = tch::Cuda::device_count() as usize;
    if local >= count {
        let which = match std::env::var(LOCAL_RANK) {
            Ok(_) => format!("{LOCAL_RANK}={local}"),
            Err(_) => format!("{LOCAL_RANK} is unset, so {RANK}={rank} was taken for it,"),
        };
        return Err(Error::Setting {
            key: LOCAL_RANK.into(),
            message: format!("{which} but this process sees {count} GPU(s) (is CUDA_VISIBLE_DEVICES narrowing them?)"),
        });
    }
    Ok(Device::Cuda(local))
}

/// The ranks of a data-parallel run, as this process sees them.
pub struct World {
    group: ProcessGroup,
    device: Device,
}

impl World {
    /// Join the group that the environment describes ([`rank_from_env`]); None for a
    /// single process. Tensors exchanged live on `device` (NCCL on CUDA, Gloo on CPU).
    pub fn from_env(device: Device) -> Result<Option<World>> {
        let Some((rank, size)) = rank_from_env()? else {
            return Ok(None);
        };
        let host = std::env::var(MASTER_ADDR).unwrap_or_else(|_| "127.0.0.1".into());
        let port = std::env::var(MASTER_PORT)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok())
            .ok_or_else(|| Error::Setting {
                key: MASTER_PORT.into(),
                message: format!("{MASTER_PORT} must name the rendezvous port (a number) when {WORLD_SIZE}={size}"),
            })?;
        let listen_fd = match std::env::var(LISTEN_FD) {
            Err(_) => None,
            Ok(v) => Some(v.trim().parse::<i32>().map_err(|_| Error::Setting {
                key: LISTEN_FD.into(),
                message: format!(
                    "environment variable {LISTEN_FD}=`{v}` is not a file descriptor number"
                ),
            })?),
        };
        World::join_on(device, &host, port, (rank, size), listen_fd).map(Some)
    }

    /// Join as `rank` of `size` at `host:port`.
    pub fn join(device: Device, host: &str, port: u16, rank: usize, size: usize) -> Result<World> {
        World::join_on(device, host, port, (rank, size), None)
    }

    /// Join as `rank` of `size` at `host:port`; rank 0 serves the store on `listen_fd`
    /// when given (a listening socket bound to `port`).
    fn join_on(
        device: Device,
        host: &str,
        port: u16,
        ranks: (usize, usize),
        listen_fd: Option<i32>,
    ) -> Result<World> {
        let backend = match device {
            Device::Cuda(n) => Backend::Nccl(n),
            _ => Backend::Gloo,
        };
        let group = ProcessGroup::join(backend, host, port, ranks, listen_fd, timeout()?)?;
        Ok(World { group, device })
    }

    pub fn rank(&self) -> usize {
        self.group.rank
    }

    pub fn size(&self) -> usize {
        self.group.size
    }

    /// Rank 0: the one that writes checkpoints and outputs.
    pub fn is_primary(&self) -> bool {
        self.rank() == 0
    }

    /// The contiguous slice of `n` examples that `rank` encodes: as even as can be, the
    /// first ranks taking one more.
    pub fn slice(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
        let (base, extra) = (n / size, n % size);
        let start = rank * base + rank.min(extra);
        start..start + base + usize::from(rank < extra)
    }

    /// Every rank's `local` rows (`counts[r]` rows from rank r; `local` may hold padding
    /// rows beyond this rank's count), concatenated in rank order.
    pub fn gather_rows(&self, local: &Tensor, counts: &[usize]) -> Result<Tensor> {
        let most = counts.iter().copied().max().unwrap_or(0) as i64;
        let mut shape = local.size();
        let have = shape[0];
        let padded = if have >= most {
            local.narrow(0, 0, most)
        } else {
            shape[0] = most - have;
            Tensor::cat(
                &[
                    local.shallow_clone(),
                    Tensor::zeros(&shape[..], (local.kind(), local.device())),
                ],
                0,
            )
        };
        let all = self.group.all_gather(&padded.contiguous())?;
        let parts: Vec<Tensor> = counts
            .iter()
            .enumerate()
            .map(|(r, &c)| all.narrow(0, r as i64 * most, c as i64))
            .collect();
        Ok(Tensor::cat(&parts, 0))
    }

    /// Sum `grads` over the ranks, in place.
    pub fn sum(&self, grads: &[&Tensor]) -> Result<()> {
        let mut by_kind: Vec<(Kind, Vec<&Tensor>)> = Vec::new();
        for &g in grads {
            match by_kind.iter_mut().find(|(k, _)| *k == g.kind()) {
                Some((_, list)) => list.push(g),
                None => by_kind.push((g.kind(), vec![g])),
            }
        }
        for (_, list) in by_kind {
            self.group.all_reduce_sum(&list)?;
        }
        Ok(())
    }

    /// Overwrite `tensors` with rank 0's.
    pub fn broadcast_from_primary(&self, tensors: &[&Tensor]) -> Result<()> {
        self.group.broadcast(tensors, 0)
    }

    /// Rank 0's `value` on every rank.
    pub fn agree(&self, value: i64) -> Result<i64> {
        let t = Tensor::from_slice(&[value]).to_device(self.device);
        self.broadcast_from_primary(&[&t])?;
        Ok(t.int64_value(&[0]))
    }
}

/// A TCP port free on this host now, for a rendezvous store that another launcher starts
/// (the tests start ranks as torchrun would). Another process may take it before rank 0
/// binds it; `--gpus` avoids that with [`listener`].
pub fn free_port() -> Result<u16> {
    Ok(listener()?.1)
}

/// A socket bound to a free port of 127.0.0.1 and listening, and its port: `--gpus` hands
/// it down to rank 0 ([`LISTEN_FD`]), which serves the store on it, so the port cannot
/// be taken between choosing it and serving on it.
pub fn listener() -> Result<(std::net::TcpListener, u16)> {
    let io = |e| Error::io("127.0.0.1:0", e);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let port = listener.local_addr().map_err(io)?.port();
    Ok((listener, port))
}

#[cfg(test)]
mod tests {
    use super::{free_port, World};
    use tch::{Device, Kind, Tensor};

    #[test]
    fn two_gloo_ranks_sum_gather_and_broadcast() {
        let port = free_port().unwrap();
        let ranks: Vec<_> = (0..2)
            .map(|rank| {
                std::thread::spawn(move || {
                    let w = World::join(Device::Cpu, "127.0.0.1", port, rank, 2).unwrap();
                    let g = Tensor::from_slice(&[1.0f32 + rank as f32, 10.0]);
                    let h = Tensor::from_slice(&[100.0f64 * (rank + 1) as f64]);
                    w.sum(&[&g, &h]).unwrap();
                    // Views lying end to end in one buffer are summed on it in place; out
                    // of order they go through a copy, with the same result.
                    let buf = Tensor::from_slice(&[1.0f32, 2.0, 3.0]) * (rank as f64 + 1.0);
                    let (a, b) = (buf.narrow(0, 0, 1), buf.narrow(0, 1, 2));
                    w.sum(&[&a, &b]).unwrap();
                    let once = Vec::<f32>::try_from(&buf).unwrap();
                    w.sum(&[&b, &a]).unwrap();
                    assert_eq!(once, vec![3.0, 6.0, 9.0]);
                    // Rank 0 gives one row, rank 1 two (rank 0 pads to two).
                    let local = Tensor::full([2, 3], rank as f64 + 1.0, (Kind::Float, Device::Cpu));
                    let all = w.gather_rows(&local, &[1, 2]).unwrap();
                    let agreed = w.agree(7 + rank as i64).unwrap();
                    assert_eq!(Vec::<f32>::try_from(&buf).unwrap(), vec![6.0, 12.0, 18.0]);
                    (
                        Vec::<f32>::try_from(g).unwrap(),
                        Vec::<f64>::try_from(h).unwrap(),
                        Vec::<f32>::try_from(all.reshape([-1])).unwrap(),
                        agreed,
                    )
                })
            })
            .collect();
        for r in ranks {
            let (g, h, all, agreed) = r.join().unwrap();
            assert_eq!(g, vec![3.0, 20.0]);
            assert_eq!(h, vec![300.0]);
            assert_eq!(all, vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]);
            assert_eq!(agreed, 7);
        }
    }

    #[test]
    fn slices_cover_every_example_once_in_order() {
        for n in 0..20 {
            for size in 1..5 {
                let slices: Vec<_> = (0..size).map(|r| World::slice(n, r, size)).collect();
                let flat: Vec<usize> = slices.iter().flat_map(|s| s.clone()).collect();
                assert_eq!(flat, (0..n).collect::<Vec<_>>(), "n={n} size={size}");
                let lens: Vec<usize> = slices.iter().map(|s| s.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
    }
}
