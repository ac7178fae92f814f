//! The exported C entry points. Each body runs under [`entry`]: a refusal returns its
//! status (and is logged if cuBLASLt logging is on), a panic returns
//! `CUBLAS_STATUS_INTERNAL_ERROR` instead of unwinding into C.
//!
//! Handles and descriptors cross the boundary as `void *`, enums as their integer values
//! (an unexpected value is then refused, not undefined behaviour).

use std::ffi::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::descriptors::{self, Context, Kind, Layout, MatmulDesc, Preference};
use crate::driver::{self, DeviceMemory};
use crate::log;
use crate::matmul::{self, Pointers};
use crate::plan::{self, Algo, HeuristicResult};
use crate::status::{self, Fail, Res, INTERNAL_ERROR, SUCCESS};

/// `cublasLtGetVersion`: cuBLAS 13.0.0 as `major·10000 + minor·100 + patch`. Nothing in
/// ingot or cudarc checks it; it only has to look like the CUDA 13.0 library.
pub const VERSION: usize = 130_000;
/// `cublasLtGetCudartVersion`: the CUDA runtime 13.0 it was built against.
pub const CUDART_VERSION: usize = 13_000;

/// Runs an entry point's body: its status, its refusal logged, a panic contained.
fn entry(function: &'static str, body: impl FnOnce() -> Res<()>) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => SUCCESS,
        Ok(Err(fail)) => {
            log::refusal(function, &fail);
            fail.status
        }
        Err(_) => {
            log::refusal(function, &Fail::new(INTERNAL_ERROR, "panicked"));
            INTERNAL_ERROR
        }
    }
}

/// Writes a new object's pointer to `out`.
///
/// # Safety
/// `out` must be null or writable.
unsafe fn create_into<T: Kind>(out: *mut *mut c_void, obj: T) -> Res<()> {
    if out.is_null() {
        return Err(Fail::invalid(format!("no place to return the {}", T::WHAT)));
    }
    *out = descriptors::create(obj);
    Ok(())
}

/// Destroys a descriptor; destroying null does nothing, like `free(NULL)`.
fn destroy_descriptor<T: Kind>(ptr: *mut c_void) -> Res<()> {
    if ptr.is_null() {
        return Ok(());
    }
    descriptors::destroy::<T>(ptr)
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtCreate(handle: *mut *mut c_void) -> i32 {
    entry("cublasLtCreate", || create_into(handle, Context))
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtDestroy(handle: *mut c_void) -> i32 {
    entry("cublasLtDestroy", || {
        descriptors::destroy::<Context>(handle)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtMatmulDescCreate(
    desc: *mut *mut c_void,
    compute_type: u32,
    scale_type: u32,
) -> i32 {
    entry("cublasLtMatmulDescCreate", || {
        create_into(desc, MatmulDesc::new(compute_type, scale_type))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtMatmulDescDestroy(desc: *mut c_void) -> i32 {
    entry("cublasLtMatmulDescDestroy", || {
        destroy_descriptor::<MatmulDesc>(desc)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtMatmulDescSetAttribute(
    desc: *mut c_void,
    attr: u32,
    buf: *const c_void,
    size: usize,
) -> i32 {
    entry("cublasLtMatmulDescSetAttribute", || {
        descriptors::with(desc, |d: &mut MatmulDesc| d.set(attr, buf, size))?
    })
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtMatmulDescGetAttribute(
    desc: *mut c_void,
    attr: u32,
    buf: *mut c_void,
    size: usize,
    written: *mut usize,
) -> i32 {
    entry("cublasLtMatmulDescGetAttribute", || {
        descriptors::with(desc, |d: &mut MatmulDesc| d.get(attr, buf, size, written))?
    })
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtMatrixLayoutCreate(
    layout: *mut *mut c_void,
    data_type: u32,
    rows: u64,
    cols: u64,
    ld: i64,
) -> i32 {
    // The leading dimension is checked when the layout is used (see `plan::validate`).
    entry("cublasLtMatrixLayoutCreate", || {
        create_into(layout, Layout::new(data_type, rows, cols, ld))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtMatrixLayoutDestroy(layout: *mut c_void) -> i32 {
    entry("cublasLtMatrixLayoutDestroy", || {
        destroy_descriptor::<Layout>(layout)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtMatrixLayoutSetAttribute(
    layout: *mut c_void,
    attr: u32,
    buf: *const c_void,
    size: usize,
) -> i32 {
    entry("cublasLtMatrixLayoutSetAttribute", || {
        descriptors::with(layout, |l: &mut Layout| l.set(attr, buf, size))?
    })
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtMatrixLayoutGetAttribute(
    layout: *mut c_void,
    attr: u32,
    buf: *mut c_void,
    size: usize,
    written: *mut usize,
) -> i32 {
    entry("cublasLtMatrixLayoutGetAttribute", || {
        descriptors::with(layout, |l: &mut Layout| l.get(attr, buf, size, written))?
    })
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtMatmulPreferenceCreate(pref: *mut *mut c_void) -> i32 {
    entry("cublasLtMatmulPreferenceCreate", || {
        create_into(pref, Preference::default())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtMatmulPreferenceDestroy(pref: *mut c_void) -> i32 {
    entry("cublasLtMatmulPreferenceDestroy", || {
        destroy_descriptor::<Preference>(pref)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtMatmulPreferenceSetAttribute(
    pref: *mut c_void,
    attr: u32,
    buf: *const c_void,
    size: usize,
) -> i32 {
    entry("cublasLtMatmulPreferenceSetAttribute", || {
        descriptors::with(pref, |p: &mut Preference| p.set(attr, buf, size))?
    })
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtMatmulPreferenceGetAttribute(
    pref: *mut c_void,
    attr: u32,
    buf: *mut c_void,
    size: usize,
    written: *mut usize,
) -> i32 {
    entry("cublasLtMatmulPreferenceGetAttribute", || {
        descriptors::with(pref, |p: &mut Preference| p.get(attr, buf, size, written))?
    })
}

/// The descriptor and layouts of one matmul, checked against each other.
fn problem(
    handle: *mut c_void,
    desc: *mut c_void,
    layouts: [*mut c_void; 4],
) -> Res<plan::Problem> {
    descriptors::copy::<Context>(handle)?;
    let desc: MatmulDesc = descriptors::copy(desc)?;
    let [a, b, c, d] = layouts;
    let l = |p| descriptors::copy::<Layout>(p);
    plan::validate(&desc, &l(a)?, &l(b)?, &l(c)?, &l(d)?)
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cublasLtMatmulAlgoGetHeuristic(
    handle: *mut c_void,
    desc: *mut c_void,
    a_desc: *mut c_void,
    b_desc: *mut c_void,
    c_desc: *mut c_void,
    d_desc: *mut c_void,
    pref: *mut c_void,
    requested: c_int,
    results: *mut HeuristicResult,
    returned: *mut c_int,
) -> i32 {
    entry("cublasLtMatmulAlgoGetHeuristic", || {
        if !returned.is_null() {
            *returned = 0;
        }
        let problem = problem(handle, desc, [a_desc, b_desc, c_desc, d_desc])?;
        let pref: Preference = descriptors::copy(pref)?;
        if requested < 1 || results.is_null() || returned.is_null() {
            return Err(Fail::invalid(
                "needs room for at least one result and a returnAlgoCount",
            ));
        }
        // The one algorithm needs no workspace, so any MAX_WORKSPACE_BYTES fits it, and it
        // reduces nothing across splits, so any REDUCTION_SCHEME_MASK admits it.
        let algo = Algo::for_preference(&problem, pref.min_alignments()).ok_or_else(|| {
            Fail::not_supported(format!(
                "no algorithm: the preference's min alignments {:?} (A, B, C, D) are below the element sizes {:?}",
                pref.min_alignments(),
                problem.combo.elem_sizes()
            ))
        })?;
        results.write_unaligned(HeuristicResult::of(&algo));
        *returned = 1;
        Ok(())
    })
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cublasLtMatmulAlgoCheck(
    handle: *mut c_void,
    desc: *mut c_void,
    a_desc: *mut c_void,
    b_desc: *mut c_void,
    c_desc: *mut c_void,
    d_desc: *mut c_void,
    algo: *const [u64; 8],
    result: *mut HeuristicResult,
) -> i32 {
    entry("cublasLtMatmulAlgoCheck", || {
        let problem = problem(handle, desc, [a_desc, b_desc, c_desc, d_desc])?;
        if algo.is_null() || result.is_null() {
            return Err(Fail::invalid("algo and result must not be null"));
        }
        let algo = Algo::decode(&algo.read_unaligned())?;
        if algo.combo != problem.combo {
            return Err(Fail::invalid("the algorithm was chosen for other types"));
        }
        result.write_unaligned(HeuristicResult::of(&algo));
        Ok(())
    })
}

/// The arguments of `cublasLtMatmul`.
#[derive(Debug, Clone, Copy)]
pub struct MatmulCall {
    pub handle: *mut c_void,
    pub desc: *mut c_void,
    pub alpha: *const c_void,
    pub beta: *const c_void,
    pub ptrs: Pointers,
    pub layouts: [*mut c_void; 4],
    pub algo: *const [u64; 8],
    pub workspace_size: usize,
}

/// `cublasLtMatmul` with the device-memory oracle and thread count given (the export passes
/// the stand-in driver, if loaded, and the default split).
///
/// # Safety
/// As `cublasLtMatmul`: every pointer valid for what its descriptor says.
pub unsafe fn matmul_with(
    call: &MatmulCall,
    mem: Option<&dyn DeviceMemory>,
    threads: Option<usize>,
) -> Res<()> {
    let problem = problem(call.handle, call.desc, call.layouts)?;
    if call.alpha.is_null() || call.beta.is_null() {
        return Err(Fail::invalid("alpha and beta must not be null"));
    }
    // Host pointers (POINTER_MODE_HOST is the only mode accepted) to the f32 scale type.
    let alpha = call.alpha.cast::<f32>().read_unaligned();
    let beta = call.beta.cast::<f32>().read_unaligned();
    let algo = match call.algo.is_null() {
        true => None,
        false => Some(Algo::decode(&call.algo.read_unaligned())?),
    };
    // `call.workspace_size`: the algorithm needs no workspace, so every size is enough.
    matmul::run(&problem, alpha, beta, call.ptrs, algo, mem, threads)
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cublasLtMatmul(
    handle: *mut c_void,
    desc: *mut c_void,
    alpha: *const c_void,
    a: *const c_void,
    a_desc: *mut c_void,
    b: *const c_void,
    b_desc: *mut c_void,
    beta: *const c_void,
    c: *const c_void,
    c_desc: *mut c_void,
    d: *mut c_void,
    d_desc: *mut c_void,
    algo: *const [u64; 8],
    _workspace: *mut c_void,
    workspace_size: usize,
    _stream: *mut c_void,
) -> i32 {
    // Synchronous: the result is in D when this returns, so the stream has nothing to order.
    let call = MatmulCall {
        handle,
        desc,
        alpha,
        beta,
        ptrs: Pointers { a, b, c, d },
        layouts: [a_desc, b_desc, c_desc, d_desc],
        algo,
        workspace_size,
    };
    entry("cublasLtMatmul", || {
        let mem = driver::driver().map(|d| d as &dyn DeviceMemory);
        matmul_with(&call, mem, None)
    })
}

#[no_mangle]
pub extern "C" fn cublasLtGetVersion() -> usize {
    VERSION
}

#[no_mangle]
pub extern "C" fn cublasLtGetCudartVersion() -> usize {
    CUDART_VERSION
}

#[no_mangle]
pub unsafe extern "C" fn cublasLtGetProperty(kind: c_int, value: *mut c_int) -> i32 {
    entry("cublasLtGetProperty", || {
        // libraryPropertyType: MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL of 13.0.0.
        let v = match kind {
            0 => 13,
            1 | 2 => 0,
            _ => return Err(Fail::invalid(format!("library property {kind}"))),
        };
        if value.is_null() {
            return Err(Fail::invalid("value is null"));
        }
        *value = v;
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn cublasLtGetStatusName(status: i32) -> *const c_char {
    catch_unwind(|| status::name(status).as_ptr()).unwrap_or(c"CUBLAS_STATUS_UNKNOWN".as_ptr())
}

#[no_mangle]
pub extern "C" fn cublasLtGetStatusString(status: i32) -> *const c_char {
    catch_unwind(|| status::string(status).as_ptr()).unwrap_or(c"CUBLAS_STATUS_UNKNOWN".as_ptr())
}

/// The heuristics cache capacity: stored and reported back (the stand-in's heuristic is
/// instant, so it caches nothing).
static CACHE_CAPACITY: AtomicUsize = AtomicUsize::new(8192);

#[no_mangle]
pub unsafe extern "C" fn cublasLtHeuristicsCacheGetCapacity(capacity: *mut usize) -> i32 {
    entry("cublasLtHeuristicsCacheGetCapacity", || {
        if capacity.is_null() {
            return Err(Fail::invalid("capacity is null"));
        }
        *capacity = CACHE_CAPACITY.load(Ordering::Relaxed);
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn cublasLtHeuristicsCacheSetCapacity(capacity: usize) -> i32 {
    CACHE_CAPACITY.store(capacity, Ordering::Relaxed);
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cublasLtLoggerSetLevel(level: c_int) -> i32 {
    entry("cublasLtLoggerSetLevel", || {
        if !(0..=5).contains(&level) {
            return Err(Fail::invalid(format!("log level {level} (0..=5)")));
        }
        log::set_level(level);
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn cublasLtLoggerSetMask(mask: c_int) -> i32 {
    entry("cublasLtLoggerSetMask", || {
        log::set_mask(mask);
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn cublasLtLoggerForceDisable() -> i32 {
    entry("cublasLtLoggerForceDisable", || {
        log::force_disable();
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn cublasLtLoggerSetCallback(callback: Option<log::Callback>) -> i32 {
    entry("cublasLtLoggerSetCallback", || {
        log::set_callback(callback);
        Ok(())
    })
}
