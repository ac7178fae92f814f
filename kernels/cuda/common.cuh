// ingot CUDA kernels: shared definitions, prepended to every unit by `ingot_kernels::sources()`.
//
// Self-contained on purpose: NVRTC from the pip wheel has no include directories, so nothing
// here includes a system header (not even <cuda_bf16.h>). NVRTC's built-in device functions
// (expf, logf, sqrtf, __shfl_xor_sync, __float_as_uint, ...) need no include.
//
// Conventions of every kernel:
// - storage types are `float` (f32) and `bf16`; all arithmetic and accumulation is in f32
//   (f64 where the CPU reference uses f64: RoPE angles, the global gradient norm);
// - parameter gradients, optimizer state, master weights and softmax statistics are f32;
// - block sizes are multiples of 32 and at most 1024 (the block reductions rely on it);
// - no atomics: every result is written by one thread in a fixed order, so runs are
//   bitwise reproducible.

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;
typedef unsigned char u8;

// bfloat16 as its raw bits: the upper half of an IEEE f32.
struct bf16 {
    unsigned short bits;
};

#define INGOT_FULL_MASK 0xffffffffu
#define INGOT_NEG_INF __int_as_float(0xff800000)
#define INGOT_NAN __int_as_float(0x7fc00000)

__device__ __forceinline__ float bf16_to_f32(bf16 h) {
    return __uint_as_float(((u32)h.bits) << 16);
}

// Round to nearest, ties to even; NaN stays a (quiet) NaN, infinities stay infinite,
// and finite values that round past the largest bf16 become infinities (as IEEE does).
__device__ __forceinline__ bf16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    bf16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        h.bits = (unsigned short)((u >> 16) | 0x0040u);
        return h;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    h.bits = (unsigned short)(u >> 16);
    return h;
}

// Loads and stores through f32, for either storage type.
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return bf16_to_f32(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return f32_to_bf16(x); }

// ---- reductions -------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(INGOT_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_f64(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(INGOT_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(INGOT_FULL_MASK, v, o));
    return v;
}

// Block-wide reductions; every thread of the block gets the result. Every thread must call
// them (they synchronise). The leading __syncthreads protects the scratch from a previous
// call, so they can be called back to back.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_sum(lane < warps ? scratch[lane] : 0.0f);
}

__device__ __forceinline__ double block_sum_f64(double v) {
    __shared__ double scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = warp_sum_f64(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_sum_f64(lane < warps ? scratch[lane] : 0.0);
}

__device__ __forceinline__ float block_max(float v) {
    __shared__ float scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_max(lane < warps ? scratch[lane] : INGOT_NEG_INF);
}

// Grid-stride loop over [0, n) with 64-bit indices.
#define INGOT_GRID_STRIDE(i, n)                                                           \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)(n);                \
         i += (u64)blockDim.x * gridDim.x)

// Each unit defines its kernels as `__device__` templates `*_impl<T>` and instantiates the
// `extern "C"` entry points NAME_f32 / NAME_bf16 with a local macro, so the names NVRTC
// exports are unmangled and stable.
