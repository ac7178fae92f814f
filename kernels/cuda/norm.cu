// Global gradient norm and clipping (optim.rs global_norm and CpuEngine::step):
//
//   norm  = sqrt(sum_i g_i^2)            (f64 accumulation)
//   scale = min(clip / (norm + 1e-6), 1)   if clip > 0 and norm is finite, else 1
//   (torch.nn.utils.clip_grad_norm_'s rule, which CpuEngine::step follows)
//
// Two deterministic passes: grad_norm_partials writes one f64 partial sum of squares per
// block over a fixed chunk of `chunk` elements (block k: [k*chunk, (k+1)*chunk)), so launch
// ceil(n / chunk) blocks; grad_norm_finish (one block) adds the partials in a fixed order
// and writes the norm and the clip scale, which adamw_step_* reads from device memory.

extern "C" __global__ void grad_norm_partials(double* partial, const float* g, u64 n, u32 chunk) {
    const u64 start = (u64)blockIdx.x * chunk;
    u64 end = start + chunk;
    if (end > n) end = n;
    double acc = 0.0;
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x) {
        const double v = (double)g[i];
        acc += v * v;
    }
    acc = block_sum_f64(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// out[0] = norm, out[1] = clip scale. clip <= 0 means no clipping. Launch with grid = 1.
extern "C" __global__ void grad_norm_finish(float* out, const double* partial, u32 parts,
                                            float clip) {
    double acc = 0.0;
    for (u32 i = threadIdx.x; i < parts; i += blockDim.x) acc += partial[i];
    acc = block_sum_f64(acc);
    if (threadIdx.x == 0) {
        const float norm = (float)sqrt(acc);
        const bool finite = (__float_as_uint(norm) & 0x7f800000u) != 0x7f800000u;
        out[0] = norm;
        out[1] = (clip > 0.0f && finite) ? fminf(__fdiv_rn(clip, __fadd_rn(norm, 1e-6f)), 1.0f) : 1.0f;
    }
}

// x[i] *= s[0] (an f32 on the device, e.g. grad_norm_finish's out + 1).
extern "C" __global__ void scale_f32(float* x, const float* s, u64 n) {
    const float k = s[0];
    INGOT_GRID_STRIDE(i, n) { x[i] = x[i] * k; }
}
