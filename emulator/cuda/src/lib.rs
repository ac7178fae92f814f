//! A stand-in `libcuda.so.1`: the CUDA driver API that ingot reaches through `cudarc`,
//! executed on the CPU.
//!
//! - [`device`]: one sm_90 device with 132 SMs and the host's memory, named as a stand-in.
//! - [`memory`]: device memory is host memory, with guard pages and canaries around every
//!   buffer and NaN bytes in every new one ([`memory_api`]: the copy and fill entry points).
//! - [`context`], [`streams`]: contexts, streams and events; everything runs synchronously.
//! - [`module`]: loads the images of the stand-in NVRTC (a shared object each).
//! - [`launch`]: checks a launch against the device's limits, runs the grid in the module's
//!   SIMT runtime (`emulator/nvrtc/device/simt.h`), reports faults as the driver would.
//! - [`errors`]: the sticky error a fault leaves, as on a GPU.
//!
//! Every other driver entry point that `cudarc` declares is exported too, returning
//! `CUDA_ERROR_NOT_SUPPORTED` and naming itself (on stderr and in `cuGetErrorString`), so a
//! call the stand-in does not cover is an error, never a missing symbol (on which `cudarc`
//! panics).
#![allow(clippy::missing_safety_doc)] // every export follows the CUDA driver's documented contract

pub mod context;
pub mod device;
pub mod errors;
pub mod handles;
pub mod launch;
pub mod memory;
pub mod memory_api;
pub mod module;
pub mod status;
pub mod streams;

mod entry_points;

use std::ffi::{c_char, CString};
use std::sync::Mutex;

use status::*;

/// Runs an entry point's body, turning a panic (a bug of the stand-in) into
/// `CUDA_ERROR_UNKNOWN` with a message, since unwinding out of an `extern "C"` function would
/// abort the process.
pub(crate) fn guarded(name: &str, f: impl FnOnce() -> CuResult) -> CuResult {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        eprintln!("ingot-emu: {name}: the stand-in panicked (a bug of the emulator)");
        999
    })
}

/// Keeps every error string handed out alive for the life of the process.
fn interned(text: String) -> *const c_char {
    static STRINGS: Mutex<Vec<CString>> = Mutex::new(Vec::new());
    let mut strings = STRINGS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = strings.iter().find(|s| s.to_bytes() == text.as_bytes()) {
        return s.as_ptr();
    }
    let s = CString::new(text.replace('\0', " ")).unwrap_or_default();
    let p = s.as_ptr();
    strings.push(s);
    p
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(error: CuResult, out: *mut *const c_char) -> CuResult {
    if out.is_null() {
        return INVALID_VALUE;
    }
    match status::name(error) {
        Some(n) => {
            *out = interned(n.to_string());
            SUCCESS
        }
        None => INVALID_VALUE,
    }
}

/// The driver's description, and what the stand-in knows beyond it: the diagnostic of the
/// fault that made the context sticky, or the entry point that is not implemented.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(error: CuResult, out: *mut *const c_char) -> CuResult {
    if out.is_null() {
        return INVALID_VALUE;
    }
    let Some(text) = status::description(error) else {
        return INVALID_VALUE;
    };
    let detail = if error == NOT_SUPPORTED {
        ingot_emu_common::last_missing()
            .map(|name| format!("{name} is not implemented by the ingot stand-in"))
    } else if error != SUCCESS && error == errors::sticky() {
        errors::diagnostic().map(|d| format!("emulated: {d}"))
    } else {
        None
    };
    *out = interned(match detail {
        Some(d) => format!("{text} ({d})"),
        None => text.to_string(),
    });
    SUCCESS
}

/// What `cuGetErrorString` says of `code` (for tests and messages of the stand-in itself).
pub fn error_string(code: CuResult) -> String {
    let mut p: *const c_char = std::ptr::null();
    // SAFETY: a valid out-pointer; the string it receives lives for the process.
    match unsafe { cuGetErrorString(code, &mut p) } {
        SUCCESS if !p.is_null() => unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned(),
        _ => format!("CUresult {code}"),
    }
}
