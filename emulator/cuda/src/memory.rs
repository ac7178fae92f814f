//! Device memory is host memory, laid out to catch out-of-bounds accesses:
//!
//! ```text
//!   | guard page | front slack (canary) | buffer | tail slack (canary) | guard page |
//!                                       ^ 256-byte aligned, as cuMemAlloc guarantees
//! ```
//!
//! The buffer is placed so that its size rounded up to 256 bytes ends exactly at the back
//! guard page: reading or writing past the end by more than that rounding faults at once
//! (the SIMT runtime turns the fault into `CUDA_ERROR_ILLEGAL_ADDRESS`), and a write into the
//! slack on either side is found by checking the canary bytes after every launch. A new
//! buffer is filled with 0xff bytes, a NaN in f32 and in bf16, so a read of memory no one
//! wrote shows up in the results.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::Mutex;

use crate::errors;
use crate::status::*;

pub const PAGE: usize = 4096;
/// cuMemAlloc's alignment.
pub const ALIGN: usize = 256;
/// What a fresh buffer holds: NaN as f32 (0xffffffff) and as bf16 (0xffff).
pub const UNINITIALISED: u8 = 0xff;
/// What the slack around a buffer holds: one of these bytes, in turn from one allocation to
/// the next, so that a kernel copying one buffer's slack into another's still changes it
/// (each is a large finite f32/bf16 near -1.7e38 if read).
pub const CANARIES: [u8; 4] = [0xfe, 0xfd, 0xfc, 0xfb];

struct Allocation {
    /// Start of the mapping (the front guard page).
    base: usize,
    map_len: usize,
    /// The device pointer: start of the buffer.
    ptr: usize,
    size: usize,
    /// First byte after the tail slack (the back guard page).
    end: usize,
    canary: u8,
}

impl Allocation {
    fn slack(&self) -> [(usize, usize); 2] {
        [
            (self.base + PAGE, self.ptr),
            (self.ptr + self.size, self.end),
        ]
    }
}

/// Live allocations by device pointer.
static ALLOCATIONS: Mutex<BTreeMap<usize, Allocation>> = Mutex::new(BTreeMap::new());

fn allocations() -> std::sync::MutexGuard<'static, BTreeMap<usize, Allocation>> {
    ALLOCATIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Maps a new buffer of `size` bytes; `Err(OUT_OF_MEMORY)` when the host cannot.
pub fn allocate(size: usize) -> Result<u64, CuResult> {
    errors::check()?;
    if size == 0 {
        return Err(INVALID_VALUE);
    }
    let rounded = size.checked_next_multiple_of(ALIGN).ok_or(OUT_OF_MEMORY)?;
    let data_pages = rounded.div_ceil(PAGE);
    let map_len = (data_pages + 2).checked_mul(PAGE).ok_or(OUT_OF_MEMORY)?;
    // SAFETY: a fresh anonymous mapping; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(OUT_OF_MEMORY);
    }
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let canary =
        CANARIES[COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % CANARIES.len()];
    let base = base as usize;
    let end = base + PAGE + data_pages * PAGE;
    let ptr = end - rounded;
    // SAFETY: the two guard pages and the data pages lie inside the new mapping.
    unsafe {
        libc::mprotect(base as *mut c_void, PAGE, libc::PROT_NONE);
        libc::mprotect(end as *mut c_void, PAGE, libc::PROT_NONE);
        std::ptr::write_bytes((base + PAGE) as *mut u8, canary, ptr - (base + PAGE));
        std::ptr::write_bytes(ptr as *mut u8, UNINITIALISED, size);
        std::ptr::write_bytes((ptr + size) as *mut u8, canary, end - (ptr + size));
    }
    let a = Allocation {
        base,
        map_len,
        ptr,
        size,
        end,
        canary,
    };
    allocations().insert(ptr, a);
    Ok(ptr as u64)
}

/// Unmaps the buffer at `ptr`; `Err(INVALID_VALUE)` for a pointer cuMemAlloc did not return.
pub fn free(ptr: u64) -> Result<(), CuResult> {
    if ptr == 0 {
        return Ok(()); // as cuMemFree(0)
    }
    let a = allocations().remove(&(ptr as usize)).ok_or(INVALID_VALUE)?;
    // SAFETY: the mapping was made by `allocate` and is no longer registered.
    unsafe { libc::munmap(a.base as *mut c_void, a.map_len) };
    errors::check()
}

/// Whether `[ptr, ptr + bytes)` lies inside one live buffer.
pub fn contains(ptr: u64, bytes: u64) -> bool {
    let (Ok(p), Ok(n)) = (usize::try_from(ptr), usize::try_from(bytes)) else {
        return false;
    };
    let map = allocations();
    map.range(..=p)
        .next_back()
        .is_some_and(|(_, a)| p.checked_add(n).is_some_and(|e| e <= a.ptr + a.size))
}

/// `Ok` when `[ptr, ptr + bytes)` is device memory; the error names `what` otherwise.
pub fn check_range(what: &str, ptr: u64, bytes: usize) -> Result<(), CuResult> {
    if bytes == 0 || contains(ptr, bytes as u64) {
        Ok(())
    } else {
        eprintln!(
            "ingot-emu: {what}: {bytes} bytes at {ptr:#x} are not inside one device allocation"
        );
        Err(INVALID_VALUE)
    }
}

/// The first allocation whose slack no longer holds the canary: `(pointer, size, offset of
/// the first bad byte relative to the pointer)`.
pub fn find_corruption() -> Option<(usize, usize, isize)> {
    let map = allocations();
    for a in map.values() {
        for (from, to) in a.slack() {
            // SAFETY: the slack lies in the mapping's data pages, which stay mapped while the
            // allocation is registered (and the lock is held).
            let bytes = unsafe { std::slice::from_raw_parts(from as *const u8, to - from) };
            if let Some(i) = bytes.iter().position(|&b| b != a.canary) {
                return Some((a.ptr, a.size, (from + i) as isize - a.ptr as isize));
            }
        }
    }
    None
}
