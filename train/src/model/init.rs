//! Deterministic initialisation: N(0, 0.02) for embeddings and projections, the residual
//! output projections (`o_proj`, `down_proj`) scaled by 1/sqrt(2·n_layers) as in GPT-2, and
//! ones for the norms. The random stream depends only on the seed.

use super::{Layout, ModelConfig};

/// SplitMix64, fully specified here so initialisation never changes with a dependency.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

pub fn init_params(c: &ModelConfig, layout: &Layout, seed: u64) -> Vec<f32> {
    let mut params = vec![0f32; layout.len()];
    let mut rng = Rng(seed ^ 0x1a2b_3c4d_5e6f_7081);
    let residual_scale = 1.0 / (2.0 * c.n_layers as f64).sqrt();
    for t in &layout.tensors {
        let out = &mut params[t.range()];
        if t.shape.len() == 1 {
            out.fill(1.0);
            continue;
        }
        let std = if t.name.ends_with("o_proj.weight") || t.name.ends_with("down_proj.weight") {
            0.02 * residual_scale
        } else {
            0.02
        };
        for v in out.iter_mut() {
            *v = (rng.normal() * std) as f32;
        }
    }
    params
}
