//! A small CUDA context that compiles every kernel unit for the device and launches them.
//!
//! [`Gpu::new`] probes the device first ([`crate::probe::cuda_device`]), so a machine without
//! a driver or a device gets a one-line [`Error`] instead of a cudarc panic; every later cudarc
//! call is additionally wrapped in `catch_unwind`. It then compiles each unit of
//! [`crate::UNITS`] with [`crate::nvrtc::compile`] (on-disk cache) for the device's `sm_XY`,
//! loads each CUBIN as a module and looks up every listed kernel.
//!
//! The launchers are typed: storage tensors are `CudaSlice<T>` with `T:` [`Storage`] (`f32`,
//! or [`Bf16`], bfloat16 kept as its raw bits), parameter gradients, optimizer state and
//! softmax statistics are always `CudaSlice<f32>`. Each launcher names the kernel it runs and
//! its launch shape, checks the shapes on the host (buffer lengths, `u32` ranges, the kernels'
//! documented limits) and enqueues on the context's single stream; nothing synchronises
//! until a download ([`Gpu::download`]) or [`Gpu::synchronize`].
//!
//! Shapes follow the CPU reference ops in `train/src/engine/cpu/ops/` exactly; see the comment
//! at the top of each `kernels/cuda/*.cu` file for the math.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, LaunchArgs, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

pub use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, ValidAsZeroBits,
};

use crate::nvrtc;
use crate::probe::{self, DeviceInfo, ProbeError};

/// Threads per block of the elementwise (grid-stride) kernels.
pub const ELEMENTWISE_BLOCK: u32 = 256;
/// Upper bound on the blocks of a grid-stride launch (the loop covers the rest).
pub const MAX_GRID_STRIDE_BLOCKS: u32 = 1 << 16;
/// Most threads per block of the block-per-row kernels (RMSNorm, cross-entropy) and of the
/// single-block reductions. 512 rather than the 1024 the block reductions allow, so a kernel
/// never needs more than 128 registers per thread to launch.
pub const ROW_BLOCK: u32 = 512;
/// Threads per block of the one-warp-per-row attention kernels (4 warps).
pub const ATTENTION_BLOCK: u32 = 128;
/// Largest head dimension the attention kernels support (`INGOT_ATTN_MAX_HD`).
pub const ATTENTION_MAX_HD: usize = 256;
/// Head dims of the tensor-core attention forward (one entry point each).
pub const ATTENTION_MMA_HEAD_DIMS: [usize; 2] = [64, 128];
/// Query (or key) rows per block of the tensor-core attention kernels (`INGOT_MMA_BQ`).
pub const ATTENTION_MMA_ROWS: u32 = 64;
/// Threads per block of the tensor-core attention kernels: exactly 4 warps of 16 rows each
/// (the kernels assume it; `__launch_bounds__(128)`).
pub const ATTENTION_MMA_BLOCK: u32 = 128;
/// Compute capability from which the tensor-core attention kernels run (bf16 `mma.sync`).
pub const ATTENTION_MMA_MIN_MAJOR: i32 = 8;
/// Elements per block of `grad_norm_partials` (a fixed chunk, so the sum order is fixed).
pub const GRAD_NORM_CHUNK: u32 = 1 << 14;
/// Target value of an ignored cross-entropy row (`INGOT_IGNORE_TARGET`).
pub const IGNORE_TARGET: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Probe(#[from] ProbeError),
    #[error("{0}")]
    Nvrtc(#[from] nvrtc::Error),
    #[error("CUDA driver call {call} failed: {message}")]
    Driver { call: &'static str, message: String },
    #[error("kernel {0} is listed in UNITS but missing from its module")]
    MissingKernel(String),
    #[error("invalid launch: {0}")]
    Invalid(String),
}

/// Runs `f` (cudarc calls), turning a `DriverError` or a panic into [`Error::Driver`].
fn guarded<T>(
    call: &'static str,
    f: impl FnOnce() -> Result<T, cudarc::driver::DriverError>,
) -> Result<T, Error> {
    match crate::guard::catch(f) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::Driver {
            call,
            message: format!("{e:?}").replace('\n', " "),
        }),
        Err(message) => Err(Error::Driver { call, message }),
    }
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error::Invalid(msg.into()))
}

fn to_u32(what: &str, v: usize) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::Invalid(format!("{what} = {v} does not fit in u32")))
}

fn check_len(what: &str, got: usize, want: usize) -> Result<(), Error> {
    if got == want {
        Ok(())
    } else {
        invalid(format!("{what}: {got} elements, expected {want}"))
    }
}

/// A storage element type of the kernels: `f32`, or [`Bf16`]. `SUFFIX` picks the entry point
/// (`rmsnorm_forward_f32` / `rmsnorm_forward_bf16`).
pub trait Storage:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + Unpin + 'static
{
    /// Entry point suffix: `f32` or `bf16`.
    const SUFFIX: &'static str;
    /// A quiet NaN (to poison buffers in tests).
    const NAN: Self;
    /// Rounds to nearest, ties to even (the device's `f32_to_bf16`).
    fn from_f32(x: f32) -> Self;
    /// Exact widening.
    fn to_f32(self) -> f32;
}

impl Storage for f32 {
    const SUFFIX: &'static str = "f32";
    const NAN: Self = f32::NAN;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

/// bfloat16 as its raw bits (the upper half of an IEEE f32), the layout of `struct bf16` in
/// `common.cuh`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Bf16(pub u16);

// SAFETY: a plain 16-bit integer, the same layout as the device's `struct bf16`.
unsafe impl DeviceRepr for Bf16 {}
// SAFETY: all-zero bits are +0.0.
unsafe impl ValidAsZeroBits for Bf16 {}

impl Storage for Bf16 {
    const SUFFIX: &'static str = "bf16";
    const NAN: Self = Bf16(0x7fc0);
    /// Same rounding as the device's `f32_to_bf16`: nearest even, NaN stays a quiet NaN.
    fn from_f32(x: f32) -> Self {
        let u = x.to_bits();
        if u & 0x7fff_ffff > 0x7f80_0000 {
            return Bf16(((u >> 16) as u16) | 0x0040);
        }
        let rounded = u.wrapping_add(0x7fff + ((u >> 16) & 1));
        Bf16((rounded >> 16) as u16)
    }
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }
}

/// Learning-rate-independent AdamW hyper-parameters (the fields of `train`'s `AdamW`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWHyper {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// Grid of a grid-stride launch over `n` elements: `ceil(n / 256)` blocks of 256 threads,
/// capped at [`MAX_GRID_STRIDE_BLOCKS`] (at least one block).
fn grid_stride(n: u64) -> LaunchConfig {
    let blocks = n
        .div_ceil(u64::from(ELEMENTWISE_BLOCK))
        .clamp(1, u64::from(MAX_GRID_STRIDE_BLOCKS)) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEMENTWISE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per column: `ceil(d / 256)` blocks of 256 threads.
///
/// This does NOT fill the GPU: at d = 768 (the 124M model) it starts 3 blocks on a 132-SM
/// H200, each thread walking all B*T rows (16,384 at T = 1024, batch 16). It is what keeps the
/// RMSNorm weight gradient and the embedding gradient in the CPU's row order with no atomics
/// (bit for bit the same sum). Filling the SMs needs a deterministic two-pass split (partial
/// sums over fixed row chunks, then a fixed-order sum of the partials); not done yet.
fn per_column(d: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (d.div_ceil(ELEMENTWISE_BLOCK).max(1), 1, 1),
        block_dim: (ELEMENTWISE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row: `rows` blocks of `min(round_up(width, 32), max_threads)` threads (a
/// multiple of 32, as the block reductions require).
fn per_row(rows: u32, width: u32, max_threads: u32) -> LaunchConfig {
    let threads = width
        .div_ceil(32)
        .max(1)
        .saturating_mul(32)
        .min(max_threads);
    LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per row: `ceil(rows * 32 / 128)` blocks of [`ATTENTION_BLOCK`] threads.
fn per_warp(rows: u64) -> Result<LaunchConfig, Error> {
    let blocks = (rows * 32).div_ceil(u64::from(ATTENTION_BLOCK));
    let blocks = u32::try_from(blocks.max(1))
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| Error::Invalid(format!("{rows} attention rows: grid too large")))?;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ATTENTION_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The bytes one kernel argument takes in the kernel's parameter list: a device pointer for a
/// buffer or a view, the value's size for a scalar.
pub trait ArgBytes {
    const BYTES: usize;
}

impl<T> ArgBytes for &CudaSlice<T> {
    const BYTES: usize = 8;
}
impl<T> ArgBytes for &mut CudaSlice<T> {
    const BYTES: usize = 8;
}
impl<T> ArgBytes for &CudaView<'_, T> {
    const BYTES: usize = 8;
}
impl<T> ArgBytes for &mut CudaViewMut<'_, T> {
    const BYTES: usize = 8;
}
macro_rules! scalar_arg_bytes {
    ($($t:ty),*) => { $(impl ArgBytes for &$t { const BYTES: usize = std::mem::size_of::<$t>(); })* };
}
scalar_arg_bytes!(u32, i32, u64, f32, f64);

/// A kernel's argument list as a launcher builds it: cudarc's builder, and the size of each
/// argument, checked against the kernel's own parameter list before the launch (the driver
/// reads as many parameters as the kernel has, whatever was passed).
pub struct Args<'a, 'b> {
    builder: &'b mut LaunchArgs<'a>,
    sizes: Vec<usize>,
}

impl<'a> Args<'a, '_> {
    pub fn arg<A: ArgBytes>(&mut self, a: A) -> &mut Self
    where
        LaunchArgs<'a>: PushKernelArg<A>,
    {
        self.sizes.push(A::BYTES);
        self.builder.arg(a);
        self
    }
}

/// The parameter sizes of `f` from `cuFuncGetParamInfo` (CUDA 12.4 and later), or `None` where
/// the driver cannot say.
fn param_sizes(f: &CudaFunction) -> Option<Vec<usize>> {
    let cu = f.cu_function();
    crate::guard::catch(|| {
        let mut sizes = Vec::new();
        for index in 0..=256 {
            let (mut offset, mut size) = (0usize, 0usize);
            // SAFETY: `cu` is a loaded function; two valid out-pointers.
            let r = unsafe {
                cudarc::driver::sys::cuFuncGetParamInfo(cu, index, &mut offset, &mut size)
            };
            match r {
                cudarc::driver::sys::CUresult::CUDA_SUCCESS => sizes.push(size),
                // One past the last parameter.
                cudarc::driver::sys::CUresult::CUDA_ERROR_INVALID_VALUE => return Some(sizes),
                _ => return None,
            }
        }
        None
    })
    .ok()
    .flatten()
}

/// The device, its compiled kernels and one stream.
pub struct Gpu {
    /// What the probe found (name, `sm_XY`, memory, driver version).
    pub info: DeviceInfo,
    pub ctx: Arc<CudaContext>,
    /// Every launch and copy runs on this stream, in order.
    pub stream: Arc<CudaStream>,
    _modules: Vec<Arc<CudaModule>>,
    /// Each kernel and its parameter sizes (when the driver reports them).
    functions: HashMap<&'static str, (CudaFunction, Option<Vec<usize>>)>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("info", &self.info)
            .field("kernels", &self.functions.len())
            .finish()
    }
}

impl Gpu {
    /// Probes device `ordinal`, creates its (primary) context, compiles every unit for the
    /// device's architecture (through the CUBIN cache) and loads every kernel. Never panics:
    /// no driver, no device, no NVRTC or a failed compile are all [`Error`]s.
    pub fn new(ordinal: usize) -> Result<Gpu, Error> {
        let info = probe::cuda_device(ordinal)?;
        let arch = info.arch();
        let ctx = guarded("cuCtxCreate (CudaContext::new)", || {
            CudaContext::new(ordinal)
        })?;
        let stream = guarded("default_stream", || Ok(ctx.default_stream()))?;
        let mut modules = Vec::new();
        let mut functions = HashMap::new();
        for unit in crate::UNITS {
            let cubin = nvrtc::compile(unit.name, unit.source, &arch)?;
            let module = guarded("cuModuleLoadData", || {
                ctx.load_module(Ptx::from_binary(cubin))
            })?;
            for &k in unit.kernels {
                let f = guarded("cuModuleGetFunction", || module.load_function(k))
                    .map_err(|e| Error::MissingKernel(format!("{k} ({e})")))?;
                let sizes = param_sizes(&f);
                functions.insert(k, (f, sizes));
            }
            modules.push(module);
        }
        Ok(Gpu {
            info,
            ctx,
            stream,
            _modules: modules,
            functions,
        })
    }

    /// The loaded kernel `name` (one of the names in [`crate::UNITS`]).
    pub fn function(&self, name: &str) -> Result<&CudaFunction, Error> {
        self.functions
            .get(name)
            .map(|(f, _)| f)
            .ok_or_else(|| Error::MissingKernel(name.to_string()))
    }

    /// Number of kernels loaded.
    pub fn kernel_count(&self) -> usize {
        self.functions.len()
    }

    /// Builds the argument list of kernel `name` with `args`, checks it against the kernel's
    /// parameter list (count and sizes, where the driver reports them), then launches it with
    /// `cfg`. The typed launchers below are the way in; this is the checked door they share.
    pub fn launch<'a>(
        &'a self,
        name: &str,
        cfg: LaunchConfig,
        args: impl for<'b> FnOnce(&mut Args<'a, 'b>),
    ) -> Result<(), Error> {
        let (f, expected) = self
            .functions
            .get(name)
            .ok_or_else(|| Error::MissingKernel(name.to_string()))?;
        let mut builder = self.stream.launch_builder(f);
        let mut list = Args {
            builder: &mut builder,
            sizes: Vec::new(),
        };
        args(&mut list);
        let passed = list.sizes;
        if let Some(expected) = expected.as_ref().filter(|e| **e != passed) {
            return invalid(format!(
                "{name}: the launcher passes {} arguments of {passed:?} bytes, the kernel takes \
                 {} of {expected:?} bytes",
                passed.len(),
                expected.len()
            ));
        }
        guarded("cuLaunchKernel", || {
            // SAFETY: the arguments match the kernel's parameter list (checked above where the
            // driver reports it), and every launcher has checked the buffer lengths against the
            // shapes.
            unsafe { builder.launch(cfg) }.map(|_| ())
        })
    }

    // ---- memory ----------------------------------------------------------------------------

    /// Copies `host` into a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, Error> {
        guarded("cuMemcpyHtoD", || self.stream.clone_htod(host))
    }

    /// Overwrites `dst` (same length) with `host`.
    pub fn upload_into<T: DeviceRepr>(
        &self,
        host: &[T],
        dst: &mut CudaSlice<T>,
    ) -> Result<(), Error> {
        check_len("upload_into", host.len(), dst.len())?;
        guarded("cuMemcpyHtoD", || self.stream.memcpy_htod(host, dst))
    }

    /// Copies `src` back to the host, waiting for every queued launch.
    pub fn download<T: DeviceRepr>(&self, src: &CudaSlice<T>) -> Result<Vec<T>, Error> {
        let v = guarded("cuMemcpyDtoH", || self.stream.clone_dtoh(src))?;
        self.synchronize()?;
        Ok(v)
    }

    /// A zero-filled device buffer of `len` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>, Error> {
        guarded("cuMemAlloc", || self.stream.alloc_zeros(len))
    }

    /// A device buffer of `len` copies of `value` (e.g. NaN, to poison outputs in tests).
    pub fn filled<T: DeviceRepr + Clone>(
        &self,
        len: usize,
        value: T,
    ) -> Result<CudaSlice<T>, Error> {
        self.upload(&vec![value; len])
    }

    /// Waits for everything queued on the stream; a failed kernel surfaces here.
    pub fn synchronize(&self) -> Result<(), Error> {
        guarded("cuStreamSynchronize", || self.stream.synchronize())
    }

    // ---- embedding.cu ----------------------------------------------------------------------

    /// `embedding_forward_{f32,bf16}`: `x[n, d] = table[ids[i]]`; grid-stride over `n*d`
    /// (256 threads per block). Out-of-range ids give NaN rows (checked here first).
    pub fn embedding_forward<T: Storage>(
        &self,
        x: &mut CudaSlice<T>,
        table: &CudaSlice<T>,
        ids: &CudaSlice<u32>,
        d: usize,
    ) -> Result<(), Error> {
        let n = ids.len();
        if d == 0 || !table.len().is_multiple_of(d) {
            return invalid("embedding_forward: table length is not a multiple of d");
        }
        check_len("embedding_forward x", x.len(), n * d)?;
        let (n32, d32, v32) = (
            to_u32("n", n)?,
            to_u32("d", d)?,
            to_u32("vocab", table.len() / d)?,
        );
        let name = format!("embedding_forward_{}", T::SUFFIX);
        self.launch(&name, grid_stride((n * d) as u64), |a| {
            a.arg(x).arg(table).arg(ids).arg(&n32).arg(&d32).arg(&v32);
        })
    }

    /// `embedding_backward_{f32,bf16}`: `dtable[ids[i]] += dx[i]` (f32 gradient, tokens in
    /// order, no atomics); one thread per column, `ceil(d / 256)` blocks of 256.
    pub fn embedding_backward<T: Storage>(
        &self,
        dtable: &mut CudaSlice<f32>,
        dx: &CudaSlice<T>,
        ids: &CudaSlice<u32>,
        d: usize,
    ) -> Result<(), Error> {
        let n = ids.len();
        if d == 0 || !dtable.len().is_multiple_of(d) {
            return invalid("embedding_backward: dtable length is not a multiple of d");
        }
        check_len("embedding_backward dx", dx.len(), n * d)?;
        let (n32, d32, v32) = (
            to_u32("n", n)?,
            to_u32("d", d)?,
            to_u32("vocab", dtable.len() / d)?,
        );
        let name = format!("embedding_backward_{}", T::SUFFIX);
        self.launch(&name, per_column(d32), |a| {
            a.arg(dtable).arg(dx).arg(ids).arg(&n32).arg(&d32).arg(&v32);
        })
    }

    // ---- rmsnorm.cu ------------------------------------------------------------------------

    /// `rmsnorm_forward_{f32,bf16}`: `y = x * rstd * w` per row of `x[n, d]`, saving
    /// `rstd[n]`; one block per row, `min(round_up(d, 32), 512)` threads.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_forward<T: Storage>(
        &self,
        y: &mut CudaSlice<T>,
        rstd: &mut CudaSlice<f32>,
        x: &CudaSlice<T>,
        w: &CudaSlice<T>,
        n: usize,
        d: usize,
        eps: f32,
    ) -> Result<(), Error> {
        check_len("rmsnorm_forward y", y.len(), n * d)?;
        check_len("rmsnorm_forward x", x.len(), n * d)?;
        check_len("rmsnorm_forward rstd", rstd.len(), n)?;
        check_len("rmsnorm_forward w", w.len(), d)?;
        if n == 0 {
            return Ok(());
        }
        let (n32, d32) = (to_u32("n", n)?, to_u32("d", d)?);
        let name = format!("rmsnorm_forward_{}", T::SUFFIX);
        self.launch(&name, per_row(n32, d32, ROW_BLOCK), |a| {
            a.arg(y)
                .arg(rstd)
                .arg(x)
                .arg(w)
                .arg(&n32)
                .arg(&d32)
                .arg(&eps);
        })
    }

    /// `rmsnorm_backward_dx_{f32,bf16}` (one block per row, as the forward) then
    /// `rmsnorm_backward_dw_{f32,bf16}` (one thread per column, `ceil(d / 256)` blocks of 256):
    /// overwrites `dx`, accumulates into the f32 `dw`.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_backward<T: Storage>(
        &self,
        dx: &mut CudaSlice<T>,
        dw: &mut CudaSlice<f32>,
        dy: &CudaSlice<T>,
        x: &CudaSlice<T>,
        w: &CudaSlice<T>,
        rstd: &CudaSlice<f32>,
        n: usize,
        d: usize,
    ) -> Result<(), Error> {
        check_len("rmsnorm_backward dx", dx.len(), n * d)?;
        check_len("rmsnorm_backward dy", dy.len(), n * d)?;
        check_len("rmsnorm_backward x", x.len(), n * d)?;
        check_len("rmsnorm_backward w", w.len(), d)?;
        check_len("rmsnorm_backward dw", dw.len(), d)?;
        check_len("rmsnorm_backward rstd", rstd.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let (n32, d32) = (to_u32("n", n)?, to_u32("d", d)?);
        let name = format!("rmsnorm_backward_dx_{}", T::SUFFIX);
        self.launch(&name, per_row(n32, d32, ROW_BLOCK), |a| {
            a.arg(dx)
                .arg(dy)
                .arg(x)
                .arg(w)
                .arg(rstd)
                .arg(&n32)
                .arg(&d32);
        })?;
        let name = format!("rmsnorm_backward_dw_{}", T::SUFFIX);
        self.launch(&name, per_column(d32), |a| {
            a.arg(dw).arg(dy).arg(x).arg(rstd).arg(&n32).arg(&d32);
        })
    }

    // ---- rope.cu ---------------------------------------------------------------------------

    /// `rope_tables`: `(cos, sin)[t, hd/2]`, angles in f64 rounded to f32; grid-stride over
    /// `t*hd/2`.
    pub fn rope_tables(
        &self,
        t: usize,
        hd: usize,
        theta: f64,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>), Error> {
        if hd == 0 || !hd.is_multiple_of(2) {
            return invalid(format!("rope: head dim {hd} must be even and positive"));
        }
        let len = t * hd / 2;
        let mut cos = self.zeros::<f32>(len.max(1))?;
        let mut sin = self.zeros::<f32>(len.max(1))?;
        let (t32, hd32) = (to_u32("t", t)?, to_u32("hd", hd)?);
        self.launch("rope_tables", grid_stride(len as u64), |a| {
            a.arg(&mut cos)
                .arg(&mut sin)
                .arg(&t32)
                .arg(&hd32)
                .arg(&theta);
        })?;
        Ok((cos, sin))
    }

    /// `rope_forward_{f32,bf16}` (or `rope_backward_*` when `inverse`), in place on
    /// `x[b*t, heads*hd]` with tables from [`Gpu::rope_tables`]; grid-stride over
    /// `b*t*heads*hd/2` rotated pairs.
    #[allow(clippy::too_many_arguments)]
    pub fn rope<T: Storage>(
        &self,
        x: &mut CudaSlice<T>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        b: usize,
        t: usize,
        heads: usize,
        hd: usize,
        inverse: bool,
    ) -> Result<(), Error> {
        if hd == 0 || !hd.is_multiple_of(2) {
            return invalid(format!("rope: head dim {hd} must be even and positive"));
        }
        check_len("rope x", x.len(), b * t * heads * hd)?;
        if cos.len() < t * hd / 2 || sin.len() < t * hd / 2 {
            return invalid("rope: tables shorter than t*hd/2");
        }
        let rows = to_u32("rows", b * t)?;
        let (t32, h32, hd32) = (to_u32("t", t)?, to_u32("heads", heads)?, to_u32("hd", hd)?);
        let dir = if inverse { "backward" } else { "forward" };
        let name = format!("rope_{dir}_{}", T::SUFFIX);
        self.launch(&name, grid_stride((b * t * heads * hd / 2) as u64), |a| {
            a.arg(x)
                .arg(cos)
                .arg(sin)
                .arg(&rows)
                .arg(&t32)
                .arg(&h32)
                .arg(&hd32);
        })
    }

    // ---- attention.cu ----------------------------------------------------------------------

    /// The head layout every attention kernel takes: query heads in whole groups per kv head,
    /// and a head dim the warp-per-row kernels hold in registers.
    fn attention_heads(nh: usize, nkv: usize, hd: usize) -> Result<(), Error> {
        if nkv == 0 || !nh.is_multiple_of(nkv) {
            return invalid(format!(
                "attention: nh {nh} must be a multiple of nkv {nkv}"
            ));
        }
        if hd == 0 || hd > ATTENTION_MAX_HD {
            return invalid(format!(
                "attention: head dim {hd} not in 1..={ATTENTION_MAX_HD}"
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_shapes(
        q: usize,
        k: usize,
        v: usize,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
    ) -> Result<[u32; 5], Error> {
        Self::attention_heads(nh, nkv, hd)?;
        check_len("attention q", q, b * t * nh * hd)?;
        check_len("attention k", k, b * t * nkv * hd)?;
        check_len("attention v", v, b * t * nkv * hd)?;
        Ok([
            to_u32("b", b)?,
            to_u32("t", t)?,
            to_u32("nh", nh)?,
            to_u32("nkv", nkv)?,
            to_u32("hd", hd)?,
        ])
    }

    /// The attention scale `1/sqrt(hd)`, computed in f64 and rounded to f32 (as the CPU).
    pub fn attention_scale(hd: usize) -> f32 {
        (1.0 / (hd as f64).sqrt()) as f32
    }

    /// `attention_forward_{f32,bf16}`: causal GQA attention, `out[b*t, nh*hd]` and the f32
    /// log-sum-exp `lse[b, nh, t]`; one warp per query row (`b*nh*t` warps), blocks of 128
    /// threads. `hd <= 256`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward<T: Storage>(
        &self,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        v: &CudaSlice<T>,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
    ) -> Result<(), Error> {
        let [b32, t32, nh32, nkv32, hd32] =
            Self::attention_shapes(q.len(), k.len(), v.len(), b, t, nh, nkv, hd)?;
        check_len("attention out", out.len(), q.len())?;
        check_len("attention lse", lse.len(), b * nh * t)?;
        if b * t == 0 {
            return Ok(());
        }
        let scale = Self::attention_scale(hd);
        let name = format!("attention_forward_{}", T::SUFFIX);
        self.launch(&name, per_warp((b * nh * t) as u64)?, |a| {
            a.arg(out).arg(lse).arg(q).arg(k).arg(v);
            a.arg(&b32)
                .arg(&t32)
                .arg(&nh32)
                .arg(&nkv32)
                .arg(&hd32)
                .arg(&scale);
        })
    }

    /// `attention_decode_{f32,bf16}`: causal GQA attention of `n` new query rows `q[n, nh*hd]`
    /// of one sequence, at positions `past..past+n`, over the key/value caches
    /// `k_cache`, `v_cache` `[capacity, nkv*hd]` whose rows `0..past+n` hold the keys (after
    /// RoPE) and values of positions `0..past+n`, the new rows included; row `i` attends to
    /// cache rows `0..=past+i`. Writes `out[n, nh*hd]` (no log-sum-exp: generation has no
    /// backward). One warp per (head, row) (`nh*n` warps), blocks of 128 threads. `hd <= 256`,
    /// `past + n <= capacity`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode<T: Storage>(
        &self,
        out: &mut CudaSlice<T>,
        q: &CudaSlice<T>,
        k_cache: &CudaSlice<T>,
        v_cache: &CudaSlice<T>,
        n: usize,
        past: usize,
        capacity: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
    ) -> Result<(), Error> {
        Self::attention_heads(nh, nkv, hd)?;
        check_len("attention_decode q", q.len(), n * nh * hd)?;
        check_len("attention_decode out", out.len(), n * nh * hd)?;
        check_len(
            "attention_decode k_cache",
            k_cache.len(),
            capacity * nkv * hd,
        )?;
        check_len(
            "attention_decode v_cache",
            v_cache.len(),
            capacity * nkv * hd,
        )?;
        // Rows past the capacity would be read outside the caches.
        if past.checked_add(n).is_none_or(|end| end > capacity) {
            return invalid(format!(
                "attention_decode: {n} rows at position {past} exceed the cache's {capacity}"
            ));
        }
        if n == 0 {
            return Ok(());
        }
        // past + n fits too: the kernel computes the key count past + i + 1 in u32.
        to_u32("past + n", past + n)?;
        let (n32, past32) = (to_u32("n", n)?, to_u32("past", past)?);
        let (nh32, nkv32, hd32) = (to_u32("nh", nh)?, to_u32("nkv", nkv)?, to_u32("hd", hd)?);
        let scale = Self::attention_scale(hd);
        let name = format!("attention_decode_{}", T::SUFFIX);
        self.launch(&name, per_warp((nh * n) as u64)?, |a| {
            a.arg(out).arg(q).arg(k_cache).arg(v_cache);
            a.arg(&n32)
                .arg(&past32)
                .arg(&nh32)
                .arg(&nkv32)
                .arg(&hd32)
                .arg(&scale);
        })
    }

    /// Whether [`Gpu::attention_forward_mma`] takes this storage type and head dim.
    pub fn attention_mma_supported<T: Storage>(hd: usize) -> bool {
        T::SUFFIX == "bf16" && ATTENTION_MMA_HEAD_DIMS.contains(&hd)
    }

    /// What both tensor-core attention launchers refuse: storage types and head dims without
    /// an entry point, GPUs before sm_80, and grids past the y/z limit of 65,535 (heads, batch).
    fn check_mma<T: Storage>(&self, op: &str, hd: usize, b: usize, nh: usize) -> Result<(), Error> {
        if !Self::attention_mma_supported::<T>(hd) {
            return invalid(format!(
                "{op}: {} storage with head dim {hd} (bf16 with head dim 64 or 128 only)",
                T::SUFFIX
            ));
        }
        let (major, minor) = self.info.compute_capability;
        if major < ATTENTION_MMA_MIN_MAJOR {
            return invalid(format!(
                "{op}: {} is sm_{major}{minor}; bf16 tensor cores need sm_80 or newer",
                self.info.name
            ));
        }
        if nh > 65_535 || b > 65_535 {
            return invalid(format!("{op}: b {b} or nh {nh} above 65535"));
        }
        Ok(())
    }

    /// The forward pass of [`Gpu::attention_forward`] on tensor cores
    /// (`attention_forward_mma_hd{64,128}_bf16`): the same `out` and `lse`, within bf16
    /// rounding (P is rounded to bf16 before `P V`). bf16 storage and head dims 64 and 128
    /// only ([`Gpu::attention_mma_supported`]); grid `(ceil(t / 64), nh, b)` of 128 threads.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward_mma<T: Storage>(
        &self,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        v: &CudaSlice<T>,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
    ) -> Result<(), Error> {
        self.check_mma::<T>("attention_forward_mma", hd, b, nh)?;
        let [_, t32, nh32, nkv32, _] =
            Self::attention_shapes(q.len(), k.len(), v.len(), b, t, nh, nkv, hd)?;
        check_len("attention out", out.len(), q.len())?;
        check_len("attention lse", lse.len(), b * nh * t)?;
        if b * t == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (t32.div_ceil(ATTENTION_MMA_ROWS), nh32, b as u32),
            block_dim: (ATTENTION_MMA_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let scale = Self::attention_scale(hd);
        let name = format!("attention_forward_mma_hd{hd}_bf16");
        self.launch(&name, cfg, |a| {
            a.arg(out).arg(lse).arg(q).arg(k).arg(v);
            a.arg(&t32).arg(&nh32).arg(&nkv32).arg(&scale);
        })
    }

    /// What both attention backwards start with: every buffer's length checked against the
    /// shape, then `delta[b, nh, t] = rowsum(dout * out)` (`attention_backward_delta_*`, one
    /// warp per row). Returns the shape as u32 `[b, t, nh, nkv, hd]`, or `None` when there are
    /// no rows (nothing to launch).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward_delta<T: Storage>(
        &self,
        grads: [&CudaSlice<T>; 3],
        delta: &mut CudaSlice<f32>,
        dout: &CudaSlice<T>,
        out: &CudaSlice<T>,
        lse: &CudaSlice<f32>,
        qkv: [&CudaSlice<T>; 3],
        [b, t, nh, nkv, hd]: [usize; 5],
    ) -> Result<Option<[u32; 5]>, Error> {
        let [q, k, v] = qkv;
        let dims = Self::attention_shapes(q.len(), k.len(), v.len(), b, t, nh, nkv, hd)?;
        let [dq, dk, dv] = grads;
        check_len("attention dq", dq.len(), q.len())?;
        check_len("attention dk", dk.len(), k.len())?;
        check_len("attention dv", dv.len(), v.len())?;
        check_len("attention dout", dout.len(), q.len())?;
        check_len("attention out", out.len(), q.len())?;
        check_len("attention lse", lse.len(), b * nh * t)?;
        check_len("attention delta", delta.len(), b * nh * t)?;
        if b * t == 0 {
            return Ok(None);
        }
        let [b32, t32, nh32, _, hd32] = dims;
        let name = format!("attention_backward_delta_{}", T::SUFFIX);
        self.launch(&name, per_warp((b * nh * t) as u64)?, |a| {
            a.arg(&mut *delta).arg(out).arg(dout);
            a.arg(&b32).arg(&t32).arg(&nh32).arg(&hd32);
        })?;
        Ok(Some(dims))
    }

    /// The backward pass of [`Gpu::attention_backward`] on tensor cores: `delta` by
    /// `attention_backward_delta_bf16`, then `attention_backward_dq_mma_hd{64,128}_bf16`
    /// (grid `(ceil(t / 64), nh, b)`) and `attention_backward_dkv_mma_hd{64,128}_bf16` (grid
    /// `(ceil(t / 64), nkv, b)`), 128 threads each. The same dq, dk, dv within bf16 rounding
    /// (P and dS are rounded to bf16 before their products); same limits as
    /// [`Gpu::attention_forward_mma`].
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward_mma<T: Storage>(
        &self,
        dq: &mut CudaSlice<T>,
        dk: &mut CudaSlice<T>,
        dv: &mut CudaSlice<T>,
        delta: &mut CudaSlice<f32>,
        dout: &CudaSlice<T>,
        out: &CudaSlice<T>,
        lse: &CudaSlice<f32>,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        v: &CudaSlice<T>,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
    ) -> Result<(), Error> {
        self.check_mma::<T>("attention_backward_mma", hd, b, nh)?;
        let Some([b32, t32, nh32, nkv32, _]) = self.attention_backward_delta(
            [&*dq, &*dk, &*dv],
            delta,
            dout,
            out,
            lse,
            [q, k, v],
            [b, t, nh, nkv, hd],
        )?
        else {
            return Ok(());
        };
        let scale = Self::attention_scale(hd);
        let blocks = t32.div_ceil(ATTENTION_MMA_ROWS);
        let grid = |heads: u32| LaunchConfig {
            grid_dim: (blocks, heads, b32),
            block_dim: (ATTENTION_MMA_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            &format!("attention_backward_dq_mma_hd{hd}_bf16"),
            grid(nh32),
            |a| {
                a.arg(dq)
                    .arg(dout)
                    .arg(q)
                    .arg(k)
                    .arg(v)
                    .arg(lse)
                    .arg(&*delta);
                a.arg(&t32).arg(&nh32).arg(&nkv32).arg(&scale);
            },
        )?;
        self.launch(
            &format!("attention_backward_dkv_mma_hd{hd}_bf16"),
            grid(nkv32),
            |a| {
                a.arg(dk)
                    .arg(dv)
                    .arg(dout)
                    .arg(q)
                    .arg(k)
                    .arg(v)
                    .arg(lse)
                    .arg(&*delta);
                a.arg(&t32).arg(&nh32).arg(&nkv32).arg(&scale);
            },
        )
    }

    /// The attention backward, three launches (one warp per row each, blocks of 128):
    /// `attention_backward_delta_*` (`delta[b, nh, t] = rowsum(dout * out)`, `b*nh*t` warps),
    /// `attention_backward_dq_*` (`b*nh*t` warps) and `attention_backward_dkv_*` (`b*nkv*t`
    /// warps). Overwrites `dq`, `dk`, `dv`; `delta` is f32 scratch of `b*nh*t`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward<T: Storage>(
        &self,
        dq: &mut CudaSlice<T>,
        dk: &mut CudaSlice<T>,
        dv: &mut CudaSlice<T>,
        delta: &mut CudaSlice<f32>,
        dout: &CudaSlice<T>,
        out: &CudaSlice<T>,
        lse: &CudaSlice<f32>,
        q: &CudaSlice<T>,
        k: &CudaSlice<T>,
        v: &CudaSlice<T>,
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
    ) -> Result<(), Error> {
        let Some([b32, t32, nh32, nkv32, hd32]) = self.attention_backward_delta(
            [&*dq, &*dk, &*dv],
            delta,
            dout,
            out,
            lse,
            [q, k, v],
            [b, t, nh, nkv, hd],
        )?
        else {
            return Ok(());
        };
        let scale = Self::attention_scale(hd);
        let s = T::SUFFIX;
        let q_rows = per_warp((b * nh * t) as u64)?;
        self.launch(&format!("attention_backward_dq_{s}"), q_rows, |a| {
            a.arg(dq)
                .arg(dout)
                .arg(q)
                .arg(k)
                .arg(v)
                .arg(lse)
                .arg(&*delta);
            a.arg(&b32)
                .arg(&t32)
                .arg(&nh32)
                .arg(&nkv32)
                .arg(&hd32)
                .arg(&scale);
        })?;
        let kv_rows = per_warp((b * nkv * t) as u64)?;
        self.launch(&format!("attention_backward_dkv_{s}"), kv_rows, |a| {
            a.arg(dk)
                .arg(dv)
                .arg(dout)
                .arg(q)
                .arg(k)
                .arg(v)
                .arg(lse)
                .arg(&*delta);
            a.arg(&b32)
                .arg(&t32)
                .arg(&nh32)
                .arg(&nkv32)
                .arg(&hd32)
                .arg(&scale);
        })
    }

    // ---- swiglu.cu -------------------------------------------------------------------------

    /// `swiglu_forward_{f32,bf16}`: `a = silu(g) * u`; grid-stride over `n` (256 threads).
    pub fn swiglu_forward<T: Storage>(
        &self,
        a: &mut CudaSlice<T>,
        g: &CudaSlice<T>,
        u: &CudaSlice<T>,
    ) -> Result<(), Error> {
        let n = a.len();
        check_len("swiglu_forward g", g.len(), n)?;
        check_len("swiglu_forward u", u.len(), n)?;
        let n64 = n as u64;
        let name = format!("swiglu_forward_{}", T::SUFFIX);
        self.launch(&name, grid_stride(n64), |l| {
            l.arg(a).arg(g).arg(u).arg(&n64);
        })
    }

    /// `swiglu_backward_{f32,bf16}`: overwrites `dg`, `du`; grid-stride over `n`.
    pub fn swiglu_backward<T: Storage>(
        &self,
        dg: &mut CudaSlice<T>,
        du: &mut CudaSlice<T>,
        da: &CudaSlice<T>,
        g: &CudaSlice<T>,
        u: &CudaSlice<T>,
    ) -> Result<(), Error> {
        let n = da.len();
        for (what, len) in [
            ("dg", dg.len()),
            ("du", du.len()),
            ("g", g.len()),
            ("u", u.len()),
        ] {
            check_len(&format!("swiglu_backward {what}"), len, n)?;
        }
        let n64 = n as u64;
        let name = format!("swiglu_backward_{}", T::SUFFIX);
        self.launch(&name, grid_stride(n64), |l| {
            l.arg(dg).arg(du).arg(da).arg(g).arg(u).arg(&n64);
        })
    }

    // ---- cross_entropy.cu ------------------------------------------------------------------

    /// `cross_entropy_{f32,bf16}`: per-row losses `losses[n]` (0 for [`IGNORE_TARGET`]) and,
    /// when `write_dlogits`, `logits[n, vocab]` overwritten in place by
    /// `(softmax - onehot) * grad_scale`; one block per row, `min(round_up(vocab, 32), 512)`
    /// threads. Targets must be `< vocab` or [`IGNORE_TARGET`] (else the row's loss is NaN).
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy<T: Storage>(
        &self,
        logits: &mut CudaSlice<T>,
        losses: &mut CudaSlice<f32>,
        targets: &CudaSlice<u32>,
        n: usize,
        vocab: usize,
        grad_scale: f32,
        write_dlogits: bool,
    ) -> Result<(), Error> {
        check_len("cross_entropy logits", logits.len(), n * vocab)?;
        check_len("cross_entropy losses", losses.len(), n)?;
        check_len("cross_entropy targets", targets.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        if vocab == 0 {
            return invalid("cross_entropy: empty vocab");
        }
        let (n32, v32) = (to_u32("n", n)?, to_u32("vocab", vocab)?);
        let write = i32::from(write_dlogits);
        let name = format!("cross_entropy_{}", T::SUFFIX);
        self.launch(&name, per_row(n32, v32, ROW_BLOCK), |a| {
            a.arg(logits).arg(losses).arg(targets);
            a.arg(&n32).arg(&v32).arg(&grad_scale).arg(&write);
        })
    }

    /// `cross_entropy_sum`: `out[0] = sum(losses)` in f64, fixed order; one block of 512.
    pub fn cross_entropy_sum(
        &self,
        out: &mut CudaSlice<f32>,
        losses: &CudaSlice<f32>,
    ) -> Result<(), Error> {
        if out.is_empty() {
            return invalid("cross_entropy_sum: empty out");
        }
        let n32 = to_u32("n", losses.len())?;
        // One block on purpose: a fixed-order sum of B*T floats (16,384 for the 124M model at
        // batch 16), once per micro-batch; filling the SMs would not pay for a second pass.
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (ROW_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch("cross_entropy_sum", cfg, |a| {
            a.arg(out).arg(losses).arg(&n32);
        })
    }

    // ---- adamw.cu --------------------------------------------------------------------------

    /// `adamw_step_{f32,bf16}`: one AdamW step on the f32 master `params` and moments, with
    /// `step_size = lr / (1 - b1^step)` and `bc2_sqrt = sqrt(1 - b2^step)` computed here in
    /// f64 and rounded to f32 exactly as `train`'s `adamw_step`. `decay[i] != 0` applies
    /// weight decay; `grad_scale` (one f32 on the device, e.g. `out.slice(1..2)` of
    /// [`Gpu::grad_norm`]: the clip scale) multiplies the gradients (none: 1); `work`, when given, receives the updated
    /// weights in the storage type. Grid-stride over `n` (256 threads).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_step<T: Storage>(
        &self,
        params: &mut CudaSlice<f32>,
        work: Option<&mut CudaSlice<T>>,
        grads: &CudaSlice<f32>,
        exp_avg: &mut CudaSlice<f32>,
        exp_avg_sq: &mut CudaSlice<f32>,
        decay: &CudaSlice<u8>,
        grad_scale: Option<&CudaView<'_, f32>>,
        opt: &AdamWHyper,
        lr: f32,
        step: u64,
    ) -> Result<(), Error> {
        let n = params.len();
        check_len("adamw grads", grads.len(), n)?;
        check_len("adamw exp_avg", exp_avg.len(), n)?;
        check_len("adamw exp_avg_sq", exp_avg_sq.len(), n)?;
        check_len("adamw decay", decay.len(), n)?;
        if let Some(w) = &work {
            check_len("adamw work", w.len(), n)?;
        }
        if grad_scale.is_some_and(|s| s.is_empty()) {
            return invalid("adamw: empty grad_scale buffer");
        }
        if step == 0 {
            return invalid("adamw: step is 1-based");
        }
        let bc1 = 1.0 - f64::from(opt.beta1).powf(step as f64);
        let bc2 = 1.0 - f64::from(opt.beta2).powf(step as f64);
        let step_size = (f64::from(lr) / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let n64 = n as u64;
        let null: u64 = 0;
        let name = format!("adamw_step_{}", T::SUFFIX);
        self.launch(&name, grid_stride(n64), |a| {
            a.arg(params);
            match work {
                Some(w) => a.arg(w),
                None => a.arg(&null),
            };
            a.arg(grads).arg(exp_avg).arg(exp_avg_sq).arg(decay);
            match grad_scale {
                Some(s) => a.arg(s),
                None => a.arg(&null),
            };
            a.arg(&n64)
                .arg(&lr)
                .arg(&opt.beta1)
                .arg(&opt.beta2)
                .arg(&opt.eps);
            a.arg(&opt.weight_decay).arg(&step_size).arg(&bc2_sqrt);
        })
    }

    // ---- norm.cu ---------------------------------------------------------------------------

    /// Global gradient norm and clip scale into `out[2]` (`out[0]` = norm, `out[1]` = clip
    /// scale, 1 unless `clip > 0` and the norm is finite and above it): `grad_norm_partials`
    /// (`ceil(n / 16384)` blocks of 256, one f64 partial per fixed chunk) then
    /// `grad_norm_finish` (one block of 512). `partials` is f64 scratch of at least
    /// `ceil(n / 16384)` (see [`Gpu::grad_norm_parts`]).
    pub fn grad_norm(
        &self,
        out: &mut CudaSlice<f32>,
        partials: &mut CudaSlice<f64>,
        grads: &CudaSlice<f32>,
        clip: f32,
    ) -> Result<(), Error> {
        let n = grads.len();
        let parts = Self::grad_norm_parts(n);
        if out.len() < 2 {
            return invalid("grad_norm: out needs 2 elements");
        }
        if partials.len() < parts {
            return invalid(format!("grad_norm: {parts} partials needed"));
        }
        let parts32 = to_u32("parts", parts)?;
        let n64 = n as u64;
        let chunk = GRAD_NORM_CHUNK;
        if parts > 0 {
            let cfg = LaunchConfig {
                grid_dim: (parts32, 1, 1),
                block_dim: (ELEMENTWISE_BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            self.launch("grad_norm_partials", cfg, |a| {
                a.arg(&mut *partials).arg(grads).arg(&n64).arg(&chunk);
            })?;
        }
        // One block on purpose: it adds the `parts` partials (about 7,600 for 124M parameters) in a
        // fixed order, once per optimizer step.
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (ROW_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch("grad_norm_finish", cfg, |a| {
            a.arg(out).arg(&*partials).arg(&parts32).arg(&clip);
        })
    }

    /// Number of f64 partials [`Gpu::grad_norm`] needs for `n` gradients.
    pub fn grad_norm_parts(n: usize) -> usize {
        n.div_ceil(GRAD_NORM_CHUNK as usize)
    }

    /// `scale_f32`: `x[i] *= s[0]` (`s` on the device); grid-stride over `n`.
    pub fn scale_f32(&self, x: &mut CudaSlice<f32>, s: &CudaView<'_, f32>) -> Result<(), Error> {
        if s.is_empty() {
            return invalid("scale_f32: empty scale buffer");
        }
        let n64 = x.len() as u64;
        self.launch("scale_f32", grid_stride(n64), |a| {
            a.arg(x).arg(s).arg(&n64);
        })
    }

    // ---- lora.cu ---------------------------------------------------------------------------

    /// `lora_dropout_{f32,bf16}`: `out[e] = in[e] · inv` where element `e` survives dropout
    /// `p` under `key` (the CPU's hash), else 0; `out` may be `in`. Grid-stride over `n`.
    pub fn lora_dropout<T: Storage>(
        &self,
        out: &mut CudaViewMut<'_, T>,
        input: &CudaView<'_, T>,
        key: u64,
        p: f64,
    ) -> Result<(), Error> {
        check_len("lora_dropout", out.len(), input.len())?;
        if !(0.0..1.0).contains(&p) {
            return invalid(format!("lora_dropout: p = {p} is not in [0, 1)"));
        }
        let inv = (1.0 / (1.0 - p)) as f32;
        let n64 = input.len() as u64;
        let name = format!("lora_dropout_{}", T::SUFFIX);
        self.launch(&name, grid_stride(n64), |a| {
            a.arg(out).arg(input).arg(&key).arg(&p).arg(&inv).arg(&n64);
        })
    }

    // ---- nf4.cu ----------------------------------------------------------------------------

    /// `nf4_absmax`: double-quantised absmax values back to f32,
    /// `absmax[j] = code256[q[j]] · scales[j / 256] + offset`; grid-stride over the blocks.
    pub fn nf4_absmax(
        &self,
        absmax: &mut CudaViewMut<'_, f32>,
        q: &CudaSlice<u8>,
        scales: &CudaSlice<f32>,
        code256: &CudaSlice<f32>,
        offset: f32,
    ) -> Result<(), Error> {
        let blocks = absmax.len();
        check_len("nf4_absmax q", q.len(), blocks)?;
        check_len("nf4_absmax scales", scales.len(), blocks.div_ceil(256))?;
        check_len("nf4_absmax code256", code256.len(), 256)?;
        let n64 = blocks as u64;
        self.launch("nf4_absmax", grid_stride(n64), |a| {
            a.arg(absmax)
                .arg(q)
                .arg(scales)
                .arg(code256)
                .arg(&offset)
                .arg(&n64);
        })
    }

    /// `nf4_dequantize_{f32,bf16}`: `w[i] = code16[nibble i] · absmax[i / 64]` rounded to `T`,
    /// the first weight of a byte in its high nibble; one thread per packed byte.
    pub fn nf4_dequantize<T: Storage>(
        &self,
        w: &mut CudaViewMut<'_, T>,
        packed: &CudaSlice<u8>,
        absmax: &CudaView<'_, f32>,
        code16: &CudaSlice<f32>,
    ) -> Result<(), Error> {
        let bytes = packed.len();
        if !bytes.is_multiple_of(32) {
            return invalid(format!(
                "nf4_dequantize: {bytes} packed bytes are not whole blocks of 64 weights"
            ));
        }
        check_len("nf4_dequantize w", w.len(), 2 * bytes)?;
        check_len("nf4_dequantize absmax", absmax.len(), bytes / 32)?;
        check_len("nf4_dequantize code16", code16.len(), 16)?;
        let n64 = bytes as u64;
        let name = format!("nf4_dequantize_{}", T::SUFFIX);
        self.launch(&name, grid_stride(n64), |a| {
            a.arg(w).arg(packed).arg(absmax).arg(code16).arg(&n64);
        })
    }

    // ---- cast.cu ---------------------------------------------------------------------------

    /// `cast_f32_to_bf16`: round to nearest even; grid-stride over `n`.
    pub fn cast_f32_to_bf16(
        &self,
        out: &mut CudaSlice<Bf16>,
        x: &CudaSlice<f32>,
    ) -> Result<(), Error> {
        check_len("cast_f32_to_bf16", out.len(), x.len())?;
        let n64 = x.len() as u64;
        self.launch("cast_f32_to_bf16", grid_stride(n64), |a| {
            a.arg(out).arg(x).arg(&n64);
        })
    }

    /// `cast_bf16_to_f32`: exact widening; grid-stride over `n`.
    pub fn cast_bf16_to_f32(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<Bf16>,
    ) -> Result<(), Error> {
        check_len("cast_bf16_to_f32", out.len(), x.len())?;
        let n64 = x.len() as u64;
        self.launch("cast_bf16_to_f32", grid_stride(n64), |a| {
            a.arg(out).arg(x).arg(&n64);
        })
    }

    /// `scale_inplace_{f32,bf16}`: `x = s · x` (through f32); grid-stride over `n`.
    pub fn scale_inplace<T: Storage>(
        &self,
        x: &mut CudaViewMut<'_, T>,
        s: f32,
    ) -> Result<(), Error> {
        let n64 = x.len() as u64;
        let name = format!("scale_inplace_{}", T::SUFFIX);
        self.launch(&name, grid_stride(n64), |a| {
            a.arg(x).arg(&s).arg(&n64);
        })
    }

    /// [`Gpu::add_inplace`] with `x` a view (part of a scratch buffer).
    pub fn add_view_inplace<T: Storage>(
        &self,
        y: &mut CudaSlice<T>,
        x: &CudaView<'_, T>,
    ) -> Result<(), Error> {
        check_len("add_view_inplace", y.len(), x.len())?;
        let n64 = x.len() as u64;
        let name = format!("add_inplace_{}", T::SUFFIX);
        self.launch(&name, grid_stride(n64), |a| {
            a.arg(y).arg(x).arg(&n64);
        })
    }

    /// `add_inplace_{f32,bf16}`: `y += x` (through f32); grid-stride over `n`.
    pub fn add_inplace<T: Storage>(
        &self,
        y: &mut CudaSlice<T>,
        x: &CudaSlice<T>,
    ) -> Result<(), Error> {
        check_len("add_inplace", y.len(), x.len())?;
        let n64 = x.len() as u64;
        let name = format!("add_inplace_{}", T::SUFFIX);
        self.launch(&name, grid_stride(n64), |a| {
            a.arg(y).arg(x).arg(&n64);
        })
    }

    /// `accumulate_f32_from_{f32,bf16}`: `acc += x` in f32; grid-stride over `n`.
    pub fn accumulate_f32<T: Storage>(
        &self,
        acc: &mut CudaSlice<f32>,
        x: &CudaSlice<T>,
    ) -> Result<(), Error> {
        check_len("accumulate_f32", acc.len(), x.len())?;
        let n64 = x.len() as u64;
        let name = format!("accumulate_f32_from_{}", T::SUFFIX);
        self.launch(&name, grid_stride(n64), |a| {
            a.arg(acc).arg(x).arg(&n64);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_like_the_device() {
        assert_eq!(Bf16::from_f32(1.0).0, 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(Bf16::from_f32(1.0 + 1.0 / 256.0).0, 0x3f80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (up).
        assert_eq!(Bf16::from_f32(1.0 + 3.0 / 256.0).0, 0x3f82);
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        assert_eq!(Bf16::from_f32(f32::INFINITY).to_f32(), f32::INFINITY);
        assert_eq!(Bf16::from_f32(f32::MAX).to_f32(), f32::INFINITY);
        assert_eq!(Bf16::from_f32(-2.5).to_f32(), -2.5);
        assert!(<Bf16 as Storage>::NAN.to_f32().is_nan());
    }

    #[test]
    fn launch_shapes_follow_the_kernels_rules() {
        for (rows, width) in [(1, 1), (7, 33), (3, 4096), (5, 50_257)] {
            let c = per_row(rows, width, 1024);
            assert_eq!(c.grid_dim.0, rows);
            assert!(
                c.block_dim.0.is_multiple_of(32) && c.block_dim.0 <= 1024 && c.block_dim.0 >= 32
            );
        }
        let w = per_warp(1000).unwrap();
        assert!(u64::from(w.grid_dim.0) * u64::from(ATTENTION_BLOCK) >= 1000 * 32);
        assert_eq!(grid_stride(0).grid_dim.0, 1);
        assert_eq!(grid_stride(1 << 40).grid_dim.0, MAX_GRID_STRIDE_BLOCKS);
        assert_eq!(per_column(257).grid_dim.0, 2);
        assert_eq!(Gpu::grad_norm_parts(16_385), 2);
    }

    /// Without a GPU, `Gpu::new` reports one line (never panics); with one it loads every
    /// listed kernel.
    #[test]
    fn new_never_panics() {
        match Gpu::new(0) {
            Err(e) => {
                let msg = e.to_string();
                println!("Gpu::new(0) (no GPU expected here): {msg}");
            }
            Ok(gpu) => {
                let listed: usize = crate::UNITS.iter().map(|u| u.kernels.len()).sum();
                assert_eq!(gpu.kernel_count(), listed);
            }
        }
    }
}
