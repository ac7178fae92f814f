//! Quantised storage of frozen base weights, for QLoRA (issue 12): the weights a LoRA run does
//! not train are kept in 4 bits and dequantised on the fly where they are used.
//!
//! - [`nf4`]: 4-bit NormalFloat with one f32 absmax per block of 64 weights.

pub mod nf4;
