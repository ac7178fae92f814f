//! LoRA on the CUDA engine, as on the CPU (`engine/cpu/lora.rs`): the base is frozen in the
//! storage type `T` (or its linear layers in NF4, dequantised into one scratch buffer before
//! each product that reads them), and what trains is the adapter: the engine's master
//! weights, working copy, gradients and AdamW moments are then the adapter's flat buffer, so
//! the step, the optimizer state and the collectives are the full model's code unchanged.
//!
//! Per adapted projection `y = x·Wᵀ`, with `s` the scaling:
//!
//!   forward:   xd = drop(x)             with dropout (kept, [n, in]), else x itself
//!              ts = s·(xd·Aᵀ)           kept for the backward pass, [n, r] in `T`
//!              y += ts·Bᵀ               through a scratch [n, out] and an add
//!   backward:  dB += dyᵀ·ts             into the f32 adapter gradients
//!              dt = s·(dy·B)            [n, r]
//!              dA += dtᵀ·xd
//!              dx += drop(dt·A)         through the scratch and an add
//!
//! The base's weight-gradient products are skipped: only `dx = dy·W` runs for it. Modules
//! trained whole (`--lora-save`) are views into the adapter's buffers, used by the engine
//! for the embedding and the LM head. Dropout masks are the CPU engine's, from the same hash
//! of (pass seed, layer, target, element) in `kernels/cuda/lora.cu`.

use std::mem::size_of;

use anyhow::{bail, Result};
use ingot_kernels::launch::{CudaSlice, CudaView, Gpu, Storage};
use ingot_kernels::matmul::Blas;

use crate::engine::cpu::nf4_base::Nf4Linears;
use crate::lora::layout::Pair;
use crate::lora::{AdapterLayout, LoraConfig, Target};
use crate::model::{Layout, ModelConfig};
use crate::quant::nf4::{dynamic_code, Absmax, CODE};

/// A block's linear weight in NF4 on the device.
struct Nf4Tensor {
    packed: CudaSlice<u8>,
    absmax: DeviceAbsmax,
}

enum DeviceAbsmax {
    F32(CudaSlice<f32>),
    Double {
        q: CudaSlice<u8>,
        scales: CudaSlice<f32>,
        offset: f32,
    },
}

/// The quantised linear weights and what dequantising them needs.
struct DeviceNf4 {
    /// `[layer][target]` in [`Target::ALL`] order.
    weights: Vec<Vec<Nf4Tensor>>,
    code16: CudaSlice<f32>,
    code256: CudaSlice<f32>,
    /// The absmax values of one tensor, dequantised (double quantisation only).
    absmax: CudaSlice<f32>,
}

/// The activations and scratch of the adapters, for micro-batches of up to `cap` rows (they
/// only grow, as the engine's arenas do); the pass under way has `n`.
struct Acts<T> {
    cap: usize,
    n: usize,
    /// `ts = s·(xd·Aᵀ)` of every adapted projection, `[layer][target]`, `[cap, r]` each.
    ts: Vec<Vec<Option<CudaSlice<T>>>>,
    /// `[cap, widest]`: `ts·Bᵀ` before it is added (forward), `dt·A` (backward).
    tmp: CudaSlice<T>,
    /// `[cap, r]`: `dt` of the backward pass.
    dt: CudaSlice<T>,
    /// With dropout, `[cap, widest input]`: the dropped-out input of the projection at hand.
    /// Not kept between the passes: the masks are a hash, so the backward pass makes it again.
    xd: Option<CudaSlice<T>>,
}

/// The adapter's description and the frozen base's linear weights, when they are quantised.
pub(super) struct DeviceLora<T> {
    pub lora: LoraConfig,
    pub layout: AdapterLayout,
    scale: f32,
    nf4: Option<DeviceNf4>,
    /// The dequantised weight of one projection (NF4 only).
    deq: CudaSlice<T>,
    acts: Option<Acts<T>>,
    /// The seed of this pass's dropout masks: `Some` in a training pass with dropout.
    pub dropout: Option<u64>,
}

/// The weights of block projections: dense `params` laid out by `layout`, or NF4.
pub(super) struct BaseWeights<'a, T> {
    pub params: &'a CudaSlice<T>,
    pub layout: &'a Layout,
}

impl<T: Storage> DeviceLora<T> {
    /// Uploads what the adapter needs besides its parameters; with `nf4`, the base's linear
    /// weights quantised (the dense rest is the caller's, laid out by
    /// [`Layout::without_linears`]).
    pub fn new(
        gpu: &Gpu,
        c: &ModelConfig,
        lora: LoraConfig,
        nf4: Option<&Nf4Linears>,
    ) -> Result<DeviceLora<T>> {
        let layout = AdapterLayout::new(c, &lora);
        let scale = lora.scaling() as f32;
        let largest = Target::max_over(c, |i, o| i * o);
        let nf4 = nf4.map(|q| upload_nf4(gpu, c, q, largest)).transpose()?;
        let deq = gpu.zeros::<T>(if nf4.is_some() { largest } else { 1 })?;
        Ok(DeviceLora {
            lora,
            layout,
            scale,
            nf4,
            deq,
            acts: None,
            dropout: None,
        })
    }

    /// Device bytes of the quantised linear weights (`nf4`: with double quantisation or
    /// not), the buffers they are dequantised into, and the frozen norms' gradient scratch;
    /// the dense rest of the base is the caller's.
    pub fn quantized_bytes(c: &ModelConfig, nf4: Option<bool>) -> u64 {
        let elem = size_of::<T>() as u128;
        let largest = Target::max_over(c, |i, o| i * o) as u128;
        let quantized = match nf4 {
            None => 0,
            Some(double) => {
                Nf4Linears::block_bytes(c, double) * c.n_layers as u128
                    + elem * largest
                    + 4 * largest / 64
            }
        };
        (quantized + 4 * c.dim as u128) as u64
    }

    /// Device bytes of the adapters' activations and scratch for micro-batches of `n` rows.
    pub fn activation_bytes(c: &ModelConfig, lora: &LoraConfig, n: usize) -> u64 {
        let kept = lora.rank * c.n_layers * lora.targets.len();
        let dropped = if lora.dropout > 0.0 {
            Target::max_over(c, |i, _| i)
        } else {
            0
        };
        let scratch = Target::max_over(c, usize::max) + lora.rank;
        (size_of::<T>() * n * (kept + dropped + scratch)) as u64
    }

    /// Makes the adapters' activations fit micro-batches of `n` rows, growing them (the only
    /// allocation) when no shape before needed as many.
    pub fn ensure_rows(&mut self, gpu: &Gpu, c: &ModelConfig, n: usize) -> Result<()> {
        if let Some(a) = self.acts.as_mut().filter(|a| a.cap >= n) {
            a.n = n;
            return Ok(());
        }
        let freed = self
            .acts
            .take()
            .map_or(0, |a| Self::activation_bytes(c, &self.lora, a.cap));
        super::fits(
            Self::activation_bytes(c, &self.lora, n),
            super::free_memory(gpu)? + freed,
            &format!("cuda:{}", gpu.info.ordinal),
            &format!("the adapters' activations of a micro-batch of {n} tokens"),
            "lower --batch-size (raising --grad-accum keeps the tokens per step) or --seq-len",
        )?;
        let r = self.lora.rank;
        let mut ts = Vec::with_capacity(c.n_layers);
        for layer in 0..c.n_layers {
            ts.push(
                Target::ALL
                    .iter()
                    .map(|&t| {
                        self.layout
                            .pair(layer, t)
                            .map(|_| gpu.zeros::<T>(n * r))
                            .transpose()
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        let xd = (self.lora.dropout > 0.0)
            .then(|| gpu.zeros::<T>(n * Target::max_over(c, |i, _| i)))
            .transpose()?;
        self.acts = Some(Acts {
            cap: n,
            n,
            ts,
            tmp: gpu.zeros::<T>(n * Target::max_over(c, usize::max))?,
            dt: gpu.zeros::<T>(n * r)?,
            xd,
        });
        Ok(())
    }

    /// Block `layer`'s frozen weight of `t`: a view of the dense base, or its NF4 storage
    /// dequantised into this adapter's scratch buffer.
    pub fn weight<'s>(
        &'s mut self,
        gpu: &Gpu,
        base: &BaseWeights<'s, T>,
        c: &ModelConfig,
        layer: usize,
        t: Target,
    ) -> Result<CudaView<'s, T>> {
        let (i, o) = t.dims(c);
        let len = i * o;
        let Some(q) = self.nf4.as_mut() else {
            let off = t.base_offset(&base.layout.blocks[layer]);
            return Ok(base.params.slice(off..off + len));
        };
        let w = &q.weights[layer][t as usize];
        let absmax = match &w.absmax {
            DeviceAbsmax::F32(a) => a,
            DeviceAbsmax::Double {
                q: codes,
                scales,
                offset,
            } => {
                let mut out = q.absmax.slice_mut(..codes.len());
                gpu.nf4_absmax(&mut out, codes, scales, &q.code256, *offset)?;
                &q.absmax
            }
        };
        let blocks = len / 64;
        gpu.nf4_dequantize(
            &mut self.deq.slice_mut(..len),
            &w.packed,
            &absmax.slice(..blocks),
            &q.code16,
        )?;
        Ok(self.deq.slice(..len))
    }

    /// `y += s·(x·Aᵀ)·Bᵀ` for block `layer`'s projection `t`, if it has an adapter; `adapter`
    /// is the working copy of the adapter's parameters.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        gpu: &Gpu,
        blas: &Blas,
        adapter: &CudaSlice<T>,
        layer: usize,
        t: Target,
        y: &mut CudaSlice<T>,
        x: &CudaSlice<T>,
    ) -> Result<()> {
        let Some(p) = self.layout.pair(layer, t) else {
            return Ok(());
        };
        let (a, b) = matrices(adapter, &p, self.lora.rank);
        let Some(acts) = self.acts.as_mut() else {
            bail!("LoRA activations missing");
        };
        let (n, r, in_dim, out_dim) = (acts.n, self.lora.rank, p.in_dim, p.out_dim);
        let Some(ts) = acts.ts[layer][t as usize].as_mut() else {
            bail!("LoRA activation of layer {layer} {} missing", t.name());
        };
        let mut ts = ts.slice_mut(..n * r);
        match (self.dropout, acts.xd.as_mut()) {
            (Some(seed), Some(xd)) => {
                let key = mask_key(seed, layer, t);
                let mut xd = xd.slice_mut(..n * in_dim);
                gpu.lora_dropout(&mut xd, &x.slice(..), key, self.lora.dropout)?;
                blas.linear_forward::<T, T>(&mut ts, &xd, &a, n, in_dim, r)?;
            }
            _ => blas.linear_forward::<T, T>(&mut ts, x, &a, n, in_dim, r)?,
        }
        gpu.scale_inplace(&mut ts, self.scale)?;
        let mut tmp = acts.tmp.slice_mut(..n * out_dim);
        blas.linear_forward::<T, T>(&mut tmp, &ts, &b, n, r, out_dim)?;
        gpu.add_view_inplace(y, &acts.tmp.slice(..n * out_dim))?;
        Ok(())
    }

    /// The adapter's part of the backward pass of block `layer`'s projection `t`: its
    /// gradients added into `grads` (the adapter's), and `dx += s·(dy·B)·A`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        gpu: &Gpu,
        blas: &Blas,
        adapter: &CudaSlice<T>,
        grads: &mut CudaSlice<f32>,
        layer: usize,
        t: Target,
        dx: &mut CudaSlice<T>,
        dy: &CudaSlice<T>,
        x: &CudaSlice<T>,
    ) -> Result<()> {
        let Some(p) = self.layout.pair(layer, t) else {
            return Ok(());
        };
        let (a, b) = matrices(adapter, &p, self.lora.rank);
        let Some(acts) = self.acts.as_mut() else {
            bail!("LoRA activations missing");
        };
        let (n, r, in_dim, out_dim) = (acts.n, self.lora.rank, p.in_dim, p.out_dim);
        let Some(ts) = acts.ts[layer][t as usize].as_ref() else {
            bail!("LoRA activation of layer {layer} {} missing", t.name());
        };
        let mut db = grads.slice_mut(p.b..p.b + out_dim * r);
        blas.linear_backward_dw::<T>(&mut db, dy, &ts.slice(..n * r), n, r, out_dim, true)?;
        let mut dt = acts.dt.slice_mut(..n * r);
        blas.linear_backward_dx::<T, T>(&mut dt, dy, &b, n, r, out_dim)?;
        gpu.scale_inplace(&mut dt, self.scale)?;
        let dt = acts.dt.slice(..n * r);
        let mut da = grads.slice_mut(p.a..p.a + r * in_dim);
        let dropped = match (self.dropout, acts.xd.as_mut()) {
            (Some(seed), Some(xd)) => {
                // The forward pass's dropped-out input, made again from the same masks.
                let key = mask_key(seed, layer, t);
                let mut xdv = xd.slice_mut(..n * in_dim);
                gpu.lora_dropout(&mut xdv, &x.slice(..), key, self.lora.dropout)?;
                let xdv = xd.slice(..n * in_dim);
                blas.linear_backward_dw::<T>(&mut da, &dt, &xdv, n, in_dim, r, true)?;
                Some((key, xd))
            }
            _ => {
                blas.linear_backward_dw::<T>(&mut da, &dt, x, n, in_dim, r, true)?;
                None
            }
        };
        let mut tmp = acts.tmp.slice_mut(..n * in_dim);
        blas.linear_backward_dx::<T, T>(&mut tmp, &dt, &a, n, in_dim, r)?;
        match dropped {
            // The input's gradient through the same mask, into the dropout scratch.
            Some((key, xd)) => {
                let dxd = acts.tmp.slice(..n * in_dim);
                let mut out = xd.slice_mut(..n * in_dim);
                gpu.lora_dropout(&mut out, &dxd, key, self.lora.dropout)?;
                gpu.add_view_inplace(dx, &xd.slice(..n * in_dim))?;
            }
            None => gpu.add_view_inplace(dx, &acts.tmp.slice(..n * in_dim))?,
        }
        Ok(())
    }
}

/// Views of an adapted projection's `A` (`[r, in]`) and `B` (`[out, r]`) in `adapter`.
fn matrices<'a, T>(
    adapter: &'a CudaSlice<T>,
    p: &Pair,
    r: usize,
) -> (CudaView<'a, T>, CudaView<'a, T>) {
    (
        adapter.slice(p.a..p.a + r * p.in_dim),
        adapter.slice(p.b..p.b + p.out_dim * r),
    )
}

/// The key of (layer, target)'s dropout masks under the pass seed `seed`, as the CPU's.
fn mask_key(seed: u64, layer: usize, t: Target) -> u64 {
    seed ^ ((layer as u64) << 40) ^ ((t as u64) << 56)
}

fn upload_nf4(gpu: &Gpu, c: &ModelConfig, q: &Nf4Linears, largest: usize) -> Result<DeviceNf4> {
    let mut weights = Vec::with_capacity(c.n_layers);
    for layer in 0..c.n_layers {
        let mut row = Vec::with_capacity(Target::ALL.len());
        for t in Target::ALL {
            let w = q.get(layer, t);
            let absmax = match &w.absmax {
                Absmax::F32(v) => DeviceAbsmax::F32(gpu.upload(v)?),
                Absmax::Double {
                    codes,
                    scales,
                    offset,
                } => DeviceAbsmax::Double {
                    q: gpu.upload(codes)?,
                    scales: gpu.upload(scales)?,
                    offset: *offset,
                },
            };
            row.push(Nf4Tensor {
                packed: gpu.upload(&w.packed)?,
                absmax,
            });
        }
        weights.push(row);
    }
    Ok(DeviceNf4 {
        weights,
        code16: gpu.upload(&CODE)?,
        code256: gpu.upload(dynamic_code())?,
        absmax: gpu.zeros::<f32>((largest / 64).max(1))?,
    })
}
