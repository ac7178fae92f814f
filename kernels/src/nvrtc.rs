//! Run-time compilation of the kernel units to CUBIN with NVRTC, and an on-disk cache.
//!
//! # Finding NVRTC
//!
//! `cudarc` (with `dynamic-loading`) opens NVRTC by *name* with `dlopen`, trying names such as
//! `libnvrtc.so`, `libnvrtc.so.13` (the major version of the pinned `cuda-13000` bindings),
//! `libnvrtc.so.12`, ...; it honours no environment variable of its own at run time (the
//! `CUDA_PATH`/`CUDA_HOME`/`CUDA_ROOT`/`CUDA_TOOLKIT_ROOT_DIR` and `CUDARC_CUDA_VERSION`
//! variables in its build script only matter when linking or when detecting the version at
//! build time, which this crate does not do). So, either:
//!
//! - put NVRTC's directory on `LD_LIBRARY_PATH` (what `.ci/run` does with the pip wheel
//!   `nvidia-cuda-nvrtc==13.0.88`: `<site>/nvidia/cu13/lib`), or
//! - set `INGOT_NVRTC_LIB` to the full path of `libnvrtc.so.13`: this crate opens it first,
//!   and the dynamic loader then hands the already-loaded library to cudarc's `dlopen` of
//!   the same soname. `libnvrtc-builtins.so.13.0` must sit next to it: NVRTC opens it by
//!   name and the wheel's library has no RPATH, so this crate preloads it from the same
//!   directory too.
//!
//! A missing library is reported as [`Error::NotFound`]; no cudarc call is made before the
//! library is known to load (cudarc panics otherwise), and every cudarc call is additionally
//! wrapped in `catch_unwind`.
//!
//! # Options
//!
//! `--gpu-architecture=sm_XX -std=c++17 -default-device`, plus `-lineinfo`. No
//! `--use_fast_math`: `expf`, `logf`, `sqrtf` and division stay IEEE (`-prec-div`,
//! `-prec-sqrt` and no flush-to-zero are NVRTC's defaults). NVRTC's default `--fmad=true` is
//! kept (contractions into FMA are IEEE operations, and the kernels that must match the CPU
//! bit for bit, AdamW, use the `__f*_rn` intrinsics that are never contracted).
//!
//! # Cache
//!
//! [`compile`] keeps CUBINs in `$INGOT_CACHE_DIR`, else `$HOME/.cache/ingot/kernels`, under
//! a name keyed by sha256 of (source, architecture, options, NVRTC version). Cache I/O
//! failures never fail a compile; they only cost a recompile.

use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nvrtc::{result, sys};
use sha2::{Digest, Sha256};

/// Environment variable: full path of `libnvrtc.so.13`, opened before the name lookup.
pub const NVRTC_LIB_ENV: &str = "INGOT_NVRTC_LIB";
/// Environment variable: directory of the CUBIN cache.
pub const CACHE_DIR_ENV: &str = "INGOT_CACHE_DIR";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NVRTC not found: {0}")]
    NotFound(String),
    #[error("NVRTC failed to compile {name} for {arch}:\n{log}")]
    Compile {
        name: String,
        arch: String,
        log: String,
    },
    #[error("NVRTC error in {call}: {message}")]
    Api { call: &'static str, message: String },
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// A fresh compile: the CUBIN and NVRTC's log (empty when there is nothing to say; any
/// text here is a warning, since errors fail the compile).
#[derive(Debug, Clone)]
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub log: String,
}

/// Options passed to NVRTC for `arch` (e.g. `sm_80`).
pub fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "-std=c++17".into(),
        "-default-device".into(),
        "-lineinfo".into(),
    ]
}

/// Runs `f`, turning a panic (cudarc panics on a missing library or symbol) into an error.
fn guarded<T>(call: &'static str, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    crate::guard::catch(f).unwrap_or_else(|message| Err(Error::Api { call, message }))
}

/// Checks (once) that NVRTC can be loaded, without panicking.
pub fn load() -> Result<(), Error> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            if let Some(path) = std::env::var_os(NVRTC_LIB_ENV).filter(|p| !p.is_empty()) {
                preload(Path::new(&path))?;
            }
            // SAFETY: only tries to dlopen candidate names.
            if unsafe { sys::is_culib_present() } {
                Ok(())
            } else {
                let names = cudarc::get_lib_name_candidates("nvrtc");
                let mut short: Vec<&String> = names
                    .iter()
                    .filter(|n| n.starts_with("libnvrtc.so"))
                    .collect();
                short.dedup();
                Err(format!(
                    "no loadable libnvrtc (tried {short:?}); install the CUDA 13 NVRTC \
                     (pip install nvidia-cuda-nvrtc==13.0.88) and put its lib directory on \
                     LD_LIBRARY_PATH, or set {NVRTC_LIB_ENV} to the path of libnvrtc.so.13"
                ))
            }
        })
        .clone()
        .map_err(Error::NotFound)
}

/// Opens `libnvrtc` at `path`, and first the `libnvrtc-builtins.so.*` beside it (NVRTC opens
/// it by name and has no RPATH), keeping both loaded for the life of the process: cudarc's
/// later `dlopen("libnvrtc.so.13")` then finds the loaded library by its soname.
fn preload(path: &Path) -> Result<(), String> {
    static KEEP: std::sync::Mutex<Vec<libloading::Library>> = std::sync::Mutex::new(Vec::new());
    let open = |p: &Path| {
        // SAFETY: loading NVRTC runs no initialisers with preconditions.
        unsafe { libloading::Library::new(p) }
            .map_err(|e| format!("{NVRTC_LIB_ENV}: cannot load {}: {e}", p.display()))
    };
    let mut keep = KEEP.lock().unwrap_or_else(|e| e.into_inner());
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut builtins: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
            })
            .collect();
        builtins.sort();
        for b in builtins {
            keep.push(open(&b)?);
        }
    }
    keep.push(open(path)?);
    Ok(())
}

/// The minor version from which the loaded NVRTC is ingot's stand-in (`emulator/nvrtc`, which
/// reports 13.9xyz): no real NVRTC has such a minor, so the CUBIN cache, keyed by the version,
/// never mixes its modules with real CUBIN.
pub const EMULATED_MINOR: i32 = 9000;

/// Whether the loaded NVRTC is the stand-in of `emulator/nvrtc` (its "CUBIN" is an emulated
/// module for the stand-in driver, not GPU code).
pub fn is_emulated() -> Result<bool, Error> {
    Ok(version()?.1 >= EMULATED_MINOR)
}

/// NVRTC's `(major, minor)` version.
pub fn version() -> Result<(i32, i32), Error> {
    load()?;
    guarded("nvrtcVersion", || {
        let (mut major, mut minor): (c_int, c_int) = (0, 0);
        // SAFETY: two valid out-pointers.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| api("nvrtcVersion", e))?;
        Ok((major, minor))
    })
}

fn api(call: &'static str, e: result::NvrtcError) -> Error {
    Error::Api {
        call,
        message: format!("{e:?}"),
    }
}

fn c_text(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).trim_end().to_string()
}

/// Compiles `source` (named `name` in messages) to CUBIN for `arch` (e.g. `sm_80`), without
/// the cache, returning NVRTC's log too. A failed compile returns [`Error::Compile`] with the
/// log.
pub fn compile_uncached(name: &str, source: &str, arch: &str) -> Result<Compiled, Error> {
    check_arch(arch)?;
    load()?;
    let src = CString::new(source).map_err(|_| Error::Invalid(format!("{name}: NUL in source")))?;
    let cname = CString::new(name).map_err(|_| Error::Invalid(format!("NUL in name {name:?}")))?;
    let opts = options(arch);
    guarded("nvrtcCompileProgram", || {
        let prog =
            result::create_program(&src, Some(&cname)).map_err(|e| api("nvrtcCreateProgram", e))?;
        // SAFETY: `prog` is live until destroy_program below; src/cname outlive it.
        unsafe {
            let compiled = result::compile_program(prog, &opts);
            let log = result::get_program_log(prog)
                .map(|l| c_text(&l))
                .unwrap_or_default();
            let out = match compiled {
                Err(_) => Err(Error::Compile {
                    name: name.into(),
                    arch: arch.into(),
                    log,
                }),
                Ok(()) => get_cubin(prog).map(|cubin| Compiled { cubin, log }),
            };
            let _ = result::destroy_program(prog);
            out
        }
    })
}

/// # Safety
/// `prog` must be a live, successfully compiled program.
unsafe fn get_cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, Error> {
    let mut size = 0usize;
    sys::nvrtcGetCUBINSize(prog, &mut size)
        .result()
        .map_err(|e| api("nvrtcGetCUBINSize", e))?;
    let mut cubin = vec![0u8; size];
    sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast())
        .result()
        .map_err(|e| api("nvrtcGetCUBIN", e))?;
    if cubin.is_empty() {
        return Err(Error::Api {
            call: "nvrtcGetCUBIN",
            message: "empty CUBIN (was the architecture virtual, compute_XX?)".into(),
        });
    }
    Ok(cubin)
}

fn check_arch(arch: &str) -> Result<(), Error> {
    let ok = arch
        .strip_prefix("sm_")
        .is_some_and(|v| v.len() >= 2 && v.chars().all(|c| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "architecture {arch:?}: expected a real one like sm_80 or sm_90a (CUBIN needs sm_)"
        )))
    }
}

/// The cache directory: `$INGOT_CACHE_DIR`, else `$HOME/.cache/ingot/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/ingot/kernels"))
}

/// Hex sha256 of everything that determines the CUBIN.
pub fn cache_key(source: &str, arch: &str, nvrtc_version: (i32, i32)) -> String {
    let mut h = Sha256::new();
    for part in [
        source.as_bytes(),
        arch.as_bytes(),
        options(arch).join(" ").as_bytes(),
        format!("nvrtc {}.{}", nvrtc_version.0, nvrtc_version.1).as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Compiles `source` to CUBIN for `arch`, through the on-disk cache in [`cache_dir`].
pub fn compile(name: &str, source: &str, arch: &str) -> Result<Vec<u8>, Error> {
    compile_cached_in(cache_dir().as_deref(), name, source, arch)
}

/// [`compile`] with an explicit cache directory (`None`: no cache).
pub fn compile_cached_in(
    cache: Option<&Path>,
    name: &str,
    source: &str,
    arch: &str,
) -> Result<Vec<u8>, Error> {
    check_arch(arch)?;
    let key = cache_key(source, arch, version()?);
    let stem: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = cache.map(|d| d.join(format!("{stem}-{arch}-{}.cubin", &key[..32])));
    if let Some(cubin) = path.as_ref().and_then(|p| std::fs::read(p).ok()) {
        if !cubin.is_empty() {
            return Ok(cubin);
        }
    }
    let compiled = compile_uncached(name, source, arch)?;
    if let Some(path) = path {
        let _ = write_atomic(&path, &compiled.cubin);
    }
    Ok(compiled.cubin)
}

/// Writes via a unique temporary file and a rename, so readers never see a partial CUBIN.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cubin"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_virtual_architectures_before_loading_anything() {
        assert!(matches!(
            compile_uncached("x", "", "compute_80"),
            Err(Error::Invalid(_))
        ));
        assert!(check_arch("sm_90a").is_ok());
    }

    #[test]
    fn cache_key_depends_on_every_input() {
        let k = cache_key("a", "sm_80", (13, 0));
        assert_eq!(k.len(), 64);
        assert_ne!(k, cache_key("b", "sm_80", (13, 0)));
        assert_ne!(k, cache_key("a", "sm_90", (13, 0)));
        assert_ne!(k, cache_key("a", "sm_80", (13, 1)));
    }
}
