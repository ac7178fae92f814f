//! LoRA: low-rank adapters trained on a frozen base model, in PEFT's terms.
//!
//! A targeted linear layer `y = x·Wᵀ` becomes `y = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ` with `A [r, in]`,
//! `B [out, r]` and `s = α/r` (rsLoRA: `α/√r`). `W` is frozen; only `A` and `B` train, plus
//! whole copies of the modules named in `--lora-save` (PEFT's `modules_to_save`). A starts
//! Kaiming-uniform as PEFT's and B at zero, so step 0 computes exactly the base model.
//!
//! - [`LoraConfig`]: the options, checked against the model once.
//! - [`layout`]: the adapter's own flat buffer with PEFT-named views.
//! - [`merge`]: `W + s·B·A` folded into a plain model.

pub mod layout;
pub mod merge;

use serde::{Deserialize, Serialize};

use crate::model::layout::BlockOffsets;
use crate::model::ModelConfig;
pub use layout::AdapterLayout;

/// SHA-256 of a base model's weights as the engines see them: every tensor of its
/// [`crate::model::Layout`] in order, as little-endian f32. It names the weights, whatever
/// file sharding or dtype they were read from, so an adapter is refused on another base.
pub fn base_sha256(params: &[f32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut bytes = Vec::with_capacity(4 << 16);
    for chunk in params.chunks(1 << 16) {
        bytes.clear();
        bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        h.update(&bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A linear layer of a transformer block that can carry an adapter (PEFT's module names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

impl Target {
    /// Every target, in the order of the adapter buffer.
    pub const ALL: [Target; 7] = [
        Target::QProj,
        Target::KProj,
        Target::VProj,
        Target::OProj,
        Target::GateProj,
        Target::UpProj,
        Target::DownProj,
    ];

    /// PEFT's name, as in `target_modules`.
    pub fn name(self) -> &'static str {
        match self {
            Target::QProj => "q_proj",
            Target::KProj => "k_proj",
            Target::VProj => "v_proj",
            Target::OProj => "o_proj",
            Target::GateProj => "gate_proj",
            Target::UpProj => "up_proj",
            Target::DownProj => "down_proj",
        }
    }

    /// The module's path inside a block, e.g. `self_attn.q_proj`.
    pub fn module(self) -> String {
        let parent = match self {
            Target::QProj | Target::KProj | Target::VProj | Target::OProj => "self_attn",
            _ => "mlp",
        };
        format!("{parent}.{}", self.name())
    }

    pub fn parse(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// `(in, out)` features of this layer in a model.
    pub fn dims(self, c: &ModelConfig) -> (usize, usize) {
        let hd = c.head_dim();
        let (q, kv) = (c.n_heads * hd, c.n_kv_heads * hd);
        match self {
            Target::QProj => (c.dim, q),
            Target::KProj | Target::VProj => (c.dim, kv),
            Target::OProj => (q, c.dim),
            Target::GateProj | Target::UpProj => (c.dim, c.ffn_dim),
            Target::DownProj => (c.ffn_dim, c.dim),
        }
    }

    /// The largest `f(in, out)` over the seven projections of a block of `c` (buffer sizes:
    /// `in * out` for the largest weight, `in` for the widest input).
    pub fn max_over(c: &ModelConfig, f: impl Fn(usize, usize) -> usize) -> usize {
        Target::ALL
            .iter()
            .map(|t| t.dims(c))
            .map(|(i, o)| f(i, o))
            .max()
            .unwrap_or(1)
    }

    /// Where the frozen weight of this layer starts in the base buffer.
    pub fn base_offset(self, b: &BlockOffsets) -> usize {
        match self {
            Target::QProj => b.wq,
            Target::KProj => b.wk,
            Target::VProj => b.wv,
            Target::OProj => b.wo,
            Target::GateProj => b.w_gate,
            Target::UpProj => b.w_up,
            Target::DownProj => b.w_down,
        }
    }
}

/// A module trained and saved whole (PEFT's `modules_to_save`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Saved {
    EmbedTokens,
    LmHead,
}

impl Saved {
    pub const ALL: [Saved; 2] = [Saved::EmbedTokens, Saved::LmHead];

    pub fn name(self) -> &'static str {
        match self {
            Saved::EmbedTokens => "embed_tokens",
            Saved::LmHead => "lm_head",
        }
    }

    pub fn parse(name: &str) -> Option<Saved> {
        Saved::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The LoRA options of a run, resolved once and recorded in its `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Scale by α/√r (rsLoRA) instead of α/r.
    pub rslora: bool,
    /// Adapted layers, in [`Target::ALL`] order, each at most once.
    pub targets: Vec<Target>,
    /// Modules trained whole, in [`Saved::ALL`] order.
    pub save: Vec<Saved>,
}

/// PEFT's default targets for a Llama are the attention's q and v; continued pretraining
/// usually adapts every linear layer, so that is ours.
pub const DEFAULT_TARGETS: &str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";

impl LoraConfig {
    /// The factor of the low-rank product: α/r, or α/√r with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Parses `--lora-targets` and `--lora-save` lists (comma-separated PEFT names).
    pub fn parse_lists(targets: &str, save: &str) -> Result<(Vec<Target>, Vec<Saved>), String> {
        let mut t = Vec::new();
        for name in targets.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let target = Target::parse(name).ok_or_else(|| {
                format!("--lora-targets: no module {name:?} in a Llama block; choose from {DEFAULT_TARGETS}")
            })?;
            t.push(target);
        }
        if t.is_empty() {
            return Err(format!(
                "--lora-targets names no module; choose from {DEFAULT_TARGETS}"
            ));
        }
        let mut s = Vec::new();
        for name in save.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let saved = Saved::parse(name).ok_or_else(|| {
                format!("--lora-save: {name:?} cannot be trained whole; choose from embed_tokens, lm_head")
            })?;
            s.push(saved);
        }
        t.sort();
        t.dedup();
        s.sort();
        s.dedup();
        Ok((t, s))
    }

    /// Checks the options against the model; the message names the option to change.
    pub fn validate(&self, c: &ModelConfig) -> Result<(), String> {
        let smallest = self
            .targets
            .iter()
            .map(|t| {
                let (i, o) = t.dims(c);
                (i.min(o), *t)
            })
            .min();
        if self.rank == 0 {
            return Err("--lora-rank must be at least 1".into());
        }
        if let Some((limit, t)) = smallest {
            if self.rank > limit {
                return Err(format!(
                    "--lora-rank {} is larger than {} of {} ({}×{}): a rank above the smaller dimension adds nothing; use --lora-rank {limit} or less",
                    self.rank,
                    limit,
                    t.name(),
                    t.dims(c).1,
                    t.dims(c).0
                ));
            }
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!(
                "--lora-alpha must be a positive number, got {}",
                self.alpha
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!(
                "--lora-dropout must be in [0, 1), got {}",
                self.dropout
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lora(rank: usize) -> LoraConfig {
        let (targets, save) = LoraConfig::parse_lists(DEFAULT_TARGETS, "").unwrap();
        LoraConfig {
            rank,
            alpha: 16.0,
            dropout: 0.0,
            rslora: false,
            targets,
            save,
        }
    }

    #[test]
    fn lists_parse_sort_and_refuse_unknown_names() {
        let (t, s) =
            LoraConfig::parse_lists("v_proj, q_proj,v_proj", "lm_head,embed_tokens").unwrap();
        assert_eq!(t, [Target::QProj, Target::VProj]);
        assert_eq!(s, [Saved::EmbedTokens, Saved::LmHead]);
        let e = LoraConfig::parse_lists("q_proj,qkv_proj", "").unwrap_err();
        assert!(
            e.contains("\"qkv_proj\"") && e.contains("choose from"),
            "{e}"
        );
        let e = LoraConfig::parse_lists("q_proj", "norm").unwrap_err();
        assert!(e.contains("--lora-save") && e.contains("\"norm\""), "{e}");
        assert!(LoraConfig::parse_lists(" , ", "").is_err());
    }

    #[test]
    fn rank_is_checked_against_every_target() {
        // tiny: dim 64, 2 kv heads of 16 → k_proj is 32 × 64.
        let c = ModelConfig::preset("tiny", 259).unwrap();
        assert!(lora(32).validate(&c).is_ok());
        let e = lora(33).validate(&c).unwrap_err();
        assert!(e.contains("--lora-rank 33") && e.contains("k_proj"), "{e}");
        assert!(lora(0).validate(&c).unwrap_err().contains("at least 1"));
        let bad = LoraConfig {
            dropout: 1.0,
            ..lora(4)
        };
        assert!(bad.validate(&c).unwrap_err().contains("--lora-dropout"));
        assert_eq!(lora(4).scaling(), 4.0);
        let rs = LoraConfig {
            rslora: true,
            ..lora(4)
        };
        assert_eq!(rs.scaling(), 8.0);
    }
}
