// Softmax cross-entropy over logits[n, vocab], fused with its backward (cpu/ops/cross_entropy.rs):
//
//   m     = max_j z_j
//   lse   = m + ln sum_j e^(z_j - m)
//   loss  = lse - z_target
//   dz_j  = (softmax(z)_j - [j = target]) * grad_scale
//
// One block per row. The logits are read twice (an online max/sum pass, then the gradient
// pass) and, when write_dlogits is set, overwritten in place by their gradient; no f32
// probabilities are ever stored. A target of 0xffffffff (u32::MAX) marks an ignored row: loss
// 0 and an all-zero gradient. A target >= vocab (any other) gives a NaN loss (the host
// validates targets). Per-row losses go to losses[n] (f32); cross_entropy_sum adds them.

#define INGOT_IGNORE_TARGET 0xffffffffu

template <typename T>
__device__ __forceinline__ void cross_entropy_impl(T* logits, float* losses, const u32* targets,
                                                   u32 n, u32 vocab, float grad_scale,
                                                   int write_dlogits) {
    const u64 row = blockIdx.x;
    if (row >= n) return;
    T* z = logits + row * vocab;
    const u32 target = targets[row];
    if (target == INGOT_IGNORE_TARGET) {
        if (write_dlogits) {
            for (u32 j = threadIdx.x; j < vocab; j += blockDim.x) z[j] = from_f32<T>(0.0f);
        }
        if (threadIdx.x == 0) losses[row] = 0.0f;
        return;
    }
    // Per-thread online max and sum of e^(z - max), then combined across the block.
    float m = INGOT_NEG_INF, s = 0.0f;
    for (u32 j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float v = to_f32(z[j]);
        if (v == INGOT_NEG_INF) continue;  // adds e^-inf = 0 (and avoids -inf - -inf)
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else {
            s += expf(v - m);
        }
    }
    const float row_max = block_max(m);
    const float sum = block_sum(m == INGOT_NEG_INF ? 0.0f : s * expf(m - row_max));
    if (threadIdx.x == 0) {
        losses[row] = target < vocab ? row_max + logf(sum) - to_f32(z[target]) : INGOT_NAN;
    }
    if (!write_dlogits) return;
    // Thread 0 must read z[target] above before any thread overwrites it.
    __syncthreads();
    for (u32 j = threadIdx.x; j < vocab; j += blockDim.x) {
        float d = expf(to_f32(z[j]) - row_max) / sum * grad_scale;
        if (j == target) d -= grad_scale;
        z[j] = from_f32<T>(d);
    }
}

#define INGOT_CROSS_ENTROPY(SUFFIX, T)                                                    \
    extern "C" __global__ void cross_entropy_##SUFFIX(T* logits, float* losses,           \
                                                      const u32* targets, u32 n,          \
                                                      u32 vocab, float grad_scale,        \
                                                      int write_dlogits) {                \
        cross_entropy_impl<T>(logits, losses, targets, n, vocab, grad_scale,              \
                              write_dlogits);                                             \
    }
INGOT_CROSS_ENTROPY(f32, float)
INGOT_CROSS_ENTROPY(bf16, bf16)

// out[0] = sum of losses[0..n) in f64, in a fixed order (one block; deterministic).
// Launch with grid = 1.
extern "C" __global__ void cross_entropy_sum(float* out, const float* losses, u32 n) {
    double acc = 0.0;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) acc += (double)losses[i];
    acc = block_sum_f64(acc);
    if (threadIdx.x == 0) out[0] = (float)acc;
}
