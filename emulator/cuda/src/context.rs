//! Contexts: the device's primary context (what cudarc's `CudaContext::new` retains) and
//! created ones, with a current context per host thread. They carry no state of their own:
//! memory, modules and the sticky error belong to the one device.

use std::cell::Cell;
use std::ffi::{c_int, c_uint};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::handles::Registry;
use crate::status::*;
use crate::{device, errors};

struct Context;

static CONTEXTS: Registry<Context> = Registry::new();
/// The primary context's handle (0 until first retained).
static PRIMARY: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

fn primary() -> usize {
    let h = PRIMARY.load(Ordering::SeqCst);
    if h != 0 {
        return h;
    }
    let new = CONTEXTS.insert(Context);
    match PRIMARY.compare_exchange(0, new, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => new,
        Err(existing) => {
            CONTEXTS.remove(new);
            existing
        }
    }
}

fn valid(ctx: usize) -> bool {
    CONTEXTS.get(ctx).is_some()
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut usize, dev: c_int) -> CuResult {
    if let Err(e) = device::check_device(dev) {
        return e;
    }
    if pctx.is_null() {
        return INVALID_VALUE;
    }
    *pctx = primary();
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: c_int) -> CuResult {
    // The primary context stays alive: buffers and modules are the device's, not its.
    match device::check_device(dev) {
        Ok(()) => SUCCESS,
        Err(e) => e,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v4(
    pctx: *mut usize,
    _params: *mut std::ffi::c_void,
    _flags: c_uint,
    dev: c_int,
) -> CuResult {
    if let Err(e) = device::check_device(dev) {
        return e;
    }
    if pctx.is_null() {
        return INVALID_VALUE;
    }
    let h = CONTEXTS.insert(Context);
    CURRENT.with(|c| c.set(h));
    *pctx = h;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: usize) -> CuResult {
    if ctx == PRIMARY.load(Ordering::SeqCst) || CONTEXTS.remove(ctx).is_none() {
        return INVALID_CONTEXT;
    }
    CURRENT.with(|c| {
        if c.get() == ctx {
            c.set(0)
        }
    });
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: usize) -> CuResult {
    if ctx != 0 && !valid(ctx) {
        return INVALID_CONTEXT;
    }
    CURRENT.with(|c| c.set(ctx));
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut usize) -> CuResult {
    if let Err(e) = device::check_init() {
        return e;
    }
    if pctx.is_null() {
        return INVALID_VALUE;
    }
    *pctx = CURRENT.with(Cell::get);
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPushCurrent_v2(ctx: usize) -> CuResult {
    cuCtxSetCurrent(ctx)
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(pctx: *mut usize) -> CuResult {
    if !pctx.is_null() {
        *pctx = CURRENT.with(Cell::get);
    }
    CURRENT.with(|c| c.set(0));
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut c_int) -> CuResult {
    if dev.is_null() {
        return INVALID_VALUE;
    }
    if CURRENT.with(Cell::get) == 0 {
        return INVALID_CONTEXT;
    }
    *dev = 0;
    SUCCESS
}

/// Everything ran when it was called, so a synchronize only reports the sticky error.
#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CuResult {
    errors::sticky()
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetApiVersion(ctx: usize, version: *mut c_uint) -> CuResult {
    if version.is_null() || (ctx != 0 && !valid(ctx)) {
        return INVALID_VALUE;
    }
    *version = device::DRIVER_VERSION as c_uint;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetFlags(flags: *mut c_uint) -> CuResult {
    if flags.is_null() {
        return INVALID_VALUE;
    }
    *flags = 0;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetFlags(_flags: c_uint) -> CuResult {
    SUCCESS
}
