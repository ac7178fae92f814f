// LoRA dropout on an adapter's input (train/src/engine/cpu/lora.rs), the CPU's masks exactly:
// element e of the input of (layer, target) survives when
//
//   u = splitmix64(key ^ e * 0x9e3779b97f4a7c15) >> 11, as a double in [0, 1), is >= p,
//
// with key = seed ^ layer << 40 ^ target << 56 (computed on the host), and is then scaled by
// inv = 1 / (1 - p) (an f32 product, as the CPU's); a dropped element is 0. The same mask
// applies to the input's gradient. out may be in (each element is read, then written, by one
// thread).

__device__ __forceinline__ u64 ingot_splitmix64(u64 state) {
    u64 z = state + 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

template <typename T>
__device__ __forceinline__ void lora_dropout_impl(T* out, const T* in, u64 key, double p,
                                                  float inv, u64 n) {
    INGOT_GRID_STRIDE(e, n) {
        const u64 r = ingot_splitmix64(key ^ (e * 0x9e3779b97f4a7c15ULL));
        const double u = (double)(r >> 11) / 9007199254740992.0;  // 2^53
        out[e] = u >= p ? from_f32<T>(__fmul_rn(to_f32(in[e]), inv)) : from_f32<T>(0.0f);
    }
}

#define INGOT_LORA(SUFFIX, T)                                                             \
    extern "C" __global__ void lora_dropout_##SUFFIX(T* out, const T* in, u64 key,        \
                                                     double p, float inv, u64 n) {         \
        lora_dropout_impl<T>(out, in, key, p, inv, n);                                    \
    }
INGOT_LORA(f32, float)
INGOT_LORA(bf16, bf16)
