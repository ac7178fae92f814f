//! A stand-in `libcublasLt.so.13` for running ingot's CUDA code path without a GPU: the
//! cuBLASLt entry points `cudarc` reaches (CUDA 13.0 API), with the GEMM computed on the CPU.
//! Device pointers are host addresses (the stand-in `libcuda.so.1` maps device memory into
//! the process), so a matmul reads and writes them directly, synchronously.
//!
//! Implemented:
//! - handles and descriptors: `cublasLtCreate`/`Destroy`, `cublasLtMatmulDesc*`,
//!   `cublasLtMatrixLayout*`, `cublasLtMatmulPreference*` (Create, Destroy, Set/GetAttribute);
//! - `cublasLtMatmulAlgoGetHeuristic` (one algorithm), `cublasLtMatmulAlgoCheck`,
//!   `cublasLtMatmul`: `D = alpha·op(A)·op(B) + beta·C`, column-major, in place or not,
//!   under `CUBLAS_COMPUTE_32F` with f32 alpha/beta on the host, for f32→f32, bf16→bf16 and
//!   bf16→f32 ([`gemm`] has the numerics: f32 accumulation in a fixed order, bitwise the
//!   same for any thread count);
//! - versions, properties, status names and strings, the heuristics-cache capacity, the
//!   logger level/mask/callback (refusals are logged when `CUBLASLT_LOG_LEVEL` ≥ 1).
//!
//! Refused as cuBLASLt refuses them ([`plan`], [`matmul`]): other types or compute types,
//! row-major and tiled orders, batches, epilogues, device pointer modes, scale/bias pointers
//! (`CUBLAS_STATUS_NOT_SUPPORTED`); inconsistent shapes, leading dimensions below the rows,
//! null or misaligned pointers, dead descriptors (`CUBLAS_STATUS_INVALID_VALUE`; a dead
//! handle is `CUBLAS_STATUS_NOT_INITIALIZED`). Where the stand-in driver is loaded, a matrix
//! outside every live device allocation is reported to it as an illegal address and the
//! matmul returns `CUBLAS_STATUS_EXECUTION_FAILED` ([`driver`]).
//!
//! Every other entry point of the CUDA 13.0 cuBLASLt API is exported too, returning
//! `CUBLAS_STATUS_NOT_SUPPORTED` and naming itself on stderr and in
//! `cublasLtGetStatusString` (a missing symbol would make cudarc panic).
#![allow(clippy::missing_safety_doc)] // every export follows cuBLASLt's documented contract

pub mod api;
pub mod descriptors;
pub mod driver;
pub mod gemm;
pub mod log;
pub mod matmul;
pub mod plan;
pub mod status;

#[cfg(test)]
mod tests;

ingot_emu_common::not_implemented!(
    "cublaslt",
    status::NOT_SUPPORTED;
    cublasLtEmulationDescCreate,
    cublasLtEmulationDescDestroy,
    cublasLtEmulationDescGetAttribute,
    cublasLtEmulationDescInit_internal,
    cublasLtEmulationDescSetAttribute,
    cublasLtLoggerOpenFile,
    cublasLtLoggerSetFile,
    cublasLtMatmulAlgoCapGetAttribute,
    cublasLtMatmulAlgoConfigGetAttribute,
    cublasLtMatmulAlgoConfigSetAttribute,
    cublasLtMatmulAlgoGetIds,
    cublasLtMatmulAlgoInit,
    cublasLtMatmulDescInit_internal,
    cublasLtMatmulPreferenceInit_internal,
    cublasLtMatrixLayoutInit_internal,
    cublasLtMatrixTransform,
    cublasLtMatrixTransformDescCreate,
    cublasLtMatrixTransformDescDestroy,
    cublasLtMatrixTransformDescGetAttribute,
    cublasLtMatrixTransformDescInit_internal,
    cublasLtMatrixTransformDescSetAttribute,
);
