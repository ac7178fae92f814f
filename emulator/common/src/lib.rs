//! What the stand-in CUDA libraries (`emulator/cuda`, `emulator/nvrtc`, `emulator/cublaslt`)
//! share:
//!
//! - [`image`]: the stand-in "CUBIN" that the NVRTC stand-in returns and the driver stand-in
//!   loads (a header, the kernels' metadata, a host shared object);
//! - [`abi`]: the C layouts through which the driver stand-in calls into such a module (the
//!   SIMT runtime in `emulator/nvrtc/device/simt.h` has the same ones);
//! - [`not_implemented`]: the entry points a library exports without implementing them, each
//!   returning an error status that names it instead of leaving the symbol out (a missing
//!   symbol makes `cudarc` panic).

pub mod abi;
pub mod image;

use std::collections::HashSet;
use std::sync::Mutex;

/// The last entry point called that the stand-in does not implement (for the error string).
static LAST_MISSING: Mutex<Option<&'static str>> = Mutex::new(None);

/// Records a call of an entry point that is not implemented: its name is kept for the
/// library's error string and printed once to stderr.
pub fn record_missing(library: &str, name: &'static str) {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    *LAST_MISSING.lock().unwrap_or_else(|e| e.into_inner()) = Some(name);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.get_or_insert_with(HashSet::new).insert(name) {
        eprintln!("ingot-emu: {library}: {name} is not implemented by the stand-in (it returned an error)");
    }
}

/// The name recorded by the last [`record_missing`], if any.
pub fn last_missing() -> Option<&'static str> {
    *LAST_MISSING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Exports each named C entry point as a function that records the call
/// ([`record_missing`]) and returns `$status`. Arguments are ignored: on x86-64 a C caller
/// cleans up its own arguments, so a function taking none may stand in for any signature
/// returning an `int`-sized status.
#[macro_export]
macro_rules! not_implemented {
    ($library:literal, $status:expr; $($name:ident),* $(,)?) => {
        $(
            #[no_mangle]
            pub extern "C" fn $name() -> i32 {
                $crate::record_missing($library, stringify!($name));
                $status
            }
        )*
    };
}
