// Token embedding, table[vocab, d] (same math as train/src/engine/cpu/ops/embedding.rs).
//
//   forward:  x[i]            = table[ids[i]]
//   backward: dtable[ids[i]] += dx[i]        (f32 gradient, i in increasing order)
//
// The host checks ids < vocab; on the device an out-of-range id gives a row of NaNs in the
// forward and is skipped in the backward, so it never reads or writes out of bounds.

template <typename T>
__device__ __forceinline__ void embedding_forward_impl(T* x, const T* table, const u32* ids,
                                                       u32 n, u32 d, u32 vocab) {
    INGOT_GRID_STRIDE(e, (u64)n * d) {
        const u64 i = e / d, j = e % d;
        const u32 id = ids[i];
        x[e] = id < vocab ? table[(u64)id * d + j] : from_f32<T>(INGOT_NAN);
    }
}

// One thread per column j; each walks the tokens in order, so a repeated id accumulates in
// the same order as the CPU reference and no atomics are needed (deterministic). Launch
// ceil(d / blockDim.x) blocks: only 3 at d = 768, too few for 132 SMs (see `per_column` in
// kernels/src/launch.rs for the fix that is not done yet).
template <typename T>
__device__ __forceinline__ void embedding_backward_impl(float* dtable, const T* dx,
                                                        const u32* ids, u32 n, u32 d,
                                                        u32 vocab) {
    const u32 j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    for (u32 i = 0; i < n; ++i) {
        const u32 id = ids[i];
        if (id >= vocab) continue;
        const u64 at = (u64)id * d + j;
        dtable[at] = dtable[at] + to_f32(dx[(u64)i * d + j]);
    }
}

#define INGOT_EMBEDDING(SUFFIX, T)                                                        \
    extern "C" __global__ void embedding_forward_##SUFFIX(                                \
        T* x, const T* table, const u32* ids, u32 n, u32 d, u32 vocab) {                  \
        embedding_forward_impl<T>(x, table, ids, n, d, vocab);                            \
    }                                                                                     \
    extern "C" __global__ void embedding_backward_##SUFFIX(                               \
        float* dtable, const T* dx, const u32* ids, u32 n, u32 d, u32 vocab) {            \
        embedding_backward_impl<T>(dtable, dx, ids, n, d, vocab);                         \
    }
INGOT_EMBEDDING(f32, float)
INGOT_EMBEDDING(bf16, bf16)
