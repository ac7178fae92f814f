//! The options of `train` resolved into the run's configuration: a pure function of the
//! command line (merged with `--config`) and what the dataset says of itself, so that every
//! refusal and default is testable without opening an engine.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cli::TrainArgs;
use crate::device::{AttentionKernels, DType, Device};
use crate::engine::AdamW;
use crate::lora::{LoraConfig, DEFAULT_TARGETS};
use crate::model::ModelConfig;
use crate::quant::BaseQuant;
use crate::schedule::{Schedule, ScheduleKind};

/// The fully resolved configuration of a run, saved as `config.json` in the run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub shards: PathBuf,
    pub out: PathBuf,
    pub model: ModelConfig,
    pub seq_len: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub steps: u64,
    pub schedule: Schedule,
    pub optimizer: AdamW,
    pub grad_clip: Option<f32>,
    pub eval_every: u64,
    pub eval_batches: usize,
    pub evaluate: bool,
    pub save_every: u64,
    pub keep_last: usize,
    pub log_every: u64,
    pub seed: u64,
    pub device: Device,
    /// Configs written before `--dtype` existed were f32.
    #[serde(default)]
    pub dtype: DType,
    /// The CUDA engine's attention kernels as asked (`--attention`, `auto` by default); a
    /// resumed run asks the same.
    #[serde(default)]
    pub attention: AttentionKernels,
    /// The kernels the CUDA engine chose (`mma` or `simt`; none on the CPU): what `auto`
    /// became on this GPU, dtype and head dim.
    #[serde(default)]
    pub attention_kernels: Option<AttentionKernels>,
    pub init_from: Option<PathBuf>,
    /// Ranks of the data-parallel run (1 for one process); `batch_size` and `grad_accum` are
    /// each rank's, so the global batch is `world × batch_size × grad_accum` blocks.
    #[serde(default = "one")]
    pub world: usize,
    /// ZeRO-1: the optimizer state sharded across the ranks.
    #[serde(default)]
    pub zero: bool,
    /// LoRA: an adapter trains on the frozen `init_from` model.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// QLoRA: the frozen base's linear weights quantised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<BaseQuant>,
}

fn one() -> usize {
    1
}

impl RunConfig {
    /// Blocks per optimizer step, over every rank.
    pub fn global_batch(&self) -> usize {
        self.world * self.batch_size * self.grad_accum
    }
}

/// What the dataset tells the resolution.
#[derive(Debug, Clone)]
pub struct DatasetFacts {
    pub shards: PathBuf,
    pub vocab_size: usize,
    pub block_size: usize,
    pub train_blocks: u64,
    pub val_blocks: u64,
}

/// The resolved configuration and the notices that explain a default the user may not expect.
#[derive(Debug)]
pub struct Resolved {
    pub config: RunConfig,
    pub notices: Vec<String>,
}

/// The notice of a run on a dataset without a val split.
pub const NO_VAL_NOTICE: &str =
    "notice: no validation split: evaluation is off, the last checkpoint is kept as best";

/// Resolves `args` for a dataset. `init` is the shape of the `--init-from` model, read by the
/// caller from its config.json.
pub fn resolve(
    args: &TrainArgs,
    data: &DatasetFacts,
    init: Option<&ModelConfig>,
) -> Result<Resolved> {
    resolve_ranks(args, data, init, 1)
}

/// [`resolve`] for one of `world` ranks of a data-parallel run: `--batch-size` and
/// `--grad-accum` are each rank's, and the run's length counts global batches.
pub fn resolve_ranks(
    args: &TrainArgs,
    data: &DatasetFacts,
    init: Option<&ModelConfig>,
    world: usize,
) -> Result<Resolved> {
    let mut notices = Vec::new();
    let model = model_shape(args, data, init)?;
    let (seq_len, model) = sequence(args, data.block_size, model, init.is_some())?;
    let (batch_size, grad_accum) = batching(args, seq_len, data.train_blocks, world)?;
    let global = (world * batch_size * grad_accum) as u64;
    if world > 1 && global > data.train_blocks {
        bail!(
            "one optimizer step of {world} ranks needs {global} blocks ({world} × --batch-size {batch_size} × --grad-accum {grad_accum}) but the train split has {}; lower --batch-size or --grad-accum",
            data.train_blocks
        );
    }
    let lora = lora_options(args, &model)?;
    let quantize = quantize_options(args, &model, lora.is_some())?;
    let evaluate = evaluation(args, data.val_blocks, &mut notices)?;
    let steps = run_length(args, data.train_blocks, global, seq_len)?;
    let lr = args.lr.unwrap_or(1e-3);
    check_hyperparameters(args, lr)?;
    let schedule = Schedule {
        kind: args.schedule.unwrap_or(ScheduleKind::Cosine),
        lr,
        min_lr: args.min_lr.unwrap_or(lr / 10.0),
        warmup_steps: args.warmup.unwrap_or((steps / 10).min(1000)),
        total_steps: steps,
        decay_fraction: args.decay_fraction.unwrap_or(0.2),
    };
    let d = AdamW::default();
    let optimizer = AdamW {
        beta1: args.beta1.unwrap_or(d.beta1),
        beta2: args.beta2.unwrap_or(d.beta2),
        eps: args.adam_eps.unwrap_or(d.eps),
        weight_decay: args.weight_decay.unwrap_or(d.weight_decay),
    };
    let device = args.device.unwrap_or_default();
    let name = args.name.clone().unwrap_or_else(|| "run".into());
    let config = RunConfig {
        shards: data.shards.clone(),
        out: args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(name)),
        model,
        seq_len,
        batch_size,
        grad_accum,
        steps,
        schedule,
        optimizer,
        grad_clip: args.grad_clip.or(Some(1.0)).filter(|c| *c > 0.0),
        eval_every: args.eval_every.unwrap_or(100),
        eval_batches: args.eval_batches.unwrap_or(20),
        evaluate,
        save_every: args.save_every.unwrap_or(500),
        keep_last: args.keep_last.unwrap_or(2),
        log_every: args.log_every.unwrap_or(10),
        seed: args.seed.unwrap_or(0),
        device,
        dtype: device.effective_dtype(args.dtype, None),
        attention: args.attention.unwrap_or_default(),
        attention_kernels: None,
        init_from: args.init_from.clone(),
        world,
        zero: args.zero == Some(1),
        lora,
        quantize,
    };
    Ok(Resolved { config, notices })
}

/// The LoRA options, when `--lora-rank` asks for an adapter.
fn lora_options(args: &TrainArgs, model: &ModelConfig) -> Result<Option<LoraConfig>> {
    let Some(rank) = args.lora_rank else {
        let given = [
            ("--lora-alpha", args.lora_alpha.is_some()),
            ("--lora-dropout", args.lora_dropout.is_some()),
            ("--lora-targets", args.lora_targets.is_some()),
            ("--lora-save", args.lora_save.is_some()),
            ("--rslora", args.rslora),
        ];
        if let Some((name, _)) = given.iter().find(|(_, g)| *g) {
            bail!("{name} is an option of LoRA training; give --lora-rank too");
        }
        return Ok(None);
    };
    if args.init_from.is_none() {
        bail!("--lora-rank trains an adapter on an existing model; give --init-from DIR (a Hugging Face Llama directory, or a checkpoint of a run)");
    }
    let (targets, save) = LoraConfig::parse_lists(
        args.lora_targets.as_deref().unwrap_or(DEFAULT_TARGETS),
        args.lora_save.as_deref().unwrap_or(""),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let lora = LoraConfig {
        rank,
        alpha: args.lora_alpha.unwrap_or(8.0),
        dropout: args.lora_dropout.unwrap_or(0.0),
        rslora: args.rslora,
        targets,
        save,
    };
    lora.validate(model).map_err(|e| anyhow::anyhow!(e))?;
    Ok(Some(lora))
}

/// `--quantize` and `--double-quant`: only for a LoRA run (the base must be frozen), and only
/// on a base whose linear layers are whole NF4 blocks.
fn quantize_options(
    args: &TrainArgs,
    model: &ModelConfig,
    lora: bool,
) -> Result<Option<BaseQuant>> {
    let Some(format) = args.quantize else {
        if args.double_quant {
            bail!("--double-quant is an option of --quantize nf4; give that too");
        }
        return Ok(None);
    };
    if !lora {
        bail!("--quantize nf4 stores a frozen base: it needs a LoRA run (--lora-rank R with --init-from DIR)");
    }
    crate::engine::cpu::nf4_base::Nf4Linears::check_shape(model)
        .map_err(|e| anyhow::anyhow!("--quantize nf4: {e}"))?;
    Ok(Some(BaseQuant {
        format,
        double: args.double_quant,
    }))
}

/// Whether any option that sets the model's shape was given.
pub fn shape_given(args: &TrainArgs) -> bool {
    args.model.is_some()
        || args.dim.is_some()
        || args.n_layers.is_some()
        || args.n_heads.is_some()
        || args.n_kv_heads.is_some()
        || args.ffn_dim.is_some()
        || args.rope_theta.is_some()
        || args.tie_embeddings.is_some()
}

/// The model's shape: the `--init-from` model's, or a preset with the shape options applied.
fn model_shape(
    args: &TrainArgs,
    data: &DatasetFacts,
    init: Option<&ModelConfig>,
) -> Result<ModelConfig> {
    let vocab = data.vocab_size;
    if let (Some(dir), Some(shape)) = (&args.init_from, init) {
        if shape_given(args) {
            bail!("--init-from {} takes the model's shape from its config.json; leave out --model, --dim, --n-layers, --n-heads, --n-kv-heads, --ffn-dim, --rope-theta and --tie-embeddings", dir.display());
        }
        if shape.vocab_size != vocab {
            bail!(
                "--init-from {}: the model's vocabulary has {} ids but the dataset's tokenizer has {vocab}; the dataset must be made with that model's tokenizer",
                dir.display(),
                shape.vocab_size
            );
        }
        return Ok(shape.clone());
    }
    let name = args.model.as_deref().unwrap_or("tiny");
    let mut c = ModelConfig::preset(name, vocab).with_context(|| {
        let names: Vec<&str> = crate::model::PRESETS.iter().map(|p| p.0).collect();
        format!(
            "--model {name:?}: no such preset; choose one of {}",
            names.join(", ")
        )
    })?;
    let set = |field: &mut usize, v: Option<usize>| *field = v.unwrap_or(*field);
    set(&mut c.dim, args.dim);
    set(&mut c.n_layers, args.n_layers);
    set(&mut c.n_heads, args.n_heads);
    // --n-heads alone means multi-head attention (as many kv heads as heads).
    set(&mut c.n_kv_heads, args.n_kv_heads.or(args.n_heads));
    set(&mut c.ffn_dim, args.ffn_dim);
    c.rope_theta = args.rope_theta.unwrap_or(c.rope_theta);
    c.tie_embeddings = args.tie_embeddings.unwrap_or(c.tie_embeddings);
    Ok(c)
}

/// The sequence length (at most a block), and the model with room for it.
fn sequence(
    args: &TrainArgs,
    block_size: usize,
    mut model: ModelConfig,
    from_init: bool,
) -> Result<(usize, ModelConfig)> {
    let seq_len = args
        .seq_len
        .unwrap_or(block_size.min(model.max_seq_len.max(2)));
    if seq_len > block_size {
        bail!("--seq-len {seq_len} is longer than the dataset's blocks ({block_size} tokens); use --seq-len {block_size} or less, or re-run prep with a larger --block-size");
    }
    if seq_len < 2 {
        bail!("--seq-len must be at least 2 (one token predicts the next)");
    }
    if !from_init {
        model.max_seq_len = model.max_seq_len.max(seq_len);
    }
    model
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid model: {e}"))?;
    Ok((seq_len, model))
}

/// Micro-batch size and accumulation steps, both fitting the train split.
/// `--batch-tokens` counts the global batch, over `world` ranks.
fn batching(
    args: &TrainArgs,
    seq_len: usize,
    train_blocks: u64,
    world: usize,
) -> Result<(usize, usize)> {
    let batch_size = args.batch_size.unwrap_or(8);
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if batch_size as u64 > train_blocks {
        bail!("--batch-size {batch_size} is larger than the train split ({train_blocks} blocks); use --batch-size {train_blocks} or less, or a smaller --block-size in prep");
    }
    let grad_accum = match args.batch_tokens {
        Some(t) => {
            let per_micro = world * batch_size * seq_len; // bounded by the dataset above
            if t < per_micro || t % per_micro != 0 {
                let ranks = if world > 1 {
                    format!("{world} ranks × ")
                } else {
                    String::new()
                };
                bail!("--batch-tokens {t} must be a multiple of {ranks}--batch-size × --seq-len = {per_micro}");
            }
            t / per_micro
        }
        None => args.grad_accum.unwrap_or(1),
    };
    if grad_accum == 0 {
        bail!("--grad-accum must be at least 1");
    }
    if (batch_size as u64).saturating_mul(grad_accum as u64) > train_blocks {
        bail!(
            "one optimizer step needs {} blocks (--batch-size {batch_size} × --grad-accum {grad_accum}) but the train split has {train_blocks}; lower one of them",
            batch_size * grad_accum
        );
    }
    Ok((batch_size, grad_accum))
}

/// Whether the run evaluates. A dataset without a val split trains without evaluation, with a
/// notice; only an explicit `--eval-every` on such a dataset is an error.
fn evaluation(args: &TrainArgs, val_blocks: u64, notices: &mut Vec<String>) -> Result<bool> {
    if args.no_eval {
        return Ok(false);
    }
    if val_blocks > 0 {
        return Ok(true);
    }
    // `--eval-every 0` turns periodic evaluation off: no request to evaluate.
    if let Some(n) = args.eval_every.filter(|&n| n > 0) {
        bail!("--eval-every {n}: the dataset's val split is empty, so nothing can be evaluated; re-run prep with --val-fraction above 0, or leave out --eval-every");
    }
    notices.push(NO_VAL_NOTICE.to_string());
    Ok(false)
}

/// Optimizer steps, from `--steps`, `--epochs`, `--tokens` or one epoch.
fn run_length(
    args: &TrainArgs,
    train_blocks: u64,
    step_blocks: u64,
    seq_len: usize,
) -> Result<u64> {
    if let Some(e) = args.epochs {
        if !e.is_finite() || e <= 0.0 {
            bail!("--epochs must be a positive number, got {e}");
        }
    }
    let steps = match (args.steps, args.epochs, args.tokens) {
        (Some(s), _, _) => s,
        (None, Some(e), _) => ((e * train_blocks as f64) / step_blocks as f64).ceil() as u64,
        (None, None, Some(t)) => t.div_ceil(step_blocks * seq_len as u64),
        (None, None, None) => train_blocks.div_ceil(step_blocks),
    };
    if steps == 0 {
        bail!("the run has 0 steps; give --steps, --epochs or --tokens");
    }
    Ok(steps)
}

/// Refuses values that would make the run meaningless before any work is done.
fn check_hyperparameters(args: &TrainArgs, lr: f64) -> Result<()> {
    let nonneg = |name: &str, v: Option<f64>| -> Result<()> {
        match v {
            Some(x) if !x.is_finite() || x < 0.0 => {
                bail!("{name} must be a finite number ≥ 0, got {x}")
            }
            _ => Ok(()),
        }
    };
    nonneg("--lr", Some(lr))?;
    nonneg("--min-lr", args.min_lr)?;
    nonneg("--weight-decay", args.weight_decay.map(f64::from))?;
    nonneg("--adam-eps", args.adam_eps.map(f64::from))?;
    nonneg("--grad-clip", args.grad_clip.map(f64::from))?;
    for (name, b) in [("--beta1", args.beta1), ("--beta2", args.beta2)] {
        if let Some(b) = b {
            if !(0.0..1.0).contains(&b) {
                bail!("{name} must be in [0, 1), got {b}");
            }
        }
    }
    if let Some(f) = args.decay_fraction {
        if !(f > 0.0 && f <= 1.0) {
            bail!("--decay-fraction must be in (0, 1], got {f}");
        }
    }
    let at_least_one = [
        ("--eval-batches", args.eval_batches.map(|v| v as u64)),
        ("--keep-last", args.keep_last.map(|v| v as u64)),
        ("--log-every", args.log_every),
        ("--stop-after", args.stop_after),
    ];
    for (name, v) in at_least_one {
        if v == Some(0) {
            bail!("{name} must be at least 1");
        }
    }
    Ok(())
}

/// `key: a vs b` for every field that differs between two model shapes, for refusals.
pub fn model_differences(a: &ModelConfig, b: &ModelConfig) -> String {
    json_differences(a, b)
        .into_iter()
        .map(|(k, x, y)| format!("{k}: {x} vs {y}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `(key, a's value, b's value)` for every top-level field that differs.
pub fn json_differences<S: Serialize>(
    a: &S,
    b: &S,
) -> Vec<(String, serde_json::Value, serde_json::Value)> {
    let (a, b) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Vec::new();
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| {
            let other = b.get(k).cloned().unwrap_or(serde_json::Value::Null);
            (k.clone(), v.clone(), other)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(val_blocks: u64) -> DatasetFacts {
        DatasetFacts {
            shards: "shards".into(),
            vocab_size: 259,
            block_size: 64,
            train_blocks: 100,
            val_blocks,
        }
    }

    fn args(extra: &[&str]) -> TrainArgs {
        use clap::Parser;
        let mut a = vec!["train"];
        a.extend_from_slice(extra);
        crate::cli::Cli::parse_from(a).train
    }

    /// With several ranks, `--batch-size` is each rank's: the global batch must fit the train
    /// split, `--batch-tokens` counts the global batch, and the run's length global steps.
    #[test]
    fn ranks_multiply_the_batch() {
        let two = |extra: &[&str]| resolve_ranks(&args(extra), &facts(10), None, 2);
        let e = two(&["--batch-size", "40", "--grad-accum", "2"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("one optimizer step of 2 ranks needs 160 blocks"),
            "{e}"
        );
        let e = two(&[
            "--batch-size",
            "4",
            "--seq-len",
            "64",
            "--batch-tokens",
            "256",
        ])
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("multiple of 2 ranks × --batch-size × --seq-len = 512"),
            "{e}"
        );
        let c = two(&[
            "--batch-size",
            "4",
            "--seq-len",
            "64",
            "--batch-tokens",
            "1024",
        ])
        .unwrap()
        .config;
        assert_eq!(
            (c.world, c.batch_size, c.grad_accum, c.global_batch()),
            (2, 4, 2, 16)
        );
        // One epoch of 100 blocks at 16 blocks a step.
        let c = two(&["--batch-size", "4", "--grad-accum", "2", "--epochs", "1"])
            .unwrap()
            .config;
        assert_eq!(c.steps, 7);
    }

    #[test]
    fn defaults_fill_a_run_from_the_dataset_alone() {
        let r = resolve(&args(&[]), &facts(4), None).unwrap();
        let c = r.config;
        assert!(r.notices.is_empty(), "{:?}", r.notices);
        assert_eq!((c.seq_len, c.batch_size, c.grad_accum), (64, 8, 1));
        // One epoch of 100 blocks at 8 per step.
        assert_eq!(c.steps, 13);
        assert!(c.evaluate);
        assert_eq!(c.device, Device::Auto);
        assert_eq!(c.dtype, DType::F32);
        assert_eq!(c.out, PathBuf::from("runs/run"));
        assert_eq!(c.attention, AttentionKernels::Auto);
        // The attention kernels are an option of the run, recorded in its config.json.
        let c = resolve(&args(&["--attention", "simt"]), &facts(4), None)
            .unwrap()
            .config;
        assert_eq!(c.attention, AttentionKernels::Simt);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["attention"], "simt");
        assert_eq!(json["device"], "auto");
    }

    #[test]
    fn no_val_split_turns_evaluation_off_with_a_notice() {
        let r = resolve(&args(&[]), &facts(0), None).unwrap();
        assert!(!r.config.evaluate);
        assert_eq!(r.notices, [NO_VAL_NOTICE]);
        // Asked for explicitly, evaluation on an empty split is an error of one line.
        let e = resolve(&args(&["--eval-every", "5"]), &facts(0), None).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("--eval-every 5") && msg.contains("val split is empty"));
        assert!(!msg.contains('\n'));
        // --eval-every 0 asks for no evaluation; --no-eval says nothing.
        let r = resolve(&args(&["--eval-every", "0"]), &facts(0), None).unwrap();
        assert!(!r.config.evaluate);
        let r = resolve(&args(&["--no-eval"]), &facts(0), None).unwrap();
        assert!(!r.config.evaluate && r.notices.is_empty());
    }

    #[test]
    fn refusals_name_the_option_to_change() {
        let cases: &[(&[&str], &str)] = &[
            (&["--seq-len", "65"], "--seq-len 65 is longer"),
            (&["--batch-size", "101"], "--batch-size 101 is larger"),
            (
                &["--batch-size", "8", "--grad-accum", "20"],
                "one optimizer step needs 160",
            ),
            (
                &["--batch-tokens", "100"],
                "--batch-tokens 100 must be a multiple",
            ),
            (&["--model", "huge"], "--model \"huge\": no such preset"),
            (&["--beta1", "1.5"], "--beta1 must be in [0, 1)"),
            (&["--steps", "0"], "0 steps"),
            (&["--keep-last", "0"], "--keep-last must be at least 1"),
        ];
        for (extra, want) in cases {
            let e = resolve(&args(extra), &facts(4), None).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{extra:?}: {e:#}");
        }
    }

    #[test]
    fn lora_options_are_checked_against_the_base() {
        let shape = ModelConfig::preset("tiny", 259).unwrap();
        let lora = |extra: &[&str]| {
            let mut a = vec!["--init-from", "base"];
            a.extend_from_slice(extra);
            resolve(&args(&a), &facts(4), Some(&shape)).map(|r| r.config.lora)
        };
        let l = lora(&["--lora-rank", "8", "--lora-save", "embed_tokens"])
            .unwrap()
            .unwrap();
        assert_eq!(
            (l.rank, l.alpha, l.dropout, l.targets.len()),
            (8, 8.0, 0.0, 7)
        );
        assert_eq!(l.save, [crate::lora::Saved::EmbedTokens]);
        assert!(lora(&[]).unwrap().is_none());
        let cases: &[(&[&str], &str)] = &[
            (&["--lora-rank", "0"], "--lora-rank must be at least 1"),
            (
                &["--lora-rank", "33"],
                "--lora-rank 33 is larger than 32 of k_proj",
            ),
            (
                &["--lora-rank", "4", "--lora-targets", "q_proj,attn"],
                "no module \"attn\"",
            ),
            (
                &["--lora-rank", "4", "--lora-save", "norm"],
                "--lora-save: \"norm\"",
            ),
            (
                &["--lora-alpha", "16"],
                "--lora-alpha is an option of LoRA training",
            ),
            (
                &["--lora-rank", "4", "--lora-dropout", "1"],
                "--lora-dropout must be in [0, 1)",
            ),
        ];
        for (extra, want) in cases {
            let e = lora(extra).unwrap_err();
            let msg = format!("{e:#}");
            assert!(
                msg.contains(want) && !msg.contains('\n'),
                "{extra:?}: {msg}"
            );
        }
        let e = resolve(&args(&["--lora-rank", "4"]), &facts(4), None).unwrap_err();
        assert!(format!("{e:#}").contains("give --init-from DIR"), "{e:#}");
    }

    #[test]
    fn init_from_takes_the_shape_and_refuses_shape_options() {
        let shape = ModelConfig::preset("tiny", 259).unwrap();
        let a = args(&["--init-from", "base"]);
        let r = resolve(&a, &facts(4), Some(&shape)).unwrap();
        assert_eq!(r.config.model, shape);
        let e = resolve(
            &args(&["--init-from", "base", "--dim", "32"]),
            &facts(4),
            Some(&shape),
        );
        assert!(format!("{:#}", e.unwrap_err()).contains("leave out --model"));
        let other = ModelConfig::preset("tiny", 300).unwrap();
        let e = resolve(&a, &facts(4), Some(&other)).unwrap_err();
        assert!(format!("{e:#}").contains("vocabulary has 300 ids"));
    }
}
