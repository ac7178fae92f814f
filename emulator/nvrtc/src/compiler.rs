//! One compile: CUDA C++ source → emulated module image, with the host C++ compiler.
//!
//! 1. Preprocess with `INGOT_EMU_SCAN` and find the kernels ([`crate::scan`]).
//! 2. Append one `INGOT_EMU_KERNEL(name, max_threads)` per kernel (the runtime's table of
//!    entry points; the parameter lists are deduced from the kernels' types by the compiler)
//!    and compile to an object file with `-ffunction-sections`.
//! 3. Read each kernel's static shared memory off the object ([`crate::shared`]) and refuse a
//!    kernel over the device's 48 KiB, as ptxas does.
//! 4. Link a shared object and wrap it in an image ([`ingot_emu_common::image`]).
//!
//! The module is compiled with `-fno-strict-aliasing` (the kernels reinterpret bf16 pairs as
//! 32-bit words, as CUDA allows), `-ffp-contract=off` (every `a * b + c` rounds twice, so the
//! `__f*_rn` intrinsics and the CPU reference agree), and the compiler's alignment and
//! array-bounds checks, whose handlers (in `simt.h`) report a fault instead of going on.

use std::path::Path;
use std::process::Command;

use ingot_emu_common::image::{self, KernelMeta, Metadata};

use crate::options::Options;
use crate::{scan, shared};

/// The device's static shared memory limit per block (48 KiB on every architecture since
/// sm_20; more needs dynamic shared memory and an opt-in).
pub const STATIC_SHARED_LIMIT: u64 = 48 << 10;

const SIMT_H: &str = include_str!("../device/simt.h");
const BUILTINS_H: &str = include_str!("../device/cuda_builtins.h");

/// Environment variable: the host C++ compiler (default `g++`).
pub const CXX_ENV: &str = "INGOT_EMU_CXX";

/// A finished compile: the image (none for a virtual architecture such as `compute_90`, which
/// has no CUBIN) and the compiler's log (warnings).
#[derive(Debug, Clone)]
pub struct Compiled {
    pub image: Option<Vec<u8>>,
    pub log: String,
}

/// Compiles `source` (named `program` in messages). `Err` is the log of a failed compile.
pub fn compile(program: &str, source: &str, opts: &Options) -> Result<Compiled, String> {
    let dir = tempfile::Builder::new()
        .prefix("ingot-emu-nvrtc-")
        .tempdir()
        .map_err(|e| format!("error: cannot create a temporary directory: {e}"))?;
    let d = dir.path();
    let file = file_name(program);
    let write = |name: &str, text: &str| {
        std::fs::write(d.join(name), text)
            .map_err(|e| format!("error: cannot write {name} in {}: {e}", d.display()))
    };
    write("simt.h", SIMT_H)?;
    write("cuda_builtins.h", BUILTINS_H)?;
    write(&file, source)?;

    let preprocessed = run(
        d,
        cxx(opts, d).args(["-E", "-P", "-DINGOT_EMU_SCAN", &file]),
    )?
    .0;
    let kernels = scan::kernels(&preprocessed)?;

    let mut unit = source.to_string();
    unit.push_str("\n// ---- the emulator's table of entry points ----\n");
    for k in &kernels {
        unit.push_str(&format!(
            "INGOT_EMU_KERNEL({}, {})\n",
            k.name, k.max_threads
        ));
    }
    write(&file, &unit)?;
    let (_, mut log) = run(
        d,
        cxx(opts, d)
            .args([
                "-c",
                "-O2",
                "-ffunction-sections",
                "-fsanitize=alignment,bounds",
            ])
            .args([
                "-fno-sanitize-recover=alignment,bounds",
                &file,
                "-o",
                "module.o",
            ]),
    )?;
    let object = std::fs::read(d.join("module.o"))
        .map_err(|e| format!("error: cannot read the object file: {e}"))?;
    let names: Vec<String> = kernels.iter().map(|k| k.name.clone()).collect();
    let shared = shared::static_shared_bytes(&object, &names).map_err(|e| format!("error: {e}"))?;
    let mut metas = Vec::new();
    for k in &kernels {
        let bytes = shared.get(&k.name).copied().unwrap_or(0);
        if bytes > STATIC_SHARED_LIMIT {
            return Err(format!(
                "error: entry function '{}' uses too much shared data ({bytes:#x} bytes, \
                 {STATIC_SHARED_LIMIT:#x} max)",
                k.name
            ));
        }
        metas.push(KernelMeta {
            name: k.name.clone(),
            static_shared_bytes: bytes as u32,
            max_threads: k.max_threads,
        });
    }
    if !opts.has_cubin() {
        return Ok(Compiled { image: None, log });
    }
    let (_, link_log) = run(
        d,
        Command::new(cxx_program())
            .current_dir(d)
            .args(["-shared", "module.o", "-o", "module.so"]),
    )?;
    log.push_str(&link_log);
    let so = std::fs::read(d.join("module.so"))
        .map_err(|e| format!("error: cannot read the linked module: {e}"))?;
    let meta = Metadata {
        arch: opts.arch.clone(),
        program: program.to_string(),
        kernels: metas,
    };
    Ok(Compiled {
        image: Some(image::encode(&meta, &so)),
        log,
    })
}

/// The program's file name in the build directory: its own name if it is a plain file name,
/// so the compiler's messages name it.
fn file_name(program: &str) -> String {
    let plain: String = program
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let plain = plain.trim_start_matches('.');
    if plain.is_empty() {
        "default_program.cu".into()
    } else {
        plain.to_string()
    }
}

fn cxx_program() -> String {
    std::env::var(CXX_ENV)
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "g++".into())
}

/// The compiler with the flags every pass shares.
fn cxx(opts: &Options, dir: &Path) -> Command {
    let mut c = Command::new(cxx_program());
    c.current_dir(dir).args([
        &format!("-std={}", opts.std),
        "-x",
        "c++",
        "-fPIC",
        "-fvisibility=hidden",
        "-fvisibility-inlines-hidden",
        "-fno-gnu-unique",
        "-fno-strict-aliasing",
        "-ffp-contract=off",
        "-fno-math-errno",
        // NVRTC warns of an unused variable by default; so does the stand-in.
        "-Wunused-variable",
        "-include",
        "cuda_builtins.h",
        &format!("-D__CUDA_ARCH__={}", opts.cuda_arch),
    ]);
    for d in &opts.defines {
        c.arg(format!("-D{d}"));
    }
    for u in &opts.undefines {
        c.arg(format!("-U{u}"));
    }
    c
}

/// Runs the compiler; `Ok((stdout, stderr))` on success, `Err(stderr)` on failure, with the
/// build directory's path taken out of the messages.
fn run(dir: &Path, cmd: &mut Command) -> Result<(String, String), String> {
    let out = cmd.output().map_err(|e| {
        format!(
            "error: the NVRTC stand-in compiles with the host C++ compiler, and {:?} could not \
             be started ({e}); install g++ or set {CXX_ENV}",
            cmd.get_program()
        )
    })?;
    let clean = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let prefix = format!("{}/", dir.display());
        text.replace(&prefix, "")
    };
    let stderr = clean(&out.stderr);
    if out.status.success() {
        Ok((String::from_utf8_lossy(&out.stdout).into_owned(), stderr))
    } else if stderr.trim().is_empty() {
        Err(format!("error: the host compiler failed ({})", out.status))
    } else {
        Err(stderr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_plain() {
        assert_eq!(file_name("rmsnorm.cu"), "rmsnorm.cu");
        assert_eq!(file_name("../a b.cu"), "_a_b.cu");
        assert_eq!(file_name(""), "default_program.cu");
    }
}
