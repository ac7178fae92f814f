//! The GEMMs of the CUDA engine's linear layers, through cuBLASLt (cudarc's `cublaslt`
//! bindings, `libcublasLt` opened at run time).
//!
//! Shapes follow PyTorch's `nn.Linear` and the CPU reference ops in
//! `train/src/engine/cpu/ops/linear.rs`: every matrix is row-major, the weight is `w[out, in]`.
//!
//! - [`Blas::linear_forward`]: `y[n, out] = x[n, in] · wᵀ`
//! - [`Blas::linear_backward_dx`]: `dx[n, in] = dy[n, out] · w`
//! - [`Blas::linear_backward_dw`]: `dw[out, in] = dyᵀ · x`, or `dw += dyᵀ · x` with
//!   `accumulate` (beta = 1)
//!
//! Row-major → column-major: cuBLASLt is column-major, and a row-major `r × c` buffer read as
//! column-major (leading dimension `c`) is its transpose, `c × r`. So a row-major product
//! `C = A · Bᵀ` is computed as the column-major `Cᵀ = B · Aᵀ`: swap the operands, keep the
//! buffers as they are, and flip the transpose flags where an operand is needed the other way
//! round. Each op below spells out its mapping (`m, n, k`, the flags, the leading dimensions).
//!
//! Supported element types (inputs `T` → output), always with f32 compute and f32 scale
//! (`CUBLAS_COMPUTE_32F`, pure FP32: never the TF32 `CUBLAS_COMPUTE_32F_FAST_TF32`):
//!
//! | op                    | `T` (x, w, dy) | output            |
//! |-----------------------|----------------|-------------------|
//! | forward, backward_dx  | f32            | f32               |
//! | forward, backward_dx  | bf16           | bf16 or f32       |
//! | backward_dw           | f32 or bf16    | f32 (the gradient)|
//!
//! (cuBLASLt has no f32-input/bf16-output GEMM under `COMPUTE_32F`; it is rejected as
//! [`Error::Invalid`].)
//!
//! Determinism: cuBLASLt gives bitwise identical results run after run for a fixed algorithm
//! on the same GPU, provided that algorithm does not reduce split-K partial sums with atomics.
//! So each GEMM configuration (op, element types, shape, beta, pointer alignment class) gets
//! its algorithm from the heuristic once, with the preference
//! `CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK = CUBLASLT_REDUCTION_SCHEME_NONE` (no split-K
//! reductions), and the choice is cached: every later call with that configuration runs the
//! same algorithm with the same descriptors. The workspace is allocated once, in
//! [`Blas::new`].
//!
//! Nothing here panics: a missing `libcublasLt` is reported by [`cublaslt_available`] (and
//! [`Blas::new`]) as one line naming `libcublasLt.so.13` and `LD_LIBRARY_PATH`, and every
//! cuBLASLt call is wrapped in `catch_unwind`.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::result::{self as lt, CublasError};
use cudarc::cublaslt::sys;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{DevicePtr, DevicePtrMut, DriverError};

pub use cudarc::driver::{CudaContext, CudaSlice, CudaStream};

use crate::launch::{Gpu, Storage};
use crate::probe::{self, ProbeError};

/// The cuBLASLt library this build expects (CUDA 13).
pub const CUBLASLT_LIB: &str = "libcublasLt.so.13";

/// Workspace bytes on Hopper and later (NVIDIA's recommendation for cuBLASLt).
pub const WORKSPACE_BYTES_SM90: usize = 32 << 20;
/// Workspace bytes before Hopper.
pub const WORKSPACE_BYTES: usize = 4 << 20;

/// Every message is a single line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Probe(#[from] ProbeError),
    #[error(
        "no cuBLASLt: could not load libcublasLt.so.13 (the CUDA 13 cuBLASLt library); install \
         it or point LD_LIBRARY_PATH at the directory that holds libcublasLt.so.13"
    )]
    NoCublasLt,
    #[error("cuBLASLt call {call} failed: {message}")]
    Cublas { call: &'static str, message: String },
    #[error("CUDA driver call {call} failed: {message}")]
    Driver { call: &'static str, message: String },
    #[error("invalid matmul: {0}")]
    Invalid(String),
}

/// Runs cuBLASLt calls, turning a status or a panic into [`Error::Cublas`].
fn cublas<T>(call: &'static str, f: impl FnOnce() -> Result<T, CublasError>) -> Result<T, Error> {
    match crate::guard::catch(f) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::Cublas {
            call,
            message: format!("{:?}", e.0),
        }),
        Err(message) => Err(Error::Cublas { call, message }),
    }
}

/// Runs driver calls, turning an error or a panic into [`Error::Driver`].
fn driver<T>(call: &'static str, f: impl FnOnce() -> Result<T, DriverError>) -> Result<T, Error> {
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

/// Checks that `libcublasLt` can be loaded, without panicking (cudarc's own loader panics when
/// it cannot find the library).
pub fn cublaslt_available() -> Result<(), Error> {
    // SAFETY: only tries to dlopen the candidate library names.
    match catch_unwind(|| unsafe { sys::is_culib_present() }) {
        Ok(true) => Ok(()),
        _ => Err(Error::NoCublasLt),
    }
}

/// Element type of a matrix, from [`Storage::SUFFIX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DType {
    F32,
    Bf16,
}

impl DType {
    fn of<T: Storage>() -> Result<DType, Error> {
        match (T::SUFFIX, size_of::<T>()) {
            ("f32", 4) => Ok(DType::F32),
            ("bf16", 2) => Ok(DType::Bf16),
            (s, _) => invalid(format!("unsupported element type {s}")),
        }
    }

    fn cuda(self) -> sys::cudaDataType {
        match self {
            DType::F32 => sys::cudaDataType_t::CUDA_R_32F,
            DType::Bf16 => sys::cudaDataType_t::CUDA_R_16BF,
        }
    }
}

/// Which linear-layer GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Forward,
    BackwardDx,
    BackwardDw,
}

/// One column-major cuBLASLt GEMM `D = alpha · op(A) · op(B) + beta · C` (C = D, in place),
/// `D` being `m × n` with leading dimension `m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Gemm {
    op: Op,
    input: DType,
    output: DType,
    transa: bool,
    transb: bool,
    m: u64,
    n: u64,
    k: u64,
    lda: i64,
    ldb: i64,
    accumulate: bool,
}

/// What selects an algorithm: the GEMM and the alignment class (largest power of two up to
/// 256 dividing the address) of A, B and D.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    gemm: Gemm,
    align: [u32; 3],
}

fn alignment(ptr: u64) -> u32 {
    if ptr == 0 {
        256
    } else {
        (1u32 << ptr.trailing_zeros().min(8)).min(256)
    }
}

struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc, destroyed once.
        let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
            lt::destroy_matmul_desc(self.0)
        }));
    }
}

struct Layout(sys::cublasLtMatrixLayout_t);
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, destroyed once.
        let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
            lt::destroy_matrix_layout(self.0)
        }));
    }
}

struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref, destroyed once.
        let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
            lt::destroy_matmul_pref(self.0)
        }));
    }
}

/// The descriptors and the chosen algorithm of one [`PlanKey`].
struct Plan {
    desc: Desc,
    a: Layout,
    b: Layout,
    c: Layout,
    algo: sys::cublasLtMatmulAlgo_t,
}

// SAFETY: the descriptors are plain host objects owned by the plan; they are only used while
// the `Blas` state mutex is held.
unsafe impl Send for Plan {}

struct State {
    workspace: CudaSlice<u8>,
    plans: HashMap<PlanKey, Plan>,
}

/// A cuBLASLt handle bound to one stream, its workspace and its per-shape algorithm cache.
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    workspace_bytes: usize,
    state: Mutex<State>,
}

// SAFETY: the handle is only used under the state mutex (every matmul locks it); cuBLASLt
// handles may be used from any thread.
unsafe impl Send for Blas {}
// SAFETY: see above.
unsafe impl Sync for Blas {}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blas")
            .field("workspace_bytes", &self.workspace_bytes)
            .field("cached_plans", &self.cached_plans())
            .finish()
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        if let Ok(state) = self.state.get_mut() {
            state.plans.clear();
        }
        let handle = std::mem::replace(&mut self.handle, std::ptr::null_mut());
        if !handle.is_null() {
            // SAFETY: created by create_handle, destroyed once.
            let _ = catch_unwind(AssertUnwindSafe(|| unsafe { lt::destroy_handle(handle) }));
        }
    }
}

/// Sets one attribute of a matmul descriptor.
fn set_desc<V>(desc: &Desc, attr: sys::cublasLtMatmulDescAttributes_t, v: &V) -> Result<(), Error> {
    cublas("cublasLtMatmulDescSetAttribute", || {
        // SAFETY: `v` is the attribute's documented type, alive for the call.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc.0,
                attr,
                v as *const V as *const c_void,
                size_of::<V>(),
            )
        }
    })
}

/// Sets one attribute of a preference descriptor.
fn set_pref<V>(
    pref: &Pref,
    attr: sys::cublasLtMatmulPreferenceAttributes_t,
    v: &V,
) -> Result<(), Error> {
    cublas("cublasLtMatmulPreferenceSetAttribute", || {
        // SAFETY: `v` is the attribute's documented type, alive for the call.
        unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                attr,
                v as *const V as *const c_void,
                size_of::<V>(),
            )
        }
    })
}

fn check_len(what: &str, got: usize, rows: usize, cols: usize) -> Result<(), Error> {
    match rows.checked_mul(cols) {
        Some(want) if want == got => Ok(()),
        Some(want) => invalid(format!(
            "{what}: {got} elements, expected {rows}x{cols} = {want}"
        )),
        None => invalid(format!("{what}: {rows}x{cols} overflows")),
    }
}

fn check_dims(op: &str, n: usize, in_dim: usize, out_dim: usize) -> Result<(), Error> {
    if n == 0 || in_dim == 0 || out_dim == 0 {
        return invalid(format!(
            "{op}: empty shape (n={n}, in={in_dim}, out={out_dim})"
        ));
    }
    for (what, v) in [("n", n), ("in", in_dim), ("out", out_dim)] {
        if i64::try_from(v).is_err() {
            return invalid(format!("{op}: {what} = {v} does not fit in i64"));
        }
    }
    Ok(())
}

impl Blas {
    /// Loads cuBLASLt (after checking it is present), creates a handle for `stream` and
    /// allocates the workspace ([`WORKSPACE_BYTES_SM90`] on compute capability 9.0 and later,
    /// [`WORKSPACE_BYTES`] before).
    pub fn new(stream: Arc<CudaStream>) -> Result<Blas, Error> {
        cublaslt_available()?;
        driver("cuCtxSetCurrent", || stream.context().bind_to_thread())?;
        let major = driver("cuDeviceGetAttribute", || {
            stream
                .context()
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        })?;
        let workspace_bytes = if major >= 9 {
            WORKSPACE_BYTES_SM90
        } else {
            WORKSPACE_BYTES
        };
        let workspace = driver("cuMemAlloc", || stream.alloc_zeros::<u8>(workspace_bytes))?;
        let handle = cublas("cublasLtCreate", lt::create_handle)?;
        Ok(Blas {
            handle,
            stream,
            workspace_bytes,
            state: Mutex::new(State {
                workspace,
                plans: HashMap::new(),
            }),
        })
    }

    /// Probes device `ordinal` ([`probe::cuda_device`]) and cuBLASLt, creates the device's
    /// (primary) context and [`Blas::new`] on its default stream: no NVRTC needed.
    pub fn open(ordinal: usize) -> Result<Blas, Error> {
        probe::cuda_device(ordinal)?;
        cublaslt_available()?;
        let ctx = driver("cuCtxCreate (CudaContext::new)", || {
            CudaContext::new(ordinal)
        })?;
        let stream = driver("default_stream", || Ok(ctx.default_stream()))?;
        Blas::new(stream)
    }

    /// [`Blas::new`] on the stream of `gpu` (so GEMMs and kernels run in one order).
    pub fn for_gpu(gpu: &Gpu) -> Result<Blas, Error> {
        Blas::new(gpu.stream.clone())
    }

    /// The stream every GEMM is enqueued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Bytes of the workspace allocated in [`Blas::new`].
    pub fn workspace_bytes(&self) -> usize {
        self.workspace_bytes
    }

    /// Number of GEMM configurations whose algorithm has been chosen and cached.
    pub fn cached_plans(&self) -> usize {
        self.state.lock().map(|s| s.plans.len()).unwrap_or(0)
    }

    /// `y[n, out] = x[n, in] · w[out, in]ᵀ` (row-major), f32 accumulation.
    /// `T = f32` needs `O = f32`; `T = bf16` allows `O = bf16` or `f32`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_forward<T: Storage, O: Storage>(
        &self,
        y: &mut impl DevicePtrMut<O>,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        n: usize,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<(), Error> {
        check_dims("linear_forward", n, in_dim, out_dim)?;
        check_len("linear_forward y", y.len(), n, out_dim)?;
        check_len("linear_forward x", x.len(), n, in_dim)?;
        check_len("linear_forward w", w.len(), out_dim, in_dim)?;
        let (input, output) = Self::types::<T, O>("linear_forward")?;
        // Row-major y[n,out] is column-major yᵀ (out × n, ld = out), and yᵀ = w · xᵀ.
        // Row-major w[out,in] read column-major is wᵀ (in × out, ld = in): transposed → w.
        // Row-major x[n,in] read column-major is xᵀ (in × n, ld = in): used as is.
        let gemm = Gemm {
            op: Op::Forward,
            input,
            output,
            transa: true,
            transb: false,
            m: out_dim as u64,
            n: n as u64,
            k: in_dim as u64,
            lda: in_dim as i64,
            ldb: in_dim as i64,
            accumulate: false,
        };
        self.run(gemm, w, x, y)
    }

    /// `dx[n, in] = dy[n, out] · w[out, in]` (row-major, overwrites `dx`), f32 accumulation.
    /// `T = f32` needs `O = f32`; `T = bf16` allows `O = bf16` or `f32`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward_dx<T: Storage, O: Storage>(
        &self,
        dx: &mut impl DevicePtrMut<O>,
        dy: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        n: usize,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<(), Error> {
        check_dims("linear_backward_dx", n, in_dim, out_dim)?;
        check_len("linear_backward_dx dx", dx.len(), n, in_dim)?;
        check_len("linear_backward_dx dy", dy.len(), n, out_dim)?;
        check_len("linear_backward_dx w", w.len(), out_dim, in_dim)?;
        let (input, output) = Self::types::<T, O>("linear_backward_dx")?;
        // Row-major dx[n,in] is column-major dxᵀ (in × n, ld = in), and dxᵀ = wᵀ · dyᵀ.
        // w read column-major is wᵀ (in × out, ld = in); dy read column-major is dyᵀ
        // (out × n, ld = out): neither is transposed.
        let gemm = Gemm {
            op: Op::BackwardDx,
            input,
            output,
            transa: false,
            transb: false,
            m: in_dim as u64,
            n: n as u64,
            k: out_dim as u64,
            lda: in_dim as i64,
            ldb: out_dim as i64,
            accumulate: false,
        };
        self.run(gemm, w, dy, dx)
    }

    /// `dw[out, in] = dy[n, out]ᵀ · x[n, in]` (row-major), or `dw += dyᵀ · x` when
    /// `accumulate` (beta = 1; with beta = 0 the old `dw` is not read, NaN included).
    /// The gradient is always f32; `T` is f32 or bf16. f32 accumulation over the `n` rows.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward_dw<T: Storage>(
        &self,
        dw: &mut impl DevicePtrMut<f32>,
        dy: &impl DevicePtr<T>,
        x: &impl DevicePtr<T>,
        n: usize,
        in_dim: usize,
        out_dim: usize,
        accumulate: bool,
    ) -> Result<(), Error> {
        check_dims("linear_backward_dw", n, in_dim, out_dim)?;
        check_len("linear_backward_dw dw", dw.len(), out_dim, in_dim)?;
        check_len("linear_backward_dw dy", dy.len(), n, out_dim)?;
        check_len("linear_backward_dw x", x.len(), n, in_dim)?;
        let (input, output) = Self::types::<T, f32>("linear_backward_dw")?;
        // Row-major dw[out,in] is column-major dwᵀ (in × out, ld = in), and dwᵀ = xᵀ · dy.
        // x read column-major is xᵀ (in × n, ld = in): used as is. dy read column-major is
        // dyᵀ (out × n, ld = out): transposed → dy (n × out).
        let gemm = Gemm {
            op: Op::BackwardDw,
            input,
            output,
            transa: false,
            transb: true,
            m: in_dim as u64,
            n: out_dim as u64,
            k: n as u64,
            lda: in_dim as i64,
            ldb: out_dim as i64,
            accumulate,
        };
        self.run(gemm, x, dy, dw)
    }

    /// The (input, output) element types, or an error for an unsupported combination.
    fn types<T: Storage, O: Storage>(op: &str) -> Result<(DType, DType), Error> {
        let (input, output) = (DType::of::<T>()?, DType::of::<O>()?);
        if input == DType::F32 && output == DType::Bf16 {
            return invalid(format!(
                "{op}: f32 inputs with a bf16 output are not supported (cuBLASLt COMPUTE_32F \
                 needs f32 inputs to produce f32)"
            ));
        }
        Ok((input, output))
    }

    /// Builds the descriptors of `key` and asks the heuristic for its algorithm.
    fn plan(&self, key: &PlanKey) -> Result<Plan, Error> {
        let g = &key.gemm;
        // Pure FP32 compute (no TF32), f32 alpha/beta.
        let desc = Desc(cublas("cublasLtMatmulDescCreate", || {
            lt::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType_t::CUDA_R_32F,
            )
        })?);
        // cublasOperation_t: 0 = N, 1 = T.
        let (ta, tb) = (i32::from(g.transa), i32::from(g.transb));
        set_desc(
            &desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            &ta,
        )?;
        set_desc(
            &desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
            &tb,
        )?;
        // Layouts describe the matrices as stored (before op): column-major, rows × cols.
        let (a_rows, a_cols) = if g.transa { (g.k, g.m) } else { (g.m, g.k) };
        let (b_rows, b_cols) = if g.transb { (g.n, g.k) } else { (g.k, g.n) };
        let layout = |dt: DType, rows: u64, cols: u64, ld: i64| {
            cublas("cublasLtMatrixLayoutCreate", || {
                lt::create_matrix_layout(dt.cuda(), rows, cols, ld)
            })
            .map(Layout)
        };
        let a = layout(g.input, a_rows, a_cols, g.lda)?;
        let b = layout(g.input, b_rows, b_cols, g.ldb)?;
        let c = layout(g.output, g.m, g.n, g.m as i64)?;

        let heuristic = |no_split_k: bool| -> Result<sys::cublasLtMatmulAlgo_t, Error> {
            let pref = Pref(cublas(
                "cublasLtMatmulPreferenceCreate",
                lt::create_matmul_pref,
            )?);
            use sys::cublasLtMatmulPreferenceAttributes_t as P;
            set_pref(
                &pref,
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &(self.workspace_bytes as u64),
            )?;
            if no_split_k {
                let mask = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_NONE as u32;
                set_pref(&pref, P::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &mask)?;
            }
            // Only algorithms that work with the actual pointer alignments (C is D).
            let [al_a, al_b, al_d] = key.align;
            set_pref(&pref, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a)?;
            set_pref(&pref, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b)?;
            set_pref(&pref, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d)?;
            set_pref(&pref, P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d)?;
            let h = cublas("cublasLtMatmulAlgoGetHeuristic", || {
                // SAFETY: every descriptor is alive and describes this GEMM.
                unsafe {
                    lt::get_matmul_algo_heuristic(self.handle, desc.0, a.0, b.0, c.0, c.0, pref.0)
                }
            })?;
            Ok(h.algo)
        };
        // No split-K reductions if the heuristic offers such an algorithm (it normally does);
        // otherwise its unrestricted choice, which is cached just the same (cuBLASLt's in-place
        // split-K reduction is itself deterministic for a fixed algorithm).
        let algo = heuristic(true).or_else(|_| heuristic(false))?;
        Ok(Plan {
            desc,
            a,
            b,
            c,
            algo,
        })
    }

    /// Runs `gemm` with A = `a`, B = `b`, C = D = `d` on the stream, with the cached (or newly
    /// chosen) algorithm of its configuration.
    fn run<TA: Storage, TD: Storage>(
        &self,
        gemm: Gemm,
        a: &impl DevicePtr<TA>,
        b: &impl DevicePtr<TA>,
        d: &mut impl DevicePtrMut<TD>,
    ) -> Result<(), Error> {
        driver("cuCtxSetCurrent", || self.stream.context().bind_to_thread())?;
        let mut state = self
            .state
            .lock()
            .map_err(|_| Error::Invalid("cuBLASLt state poisoned by an earlier panic".into()))?;
        let state = &mut *state;
        let stream: &CudaStream = &self.stream;
        let (pa, _ra) = a.device_ptr(stream);
        let (pb, _rb) = b.device_ptr(stream);
        let (pd, _rd) = d.device_ptr_mut(stream);
        let (pw, _rw) = state.workspace.device_ptr_mut(stream);
        let key = PlanKey {
            gemm,
            align: [alignment(pa), alignment(pb), alignment(pd)],
        };
        let plan = match state.plans.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(self.plan(&key)?),
        };
        let plan = &*plan;
        let alpha = 1.0f32;
        let beta = if gemm.accumulate { 1.0f32 } else { 0.0f32 };
        cublas("cublasLtMatmul", || {
            // SAFETY: the descriptors match the buffers (lengths checked by the callers), the
            // pointers stay valid while their records are alive, the workspace is
            // `workspace_bytes` long and only used under the state lock.
            unsafe {
                lt::matmul(
                    self.handle,
                    plan.desc.0,
                    &alpha as *const f32 as *const c_void,
                    &beta as *const f32 as *const c_void,
                    pa as *const c_void,
                    plan.a.0,
                    pb as *const c_void,
                    plan.b.0,
                    pd as *const c_void,
                    plan.c.0,
                    pd as *mut c_void,
                    plan.c.0,
                    &plan.algo,
                    pw as *mut c_void,
                    self.workspace_bytes,
                    stream.cu_stream() as sys::cudaStream_t,
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_message_is_one_line_and_names_the_fix() {
        let msg = Error::NoCublasLt.to_string();
        assert!(!msg.contains('\n'));
        assert!(msg.contains(CUBLASLT_LIB) && msg.contains("LD_LIBRARY_PATH"));
        // Never panics, whether or not the library is here.
        match cublaslt_available() {
            Ok(()) => println!("cuBLASLt present"),
            Err(e) => println!("cuBLASLt probe (absent here): {e}"),
        }
    }

    #[test]
    fn alignment_classes() {
        assert_eq!(alignment(0x1000), 256);
        assert_eq!(alignment(0x1004), 4);
        assert_eq!(alignment(0x1002), 2);
        assert_eq!(alignment(0x1080), 128);
    }

    #[test]
    fn f32_inputs_with_bf16_output_are_rejected() {
        use crate::launch::Bf16;
        assert!(matches!(
            Blas::types::<f32, Bf16>("t"),
            Err(Error::Invalid(_))
        ));
        assert_eq!(
            Blas::types::<Bf16, f32>("t").unwrap(),
            (DType::Bf16, DType::F32)
        );
        assert_eq!(
            Blas::types::<Bf16, Bf16>("t").unwrap(),
            (DType::Bf16, DType::Bf16)
        );
        assert_eq!(
            Blas::types::<f32, f32>("t").unwrap(),
            (DType::F32, DType::F32)
        );
    }
}
