//! The one emulated device: an sm_90 part with 132 SMs, the limits of an H200, and as much
//! memory as the host has (so the engine's own memory checks see real numbers).
//!
//! `CUDA_VISIBLE_DEVICES` set to an empty value or `-1` hides it, as it hides a GPU.

use std::ffi::{c_char, c_int, c_uint};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::status::*;

/// The name `cuDeviceGetName` gives: it says plainly that this is not a GPU.
pub const NAME: &str = "ingot emulated CUDA device (CPU stand-in for an sm_90 GPU, not a GPU)";
/// `cuDriverGetVersion`: the CUDA 13.0 driver API that the stand-in implements.
pub const DRIVER_VERSION: c_int = 13000;
pub const COMPUTE_CAPABILITY: (c_int, c_int) = (9, 0);
pub const MULTIPROCESSORS: c_int = 132;
pub const MAX_THREADS_PER_BLOCK: u32 = 1024;
pub const MAX_BLOCK_DIM: [u32; 3] = [1024, 1024, 64];
pub const MAX_GRID_DIM: [u32; 3] = [i32::MAX as u32, 65535, 65535];
/// Shared memory per block without opting in, and the most a kernel may opt in to.
pub const SHARED_PER_BLOCK: u32 = 48 << 10;
pub const SHARED_PER_BLOCK_OPTIN: u32 = 232_448;

static INITIALIZED: AtomicBool = AtomicBool::new(false);

fn visible() -> bool {
    !matches!(
        std::env::var("CUDA_VISIBLE_DEVICES")
            .as_deref()
            .map(str::trim),
        Ok("") | Ok("-1")
    )
}

/// `Err(NOT_INITIALIZED)` before `cuInit`, as the driver.
pub fn check_init() -> Result<(), CuResult> {
    if INITIALIZED.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(NOT_INITIALIZED)
    }
}

/// `Ok` for device 0 after `cuInit`.
pub fn check_device(dev: c_int) -> Result<(), CuResult> {
    check_init()?;
    if dev == 0 && visible() {
        Ok(())
    } else {
        Err(INVALID_DEVICE)
    }
}

/// Bytes of host memory: `(total, available)` from `/proc/meminfo`.
pub fn host_memory() -> (usize, usize) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    let total = field("MemTotal:").unwrap_or(0);
    (total, field("MemAvailable:").unwrap_or(total))
}

/// The value of device attribute `attrib` (its `CUdevice_attribute` number), or `None` for an
/// attribute the stand-in does not model.
pub fn attribute(attrib: c_int) -> Option<c_int> {
    let [bx, by, bz] = MAX_BLOCK_DIM;
    let [gx, gy, gz] = MAX_GRID_DIM;
    Some(match attrib {
        1 => MAX_THREADS_PER_BLOCK as c_int,
        2 => bx as c_int,
        3 => by as c_int,
        4 => bz as c_int,
        5 => gx as c_int,
        6 => gy as c_int,
        7 => gz as c_int,
        8 => SHARED_PER_BLOCK as c_int,
        9 => 65536,      // constant memory
        10 => 32,        // warp size
        11 => i32::MAX,  // max pitch
        12 => 65536,     // registers per block
        13 => 1_980_000, // clock, kHz
        14 => 512,       // texture alignment
        15 => 1,         // copy/compute overlap
        16 => MULTIPROCESSORS,
        17 => 0,           // no kernel run-time limit
        18 => 0,           // not integrated
        19 => 1,           // can map host memory
        20 => 0,           // default compute mode
        31 => 1,           // concurrent kernels
        32 => 0,           // ECC
        33 | 34 | 50 => 0, // PCI bus, device, domain
        35 => 0,           // TCC
        36 => 2_619_000,   // memory clock, kHz
        37 => 6144,        // bus width, bits
        38 => 50 << 20,    // L2 bytes
        39 => 2048,        // threads per SM
        40 => 3,           // copy engines
        41 => 1,           // unified addressing
        75 => COMPUTE_CAPABILITY.0,
        76 => COMPUTE_CAPABILITY.1,
        78 => 1,       // stream priorities
        79 | 80 => 1,  // L1 caching
        81 => 233_472, // shared memory per SM
        82 => 65536,   // registers per SM
        83 => 1,       // managed memory
        84 | 85 => 0,  // multi-GPU board
        86 => 0,       // host native atomics
        87 => 2,       // single:double ratio
        88 | 89 => 0,  // pageable memory access
        90 => 1,       // compute preemption
        95 | 96 => 1,  // cooperative launch
        97 => SHARED_PER_BLOCK_OPTIN as c_int,
        106 => 32,   // blocks per SM
        111 => 1024, // reserved shared memory per block
        115 => 1,    // memory pools (cuMemAllocAsync), as on the H200
        120 => 1,    // cluster launch
        _ => return None,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CuResult {
    if flags != 0 {
        return INVALID_VALUE;
    }
    if !visible() {
        return NO_DEVICE;
    }
    INITIALIZED.store(true, Ordering::SeqCst);
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CuResult {
    if version.is_null() {
        return INVALID_VALUE;
    }
    *version = DRIVER_VERSION;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CuResult {
    if let Err(e) = check_init() {
        return e;
    }
    if count.is_null() {
        return INVALID_VALUE;
    }
    *count = c_int::from(visible());
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(dev: *mut c_int, ordinal: c_int) -> CuResult {
    if let Err(e) = check_device(ordinal) {
        return e;
    }
    if dev.is_null() {
        return INVALID_VALUE;
    }
    *dev = ordinal;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: c_int) -> CuResult {
    if let Err(e) = check_device(dev) {
        return e;
    }
    if name.is_null() || len <= 0 {
        return INVALID_VALUE;
    }
    let n = NAME.len().min(len as usize - 1);
    std::ptr::copy_nonoverlapping(NAME.as_ptr().cast::<c_char>(), name, n);
    *name.add(n) = 0;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    pi: *mut c_int,
    attrib: c_int,
    dev: c_int,
) -> CuResult {
    if let Err(e) = check_device(dev) {
        return e;
    }
    if pi.is_null() {
        return INVALID_VALUE;
    }
    match attribute(attrib) {
        Some(v) => {
            *pi = v;
            SUCCESS
        }
        None => {
            eprintln!("ingot-emu: device attribute {attrib} is not modelled by the stand-in");
            INVALID_VALUE
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceComputeCapability(
    major: *mut c_int,
    minor: *mut c_int,
    dev: c_int,
) -> CuResult {
    if let Err(e) = check_device(dev) {
        return e;
    }
    if major.is_null() || minor.is_null() {
        return INVALID_VALUE;
    }
    (*major, *minor) = COMPUTE_CAPABILITY;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: c_int) -> CuResult {
    if let Err(e) = check_device(dev) {
        return e;
    }
    if bytes.is_null() {
        return INVALID_VALUE;
    }
    *bytes = host_memory().0;
    SUCCESS
}

/// A fixed UUID spelling "ingot-emu device".
const UUID: [u8; 16] = *b"ingot-emu device";

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut u8, dev: c_int) -> CuResult {
    if let Err(e) = check_device(dev) {
        return e;
    }
    if uuid.is_null() {
        return INVALID_VALUE;
    }
    std::ptr::copy_nonoverlapping(UUID.as_ptr(), uuid, 16);
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut u8, dev: c_int) -> CuResult {
    cuDeviceGetUuid(uuid, dev)
}
