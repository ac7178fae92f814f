//! The Llama model description: shape ([`ModelConfig`]), presets, and the parameter layout
//! ([`Layout`]) that maps every Hugging Face tensor name to a range of one flat buffer.

pub mod init;
pub mod layout;

use serde::{Deserialize, Serialize};

pub use layout::{Layout, Tensor};

/// Everything that fixes the model's function, as `LlamaForCausalLM` understands it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ffn_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_embeddings: bool,
    /// Longest sequence the model is meant for (`max_position_embeddings`).
    pub max_seq_len: usize,
}

/// Named shapes. `vocab_size` always comes from the dataset.
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny", "dim 64, 4 layers, 4 heads (2 kv), ffn 176: ~0.2M parameters plus embeddings; tests and the quickstart"),
    ("15M", "dim 288, 6 layers, 6 heads, ffn 768 (llama2.c stories15M)"),
    ("42M", "dim 512, 8 layers, 8 heads, ffn 1376 (llama2.c stories42M)"),
    ("110M", "dim 768, 12 layers, 12 heads, ffn 2048 (llama2.c stories110M)"),
    ("124M", "dim 768, 12 layers, 12 heads, ffn 2048, 1024 positions: GPT-2-small scale with a GPT-2 vocabulary"),
];

impl ModelConfig {
    /// The preset called `name`, for a vocabulary of `vocab_size`.
    pub fn preset(name: &str, vocab_size: usize) -> Option<ModelConfig> {
        let (dim, n_layers, n_heads, n_kv_heads, ffn_dim, max_seq_len) = match name {
            "tiny" => (64, 4, 4, 2, 176, 256),
            "15M" => (288, 6, 6, 6, 768, 256),
            "42M" => (512, 8, 8, 8, 1376, 1024),
            "110M" => (768, 12, 12, 12, 2048, 1024),
            "124M" => (768, 12, 12, 12, 2048, 1024),
            _ => return None,
        };
        Some(ModelConfig {
            vocab_size,
            dim,
            n_layers,
            n_heads,
            n_kv_heads,
            ffn_dim,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            tie_embeddings: true,
            max_seq_len,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Checks the shape is one the engines can run; the message names the field to change.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("--dim", self.dim),
            ("--n-layers", self.n_layers),
            ("--n-heads", self.n_heads),
            ("--n-kv-heads", self.n_kv_heads),
            ("--ffn-dim", self.ffn_dim),
            ("max_seq_len", self.max_seq_len),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        // Far beyond what one machine trains; refusing here avoids an allocation abort.
        const MAX_PARAMS: u128 = 1 << 36;
        let n = self.checked_num_params();
        if n > MAX_PARAMS {
            return Err(format!("the model would have {n} parameters, more than the {MAX_PARAMS} this trainer supports; lower --dim, --n-layers or --ffn-dim"));
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return Err(format!(
                "--dim {} is not a multiple of --n-heads {}",
                self.dim, self.n_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head dimension {} (dim / n_heads) must be even for RoPE",
                self.head_dim()
            ));
        }
        if self.n_kv_heads > self.n_heads || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!(
                "--n-kv-heads {} must divide --n-heads {}",
                self.n_kv_heads, self.n_heads
            ));
        }
        if self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
            || self.rms_norm_eps.is_nan()
            || self.rms_norm_eps <= 0.0
        {
            return Err("--rope-theta and rms_norm_eps must be positive".into());
        }
        Ok(())
    }

    /// Parameter count computed without overflow, for validation before any allocation.
    pub fn checked_num_params(&self) -> u128 {
        let (v, d, f) = (
            self.vocab_size as u128,
            self.dim as u128,
            self.ffn_dim as u128,
        );
        let hd = (self.dim / self.n_heads.max(1)) as u128;
        let (q, kv) = (self.n_heads as u128 * hd, self.n_kv_heads as u128 * hd);
        let block = 2 * d + q * d + 2 * kv * d + d * q + 3 * f * d;
        let head = if self.tie_embeddings { 0 } else { v * d };
        v * d + self.n_layers as u128 * block + d + head
    }

    /// Total parameter count.
    pub fn num_params(&self) -> usize {
        Layout::new(self).len()
    }
}
