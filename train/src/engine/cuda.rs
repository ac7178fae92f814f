//! The CUDA engine: the CPU engine's forward and backward passes ([`super::cpu`]), step for
//! step, with every operation a kernel of `ingot_kernels::launch` or a cuBLASLt GEMM of
//! `ingot_kernels::matmul`, all enqueued on one stream.
//!
//! Precision: the engine is generic over the storage type `T` of weights and activations,
//! `f32` (`--dtype f32`, for debugging: the same kernels, comparable with the CPU to f32
//! rounding) or [`Bf16`] (`--dtype bf16`, mixed precision). Whatever `T`, every kernel and
//! every GEMM accumulates in f32, and these stay f32: the master weights and both AdamW
//! moments, the gradient buffer (so gradient accumulation over `--grad-accum` micro-batches
//! sums in f32, not in bf16, whose 8-bit mantissa would drop small micro-batch
//! contributions), and the per-row statistics (RMSNorm `rstd`, attention log-sum-exp and
//! `delta`, per-row losses). AdamW updates the f32 master and writes the working copy in `T`
//! in the same kernel, so the forward pass reads weights in `T`.
//!
//! Memory: master weights, the working copy, gradients and both AdamW moments are flat device
//! buffers in the model's [`Layout`], with the one-byte weight-decay mask (4 + size_of T + 4 +
//! 4 + 4 + 1 bytes per parameter: 19 in bf16, 21 in f32, where the working copy duplicates
//! the master), allocated once in [`CudaEngine::new`]. Activations live in two device arenas
//! (`T` and f32 statistics) sized for the largest micro-batch seen (in tokens); a smaller
//! shape reuses them, so a warm step allocates no device memory.
//!
//! LoRA ([`CudaEngine::with_lora`], `lora.rs`): the same buffers hold the adapter instead of
//! the model, so the step, checkpoints and collectives are unchanged; the frozen base lives in
//! a buffer of its own in `T` (its linear layers in NF4 with `--quantize nf4`) and gets no
//! gradients. Every block projection goes through `Projections`, the one place where a
//! weight is found (dense or dequantised) and an adapter joins it.
//!
//! Generation ([`Engine::begin_sequence`], [`Engine::extend_sequence`]) keeps per layer
//! a key and a value cache `[capacity, n_kv_heads * head_dim]` in `T`, allocated when the
//! sequence begins; the k and v GEMMs of new tokens write straight into their cache rows, and
//! attention over the cache is `attention_decode_*` (warp per query row and head).
//!
//! The typed launchers of `ingot_kernels::launch` take whole `CudaSlice`s of exact lengths, so
//! tensors inside a flat buffer (a norm's weight, the embedding's gradient, one slab of
//! logits) are passed as [`Alias`]es: non-owning `CudaSlice`s over a sub-range, made with
//! `CudaStream::upgrade_device_ptr` and leaked (never freed) on drop. The owner of the memory
//! is always a plain `CudaSlice` held by the engine next to its aliases, and an alias is
//! rebuilt whenever its owner is reallocated. The GEMMs take `CudaView`s directly.

use std::mem::{size_of, ManuallyDrop};
use std::ops::{Deref, DerefMut, Range};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use ingot_kernels::launch::{AdamWHyper, Bf16, CudaSlice, Gpu, Storage, ATTENTION_MMA_MIN_MAJOR};
use ingot_kernels::matmul::{Blas, CudaStream};

mod lora;

use super::optim::{decay_mask, decay_mask_of, AdamW};
use super::{Adapter, AttentionKernels, Batch, Engine, OptimizerState};
use crate::collective::nccl::{Element, Nccl};
use crate::collective::{gather_shards, Collective, DataParallel, Shards, Solo};
use crate::launch::Launch;
use crate::lora::Target;
use crate::model::{Layout, ModelConfig};
use lora::{BaseWeights, DeviceLora};

/// Logits kept at once by the fused LM head + cross-entropy: the rows of one slab are chosen
/// so that its `[rows, vocab]` logits take at most this many bytes (256 MiB: 2,670 rows of a
/// GPT-2 vocabulary in bf16), never the whole `[tokens, vocab]` matrix of a large batch.
const LM_HEAD_SLAB_BYTES: usize = 256 << 20;

/// Fewest rows per LM-head slab (fewer would starve the GEMMs).
const LM_HEAD_MIN_ROWS: usize = 256;

/// Rows per LM-head slab for `vocab` logits of `elem_bytes` each.
fn lm_head_rows(vocab: usize, elem_bytes: usize) -> usize {
    (LM_HEAD_SLAB_BYTES / (vocab * elem_bytes).max(1)).max(LM_HEAD_MIN_ROWS)
}

/// Arena sub-buffers start at multiples of this many elements (256 bytes for f32, 128 for
/// bf16), so the GEMMs see well-aligned operands.
const ARENA_ALIGN: usize = 64;

/// Runs `f`, turning a panic (cudarc unwraps some driver results) into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    ingot_kernels::guard::catch(f).map_err(|msg| anyhow!("{what}: {msg}"))
}

/// A non-owning `CudaSlice` over part of a buffer owned elsewhere; leaked, not freed, on drop.
struct Alias<T> {
    slice: ManuallyDrop<CudaSlice<T>>,
    ptr: u64,
}

impl<T> Alias<T> {
    /// # Safety
    /// `ptr .. ptr + len * size_of::<T>()` must lie inside a live device allocation that
    /// outlives the alias.
    unsafe fn new(stream: &Arc<CudaStream>, ptr: u64, len: usize) -> Result<Alias<T>> {
        // SAFETY: forwarded to the caller.
        let slice = guarded("creating a device buffer view", || unsafe {
            stream.upgrade_device_ptr::<T>(ptr, len)
        })?;
        Ok(Alias {
            slice: ManuallyDrop::new(slice),
            ptr,
        })
    }

    /// An alias of `len` elements from element `off` of this one.
    fn sub(&self, stream: &Arc<CudaStream>, off: usize, len: usize) -> Result<Alias<T>> {
        // Checked: an offset such as `Layout`'s ELSEWHERE must fail, not wrap.
        if off
            .checked_add(len)
            .is_none_or(|end| end > self.slice.len())
        {
            bail!(
                "view {off}..{} outside a buffer of {}",
                off.saturating_add(len),
                self.slice.len()
            );
        }
        // SAFETY: inside this alias, hence inside its owner's allocation.
        unsafe { Alias::new(stream, self.ptr + (off * size_of::<T>()) as u64, len) }
    }
}

impl<T> Drop for Alias<T> {
    fn drop(&mut self) {
        // SAFETY: taken once, here; leaking hands the pointer back without freeing it.
        let slice = unsafe { ManuallyDrop::take(&mut self.slice) };
        let _ = catch_unwind(AssertUnwindSafe(move || slice.leak()));
    }
}

impl<T> Deref for Alias<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        &self.slice
    }
}

impl<T> DerefMut for Alias<T> {
    fn deref_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.slice
    }
}

/// An owned device buffer that hands out [`Alias`]es.
struct DevBuf<T> {
    owner: CudaSlice<T>,
    ptr: u64,
}

impl<T: ingot_kernels::launch::DeviceRepr> DevBuf<T> {
    /// Takes `slice` over, learning its device address.
    fn from_slice(stream: &Arc<CudaStream>, slice: CudaSlice<T>) -> Result<DevBuf<T>> {
        let len = slice.len();
        let ptr = guarded("reading a device address", move || slice.leak())?;
        // SAFETY: `ptr` is the allocation just leaked, `len` elements long; `owner` frees it.
        let owner = guarded("creating a device buffer", || unsafe {
            stream.upgrade_device_ptr::<T>(ptr, len)
        })?;
        Ok(DevBuf { owner, ptr })
    }

    fn alias(&self, stream: &Arc<CudaStream>, off: usize, len: usize) -> Result<Alias<T>> {
        // Checked: an offset such as `Layout`'s ELSEWHERE must fail, not wrap.
        if off
            .checked_add(len)
            .is_none_or(|end| end > self.owner.len())
        {
            bail!(
                "view {off}..{} outside a buffer of {}",
                off.saturating_add(len),
                self.owner.len()
            );
        }
        // SAFETY: inside `owner`, which the engine keeps alive alongside the alias.
        unsafe { Alias::new(stream, self.ptr + (off * size_of::<T>()) as u64, len) }
    }
}

/// Per-block activations kept for the backward pass: `B` buffers in the storage type, `F`
/// buffers of f32 statistics (or their lengths when sizing the arenas).
struct BlockActs<B, F> {
    x_in: B,
    rstd1: F,
    h1: B,
    q: B,
    k: B,
    v: B,
    lse: F,
    att: B,
    x_mid: B,
    rstd2: F,
    h2: B,
    g: B,
    u: B,
    a: B,
}

/// Activations and backward scratch of one (batch, seq) shape.
struct Acts<B, F> {
    blocks: Vec<BlockActs<B, F>>,
    x_out: B,
    rstd_f: F,
    hf: B,
    logits: B,
    losses: F,
    loss_sum: F,
    dx: B,
    dx2: B,
    dh: B,
    dh_tmp: B,
    dq: B,
    dk: B,
    dv: B,
    datt: B,
    da: B,
    dg: B,
    du: B,
    delta: F,
}

/// Builds the activations of `batch × seq` tokens (LM-head slabs of `lm_rows` rows), taking
/// each storage-type buffer from `take(len)` and each f32 statistic from `take_f32(len)`.
fn build_acts<B, F>(
    c: &ModelConfig,
    batch: usize,
    seq: usize,
    lm_rows: usize,
    take: &mut impl FnMut(usize) -> Result<B>,
    take_f32: &mut impl FnMut(usize) -> Result<F>,
) -> Result<Acts<B, F>> {
    let n = batch * seq;
    let (d, f, nh) = (c.dim, c.ffn_dim, c.n_heads);
    let (qd, kvd) = (nh * c.head_dim(), c.n_kv_heads * c.head_dim());
    let mut blocks = Vec::with_capacity(c.n_layers);
    for _ in 0..c.n_layers {
        blocks.push(BlockActs {
            x_in: take(n * d)?,
            rstd1: take_f32(n)?,
            h1: take(n * d)?,
            q: take(n * qd)?,
            k: take(n * kvd)?,
            v: take(n * kvd)?,
            lse: take_f32(n * nh)?,
            att: take(n * qd)?,
            x_mid: take(n * d)?,
            rstd2: take_f32(n)?,
            h2: take(n * d)?,
            g: take(n * f)?,
            u: take(n * f)?,
            a: take(n * f)?,
        });
    }
    Ok(Acts {
        blocks,
        x_out: take(n * d)?,
        rstd_f: take_f32(n)?,
        hf: take(n * d)?,
        logits: take(lm_rows.min(n) * c.vocab_size)?,
        losses: take_f32(n)?,
        loss_sum: take_f32(1)?,
        dx: take(n * d)?,
        dx2: take(n * d)?,
        dh: take(n * d)?,
        dh_tmp: take(n * d)?,
        dq: take(n * qd)?,
        dk: take(n * kvd)?,
        dv: take(n * kvd)?,
        datt: take(n * qd)?,
        da: take(n * f)?,
        dg: take(n * f)?,
        du: take(n * f)?,
        delta: take_f32(n * nh)?,
    })
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// Elements the two arenas need for `batch × seq` tokens: (storage type, f32).
fn arena_len(c: &ModelConfig, batch: usize, seq: usize, lm_rows: usize) -> (usize, usize) {
    let (mut total, mut total_f32) = (0, 0);
    let _ = build_acts(
        c,
        batch,
        seq,
        lm_rows,
        &mut |len| {
            total += round_up(len.max(1), ARENA_ALIGN);
            Ok(())
        },
        &mut |len| {
            total_f32 += round_up(len.max(1), ARENA_ALIGN);
            Ok(())
        },
    );
    (total, total_f32)
}

/// One slab of LM-head rows: its logits (overwritten by their gradient), per-row losses and
/// targets.
struct Slab<T> {
    r0: usize,
    rows: usize,
    logits: Alias<T>,
    losses: Alias<f32>,
    targets: Alias<u32>,
}

/// The activations of the current shape, as aliases into the arenas.
struct Shape<T> {
    batch: usize,
    seq: usize,
    acts: Acts<Alias<T>, Alias<f32>>,
    tokens: Alias<u32>,
    targets: Alias<u32>,
    slabs: Vec<Slab<T>>,
}

/// Views of the norm weights and the embedding inside a flat (weight or gradient) buffer.
struct TensorViews<T> {
    embed: Alias<T>,
    attn_norm: Vec<Alias<T>>,
    mlp_norm: Vec<Alias<T>>,
    final_norm: Alias<T>,
}

impl<T: Storage> TensorViews<T> {
    fn new(stream: &Arc<CudaStream>, buf: &DevBuf<T>, c: &ModelConfig, l: &Layout) -> Result<Self> {
        let d = c.dim;
        Ok(TensorViews {
            embed: buf.alias(stream, l.embed, c.vocab_size * d)?,
            attn_norm: l
                .blocks
                .iter()
                .map(|b| buf.alias(stream, b.attn_norm, d))
                .collect::<Result<_>>()?,
            mlp_norm: l
                .blocks
                .iter()
                .map(|b| buf.alias(stream, b.mlp_norm, d))
                .collect::<Result<_>>()?,
            final_norm: buf.alias(stream, l.final_norm, d)?,
        })
    }
}

/// The key/value cache of the sequence being generated ([`Engine::begin_sequence`]).
struct Sequence<T> {
    capacity: usize,
    /// Positions already in the cache (the next token's position).
    past: usize,
    /// Per layer, keys (after RoPE) and values `[capacity, n_kv_heads * head_dim]`.
    k: Vec<DevBuf<T>>,
    v: Vec<DevBuf<T>>,
    /// RoPE tables `[capacity, head_dim / 2]`: a chunk at `past` reads them from row `past`
    /// on through a view, so the rotation kernel sees positions `past..` as its rows `0..`.
    cos: DevBuf<f32>,
    sin: DevBuf<f32>,
    /// The f32 logits of a chunk's last row.
    logits: CudaSlice<f32>,
}

/// Device bytes of a [`Sequence`] of `capacity` positions.
fn sequence_bytes(c: &ModelConfig, capacity: usize, elem_bytes: usize) -> u64 {
    let kv = 2 * c.n_layers * capacity * c.n_kv_heads * c.head_dim() * elem_bytes;
    let tables = 2 * capacity * (c.head_dim() / 2) * 4;
    (kv + tables + c.vocab_size * 4) as u64
}

/// `y[n, out] = x[n, in] · wᵀ` with `w` the weight at `off`.
#[allow(clippy::too_many_arguments)]
fn linear<T: Storage>(
    blas: &Blas,
    y: &mut CudaSlice<T>,
    x: &CudaSlice<T>,
    params: &CudaSlice<T>,
    off: usize,
    n: usize,
    in_dim: usize,
    out_dim: usize,
) -> Result<()> {
    let w = params.slice(off..off + in_dim * out_dim);
    blas.linear_forward::<T, T>(y, x, &w, n, in_dim, out_dim)?;
    Ok(())
}

/// `dx = dy · w` (overwritten) and `dw += dyᵀ · x`, with `w`, `dw` at `off` (as the CPU's
/// `linear_backward`); `dw` is in the f32 gradient buffer.
#[allow(clippy::too_many_arguments)]
fn linear_back<T: Storage>(
    blas: &Blas,
    dx: &mut CudaSlice<T>,
    grads: &mut CudaSlice<f32>,
    params: &CudaSlice<T>,
    off: usize,
    dy: &CudaSlice<T>,
    x: &CudaSlice<T>,
    n: usize,
    in_dim: usize,
    out_dim: usize,
) -> Result<()> {
    let len = in_dim * out_dim;
    let w = params.slice(off..off + len);
    blas.linear_backward_dx::<T, T>(dx, dy, &w, n, in_dim, out_dim)?;
    let mut dw = grads.slice_mut(off..off + len);
    blas.linear_backward_dw::<T>(&mut dw, dy, x, n, in_dim, out_dim, true)?;
    Ok(())
}

/// Where the passes get a block projection's weight, and the one place an adapter joins
/// it: without LoRA the working weights (and their gradients), with LoRA the frozen base
/// (dense or NF4) and the adapter's working copy.
struct Projections<'a, T: Storage> {
    gpu: &'a Gpu,
    blas: &'a Blas,
    config: &'a ModelConfig,
    base: BaseWeights<'a, T>,
    /// The adapter's working copy (with LoRA).
    adapter: &'a CudaSlice<T>,
    lora: Option<&'a mut DeviceLora<T>>,
}

impl<'a, T: Storage> Projections<'a, T> {
    fn new(
        gpu: &'a Gpu,
        blas: &'a Blas,
        config: &'a ModelConfig,
        layout: &'a Layout,
        work: &'a DevBuf<T>,
        frozen: &'a Option<(DevBuf<T>, Layout)>,
        lora: Option<&'a mut DeviceLora<T>>,
    ) -> Self {
        let base = match frozen {
            Some((buf, l)) => BaseWeights {
                params: &buf.owner,
                layout: l,
            },
            None => BaseWeights {
                params: &work.owner,
                layout,
            },
        };
        Projections {
            gpu,
            blas,
            config,
            base,
            adapter: &work.owner,
            lora,
        }
    }

    /// `y = x·Wᵀ` for block `layer`'s projection `t` (plus its adapter's term).
    fn forward(
        &mut self,
        layer: usize,
        t: Target,
        y: &mut CudaSlice<T>,
        x: &CudaSlice<T>,
        n: usize,
    ) -> Result<()> {
        let (i, o) = t.dims(self.config);
        match self.lora.as_deref_mut() {
            None => {
                let off = t.base_offset(&self.base.layout.blocks[layer]);
                linear(self.blas, y, x, self.base.params, off, n, i, o)
            }
            Some(l) => {
                {
                    let w = l.weight(self.gpu, &self.base, self.config, layer, t)?;
                    self.blas.linear_forward::<T, T>(y, x, &w, n, i, o)?;
                }
                l.forward(self.gpu, self.blas, self.adapter, layer, t, y, x)
            }
        }
    }

    /// `dx = dy·W` for block `layer`'s projection `t`; without LoRA also `dW += dyᵀ·x` into
    /// `grads`, with LoRA the adapter's gradients instead (the base's product is skipped).
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &mut self,
        layer: usize,
        t: Target,
        dx: &mut CudaSlice<T>,
        grads: &mut CudaSlice<f32>,
        dy: &CudaSlice<T>,
        x: &CudaSlice<T>,
        n: usize,
    ) -> Result<()> {
        let (i, o) = t.dims(self.config);
        match self.lora.as_deref_mut() {
            None => {
                let off = t.base_offset(&self.base.layout.blocks[layer]);
                linear_back(self.blas, dx, grads, self.base.params, off, dy, x, n, i, o)
            }
            Some(l) => {
                {
                    let w = l.weight(self.gpu, &self.base, self.config, layer, t)?;
                    self.blas.linear_backward_dx::<T, T>(dx, dy, &w, n, i, o)?;
                }
                l.backward(
                    self.gpu,
                    self.blas,
                    self.adapter,
                    grads,
                    layer,
                    t,
                    dx,
                    dy,
                    x,
                )
            }
        }
    }
}

/// The gradient buffer of a norm's weight: its view into the gradients, or (LoRA, frozen
/// norms) the scratch buffer.
fn norm_grad<'g>(
    view: Option<&'g mut CudaSlice<f32>>,
    scratch: Option<&'g mut CudaSlice<f32>>,
) -> Result<&'g mut CudaSlice<f32>> {
    view.or(scratch)
        .context("no gradient buffer for the norm weights")
}

/// Free memory on the engine's GPU, in bytes.
fn free_memory(gpu: &Gpu) -> Result<u64> {
    let (free, _total) = guarded("reading the device memory", || {
        gpu.stream.context().mem_get_info()
    })?
    .map_err(|e| anyhow!("reading the device memory: {e:?}"))?;
    Ok(free as u64)
}

/// Refuses an allocation of `need` bytes for `what` when only `free` bytes are free on
/// `device`, with one line saying what to change, instead of failing inside the driver.
fn fits(need: u64, free: u64, device: &str, what: &str, advice: &str) -> Result<()> {
    if need > free {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        bail!(
            "{what} need {:.2} GiB of GPU memory but {:.2} GiB is free on {device}; {advice}",
            gib(need),
            gib(free)
        );
    }
    Ok(())
}

/// `params` rounded to the storage type on the host, with the device's rounding (nearest
/// even), so the working copy equals what AdamW's `work` output would hold.
fn to_storage<T: Storage>(params: &[f32]) -> Vec<T> {
    params.iter().map(|&p| T::from_f32(p)).collect()
}

/// Whether attention (forward and backward) uses the tensor-core kernels
/// (`attention_*_mma_*`), from `--attention` (`setting`) and whether they can run here
/// (`supported`: bf16 storage, head dim 64 or 128, compute capability 8.0 or newer). `auto`:
/// wherever they can; `simt`: never (the warp-per-row kernels); `mma`: always, and an error
/// where they cannot.
fn choose_attention(setting: AttentionKernels, supported: bool) -> Result<bool> {
    match setting {
        AttentionKernels::Auto => Ok(supported),
        AttentionKernels::Simt => Ok(false),
        AttentionKernels::Mma if supported => Ok(true),
        AttentionKernels::Mma => bail!(
            "--attention mma: the tensor-core attention needs --dtype bf16, a head dim of 64 or 128 and a GPU of compute capability 8.0 or newer; use --attention auto or simt"
        ),
    }
}

/// Host memory the CUDA engine needs for `model`: the f32 parameters and their storage-type
/// copy for the upload (it checks the device's own memory before allocating there).
pub fn host_memory_estimate(model: &ModelConfig) -> u128 {
    8 * model.checked_num_params()
}

/// The device memory of a LoRA run of the CUDA engine storing `elem_bytes`-wide values
/// (2 for bf16, 4 for f32): the frozen base (dense in that type, or its linear layers in NF4
/// and the rest dense, with the buffer one projection is dequantised into); the adapter's
/// master weights, working copy and gradients; its two AdamW moments and decay mask; the
/// activation arenas of a `batch × seq` micro-batch plus the adapters' `[n, r]` activations
/// and scratch.
pub fn lora_memory_estimate(
    c: &ModelConfig,
    lora: &crate::lora::LoraConfig,
    quantize: Option<crate::quant::BaseQuant>,
    batch: usize,
    seq: usize,
    elem_bytes: usize,
) -> super::MemoryEstimate {
    let elem = elem_bytes as u128;
    let trained = crate::lora::AdapterLayout::new(c, lora).len() as u128;
    let dense = match quantize {
        Some(_) => Layout::without_linears(c).len(),
        None => c.num_params(),
    } as u128;
    let n = batch * seq;
    let (t_len, f32_len) = arena_len(c, batch, seq, lm_head_rows(c.vocab_size, elem_bytes));
    let double = quantize.map(|q| q.double);
    let (quantized, lora_acts) = match elem_bytes {
        2 => (
            DeviceLora::<Bf16>::quantized_bytes(c, double),
            DeviceLora::<Bf16>::activation_bytes(c, lora, n),
        ),
        _ => (
            DeviceLora::<f32>::quantized_bytes(c, double),
            DeviceLora::<f32>::activation_bytes(c, lora, n),
        ),
    };
    super::MemoryEstimate {
        base: elem * dense + u128::from(quantized),
        adapters: (8 + elem) * trained,
        optimizer: 9 * trained,
        activations: elem * t_len as u128
            + 4 * f32_len as u128
            + 8 * n as u128
            + u128::from(lora_acts),
    }
}

/// Storage type names, for messages (`--dtype`).
fn dtype_name<T: Storage>() -> &'static str {
    T::SUFFIX
}

/// The CUDA engine with weights and activations stored as `T` (`f32` or [`Bf16`]) and its
/// f32 optimizer state, all on one device.
pub struct CudaEngine<T: Storage = f32> {
    config: ModelConfig,
    layout: Layout,
    gpu: Gpu,
    blas: Blas,
    // Aliases are declared (and dropped) before the buffers they point into.
    shape: Option<Shape<T>>,
    /// Views into the working weights (with LoRA: into the frozen base).
    wv: TensorViews<T>,
    /// Views into the gradients (none with LoRA: the base gets no gradients).
    gv: Option<TensorViews<f32>>,
    /// LoRA: the adapter's description and activations; the master weights, working copy,
    /// gradients and moments are then the adapter's.
    lora: Option<DeviceLora<T>>,
    /// LoRA: the frozen base's dense tensors in `T` and their layout (the full one, or
    /// without the linear layers when they are in NF4).
    frozen: Option<(DevBuf<T>, Layout)>,
    /// LoRA: where the frozen norms' weight gradients go (`[dim]`, never read).
    dnorm: Option<CudaSlice<f32>>,
    /// LoRA with `--lora-save embed_tokens`: the trained embedding's views into the adapter's
    /// working copy and gradients.
    saved_embed: Option<(Alias<T>, Alias<f32>)>,
    /// LoRA dropout: the run's seed of the masks, and the micro-batches of this step so far
    /// (each pass gets masks of its own, by rank, step and micro-batch, as on the CPU).
    dropout_seed: u64,
    micro: u64,
    arena: Option<DevBuf<T>>,
    arena_f32: Option<DevBuf<f32>>,
    arena_u32: Option<DevBuf<u32>>,
    /// f32 master weights, updated by AdamW (under ZeRO-1: this rank's shard only).
    master: CudaSlice<f32>,
    /// The weights the forward and backward passes read: the master rounded to `T` (an
    /// exact copy when `T` is f32).
    work: DevBuf<T>,
    grads: DevBuf<f32>,
    /// Under ZeRO-1: this rank's shard of the gradients summed over the ranks.
    grad_shard: Option<CudaSlice<f32>>,
    /// AdamW moments and the decay mask, of every parameter or of this rank's shard.
    exp_avg: CudaSlice<f32>,
    exp_avg_sq: CudaSlice<f32>,
    decay: CudaSlice<u8>,
    norm_out: CudaSlice<f32>,
    norm_partials: CudaSlice<f64>,
    clip_scale: CudaSlice<f32>,
    /// RoPE tables `(seq, cos, sin)` for the longest sequence seen.
    rope: Option<(usize, CudaSlice<f32>, CudaSlice<f32>)>,
    /// The sequence being generated with a key/value cache, if any.
    sequence: Option<Sequence<T>>,
    host_targets: Vec<u32>,
    /// Rows per LM-head slab ([`lm_head_rows`]).
    lm_head_rows: usize,
    /// Whether attention runs on tensor cores ([`choose_attention`]).
    mma_attention: bool,
    step: u64,
    ranks: Ranks,
}

/// The ranks a CUDA engine trains with: [`Solo`] for one process, else an NCCL communicator,
/// and how ZeRO-1 shards the optimizer state when it is on.
struct Ranks {
    solo: Solo,
    nccl: Option<Nccl>,
    /// ZeRO-1: the master weights, moments and decay mask hold `shard` values (the owned
    /// range, zero-padded), and the working weights and gradients `padded()` values.
    zero: Option<Shards>,
}

impl Ranks {
    fn rank(&self) -> usize {
        self.nccl.as_ref().map_or(0, |c| c.rank())
    }
    fn world(&self) -> usize {
        self.nccl.as_ref().map_or(1, |c| c.world())
    }
    /// The parameters this rank keeps master weights and moments of, and the length of those
    /// buffers; then the length of the working weights and gradients.
    fn lengths(&self, n: usize) -> (Range<usize>, usize, usize) {
        match self.zero {
            Some(s) => (s.range(self.rank()), s.shard, s.padded()),
            None => (0..n, n, n),
        }
    }
    fn nccl(&mut self) -> Result<&mut Nccl> {
        self.nccl.as_mut().context("ZeRO-1 without a communicator")
    }
}

/// `all[range]`, zero-padded to `len` (a rank's shard of a flat buffer).
fn padded_part<T: Copy + Default>(all: &[T], range: Range<usize>, len: usize) -> Vec<T> {
    let mut v = all[range].to_vec();
    v.resize(len, T::default());
    v
}

/// The mixed-precision engine: bf16 weights and activations, f32 everything else.
pub type CudaEngineBf16 = CudaEngine<Bf16>;

/// What the engine's storage type must be: something the kernels store (`Storage`) and NCCL
/// reduces (`Element`). `f32` and `Bf16` are both.
pub trait Precision: Storage + Element {}
impl<T: Storage + Element> Precision for T {}

impl<T: Precision> CudaEngine<T> {
    /// The device this engine runs on (name, architecture, memory; whether it is emulated).
    pub fn device_info(&self) -> &ingot_kernels::probe::DeviceInfo {
        &self.gpu.info
    }

    /// Opens GPU `ordinal` (probe, kernels, cuBLASLt) and uploads `params`. Every failure,
    /// no GPU included, is a one-line error.
    pub fn new(ordinal: usize, config: ModelConfig, params: Vec<f32>) -> Result<CudaEngine<T>> {
        Self::with_attention(ordinal, config, params, AttentionKernels::Auto)
    }

    /// As [`CudaEngine::new`], with the attention kernels chosen by `attention`
    /// ([`choose_attention`]).
    pub fn with_attention(
        ordinal: usize,
        config: ModelConfig,
        params: Vec<f32>,
        attention: AttentionKernels,
    ) -> Result<CudaEngine<T>> {
        Self::build(ordinal, config, params, attention, None, None)
    }

    /// As [`CudaEngine::with_attention`], as one rank of the world `launch` describes: joins
    /// its NCCL communicator ([`Nccl::connect`]) and, with `dp.zero`, keeps the master
    /// weights and AdamW moments of its shard only.
    pub fn data_parallel(
        ordinal: usize,
        config: ModelConfig,
        params: Vec<f32>,
        attention: AttentionKernels,
        launch: &Launch,
        dp: &DataParallel,
    ) -> Result<CudaEngine<T>> {
        Self::build(ordinal, config, params, attention, Some((launch, dp)), None)
    }

    /// A LoRA engine: `base` frozen (its linear layers in NF4 when the adapter says so),
    /// `adapter` training; alone, or as one rank of `dp`.
    pub fn with_lora(
        ordinal: usize,
        config: ModelConfig,
        base: Vec<f32>,
        adapter: Adapter,
        attention: AttentionKernels,
        dp: Option<(&Launch, &DataParallel)>,
    ) -> Result<CudaEngine<T>> {
        Self::build(ordinal, config, base, attention, dp, Some(adapter))
    }

    fn build(
        ordinal: usize,
        config: ModelConfig,
        params: Vec<f32>,
        attention: AttentionKernels,
        dp: Option<(&Launch, &DataParallel)>,
        adapter: Option<Adapter>,
    ) -> Result<CudaEngine<T>> {
        let layout = super::checked_layout(&config, params.len())?;
        let gpu = Gpu::new(ordinal).map_err(|e| anyhow!("cuda:{ordinal}: {e}"))?;
        let blas = Blas::for_gpu(&gpu).map_err(|e| anyhow!("cuda:{ordinal}: {e}"))?;
        let stream = gpu.stream.clone();
        // With LoRA what trains is the adapter: `params` becomes the frozen base.
        let (params, decay_mask, frozen_host) = match &adapter {
            None => {
                let mask = decay_mask(&layout);
                (params, mask, None)
            }
            Some(a) => {
                let al = crate::lora::AdapterLayout::new(&config, &a.lora);
                if a.params.len() != al.len() {
                    bail!(
                        "{} adapter parameters given, the adapter has {}",
                        a.params.len(),
                        al.len()
                    );
                }
                let mask = decay_mask_of(&al.tensors, al.len());
                (a.params.clone(), mask, Some(params))
            }
        };
        let n = params.len();
        let nccl = dp
            .map(|(launch, dp)| Nccl::connect(&stream, launch, dp))
            .transpose()?;
        let zero = match (&nccl, dp) {
            (Some(c), Some((_, dp))) if dp.zero => Some(Shards::new(n, c.world())),
            _ => None,
        };
        let ranks = Ranks {
            solo: Solo,
            nccl,
            zero,
        };
        let (owned, shard, padded) = ranks.lengths(n);
        // Master, moments and decay mask of the shard (and the gradient shard under ZeRO-1);
        // working copy and gradients of every parameter.
        let per_shard = 4 + 4 + 4 + 1 + if zero.is_some() { 4 } else { 0 };
        let state = shard as u64 * per_shard + padded as u64 * (size_of::<T>() as u64 + 4);
        // Under ZeRO-1 a checkpoint gathers the shards in place in a device buffer of every
        // parameter, for a moment: counted now, rather than found short at the first save.
        let gather = if zero.is_some() { padded as u64 * 4 } else { 0 };
        let state = state + gather;
        let frozen_bytes = match (&adapter, &frozen_host) {
            (Some(a), Some(base)) => {
                let dense = match a.quantize {
                    Some(_) => Layout::without_linears(&config).len(),
                    None => base.len(),
                };
                (dense * size_of::<T>()) as u64
                    + DeviceLora::<T>::quantized_bytes(&config, a.quantize.map(|q| q.double))
            }
            _ => 0,
        };
        let state = state + frozen_bytes;
        fits(
            state,
            free_memory(&gpu)?,
            &format!("cuda:{ordinal}"),
            "the model's weights, gradients and AdamW state",
            if zero.is_some() {
                "use a smaller model or more ranks"
            } else {
                "use a smaller model, or more GPUs with --zero 1"
            },
        )?;
        let master = gpu.upload(&padded_part(&params, owned.clone(), shard))?;
        let work = to_storage::<T>(&params);
        let work = DevBuf::from_slice(&stream, gpu.upload(&padded_part(&work, 0..n, padded))?)?;
        let grads = DevBuf::from_slice(&stream, gpu.zeros::<f32>(padded)?)?;
        let grad_shard = zero.map(|_| gpu.zeros::<f32>(shard)).transpose()?;
        let dropout_seed = adapter.as_ref().map_or(0, |a| a.seed);
        let (lora, frozen) = match (adapter, frozen_host) {
            (Some(a), Some(base)) => {
                let (dense, dense_layout, nf4) = match a.quantize {
                    Some(q) => {
                        let nf4 = crate::engine::cpu::nf4_base::Nf4Linears::quantize(
                            &config, &layout, &base, q.double,
                        )?;
                        let compact = Layout::without_linears(&config);
                        let dense =
                            crate::engine::cpu::nf4_base::dense_part(&layout, &compact, &base);
                        (dense, compact, Some(nf4))
                    }
                    None => (base, layout.clone(), None),
                };
                let buf = DevBuf::from_slice(&stream, gpu.upload(&to_storage::<T>(&dense))?)?;
                let l = DeviceLora::new(&gpu, &config, a.lora, nf4.as_ref())?;
                (Some(l), Some((buf, dense_layout)))
            }
            _ => (None, None),
        };
        let dnorm = lora
            .as_ref()
            .map(|_| gpu.zeros::<f32>(config.dim))
            .transpose()?;
        let table = config.vocab_size * config.dim;
        let saved_embed = match lora.as_ref().and_then(|l| l.layout.embed) {
            Some(off) => Some((
                work.alias(&stream, off, table)?,
                grads.alias(&stream, off, table)?,
            )),
            None => None,
        };
        let wv = match &frozen {
            Some((buf, l)) => TensorViews::new(&stream, buf, &config, l)?,
            None => TensorViews::new(&stream, &work, &config, &layout)?,
        };
        let gv = match &frozen {
            Some(_) => None,
            None => Some(TensorViews::new(&stream, &grads, &config, &layout)?),
        };
        let decay: Vec<u8> = decay_mask.into_iter().map(u8::from).collect();
        let decay = gpu.upload(&padded_part(&decay, owned, shard))?;
        let exp_avg = gpu.zeros::<f32>(shard)?;
        let exp_avg_sq = gpu.zeros::<f32>(shard)?;
        let norm_out = gpu.zeros::<f32>(2)?;
        let norm_partials = gpu.zeros::<f64>(Gpu::grad_norm_parts(n).max(1))?;
        let clip_scale = gpu.zeros::<f32>(1)?;
        gpu.synchronize()?;
        let lm_head_rows = lm_head_rows(config.vocab_size, size_of::<T>());
        let mma_attention = choose_attention(
            attention,
            Gpu::attention_mma_supported::<T>(config.head_dim())
                && gpu.info.compute_capability.0 >= ATTENTION_MMA_MIN_MAJOR,
        )?;
        Ok(CudaEngine {
            config,
            layout,
            gpu,
            blas,
            shape: None,
            wv,
            gv,
            dnorm,
            saved_embed,
            dropout_seed,
            micro: 0,
            lora,
            frozen,
            arena: None,
            arena_f32: None,
            arena_u32: None,
            master,
            work,
            grads,
            grad_shard,
            exp_avg,
            exp_avg_sq,
            decay,
            norm_out,
            norm_partials,
            clip_scale,
            rope: None,
            sequence: None,
            host_targets: Vec::new(),
            ranks,
            lm_head_rows,
            mma_attention,
            step: 0,
        })
    }

    /// Whether attention runs on the tensor-core kernels ([`choose_attention`]); generation
    /// with the cache always uses the warp-per-row decode kernel.
    pub fn tensor_core_attention(&self) -> bool {
        self.mma_attention
    }

    /// Sets the rows per LM-head slab (at least 1), so that tests can make a small batch take
    /// several slabs, the last one partial. The results are the same up to the order in which
    /// the LM head's gradient sums its slabs.
    pub fn set_lm_head_rows(&mut self, rows: usize) {
        self.lm_head_rows = rows.max(1);
        self.shape = None;
    }

    /// The accumulated gradients, copied to the host (for tests): of the model, or with LoRA
    /// of the adapter.
    pub fn grads(&self) -> Result<Vec<f32>> {
        let mut g = self.gpu.download(&self.grads.owner)?;
        g.truncate(self.trainable_len());
        Ok(g)
    }

    /// Sets the LoRA dropout masks of the next pass, as the CPU engine's `dropout_for`: a
    /// training pass gets a seed of its own (by rank, step and micro-batch), evaluation none.
    fn dropout_for(&mut self, training: bool) {
        let key = [self.ranks.rank() as u64, self.step, self.micro];
        let seed = key.iter().fold(self.dropout_seed, |h, &k| {
            crate::model::init::Rng(h ^ k).next_u64()
        });
        if let Some(l) = self.lora.as_mut() {
            l.dropout = (training && l.lora.dropout > 0.0).then_some(seed);
        }
    }

    /// Parameters that train: the model's, or with LoRA the adapter's.
    fn trainable_len(&self) -> usize {
        self.lora
            .as_ref()
            .map_or(self.layout.len(), |l| l.layout.len())
    }

    /// The LM head's trained copy in the adapter (`--lora-save lm_head`), if any.
    fn saved_head(&self) -> Option<usize> {
        self.lora.as_ref().and_then(|l| l.layout.lm_head)
    }

    /// Where the LM head's weights start: in the working copy (the model's, or a trained
    /// copy in the adapter) or in the frozen base.
    fn lm_head_offset(&self) -> usize {
        match (&self.frozen, self.saved_head()) {
            (Some(_), Some(off)) => off,
            (Some((_, l)), None) => l.lm_head,
            (None, _) => self.layout.lm_head,
        }
    }

    /// A view of the LM head's `len` weights at `off` ([`CudaEngine::lm_head_offset`]).
    fn lm_head(&self, off: usize, len: usize) -> ingot_kernels::launch::CudaView<'_, T> {
        match (&self.frozen, self.saved_head()) {
            (Some((buf, _)), None) => buf.owner.slice(off..off + len),
            _ => self.work.owner.slice(off..off + len),
        }
    }

    /// The working weights widened to f32, copied to the host (for tests: in bf16 mode they
    /// must equal the master weights rounded to bf16).
    pub fn working_weights(&self) -> Result<Vec<f32>> {
        let w = self.gpu.download(&self.work.owner)?;
        let n = self.trainable_len();
        Ok(w.into_iter().take(n).map(Storage::to_f32).collect())
    }

    /// Bytes that growing the arenas to `batch × seq` would allocate, and bytes of the arenas
    /// it would free first (each arena that grows is freed, then allocated anew).
    fn arena_growth(&self, batch: usize, seq: usize) -> (u64, u64) {
        let (need, need_f32) = arena_len(&self.config, batch, seq, self.lm_head_rows);
        let arenas = [
            (
                need,
                self.arena.as_ref().map(|a| a.owner.len()),
                size_of::<T>(),
            ),
            (need_f32, self.arena_f32.as_ref().map(|a| a.owner.len()), 4),
            (
                2 * batch * seq,
                self.arena_u32.as_ref().map(|a| a.owner.len()),
                4,
            ),
        ];
        let (mut alloc, mut freed) = (0, 0);
        for (need, have, bytes) in arenas {
            let have = have.unwrap_or(0);
            if need > have {
                alloc += (need * bytes) as u64;
                freed += (have * bytes) as u64;
            }
        }
        (alloc, freed)
    }

    /// Makes the activations of `batch × seq` current, growing the arenas (the only device
    /// allocations after `new`) when this shape needs more than any before.
    fn ensure_shape(&mut self, batch: usize, seq: usize) -> Result<()> {
        if self
            .shape
            .as_ref()
            .is_some_and(|s| s.batch == batch && s.seq == seq)
        {
            return Ok(());
        }
        self.shape = None;
        let (alloc, freed) = self.arena_growth(batch, seq);
        if alloc > 0 {
            fits(
                alloc,
                free_memory(&self.gpu)? + freed,
                &format!("cuda:{}", self.gpu.info.ordinal),
                &format!("the activations of a micro-batch of {batch} × {seq} tokens"),
                "lower --batch-size (raising --grad-accum keeps the tokens per step) or --seq-len",
            )?;
        }
        let stream = self.gpu.stream.clone();
        let c = &self.config;
        let n = batch * seq;
        let lm_rows = self.lm_head_rows;
        let (need, need_f32) = arena_len(c, batch, seq, lm_rows);
        if self.arena.as_ref().is_none_or(|a| a.owner.len() < need) {
            self.arena = None;
            self.arena = Some(DevBuf::from_slice(&stream, self.gpu.zeros::<T>(need)?)?);
        }
        if self
            .arena_f32
            .as_ref()
            .is_none_or(|a| a.owner.len() < need_f32)
        {
            self.arena_f32 = None;
            self.arena_f32 = Some(DevBuf::from_slice(
                &stream,
                self.gpu.zeros::<f32>(need_f32)?,
            )?);
        }
        if self
            .arena_u32
            .as_ref()
            .is_none_or(|a| a.owner.len() < 2 * n)
        {
            self.arena_u32 = None;
            self.arena_u32 = Some(DevBuf::from_slice(&stream, self.gpu.zeros::<u32>(2 * n)?)?);
        }
        if self.rope.as_ref().is_none_or(|r| r.0 < seq) {
            let (cos, sin) = self.gpu.rope_tables(seq, c.head_dim(), c.rope_theta)?;
            self.rope = Some((seq, cos, sin));
        }
        let (Some(arena), Some(arena_f32), Some(arena_u32)) =
            (&self.arena, &self.arena_f32, &self.arena_u32)
        else {
            bail!("activation arenas missing");
        };
        let (mut off, mut off_f32) = (0, 0);
        let acts = build_acts(
            c,
            batch,
            seq,
            lm_rows,
            &mut |len| {
                let a = arena.alias(&stream, off, len)?;
                off += round_up(len.max(1), ARENA_ALIGN);
                Ok(a)
            },
            &mut |len| {
                let a = arena_f32.alias(&stream, off_f32, len)?;
                off_f32 += round_up(len.max(1), ARENA_ALIGN);
                Ok(a)
            },
        )?;
        let tokens = arena_u32.alias(&stream, 0, n)?;
        let targets = arena_u32.alias(&stream, n, n)?;
        let v = c.vocab_size;
        let mut slabs = Vec::new();
        for r0 in (0..n).step_by(lm_rows) {
            let rows = lm_rows.min(n - r0);
            slabs.push(Slab {
                r0,
                rows,
                logits: acts.logits.sub(&stream, 0, rows * v)?,
                losses: acts.losses.sub(&stream, r0, rows)?,
                targets: targets.sub(&stream, r0, rows)?,
            });
        }
        self.shape = Some(Shape {
            batch,
            seq,
            acts,
            tokens,
            targets,
            slabs,
        });
        Ok(())
    }

    /// Forward pass up to the final norm (`hf`), as the CPU's `forward_trunk`. With `cached`
    /// (`batch` 1), the `seq` tokens are the next positions of the generated sequence: their
    /// keys and values go into its cache at row `past` and attention reads the whole cache
    /// (the caller advances `past`).
    fn forward_trunk(
        &mut self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
        cached: bool,
    ) -> Result<()> {
        self.ensure_shape(batch, seq)?;
        let c = &self.config;
        let (n, d, hd) = (batch * seq, c.dim, c.head_dim());
        let (nh, nkv) = (c.n_heads, c.n_kv_heads);
        let kvd = nkv * hd;
        let eps = c.rms_norm_eps as f32;
        let mma_attention = self.mma_attention;
        let gpu = &self.gpu;
        let stream = &gpu.stream;
        let pv = &self.wv;
        if let Some(l) = self.lora.as_mut() {
            l.ensure_rows(gpu, c, n)?;
        }
        let mut proj = Projections::new(
            gpu,
            &self.blas,
            c,
            &self.layout,
            &self.work,
            &self.frozen,
            self.lora.as_mut(),
        );
        let (Some(s), Some((_, cos, sin))) = (self.shape.as_mut(), self.rope.as_ref()) else {
            bail!("activations missing");
        };
        let sequence = match (cached, self.sequence.as_ref()) {
            (false, _) => None,
            (true, Some(sq)) if batch == 1 && sq.past + seq <= sq.capacity => Some(sq),
            (true, _) => bail!("no key/value cache for {seq} more positions"),
        };
        // The RoPE tables from the chunk's first position on (views of the sequence's).
        let tables = match sequence {
            Some(sq) => {
                let half = hd / 2;
                Some((
                    sq.cos.alias(stream, sq.past * half, seq * half)?,
                    sq.sin.alias(stream, sq.past * half, seq * half)?,
                ))
            }
            None => None,
        };
        let (cos, sin) = match &tables {
            Some((cos, sin)) => (&**cos, &**sin),
            None => (cos, sin),
        };
        gpu.upload_into(tokens, &mut s.tokens)?;
        let acts = &mut s.acts;
        let table = self.saved_embed.as_ref().map_or(&pv.embed, |(w, _)| w);
        gpu.embedding_forward(&mut *acts.blocks[0].x_in, table, &s.tokens, d)?;
        for i in 0..c.n_layers {
            let (done, rest) = acts.blocks.split_at_mut(i + 1);
            let b = &mut done[i];
            gpu.rmsnorm_forward(
                &mut *b.h1,
                &mut b.rstd1,
                &b.x_in,
                &pv.attn_norm[i],
                n,
                d,
                eps,
            )?;
            proj.forward(i, Target::QProj, &mut b.q, &b.h1, n)?;
            gpu.rope(&mut *b.q, cos, sin, batch, seq, nh, hd, false)?;
            if let Some(sq) = sequence {
                // The new keys and values are written straight into their cache rows (the
                // GEMMs' outputs are views of them), so nothing is copied afterwards.
                let mut k = sq.k[i].alias(stream, sq.past * kvd, n * kvd)?;
                let mut v = sq.v[i].alias(stream, sq.past * kvd, n * kvd)?;
                proj.forward(i, Target::KProj, &mut k, &b.h1, n)?;
                proj.forward(i, Target::VProj, &mut v, &b.h1, n)?;
                gpu.rope(&mut *k, cos, sin, batch, seq, nkv, hd, false)?;
                gpu.attention_decode(
                    &mut *b.att,
                    &b.q,
                    &sq.k[i].owner,
                    &sq.v[i].owner,
                    n,
                    sq.past,
                    sq.capacity,
                    nh,
                    nkv,
                    hd,
                )?;
            } else {
                proj.forward(i, Target::KProj, &mut b.k, &b.h1, n)?;
                proj.forward(i, Target::VProj, &mut b.v, &b.h1, n)?;
                gpu.rope(&mut *b.k, cos, sin, batch, seq, nkv, hd, false)?;
                let attention_forward = if mma_attention {
                    Gpu::attention_forward_mma::<T>
                } else {
                    Gpu::attention_forward::<T>
                };
                attention_forward(
                    gpu,
                    &mut *b.att,
                    &mut b.lse,
                    &b.q,
                    &b.k,
                    &b.v,
                    batch,
                    seq,
                    nh,
                    nkv,
                    hd,
                )?;
            }
            proj.forward(i, Target::OProj, &mut b.x_mid, &b.att, n)?;
            gpu.add_inplace(&mut *b.x_mid, &b.x_in)?;
            gpu.rmsnorm_forward(
                &mut *b.h2,
                &mut b.rstd2,
                &b.x_mid,
                &pv.mlp_norm[i],
                n,
                d,
                eps,
            )?;
            proj.forward(i, Target::GateProj, &mut b.g, &b.h2, n)?;
            proj.forward(i, Target::UpProj, &mut b.u, &b.h2, n)?;
            gpu.swiglu_forward(&mut *b.a, &b.g, &b.u)?;
            let out: &mut CudaSlice<T> = match rest.first_mut() {
                Some(next) => &mut next.x_in,
                None => &mut acts.x_out,
            };
            proj.forward(i, Target::DownProj, out, &b.a, n)?;
            gpu.add_inplace(out, &b.x_mid)?;
        }
        gpu.rmsnorm_forward(
            &mut *acts.hf,
            &mut acts.rstd_f,
            &acts.x_out,
            &pv.final_norm,
            n,
            d,
            eps,
        )?;
        Ok(())
    }

    /// Mean loss and, when `grad_scale` is given, gradients added into `grads`, as the CPU's
    /// `Model::forward_backward`.
    fn forward_backward_impl(&mut self, batch: &Batch, grad_scale: Option<f32>) -> Result<f32> {
        let (bsz, seq) = (batch.batch, batch.seq);
        if bsz == 0 {
            // No rows: no loss terms and no gradient (the CPU engine returns 0 / 1 too).
            return Ok(0.0);
        }
        self.forward_trunk(batch.tokens, bsz, seq, false)?;
        // Next-token targets: position t of a row predicts token t+1; the last predicts nothing.
        let mut targets = std::mem::take(&mut self.host_targets);
        targets.clear();
        targets.resize(bsz * seq, u32::MAX);
        for b in 0..bsz {
            for t in 0..seq - 1 {
                targets[b * seq + t] = batch.tokens[b * seq + t + 1];
            }
        }
        let (d, v) = (self.config.dim, self.config.vocab_size);
        let count = batch.predictions().max(1) as f32;
        let scale = grad_scale.unwrap_or(0.0) / count;
        let (gpu, blas) = (&self.gpu, &self.blas);
        // The head's weights: the working copy's, or the frozen base's (LoRA: no gradient).
        // (`--lora-save lm_head`: a trained copy in the adapter, whose gradient it gets.)
        let saved_head = self.lora.as_ref().and_then(|l| l.layout.lm_head);
        let (p, lm, head_trains) = match (&self.frozen, saved_head) {
            (Some(_), Some(off)) => (&self.work.owner, off, true),
            (Some((buf, l)), None) => (&buf.owner, l.lm_head, false),
            (None, _) => (&self.work.owner, self.layout.lm_head, true),
        };
        let grads = &mut self.grads.owner;
        let Some(s) = self.shape.as_mut() else {
            bail!("activations missing");
        };
        let uploaded = gpu.upload_into(&targets, &mut s.targets);
        self.host_targets = targets;
        uploaded?;
        let acts = &mut s.acts;
        let w_lm = p.slice(lm..lm + v * d);
        for slab in s.slabs.iter_mut() {
            let (r0, rows) = (slab.r0, slab.rows);
            let hf = acts.hf.slice(r0 * d..(r0 + rows) * d);
            blas.linear_forward::<T, T>(&mut *slab.logits, &hf, &w_lm, rows, d, v)?;
            gpu.cross_entropy(
                &mut *slab.logits,
                &mut slab.losses,
                &slab.targets,
                rows,
                v,
                scale,
                grad_scale.is_some(),
            )?;
            if grad_scale.is_some() {
                let mut dh = acts.dh.slice_mut(r0 * d..(r0 + rows) * d);
                blas.linear_backward_dx::<T, T>(&mut dh, &*slab.logits, &w_lm, rows, d, v)?;
                if head_trains {
                    let mut dw = grads.slice_mut(lm..lm + v * d);
                    blas.linear_backward_dw::<T>(&mut dw, &*slab.logits, &hf, rows, d, v, true)?;
                }
            }
        }
        gpu.cross_entropy_sum(&mut acts.loss_sum, &acts.losses)?;
        if grad_scale.is_some() {
            self.backward_trunk(bsz, seq)?;
        }
        let Some(s) = self.shape.as_ref() else {
            bail!("activations missing");
        };
        let sum = self.gpu.download(&s.acts.loss_sum)?;
        Ok(sum[0] / count)
    }

    /// Backward from `dh` (gradient w.r.t. the final norm's output) to every parameter, as
    /// the CPU's `backward_trunk`.
    fn backward_trunk(&mut self, batch: usize, seq: usize) -> Result<()> {
        let c = &self.config;
        let (n, d, hd) = (batch * seq, c.dim, c.head_dim());
        let (nh, nkv) = (c.n_heads, c.n_kv_heads);
        let mma_attention = self.mma_attention;
        let gpu = &self.gpu;
        let g = &mut self.grads.owner;
        let (pv, gv) = (&self.wv, &mut self.gv);
        // With LoRA the norms are frozen: their gradients go to a scratch buffer, dropped.
        let mut dnorm = self.dnorm.as_mut();
        let mut proj = Projections::new(
            gpu,
            &self.blas,
            c,
            &self.layout,
            &self.work,
            &self.frozen,
            self.lora.as_mut(),
        );
        let (Some(s), Some((_, cos, sin))) = (self.shape.as_mut(), self.rope.as_ref()) else {
            bail!("activations missing");
        };
        let a = &mut s.acts;

        gpu.rmsnorm_backward(
            &mut *a.dx,
            norm_grad(
                gv.as_mut().map(|v| &mut *v.final_norm),
                dnorm.as_deref_mut(),
            )?,
            &a.dh,
            &a.x_out,
            &pv.final_norm,
            &a.rstd_f,
            n,
            d,
        )?;
        for i in (0..c.n_layers).rev() {
            let b = &a.blocks[i];
            // a.dx: gradient w.r.t. this block's output = x_mid + mlp(x_mid).
            proj.backward(i, Target::DownProj, &mut a.da, g, &a.dx, &b.a, n)?;
            gpu.swiglu_backward(&mut *a.dg, &mut *a.du, &a.da, &b.g, &b.u)?;
            proj.backward(i, Target::GateProj, &mut a.dh, g, &a.dg, &b.h2, n)?;
            proj.backward(i, Target::UpProj, &mut a.dh_tmp, g, &a.du, &b.h2, n)?;
            gpu.add_inplace(&mut *a.dh, &a.dh_tmp)?;
            gpu.rmsnorm_backward(
                &mut *a.dx2,
                norm_grad(
                    gv.as_mut().map(|v| &mut *v.mlp_norm[i]),
                    dnorm.as_deref_mut(),
                )?,
                &a.dh,
                &b.x_mid,
                &pv.mlp_norm[i],
                &b.rstd2,
                n,
                d,
            )?;
            gpu.add_inplace(&mut *a.dx2, &a.dx)?; // a.dx2: gradient w.r.t. x_mid
            proj.backward(i, Target::OProj, &mut a.datt, g, &a.dx2, &b.att, n)?;
            let attention_backward = if mma_attention {
                Gpu::attention_backward_mma::<T>
            } else {
                Gpu::attention_backward::<T>
            };
            attention_backward(
                gpu,
                &mut *a.dq,
                &mut *a.dk,
                &mut *a.dv,
                &mut a.delta,
                &a.datt,
                &b.att,
                &b.lse,
                &b.q,
                &b.k,
                &b.v,
                batch,
                seq,
                nh,
                nkv,
                hd,
            )?;
            gpu.rope(&mut *a.dq, cos, sin, batch, seq, nh, hd, true)?;
            gpu.rope(&mut *a.dk, cos, sin, batch, seq, nkv, hd, true)?;
            proj.backward(i, Target::QProj, &mut a.dh, g, &a.dq, &b.h1, n)?;
            proj.backward(i, Target::KProj, &mut a.dh_tmp, g, &a.dk, &b.h1, n)?;
            gpu.add_inplace(&mut *a.dh, &a.dh_tmp)?;
            proj.backward(i, Target::VProj, &mut a.dh_tmp, g, &a.dv, &b.h1, n)?;
            gpu.add_inplace(&mut *a.dh, &a.dh_tmp)?;
            gpu.rmsnorm_backward(
                &mut *a.dx,
                norm_grad(
                    gv.as_mut().map(|v| &mut *v.attn_norm[i]),
                    dnorm.as_deref_mut(),
                )?,
                &a.dh,
                &b.x_in,
                &pv.attn_norm[i],
                &b.rstd1,
                n,
                d,
            )?;
            gpu.add_inplace(&mut *a.dx, &a.dx2)?; // a.dx: gradient w.r.t. x_in
        }
        if let Some(gv) = gv.as_mut() {
            gpu.embedding_backward(&mut gv.embed, &a.dx, &s.tokens, d)?;
        }
        if let Some((_, dtable)) = self.saved_embed.as_mut() {
            gpu.embedding_backward(dtable, &a.dx, &s.tokens, d)?;
        }
        Ok(())
    }

    /// Sums the gradients over the ranks (under ZeRO-1 into this rank's shard) and returns
    /// the global norm of their mean; with one process, the norm of the gradients.
    fn reduce_grads(&mut self) -> Result<f32> {
        let world = self.ranks.world();
        let Some(nccl) = self.ranks.nccl.as_mut() else {
            return self.norm_of_grads();
        };
        let Some(shard) = self.grad_shard.as_mut() else {
            nccl.all_reduce_sum_in_place(&mut self.grads.owner)?;
            return Ok(self.norm_of_grads()? / world as f32);
        };
        nccl.reduce_scatter_sum(&self.grads.owner, shard)?;
        let local = f64::from(self.norm_of_grads()?);
        let mut squares = [local * local];
        self.ranks.nccl()?.all_reduce_sum_f64(&mut squares)?;
        Ok((squares[0].sqrt() / world as f64) as f32)
    }

    /// The norm of the gradient buffer AdamW reads (this rank's shard under ZeRO-1).
    fn norm_of_grads(&mut self) -> Result<f32> {
        let grads = self.grad_shard.as_ref().unwrap_or(&self.grads.owner);
        // The norm only (clip 0): the clip scale is computed in `step` exactly as the CPU's.
        self.gpu
            .grad_norm(&mut self.norm_out, &mut self.norm_partials, grads, 0.0)?;
        Ok(self.gpu.download(&self.norm_out)?[0])
    }

    /// Every rank's shard of a flat buffer, gathered into the whole (this rank's `local`
    /// unchanged without ZeRO-1).
    fn gather(&mut self, local: Vec<f32>) -> Result<Vec<f32>> {
        match self.ranks.zero {
            Some(z) => gather_shards(self.ranks.nccl()?, z, &local),
            None => Ok(local),
        }
    }

    fn zero_grads(&mut self) -> Result<()> {
        let stream = self.gpu.stream.clone();
        let grads = &mut self.grads.owner;
        guarded("zeroing the gradients", || stream.memset_zeros(grads))?
            .map_err(|e| anyhow!("zeroing the gradients: {e:?}"))
    }
}

impl<T: Precision> Engine for CudaEngine<T> {
    fn name(&self) -> String {
        let attention = if self.mma_attention {
            "tensor-core attention"
        } else {
            "warp-per-row attention"
        };
        format!(
            "cuda:{} ({}, {}, {attention})",
            self.gpu.info.ordinal,
            self.gpu.info.name,
            dtype_name::<T>()
        )
    }

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn forward_backward(&mut self, batch: &Batch, grad_scale: f32) -> Result<f32> {
        batch.check(self.config.vocab_size)?;
        self.dropout_for(true);
        self.micro += 1;
        self.forward_backward_impl(batch, Some(grad_scale))
    }

    fn loss(&mut self, batch: &Batch) -> Result<f32> {
        batch.check(self.config.vocab_size)?;
        self.dropout_for(false);
        self.forward_backward_impl(batch, None)
    }

    fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.dropout_for(false);
        Batch {
            tokens,
            batch: 1,
            seq: tokens.len(),
        }
        .check(self.config.vocab_size)?;
        let seq = tokens.len();
        self.forward_trunk(tokens, 1, seq, false)?;
        let (d, v) = (self.config.dim, self.config.vocab_size);
        let lm = self.lm_head_offset();
        let Some(s) = self.shape.as_ref() else {
            bail!("activations missing");
        };
        // Evaluation only: a buffer of its own for the whole [seq, vocab], in f32 whatever
        // the storage type (cuBLASLt writes f32 from bf16 inputs directly).
        let mut out = self.gpu.zeros::<f32>(seq * v)?;
        let w_lm = self.lm_head(lm, v * d);
        self.blas
            .linear_forward::<T, f32>(&mut out, &*s.acts.hf, &w_lm, seq, d, v)?;
        Ok(self.gpu.download(&out)?)
    }

    /// Starts a new sequence decoded with a key/value cache of `capacity` positions
    /// (1 ≤ capacity ≤ the model's `max_seq_len`, else a one-line error), dropping any
    /// previous one. Allocates per layer a key and a value cache `[capacity, n_kv_heads *
    /// head_dim]` in `T` and RoPE tables for `capacity` positions; changing the weights
    /// (`set_params`, `step`) ends the sequence, since its cache was computed with the old ones.
    fn begin_sequence(&mut self, capacity: usize) -> Result<()> {
        if self.lora.is_some() {
            bail!("generation with a LoRA adapter is not supported: merge the adapter first (train merge)");
        }
        super::check_capacity(&self.config, capacity)?;
        let c = &self.config;
        let elem = size_of::<T>();
        let freed = self
            .sequence
            .as_ref()
            .map_or(0, |sq| sequence_bytes(c, sq.capacity, elem));
        fits(
            sequence_bytes(c, capacity, elem),
            free_memory(&self.gpu)? + freed,
            &format!("cuda:{}", self.gpu.info.ordinal),
            &format!("the key/value cache of {capacity} positions"),
            "generate fewer tokens or use a shorter prompt",
        )?;
        self.sequence = None;
        let stream = self.gpu.stream.clone();
        let kvd = c.n_kv_heads * c.head_dim();
        let cache = || -> Result<Vec<DevBuf<T>>> {
            (0..c.n_layers)
                .map(|_| DevBuf::from_slice(&stream, self.gpu.zeros::<T>(capacity * kvd)?))
                .collect()
        };
        let (k, v) = (cache()?, cache()?);
        let (cos, sin) = self.gpu.rope_tables(capacity, c.head_dim(), c.rope_theta)?;
        self.sequence = Some(Sequence {
            capacity,
            past: 0,
            k,
            v,
            cos: DevBuf::from_slice(&stream, cos)?,
            sin: DevBuf::from_slice(&stream, sin)?,
            logits: self.gpu.zeros::<f32>(c.vocab_size)?,
        });
        Ok(())
    }

    /// Runs `tokens` (a whole prompt in one batched pass, or one new token) at the next
    /// positions of the cached sequence, appending their keys and values to the cache, and
    /// returns the f32 logits `[vocab]` of the last of them: the same as the last row of
    /// [`Engine::logits`] over the whole sequence so far, within the storage type's rounding.
    /// Errors (one line): no sequence begun, empty `tokens`, an id outside the vocabulary, or
    /// more positions than the capacity; after one the sequence is as it was.
    fn extend_sequence(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let Some(sq) = self.sequence.as_ref() else {
            // Also after a weight change, which ends the sequence.
            bail!("no sequence to extend: begin one first");
        };
        super::check_extension(&self.config, tokens, sq.past, sq.capacity)?;
        let (n, v) = (tokens.len(), self.config.vocab_size);
        self.forward_trunk(tokens, 1, n, true)?;
        let d = self.config.dim;
        let lm = self.layout.lm_head;
        let (Some(s), Some(sq)) = (self.shape.as_ref(), self.sequence.as_mut()) else {
            bail!("activations missing");
        };
        // The LM head of the last row only: one row × vocab, in f32 as in `logits`.
        let last = s.acts.hf.slice((n - 1) * d..n * d);
        // LoRA refuses sequences, so the head is the working copy's.
        let w_lm = self.work.owner.slice(lm..lm + v * d);
        self.blas
            .linear_forward::<T, f32>(&mut sq.logits, &last, &w_lm, 1, d, v)?;
        let logits = self.gpu.download(&sq.logits)?;
        sq.past += n;
        Ok(logits)
    }

    fn step(&mut self, opt: &AdamW, lr: f32, grad_clip: Option<f32>) -> Result<f32> {
        let norm = self.reduce_grads()?;
        if !norm.is_finite() {
            self.zero_grads()?;
            bail!("the gradient norm is {norm}; the step was not applied (try a lower --lr or a --grad-clip)");
        }
        // As torch.nn.utils.clip_grad_norm_: scale by clip / (norm + 1e-6) when that is below 1.
        let scale = match grad_clip {
            Some(clip) => (clip / (norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        // The gradients are summed over the ranks: AdamW takes their mean.
        let scale = scale / self.ranks.world() as f32;
        self.gpu.upload_into(&[scale], &mut self.clip_scale)?;
        // The weights change: the cache holds keys and values of the old ones.
        self.sequence = None;
        self.step += 1;
        self.micro = 0;
        let hyper = AdamWHyper {
            beta1: opt.beta1,
            beta2: opt.beta2,
            eps: opt.eps,
            weight_decay: opt.weight_decay,
        };
        let scale_view = self.clip_scale.slice(0..1);
        let stream = self.gpu.stream.clone();
        // Under ZeRO-1 the update covers this rank's shard, then the ranks gather the
        // working weights.
        let (mut work_shard, grads) = match (self.ranks.zero, &self.grad_shard) {
            (Some(z), Some(g)) => (
                Some(
                    self.work
                        .alias(&stream, self.ranks.rank() * z.shard, z.shard)?,
                ),
                g,
            ),
            _ => (None, &self.grads.owner),
        };
        let work = match work_shard.as_mut() {
            Some(w) => &mut **w,
            None => &mut self.work.owner,
        };
        self.gpu.adamw_step::<T>(
            &mut self.master,
            Some(work),
            grads,
            &mut self.exp_avg,
            &mut self.exp_avg_sq,
            &self.decay,
            Some(&scale_view),
            &hyper,
            lr,
            self.step,
        )?;
        drop(work_shard);
        if self.ranks.zero.is_some() {
            self.ranks
                .nccl()?
                .all_gather_in_place(&mut self.work.owner)?;
        }
        self.zero_grads()?;
        Ok(norm)
    }

    /// The f32 master weights (under ZeRO-1 gathered from every rank's shard).
    fn params(&mut self) -> Result<Vec<f32>> {
        let local = self
            .gpu
            .download(&self.master)
            .map_err(|e| anyhow::anyhow!("copying the parameters from the GPU failed: {e}"))?;
        self.gather(local)
    }

    fn set_params(&mut self, params: &[f32]) -> Result<()> {
        if params.len() != self.trainable_len() {
            bail!(
                "{} parameters given, the model has {}",
                params.len(),
                self.trainable_len()
            );
        }
        // The cache holds keys and values of the old weights.
        self.sequence = None;
        let (owned, shard, padded) = self.ranks.lengths(params.len());
        let n = params.len();
        self.gpu
            .upload_into(&padded_part(params, owned, shard), &mut self.master)?;
        let work = to_storage::<T>(params);
        self.gpu
            .upload_into(&padded_part(&work, 0..n, padded), &mut self.work.owner)?;
        Ok(())
    }

    fn collective(&mut self) -> &mut dyn Collective {
        match self.ranks.nccl.as_mut() {
            Some(c) => c,
            None => &mut self.ranks.solo,
        }
    }

    fn optimizer_state(&mut self) -> Result<OptimizerState> {
        let get = |s: &CudaSlice<f32>| {
            self.gpu.download(s).map_err(|e| {
                anyhow::anyhow!("copying the optimizer state from the GPU failed: {e}")
            })
        };
        let (exp_avg, exp_avg_sq) = (get(&self.exp_avg)?, get(&self.exp_avg_sq)?);
        Ok(OptimizerState {
            step: self.step,
            exp_avg: self.gather(exp_avg)?,
            exp_avg_sq: self.gather(exp_avg_sq)?,
        })
    }

    fn attention_kernels(&self) -> Option<AttentionKernels> {
        Some(if self.mma_attention {
            AttentionKernels::Mma
        } else {
            AttentionKernels::Simt
        })
    }

    /// Allocates the activations of micro-batches of `batch × seq` tokens now (the largest the
    /// run uses), so that a run that does not fit is refused before it starts.
    fn prepare(&mut self, batch: usize, seq: usize) -> Result<()> {
        self.ensure_shape(batch, seq)?;
        match self.lora.as_mut() {
            Some(l) => l.ensure_rows(&self.gpu, &self.config, batch * seq),
            None => Ok(()),
        }
    }

    /// Device memory in use on this engine's GPU (`total − free` from the driver, so all of
    /// the device's processes and the CUDA context count). A warm step allocates nothing, so
    /// after the first step this is the run's peak. `None` if the driver cannot say.
    fn device_memory_used(&self) -> Option<u64> {
        let info = guarded("reading the device memory", || {
            self.gpu.stream.context().mem_get_info()
        });
        match info {
            Ok(Ok((free, total))) => Some(total.saturating_sub(free) as u64),
            _ => None,
        }
    }

    fn set_optimizer_state(&mut self, state: OptimizerState) -> Result<()> {
        let n = self.trainable_len();
        if state.exp_avg.len() != n || state.exp_avg_sq.len() != n {
            bail!(
                "optimizer state holds {} values, the model has {n} parameters",
                state.exp_avg.len()
            );
        }
        let (owned, shard, _) = self.ranks.lengths(n);
        let part = |v: &[f32]| padded_part(v, owned.clone(), shard);
        self.gpu
            .upload_into(&part(&state.exp_avg), &mut self.exp_avg)?;
        self.gpu
            .upload_into(&part(&state.exp_avg_sq), &mut self.exp_avg_sq)?;
        self.step = state.step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_covers_every_buffer_aligned() {
        let c = ModelConfig::preset("tiny", 259).unwrap();
        for (b, t) in [(1, 1), (3, 40), (8, 100)] {
            let (mut lens, mut lens_f32) = (Vec::new(), Vec::new());
            build_acts(
                &c,
                b,
                t,
                256,
                &mut |len| {
                    lens.push(len);
                    Ok(())
                },
                &mut |len| {
                    lens_f32.push(len);
                    Ok(())
                },
            )
            .unwrap();
            // Storage-type buffers: 11 per block and 14 outside; f32 statistics: 3 per block
            // (rstd1, lse, rstd2) and 4 outside (rstd_f, losses, loss_sum, delta).
            assert_eq!(lens.len(), 11 * c.n_layers + 14);
            assert_eq!(lens_f32.len(), 3 * c.n_layers + 4);
            let (total, total_f32) = arena_len(&c, b, t, 256);
            for (total, lens) in [(total, &lens), (total_f32, &lens_f32)] {
                let raw: usize = lens.iter().sum();
                assert!(total >= raw && total.is_multiple_of(ARENA_ALIGN));
                assert!(total <= raw + lens.len() * ARENA_ALIGN);
            }
        }
        // A smaller shape fits in a larger one's arenas.
        let (small, big) = (arena_len(&c, 2, 30, 256), arena_len(&c, 3, 40, 256));
        assert!(small.0 <= big.0 && small.1 <= big.1);
    }

    #[test]
    fn the_attention_option_picks_the_kernels() {
        use AttentionKernels::*;
        assert!(choose_attention(Auto, true).unwrap());
        assert!(!choose_attention(Auto, false).unwrap());
        assert!(!choose_attention(Simt, true).unwrap());
        assert!(choose_attention(Mma, true).unwrap());
        let msg = choose_attention(Mma, false).unwrap_err().to_string();
        assert!(msg.contains("compute capability 8.0"), "{msg}");
        assert!(msg.contains("--attention auto or simt"), "{msg}");
    }

    #[test]
    fn memory_refusals_are_one_line_with_advice() {
        assert!(fits(1 << 30, 2 << 30, "cuda:0", "x", "y").is_ok());
        let msg = fits(
            3 << 30,
            1 << 30,
            "cuda:1",
            "the activations",
            "lower --batch-size",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            msg,
            "the activations need 3.00 GiB of GPU memory but 1.00 GiB is free on cuda:1; lower --batch-size"
        );
    }

    #[test]
    fn lm_head_slabs_are_bounded() {
        // GPT-2's vocabulary: 2,670 rows of bf16 or 1,335 of f32 in 256 MiB.
        assert_eq!(lm_head_rows(50_257, 2), 2_670);
        assert_eq!(lm_head_rows(50_257, 4), 1_335);
        assert!(lm_head_rows(50_257, 2) * 50_257 * 2 <= LM_HEAD_SLAB_BYTES);
        // A huge vocabulary still gets enough rows for the GEMMs; a tiny one, many.
        assert_eq!(lm_head_rows(10_000_000, 4), LM_HEAD_MIN_ROWS);
        assert!(lm_head_rows(300, 2) > 100_000);
    }

    #[test]
    fn new_without_a_gpu_is_one_line() {
        let c = ModelConfig::preset("tiny", 259).unwrap();
        let params = crate::model::init::init_params(&c, &Layout::new(&c), 0);
        match CudaEngine::<Bf16>::new(0, c, params) {
            Ok(e) => println!("GPU present: {}", e.name()),
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(!msg.contains('\n'), "{msg}");
                println!("CudaEngine::new (no GPU expected here): {msg}");
            }
        }
    }
}
