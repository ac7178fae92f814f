// NF4 dequantisation for QLoRA's frozen base (train/src/quant/nf4.rs): a weight is stored as a
// 4-bit index into 16 fixed values and one absmax per block of 64 weights, two indices per
// byte, the first weight of a pair in the high nibble:
//
//   w[i] = code16[nibble(i)] * absmax[i / 64]        (one f32 product, then rounded to T)
//
// With double quantisation the absmax values are themselves stored as 8-bit indices into
// bitsandbytes' dynamic code, one f32 scale per 256 of them and their mean as an offset:
//
//   absmax[j] = code256[q[j]] * scales[j / 256] + offset
//
// written by nf4_absmax first into an f32 buffer. The products and the sum are the
// non-contracting intrinsics, so that both kernels give the CPU's values bit for bit (a fused
// multiply-add would round once where the CPU rounds twice). The code books come from the
// host (the CPU's constants), not from a second copy here.

extern "C" __global__ void nf4_absmax(float* absmax, const u8* q, const float* scales,
                                      const float* code256, float offset, u64 blocks) {
    INGOT_GRID_STRIDE(j, blocks) {
        absmax[j] = __fadd_rn(__fmul_rn(code256[q[j]], scales[j / 256]), offset);
    }
}

// One thread per packed byte: two weights of the same block.
template <typename T>
__device__ __forceinline__ void nf4_dequantize_impl(T* w, const u8* packed, const float* absmax,
                                                    const float* code16, u64 bytes) {
    INGOT_GRID_STRIDE(k, bytes) {
        const u8 b = packed[k];
        const float m = absmax[k / 32];
        w[2 * k] = from_f32<T>(__fmul_rn(code16[b >> 4], m));
        w[2 * k + 1] = from_f32<T>(__fmul_rn(code16[b & 15], m));
    }
}

#define INGOT_NF4(SUFFIX, T)                                                              \
    extern "C" __global__ void nf4_dequantize_##SUFFIX(T* w, const u8* packed,            \
                                                       const float* absmax,               \
                                                       const float* code16, u64 bytes) {  \
        nf4_dequantize_impl<T>(w, packed, absmax, code16, bytes);                         \
    }
INGOT_NF4(f32, float)
INGOT_NF4(bf16, bf16)
