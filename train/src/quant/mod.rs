//! Quantised storage of frozen base weights, for QLoRA (issue 12): the weights a LoRA run does
//! not train are kept in 4 bits and dequantised on the fly where they are used.
//!
//! - [`nf4`]: 4-bit NormalFloat with one f32 absmax per block of 64 weights.

pub mod nf4;

use serde::{Deserialize, Serialize};

/// A format for the frozen base (`--quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    /// 4-bit NormalFloat, one absmax per 64 weights (QLoRA).
    Nf4,
}

/// How a LoRA run stores its base's linear weights, resolved from `--quantize` and
/// `--double-quant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseQuant {
    pub format: Quantize,
    /// The absmax values themselves in 8 bits (bitsandbytes' `bnb_4bit_use_double_quant`).
    pub double: bool,
}

impl std::fmt::Display for BaseQuant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.format, self.double) {
            (Quantize::Nf4, false) => f.write_str("nf4"),
            (Quantize::Nf4, true) => f.write_str("nf4, double-quantised absmax"),
        }
    }
}
