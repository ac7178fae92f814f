//! `--device auto|cpu|cuda[:N]` → an engine.

use anyhow::{bail, Result};

use crate::engine::cpu::CpuEngine;
use crate::engine::Engine;
use crate::model::ModelConfig;

/// Builds the engine for `device`. Returns it with a notice to print, if any.
pub fn create(
    device: &str,
    config: ModelConfig,
    params: Vec<f32>,
) -> Result<(Box<dyn Engine>, Option<String>)> {
    match device {
        "cpu" => Ok((Box::new(CpuEngine::new(config, params)?), None)),
        "auto" => Ok((
            Box::new(CpuEngine::new(config, params)?),
            Some("notice: this build has no CUDA engine yet; training on the CPU".into()),
        )),
        d if d == "cuda" || d.starts_with("cuda:") => {
            bail!("--device {d}: this build has no CUDA engine yet (it comes with the CUDA engine issue); use --device cpu or auto")
        }
        other => bail!("--device {other:?}: expected auto, cpu, or cuda[:N]"),
    }
}
