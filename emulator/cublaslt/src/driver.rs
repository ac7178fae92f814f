//! The hooks into the stand-in `libcuda.so.1` (`emulator/cuda`), where device memory is
//! host memory: before a GEMM touches a matrix, the driver is asked whether the matrix's
//! bytes lie inside one live device allocation, and a matrix that does not is reported as
//! the illegal address a GPU would fault on.
//!
//! The driver is looked up among the libraries already loaded (`RTLD_NOLOAD`): cudarc opens
//! it before any cuBLASLt call can have device pointers to pass. With no such library, or a
//! library without the hooks (a real driver), there is nothing to ask and the checks are
//! skipped.

use std::ffi::{c_char, CString};
use std::sync::OnceLock;

use libloading::os::unix::Library;

/// `CUDA_ERROR_ILLEGAL_ADDRESS`, what a GPU reports for an access outside its allocations.
pub const CUDA_ERROR_ILLEGAL_ADDRESS: i32 = 700;

/// What a matmul needs to know about device memory (a trait so tests can stand in for the
/// driver).
pub trait DeviceMemory: Sync {
    /// True when the context already has a sticky error (nothing may run any more).
    fn sticky_error(&self) -> bool;
    /// True when `[ptr, ptr + bytes)` lies inside one live allocation.
    fn contains(&self, ptr: u64, bytes: u64) -> bool;
    /// Records a fault as the device would: the error becomes sticky in the context.
    fn report_fault(&self, cuda_result: i32, message: &str);
}

type CheckRange = unsafe extern "C" fn(u64, u64) -> i32;
type ReportFault = unsafe extern "C" fn(i32, *const c_char);
type StickyError = unsafe extern "C" fn() -> i32;

/// The stand-in driver's hooks.
pub struct Driver {
    check_range: CheckRange,
    report_fault: ReportFault,
    sticky_error: StickyError,
    /// Keeps the driver loaded while the function pointers are in use.
    _lib: Library,
}

impl DeviceMemory for Driver {
    fn sticky_error(&self) -> bool {
        // SAFETY: the stand-in driver's hook takes no arguments and only reads its state.
        unsafe { (self.sticky_error)() != 0 }
    }

    fn contains(&self, ptr: u64, bytes: u64) -> bool {
        // SAFETY: plain integers in, a status out.
        unsafe { (self.check_range)(ptr, bytes) == 0 }
    }

    fn report_fault(&self, cuda_result: i32, message: &str) {
        let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
        // SAFETY: a valid NUL-terminated string, alive for the call.
        unsafe { (self.report_fault)(cuda_result, message.as_ptr()) }
    }
}

/// The stand-in driver, if it is loaded (looked up once).
pub fn driver() -> Option<&'static Driver> {
    static DRIVER: OnceLock<Option<Driver>> = OnceLock::new();
    DRIVER.get_or_init(load).as_ref()
}

fn load() -> Option<Driver> {
    // SAFETY: RTLD_NOLOAD only returns a library that is already loaded (so no initialiser
    // runs), and the symbols are the stand-in driver's documented hooks with these C
    // signatures.
    unsafe {
        let lib = Library::open(Some("libcuda.so.1"), libc::RTLD_NOLOAD | libc::RTLD_NOW).ok()?;
        let check_range = *lib.get::<CheckRange>("ingot_emu_check_range").ok()?;
        let report_fault = *lib.get::<ReportFault>("ingot_emu_report_fault").ok()?;
        let sticky_error = *lib.get::<StickyError>("ingot_emu_sticky_error").ok()?;
        Some(Driver {
            check_range,
            report_fault,
            sticky_error,
            _lib: lib,
        })
    }
}
