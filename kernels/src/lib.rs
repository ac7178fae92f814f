//! CUDA C++ kernels of the ingot CUDA engine, compiled at run time with NVRTC.
//!
//! - [`UNITS`] / [`sources`]: the kernel sources (`kernels/cuda/*.cu`), each with the shared
//!   header `common.cuh` prepended, so every unit is one self-contained translation unit
//!   (no `#include` at all: the NVRTC pip wheel ships no headers).
//! - [`nvrtc`]: compiles a unit to CUBIN for one architecture, with an on-disk cache.
//! - [`probe`]: finds the CUDA driver and a device, failing with one clear line.
//!
//! Nothing here links against CUDA: `cudarc` opens `libnvrtc` and `libcuda` at run time, so
//! the crate builds and its tests run on machines without CUDA (the compile test then says
//! `SKIPPED`, unless `INGOT_REQUIRE_NVRTC=1`).
//!
//! Every kernel computes the same math as the CPU reference ops in
//! `train/src/engine/cpu/ops/` and `train/src/engine/optim.rs`, for f32 and bf16 storage
//! with f32 accumulation; see the comment at the top of each `.cu` file.

pub mod guard;
pub mod launch;
pub mod matmul;
pub mod nvrtc;
pub mod probe;

/// The shared header prepended to every unit.
pub const COMMON: &str = include_str!("../cuda/common.cuh");

/// One compilation unit: a `.cu` file with `common.cuh` prepended.
#[derive(Debug, Clone, Copy)]
pub struct Unit {
    /// File name, e.g. `rmsnorm.cu`.
    pub name: &'static str,
    /// Full source text (header included).
    pub source: &'static str,
    /// The `extern "C"` kernels the unit exports (the names to look up in its module).
    pub kernels: &'static [&'static str],
}

macro_rules! unit {
    ($file:literal, [$($kernel:literal),* $(,)?]) => {
        Unit {
            name: $file,
            source: concat!(
                include_str!("../cuda/common.cuh"),
                "\n// ---- ",
                $file,
                " ----\n",
                include_str!(concat!("../cuda/", $file))
            ),
            kernels: &[$($kernel),*],
        }
    };
}

/// Every compilation unit, one per layer family.
pub const UNITS: &[Unit] = &[
    unit!(
        "embedding.cu",
        [
            "embedding_forward_f32",
            "embedding_forward_bf16",
            "embedding_backward_f32",
            "embedding_backward_bf16",
        ]
    ),
    unit!(
        "rmsnorm.cu",
        [
            "rmsnorm_forward_f32",
            "rmsnorm_forward_bf16",
            "rmsnorm_backward_dx_f32",
            "rmsnorm_backward_dx_bf16",
            "rmsnorm_backward_dw_f32",
            "rmsnorm_backward_dw_bf16",
        ]
    ),
    unit!(
        "rope.cu",
        [
            "rope_tables",
            "rope_forward_f32",
            "rope_forward_bf16",
            "rope_backward_f32",
            "rope_backward_bf16",
        ]
    ),
    unit!(
        "attention.cu",
        [
            "attention_forward_f32",
            "attention_forward_bf16",
            "attention_decode_f32",
            "attention_decode_bf16",
            "attention_backward_delta_f32",
            "attention_backward_delta_bf16",
            "attention_backward_dq_f32",
            "attention_backward_dq_bf16",
            "attention_backward_dkv_f32",
            "attention_backward_dkv_bf16",
            "attention_forward_mma_hd64_bf16",
            "attention_forward_mma_hd128_bf16",
            "attention_backward_dq_mma_hd64_bf16",
            "attention_backward_dq_mma_hd128_bf16",
            "attention_backward_dkv_mma_hd64_bf16",
            "attention_backward_dkv_mma_hd128_bf16",
        ]
    ),
    unit!(
        "swiglu.cu",
        [
            "swiglu_forward_f32",
            "swiglu_forward_bf16",
            "swiglu_backward_f32",
            "swiglu_backward_bf16",
        ]
    ),
    unit!(
        "cross_entropy.cu",
        [
            "cross_entropy_f32",
            "cross_entropy_bf16",
            "cross_entropy_sum"
        ]
    ),
    unit!("adamw.cu", ["adamw_step_f32", "adamw_step_bf16"]),
    unit!(
        "norm.cu",
        ["grad_norm_partials", "grad_norm_finish", "scale_f32"]
    ),
    unit!(
        "cast.cu",
        [
            "cast_f32_to_bf16",
            "cast_bf16_to_f32",
            "add_inplace_f32",
            "add_inplace_bf16",
            "scale_inplace_f32",
            "scale_inplace_bf16",
            "accumulate_f32_from_f32",
            "accumulate_f32_from_bf16",
        ]
    ),
    unit!(
        "nf4.cu",
        ["nf4_absmax", "nf4_dequantize_f32", "nf4_dequantize_bf16"]
    ),
    unit!("lora.cu", ["lora_dropout_f32", "lora_dropout_bf16"]),
];

/// `(file name, full source)` of every unit, `common.cuh` included in each.
pub fn sources() -> &'static [(&'static str, &'static str)] {
    static SOURCES: std::sync::OnceLock<Vec<(&'static str, &'static str)>> =
        std::sync::OnceLock::new();
    SOURCES.get_or_init(|| UNITS.iter().map(|u| (u.name, u.source)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_is_self_contained() {
        assert_eq!(sources().len(), 11);
        for (name, src) in sources() {
            assert!(
                src.starts_with(COMMON),
                "{name}: common.cuh must come first"
            );
            assert!(
                !src.contains("#include"),
                "{name}: sources must not include anything (NVRTC has no headers)"
            );
        }
    }

    #[test]
    fn every_listed_kernel_is_mentioned_in_its_unit() {
        for u in UNITS {
            for k in u.kernels {
                // Names are either written out or built by a macro as `stem##_##SUFFIX`.
                let stem = k
                    .strip_suffix("_f32")
                    .or_else(|| k.strip_suffix("_bf16"))
                    .unwrap_or(k);
                assert!(u.source.contains(stem), "{}: {k} not found", u.name);
            }
        }
    }
}
