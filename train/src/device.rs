//! `--device auto|cpu|cuda[:N]` and `--dtype bf16|f32` → an engine.
//!
//! `cuda[:N]` builds the CUDA engine (kernels from `kernels/`, GEMMs through cuBLASLt) with
//! bf16 or f32 storage. It has not yet been run on a GPU, so it is used only when asked for
//! by name and says so; `auto` keeps to the CPU engine until the GPU tests have passed on a
//! real GPU. The CPU engine computes in f32 only.

use anyhow::{bail, Result};
use ingot_kernels::launch::Bf16;
use ingot_kernels::probe;

use crate::engine::cpu::CpuEngine;
use crate::engine::cuda::CudaEngine;
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

/// Whether `device` names a GPU (`cuda` or `cuda:…`).
pub fn is_cuda(device: &str) -> bool {
    device == "cuda" || device.starts_with("cuda:")
}

/// The `--dtype` used when none is given: bf16 on a GPU, f32 on the CPU (and for `auto`,
/// which trains on the CPU today).
pub fn default_dtype(device: &str) -> &'static str {
    if is_cuda(device) {
        "bf16"
    } else {
        "f32"
    }
}

/// The storage type a run on `device` uses: f32 off the GPU (the CPU engine has no other);
/// on a GPU, the one asked for, else that of the run being resumed if it too ran on a GPU (a
/// resume continues exactly), else bf16.
pub fn effective_dtype(device: &str, asked: Option<&str>, resumed: Option<(&str, &str)>) -> String {
    if !is_cuda(device) {
        return "f32".into();
    }
    match (asked, resumed) {
        (Some(d), _) => d.into(),
        (None, Some((saved_device, saved_dtype))) if is_cuda(saved_device) => saved_dtype.into(),
        _ => default_dtype(device).into(),
    }
}

/// Builds the engine for `device` and `dtype`. Returns it with a notice to print, if any.
pub fn create(
    device: &str,
    dtype: &str,
    config: ModelConfig,
    params: Vec<f32>,
) -> Result<(Box<dyn Engine>, Option<String>)> {
    if !matches!(dtype, "bf16" | "f32") {
        bail!("--dtype {dtype:?}: expected bf16 or f32");
    }
    if let Some(ordinal) = cuda_ordinal(device) {
        let ordinal = ordinal?;
        let gpu = match probe::cuda_device(ordinal) {
            Err(e) => bail!("--device {device}: {e}"),
            Ok(gpu) => gpu,
        };
        let engine: Box<dyn Engine> = if dtype == "bf16" {
            Box::new(CudaEngine::<Bf16>::new(ordinal, config, params)?)
        } else {
            Box::new(CudaEngine::<f32>::new(ordinal, config, params)?)
        };
        let notice = if gpu.is_emulated() {
            format!(
                "notice: training on the stand-in CUDA device (emulator/: the CUDA engine and its kernels run on the CPU, not a GPU; results are emulated and its speed means nothing) in {dtype}"
            )
        } else {
            format!(
                "notice: training on {} (sm_{}{}) with the CUDA engine in {dtype}; it has not yet been verified against the CPU engine on a GPU (run scripts/gpu-check.sh)",
                gpu.name, gpu.compute_capability.0, gpu.compute_capability.1
            )
        };
        return Ok((engine, Some(notice)));
    }
    match device {
        "cpu" => {
            if dtype != "f32" {
                bail!("--dtype {dtype}: the CPU engine computes in f32 only; use --dtype f32 or --device cuda");
            }
            Ok((Box::new(CpuEngine::new(config, params)?), None))
        }
        "auto" => {
            let why = match probe::cuda_device(0) {
                Ok(gpu) => format!(
                    "{} found; the CUDA engine is used only with --device cuda until it has been verified on a GPU",
                    gpu.name
                ),
                Err(e) => e.to_string(),
            };
            let ignored = if dtype == "f32" {
                ""
            } else {
                "; in f32, as --dtype bf16 needs --device cuda"
            };
            Ok((
                Box::new(CpuEngine::new(config, params)?),
                Some(format!("notice: training on the CPU ({why}){ignored}")),
            ))
        }
        other => bail!("--device {other:?}: expected auto, cpu, or cuda[:N]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{init::init_params, Layout};

    #[test]
    fn dtype_defaults_to_bf16_on_gpus_only() {
        assert_eq!(default_dtype("cuda"), "bf16");
        assert_eq!(default_dtype("cuda:1"), "bf16");
        assert_eq!(default_dtype("cpu"), "f32");
        assert_eq!(default_dtype("auto"), "f32");
        assert!(!is_cuda("cudax") && is_cuda("cuda:0"));
    }

    #[test]
    fn a_resumed_gpu_run_keeps_its_dtype_unless_told_otherwise() {
        let f32_gpu_run = Some(("cuda", "f32"));
        assert_eq!(effective_dtype("cuda", None, f32_gpu_run), "f32");
        assert_eq!(effective_dtype("cuda:1", Some("bf16"), f32_gpu_run), "bf16");
        // A CPU run moved to a GPU takes the GPU's default; off the GPU it is always f32.
        assert_eq!(effective_dtype("cuda", None, Some(("cpu", "f32"))), "bf16");
        assert_eq!(effective_dtype("cpu", None, Some(("cuda", "bf16"))), "f32");
        assert_eq!(effective_dtype("auto", Some("bf16"), None), "f32");
        assert_eq!(effective_dtype("cuda", None, None), "bf16");
    }

    #[test]
    fn auto_with_bf16_trains_on_the_cpu_in_f32_and_says_so() {
        let c = ModelConfig::preset("tiny", 259).unwrap();
        let p = init_params(&c, &Layout::new(&c), 0);
        let (engine, notice) = create("auto", "bf16", c, p).unwrap();
        assert!(engine.name().starts_with("cpu"), "{}", engine.name());
        let notice = notice.unwrap();
        assert!(notice.contains("in f32"), "{notice}");
    }
}
