//! AdamW with decoupled weight decay and global-norm gradient clipping, over flat buffers.
//!
//! Written once for every engine that keeps f32 master weights on the host; the arithmetic
//! follows `torch.optim.AdamW` (decay applied as `p -= lr·wd·p` before the Adam update).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::Layout;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// Elements per parallel chunk; fixed so results never depend on the thread count.
const CHUNK: usize = 1 << 14;

/// Sum of squares, in f64 over fixed chunks summed in order (deterministic).
pub fn sum_squares(grads: &[f32]) -> f64 {
    let partial: Vec<f64> = grads
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>())
        .collect();
    partial.iter().sum::<f64>()
}

/// Global L2 norm ([`sum_squares`], then the root).
pub fn global_norm(grads: &[f32]) -> f32 {
    sum_squares(grads).sqrt() as f32
}

/// Per-element weight-decay mask from the layout: 1 where decay applies.
pub fn decay_mask(layout: &Layout) -> Vec<bool> {
    decay_mask_of(&layout.tensors, layout.len())
}

/// The mask of any flat buffer of `len` values tiled by `tensors` (a model's or an adapter's).
pub fn decay_mask_of(tensors: &[crate::model::Tensor], len: usize) -> Vec<bool> {
    let mut mask = vec![false; len];
    for t in tensors {
        mask[t.range()].fill(t.decay);
    }
    mask
}

/// One AdamW step (after clipping). `step` is the 1-based index of this step.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    params: &mut [f32],
    grads: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    decay: &[bool],
    opt: &AdamW,
    lr: f32,
    grad_scale: f32,
    step: u64,
) {
    let bc1 = 1.0 - f64::from(opt.beta1).powf(step as f64);
    let bc2 = 1.0 - f64::from(opt.beta2).powf(step as f64);
    let step_size = (f64::from(lr) / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let (b1, b2, eps, wd) = (opt.beta1, opt.beta2, opt.eps, opt.weight_decay);
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(exp_avg.par_chunks_mut(CHUNK))
        .zip(exp_avg_sq.par_chunks_mut(CHUNK))
        .zip(decay.par_chunks(CHUNK))
        .for_each(|((((p, g), m), v), dm)| {
            for i in 0..p.len() {
                let g = g[i] * grad_scale;
                if dm[i] {
                    p[i] -= lr * wd * p[i];
                }
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_step_matches_the_adamw_formula() {
        let opt = AdamW {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut p = vec![1.0f32, -2.0];
        let g = vec![0.5f32, 0.25];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        adamw_step(
            &mut p,
            &g,
            &mut m,
            &mut v,
            &[true, false],
            &opt,
            0.01,
            1.0,
            1,
        );
        // Step 1: m̂ = g, v̂ = g², so the update is lr·g/(|g|+eps) = lr·sign(g).
        assert!((p[0] - (1.0 - 0.01 * 0.1 - 0.01)).abs() < 1e-6, "{}", p[0]);
        assert!((p[1] - (-2.0 - 0.01)).abs() < 1e-6, "{}", p[1]);
    }

    #[test]
    fn norm_is_exact_and_thread_independent() {
        let g: Vec<f32> = (0..100_000)
            .map(|i| ((i % 7) as f32 - 3.0) * 0.01)
            .collect();
        let want = g.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt() as f32;
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| global_norm(&g));
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(|| global_norm(&g));
        assert_eq!(one.to_bits(), three.to_bits());
        assert!((one - want).abs() / want < 1e-6);
    }
}
