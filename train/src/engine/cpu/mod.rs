//! The CPU engine: the Llama forward and backward passes assembled from the operations in
//! [`ops`], f32, multi-threaded and deterministic. It is the reference every GPU kernel is
//! tested against, and the engine a machine without a GPU trains with.
//!
//! [`Model`] is generic over the float type so that the whole model's gradients can be checked
//! against finite differences in f64; [`CpuEngine`] is `Model<f32>` behind the [`Engine`] seam.

pub mod decode;
pub mod lora;
pub mod nf4_base;
pub mod ops;

use anyhow::{bail, Result};

use super::optim::{adamw_step, decay_mask, global_norm, sum_squares, AdamW};
use super::{Batch, Engine, OptimizerState};
use crate::collective::{gather_shards, Collective, Shards, Solo};
use crate::lora::{AdapterLayout, LoraConfig, Target};
use crate::model::init::Rng;
use crate::model::{Layout, ModelConfig};
use crate::quant::nf4::Nf4Error;
use lora::LoraState;
use nf4_base::Nf4Linears;
use ops::*;

/// Rows of the LM head processed at a time, so the logits of a whole batch over a large
/// vocabulary never sit in memory at once.
const LM_HEAD_ROWS: usize = 256;

/// What the forward pass keeps for the backward pass, per block.
#[derive(Default)]
struct BlockActs<T> {
    x_in: Vec<T>,
    rstd1: Vec<T>,
    h1: Vec<T>,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    probs: Vec<T>,
    att: Vec<T>,
    x_mid: Vec<T>,
    rstd2: Vec<T>,
    h2: Vec<T>,
    g: Vec<T>,
    u: Vec<T>,
    a: Vec<T>,
}

/// Activations and scratch for one (batch, seq) shape, allocated once and reused.
#[derive(Default)]
struct Acts<T> {
    batch: usize,
    seq: usize,
    blocks: Vec<BlockActs<T>>,
    x_out: Vec<T>,
    rstd_f: Vec<T>,
    hf: Vec<T>,
    logits: Vec<T>,
    // backward scratch
    dx: Vec<T>,
    dx2: Vec<T>,
    dh: Vec<T>,
    dh_tmp: Vec<T>,
    dq: Vec<T>,
    dk: Vec<T>,
    dv: Vec<T>,
    datt: Vec<T>,
    da: Vec<T>,
    dg: Vec<T>,
    du: Vec<T>,
    /// The gradient of a frozen norm's weight, computed and dropped.
    dnorm: Vec<T>,
}

fn zeros<T: Float>(n: usize) -> Vec<T> {
    vec![T::zero(); n]
}

impl<T: Float> Acts<T> {
    fn new(c: &ModelConfig, batch: usize, seq: usize) -> Self {
        let n = batch * seq;
        let (d, f) = (c.dim, c.ffn_dim);
        let (qd, kvd) = (c.n_heads * c.head_dim(), c.n_kv_heads * c.head_dim());
        let chunk = LM_HEAD_ROWS.min(n);
        Acts {
            batch,
            seq,
            blocks: (0..c.n_layers)
                .map(|_| BlockActs {
                    x_in: zeros(n * d),
                    rstd1: zeros(n),
                    h1: zeros(n * d),
                    q: zeros(n * qd),
                    k: zeros(n * kvd),
                    v: zeros(n * kvd),
                    probs: zeros(batch * c.n_heads * seq * seq),
                    att: zeros(n * qd),
                    x_mid: zeros(n * d),
                    rstd2: zeros(n),
                    h2: zeros(n * d),
                    g: zeros(n * f),
                    u: zeros(n * f),
                    a: zeros(n * f),
                })
                .collect(),
            x_out: zeros(n * d),
            rstd_f: zeros(n),
            hf: zeros(n * d),
            logits: zeros(chunk * c.vocab_size),
            dx: zeros(n * d),
            dx2: zeros(n * d),
            dh: zeros(n * d),
            dh_tmp: zeros(n * d),
            dq: zeros(n * qd),
            dk: zeros(n * kvd),
            dv: zeros(n * kvd),
            datt: zeros(n * qd),
            da: zeros(n * f),
            dg: zeros(n * f),
            du: zeros(n * f),
            dnorm: zeros(d),
        }
    }
}

/// Bytes the CPU engine needs for a model and micro-batch shape: parameters, gradients and
/// both AdamW moments (16 bytes each), plus the activations kept for the backward pass.
pub fn host_memory_estimate(c: &ModelConfig, batch: usize, seq: usize) -> u128 {
    16 * c.checked_num_params() + activation_bytes(c, batch, seq)
}

/// The activations and scratch of one micro-batch.
fn activation_bytes(c: &ModelConfig, batch: usize, seq: usize) -> u128 {
    let n = (batch * seq) as u128;
    let (d, f) = (c.dim as u128, c.ffn_dim as u128);
    let hd = c.head_dim() as u128;
    let (qd, kvd) = (c.n_heads as u128 * hd, c.n_kv_heads as u128 * hd);
    let per_block = n * (5 * d + 2 + 2 * qd + 2 * kvd + 3 * f)
        + batch as u128 * c.n_heads as u128 * (seq as u128) * (seq as u128);
    let scratch =
        n * (5 * d + 2 * qd + 2 * kvd + 3 * f) + LM_HEAD_ROWS as u128 * c.vocab_size as u128;
    4 * (c.n_layers as u128 * per_block + scratch)
}

/// The CPU engine's memory for a LoRA run: the frozen base in f32 without gradients or
/// moments (with `quantize`, its linear weights in NF4 and one f32 buffer they are
/// dequantised into); the adapter's parameters, gradients and moments; the activations of
/// the model plus, per adapted layer, `s·(x·Aᵀ)` (and the dropped-out input with dropout).
pub fn lora_memory_estimate(
    c: &ModelConfig,
    lora: &LoraConfig,
    quantize: Option<crate::quant::BaseQuant>,
    batch: usize,
    seq: usize,
) -> super::MemoryEstimate {
    let n = (batch * seq) as u128;
    let trained = AdapterLayout::new(c, lora).len() as u128;
    let mut kept = 0u128;
    let mut widest = 0u128;
    for t in &lora.targets {
        let in_dim = t.dims(c).0 as u128;
        widest = widest.max(in_dim);
        kept += n * lora.rank as u128 + if lora.dropout > 0.0 { n * in_dim } else { 0 };
    }
    let scratch = n * (lora.rank as u128 + widest);
    let base = match quantize {
        None => 4 * c.checked_num_params(),
        Some(q) => {
            let dense = Layout::without_linears(c).len() as u128;
            let largest = Target::max_over(c, |i, o| i * o) as u128;
            4 * dense + c.n_layers as u128 * Nf4Linears::block_bytes(c, q.double) + 4 * largest
        }
    };
    super::MemoryEstimate {
        base,
        adapters: 8 * trained,
        optimizer: 8 * trained,
        activations: activation_bytes(c, batch, seq) + 4 * (c.n_layers as u128 * kept + scratch),
    }
}

/// The model's parameters and gradients in flat buffers, plus activations. With LoRA the
/// base is frozen: `grads` is empty and the adapter in `lora` holds what trains.
pub struct Model<T: Float> {
    pub config: ModelConfig,
    pub layout: Layout,
    pub params: Vec<T>,
    pub grads: Vec<T>,
    pub lora: Option<LoraState<T>>,
    /// QLoRA: the blocks' linear weights in NF4 (`params` then holds the rest, laid out by
    /// [`Layout::without_linears`]), and the buffer each is dequantised into before use.
    nf4: Option<Nf4Linears>,
    dequantized: Vec<T>,
    acts: Acts<T>,
}

/// Where the forward and backward passes get a block's linear weight: a view of the dense
/// parameters, or the NF4 weight dequantised into a scratch buffer.
struct Linears<'a, T: Float> {
    params: &'a [T],
    layout: &'a Layout,
    nf4: Option<&'a Nf4Linears>,
    config: &'a ModelConfig,
}

impl<'a, T: Float> Linears<'a, T> {
    fn get<'s>(&self, scratch: &'s mut [T], layer: usize, t: Target) -> &'s [T]
    where
        'a: 's,
    {
        let (in_dim, out_dim) = t.dims(self.config);
        let len = in_dim * out_dim;
        match self.nf4 {
            None => {
                let off = t.base_offset(&self.layout.blocks[layer]);
                &self.params[off..off + len]
            }
            Some(q) => {
                q.dequantize_into(layer, t, &mut scratch[..len]);
                &scratch[..len]
            }
        }
    }
}

/// The gradient slice of a weight, or `None` where the base is frozen (no gradient buffer).
fn wgrad<T>(g: &mut [T], off: usize, len: usize) -> Option<&mut [T]> {
    (!g.is_empty()).then(|| &mut g[off..off + len])
}

/// [`linear_backward`], or only the input's gradient for a frozen weight (`dw` `None`): the
/// weight-gradient product is skipped, which is where LoRA saves its time.
#[allow(clippy::too_many_arguments)]
fn linear_back<T: Float>(
    dx: &mut [T],
    dw: Option<&mut [T]>,
    dy: &[T],
    x: &[T],
    w: &[T],
    n: usize,
    in_dim: usize,
    out_dim: usize,
) {
    match dw {
        Some(dw) => linear_backward(dx, dw, dy, x, w, n, in_dim, out_dim),
        None => linear_backward_input(dx, dy, w, n, in_dim, out_dim),
    }
}

fn cast<T: Float>(x: f64) -> T {
    T::from(x).expect("every f64 constant used here fits the float type")
}

impl<T: Float> Model<T> {
    pub fn new(config: ModelConfig, params: Vec<T>) -> Self {
        let layout = Layout::new(&config);
        assert_eq!(
            params.len(),
            layout.len(),
            "parameter buffer does not match the layout"
        );
        let grads = zeros(layout.len());
        Model {
            config,
            layout,
            params,
            grads,
            lora: None,
            nf4: None,
            dequantized: Vec::new(),
            acts: Acts::default(),
        }
    }

    /// QLoRA: stores the frozen base's linear weights in NF4 (double-quantised absmax values
    /// with `double`) and drops their dense copies. Only for a model with an adapter, whose
    /// base never changes.
    pub fn quantize_base(&mut self, double: bool) -> Result<(), Nf4Error> {
        assert!(self.lora.is_some(), "only a frozen base is quantised");
        let full: Vec<f32> = self
            .params
            .iter()
            .map(|v| v.to_f32().expect("every parameter fits f32"))
            .collect();
        let nf4 = Nf4Linears::quantize(&self.config, &self.layout, &full, double)?;
        let compact = Layout::without_linears(&self.config);
        let params = nf4_base::dense_part(&self.layout, &compact, &self.params);
        let largest = Target::max_over(&self.config, |i, o| i * o);
        self.layout = compact;
        self.params = params;
        self.nf4 = Some(nf4);
        self.dequantized = zeros(largest);
        Ok(())
    }

    /// Whether the base is stored in NF4.
    pub fn is_quantized(&self) -> bool {
        self.nf4.is_some()
    }

    /// Freezes the base and trains the adapter `params` (laid out by `lora`'s
    /// [`AdapterLayout`]) instead.
    pub fn with_lora(mut self, lora: LoraConfig, params: Vec<T>) -> Self {
        let layout = AdapterLayout::new(&self.config, &lora);
        assert_eq!(
            params.len(),
            layout.len(),
            "adapter buffer does not match its layout"
        );
        self.grads = Vec::new();
        self.lora = Some(LoraState::new(lora, layout, params, self.config.n_layers));
        self
    }

    /// What trains (the whole model, or the adapter) and its gradients.
    pub fn trainable(&mut self) -> (&mut Vec<T>, &mut Vec<T>) {
        match &mut self.lora {
            Some(s) => (&mut s.params, &mut s.grads),
            None => (&mut self.params, &mut self.grads),
        }
    }

    pub fn trainable_params(&self) -> &[T] {
        self.lora.as_ref().map_or(&self.params, |s| &s.params)
    }

    pub fn trainable_grads(&self) -> &[T] {
        self.lora.as_ref().map_or(&self.grads, |s| &s.grads)
    }

    /// The LM head's weights the forward pass uses: a trained copy, or the base's.
    fn lm_head(&self) -> &[T] {
        let (lm, vd) = (
            self.layout.lm_head,
            self.config.vocab_size * self.config.dim,
        );
        self.lora
            .as_ref()
            .and_then(|s| s.lm_head())
            .unwrap_or(&self.params[lm..lm + vd])
    }

    fn ensure_acts(&mut self, batch: usize, seq: usize) {
        if self.acts.batch != batch
            || self.acts.seq != seq
            || self.acts.blocks.len() != self.config.n_layers
        {
            self.acts = Acts::new(&self.config, batch, seq);
        }
    }

    /// Forward pass up to the final norm (`acts.hf`).
    fn forward_trunk(&mut self, tokens: &[u32], batch: usize, seq: usize) {
        self.ensure_acts(batch, seq);
        let c = &self.config;
        let (n, d, f, hd) = (batch * seq, c.dim, c.ffn_dim, c.head_dim());
        let (nh, nkv) = (c.n_heads, c.n_kv_heads);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let eps = cast::<T>(c.rms_norm_eps);
        let p = &self.params;
        let l = &self.layout;
        let acts = &mut self.acts;
        let lora = &mut self.lora;
        let slice = |off: usize, len: usize| &p[off..off + len];
        let lin = Linears {
            params: p,
            layout: l,
            nf4: self.nf4.as_ref(),
            config: c,
        };
        let deq = &mut self.dequantized[..];

        // The residual stream enters block 0 as its `x_in`, and block i's output is block
        // i+1's `x_in` (or `x_out` after the last block).
        let table = lora.as_ref().and_then(|s| s.embed());
        embedding_forward(
            &mut acts.blocks[0].x_in,
            table.unwrap_or(slice(l.embed, c.vocab_size * d)),
            tokens,
            d,
        );
        for i in 0..c.n_layers {
            let w = l.blocks[i];
            // Each projection's adapter, if it has one, adds onto the base's output.
            let mut adapt = |t: Target, y: &mut [T], x: &[T]| {
                if let Some(s) = lora.as_mut() {
                    s.forward(i, t, y, x, n);
                }
            };
            let (done, rest) = acts.blocks.split_at_mut(i + 1);
            let b = &mut done[i];
            rmsnorm_forward(
                &mut b.h1,
                &mut b.rstd1,
                &b.x_in,
                slice(w.attn_norm, d),
                n,
                d,
                eps,
            );
            linear_forward(&mut b.q, &b.h1, lin.get(deq, i, Target::QProj), n, d, qd);
            adapt(Target::QProj, &mut b.q, &b.h1);
            linear_forward(&mut b.k, &b.h1, lin.get(deq, i, Target::KProj), n, d, kvd);
            adapt(Target::KProj, &mut b.k, &b.h1);
            linear_forward(&mut b.v, &b.h1, lin.get(deq, i, Target::VProj), n, d, kvd);
            adapt(Target::VProj, &mut b.v, &b.h1);
            rope_forward(&mut b.q, batch, seq, nh, hd, c.rope_theta);
            rope_forward(&mut b.k, batch, seq, nkv, hd, c.rope_theta);
            attention_forward(
                &mut b.att,
                &mut b.probs,
                &b.q,
                &b.k,
                &b.v,
                batch,
                seq,
                nh,
                nkv,
                hd,
            );
            linear_forward(
                &mut b.x_mid,
                &b.att,
                lin.get(deq, i, Target::OProj),
                n,
                qd,
                d,
            );
            adapt(Target::OProj, &mut b.x_mid, &b.att);
            add_inplace(&mut b.x_mid, &b.x_in);
            rmsnorm_forward(
                &mut b.h2,
                &mut b.rstd2,
                &b.x_mid,
                slice(w.mlp_norm, d),
                n,
                d,
                eps,
            );
            linear_forward(&mut b.g, &b.h2, lin.get(deq, i, Target::GateProj), n, d, f);
            adapt(Target::GateProj, &mut b.g, &b.h2);
            linear_forward(&mut b.u, &b.h2, lin.get(deq, i, Target::UpProj), n, d, f);
            adapt(Target::UpProj, &mut b.u, &b.h2);
            swiglu_forward(&mut b.a, &b.g, &b.u);
            let out = match rest.first_mut() {
                Some(next) => &mut next.x_in,
                None => &mut acts.x_out,
            };
            linear_forward(out, &b.a, lin.get(deq, i, Target::DownProj), n, f, d);
            adapt(Target::DownProj, out, &b.a);
            add_inplace(out, &b.x_mid);
        }
        rmsnorm_forward(
            &mut acts.hf,
            &mut acts.rstd_f,
            &acts.x_out,
            slice(l.final_norm, d),
            n,
            d,
            eps,
        );
    }

    /// Next-token targets: position t of a row predicts token t+1; the last position of each
    /// row predicts nothing.
    fn targets(tokens: &[u32], batch: usize, seq: usize) -> Vec<u32> {
        let mut out = vec![u32::MAX; batch * seq];
        for b in 0..batch {
            for t in 0..seq.saturating_sub(1) {
                out[b * seq + t] = tokens[b * seq + t + 1];
            }
        }
        out
    }

    /// Mean loss and, when `grad_scale` is given, gradients added into `self.grads`.
    pub fn forward_backward(&mut self, batch: &Batch, grad_scale: Option<T>) -> T {
        let (bsz, seq) = (batch.batch, batch.seq);
        self.forward_trunk(batch.tokens, bsz, seq);
        let c = self.config.clone();
        let (n, d, v) = (bsz * seq, c.dim, c.vocab_size);
        let count = cast::<T>(batch.predictions().max(1) as f64);
        let targets = Self::targets(batch.tokens, bsz, seq);
        let lm = self.layout.lm_head;
        let scale = grad_scale.unwrap_or(T::zero()) / count;

        // LM head and cross-entropy, a slab of rows at a time: logits, loss and dlogits, then
        // straight back into d(hf) and d(W_lm).
        let mut loss = T::zero();
        let acts = &mut self.acts;
        // The head's weights and where their gradient goes: the base's, or a trained copy's
        // (`--lora-save lm_head`), or nowhere when it is frozen.
        let (head, mut dhead): (&[T], Option<&mut [T]>) = match self.lora.as_mut() {
            Some(s) => match s.layout.lm_head {
                Some(off) => (
                    &s.params[off..off + v * d],
                    Some(&mut s.grads[off..off + v * d]),
                ),
                None => (&self.params[lm..lm + v * d], None),
            },
            None => (
                &self.params[lm..lm + v * d],
                Some(&mut self.grads[lm..lm + v * d]),
            ),
        };
        for r0 in (0..n).step_by(LM_HEAD_ROWS) {
            let rows = LM_HEAD_ROWS.min(n - r0);
            let logits = &mut acts.logits[..rows * v];
            let hf = &acts.hf[r0 * d..(r0 + rows) * d];
            linear_forward(logits, hf, head, rows, d, v);
            loss = loss + cross_entropy(logits, &targets[r0..r0 + rows], rows, v, scale);
            if grad_scale.is_some() {
                let dh = &mut acts.dh[r0 * d..(r0 + rows) * d];
                linear_back(dh, dhead.as_deref_mut(), logits, hf, head, rows, d, v);
            }
        }
        if grad_scale.is_some() {
            self.backward_trunk(batch.tokens, bsz, seq);
        }
        loss / count
    }

    /// Backward from `acts.dh` (gradient w.r.t. the final norm's output) to every parameter
    /// that trains: the whole model's, or the adapter's (the base's weight gradients are
    /// then skipped, its input gradients still flow).
    fn backward_trunk(&mut self, tokens: &[u32], batch: usize, seq: usize) {
        let c = &self.config;
        let (n, d, f, hd) = (batch * seq, c.dim, c.ffn_dim, c.head_dim());
        let (nh, nkv) = (c.n_heads, c.n_kv_heads);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let l = &self.layout;
        let p = &self.params;
        let g = &mut self.grads;
        let a = &mut self.acts;
        let lora = &mut self.lora;
        let w = |off: usize, len: usize| &p[off..off + len];
        let lin = Linears {
            params: p,
            layout: l,
            nf4: self.nf4.as_ref(),
            config: c,
        };
        let deq = &mut self.dequantized[..];

        let dw = wgrad(g, l.final_norm, d).unwrap_or(&mut a.dnorm);
        rmsnorm_backward(
            &mut a.dx,
            dw,
            &a.dh,
            &a.x_out,
            w(l.final_norm, d),
            &a.rstd_f,
            n,
            d,
        );
        for i in (0..c.n_layers).rev() {
            let o = l.blocks[i];
            let b = &a.blocks[i];
            let mut adapt = |t: Target, dx: &mut [T], dy: &[T], x: &[T]| {
                if let Some(s) = lora.as_mut() {
                    s.backward(i, t, dx, dy, x, n);
                }
            };
            // a.dx: gradient w.r.t. this block's output = x_mid + mlp(x_mid).
            let dw = wgrad(g, o.w_down, d * f);
            linear_back(
                &mut a.da,
                dw,
                &a.dx,
                &b.a,
                lin.get(deq, i, Target::DownProj),
                n,
                f,
                d,
            );
            adapt(Target::DownProj, &mut a.da, &a.dx, &b.a);
            swiglu_backward(&mut a.dg, &mut a.du, &a.da, &b.g, &b.u);
            let dw = wgrad(g, o.w_gate, f * d);
            linear_back(
                &mut a.dh,
                dw,
                &a.dg,
                &b.h2,
                lin.get(deq, i, Target::GateProj),
                n,
                d,
                f,
            );
            adapt(Target::GateProj, &mut a.dh, &a.dg, &b.h2);
            let dw = wgrad(g, o.w_up, f * d);
            linear_back(
                &mut a.dh_tmp,
                dw,
                &a.du,
                &b.h2,
                lin.get(deq, i, Target::UpProj),
                n,
                d,
                f,
            );
            adapt(Target::UpProj, &mut a.dh_tmp, &a.du, &b.h2);
            add_inplace(&mut a.dh, &a.dh_tmp);
            let dw = wgrad(g, o.mlp_norm, d).unwrap_or(&mut a.dnorm);
            let norm = w(o.mlp_norm, d);
            rmsnorm_backward(&mut a.dx2, dw, &a.dh, &b.x_mid, norm, &b.rstd2, n, d);
            add_inplace(&mut a.dx2, &a.dx); // a.dx2: gradient w.r.t. x_mid
            let dw = wgrad(g, o.wo, d * qd);
            linear_back(
                &mut a.datt,
                dw,
                &a.dx2,
                &b.att,
                lin.get(deq, i, Target::OProj),
                n,
                qd,
                d,
            );
            adapt(Target::OProj, &mut a.datt, &a.dx2, &b.att);
            attention_backward(
                &mut a.dq, &mut a.dk, &mut a.dv, &a.datt, &b.probs, &b.q, &b.k, &b.v, batch, seq,
                nh, nkv, hd,
            );
            rope_backward(&mut a.dq, batch, seq, nh, hd, c.rope_theta);
            rope_backward(&mut a.dk, batch, seq, nkv, hd, c.rope_theta);
            let dw = wgrad(g, o.wq, qd * d);
            linear_back(
                &mut a.dh,
                dw,
                &a.dq,
                &b.h1,
                lin.get(deq, i, Target::QProj),
                n,
                d,
                qd,
            );
            adapt(Target::QProj, &mut a.dh, &a.dq, &b.h1);
            let dw = wgrad(g, o.wk, kvd * d);
            linear_back(
                &mut a.dh_tmp,
                dw,
                &a.dk,
                &b.h1,
                lin.get(deq, i, Target::KProj),
                n,
                d,
                kvd,
            );
            adapt(Target::KProj, &mut a.dh_tmp, &a.dk, &b.h1);
            add_inplace(&mut a.dh, &a.dh_tmp);
            let dw = wgrad(g, o.wv, kvd * d);
            linear_back(
                &mut a.dh_tmp,
                dw,
                &a.dv,
                &b.h1,
                lin.get(deq, i, Target::VProj),
                n,
                d,
                kvd,
            );
            adapt(Target::VProj, &mut a.dh_tmp, &a.dv, &b.h1);
            add_inplace(&mut a.dh, &a.dh_tmp);
            let dw = wgrad(g, o.attn_norm, d).unwrap_or(&mut a.dnorm);
            let norm = w(o.attn_norm, d);
            rmsnorm_backward(&mut a.dx, dw, &a.dh, &b.x_in, norm, &b.rstd1, n, d);
            add_inplace(&mut a.dx, &a.dx2); // a.dx: gradient w.r.t. x_in = previous block's output
        }
        let table = c.vocab_size * d;
        let dtable = match lora.as_mut() {
            Some(s) => s.layout.embed.map(|e| &mut s.grads[e..e + table]),
            None => Some(&mut g[l.embed..l.embed + table]),
        };
        if let Some(dtable) = dtable {
            embedding_backward(dtable, &a.dx, tokens, d);
        }
    }

    /// Logits `[tokens.len(), vocab]` of one sequence.
    pub fn logits(&mut self, tokens: &[u32]) -> Vec<T> {
        let seq = tokens.len();
        self.forward_trunk(tokens, 1, seq);
        let (d, v) = (self.config.dim, self.config.vocab_size);
        let mut out = zeros(seq * v);
        linear_forward(&mut out, &self.acts.hf, self.lm_head(), seq, d, v);
        out
    }
}

/// The f32 CPU engine with its optimizer state.
pub struct CpuEngine {
    model: Model<f32>,
    /// The sequence being generated ([`CpuEngine::begin_sequence`]).
    cache: Option<decode::KvCache<f32>>,
    /// AdamW moments: of every parameter, or under ZeRO-1 of this rank's shard only.
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
    decay: Vec<bool>,
    step: u64,
    /// The ranks this engine trains with ([`Solo`] for one process).
    comm: Box<dyn Collective>,
    /// How ZeRO-1 shards the optimizer state, when it is on.
    zero: Option<Shards>,
    /// With LoRA: the seed of the dropout masks, and the micro-batches of this step so far
    /// (each gets its own masks, the same ones on a resumed run).
    dropout_seed: u64,
    micro: u64,
}

impl CpuEngine {
    pub fn new(config: ModelConfig, params: Vec<f32>) -> Result<CpuEngine> {
        let layout = super::checked_layout(&config, params.len())?;
        let n = layout.len();
        let decay = decay_mask(&layout);
        Ok(CpuEngine {
            model: Model::new(config, params),
            cache: None,
            exp_avg: vec![0.0; n],
            exp_avg_sq: vec![0.0; n],
            decay,
            step: 0,
            comm: Box::new(Solo),
            zero: None,
            dropout_seed: 0,
            micro: 0,
        })
    }

    /// Freezes the base and trains a LoRA adapter starting from `adapter` (in the
    /// [`AdapterLayout`] of `lora`); `seed` fixes its dropout masks. Call before
    /// [`CpuEngine::with_collective`].
    pub fn with_lora(
        mut self,
        lora: LoraConfig,
        adapter: Vec<f32>,
        seed: u64,
    ) -> Result<CpuEngine> {
        if let Err(e) = lora.validate(&self.model.config) {
            bail!("{e}");
        }
        let layout = AdapterLayout::new(&self.model.config, &lora);
        if adapter.len() != layout.len() {
            bail!(
                "{} adapter parameters given, the adapter has {}",
                adapter.len(),
                layout.len()
            );
        }
        let n = layout.len();
        self.decay = super::optim::decay_mask_of(&layout.tensors, n);
        self.exp_avg = vec![0.0; n];
        self.exp_avg_sq = vec![0.0; n];
        let config = self.model.config.clone();
        let base = std::mem::take(&mut self.model.params);
        self.model = Model::new(config, base).with_lora(lora, adapter);
        self.dropout_seed = seed;
        Ok(self)
    }

    /// QLoRA: keeps the frozen base's linear weights in NF4 from now on (see
    /// [`Model::quantize_base`]). Call after [`CpuEngine::with_lora`].
    pub fn quantize_base(mut self, double: bool) -> Result<CpuEngine> {
        if self.model.lora.is_none() {
            bail!("--quantize nf4 quantises a frozen base: give --lora-rank too");
        }
        self.model.quantize_base(double)?;
        Ok(self)
    }

    /// Trains as one rank of `comm`'s world: gradients are averaged over the ranks before
    /// clipping, and with `zero` each rank keeps the AdamW moments of its shard only
    /// (reduce-scatter the gradients, update the shard, all-gather the parameters).
    pub fn with_collective(mut self, comm: Box<dyn Collective>, zero: bool) -> CpuEngine {
        let n = self.model.trainable_params().len();
        self.zero = zero.then(|| Shards::new(n, comm.world()));
        let owned = self.owned().len();
        self.exp_avg = vec![0.0; owned];
        self.exp_avg_sq = vec![0.0; owned];
        self.comm = comm;
        self
    }

    /// The parameters whose optimizer state this rank keeps.
    fn owned(&self) -> std::ops::Range<usize> {
        match self.zero {
            Some(s) => s.range(self.comm.rank()),
            None => 0..self.model.trainable_params().len(),
        }
    }

    /// Averages the gradients over the ranks and returns their global norm: in place in the
    /// model's buffer, or under ZeRO-1 into the returned shard of the owned parameters.
    fn average_grads(&mut self) -> Result<(Option<Vec<f32>>, f32)> {
        let inv = 1.0 / self.comm.world() as f32;
        let (_, grads) = self.model.trainable();
        if let Some(shards) = self.zero {
            grads.resize(shards.padded(), 0.0);
            let mut shard = vec![0.0f32; shards.shard];
            let reduced = self.comm.reduce_scatter_sum(grads, &mut shard);
            grads.truncate(shards.n);
            reduced?;
            shard.truncate(shards.range(self.comm.rank()).len());
            shard.iter_mut().for_each(|g| *g *= inv);
            let mut sq = [sum_squares(&shard)];
            self.comm.all_reduce_sum_f64(&mut sq)?;
            return Ok((Some(shard), sq[0].sqrt() as f32));
        }
        if self.comm.world() > 1 {
            self.comm.all_reduce_sum(grads)?;
            grads.iter_mut().for_each(|g| *g *= inv);
        }
        Ok((None, global_norm(grads)))
    }

    /// The accumulated gradients of what trains (for tests).
    pub fn grads(&self) -> &[f32] {
        self.model.trainable_grads()
    }

    /// Sets the dropout masks of the next pass: a training pass gets masks of its own (by
    /// rank, step and micro-batch), evaluation none.
    fn dropout_for(&mut self, training: bool) {
        let key = [self.comm.rank() as u64, self.step, self.micro];
        let seed = key
            .iter()
            .fold(self.dropout_seed, |h, &k| Rng(h ^ k).next_u64());
        if let Some(s) = self.model.lora.as_mut() {
            s.set_dropout(training.then_some(seed));
        }
    }
}

impl Engine for CpuEngine {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    fn forward_backward(&mut self, batch: &Batch, grad_scale: f32) -> Result<f32> {
        batch.check(self.model.config.vocab_size)?;
        self.dropout_for(true);
        self.micro += 1;
        Ok(self.model.forward_backward(batch, Some(grad_scale)))
    }

    fn loss(&mut self, batch: &Batch) -> Result<f32> {
        batch.check(self.model.config.vocab_size)?;
        self.dropout_for(false);
        Ok(self.model.forward_backward(batch, None))
    }

    fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.dropout_for(false);
        Batch {
            tokens,
            batch: 1,
            seq: tokens.len(),
        }
        .check(self.model.config.vocab_size)?;
        Ok(self.model.logits(tokens))
    }

    fn begin_sequence(&mut self, capacity: usize) -> Result<()> {
        if self.model.lora.is_some() {
            bail!("the key/value cache runs the base model only; merge the adapter first (train merge)");
        }
        let c = &self.model.config;
        super::check_capacity(c, capacity)?;
        let kv_width = c.n_kv_heads * c.head_dim();
        self.cache = Some(decode::KvCache::new(c.n_layers, kv_width, capacity));
        Ok(())
    }

    fn extend_sequence(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let Some(cache) = self.cache.as_mut() else {
            bail!("no sequence to extend: begin one first");
        };
        super::check_extension(&self.model.config, tokens, cache.len(), cache.capacity())?;
        Ok(self.model.extend(cache, tokens))
    }

    fn step(&mut self, opt: &AdamW, lr: f32, grad_clip: Option<f32>) -> Result<f32> {
        let (shard, norm) = self.average_grads()?;
        if !norm.is_finite() {
            self.model.trainable().1.fill(0.0);
            bail!("the gradient norm is {norm}; the step was not applied (try a lower --lr or a --grad-clip)");
        }
        // As torch.nn.utils.clip_grad_norm_: scale by clip / (norm + 1e-6) when that is below 1.
        let scale = match grad_clip {
            Some(clip) => (clip / (norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        self.step += 1;
        self.micro = 0;
        let owned = self.owned();
        let (params, grads) = self.model.trainable();
        adamw_step(
            &mut params[owned.clone()],
            shard.as_deref().unwrap_or(grads),
            &mut self.exp_avg,
            &mut self.exp_avg_sq,
            &self.decay[owned.clone()],
            opt,
            lr,
            scale,
            self.step,
        );
        let (params, grads) = self.model.trainable();
        grads.fill(0.0);
        if let Some(shards) = self.zero {
            let full = gather_shards(self.comm.as_mut(), shards, &params[owned])?;
            self.model.trainable().0.copy_from_slice(&full);
        }
        self.cache = None;
        Ok(norm)
    }

    fn params(&mut self) -> Result<Vec<f32>> {
        Ok(self.model.trainable_params().to_vec())
    }

    fn set_params(&mut self, params: &[f32]) -> Result<()> {
        let own = self.model.trainable().0;
        if params.len() != own.len() {
            bail!(
                "{} parameters given, the model has {}",
                params.len(),
                own.len()
            );
        }
        own.copy_from_slice(params);
        // Keys and values cached under the old weights would be wrong now.
        self.cache = None;
        Ok(())
    }

    fn optimizer_state(&mut self) -> Result<OptimizerState> {
        let (exp_avg, exp_avg_sq) = match self.zero {
            Some(shards) => (
                gather_shards(self.comm.as_mut(), shards, &self.exp_avg)?,
                gather_shards(self.comm.as_mut(), shards, &self.exp_avg_sq)?,
            ),
            None => (self.exp_avg.clone(), self.exp_avg_sq.clone()),
        };
        Ok(OptimizerState {
            step: self.step,
            exp_avg,
            exp_avg_sq,
        })
    }

    fn set_optimizer_state(&mut self, state: OptimizerState) -> Result<()> {
        let n = self.model.trainable_params().len();
        if state.exp_avg.len() != n || state.exp_avg_sq.len() != n {
            bail!(
                "optimizer state holds {} values, the model has {n} parameters",
                state.exp_avg.len()
            );
        }
        let owned = self.owned();
        self.step = state.step;
        self.exp_avg = state.exp_avg[owned.clone()].to_vec();
        self.exp_avg_sq = state.exp_avg_sq[owned].to_vec();
        Ok(())
    }

    fn collective(&mut self) -> &mut dyn Collective {
        self.comm.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::{init_params, Rng};

    fn small_config() -> ModelConfig {
        ModelConfig {
            vocab_size: 11,
            dim: 8,
            n_layers: 2,
            n_heads: 2,
            n_kv_heads: 1,
            ffn_dim: 12,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            tie_embeddings: false,
            max_seq_len: 16,
        }
    }

    /// Parameters with every tensor random, norms included (ones would hide their gradients).
    fn random_params(c: &ModelConfig, seed: u64) -> Vec<f64> {
        let mut rng = Rng(seed);
        let layout = Layout::new(c);
        (0..layout.len()).map(|_| rng.normal() * 0.5).collect()
    }

    fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
        let mut rng = Rng(seed);
        (0..n)
            .map(|_| (rng.next_u64() % vocab as u64) as u32)
            .collect()
    }

    /// A refused step (non-finite gradients) leaves the engine usable: its gradient buffer is
    /// back, zeroed, whatever the averaging took out of it.
    #[test]
    fn a_refused_step_leaves_the_gradient_buffer_in_place() {
        let c = small_config();
        let good = init_params(&c, &Layout::new(&c), 3);
        let mut bad = good.clone();
        bad[0] = f32::NAN;
        let mut e = CpuEngine::new(c.clone(), bad).unwrap();
        let t = tokens(2 * 8, c.vocab_size, 5);
        let b = Batch {
            tokens: &t,
            batch: 2,
            seq: 8,
        };
        e.forward_backward(&b, 1.0).unwrap();
        let err = e.step(&AdamW::default(), 1e-3, Some(1.0)).unwrap_err();
        assert!(err.to_string().contains("gradient norm"), "{err}");
        assert_eq!(e.grads().len(), good.len());
        assert!(e.grads().iter().all(|&g| g == 0.0));
        e.set_params(&good).unwrap();
        e.forward_backward(&b, 1.0).unwrap();
        assert!(e
            .step(&AdamW::default(), 1e-3, Some(1.0))
            .unwrap()
            .is_finite());
    }

    /// The whole model's gradient against central finite differences in f64, for a sample of
    /// entries of every tensor (tied and untied). Tolerance: relative error 1e-6 of the larger
    /// of the two values (plus 1e-9 absolute), far above f64 round-off and far below any bug.
    #[test]
    fn whole_model_gradient_matches_finite_differences() {
        for tie in [false, true] {
            let c = ModelConfig {
                tie_embeddings: tie,
                ..small_config()
            };
            let params = random_params(&c, 7);
            let toks = tokens(2 * 5, c.vocab_size, 3);
            let batch = Batch {
                tokens: &toks,
                batch: 2,
                seq: 5,
            };
            let mut model = Model::<f64>::new(c.clone(), params.clone());
            model.forward_backward(&batch, Some(1.0));
            let grads = model.grads.clone();
            let mut rng = Rng(11);
            for t in model.layout.tensors.clone() {
                for _ in 0..4 {
                    let i = t.offset + (rng.next_u64() % t.len as u64) as usize;
                    let h = 1e-6;
                    let loss_at = |delta: f64| {
                        let mut p = params.clone();
                        p[i] += delta;
                        let mut m = Model::<f64>::new(c.clone(), p);
                        m.forward_backward(&batch, None)
                    };
                    let numeric = (loss_at(h) - loss_at(-h)) / (2.0 * h);
                    let err = (numeric - grads[i]).abs();
                    let scale = numeric.abs().max(grads[i].abs());
                    assert!(
                        err <= 1e-6 * scale + 1e-9,
                        "tied={tie} {} [{}]: analytic {} numeric {numeric}",
                        t.name,
                        i - t.offset,
                        grads[i]
                    );
                }
            }
        }
    }

    fn lora_config(targets: &str, save: &str, dropout: f64) -> LoraConfig {
        let (targets, save) = LoraConfig::parse_lists(targets, save).unwrap();
        LoraConfig {
            rank: 3,
            alpha: 5.0,
            dropout,
            rslora: false,
            targets,
            save,
        }
    }

    /// The adapter's gradient (A, B and the whole saved modules) against central finite
    /// differences in f64, with a random adapter (B ≠ 0, so A's gradient is not zero), with
    /// and without dropout (the masks are a function of the seed, so the loss is too), tied
    /// and untied. The frozen base gets no gradient buffer at all. Tolerance as for the
    /// whole model.
    #[test]
    fn adapter_gradient_matches_finite_differences() {
        let cases = [
            (false, "embed_tokens,lm_head", 0.0, None),
            (true, "lm_head", 0.25, Some(9)),
            (true, "", 0.0, None),
        ];
        for (tie, save, dropout, seed) in cases {
            let c = ModelConfig {
                tie_embeddings: tie,
                ..small_config()
            };
            let base = random_params(&c, 7);
            let lora = lora_config(crate::lora::DEFAULT_TARGETS, save, dropout);
            let al = AdapterLayout::new(&c, &lora);
            let mut rng = Rng(21);
            let adapter: Vec<f64> = (0..al.len()).map(|_| rng.normal() * 0.5).collect();
            let toks = tokens(2 * 5, c.vocab_size, 3);
            let batch = Batch {
                tokens: &toks,
                batch: 2,
                seq: 5,
            };
            let model_with = |adapter: Vec<f64>| {
                let mut m =
                    Model::<f64>::new(c.clone(), base.clone()).with_lora(lora.clone(), adapter);
                m.lora.as_mut().unwrap().set_dropout(seed);
                m
            };
            let mut model = model_with(adapter.clone());
            model.forward_backward(&batch, Some(1.0));
            assert!(model.grads.is_empty());
            let grads = model.trainable_grads().to_vec();
            for t in &al.tensors {
                for _ in 0..4 {
                    let i = t.offset + (rng.next_u64() % t.len as u64) as usize;
                    let h = 1e-6;
                    let loss_at = |delta: f64| {
                        let mut p = adapter.clone();
                        p[i] += delta;
                        model_with(p).forward_backward(&batch, None)
                    };
                    let numeric = (loss_at(h) - loss_at(-h)) / (2.0 * h);
                    let err = (numeric - grads[i]).abs();
                    let scale = numeric.abs().max(grads[i].abs());
                    assert!(
                        err <= 1e-6 * scale + 1e-9,
                        "tied={tie} dropout={dropout} {} [{}]: analytic {} numeric {numeric}",
                        t.name,
                        i - t.offset,
                        grads[i]
                    );
                }
            }
        }
    }

    /// At step 0 (B zero) the adapted model is the base model: the same loss to the bit and
    /// the same logits; training moves the adapter and never the base.
    #[test]
    fn a_fresh_adapter_computes_the_base_model() {
        let c = small_config();
        let layout = Layout::new(&c);
        let base = init_params(&c, &layout, 3);
        let lora = lora_config("q_proj,v_proj,down_proj", "lm_head", 0.1);
        let adapter = AdapterLayout::new(&c, &lora).init(&base, &layout, 4);
        let mut plain = CpuEngine::new(c.clone(), base.clone()).unwrap();
        let mut adapted = CpuEngine::new(c.clone(), base.clone())
            .unwrap()
            .with_lora(lora, adapter.clone(), 0)
            .unwrap();
        let toks = tokens(2 * 8, c.vocab_size, 5);
        let b = Batch {
            tokens: &toks,
            batch: 2,
            seq: 8,
        };
        assert_eq!(
            plain.loss(&b).unwrap().to_bits(),
            adapted.loss(&b).unwrap().to_bits()
        );
        assert_eq!(
            plain.logits(&toks[..8]).unwrap(),
            adapted.logits(&toks[..8]).unwrap()
        );
        assert!(adapted
            .begin_sequence(8)
            .unwrap_err()
            .to_string()
            .contains("train merge"));
        for _ in 0..3 {
            adapted.forward_backward(&b, 1.0).unwrap();
            adapted.step(&AdamW::default(), 1e-2, Some(1.0)).unwrap();
        }
        assert_eq!(adapted.model.params, base, "the base moved");
        let trained = adapted.params().unwrap();
        assert_eq!(trained.len(), adapter.len());
        assert_ne!(trained, adapter);
        assert!(adapted.loss(&b).unwrap() < plain.loss(&b).unwrap());
    }

    /// Dimensions that are whole NF4 blocks: every linear weight a multiple of 64 elements.
    fn nf4_config() -> ModelConfig {
        ModelConfig {
            dim: 16,
            ffn_dim: 24,
            ..small_config()
        }
    }

    /// A QLoRA model computes exactly what the dense model computes whose linear weights are
    /// their NF4 round trips: the same loss, logits and adapter gradients to the bit, with
    /// and without double quantisation; the quantised base holds a fraction of the bytes.
    #[test]
    fn a_quantized_base_computes_its_dequantized_weights() {
        use crate::quant::nf4::Nf4;
        let c = nf4_config();
        let layout = Layout::new(&c);
        let base = random_params(&c, 21)
            .iter()
            .map(|&x| x as f32)
            .collect::<Vec<_>>();
        let lora = lora_config("q_proj,k_proj,o_proj,up_proj,down_proj", "", 0.0);
        let mut adapter = AdapterLayout::new(&c, &lora).init(&base, &layout, 4);
        for (i, v) in adapter.iter_mut().enumerate() {
            *v += 0.01 * ((i % 7) as f32 - 3.0);
        }
        let toks = tokens(2 * 8, c.vocab_size, 5);
        let b = Batch {
            tokens: &toks,
            batch: 2,
            seq: 8,
        };
        for double in [false, true] {
            let mut rounded = base.clone();
            for block in &layout.blocks {
                for t in Target::ALL {
                    let (i, o) = t.dims(&c);
                    let r = t.base_offset(block)..t.base_offset(block) + i * o;
                    let q = if double {
                        Nf4::quantize_double("w", &rounded[r.clone()])
                    } else {
                        Nf4::quantize("w", &rounded[r.clone()])
                    };
                    rounded[r].copy_from_slice(&q.unwrap().dequantize());
                }
            }
            assert_ne!(rounded, base);
            let mut dense = Model::new(c.clone(), rounded).with_lora(lora.clone(), adapter.clone());
            let mut quant =
                Model::new(c.clone(), base.clone()).with_lora(lora.clone(), adapter.clone());
            quant.quantize_base(double).unwrap();
            assert!(quant.is_quantized());
            assert!(
                quant.params.len() < base.len() / 2,
                "the linear weights were dropped"
            );
            let (ld, lq) = (
                dense.forward_backward(&b, Some(1.0)),
                quant.forward_backward(&b, Some(1.0)),
            );
            assert_eq!(ld.to_bits(), lq.to_bits(), "double={double}");
            assert_eq!(dense.trainable_grads(), quant.trainable_grads());
            assert_eq!(dense.logits(&toks[..8]), quant.logits(&toks[..8]));
            let nf4 = quant.nf4.as_ref().unwrap().bytes();
            let linears: usize = Target::ALL
                .iter()
                .map(|t| t.dims(&c))
                .map(|(i, o)| i * o)
                .sum();
            assert!(nf4 * 8 <= c.n_layers * linears * 5, "{nf4} bytes");
        }
        // Dimensions that are not whole blocks: one line naming the layer.
        let mut odd = Model::new(
            small_config(),
            random_params(&small_config(), 2)
                .iter()
                .map(|&x| x as f32)
                .collect(),
        )
        .with_lora(
            lora_config("q_proj", "", 0.0),
            vec![0.0; AdapterLayout::new(&small_config(), &lora_config("q_proj", "", 0.0)).len()],
        );
        let e = odd.quantize_base(false).unwrap_err().to_string();
        assert!(
            e.contains("k_proj.weight has 32 elements") && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn f32_model_matches_f64_model() {
        let c = small_config();
        let p64 = random_params(&c, 5);
        let p32: Vec<f32> = p64.iter().map(|&x| x as f32).collect();
        let toks = tokens(3 * 6, c.vocab_size, 9);
        let batch = Batch {
            tokens: &toks,
            batch: 3,
            seq: 6,
        };
        let mut m64 = Model::<f64>::new(c.clone(), p64);
        let mut m32 = Model::<f32>::new(c, p32);
        let l64 = m64.forward_backward(&batch, Some(1.0));
        let l32 = m32.forward_backward(&batch, Some(1.0));
        assert!((f64::from(l32) - l64).abs() / l64 < 1e-5, "{l32} vs {l64}");
        let num: f64 = m32
            .grads
            .iter()
            .zip(&m64.grads)
            .map(|(&a, &b)| (f64::from(a) - b).powi(2))
            .sum();
        let den: f64 = m64.grads.iter().map(|b| b * b).sum();
        assert!(
            (num / den).sqrt() < 1e-5,
            "gradient relative error {}",
            (num / den).sqrt()
        );
    }

    #[test]
    fn bitwise_identical_for_any_thread_count() {
        let c = ModelConfig {
            dim: 64,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_dim: 96,
            vocab_size: 300,
            ..small_config()
        };
        let params = init_params(&c, &Layout::new(&c), 1);
        let toks = tokens(4 * 40, c.vocab_size, 2);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let mut e = CpuEngine::new(c.clone(), params.clone()).unwrap();
                    let b = Batch {
                        tokens: &toks,
                        batch: 4,
                        seq: 40,
                    };
                    let loss = e.forward_backward(&b, 1.0).unwrap();
                    let grads = e.grads().to_vec();
                    e.step(&AdamW::default(), 1e-3, Some(1.0)).unwrap();
                    (
                        loss.to_bits(),
                        grads.iter().map(|g| g.to_bits()).collect::<Vec<_>>(),
                        e.params().unwrap(),
                    )
                })
        };
        let (a, b) = (run(1), run(3));
        assert_eq!(a.0, b.0);
        assert!(a.1 == b.1, "gradients differ between 1 and 3 threads");
        assert!(a
            .2
            .iter()
            .zip(&b.2)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    /// k micro-batches of B rows with scale 1/k give the gradient of one batch of B·k rows.
    #[test]
    fn memory_estimate_counts_parameters_and_attention() {
        let c = small_config();
        let params = 16 * c.checked_num_params();
        assert_eq!(params, 16 * Layout::new(&c).len() as u128);
        let short = host_memory_estimate(&c, 2, 8);
        let long = host_memory_estimate(&c, 2, 16);
        // Doubling the sequence at least quadruples the per-layer attention probabilities.
        let probs = |t: u128| 4 * c.n_layers as u128 * 2 * c.n_heads as u128 * t * t;
        assert!(long - short >= probs(16) - probs(8));
        assert!(short > params);
    }

    #[test]
    fn accumulation_equals_one_big_batch() {
        let c = small_config();
        let params = init_params(&c, &Layout::new(&c), 4);
        let toks = tokens(8 * 6, c.vocab_size, 6);
        let mut big = CpuEngine::new(c.clone(), params.clone()).unwrap();
        big.forward_backward(
            &Batch {
                tokens: &toks,
                batch: 8,
                seq: 6,
            },
            1.0,
        )
        .unwrap();
        let mut acc = CpuEngine::new(c, params).unwrap();
        for part in toks.chunks(2 * 6) {
            acc.forward_backward(
                &Batch {
                    tokens: part,
                    batch: 2,
                    seq: 6,
                },
                0.25,
            )
            .unwrap();
        }
        let num: f64 = big
            .grads()
            .iter()
            .zip(acc.grads())
            .map(|(&a, &b)| f64::from(a - b).powi(2))
            .sum();
        let den: f64 = big.grads().iter().map(|&a| f64::from(a).powi(2)).sum();
        // f32 rounding only: summation order differs.
        assert!(
            (num / den).sqrt() < 1e-6,
            "relative difference {}",
            (num / den).sqrt()
        );
    }

    /// A tiny model learns a deterministic pattern (each row counts upward from a random
    /// start, modulo the vocabulary) to near-zero loss.
    #[test]
    fn tiny_model_learns_a_pattern() {
        let c = ModelConfig {
            vocab_size: 16,
            dim: 32,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_dim: 64,
            ..small_config()
        };
        let mut e = CpuEngine::new(c.clone(), init_params(&c, &Layout::new(&c), 0)).unwrap();
        let mut rng = Rng(1);
        let opt = AdamW {
            weight_decay: 0.0,
            ..AdamW::default()
        };
        let mut loss = f32::NAN;
        for _ in 0..300 {
            let toks: Vec<u32> = (0..8)
                .flat_map(|_| {
                    let start = rng.next_u64() % 16;
                    (0..12).map(move |i| ((start + i) % 16) as u32)
                })
                .collect();
            loss = e
                .forward_backward(
                    &Batch {
                        tokens: &toks,
                        batch: 8,
                        seq: 12,
                    },
                    1.0,
                )
                .unwrap();
            e.step(&opt, 1e-2, Some(1.0)).unwrap();
        }
        // The first position of each row is unpredictable (1/12 of the terms, ln 16 each at
        // best ≈ 0.23); everything after it is determined.
        assert!(loss < 0.35, "loss after training: {loss}");
    }
}
