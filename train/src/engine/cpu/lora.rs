//! LoRA in the CPU engine: the adapter's parameters, gradients and the activations its
//! backward pass needs, beside the frozen base model.
//!
//! Per adapted layer, forward: `xd = drop(x)`, `ts = s·(xd·Aᵀ)` (kept), `y += ts·Bᵀ`.
//! Backward from `dy`: `dB += dyᵀ·ts`, `dt = s·(dy·B)`, `dA += dtᵀ·xd`, `dx += drop'(dt·A)`.
//! Dropout masks come from a counter-based hash of (seed, layer, target, element), so they
//! are the same whatever the thread count and need not be stored.

use rayon::prelude::*;

use super::ops::*;
use crate::lora::{AdapterLayout, LoraConfig, Target};
use crate::model::init::Rng;

/// Elements per dropout task (fixed: the partition never depends on the thread count).
const DROPOUT_CHUNK: usize = 1 << 14;

#[derive(Default)]
struct PairActs<T> {
    /// `s·(xd·Aᵀ)`, `[n, r]`.
    ts: Vec<T>,
    /// The input after dropout, `[n, in]`; empty without dropout (the input itself is used).
    xd: Vec<T>,
}

pub struct LoraState<T: Float> {
    pub config: LoraConfig,
    pub layout: AdapterLayout,
    pub params: Vec<T>,
    pub grads: Vec<T>,
    scale: T,
    /// The masks' seed of the pass under way; `None` in evaluation or with no dropout.
    dropout_seed: Option<u64>,
    acts: Vec<[PairActs<T>; 7]>,
    dt: Vec<T>,
    dxd: Vec<T>,
}

fn slot(target: Target) -> usize {
    Target::ALL
        .iter()
        .position(|&t| t == target)
        .expect("every target is in Target::ALL")
}

/// Whether element `e` of the input of (layer, target) survives dropout `p` under `seed`.
fn keep(seed: u64, layer: usize, target: usize, e: usize, p: f64) -> bool {
    let key = seed ^ ((layer as u64) << 40) ^ ((target as u64) << 56);
    Rng(key ^ (e as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_f64() >= p
}

impl<T: Float> LoraState<T> {
    pub fn new(config: LoraConfig, layout: AdapterLayout, params: Vec<T>, n_layers: usize) -> Self {
        let grads = vec![T::zero(); params.len()];
        let scale = T::from(config.scaling()).expect("the scaling is a finite number");
        LoraState {
            config,
            layout,
            params,
            grads,
            scale,
            dropout_seed: None,
            acts: (0..n_layers).map(|_| Default::default()).collect(),
            dt: Vec::new(),
            dxd: Vec::new(),
        }
    }

    /// Dropout for the next pass: `Some(seed)` for a training pass, `None` for evaluation.
    pub fn set_dropout(&mut self, seed: Option<u64>) {
        self.dropout_seed = seed.filter(|_| self.config.dropout > 0.0);
    }

    /// `y += ts·Bᵀ` for an adapted layer (nothing for another one), keeping `ts` and the
    /// dropped-out input for the backward pass.
    pub fn forward(&mut self, layer: usize, target: Target, y: &mut [T], x: &[T], n: usize) {
        let Some(p) = self.layout.pair(layer, target) else {
            return;
        };
        let r = self.layout.rank;
        let (slot, p_drop) = (slot(target), self.config.dropout);
        let act = &mut self.acts[layer][slot];
        act.ts.resize(n * r, T::zero());
        let input: &[T] = match self.dropout_seed {
            Some(seed) => {
                act.xd.resize(n * p.in_dim, T::zero());
                let inv = T::from(1.0 / (1.0 - p_drop)).expect("dropout below 1");
                act.xd
                    .par_chunks_mut(DROPOUT_CHUNK)
                    .zip(x.par_chunks(DROPOUT_CHUNK))
                    .enumerate()
                    .for_each(|(c, (xd, x))| {
                        for (i, (xd, &x)) in xd.iter_mut().zip(x).enumerate() {
                            let e = c * DROPOUT_CHUNK + i;
                            *xd = if keep(seed, layer, slot, e, p_drop) {
                                x * inv
                            } else {
                                T::zero()
                            };
                        }
                    });
                &act.xd
            }
            None => x,
        };
        let a = &self.params[p.a..p.a + r * p.in_dim];
        let b = &self.params[p.b..p.b + p.out_dim * r];
        linear_forward(&mut act.ts, input, a, n, p.in_dim, r);
        let s = self.scale;
        act.ts.iter_mut().for_each(|v| *v = *v * s);
        linear_forward_add(y, &act.ts, b, n, r, p.out_dim);
    }

    /// The adapter's gradients from `dy` of an adapted layer, and its share of the input's
    /// gradient added into `dx`. `x` is the layer's input as the forward pass saw it.
    pub fn backward(
        &mut self,
        layer: usize,
        target: Target,
        dx: &mut [T],
        dy: &[T],
        x: &[T],
        n: usize,
    ) {
        let Some(p) = self.layout.pair(layer, target) else {
            return;
        };
        let r = self.layout.rank;
        let slot = slot(target);
        let act = &self.acts[layer][slot];
        let input: &[T] = if self.dropout_seed.is_some() {
            &act.xd
        } else {
            x
        };
        let (a, b) = (p.a..p.a + r * p.in_dim, p.b..p.b + p.out_dim * r);
        linear_backward_weight(&mut self.grads[b.clone()], dy, &act.ts, n, r, p.out_dim);
        self.dt.resize(n * r, T::zero());
        linear_backward_input(&mut self.dt, dy, &self.params[b], n, r, p.out_dim);
        let s = self.scale;
        self.dt.iter_mut().for_each(|v| *v = *v * s);
        linear_backward_weight(&mut self.grads[a.clone()], &self.dt, input, n, p.in_dim, r);
        self.dxd.resize(n * p.in_dim, T::zero());
        linear_backward_input(&mut self.dxd, &self.dt, &self.params[a], n, p.in_dim, r);
        if let Some(seed) = self.dropout_seed {
            let p_drop = self.config.dropout;
            let inv = T::from(1.0 / (1.0 - p_drop)).expect("dropout below 1");
            self.dxd
                .par_chunks_mut(DROPOUT_CHUNK)
                .enumerate()
                .for_each(|(c, d)| {
                    for (i, d) in d.iter_mut().enumerate() {
                        let e = c * DROPOUT_CHUNK + i;
                        *d = if keep(seed, layer, slot, e, p_drop) {
                            *d * inv
                        } else {
                            T::zero()
                        };
                    }
                });
        }
        add_inplace(dx, &self.dxd);
    }

    /// The embedding table the forward pass reads: the trained copy, if there is one.
    pub fn embed(&self) -> Option<&[T]> {
        let off = self.layout.embed?;
        Some(&self.params[off..off + self.layout.table_len])
    }

    pub fn lm_head(&self) -> Option<&[T]> {
        let off = self.layout.lm_head?;
        Some(&self.params[off..off + self.layout.table_len])
    }
}
