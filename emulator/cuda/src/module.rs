//! Modules and functions. `cuModuleLoadData` takes an image of the NVRTC stand-in
//! ([`ingot_emu_common::image`]) and loads its shared object with `dlopen` from a memory file,
//! so every load is its own copy (its own `__shared__` storage and runtime state). A real
//! CUBIN or PTX is refused with `CUDA_ERROR_INVALID_IMAGE`: the stand-in runs only what its
//! own NVRTC compiled.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use ingot_emu_common::abi::{self, KernelInfo};
use ingot_emu_common::image::{self, Metadata};
use libloading::os::unix::Library;

use crate::handles::Registry;
use crate::status::*;
use crate::{device, errors};

/// One kernel of a module: what its table and the image's metadata say.
pub struct Kernel {
    pub name: String,
    pub index: u32,
    pub param_sizes: Vec<u32>,
    /// Offsets in a packed parameter buffer, each aligned to its parameter's alignment.
    pub param_offsets: Vec<u32>,
    /// From `__launch_bounds__`, else the device's 1024.
    pub max_threads: u32,
    pub static_shared: u32,
}

pub struct Module {
    pub launch: abi::LaunchFn,
    pub kernels: Vec<Kernel>,
    pub meta: Metadata,
    /// Function handles already handed out, by kernel name (the driver returns the same one).
    functions: Mutex<HashMap<String, usize>>,
    _library: Library,
}

pub struct Function {
    pub module: Arc<Module>,
    pub kernel: usize,
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
    pub max_dynamic_shared: AtomicU32,
}

impl Function {
    pub fn kernel(&self) -> &Kernel {
        &self.module.kernels[self.kernel]
    }
}

pub static MODULES: Registry<Module> = Registry::new();
pub static FUNCTIONS: Registry<Function> = Registry::new();

/// Copies the image at `p`: the header first (it says the length), stopping at the first byte
/// that is not our magic so that a short PTX string is never read past its end.
unsafe fn read_image(p: *const u8) -> Result<Vec<u8>, image::DecodeError> {
    for (i, &m) in image::MAGIC.iter().enumerate() {
        if *p.add(i) != m {
            return Err(image::DecodeError::NotAnImage);
        }
    }
    let header = std::slice::from_raw_parts(p, image::HEADER_BYTES);
    let total = image::total_len(header)?;
    Ok(std::slice::from_raw_parts(p, total).to_vec())
}

/// Loads a shared object from bytes, as its own copy: written to a file of its own name (the
/// dynamic loader hands back an already loaded library for a name it has seen, so a reused
/// `/proc/self/fd/N` would not do), opened, and deleted at once (the mapping stays).
fn open_object(object: &[u8]) -> Result<Library, String> {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("ingot-emu-module-{}-{n}.so", std::process::id()));
    std::fs::write(&path, object).map_err(|e| format!("writing {}: {e}", path.display()))?;
    // SAFETY: the module's initialisers only fill its kernel table.
    let lib = unsafe { Library::open(Some(&path), libc::RTLD_NOW | libc::RTLD_LOCAL) }
        .map_err(|e| format!("dlopen: {e}"));
    let _ = std::fs::remove_file(&path);
    lib
}

/// Reads the module's kernel table.
unsafe fn kernels(lib: &Library, meta: &Metadata) -> Result<(abi::LaunchFn, Vec<Kernel>), String> {
    let sym = |name: &str| format!("the module has no {name}");
    let version = *lib
        .get::<abi::AbiVersionFn>(b"ingot_emu_abi_version")
        .map_err(|_| sym("ingot_emu_abi_version"))?;
    if version() != abi::ABI_VERSION {
        return Err(format!(
            "module ABI {}, this driver stand-in speaks {}",
            version(),
            abi::ABI_VERSION
        ));
    }
    let count = *lib
        .get::<abi::KernelCountFn>(b"ingot_emu_kernel_count")
        .map_err(|_| sym("kernel count"))?;
    let info = *lib
        .get::<abi::KernelFn>(b"ingot_emu_kernel")
        .map_err(|_| sym("kernel table"))?;
    let launch = *lib
        .get::<abi::LaunchFn>(b"ingot_emu_launch")
        .map_err(|_| sym("ingot_emu_launch"))?;
    let mut out = Vec::new();
    for index in 0..count() {
        let k: &KernelInfo = info(index).as_ref().ok_or("kernel table too short")?;
        let name = CStr::from_ptr(k.name).to_string_lossy().into_owned();
        let n = k.param_count as usize;
        let sizes = std::slice::from_raw_parts(k.param_sizes, n).to_vec();
        let aligns = std::slice::from_raw_parts(k.param_aligns, n);
        let mut offsets = Vec::with_capacity(n);
        let mut at = 0u32;
        for (s, a) in sizes.iter().zip(aligns) {
            at = at.next_multiple_of((*a).max(1));
            offsets.push(at);
            at += s;
        }
        let static_shared = meta
            .kernels
            .iter()
            .find(|m| m.name == name)
            .map_or(0, |m| m.static_shared_bytes);
        let max_threads = match k.max_threads {
            0 => device::MAX_THREADS_PER_BLOCK,
            m => m.min(device::MAX_THREADS_PER_BLOCK),
        };
        out.push(Kernel {
            name,
            index,
            param_sizes: sizes,
            param_offsets: offsets,
            max_threads,
            static_shared,
        });
    }
    Ok((launch, out))
}

unsafe fn load(image_ptr: *const c_void) -> Result<usize, CuResult> {
    device::check_init()?;
    errors::check()?;
    if image_ptr.is_null() {
        return Err(INVALID_VALUE);
    }
    let bytes = read_image(image_ptr.cast()).map_err(|e| {
        eprintln!(
            "ingot-emu: cuModuleLoadData: not an image of the stand-in NVRTC ({e:?}); the \
             emulator runs only kernels compiled by its own libnvrtc"
        );
        INVALID_IMAGE
    })?;
    let (meta, object) = image::decode(&bytes).map_err(|_| INVALID_IMAGE)?;
    if meta.arch.trim_end_matches(['a', 'f']) != "sm_90" {
        // The device is sm_90; a CUBIN for another architecture does not load on it.
        eprintln!(
            "ingot-emu: cuModuleLoadData: the image is for {}, the device is sm_90",
            meta.arch
        );
        return Err(NO_BINARY_FOR_GPU);
    }
    let library = open_object(object).map_err(|e| {
        eprintln!("ingot-emu: cuModuleLoadData: {e}");
        SHARED_OBJECT_INIT_FAILED
    })?;
    let (launch, kernels) = kernels(&library, &meta).map_err(|e| {
        eprintln!("ingot-emu: cuModuleLoadData: {e}");
        INVALID_IMAGE
    })?;
    Ok(MODULES.insert(Module {
        launch,
        kernels,
        meta,
        functions: Mutex::new(HashMap::new()),
        _library: library,
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut usize, image: *const c_void) -> CuResult {
    if module.is_null() {
        return INVALID_VALUE;
    }
    crate::guarded("cuModuleLoadData", || match load(image) {
        Ok(h) => {
            *module = h;
            SUCCESS
        }
        Err(e) => e,
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    module: *mut usize,
    image: *const c_void,
    _n: u32,
    _options: *mut c_int,
    _values: *mut *mut c_void,
) -> CuResult {
    cuModuleLoadData(module, image)
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(module: usize) -> CuResult {
    // Functions keep their module alive (an Arc); the handle itself is gone.
    match MODULES.remove(module) {
        Some(_) => SUCCESS,
        None => INVALID_HANDLE,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    hfunc: *mut usize,
    module: usize,
    name: *const c_char,
) -> CuResult {
    if hfunc.is_null() || name.is_null() {
        return INVALID_VALUE;
    }
    let Some(m) = MODULES.get(module) else {
        return INVALID_HANDLE;
    };
    let name = CStr::from_ptr(name).to_string_lossy().into_owned();
    let Some(kernel) = m.kernels.iter().position(|k| k.name == name) else {
        return NOT_FOUND;
    };
    let mut handles = m.functions.lock().unwrap_or_else(|e| e.into_inner());
    let h = *handles.entry(name).or_insert_with(|| {
        let static_shared = m.kernels[kernel].static_shared;
        FUNCTIONS.insert(Function {
            module: m.clone(),
            kernel,
            max_dynamic_shared: AtomicU32::new(device::SHARED_PER_BLOCK - static_shared),
        })
    });
    *hfunc = h;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunctionCount(count: *mut u32, module: usize) -> CuResult {
    if count.is_null() {
        return INVALID_VALUE;
    }
    match MODULES.get(module) {
        Some(m) => {
            *count = m.kernels.len() as u32;
            SUCCESS
        }
        None => INVALID_HANDLE,
    }
}

// CUfunction_attribute values.
const FUNC_MAX_THREADS_PER_BLOCK: c_int = 0;
const FUNC_SHARED_SIZE_BYTES: c_int = 1;
const FUNC_CONST_SIZE_BYTES: c_int = 2;
const FUNC_LOCAL_SIZE_BYTES: c_int = 3;
const FUNC_NUM_REGS: c_int = 4;
const FUNC_PTX_VERSION: c_int = 5;
const FUNC_BINARY_VERSION: c_int = 6;
const FUNC_CACHE_MODE_CA: c_int = 7;
const FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES: c_int = 8;
const FUNC_PREFERRED_SHARED_MEMORY_CARVEOUT: c_int = 9;

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(
    pi: *mut c_int,
    attrib: c_int,
    hfunc: usize,
) -> CuResult {
    if pi.is_null() {
        return INVALID_VALUE;
    }
    let Some(f) = FUNCTIONS.get(hfunc) else {
        return INVALID_HANDLE;
    };
    let k = f.kernel();
    *pi = match attrib {
        FUNC_MAX_THREADS_PER_BLOCK => k.max_threads as c_int,
        FUNC_SHARED_SIZE_BYTES => k.static_shared as c_int,
        FUNC_CONST_SIZE_BYTES | FUNC_LOCAL_SIZE_BYTES | FUNC_CACHE_MODE_CA => 0,
        // Not known without ptxas; the register file would allow 64 at 1024 threads.
        FUNC_NUM_REGS => 64,
        FUNC_PTX_VERSION | FUNC_BINARY_VERSION => 90,
        FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES => f.max_dynamic_shared.load(Ordering::Relaxed) as c_int,
        FUNC_PREFERRED_SHARED_MEMORY_CARVEOUT => -1,
        _ => return INVALID_VALUE,
    };
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncSetAttribute(hfunc: usize, attrib: c_int, value: c_int) -> CuResult {
    let Some(f) = FUNCTIONS.get(hfunc) else {
        return INVALID_HANDLE;
    };
    match attrib {
        FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES => {
            let limit = device::SHARED_PER_BLOCK_OPTIN - f.kernel().static_shared;
            match u32::try_from(value) {
                Ok(v) if v <= limit => {
                    f.max_dynamic_shared.store(v, Ordering::Relaxed);
                    SUCCESS
                }
                _ => INVALID_VALUE,
            }
        }
        FUNC_PREFERRED_SHARED_MEMORY_CARVEOUT if (-1..=100).contains(&value) => SUCCESS,
        _ => INVALID_VALUE,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncSetCacheConfig(hfunc: usize, _config: c_int) -> CuResult {
    if FUNCTIONS.get(hfunc).is_some() {
        SUCCESS
    } else {
        INVALID_HANDLE
    }
}

/// Offset and size of parameter `index`; `CUDA_ERROR_INVALID_VALUE` past the last one, which
/// is how a caller learns the parameter count.
#[no_mangle]
pub unsafe extern "C" fn cuFuncGetParamInfo(
    hfunc: usize,
    index: usize,
    offset: *mut usize,
    size: *mut usize,
) -> CuResult {
    let Some(f) = FUNCTIONS.get(hfunc) else {
        return INVALID_HANDLE;
    };
    let k = f.kernel();
    if index >= k.param_sizes.len() {
        return INVALID_VALUE;
    }
    if !offset.is_null() {
        *offset = k.param_offsets[index] as usize;
    }
    if !size.is_null() {
        *size = k.param_sizes[index] as usize;
    }
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetName(name: *mut *const c_char, hfunc: usize) -> CuResult {
    static NAMES: Mutex<Vec<std::ffi::CString>> = Mutex::new(Vec::new());
    if name.is_null() {
        return INVALID_VALUE;
    }
    let Some(f) = FUNCTIONS.get(hfunc) else {
        return INVALID_HANDLE;
    };
    let Ok(c) = std::ffi::CString::new(f.kernel().name.clone()) else {
        return INVALID_VALUE;
    };
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    *name = c.as_ptr();
    names.push(c); // the driver's strings live as long as the module; ours as the process
    SUCCESS
}
