//! `--device auto|cpu|cuda[:N]` → an engine.
//!
//! `cuda[:N]` builds the CUDA engine (f32 storage; kernels from `kernels/`, GEMMs through
//! cuBLASLt). It has not yet been run on a GPU, so it is used only when asked for by name and
//! says so; `auto` keeps to the CPU engine until the GPU tests have passed on a real GPU.

use anyhow::{bail, Result};
use ingot_kernels::probe;

use crate::engine::cpu::CpuEngine;
use crate::engine::Engine;
use crate::model::ModelConfig;

/// The GPU ordinal of `cuda` or `cuda:N`; `None` for other devices.
fn cuda_ordinal(device: &str) -> Option<Result<usize>> {
    if device == "cuda" {
        return Some(Ok(0));
    }
    let n = device.strip_prefix("cuda:")?;
    Some(
        n.parse()
            .map_err(|_| anyhow::anyhow!("--device {device}: expected cuda:N with N a GPU number")),
    )
}

/// Builds the engine for `device`. Returns it with a notice to print, if any.
pub fn create(
    device: &str,
    config: ModelConfig,
    params: Vec<f32>,
) -> Result<(Box<dyn Engine>, Option<String>)> {
    if let Some(ordinal) = cuda_ordinal(device) {
        let ordinal = ordinal?;
        let gpu = match probe::cuda_device(ordinal) {
            Err(e) => bail!("--device {device}: {e}"),
            Ok(gpu) => gpu,
        };
        let engine = crate::engine::cuda::CudaEngine::new(ordinal, config, params)?;
        let notice = format!(
            "notice: training on {} (sm_{}{}) with the CUDA engine in f32; it has not yet been verified against the CPU engine on a GPU (run scripts/gpu-check.sh)",
            gpu.name, gpu.compute_capability.0, gpu.compute_capability.1
        );
        return Ok((Box::new(engine), Some(notice)));
    }
    match device {
        "cpu" => Ok((Box::new(CpuEngine::new(config, params)?), None)),
        "auto" => {
            let why = match probe::cuda_device(0) {
                Ok(gpu) => format!(
                    "{} found; the CUDA engine is used only with --device cuda until it has been verified on a GPU",
                    gpu.name
                ),
                Err(e) => e.to_string(),
            };
            Ok((
                Box::new(CpuEngine::new(config, params)?),
                Some(format!("notice: training on the CPU ({why})")),
            ))
        }
        other => bail!("--device {other:?}: expected auto, cpu, or cuda[:N]"),
    }
}
