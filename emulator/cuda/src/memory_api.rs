//! The driver's memory entry points over [`crate::memory`]: allocation, copies and fills (all
//! synchronous: the stream argument orders nothing, since everything runs in call order), and
//! the hooks the cuBLASLt stand-in uses to check its operands and report a fault.

use std::ffi::{c_char, c_uint, c_void, CStr};

use crate::status::*;
use crate::{device, errors, memory, streams};

fn code(r: Result<(), CuResult>) -> CuResult {
    r.err().unwrap_or(SUCCESS)
}

unsafe fn alloc_into(dptr: *mut u64, bytes: usize) -> CuResult {
    if let Err(e) = device::check_init() {
        return e;
    }
    if dptr.is_null() {
        return INVALID_VALUE;
    }
    match memory::allocate(bytes) {
        Ok(p) => {
            *dptr = p;
            SUCCESS
        }
        Err(e) => e,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut u64, bytes: usize) -> CuResult {
    alloc_into(dptr, bytes)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(dptr: *mut u64, bytes: usize, stream: usize) -> CuResult {
    if let Err(e) = streams::check_stream(stream) {
        return e;
    }
    alloc_into(dptr, bytes)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: u64) -> CuResult {
    code(memory::free(dptr))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: u64, stream: usize) -> CuResult {
    if let Err(e) = streams::check_stream(stream) {
        return e;
    }
    code(memory::free(dptr))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CuResult {
    if let Err(e) = device::check_init().and_then(|()| errors::check()) {
        return e;
    }
    if free.is_null() || total.is_null() {
        return INVALID_VALUE;
    }
    let (t, available) = device::host_memory();
    (*free, *total) = (available, t);
    SUCCESS
}

unsafe fn copy(what: &str, dst: usize, src: usize, bytes: usize, check: (bool, bool)) -> CuResult {
    let r = errors::check()
        .and_then(|()| {
            if check.0 {
                memory::check_range(what, dst as u64, bytes)?;
            }
            if check.1 {
                memory::check_range(what, src as u64, bytes)?;
            }
            Ok(())
        })
        .and_then(|()| {
            if bytes > 0 && (dst == 0 || src == 0) {
                return Err(INVALID_VALUE);
            }
            std::ptr::copy(src as *const u8, dst as *mut u8, bytes);
            Ok(())
        });
    code(r)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(dst: u64, src: *const c_void, bytes: usize) -> CuResult {
    copy(
        "cuMemcpyHtoD",
        dst as usize,
        src as usize,
        bytes,
        (true, false),
    )
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: u64,
    src: *const c_void,
    bytes: usize,
    stream: usize,
) -> CuResult {
    if let Err(e) = streams::check_stream(stream) {
        return e;
    }
    cuMemcpyHtoD_v2(dst, src, bytes)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: u64, bytes: usize) -> CuResult {
    copy(
        "cuMemcpyDtoH",
        dst as usize,
        src as usize,
        bytes,
        (false, true),
    )
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: u64,
    bytes: usize,
    stream: usize,
) -> CuResult {
    if let Err(e) = streams::check_stream(stream) {
        return e;
    }
    cuMemcpyDtoH_v2(dst, src, bytes)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(dst: u64, src: u64, bytes: usize) -> CuResult {
    copy(
        "cuMemcpyDtoD",
        dst as usize,
        src as usize,
        bytes,
        (true, true),
    )
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: u64,
    src: u64,
    bytes: usize,
    stream: usize,
) -> CuResult {
    if let Err(e) = streams::check_stream(stream) {
        return e;
    }
    cuMemcpyDtoD_v2(dst, src, bytes)
}

/// Fills `n` elements of `width` bytes at `dst` with `value`'s low `width` bytes.
unsafe fn fill(what: &str, dst: u64, value: u32, width: usize, n: usize) -> CuResult {
    let r = errors::check().and_then(|()| {
        let bytes = n.checked_mul(width).ok_or(INVALID_VALUE)?;
        memory::check_range(what, dst, bytes)?;
        if !(dst as usize).is_multiple_of(width) {
            return Err(INVALID_VALUE);
        }
        let p = dst as *mut u8;
        match width {
            1 => std::ptr::write_bytes(p, value as u8, n),
            2 => std::slice::from_raw_parts_mut(p.cast::<u16>(), n).fill(value as u16),
            _ => std::slice::from_raw_parts_mut(p.cast::<u32>(), n).fill(value),
        }
        Ok(())
    });
    code(r)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8_v2(dst: u64, value: u8, n: usize) -> CuResult {
    fill("cuMemsetD8", dst, u32::from(value), 1, n)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8Async(dst: u64, value: u8, n: usize, stream: usize) -> CuResult {
    if let Err(e) = streams::check_stream(stream) {
        return e;
    }
    fill("cuMemsetD8", dst, u32::from(value), 1, n)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD16Async(
    dst: u64,
    value: u16,
    n: usize,
    stream: usize,
) -> CuResult {
    if let Err(e) = streams::check_stream(stream) {
        return e;
    }
    fill("cuMemsetD16", dst, u32::from(value), 2, n)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32_v2(dst: u64, value: c_uint, n: usize) -> CuResult {
    fill("cuMemsetD32", dst, value, 4, n)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD32Async(
    dst: u64,
    value: c_uint,
    n: usize,
    stream: usize,
) -> CuResult {
    if let Err(e) = streams::check_stream(stream) {
        return e;
    }
    fill("cuMemsetD32", dst, value, 4, n)
}

// Page-locked host memory is ordinary host memory here.

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocHost_v2(pp: *mut *mut c_void, bytes: usize) -> CuResult {
    if pp.is_null() || bytes == 0 {
        return INVALID_VALUE;
    }
    let mut p = std::ptr::null_mut();
    if libc::posix_memalign(&mut p, memory::PAGE, bytes) != 0 {
        return OUT_OF_MEMORY;
    }
    *pp = p;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(
    pp: *mut *mut c_void,
    bytes: usize,
    _flags: c_uint,
) -> CuResult {
    cuMemAllocHost_v2(pp, bytes)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CuResult {
    libc::free(p);
    SUCCESS
}

// ---- hooks for the cuBLASLt stand-in (found with dlsym on this library) ---------------------

/// 0 when `[ptr, ptr + bytes)` lies inside one live device allocation.
#[no_mangle]
pub extern "C" fn ingot_emu_check_range(ptr: u64, bytes: u64) -> i32 {
    i32::from(!memory::contains(ptr, bytes))
}

/// Makes `code` the context's sticky error, with `message` as its diagnostic.
#[no_mangle]
pub unsafe extern "C" fn ingot_emu_report_fault(code: i32, message: *const c_char) {
    let text = if message.is_null() {
        "a fault reported by another stand-in library".to_string()
    } else {
        CStr::from_ptr(message).to_string_lossy().into_owned()
    };
    errors::fault(code, text);
}

/// The sticky error (0 while there is none).
#[no_mangle]
pub extern "C" fn ingot_emu_sticky_error() -> i32 {
    errors::sticky()
}
