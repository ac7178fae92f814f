// AdamW with decoupled weight decay (train/src/engine/optim.rs, torch.optim.AdamW):
//
//   g  = grad * grad_scale
//   p -= lr * wd * p                       (only where decay[i] != 0)
//   m  = b1 * m + (1 - b1) * g
//   v  = b2 * v + (1 - b2) * g * g
//   p -= step_size * m / (sqrt(v) / bc2_sqrt + eps)
//
// step_size = lr / (1 - b1^step) and bc2_sqrt = sqrt(1 - b2^step) are computed by the host in
// f64 and rounded to f32, as the CPU does. The f32 arithmetic uses the _rn intrinsics so it is
// never contracted into FMAs: an f32 step is bitwise the CPU step.
//
// params, m, v are the f32 master state; `work` (may be null) receives the updated weight in
// the storage type (the bf16 working copy). grad_scale points at one f32 on the device (e.g.
// the clip factor from grad_norm_finish) so no host round trip is needed; null means 1.

template <typename T>
__device__ __forceinline__ void adamw_impl(float* params, T* work, const float* grads,
                                           float* exp_avg, float* exp_avg_sq, const u8* decay,
                                           const float* grad_scale, u64 n, float lr, float b1,
                                           float b2, float eps, float wd, float step_size,
                                           float bc2_sqrt) {
    const float gs = grad_scale ? grad_scale[0] : 1.0f;
    const float lr_wd = __fmul_rn(lr, wd);
    const float one_b1 = 1.0f - b1, one_b2 = 1.0f - b2;
    INGOT_GRID_STRIDE(i, n) {
        const float g = __fmul_rn(grads[i], gs);
        float p = params[i];
        if (decay[i]) p = __fsub_rn(p, __fmul_rn(lr_wd, p));
        const float m = __fadd_rn(__fmul_rn(b1, exp_avg[i]), __fmul_rn(one_b1, g));
        const float v =
            __fadd_rn(__fmul_rn(b2, exp_avg_sq[i]), __fmul_rn(__fmul_rn(one_b2, g), g));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), bc2_sqrt), eps);
        p = __fsub_rn(p, __fdiv_rn(__fmul_rn(step_size, m), denom));
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        params[i] = p;
        if (work) work[i] = from_f32<T>(p);
    }
}

#define INGOT_ADAMW(SUFFIX, T)                                                            \
    extern "C" __global__ void adamw_step_##SUFFIX(                                       \
        float* params, T* work, const float* grads, float* exp_avg, float* exp_avg_sq,    \
        const u8* decay, const float* grad_scale, u64 n, float lr, float b1, float b2,    \
        float eps, float wd, float step_size, float bc2_sqrt) {                           \
        adamw_impl<T>(params, work, grads, exp_avg, exp_avg_sq, decay, grad_scale, n, lr, \
                      b1, b2, eps, wd, step_size, bc2_sqrt);                              \
    }
INGOT_ADAMW(f32, float)
INGOT_ADAMW(bf16, bf16)
