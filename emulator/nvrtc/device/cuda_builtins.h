// ingot emulator: CUDA's built-ins for the host C++ compiler, so that kernels/cuda/*.cu compile
// unchanged with g++ and run on the SIMT runtime in simt.h. The NVRTC stand-in passes this
// file with -include ahead of each unit; it defines __CUDA_ARCH__ for the requested arch and
// INGOT_EMU (the one place a .cu file looks at it: the emulated body of mma.sync).
//
// Only what CUDA C++ device code can use is here; what the kernels use is tested by compiling
// them (kernels/tests/compile.rs runs the same units through this stand-in).

#pragma once

#include "simt.h"

#define __CUDACC__ 1
#define __CUDACC_RTC__ 1
#define INGOT_EMU 1

// Execution-space and storage specifiers.
#define __device__
#define __host__
#ifdef INGOT_EMU_SCAN
// The NVRTC stand-in's first pass (the preprocessor only) finds the kernels by these markers.
#define __global__ __ingot_emu_global__
#define __launch_bounds__(...) __ingot_emu_launch_bounds__(__VA_ARGS__)
#else
#define __global__
#define __launch_bounds__(...)
#endif
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
// One copy per module, and the module runs one block at a time: a static is per-block storage.
// The section lets the runtime fill all of it with NaNs before each block.
#define __shared__ static __attribute__((section("ingot_shared")))
#define __constant__ static

using ingot_emu::dim3;
using ingot_emu::uint3;

#define threadIdx (::ingot_emu::cur->idx)
#define blockIdx (::ingot_emu::blk.idx)
#define blockDim (::ingot_emu::blk.dim)
#define gridDim (::ingot_emu::blk.grid)
#define warpSize 32

// ---- synchronisation ------------------------------------------------------------------------

inline void __syncthreads() { ::ingot_emu::block_barrier(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    ::ingot_emu::check_full_mask(mask, "__syncwarp");
    ::ingot_emu::warp_exchange(::ingot_emu::syncwarp);
}

[[noreturn]] inline void __trap() {
    ::ingot_emu::fault(INGOT_EMU_TRAP, 0, "__trap() was called");
}

// ---- warp shuffles (full warps, full mask) --------------------------------------------------

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    (void)width;
    return ::ingot_emu::shuffle(mask, v, ::ingot_emu::src_xor, lane_mask, "__shfl_xor_sync");
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    (void)width;
    return ::ingot_emu::shuffle(mask, v, ::ingot_emu::src_idx, src_lane, "__shfl_sync");
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    (void)width;
    return ::ingot_emu::shuffle(mask, v, ::ingot_emu::src_down, (int)delta, "__shfl_down_sync");
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    (void)width;
    return ::ingot_emu::shuffle(mask, v, ::ingot_emu::src_up, (int)delta, "__shfl_up_sync");
}

// ---- atomics: the fibers of a block switch only at barriers, so a plain read-modify-write is
// atomic here ----------------------------------------------------------------------------------

template <typename T>
inline T atomicAdd(T* p, T v) {
    const T old = *p;
    *p = old + v;
    return old;
}
template <typename T>
inline T atomicSub(T* p, T v) {
    const T old = *p;
    *p = old - v;
    return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
    const T old = *p;
    *p = old < v ? v : old;
    return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
    const T old = *p;
    *p = v < old ? v : old;
    return old;
}
template <typename T>
inline T atomicExch(T* p, T v) {
    const T old = *p;
    *p = v;
    return old;
}
template <typename T>
inline T atomicCAS(T* p, T compare, T v) {
    const T old = *p;
    if (old == compare) *p = v;
    return old;
}

// ---- arithmetic intrinsics ------------------------------------------------------------------
// The module is compiled with -ffp-contract=off, so these are single IEEE operations with
// round-to-nearest, as the _rn intrinsics promise (and are never fused).

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }

template <typename To, typename From>
inline To ingot_emu_bit_cast(From v) {
    static_assert(sizeof(To) == sizeof(From), "same size");
    To out;
    memcpy(&out, &v, sizeof out);
    return out;
}
inline float __int_as_float(int v) { return ingot_emu_bit_cast<float>(v); }
inline float __uint_as_float(unsigned v) { return ingot_emu_bit_cast<float>(v); }
inline int __float_as_int(float v) { return ingot_emu_bit_cast<int>(v); }
inline unsigned __float_as_uint(float v) { return ingot_emu_bit_cast<unsigned>(v); }
inline double __longlong_as_double(long long v) { return ingot_emu_bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return ingot_emu_bit_cast<long long>(v); }

// CUDA's min/max overloads; mixed signed/unsigned arguments compare as unsigned, as in CUDA.
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    return (C)b < (C)a ? (C)b : (C)a;
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    return (C)a < (C)b ? (C)b : (C)a;
}

// The emulated body of the one inline PTX instruction the kernels use (attention.cu).
inline void ingot_emu_mma_m16n8k16_bf16_f32(float* c, const unsigned* a, unsigned b0,
                                            unsigned b1) {
    ::ingot_emu::mma_m16n8k16_bf16_f32(c, a, b0, b1);
}
