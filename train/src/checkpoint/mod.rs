//! Checkpoints: `checkpoints/step-NNNNNNN/` in the run directory, each a Hugging Face model
//! directory (with LoRA, a PEFT adapter directory) plus the training state
//! (`optimizer.safetensors`, `trainer_state.json`).
//!
//! A checkpoint is written into a hidden temporary directory and renamed into place, so a kill
//! at any moment leaves either the previous set of checkpoints or the new one, never a partial
//! directory under a `step-` name.

pub mod hf;
pub mod peft;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::data::DataPosition;
use crate::engine::OptimizerState;
use crate::model::ModelConfig;

/// What resuming needs besides the weights and moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    pub tokens_seen: u64,
    pub data: DataPosition,
    pub seed: u64,
    /// Validation loss measured at this step, if any.
    pub val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    /// SHA-256 of the dataset's index.json: resuming on another dataset is refused.
    pub dataset_index_sha256: String,
    pub model: ModelConfig,
    /// With LoRA: SHA-256 of the frozen base's weights ([`crate::lora::base_sha256`]);
    /// resuming on another base is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_sha256: Option<String>,
}

pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:07}")
}

/// Everything one checkpoint holds.
pub struct Checkpoint<'a> {
    pub config: &'a ModelConfig,
    pub params: &'a [f32],
    pub optimizer: &'a OptimizerState,
    pub state: &'a TrainerState,
    pub tokenizer: &'a hf::TokenizerFiles<'a>,
    /// With LoRA, `params` is the adapter and the directory a PEFT adapter directory.
    pub adapter: Option<AdapterCheckpoint<'a>>,
}

/// What an adapter checkpoint says of itself besides its weights.
pub struct AdapterCheckpoint<'a> {
    pub lora: &'a crate::lora::LoraConfig,
    /// The base model directory (`base_model_name_or_path`).
    pub base: &'a Path,
    pub base_sha256: &'a str,
}

fn write_optimizer(path: &Path, params: &[f32], opt: &OptimizerState) -> Result<()> {
    let le = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (p, m, v) = (le(params), le(&opt.exp_avg), le(&opt.exp_avg_sq));
    let n = params.len();
    let views = vec![
        (
            "exp_avg",
            safetensors::tensor::TensorView::new(Dtype::F32, vec![n], &m)?,
        ),
        (
            "exp_avg_sq",
            safetensors::tensor::TensorView::new(Dtype::F32, vec![n], &v)?,
        ),
        (
            "master_weights",
            safetensors::tensor::TensorView::new(Dtype::F32, vec![n], &p)?,
        ),
    ];
    let mut meta = std::collections::HashMap::new();
    meta.insert("step".to_string(), opt.step.to_string());
    safetensors::serialize_to_file(views, Some(meta), path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads `optimizer.safetensors`: master weights and AdamW state.
pub fn read_optimizer(dir: &Path) -> Result<(Vec<f32>, OptimizerState)> {
    let path = dir.join("optimizer.safetensors");
    let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let get = |name: &str| -> Result<Vec<f32>> {
        let t = st
            .tensor(name)
            .with_context(|| format!("{}: no {name}", path.display()))?;
        if t.dtype() != Dtype::F32 {
            bail!("{}: {name} is not f32", path.display());
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes)?;
    let step = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("step"))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{}: no step in the metadata", path.display()))?;
    Ok((
        get("master_weights")?,
        OptimizerState {
            step,
            exp_avg: get("exp_avg")?,
            exp_avg_sq: get("exp_avg_sq")?,
        },
    ))
}

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join("trainer_state.json");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a trainer state", path.display()))
}

/// Writes `checkpoints/step-NNNNNNN` atomically and returns its path.
pub fn save(checkpoints: &Path, ck: &Checkpoint) -> Result<PathBuf> {
    fs::create_dir_all(checkpoints)
        .with_context(|| format!("cannot create {}", checkpoints.display()))?;
    let name = step_dir_name(ck.state.step);
    let tmp = checkpoints.join(format!(".tmp-{name}"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = (|| -> Result<()> {
        match &ck.adapter {
            Some(a) => {
                peft::write_adapter_dir(&tmp, ck.config, a.lora, ck.params, a.base, a.base_sha256)?;
                hf::write_tokenizer_files(&tmp, ck.config, ck.tokenizer)?;
            }
            None => hf::write_model_dir(&tmp, ck.config, ck.params, ck.tokenizer)?,
        }
        write_optimizer(&tmp.join("optimizer.safetensors"), ck.params, ck.optimizer)?;
        let mut state = serde_json::to_string_pretty(ck.state)?;
        state.push('\n');
        fs::write(tmp.join("trainer_state.json"), state)?;
        for entry in fs::read_dir(&tmp)? {
            fs::File::open(entry?.path())?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.context(format!("cannot write checkpoint {name}")));
    }
    let dest = checkpoints.join(&name);
    if dest.exists() {
        // Re-saving the same step (a final save right after a periodic one): replace it.
        let old = checkpoints.join(format!(".old-{name}"));
        fs::rename(&dest, &old)?;
        fs::rename(&tmp, &dest)?;
        let _ = fs::remove_dir_all(&old);
    } else {
        fs::rename(&tmp, &dest)
            .with_context(|| format!("cannot move checkpoint into {}", dest.display()))?;
    }
    if let Ok(d) = fs::File::open(checkpoints) {
        let _ = d.sync_all();
    }
    Ok(dest)
}

/// Finished checkpoints in a `checkpoints/` directory, oldest first.
pub fn list(checkpoints: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(checkpoints)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
                    Some((step, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Keeps the newest `keep_last` checkpoints and the one with the best validation loss (the
/// newest when none was evaluated), and points `checkpoints/best` at that one. The link moves first and a directory is renamed to a
/// hidden name before it is deleted, so a kill at any point leaves `best` and every `step-`
/// directory complete.
pub fn prune(checkpoints: &Path, keep_last: usize) -> Result<()> {
    let all = list(checkpoints);
    let best = all
        .iter()
        .filter_map(|(step, path)| {
            read_state(path)
                .ok()
                .and_then(|s| s.val_loss)
                .map(|l| (l, *step))
        })
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, step)| step)
        // A run without evaluation (no val split) keeps its newest checkpoint as the best.
        .or_else(|| all.last().map(|(step, _)| *step));
    if let Some(step) = best {
        let tmp = checkpoints.join(".best-link");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(step_dir_name(step), &tmp)?;
        fs::rename(&tmp, checkpoints.join("best"))?;
    }
    let keep_from = all.len().saturating_sub(keep_last.max(1));
    for (i, (step, path)) in all.iter().enumerate() {
        if i < keep_from && Some(*step) != best {
            let doomed = checkpoints.join(format!(".del-{}", step_dir_name(*step)));
            fs::rename(path, &doomed)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            fs::remove_dir_all(&doomed)
                .with_context(|| format!("cannot remove {}", doomed.display()))?;
        }
    }
    // Leftovers of saves or removals that a kill interrupted.
    for entry in fs::read_dir(checkpoints)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".del-") || name.starts_with(".tmp-") || name.starts_with(".old-") {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}
