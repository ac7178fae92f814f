//! The seam between the training loop and the engines that compute the model.
//!
//! The loop hands an engine micro-batches of token ids and asks for losses, optimizer steps,
//! evaluation and parameter import/export; it never knows which engine runs. The CPU engine
//! ([`cpu::CpuEngine`]) is the f32 reference.

pub mod cpu;
pub mod cuda;
pub mod optim;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::collective::Collective;
use crate::model::ModelConfig;
pub use optim::AdamW;

/// A micro-batch: `batch` rows of `seq` token ids, row-major. Within a row, positions
/// `0..seq-1` predict tokens `1..seq` (Hugging Face's causal-LM loss).
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    pub batch: usize,
    pub seq: usize,
}

impl Batch<'_> {
    /// Number of predictions (loss terms) in the batch.
    pub fn predictions(&self) -> usize {
        self.batch * self.seq.saturating_sub(1)
    }

    /// Checks the shape and that every id is inside a vocabulary of `vocab_size`.
    pub fn check(&self, vocab_size: usize) -> Result<()> {
        if self.tokens.len() != self.batch * self.seq || self.seq == 0 {
            anyhow::bail!(
                "batch of {} tokens is not {} × {}",
                self.tokens.len(),
                self.batch,
                self.seq
            );
        }
        if let Some(&bad) = self.tokens.iter().find(|&&t| t as usize >= vocab_size) {
            anyhow::bail!("token id {bad} is outside the model's vocabulary of {vocab_size}");
        }
        Ok(())
    }
}

/// The layout of a model whose parameters are `params_len` values, after checking both; what
/// every engine's constructor starts with.
pub fn checked_layout(config: &ModelConfig, params_len: usize) -> Result<crate::model::Layout> {
    if let Err(e) = config.validate() {
        anyhow::bail!("invalid model: {e}");
    }
    let layout = crate::model::Layout::new(config);
    if params_len != layout.len() {
        anyhow::bail!(
            "{params_len} parameters given, the model has {}",
            layout.len()
        );
    }
    Ok(layout)
}

/// Refuses a key/value cache of `capacity` positions that the model cannot use.
pub fn check_capacity(config: &ModelConfig, capacity: usize) -> Result<()> {
    if capacity == 0 || capacity > config.max_seq_len {
        anyhow::bail!(
            "a sequence of {capacity} positions: the model takes 1 to {} (its max_position_embeddings)",
            config.max_seq_len
        );
    }
    Ok(())
}

/// Refuses new tokens for a cached sequence at `len` of `capacity` positions: none, ids
/// outside the vocabulary, or more than the cache has room for.
pub fn check_extension(
    config: &ModelConfig,
    tokens: &[u32],
    len: usize,
    capacity: usize,
) -> Result<()> {
    if tokens.is_empty() {
        anyhow::bail!("no tokens to extend the sequence with");
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= config.vocab_size) {
        anyhow::bail!(
            "token id {bad} is outside the model's vocabulary of {}",
            config.vocab_size
        );
    }
    if len + tokens.len() > capacity {
        anyhow::bail!(
            "the sequence would reach {} positions; it was begun with room for {capacity}",
            len + tokens.len()
        );
    }
    Ok(())
}

/// Which attention kernels the CUDA engine runs (`--attention`); the CPU engine has one
/// implementation and no choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernels {
    /// The tensor-core kernels wherever they can run (bf16, head dim 64 or 128, sm_80+),
    /// else the warp-per-row ones.
    #[default]
    Auto,
    /// The tensor-core kernels, and an error where they cannot run.
    Mma,
    /// The warp-per-row kernels (any dtype and head dim up to 256).
    Simt,
}

impl std::fmt::Display for AttentionKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttentionKernels::Auto => "auto",
            AttentionKernels::Mma => "mma",
            AttentionKernels::Simt => "simt",
        })
    }
}

/// What an engine starts from: the model's weights and, for LoRA, the adapter that trains
/// while they stay frozen.
pub struct Weights {
    pub base: Vec<f32>,
    pub adapter: Option<Adapter>,
}

/// A LoRA adapter to train: its options, its parameters in their
/// [`crate::lora::AdapterLayout`], and the seed of its dropout masks.
pub struct Adapter {
    pub lora: crate::lora::LoraConfig,
    pub params: Vec<f32>,
    pub seed: u64,
    /// QLoRA: the base's linear weights are kept quantised.
    pub quantize: Option<crate::quant::BaseQuant>,
}

impl From<Vec<f32>> for Weights {
    fn from(base: Vec<f32>) -> Weights {
        Weights {
            base,
            adapter: None,
        }
    }
}

/// An engine's estimate of the memory a run needs, in bytes, by what holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The base model's weights (frozen with LoRA).
    pub base: u128,
    /// The adapters' parameters and gradients (with their master copies where kept).
    pub adapters: u128,
    /// AdamW's two moments of what trains.
    pub optimizer: u128,
    /// What the forward pass keeps for the backward pass, and scratch.
    pub activations: u128,
}

impl MemoryEstimate {
    pub fn total(&self) -> u128 {
        self.base + self.adapters + self.optimizer + self.activations
    }
}

impl std::fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "{:.2} GiB (base {:.2}, adapters {:.3}, optimizer {:.3}, activations {:.2})",
            gib(self.total()),
            gib(self.base),
            gib(self.adapters),
            gib(self.optimizer),
            gib(self.activations)
        )
    }
}

/// AdamW state that a checkpoint must carry to resume exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    /// Optimizer steps taken (for bias correction).
    pub step: u64,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
}

pub trait Engine {
    /// A short name for messages, e.g. `cpu`.
    fn name(&self) -> String;
    fn config(&self) -> &ModelConfig;
    /// Forward and backward on one micro-batch. Gradients are added to the engine's gradient
    /// buffer, multiplied by `grad_scale` (1/k when accumulating k micro-batches). Returns the
    /// micro-batch's mean loss.
    fn forward_backward(&mut self, batch: &Batch, grad_scale: f32) -> Result<f32>;
    /// Mean loss without gradients.
    fn loss(&mut self, batch: &Batch) -> Result<f32>;
    /// Logits `[tokens.len(), vocab]` of one sequence.
    fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Starts a sequence decoded with a key/value cache of `capacity` positions (1 to the
    /// model's `max_seq_len`), dropping any previous one.
    fn begin_sequence(&mut self, capacity: usize) -> Result<()>;
    /// Runs `tokens` (a whole prompt in one batched pass, or one new token) at the next
    /// positions of the cached sequence, keeping their keys and values, and returns the
    /// logits `[vocab]` of the last of them: what [`Engine::logits`] of the whole sequence
    /// gives at that position, at the cost of the new positions only.
    fn extend_sequence(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Clips the accumulated gradients to `grad_clip` global norm (if given), takes one AdamW
    /// step at `lr`, and zeroes the gradients. Returns the global norm before clipping.
    fn step(&mut self, opt: &AdamW, lr: f32, grad_clip: Option<f32>) -> Result<f32>;
    /// The parameters that train as one flat f32 buffer: the whole model in its
    /// [`crate::model::Layout`], or with LoRA the adapter in its
    /// [`crate::lora::AdapterLayout`] (copied from the device, which can fail, on a GPU). Under ZeRO-1 on the GPU the ranks gather
    /// their shards of the master weights, so every rank must call it.
    fn params(&mut self) -> Result<Vec<f32>>;
    fn set_params(&mut self, params: &[f32]) -> Result<()>;
    /// The whole optimizer state in the layout of [`Engine::params`]; under ZeRO-1 the ranks gather their
    /// shards, so every rank must call it.
    fn optimizer_state(&mut self) -> Result<OptimizerState>;
    fn set_optimizer_state(&mut self, state: OptimizerState) -> Result<()>;
    /// Allocates what micro-batches of `batch × seq` tokens (the largest the run uses) need,
    /// so that a run that cannot fit is refused before it starts. Nothing to do on the CPU.
    fn prepare(&mut self, _batch: usize, _seq: usize) -> Result<()> {
        Ok(())
    }
    /// Accelerator memory in use, in bytes, for the metrics; `None` for the CPU.
    fn device_memory_used(&self) -> Option<u64> {
        None
    }
    /// The ranks this engine trains with: the loop agrees with them on the loss, the stop
    /// request and the validation sums, and waits with them for checkpoints.
    fn collective(&mut self) -> &mut dyn Collective;
    /// The attention kernels this engine chose (`Mma` or `Simt`), for engines that have a
    /// choice; `None` for the CPU.
    fn attention_kernels(&self) -> Option<AttentionKernels> {
        None
    }
}
