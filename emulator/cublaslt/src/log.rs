//! Why a call was refused, for whoever asked: cuBLASLt's logger settings
//! (`CUBLASLT_LOG_LEVEL` / `CUBLASLT_LOG_MASK` in the environment, or the `cublasLtLogger*`
//! calls) decide whether error messages go to stderr or to a callback. Off by default, as
//! in cuBLASLt. The status a call returns never depends on it.

use std::ffi::{c_char, c_int, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::status::{self, Fail};

/// `cublasLtLoggerCallback_t`.
pub type Callback = unsafe extern "C" fn(c_int, *const c_char, *const c_char);

/// Level 1 / mask bit 1: errors.
const ERROR: i32 = 1;

struct Settings {
    level: AtomicI32,
    mask: AtomicI32,
    disabled: AtomicBool,
    callback: Mutex<Option<Callback>>,
}

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let env = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<i32>().ok())
                .unwrap_or(0)
        };
        Settings {
            level: AtomicI32::new(env("CUBLASLT_LOG_LEVEL")),
            mask: AtomicI32::new(env("CUBLASLT_LOG_MASK")),
            disabled: AtomicBool::new(false),
            callback: Mutex::new(None),
        }
    })
}

pub fn set_level(level: i32) {
    settings().level.store(level, Ordering::Relaxed);
}

pub fn set_mask(mask: i32) {
    settings().mask.store(mask, Ordering::Relaxed);
}

/// Turns logging off for the rest of the process, whatever is set later.
pub fn force_disable() {
    settings().disabled.store(true, Ordering::Relaxed);
}

pub fn set_callback(callback: Option<Callback>) {
    *settings()
        .callback
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = callback;
}

fn errors_enabled() -> bool {
    let s = settings();
    !s.disabled.load(Ordering::Relaxed)
        && (s.level.load(Ordering::Relaxed) >= ERROR || s.mask.load(Ordering::Relaxed) & ERROR != 0)
}

/// Logs a refused or failed call of `function`, if errors are being logged.
pub fn refusal(function: &'static str, fail: &Fail) {
    if !errors_enabled() {
        return;
    }
    let name = status::name(fail.status).to_string_lossy();
    let message = format!("{name}: {} (ingot stand-in)", fail.why);
    let callback = *settings()
        .callback
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match callback {
        Some(cb) => {
            let f = CString::new(function).unwrap_or_default();
            let m = CString::new(message.replace('\0', " ")).unwrap_or_default();
            // SAFETY: the caller registered this callback for exactly these arguments; the
            // strings live for the call.
            unsafe { cb(ERROR, f.as_ptr(), m.as_ptr()) }
        }
        None => eprintln!("[cublasLt][{function}] {message}"),
    }
}
