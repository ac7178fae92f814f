//! `--resume`: find the run's latest checkpoint, check that it belongs to this model, dataset
//! and tokenizer, and continue from its weights, optimizer state, data position and saved
//! settings.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ingot_formats::checksum::sha256_hex;

use super::config::{json_differences, model_differences, shape_given, RunConfig};
use crate::checkpoint::{self, TrainerState};
use crate::cli::TrainArgs;
use crate::engine::OptimizerState;

/// Where training starts: fresh (step 0, no weights: the caller initialises them) or from a
/// checkpoint.
pub struct Start {
    pub config: RunConfig,
    pub state: TrainerState,
    /// What trains: the whole model, or with LoRA the adapter.
    pub params: Option<Vec<f32>>,
    /// With LoRA, the frozen base model's weights.
    pub base: Option<Vec<f32>>,
    pub optimizer: Option<OptimizerState>,
}

/// The checkpoint `--resume` continues, or `None` for a fresh run; a fresh run into a
/// directory that already holds checkpoints is refused.
pub fn checkpoint_to_resume(args: &TrainArgs, run_dir: &Path) -> Result<Option<PathBuf>> {
    let checkpoints = run_dir.join("checkpoints");
    let last = checkpoint::list(&checkpoints).pop().map(|(_, p)| p);
    if args.resume {
        let dir =
            last.with_context(|| format!("--resume: no checkpoint in {}", checkpoints.display()))?;
        return Ok(Some(dir));
    }
    if last.is_some() {
        bail!(
            "{} already holds checkpoints; pass --resume to continue that run, or choose another --out/--name",
            run_dir.display()
        );
    }
    Ok(None)
}

/// Continues the run from checkpoint `dir`: the run's own saved settings are the defaults of
/// a resumed run (the shape and every training option come from its config.json), so
/// `--resume` alone continues exactly; `config` is what today's options resolved to.
pub fn load(
    dir: &Path,
    args: &TrainArgs,
    config: RunConfig,
    index_sha: &str,
    tokenizer_sha: &str,
) -> Result<Start> {
    let state = checkpoint::read_state(dir)?;
    let saved = read_saved_config(&config.out)?;
    check_belongs(dir, args, &config, &state, index_sha, tokenizer_sha)?;
    let mut resumed = saved.clone();
    resumed.model = state.model.clone();
    resumed.shards = config.shards.clone();
    resumed.out = config.out.clone();
    resumed.device = config.device;
    resumed.dtype = config
        .device
        .effective_dtype(args.dtype, Some((saved.device, saved.dtype)));
    // A GPU run resumed on a GPU asks for the attention kernels it asked for (`auto` chooses
    // the same ones on the same GPU, dtype and head dim), unless told otherwise; off the GPU
    // there is no choice. What the engine chooses is recorded again once it is built.
    resumed.attention = match args.attention {
        Some(a) => a,
        None if config.device.is_cuda() => saved.attention,
        None => config.attention,
    };
    resumed.attention_kernels = None;
    resumed.seed = state.seed;
    batch_on_resume(args, &config, &saved, &mut resumed)?;
    // The run may be lengthened (or shortened) deliberately.
    if args.steps.is_some() || args.epochs.is_some() || args.tokens.is_some() {
        resumed.steps = config.steps;
        resumed.schedule.total_steps = config.steps;
    }
    let kept: Vec<String> = json_differences(&config, &resumed)
        .into_iter()
        .map(|(k, given, kept)| format!("{k} (given {given}, kept {kept})"))
        .collect();
    if !kept.is_empty() {
        eprintln!(
            "notice: --resume keeps the run's saved settings where today's options differ: {}",
            kept.join(", ")
        );
    }
    if state.step >= resumed.steps {
        bail!(
            "--resume: the run is already at step {} of {}; pass a larger --steps to continue it",
            state.step,
            resumed.steps
        );
    }
    let (params, opt) = checkpoint::read_optimizer(dir)?;
    if opt.step != state.step {
        bail!(
            "--resume: {} says step {} but its optimizer state is at step {}; the checkpoint is inconsistent, resume from an earlier one by removing this directory",
            dir.display(),
            state.step,
            opt.step
        );
    }
    let base = match &resumed.lora {
        Some(_) => Some(lora_base(dir, &resumed, &state)?),
        None => None,
    };
    Ok(Start {
        config: resumed,
        state,
        params: Some(params),
        base,
        optimizer: Some(opt),
    })
}

/// The frozen base of a LoRA run, read again from its `init_from` directory, which must
/// still hold the weights the adapter was trained on.
fn lora_base(dir: &Path, config: &RunConfig, state: &TrainerState) -> Result<Vec<f32>> {
    let base_dir = config
        .init_from
        .as_ref()
        .context("--resume: the run's config.json has LoRA options but no init_from")?;
    let base = crate::checkpoint::hf::read_model_dir(base_dir)?;
    let sha = crate::lora::base_sha256(&base.params);
    if state.base_sha256.as_deref() != Some(sha.as_str()) {
        bail!(
            "--resume: the adapter in {} was trained on other base weights than {} holds now (SHA-256 {} recorded, {sha} found); restore that base model",
            dir.display(),
            base_dir.display(),
            state.base_sha256.as_deref().unwrap_or("none")
        );
    }
    Ok(base.params)
}

/// The world size is today's; so is the micro-batch where it was given, or wherever the
/// world size changed. The global batch (ranks × micro-batch × accumulation) must stay the
/// run's, so that the data position and the schedule mean the same, unless
/// `--allow-batch-change` accepts the new one.
fn batch_on_resume(
    args: &TrainArgs,
    today: &RunConfig,
    saved: &RunConfig,
    resumed: &mut RunConfig,
) -> Result<()> {
    resumed.world = today.world;
    if args.zero.is_some() {
        resumed.zero = today.zero;
    }
    if today.world != saved.world || args.allow_batch_change {
        if args.batch_size.is_some() {
            resumed.batch_size = today.batch_size;
        }
        if args.grad_accum.is_some() || args.batch_tokens.is_some() {
            resumed.grad_accum = today.grad_accum;
        }
    }
    let (was, now) = (saved.global_batch(), resumed.global_batch());
    if was == now || args.allow_batch_change {
        return Ok(());
    }
    let per_rank = resumed.world * resumed.grad_accum;
    let hint = if was % per_rank == 0 {
        format!("--batch-size {}", was / per_rank)
    } else {
        "a --batch-size and --grad-accum that give it".to_string()
    };
    bail!(
        "--resume: the run's global batch is {was} blocks ({} ranks × --batch-size {} × --grad-accum {}) but this one would be {now} ({} × {} × {}); keep it with {hint}, or pass --allow-batch-change to continue from the same data position with the new batch",
        saved.world,
        saved.batch_size,
        saved.grad_accum,
        resumed.world,
        resumed.batch_size,
        resumed.grad_accum
    )
}

fn read_saved_config(run_dir: &Path) -> Result<RunConfig> {
    let path = run_dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--resume: cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("--resume: {} is not a run configuration", path.display()))
}

/// The checkpoint must be of this model (when a shape is given), this dataset, this tokenizer
/// and this seed.
fn check_belongs(
    dir: &Path,
    args: &TrainArgs,
    config: &RunConfig,
    state: &TrainerState,
    index_sha: &str,
    tokenizer_sha: &str,
) -> Result<()> {
    if shape_given(args) && state.model != config.model {
        bail!(
            "--resume: the checkpoint in {} is a different model ({})",
            dir.display(),
            model_differences(&state.model, &config.model)
        );
    }
    if state.dataset_index_sha256 != index_sha {
        bail!(
            "--resume: the checkpoint in {} was trained on another dataset (index.json differs from {})",
            dir.display(),
            config.shards.display()
        );
    }
    let tok = dir.join("tokenizer.json");
    match std::fs::read(&tok) {
        Ok(t) if sha256_hex(&t) == tokenizer_sha => {}
        Ok(_) => bail!("--resume: the checkpoint's tokenizer.json differs from the dataset's"),
        Err(e) => bail!("--resume: {}: {e}", tok.display()),
    }
    if args.seed.is_some_and(|s| s != state.seed) {
        bail!(
            "--resume: the run used --seed {}, not {}",
            state.seed,
            config.seed
        );
    }
    Ok(())
}
