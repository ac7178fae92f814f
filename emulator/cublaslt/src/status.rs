//! `cublasStatus_t` values, the failure type the entry points return internally, and the
//! names and strings of `cublasLtGetStatusName` / `cublasLtGetStatusString`.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::Mutex;

pub const SUCCESS: i32 = 0;
pub const NOT_INITIALIZED: i32 = 1;
pub const ALLOC_FAILED: i32 = 3;
pub const INVALID_VALUE: i32 = 7;
pub const ARCH_MISMATCH: i32 = 8;
pub const MAPPING_ERROR: i32 = 11;
pub const EXECUTION_FAILED: i32 = 13;
pub const INTERNAL_ERROR: i32 = 14;
pub const NOT_SUPPORTED: i32 = 15;
pub const LICENSE_ERROR: i32 = 16;

/// A refused or failed call: the status it returns and, for the log, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    pub status: i32,
    pub why: String,
}

impl Fail {
    pub fn new(status: i32, why: impl Into<String>) -> Fail {
        Fail {
            status,
            why: why.into(),
        }
    }
    pub fn invalid(why: impl Into<String>) -> Fail {
        Fail::new(INVALID_VALUE, why)
    }
    pub fn not_supported(why: impl Into<String>) -> Fail {
        Fail::new(NOT_SUPPORTED, why)
    }
    pub fn not_initialized(why: impl Into<String>) -> Fail {
        Fail::new(NOT_INITIALIZED, why)
    }
    pub fn execution_failed(why: impl Into<String>) -> Fail {
        Fail::new(EXECUTION_FAILED, why)
    }
}

pub type Res<T> = Result<T, Fail>;

/// The enumerator's name, as cuBLAS spells it.
pub fn name(status: i32) -> &'static CStr {
    match status {
        SUCCESS => c"CUBLAS_STATUS_SUCCESS",
        NOT_INITIALIZED => c"CUBLAS_STATUS_NOT_INITIALIZED",
        ALLOC_FAILED => c"CUBLAS_STATUS_ALLOC_FAILED",
        INVALID_VALUE => c"CUBLAS_STATUS_INVALID_VALUE",
        ARCH_MISMATCH => c"CUBLAS_STATUS_ARCH_MISMATCH",
        MAPPING_ERROR => c"CUBLAS_STATUS_MAPPING_ERROR",
        EXECUTION_FAILED => c"CUBLAS_STATUS_EXECUTION_FAILED",
        INTERNAL_ERROR => c"CUBLAS_STATUS_INTERNAL_ERROR",
        NOT_SUPPORTED => c"CUBLAS_STATUS_NOT_SUPPORTED",
        LICENSE_ERROR => c"CUBLAS_STATUS_LICENSE_ERROR",
        _ => c"CUBLAS_STATUS_UNKNOWN",
    }
}

/// The name followed by a short explanation in our own words. For `NOT_SUPPORTED` after a
/// call of an entry point the stand-in lacks, the explanation names that entry point.
pub fn string(status: i32) -> &'static CStr {
    if status == NOT_SUPPORTED {
        if let Some(missing) = ingot_emu_common::last_missing() {
            return missing_string(missing);
        }
    }
    match status {
        SUCCESS => c"CUBLAS_STATUS_SUCCESS (the call succeeded)",
        NOT_INITIALIZED => {
            c"CUBLAS_STATUS_NOT_INITIALIZED (the cuBLASLt handle is null, destroyed or not a handle)"
        }
        ALLOC_FAILED => c"CUBLAS_STATUS_ALLOC_FAILED (a host allocation failed)",
        INVALID_VALUE => {
            c"CUBLAS_STATUS_INVALID_VALUE (an argument is null, out of range or inconsistent with another)"
        }
        ARCH_MISMATCH => c"CUBLAS_STATUS_ARCH_MISMATCH (the device lacks a needed feature)",
        MAPPING_ERROR => c"CUBLAS_STATUS_MAPPING_ERROR (device memory could not be accessed)",
        EXECUTION_FAILED => {
            c"CUBLAS_STATUS_EXECUTION_FAILED (the computation could not run: bad device memory or an earlier device error)"
        }
        INTERNAL_ERROR => c"CUBLAS_STATUS_INTERNAL_ERROR (the stand-in hit an internal error)",
        NOT_SUPPORTED => {
            c"CUBLAS_STATUS_NOT_SUPPORTED (the configuration is not supported by the ingot stand-in)"
        }
        LICENSE_ERROR => c"CUBLAS_STATUS_LICENSE_ERROR (a license check failed)",
        _ => c"CUBLAS_STATUS_UNKNOWN (not a cublasStatus_t value)",
    }
}

/// "CUBLAS_STATUS_NOT_SUPPORTED (NAME is not implemented by the ingot stand-in)", built once
/// per name and kept for the life of the process (the caller keeps the pointer).
fn missing_string(missing: &'static str) -> &'static CStr {
    static CACHE: Mutex<Option<HashMap<&'static str, &'static CStr>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    map.entry(missing).or_insert_with(|| {
        let text = format!(
            "CUBLAS_STATUS_NOT_SUPPORTED ({missing} is not implemented by the ingot stand-in)"
        );
        // An entry point name has no NUL; fall back to the plain name if it somehow did.
        let owned = CString::new(text).unwrap_or_else(|_| c"CUBLAS_STATUS_NOT_SUPPORTED".into());
        Box::leak(owned.into_boxed_c_str())
    })
}
