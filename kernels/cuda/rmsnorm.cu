// RMSNorm (HF LlamaRMSNorm) per row of x[n, d] (same math as cpu/ops/rmsnorm.rs):
//
//   rstd = 1 / sqrt(mean_j(x_j^2) + eps)      (IEEE sqrt and division, not rsqrtf)
//   y_j  = (x_j * rstd) * w_j
//
// Backward, with c = sum_j dy_j * w_j * x_j:
//
//   dx_k  = rstd * (dy_k * w_k - x_k * rstd^2 * c / d)    (overwritten)
//   dw_j += sum_rows dy_j * x_j * rstd                     (f32, accumulated, rows in order)
//
// rstd[n] (f32) is saved by the forward.

// One block per row (grid = n).
template <typename T>
__device__ __forceinline__ void rmsnorm_forward_impl(T* y, float* rstd, const T* x,
                                                     const T* w, u32 n, u32 d, float eps) {
    const u64 row = blockIdx.x;
    if (row >= n) return;
    const T* xr = x + row * d;
    T* yr = y + row * d;
    float ss = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        const float v = to_f32(xr[j]);
        ss += v * v;
    }
    ss = block_sum(ss);
    const float rs = 1.0f / sqrtf(ss * (1.0f / (float)d) + eps);
    if (threadIdx.x == 0) rstd[row] = rs;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        yr[j] = from_f32<T>(to_f32(xr[j]) * rs * to_f32(w[j]));
    }
}

// dx only; one block per row (grid = n).
template <typename T>
__device__ __forceinline__ void rmsnorm_backward_dx_impl(T* dx, const T* dy, const T* x,
                                                         const T* w, const float* rstd,
                                                         u32 n, u32 d) {
    const u64 row = blockIdx.x;
    if (row >= n) return;
    const T* xr = x + row * d;
    const T* dyr = dy + row * d;
    T* dxr = dx + row * d;
    float c = 0.0f;
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        c += to_f32(dyr[j]) * to_f32(w[j]) * to_f32(xr[j]);
    }
    c = block_sum(c);
    const float rs = rstd[row];
    const float k = rs * rs * c * (1.0f / (float)d);
    for (u32 j = threadIdx.x; j < d; j += blockDim.x) {
        dxr[j] = from_f32<T>(rs * (to_f32(dyr[j]) * to_f32(w[j]) - to_f32(xr[j]) * k));
    }
}

// dw only; one thread per column j summing over the rows in order (deterministic,
// coalesced across j). Launch ceil(d / blockDim.x) blocks: only 3 at d = 768, too few for 132
// SMs (see `per_column` in kernels/src/launch.rs for the fix that is not done yet).
template <typename T>
__device__ __forceinline__ void rmsnorm_backward_dw_impl(float* dw, const T* dy, const T* x,
                                                         const float* rstd, u32 n, u32 d) {
    const u32 j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    float acc = 0.0f;
    for (u32 row = 0; row < n; ++row) {
        const u64 at = (u64)row * d + j;
        acc += to_f32(dy[at]) * (to_f32(x[at]) * rstd[row]);
    }
    dw[j] = dw[j] + acc;
}

#define INGOT_RMSNORM(SUFFIX, T)                                                          \
    extern "C" __global__ void rmsnorm_forward_##SUFFIX(                                  \
        T* y, float* rstd, const T* x, const T* w, u32 n, u32 d, float eps) {             \
        rmsnorm_forward_impl<T>(y, rstd, x, w, n, d, eps);                                \
    }                                                                                     \
    extern "C" __global__ void rmsnorm_backward_dx_##SUFFIX(                              \
        T* dx, const T* dy, const T* x, const T* w, const float* rstd, u32 n, u32 d) {    \
        rmsnorm_backward_dx_impl<T>(dx, dy, x, w, rstd, n, d);                            \
    }                                                                                     \
    extern "C" __global__ void rmsnorm_backward_dw_##SUFFIX(                              \
        float* dw, const T* dy, const T* x, const float* rstd, u32 n, u32 d) {            \
        rmsnorm_backward_dw_impl<T>(dw, dy, x, rstd, n, d);                               \
    }
INGOT_RMSNORM(f32, float)
INGOT_RMSNORM(bf16, bf16)
