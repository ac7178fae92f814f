//! A stand-in `libnvrtc.so.13`: the NVRTC entry points ingot reaches through `cudarc`, compiling
//! the same `kernels/cuda/*.cu` source with the host C++ compiler into an emulated module (a
//! shared object wrapped in an image, see [`ingot_emu_common::image`]) that the stand-in
//! `libcuda.so.1` loads. Compiler errors and warnings come back as the program log.
//!
//! `nvrtcVersion` says 13.9xyz: the CUDA 13 API, and a minor version no real NVRTC has, so a
//! cache keyed by the NVRTC version never hands an emulated module to a GPU or the reverse;
//! `xyz` comes from a hash of the SIMT runtime and the compile pipeline, so a changed stand-in
//! does not reuse modules cached by an older one either.
//!
//! Entry points NVRTC has and this stand-in does not implement return
//! `NVRTC_ERROR_INTERNAL_ERROR` and name themselves on stderr and in `nvrtcGetErrorString`.
#![allow(clippy::missing_safety_doc)] // every export follows NVRTC's documented contract

pub mod compiler;
pub mod options;
pub mod scan;
pub mod shared;

use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_int, CStr};
use std::sync::{Arc, Mutex, OnceLock};

/// The version reported by `nvrtcVersion`.
pub const VERSION: (c_int, c_int) = (13, 9000 + (BUILD_HASH % 1000) as c_int);

/// FNV-1a of what decides the modules this stand-in builds.
const BUILD_HASH: u64 = {
    let parts: [&[u8]; 3] = [
        include_bytes!("../device/simt.h"),
        include_bytes!("../device/cuda_builtins.h"),
        include_bytes!("compiler.rs"),
    ];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut p = 0;
    while p < parts.len() {
        let mut i = 0;
        while i < parts[p].len() {
            h ^= parts[p][i] as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
            i += 1;
        }
        p += 1;
    }
    h
};

// nvrtcResult values.
const SUCCESS: i32 = 0;
const ERROR_INVALID_INPUT: i32 = 3;
const ERROR_INVALID_PROGRAM: i32 = 4;
const ERROR_INVALID_OPTION: i32 = 5;
const ERROR_COMPILATION: i32 = 6;
const ERROR_INTERNAL_ERROR: i32 = 11;

/// One program (opaque to callers): its source and, once compiled, the log and the image.
pub struct Program {
    name: String,
    source: String,
    log: String,
    image: Option<Vec<u8>>,
}

/// Live program handles (a handle is the address of its boxed `Program`).
fn live() -> &'static Mutex<HashSet<usize>> {
    static LIVE: OnceLock<Mutex<HashSet<usize>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(HashSet::new()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on the program behind `prog`, or returns `NVRTC_ERROR_INVALID_PROGRAM`.
unsafe fn with_program(prog: *mut Program, f: impl FnOnce(&mut Program) -> i32) -> i32 {
    if prog.is_null() || !lock(live()).contains(&(prog as usize)) {
        return ERROR_INVALID_PROGRAM;
    }
    f(&mut *prog)
}

unsafe fn c_string(p: *const c_char) -> Option<String> {
    (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcVersion(major: *mut c_int, minor: *mut c_int) -> i32 {
    if major.is_null() || minor.is_null() {
        return ERROR_INVALID_INPUT;
    }
    *major = VERSION.0;
    *minor = VERSION.1;
    SUCCESS
}

/// The architectures `-arch` accepts, as NVRTC lists them (`sm_XY` → XY).
const ARCHS: [c_int; 8] = [75, 80, 86, 87, 89, 90, 100, 120];

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetNumSupportedArchs(n: *mut c_int) -> i32 {
    if n.is_null() {
        return ERROR_INVALID_INPUT;
    }
    *n = ARCHS.len() as c_int;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetSupportedArchs(out: *mut c_int) -> i32 {
    if out.is_null() {
        return ERROR_INVALID_INPUT;
    }
    std::ptr::copy_nonoverlapping(ARCHS.as_ptr(), out, ARCHS.len());
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetErrorString(result: i32) -> *const c_char {
    let s: &'static CStr = match result {
        0 => c"NVRTC_SUCCESS",
        1 => c"NVRTC_ERROR_OUT_OF_MEMORY",
        2 => c"NVRTC_ERROR_PROGRAM_CREATION_FAILURE",
        3 => c"NVRTC_ERROR_INVALID_INPUT",
        4 => c"NVRTC_ERROR_INVALID_PROGRAM",
        5 => c"NVRTC_ERROR_INVALID_OPTION",
        6 => c"NVRTC_ERROR_COMPILATION",
        7 => c"NVRTC_ERROR_BUILTIN_OPERATION_FAILURE",
        8 => c"NVRTC_ERROR_NO_NAME_EXPRESSIONS_AFTER_COMPILATION",
        9 => c"NVRTC_ERROR_NO_LOWERED_NAMES_BEFORE_COMPILATION",
        10 => c"NVRTC_ERROR_NAME_EXPRESSION_NOT_VALID",
        11 => return internal_error_string(),
        _ => c"NVRTC_ERROR unknown",
    };
    s.as_ptr()
}

/// `NVRTC_ERROR_INTERNAL_ERROR`, naming the last entry point called that is not implemented.
fn internal_error_string() -> *const c_char {
    static STRINGS: Mutex<Vec<std::ffi::CString>> = Mutex::new(Vec::new());
    let text = match ingot_emu_common::last_missing() {
        Some(name) => {
            format!("NVRTC_ERROR_INTERNAL_ERROR ({name} is not implemented by the ingot stand-in)")
        }
        None => "NVRTC_ERROR_INTERNAL_ERROR".into(),
    };
    let mut strings = lock(&STRINGS);
    if let Some(s) = strings.iter().find(|s| s.to_str() == Ok(text.as_str())) {
        return s.as_ptr();
    }
    let s = std::ffi::CString::new(text).unwrap_or_default();
    let p = s.as_ptr();
    strings.push(s); // kept for the life of the process: the caller holds the pointer
    p
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcCreateProgram(
    prog: *mut *mut Program,
    src: *const c_char,
    name: *const c_char,
    num_headers: c_int,
    _headers: *const *const c_char,
    _include_names: *const *const c_char,
) -> i32 {
    if prog.is_null() || num_headers < 0 {
        return ERROR_INVALID_INPUT;
    }
    let Some(source) = c_string(src) else {
        return ERROR_INVALID_INPUT;
    };
    if num_headers > 0 {
        // The kernels include nothing; headers by name would need an include directory.
        ingot_emu_common::record_missing("nvrtc", "nvrtcCreateProgram with headers");
        return ERROR_INTERNAL_ERROR;
    }
    let name = c_string(name).unwrap_or_else(|| "default_program".into());
    let p = Box::into_raw(Box::new(Program {
        name,
        source,
        log: String::new(),
        image: None,
    }));
    lock(live()).insert(p as usize);
    *prog = p;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcDestroyProgram(prog: *mut *mut Program) -> i32 {
    if prog.is_null() {
        return ERROR_INVALID_INPUT;
    }
    let p = *prog;
    if p.is_null() || !lock(live()).remove(&(p as usize)) {
        return ERROR_INVALID_PROGRAM;
    }
    drop(Box::from_raw(p));
    *prog = std::ptr::null_mut();
    SUCCESS
}

/// The result of one compile, shared by every program with the same source and options: test
/// threads that compile the same unit at once wait for one compile instead of each running it.
type Shared = Arc<OnceLock<(i32, String, Option<Vec<u8>>)>>;

fn compile_once(name: &str, source: &str, args: &[String]) -> (i32, String, Option<Vec<u8>>) {
    static DONE: OnceLock<Mutex<HashMap<String, Shared>>> = OnceLock::new();
    let key = format!("{name}\0{}\0{source}", args.join("\0"));
    let slot = lock(DONE.get_or_init(|| Mutex::new(HashMap::new())))
        .entry(key)
        .or_default()
        .clone();
    slot.get_or_init(|| match options::parse(args) {
        Err(log) => (ERROR_INVALID_OPTION, log, None),
        Ok(opts) => match compiler::compile(name, source, &opts) {
            Ok(c) => (SUCCESS, c.log, c.image),
            Err(log) => (ERROR_COMPILATION, log, None),
        },
    })
    .clone()
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcCompileProgram(
    prog: *mut Program,
    num_options: c_int,
    options: *const *const c_char,
) -> i32 {
    if num_options < 0 || (num_options > 0 && options.is_null()) {
        return ERROR_INVALID_INPUT;
    }
    let mut args = Vec::new();
    for i in 0..num_options as usize {
        match c_string(*options.add(i)) {
            Some(a) => args.push(a),
            None => return ERROR_INVALID_INPUT,
        }
    }
    with_program(prog, |p| {
        let (status, log, image) = compile_once(&p.name, &p.source, &args);
        p.log = log;
        p.image = image;
        status
    })
}

/// Copies `bytes` and a NUL to `out` (the caller sized it with the matching *Size call).
unsafe fn copy_out(bytes: &[u8], out: *mut c_char, nul: bool) -> i32 {
    if out.is_null() {
        return ERROR_INVALID_INPUT;
    }
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.cast::<u8>(), bytes.len());
    if nul {
        *out.add(bytes.len()) = 0;
    }
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetProgramLogSize(prog: *mut Program, size: *mut usize) -> i32 {
    if size.is_null() {
        return ERROR_INVALID_INPUT;
    }
    with_program(prog, |p| {
        *size = p.log.len() + 1;
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetProgramLog(prog: *mut Program, log: *mut c_char) -> i32 {
    with_program(prog, |p| copy_out(p.log.as_bytes(), log, true))
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetCUBINSize(prog: *mut Program, size: *mut usize) -> i32 {
    if size.is_null() {
        return ERROR_INVALID_INPUT;
    }
    with_program(prog, |p| {
        // As NVRTC: 0 for a virtual architecture (or before a successful compile).
        *size = p.image.as_ref().map_or(0, Vec::len);
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvrtcGetCUBIN(prog: *mut Program, cubin: *mut c_char) -> i32 {
    with_program(prog, |p| match &p.image {
        Some(image) => copy_out(image, cubin, false),
        None => ERROR_INVALID_INPUT,
    })
}

ingot_emu_common::not_implemented!("nvrtc", ERROR_INTERNAL_ERROR;
    nvrtcGetPTXSize, nvrtcGetPTX, nvrtcGetLTOIRSize, nvrtcGetLTOIR, nvrtcGetOptiXIRSize,
    nvrtcGetOptiXIR, nvrtcAddNameExpression, nvrtcGetLoweredName, nvrtcGetTileIRSize, nvrtcGetTileIR,
    nvrtcGetBundledHeadersInfo, nvrtcInstallBundledHeaders, nvrtcRemoveBundledHeaders,
    nvrtcGetPCHHeapSize, nvrtcSetPCHHeapSize, nvrtcGetPCHCreateStatus, nvrtcGetPCHHeapSizeRequired,
    nvrtcSetFlowCallback,
);
