//! Command line: `train --shards DIR` trains; `train sample` and `train eval` use checkpoints.
//! Every training option can also come from `--config run.toml` (same names, with
//! underscores); the command line wins.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::device::{AttentionKernels, DType, Device};
use crate::schedule::ScheduleKind;

#[derive(Parser, Debug)]
#[command(
    name = "train",
    version,
    about = "Pretrain a Llama on ingot shards",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate text from a checkpoint (or any Hugging Face Llama directory).
    Sample(SampleArgs),
    /// Loss and perplexity of a checkpoint on a dataset with the same tokenizer.
    Eval(EvalArgs),
    /// Fold a LoRA adapter into its base: a plain Hugging Face model directory.
    Merge(MergeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct MergeArgs {
    /// The base model directory the adapter was trained on (default: the adapter's
    /// base_model_name_or_path). Its SHA-256 is checked against the adapter's record.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// A PEFT LoRA adapter directory (a LoRA run's checkpoint, or one PEFT wrote).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The merged model directory to create (must not exist); weights in the base's dtype.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainArgs {
    /// Dataset directory written by prep.
    #[arg(long)]
    pub shards: Option<PathBuf>,
    /// Options from a TOML file (keys as the long options, with underscores); the command line wins.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Run directory (default runs/<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run name, for the default run directory.
    #[arg(long)]
    pub name: Option<String>,
    /// Model preset: tiny, 15M, 42M, 110M, 124M.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub dim: Option<usize>,
    #[arg(long)]
    pub n_layers: Option<usize>,
    #[arg(long)]
    pub n_heads: Option<usize>,
    #[arg(long)]
    pub n_kv_heads: Option<usize>,
    #[arg(long)]
    pub ffn_dim: Option<usize>,
    #[arg(long)]
    pub rope_theta: Option<f64>,
    /// Share the embedding and LM-head weights (true/false).
    #[arg(long)]
    pub tie_embeddings: Option<bool>,
    /// Tokens per training sequence (≤ the dataset's block size; blocks are cropped).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Sequences per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Tokens per optimizer step; sets --grad-accum to batch_tokens / (batch_size × seq_len).
    #[arg(long, conflicts_with = "grad_accum")]
    pub batch_tokens: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Final learning rate (default lr / 10).
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Linear warmup steps (default 10% of the run, at most 1000).
    #[arg(long)]
    pub warmup: Option<u64>,
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// Share of the run spent decaying with --schedule wsd.
    #[arg(long)]
    pub decay_fraction: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f32>,
    #[arg(long)]
    pub beta1: Option<f32>,
    #[arg(long)]
    pub beta2: Option<f32>,
    #[arg(long)]
    pub adam_eps: Option<f32>,
    /// Global gradient-norm clip (0 turns clipping off).
    #[arg(long)]
    pub grad_clip: Option<f32>,
    /// Run length in optimizer steps.
    #[arg(long, conflicts_with_all = ["epochs", "tokens"])]
    pub steps: Option<u64>,
    /// Run length in passes over the train split.
    #[arg(long, conflicts_with = "tokens")]
    pub epochs: Option<f64>,
    /// Run length in training tokens.
    #[arg(long)]
    pub tokens: Option<u64>,
    /// Evaluate every N steps (and always at the end).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Validation batches per evaluation.
    #[arg(long)]
    pub eval_batches: Option<usize>,
    /// Skip evaluation entirely (for datasets without a val split).
    #[arg(long)]
    pub no_eval: bool,
    /// Save a checkpoint every N steps (and always at the end).
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Checkpoints kept besides the best one.
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Write a metrics line every N steps.
    #[arg(long)]
    pub log_every: Option<u64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// auto, cpu, or cuda[:N].
    #[arg(long)]
    pub device: Option<Device>,
    /// Storage type of weights and activations on the GPU: bf16 (mixed precision, the
    /// default with --device cuda) or f32 (the same kernels in f32, for debugging; the only
    /// choice of the CPU engine).
    #[arg(long, value_enum)]
    pub dtype: Option<DType>,
    /// Attention kernels of the CUDA engine: auto (tensor cores where they can run), mma
    /// (tensor cores or an error), simt (warp per row). Recorded in the run's config.json.
    #[arg(long, value_enum)]
    pub attention: Option<AttentionKernels>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Continue the latest checkpoint in the run directory.
    #[arg(long)]
    pub resume: bool,
    /// Start from the weights of a Hugging Face Llama directory.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Train a LoRA adapter of this rank on the frozen --init-from model instead of the whole
    /// model; checkpoints are PEFT adapter directories.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA's α: the adapter's product is scaled by α/r (default 8, as PEFT's).
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Dropout on the adapters' inputs while training (default 0).
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// Layers that get adapters, comma-separated (default every linear layer:
    /// q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).
    #[arg(long)]
    pub lora_targets: Option<String>,
    /// Modules trained whole and saved with the adapter (PEFT's modules_to_save):
    /// embed_tokens, lm_head, comma-separated.
    #[arg(long)]
    pub lora_save: Option<String>,
    /// Scale the adapters by α/√r (rsLoRA) instead of α/r.
    #[arg(long)]
    pub rslora: bool,
    /// QLoRA: store the frozen base's linear layers in this 4-bit format (nf4), dequantised
    /// where they are used. Its dimensions must be multiples of 64.
    #[arg(long, value_enum)]
    pub quantize: Option<crate::quant::Quantize>,
    /// With --quantize: store the per-block absmax values in 8 bits too (QLoRA's double
    /// quantisation), about 0.4 bits per weight less.
    #[arg(long)]
    pub double_quant: bool,
    /// Check every shard's checksum before training.
    #[arg(long)]
    pub verify_data: bool,
    /// Stop after this many steps of this invocation, saving a checkpoint, as Ctrl+C would.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// ZeRO stage of a data-parallel run: 0 keeps the whole AdamW state on every rank, 1
    /// shards the moments (and on the GPU the f32 master weights) across the ranks.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub zero: Option<u8>,
    /// Where the CUDA engine's ranks meet to share the NCCL id: tcp:HOST:PORT, or file:PATH on
    /// a filesystem every rank sees (default: TCP at MASTER_ADDR, port MASTER_PORT + 1).
    #[arg(long)]
    pub rendezvous: Option<String>,
    /// Seconds a rank waits for the others at the rendezvous and in a collective before it
    /// gives up with an error (not while rank 0 writes a checkpoint on the CUDA engine: there
    /// only a vanished rank or NCCL's own error ends the wait).
    #[arg(long)]
    pub dist_timeout: Option<u64>,
    /// On --resume, accept a global batch (ranks × --batch-size × --grad-accum) other than the
    /// run's: training continues from the same data position with the new batch.
    #[arg(long)]
    pub allow_batch_change: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// A checkpoint directory (or any Hugging Face Llama model directory with a tokenizer.json).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value = "")]
    pub prompt: String,
    #[arg(long, default_value_t = 200)]
    pub max_new_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Recompute the whole sequence for every new token instead of using the key/value cache
    /// (the slow reference, for comparisons).
    #[arg(long)]
    pub no_kv_cache: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Where `train eval` and `train sample` compute, as for training.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// auto, cpu, or cuda[:N].
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// bf16 or f32 on a GPU (default bf16); the CPU computes in f32.
    #[arg(long, value_enum)]
    pub dtype: Option<DType>,
    /// Attention kernels of the CUDA engine: auto, mma or simt.
    #[arg(long, value_enum, default_value_t)]
    pub attention: AttentionKernels,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl EngineArgs {
    /// The dtype asked for, or the device's default.
    pub fn dtype(&self) -> DType {
        self.dtype.unwrap_or(self.device.default_dtype())
    }
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub shards: PathBuf,
    /// Which split to evaluate.
    #[arg(long, default_value = "val")]
    pub split: String,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Tokens per sequence (default: the dataset's block size, at most the model's positions).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// At most this many batches (0: the whole split).
    #[arg(long, default_value_t = 0)]
    pub max_batches: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl TrainArgs {
    /// The command line over the config file: values given on the command line win. Flags
    /// (`--resume`, ...) can only be switched on from either side.
    pub fn merged_with_file(&self) -> anyhow::Result<TrainArgs> {
        use anyhow::Context;
        let Some(path) = &self.config else {
            return Ok(self.clone());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --config {}", path.display()))?;
        let file: toml::Value = toml::from_str(&text).map_err(|e| {
            // toml's own message draws the offending line; keep one line: where and what.
            let line = e.span().map_or(0, |r| {
                text[..r.start.min(text.len())].lines().count().max(1)
            });
            anyhow::anyhow!("{}:{line}: not valid TOML: {}", path.display(), e.message())
        })?;
        let mut merged = serde_json::to_value(file).context("config to JSON")?;
        let cli = serde_json::to_value(self)?;
        let (Some(m), Some(c)) = (merged.as_object_mut(), cli.as_object()) else {
            anyhow::bail!("{}: expected a table of options", path.display());
        };
        // Options that exclude each other: the command line's choice removes the file's.
        let groups: [&[&str]; 2] = [
            &["steps", "epochs", "tokens"],
            &["grad_accum", "batch_tokens"],
        ];
        let given = |k: &str| c.get(k).is_some_and(|v| !v.is_null());
        for group in groups {
            if group.iter().any(|k| given(k)) {
                for k in group {
                    m.remove(*k);
                }
            }
        }
        for (k, v) in c {
            if !(v.is_null() || *v == serde_json::Value::Bool(false)) {
                m.insert(k.clone(), v.clone());
            }
        }
        let mut out: TrainArgs = serde_json::from_value(merged)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        out.config = self.config.clone();
        Ok(out)
    }
}
