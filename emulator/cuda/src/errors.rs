//! The context's sticky error. A fault in a kernel (an illegal address, a trap, ...) leaves a
//! real CUDA context unusable: every later call returns the same error until the process
//! ends. The stand-in does the same, for the whole process (ingot uses the one device's
//! primary context), and keeps the diagnostic of the fault so that `cuGetErrorString` can say
//! what happened, which a GPU cannot.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

use crate::status::{self, CuResult, SUCCESS};

static STICKY: AtomicI32 = AtomicI32::new(SUCCESS);
static DIAGNOSTIC: Mutex<Option<String>> = Mutex::new(None);

/// The sticky error, `SUCCESS` while there is none.
pub fn sticky() -> CuResult {
    STICKY.load(Ordering::SeqCst)
}

/// `Err(sticky error)` once the context is broken.
pub fn check() -> Result<(), CuResult> {
    match sticky() {
        SUCCESS => Ok(()),
        e => Err(e),
    }
}

/// Makes `code` sticky (the first fault wins, as on a GPU) and prints the diagnostic.
pub fn fault(code: CuResult, message: String) -> CuResult {
    let name = status::name(code).unwrap_or("CUDA_ERROR");
    eprintln!("ingot-emu: {name}: {message}");
    if STICKY
        .compare_exchange(SUCCESS, code, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        *DIAGNOSTIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
    }
    sticky()
}

/// The diagnostic of the fault that made the context sticky.
pub fn diagnostic() -> Option<String> {
    DIAGNOSTIC.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
