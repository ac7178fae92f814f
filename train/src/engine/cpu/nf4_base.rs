//! QLoRA's frozen base on the CPU: every block's seven linear weights in NF4 (as
//! bitsandbytes' `Linear4bit` replaces `nn.Linear`), dequantised into one scratch buffer right
//! before each product that needs them. Embeddings, norms and the LM head stay dense.
//!
//! The dequantised value of a weight is `CODE[code] · absmax` in f32 (the absmax itself first
//! dequantised when double-quantised), the arithmetic the CUDA kernel does before rounding to
//! bf16; here it feeds the f32 products of the reference engine unrounded.

use crate::lora::Target;
use crate::model::{Layout, ModelConfig};
use crate::quant::nf4::{Nf4, Nf4Error};

use super::ops::Float;

/// The tensors of `full` (laid out by `layout`) that `compact` keeps, in its layout: what a
/// quantised base holds dense.
pub fn dense_part<T: Copy + Default>(layout: &Layout, compact: &Layout, full: &[T]) -> Vec<T> {
    let mut out = vec![T::default(); compact.len()];
    for t in &compact.tensors {
        let from = layout
            .get(&t.name)
            .expect("the compact layout's tensors are the full one's");
        out[t.range()].copy_from_slice(&full[from.range()]);
    }
    out
}

/// The quantised linear weights, `[layer][target]` in [`Target::ALL`] order.
pub struct Nf4Linears {
    weights: Vec<Vec<Nf4>>,
}

impl Nf4Linears {
    /// Quantises the linear weights of `params` (laid out by `layout`, the full [`Layout`]).
    pub fn quantize(
        c: &ModelConfig,
        layout: &Layout,
        params: &[f32],
        double: bool,
    ) -> Result<Nf4Linears, Nf4Error> {
        let mut weights = Vec::with_capacity(c.n_layers);
        for (i, block) in layout.blocks.iter().enumerate() {
            let mut layer = Vec::with_capacity(Target::ALL.len());
            for t in Target::ALL {
                let (in_dim, out_dim) = t.dims(c);
                let off = t.base_offset(block);
                let name = format!("model.layers.{i}.{}.weight", t.module());
                let w = &params[off..off + in_dim * out_dim];
                layer.push(if double {
                    Nf4::quantize_double(&name, w)?
                } else {
                    Nf4::quantize(&name, w)?
                });
            }
            weights.push(layer);
        }
        Ok(Nf4Linears { weights })
    }

    /// The first dimension of `c` that NF4 cannot store, as the one-line refusal a run gives.
    pub fn check_shape(c: &ModelConfig) -> Result<(), Nf4Error> {
        for t in Target::ALL {
            let (i, o) = t.dims(c);
            Nf4::check_len(&format!("{} ({o}×{i})", t.name()), i * o)?;
        }
        Ok(())
    }

    /// Block `layer`'s weight of `t`, dequantised into `out` (its length, `out × in`).
    pub fn dequantize_into<T: Float>(&self, layer: usize, t: Target, out: &mut [T]) {
        let q = &self.weights[layer][t as usize];
        q.dequantize_with(|i, v| out[i] = T::from(v).expect("f32 fits every float type"));
    }

    /// Bytes one block's seven linear weights take in NF4 (`double`: double-quantised).
    pub fn block_bytes(c: &ModelConfig, double: bool) -> u128 {
        Target::ALL
            .iter()
            .map(|t| t.dims(c))
            .map(|(i, o)| crate::quant::nf4::stored_bytes((i * o) as u128, double))
            .sum()
    }

    /// Block `layer`'s weight of `t`.
    pub fn get(&self, layer: usize, t: Target) -> &Nf4 {
        &self.weights[layer][t as usize]
    }

    /// Bytes held: packed codes and absmax values.
    pub fn bytes(&self) -> usize {
        self.weights.iter().flatten().map(Nf4::bytes).sum()
    }
}
