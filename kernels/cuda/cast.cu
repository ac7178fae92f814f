// Conversions between storage types (round to nearest even into bf16), and small
// elementwise helpers the engine needs between layers.

extern "C" __global__ void cast_f32_to_bf16(bf16* out, const float* in, u64 n) {
    INGOT_GRID_STRIDE(i, n) { out[i] = f32_to_bf16(in[i]); }
}

extern "C" __global__ void cast_bf16_to_f32(float* out, const bf16* in, u64 n) {
    INGOT_GRID_STRIDE(i, n) { out[i] = bf16_to_f32(in[i]); }
}

// y[i] = y[i] + x[i] (residual adds, gradient accumulation of activations).
template <typename T>
__device__ __forceinline__ void add_inplace_impl(T* y, const T* x, u64 n) {
    INGOT_GRID_STRIDE(i, n) { y[i] = from_f32<T>(to_f32(y[i]) + to_f32(x[i])); }
}

// acc[i] = acc[i] + x[i] in f32 (accumulating a storage-type gradient into f32 grads).
template <typename T>
__device__ __forceinline__ void accumulate_f32_impl(float* acc, const T* x, u64 n) {
    INGOT_GRID_STRIDE(i, n) { acc[i] = acc[i] + to_f32(x[i]); }
}

// x[i] = s * x[i] (LoRA's scaling of an adapter's low-rank activations).
template <typename T>
__device__ __forceinline__ void scale_inplace_impl(T* x, float s, u64 n) {
    INGOT_GRID_STRIDE(i, n) { x[i] = from_f32<T>(s * to_f32(x[i])); }
}

#define INGOT_CAST(SUFFIX, T)                                                             \
    extern "C" __global__ void add_inplace_##SUFFIX(T* y, const T* x, u64 n) {            \
        add_inplace_impl<T>(y, x, n);                                                     \
    }                                                                                     \
    extern "C" __global__ void scale_inplace_##SUFFIX(T* x, float s, u64 n) {             \
        scale_inplace_impl<T>(x, s, n);                                                   \
    }                                                                                     \
    extern "C" __global__ void accumulate_f32_from_##SUFFIX(float* acc, const T* x,       \
                                                            u64 n) {                       \
        accumulate_f32_impl<T>(acc, x, n);                                                \
    }
INGOT_CAST(f32, float)
INGOT_CAST(bf16, bf16)
