//! Failures and the message `ncclGetLastError` returns.
//!
//! A message is kept twice: per communicator (so that, with ranks as threads of one process,
//! each rank reads its own) and per thread (for failures before a communicator exists, as in
//! `ncclCommInitRank`). Messages are interned for the life of the process, so a pointer once
//! handed out never dangles, even after the communicator is destroyed; identical messages are
//! stored once, so a caller retrying a failing call does not grow the set.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{c_char, CStr, CString};
use std::sync::Mutex;

use crate::status::*;

/// An error status and the one-line message that explains it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: NcclResult,
    pub message: String,
}

impl Failure {
    pub fn new(code: NcclResult, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(INVALID_ARGUMENT, message)
    }
    pub fn invalid_usage(message: impl Into<String>) -> Self {
        Self::new(INVALID_USAGE, message)
    }
    pub fn system(message: impl Into<String>) -> Self {
        Self::new(SYSTEM_ERROR, message)
    }
    pub fn remote(message: impl Into<String>) -> Self {
        Self::new(REMOTE_ERROR, message)
    }
}

thread_local! {
    static THREAD_LAST: Cell<Option<&'static CStr>> = const { Cell::new(None) };
}

/// Keeps `text` alive for the life of the process and returns it as a C string.
pub fn intern(text: &str) -> &'static CStr {
    static STRINGS: Mutex<Option<HashSet<&'static CStr>>> = Mutex::new(None);
    let owned = CString::new(text.replace('\0', " ")).unwrap_or_default();
    let mut strings = STRINGS.lock().unwrap_or_else(|e| e.into_inner());
    let set = strings.get_or_insert_with(HashSet::new);
    if let Some(s) = set.get(owned.as_c_str()) {
        return s;
    }
    let leaked: &'static CStr = Box::leak(owned.into_boxed_c_str());
    set.insert(leaked);
    leaked
}

/// Records `failure` as this thread's last error (and prints it when `NCCL_DEBUG` asks for
/// warnings, as NCCL does); returns the interned message for the communicator to keep.
pub fn record(failure: &Failure) -> &'static CStr {
    let message = intern(&failure.message);
    THREAD_LAST.with(|l| l.set(Some(message)));
    if debug_warnings() {
        eprintln!("ingot-emu: nccl: WARN {}", failure.message);
    }
    message
}

/// This thread's last error message, or the empty string.
pub fn thread_last() -> *const c_char {
    THREAD_LAST.with(|l| l.get()).unwrap_or(c"").as_ptr()
}

fn debug_warnings() -> bool {
    matches!(
        std::env::var("NCCL_DEBUG")
            .ok()
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref(),
        Some("WARN" | "INFO" | "TRACE")
    )
}
