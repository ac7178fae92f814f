//! `libnccl.so.2`, opened at run time and resolved once into a table of entry points.
//!
//! cudarc's own NCCL loader looks for `libnccl.so` (the development symlink) and panics when
//! it or a symbol is missing, while NVIDIA's pip wheel (`nvidia-nccl-cu13`, what PyTorch
//! brings) and Debian's `libnccl2` ship only `libnccl.so.2`. So this module opens the library
//! itself (`INGOT_NCCL_LIB`, a full path, if set; else `libnccl.so.2`, then `libnccl.so`,
//! through the dynamic loader's usual search, `LD_LIBRARY_PATH` first) and takes from cudarc
//! only the NCCL types and constants (`cudarc::nccl::sys`). A missing library or symbol is a
//! one-line error, never a panic.
//!
//! Results, data types and operations cross the boundary as their `u32` values, so that a
//! code this build does not know cannot become an invalid Rust enum.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

use cudarc::nccl::sys::{ncclDataType_t, ncclRedOp_t, ncclResult_t, ncclUniqueId};

/// Environment variable: the full path of `libnccl.so.2`, opened instead of the name search.
pub const NCCL_LIB_ENV: &str = "INGOT_NCCL_LIB";

/// `ncclComm_t`.
pub type Comm = *mut c_void;
/// `cudaStream_t` (a `CUstream`).
pub type Stream = *mut c_void;

pub const SUCCESS: u32 = ncclResult_t::ncclSuccess as u32;
pub const IN_PROGRESS: u32 = ncclResult_t::ncclInProgress as u32;
pub const SUM: u32 = ncclRedOp_t::ncclSum as u32;

/// An element type NCCL can reduce, with its `ncclDataType_t`.
pub trait Element: Copy {
    const DTYPE: u32;
}
impl Element for u8 {
    const DTYPE: u32 = ncclDataType_t::ncclUint8 as u32;
}
impl Element for f32 {
    const DTYPE: u32 = ncclDataType_t::ncclFloat32 as u32;
}
impl Element for f64 {
    const DTYPE: u32 = ncclDataType_t::ncclFloat64 as u32;
}
impl Element for ingot_kernels::launch::Bf16 {
    const DTYPE: u32 = ncclDataType_t::ncclBfloat16 as u32;
}

type Collective =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, u32, u32, Comm, Stream) -> u32;

/// The entry points the backend calls, resolved when the library is opened.
pub struct Library {
    pub get_version: unsafe extern "C" fn(*mut c_int) -> u32,
    pub get_unique_id: unsafe extern "C" fn(*mut ncclUniqueId) -> u32,
    pub comm_init_rank: unsafe extern "C" fn(*mut Comm, c_int, ncclUniqueId, c_int) -> u32,
    pub comm_finalize: unsafe extern "C" fn(Comm) -> u32,
    pub comm_destroy: unsafe extern "C" fn(Comm) -> u32,
    pub comm_abort: unsafe extern "C" fn(Comm) -> u32,
    pub comm_get_async_error: unsafe extern "C" fn(Comm, *mut u32) -> u32,
    get_error_string: unsafe extern "C" fn(u32) -> *const c_char,
    get_last_error: unsafe extern "C" fn(Comm) -> *const c_char,
    /// `(send, recv, count, datatype, op, comm, stream)`.
    pub all_reduce: Collective,
    /// `(send, recv, recvcount, datatype, op, comm, stream)`.
    pub reduce_scatter: Collective,
    /// `(send, recv, sendcount, datatype, comm, stream)`.
    pub all_gather:
        unsafe extern "C" fn(*const c_void, *mut c_void, usize, u32, Comm, Stream) -> u32,
    /// `(send, recv, count, datatype, root, comm, stream)`.
    pub broadcast:
        unsafe extern "C" fn(*const c_void, *mut c_void, usize, u32, c_int, Comm, Stream) -> u32,
    /// Where the library was found, for messages.
    pub path: String,
    _lib: libloading::Library,
}

/// The library, opened on first use; the error is kept, so every later call says the same.
pub fn get() -> Result<&'static Library, String> {
    static LIB: OnceLock<Result<Library, String>> = OnceLock::new();
    LIB.get_or_init(|| open(std::env::var(NCCL_LIB_ENV).ok()))
        .as_ref()
        .map_err(Clone::clone)
}

/// The library at `path` (`INGOT_NCCL_LIB`'s value), or the first found by name.
fn open(path: Option<String>) -> Result<Library, String> {
    let (lib, path) = match path {
        Some(path) => match unsafe { libloading::Library::new(&path) } {
            Ok(lib) => (lib, path),
            Err(e) => {
                return Err(format!(
                    "cannot open NCCL at {NCCL_LIB_ENV}={path} ({e}); point it at libnccl.so.2"
                ))
            }
        },
        None => find()?,
    };
    resolve(lib, path)
}

fn find() -> Result<(libloading::Library, String), String> {
    let mut first_error = None;
    for name in ["libnccl.so.2", "libnccl.so"] {
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => return Ok((lib, name.to_string())),
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    Err(format!(
        "NCCL not found ({}): install it (pip install nvidia-nccl-cu13, or the libnccl2 package) and put the folder holding libnccl.so.2 on LD_LIBRARY_PATH, or set {NCCL_LIB_ENV} to its full path",
        first_error.unwrap_or_default()
    ))
}

fn resolve(lib: libloading::Library, path: String) -> Result<Library, String> {
    /// A symbol as the function-pointer type the field has.
    unsafe fn sym<F: Copy>(lib: &libloading::Library, path: &str, name: &str) -> Result<F, String> {
        let mut cname = name.as_bytes().to_vec();
        cname.push(0);
        lib.get::<F>(cname.as_slice())
            .map(|s| *s)
            .map_err(|e| format!("{path} has no {name} ({e}); NCCL 2.19 or newer is needed"))
    }
    // SAFETY: each type is the NCCL 2.x prototype of the symbol named with it.
    unsafe {
        Ok(Library {
            get_version: sym(&lib, &path, "ncclGetVersion")?,
            get_unique_id: sym(&lib, &path, "ncclGetUniqueId")?,
            comm_init_rank: sym(&lib, &path, "ncclCommInitRank")?,
            comm_finalize: sym(&lib, &path, "ncclCommFinalize")?,
            comm_destroy: sym(&lib, &path, "ncclCommDestroy")?,
            comm_abort: sym(&lib, &path, "ncclCommAbort")?,
            comm_get_async_error: sym(&lib, &path, "ncclCommGetAsyncError")?,
            get_error_string: sym(&lib, &path, "ncclGetErrorString")?,
            get_last_error: sym(&lib, &path, "ncclGetLastError")?,
            all_reduce: sym(&lib, &path, "ncclAllReduce")?,
            reduce_scatter: sym(&lib, &path, "ncclReduceScatter")?,
            all_gather: sym(&lib, &path, "ncclAllGather")?,
            broadcast: sym(&lib, &path, "ncclBroadcast")?,
            path,
            _lib: lib,
        })
    }
}

impl Library {
    /// `NCCL 2.28.5` from `ncclGetVersion`'s code (`major * 10000 + minor * 100 + patch`).
    pub fn version(&self) -> String {
        let mut code: c_int = 0;
        // SAFETY: the pointer is valid for one int.
        if unsafe { (self.get_version)(&mut code) } != SUCCESS {
            return "NCCL (version unknown)".into();
        }
        format!("NCCL {}.{}.{}", code / 10000, code / 100 % 100, code % 100)
    }

    /// A failed call in one line: NCCL's name for `code` and its last error message (the
    /// communicator's, when there is one), e.g. "remote process exited or there was a network
    /// error (rank 1 exited)".
    pub(super) fn describe(&self, code: u32, comm: Comm) -> String {
        // SAFETY: both return static NUL-terminated strings (or null).
        let text = |p: *const c_char| {
            if p.is_null() {
                String::new()
            } else {
                unsafe { CStr::from_ptr(p) }
                    .to_string_lossy()
                    .trim()
                    .to_string()
            }
        };
        let what = text(unsafe { (self.get_error_string)(code) });
        let last = text(unsafe { (self.get_last_error)(comm) });
        match (what.is_empty(), last.is_empty()) {
            (_, true) => format!("{what} (NCCL code {code})"),
            (true, false) => last,
            (false, false) => format!("{what}: {last}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(path: &str) -> String {
        match open(Some(path.to_string())) {
            Ok(_) => panic!("{path} opened as NCCL"),
            Err(m) => {
                assert!(!m.contains('\n'), "{m}");
                m
            }
        }
    }

    #[test]
    fn a_missing_library_is_one_line_naming_the_path() {
        let m = refusal("/nonexistent/libnccl.so.2");
        assert!(
            m.contains("INGOT_NCCL_LIB=/nonexistent/libnccl.so.2") && m.contains("point it at"),
            "{m}"
        );
    }

    #[test]
    fn a_library_without_nccl_symbols_is_one_line_naming_the_symbol() {
        // The C library opens but exports no NCCL call.
        let m = refusal("libc.so.6");
        assert!(m.contains("libc.so.6 has no ncclGetVersion"), "{m}");
        assert!(m.contains("NCCL 2.19 or newer"), "{m}");
    }
}
