//! `--device auto|cpu|cuda[:N]` → an engine.
//!
//! The CUDA kernels exist (`kernels/`) and are compiled by CI, but the CUDA engine that
//! launches them is not built yet: `cuda` says so after probing the driver, so the message also
//! tells the user whether a GPU would have been usable.

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
        match probe::cuda_device(ordinal) {
            Err(e) => bail!("--device {device}: {e}"),
            Ok(gpu) => bail!(
                "--device {device}: found {} (sm_{}{}), but this build has no CUDA engine yet; use --device cpu",
                gpu.name,
                gpu.compute_capability.0,
                gpu.compute_capability.1
            ),
        }
    }
    match device {
        "cpu" => Ok((Box::new(CpuEngine::new(config, params)?), None)),
        "auto" => {
            let why = match probe::cuda_device(0) {
                Ok(gpu) => format!("{} found, but this build has no CUDA engine yet", gpu.name),
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
