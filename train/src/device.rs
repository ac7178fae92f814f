//! `--device auto|cpu|cuda[:N]` and `--dtype bf16|f32` → an engine: the one factory that
//! training, `train eval` and `train sample` build their engines with.
//!
//! `cuda[:N]` builds the CUDA engine (kernels from `kernels/`, GEMMs through cuBLASLt) with
//! bf16 or f32 storage; under a launcher every rank takes GPU `LOCAL_RANK`
//! ([`rank_ordinal`]) and joins the others through NCCL. It has not yet been run on a GPU, so
//! it is used only when asked for by name and says so; `auto` keeps to the CPU engine until
//! the GPU tests have passed on a real GPU. The CPU engine computes in f32 only.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use ingot_kernels::launch::Bf16;
use ingot_kernels::probe;
use serde::{Deserialize, Serialize};

use crate::collective::{host_backend, DataParallel};
use crate::engine::cpu::CpuEngine;
use crate::engine::cuda::{CudaEngine, Precision};
pub use crate::engine::AttentionKernels;
use crate::engine::{Adapter, Engine, Weights};
use crate::launch::Launch;
use crate::model::ModelConfig;

/// Where a run computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// The CPU today (see the module comment).
    #[default]
    Auto,
    Cpu,
    /// GPU number N.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Device, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                Some(Err(_)) => Err(format!("{s:?}: expected cuda:N with N a GPU number")),
                None => Err(format!("{s:?}: expected auto, cpu, or cuda[:N]")),
            },
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;
    fn try_from(s: String) -> Result<Device, String> {
        s.parse()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(0) => f.write_str("cuda"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl From<Device> for String {
    fn from(d: Device) -> String {
        d.to_string()
    }
}

/// The storage type of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// bf16 weights and activations, f32 master weights and optimizer (GPU only).
    Bf16,
    /// f32 throughout; configs written before `--dtype` existed were f32.
    #[default]
    F32,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::Bf16 => "bf16",
            DType::F32 => "f32",
        })
    }
}

impl Device {
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// The `--dtype` used when none is given: bf16 on a GPU, f32 on the CPU (and for `auto`,
    /// which trains on the CPU today).
    pub fn default_dtype(self) -> DType {
        if self.is_cuda() {
            DType::Bf16
        } else {
            DType::F32
        }
    }

    /// The storage type a run on this device uses: f32 off the GPU (the CPU engine has no
    /// other); on a GPU, the one asked for, else that of the run being resumed if it too ran
    /// on a GPU (a resume continues exactly), else bf16.
    pub fn effective_dtype(self, asked: Option<DType>, resumed: Option<(Device, DType)>) -> DType {
        if !self.is_cuda() {
            return DType::F32;
        }
        match (asked, resumed) {
            (Some(d), _) => d,
            (None, Some((saved_device, saved))) if saved_device.is_cuda() => saved,
            _ => self.default_dtype(),
        }
    }

    /// Host memory a run of `model` with micro-batches of `batch × seq` needs on this device:
    /// each engine's own estimate.
    pub fn host_memory_estimate(self, model: &ModelConfig, batch: usize, seq: usize) -> u128 {
        if self.is_cuda() {
            crate::engine::cuda::host_memory_estimate(model)
        } else {
            crate::engine::cpu::host_memory_estimate(model, batch, seq)
        }
    }
}

/// Builds the engine for `device` and `dtype`: `asked` is the dtype the user gave (so that
/// `--device cpu --dtype bf16` is refused and `auto` says it computes in f32), `attention` the
/// CUDA engine's attention kernels (only `auto` off the GPU). Returns it with a notice to
/// print, if any. `dp` says which ranks the engine trains with
/// ([`DataParallel::default`]: one process).
pub fn create(
    device: Device,
    asked: DType,
    attention: AttentionKernels,
    config: ModelConfig,
    weights: Weights,
    dp: &DataParallel,
) -> Result<(Box<dyn Engine>, Option<String>)> {
    if !device.is_cuda() && attention != AttentionKernels::Auto {
        bail!("--attention {attention}: only the CUDA engine has a choice of attention kernels; leave it out, or use --device cuda");
    }
    match device {
        Device::Cuda(asked_ordinal) => {
            let ordinal = match &dp.launch {
                None => asked_ordinal,
                Some(l) => {
                    let count = match probe::cuda_device(0) {
                        Err(e) => bail!("--device {device}: {e}"),
                        Ok(gpu) => gpu.device_count,
                    };
                    rank_ordinal(asked_ordinal, l, count)?
                }
            };
            let gpu = match probe::cuda_device(ordinal) {
                Err(e) => bail!("--device {device}: {e}"),
                Ok(gpu) => gpu,
            };
            let engine: Box<dyn Engine> = match asked {
                DType::Bf16 => Box::new(cuda_engine::<Bf16>(
                    ordinal, config, weights, attention, dp,
                )?),
                DType::F32 => {
                    Box::new(cuda_engine::<f32>(ordinal, config, weights, attention, dp)?)
                }
            };
            let notice = if gpu.is_emulated() {
                format!(
                    "notice: running on the stand-in CUDA device (emulator/: the CUDA engine and its kernels run on the CPU, not a GPU; results are emulated and its speed means nothing) in {asked}"
                )
            } else {
                format!(
                    "notice: running on {} (sm_{}{}) with the CUDA engine in {asked}; it has not yet been verified against the CPU engine on a GPU (run scripts/gpu-check.sh)",
                    gpu.name, gpu.compute_capability.0, gpu.compute_capability.1
                )
            };
            Ok((engine, Some(notice)))
        }
        Device::Cpu => {
            if asked != DType::F32 {
                bail!("--dtype {asked}: the CPU engine computes in f32 only; use --dtype f32 or --device cuda");
            }
            Ok((cpu_engine(config, weights.base, weights.adapter, dp)?, None))
        }
        Device::Auto => {
            let why = match probe::cuda_device(0) {
                Ok(gpu) => format!(
                    "{} found; the CUDA engine is used only with --device cuda until it has been verified on a GPU",
                    gpu.name
                ),
                Err(e) => e.to_string(),
            };
            let ignored = match asked {
                DType::F32 => "",
                DType::Bf16 => "; in f32, as --dtype bf16 needs --device cuda",
            };
            Ok((
                cpu_engine(config, weights.base, weights.adapter, dp)?,
                Some(format!("notice: running on the CPU ({why}){ignored}")),
            ))
        }
    }
}

/// The CUDA engine on GPU `ordinal`: alone, or as one rank of `dp` (NCCL between processes).
fn cuda_engine<T: Precision>(
    ordinal: usize,
    config: ModelConfig,
    weights: Weights,
    attention: AttentionKernels,
    dp: &DataParallel,
) -> Result<CudaEngine<T>> {
    let launch = dp.launch.as_ref().map(|l| (l, dp));
    match (weights.adapter, launch) {
        (Some(a), launch) => {
            CudaEngine::with_lora(ordinal, config, weights.base, a, attention, launch)
        }
        (None, None) => CudaEngine::with_attention(ordinal, config, weights.base, attention),
        (None, Some((l, dp))) => {
            CudaEngine::data_parallel(ordinal, config, weights.base, attention, l, dp)
        }
    }
}

/// The GPU of a rank that a launcher started, with `count` GPUs visible: `LOCAL_RANK`'s, or
/// the only one when the launcher gave each rank its own GPU (Slurm's `--gpus-per-task`, a
/// `CUDA_VISIBLE_DEVICES` per rank). A `cuda:N` with N > 0 is refused: which GPU a rank takes
/// is the launcher's business.
pub fn rank_ordinal(asked: usize, launch: &Launch, count: usize) -> Result<usize> {
    let local = launch.local_rank;
    if asked != 0 {
        bail!("--device cuda:{asked}: under {} every rank takes GPU LOCAL_RANK ({local} here); give --device cuda and choose the GPUs with CUDA_VISIBLE_DEVICES", launch.launcher);
    }
    match count {
        _ if local < count => Ok(local),
        1 => Ok(0),
        _ => bail!("local rank {local} but this node shows {count} GPUs: start at most {count} ranks per node, or one GPU per rank through CUDA_VISIBLE_DEVICES"),
    }
}

/// The CPU engine as one rank of `dp` (MPI between processes).
fn cpu_engine(
    config: ModelConfig,
    params: Vec<f32>,
    adapter: Option<Adapter>,
    dp: &DataParallel,
) -> Result<Box<dyn Engine>> {
    let mut engine = CpuEngine::new(config, params)?;
    if let Some(a) = adapter {
        engine = engine.with_lora(a.lora, a.params, a.seed)?;
        if let Some(q) = a.quantize {
            engine = engine.quantize_base(q.double)?;
        }
    }
    Ok(Box::new(engine.with_collective(host_backend(dp)?, dp.zero)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{init::init_params, Layout};

    fn torchrun(local_rank: usize) -> Launch {
        Launch {
            launcher: crate::launch::Launcher::Torchrun,
            rank: local_rank + 4,
            world: 8,
            local_rank,
            master_addr: Some("10.0.0.1".into()),
            master_port: Some(29500),
            job_id: None,
        }
    }

    #[test]
    fn a_launched_rank_takes_gpu_local_rank_or_the_only_one_it_sees() {
        assert_eq!(rank_ordinal(0, &torchrun(3), 4).unwrap(), 3);
        assert_eq!(rank_ordinal(0, &torchrun(0), 4).unwrap(), 0);
        // One GPU per rank (CUDA_VISIBLE_DEVICES set per rank): each takes its only one.
        assert_eq!(rank_ordinal(0, &torchrun(3), 1).unwrap(), 0);
        let one_line = |e: anyhow::Error| {
            let m = format!("{e:#}");
            assert!(!m.contains('\n'), "{m}");
            m
        };
        let m = one_line(rank_ordinal(0, &torchrun(3), 2).unwrap_err());
        assert!(m.contains("local rank 3") && m.contains("2 GPUs"), "{m}");
        let m = one_line(rank_ordinal(1, &torchrun(0), 4).unwrap_err());
        assert!(
            m.contains("--device cuda:1") && m.contains("CUDA_VISIBLE_DEVICES"),
            "{m}"
        );
    }

    #[test]
    fn devices_parse_print_and_refuse_in_one_line() {
        for (s, d) in [
            ("auto", Device::Auto),
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
        ] {
            assert_eq!(s.parse::<Device>(), Ok(d));
            assert_eq!(d.to_string(), s);
        }
        assert_eq!("cuda:0".parse::<Device>(), Ok(Device::Cuda(0)));
        assert!("cudax"
            .parse::<Device>()
            .unwrap_err()
            .contains("auto, cpu, or cuda[:N]"));
        assert!("cuda:x".parse::<Device>().unwrap_err().contains("cuda:N"));
        let json = serde_json::to_string(&Device::Cuda(1)).unwrap();
        assert_eq!(json, "\"cuda:1\"");
        assert_eq!(
            serde_json::from_str::<Device>(&json).unwrap(),
            Device::Cuda(1)
        );
        assert!(serde_json::from_str::<DType>("\"f16\"").is_err());
    }

    #[test]
    fn dtype_defaults_to_bf16_on_gpus_only() {
        assert_eq!(Device::Cuda(0).default_dtype(), DType::Bf16);
        assert_eq!(Device::Cuda(1).default_dtype(), DType::Bf16);
        assert_eq!(Device::Cpu.default_dtype(), DType::F32);
        assert_eq!(Device::Auto.default_dtype(), DType::F32);
    }

    #[test]
    fn a_resumed_gpu_run_keeps_its_dtype_unless_told_otherwise() {
        let (cuda, cpu) = (Device::Cuda(0), Device::Cpu);
        let f32_gpu_run = Some((cuda, DType::F32));
        assert_eq!(cuda.effective_dtype(None, f32_gpu_run), DType::F32);
        let bf16 = Some(DType::Bf16);
        assert_eq!(
            Device::Cuda(1).effective_dtype(bf16, f32_gpu_run),
            DType::Bf16
        );
        // A CPU run moved to a GPU takes the GPU's default; off the GPU it is always f32.
        assert_eq!(
            cuda.effective_dtype(None, Some((cpu, DType::F32))),
            DType::Bf16
        );
        assert_eq!(
            cpu.effective_dtype(None, Some((cuda, DType::Bf16))),
            DType::F32
        );
        assert_eq!(Device::Auto.effective_dtype(bf16, None), DType::F32);
        assert_eq!(cuda.effective_dtype(None, None), DType::Bf16);
    }

    #[test]
    fn auto_with_bf16_runs_on_the_cpu_in_f32_and_says_so() {
        let c = ModelConfig::preset("tiny", 259).unwrap();
        let p = init_params(&c, &Layout::new(&c), 0);
        let auto = AttentionKernels::Auto;
        let one = DataParallel::default();
        let (engine, notice) = create(
            Device::Auto,
            DType::Bf16,
            auto,
            c.clone(),
            p.clone().into(),
            &one,
        )
        .unwrap();
        assert!(engine.name().starts_with("cpu"), "{}", engine.name());
        let notice = notice.unwrap();
        assert!(notice.contains("in f32"), "{notice}");
        let e = create(
            Device::Cpu,
            DType::Bf16,
            auto,
            c.clone(),
            p.clone().into(),
            &one,
        )
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("f32 only"));
        let mma = AttentionKernels::Mma;
        let e = create(Device::Cpu, DType::F32, mma, c, p.into(), &one)
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("--attention mma: only the CUDA engine"));
    }
}
