// Causal self-attention with grouped-query heads (cpu/ops/attention.rs).
//
// q is [b*t, nh*hd], k and v are [b*t, nkv*hd]; query head h reads kv head h / (nh/nkv).
// Per (sequence, query head), with s = scale = 1/sqrt(hd) (passed by the host, rounded to f32):
//
//   S = s * Q K^T,   P = softmax_row(S masked to j <= i),   O = P V
//
// FORWARD: flash-style online softmax, one warp per query row. The row's running max m,
// running sum l and output accumulator live in f32 registers (the row's hd values spread
// over the 32 lanes); keys are visited in order j = 0..i, and neither S nor P is ever stored.
// Only the f32 log-sum-exp lse = m + ln(l) per row, [b, nh, t], is saved for the backward.
// It is NOT tiled through shared memory (K/V are re-read from L2/global per query row):
// correct and simple, not yet fast; a tiled tensor-core version is future work.
//
// BACKWARD (recomputes P = exp(s * q.k - lse), never stores it):
//
//   delta_i = sum_d dO_id * O_id                      (attention_backward_delta)
//   dP_ij   = dO_i . v_j
//   dS_ij   = P_ij * (dP_ij - delta_i) * s
//   dQ_i    = sum_{j<=i} dS_ij k_j                    (attention_backward_dq, warp per query)
//   dK_j    = sum_group sum_{i>=j} dS_ij q_i          (attention_backward_dkv, warp per key,
//   dV_j    = sum_group sum_{i>=j} P_ij dO_i           looping the group's heads in order)
//
// No atomics: every output row is written by one warp, so results are reproducible.
// Limits: hd <= INGOT_ATTN_MAX_HD (256); blockDim.x a multiple of 32; a row index is
// (batch * heads + head) * t + position, one warp each, so launch
// ceil(rows * 32 / blockDim.x) blocks. With hd > 256 the forward writes NaNs.

#define INGOT_ATTN_MAX_HD 256
#define INGOT_ATTN_PER_LANE (INGOT_ATTN_MAX_HD / 32)

// Loads row[d] for d = lane + 32*r into regs[r] (zeros past hd).
template <typename T>
__device__ __forceinline__ void attn_load(float* regs, const T* row, u32 hd, u32 lane) {
#pragma unroll
    for (int r = 0; r < INGOT_ATTN_PER_LANE; ++r) {
        const u32 d = lane + 32u * r;
        regs[r] = d < hd ? to_f32(row[d]) : 0.0f;
    }
}

template <typename T>
__device__ __forceinline__ float attn_dot(const float* regs, const T* row, u32 hd, u32 lane) {
    float acc = 0.0f;
#pragma unroll
    for (int r = 0; r < INGOT_ATTN_PER_LANE; ++r) {
        const u32 d = lane + 32u * r;
        if (d < hd) acc += regs[r] * to_f32(row[d]);
    }
    return warp_sum(acc);
}

template <typename T>
__device__ __forceinline__ void attn_store(T* row, const float* regs, float k, u32 hd, u32 lane) {
#pragma unroll
    for (int r = 0; r < INGOT_ATTN_PER_LANE; ++r) {
        const u32 d = lane + 32u * r;
        if (d < hd) row[d] = from_f32<T>(regs[r] * k);
    }
}

// The warp's query row: (bi, h, i), or false past the end.
__device__ __forceinline__ bool attn_row(u32 b, u32 heads, u32 t, u64* bi, u32* h, u32* i) {
    const u64 row = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (row >= (u64)b * heads * t) return false;
    *i = (u32)(row % t);
    *h = (u32)((row / t) % heads);
    *bi = row / ((u64)t * heads);
    return true;
}

template <typename T>
__device__ __forceinline__ void attention_forward_impl(T* out, float* lse, const T* q,
                                                       const T* k, const T* v, u32 b, u32 t,
                                                       u32 nh, u32 nkv, u32 hd, float scale) {
    u64 bi;
    u32 h, i;
    if (!attn_row(b, nh, t, &bi, &h, &i)) return;
    const u32 lane = threadIdx.x & 31;
    const u64 qw = (u64)nh * hd, kw = (u64)nkv * hd;
    const u32 g = h / (nh / nkv);
    const u64 q_at = (bi * t + i) * qw + (u64)h * hd;
    if (hd > INGOT_ATTN_MAX_HD) {
        for (u32 d = lane; d < hd; d += 32) out[q_at + d] = from_f32<T>(INGOT_NAN);
        if (lane == 0) lse[(bi * nh + h) * t + i] = INGOT_NAN;
        return;
    }
    float qr[INGOT_ATTN_PER_LANE], acc[INGOT_ATTN_PER_LANE];
    attn_load(qr, q + q_at, hd, lane);
#pragma unroll
    for (int r = 0; r < INGOT_ATTN_PER_LANE; ++r) acc[r] = 0.0f;
    float m = INGOT_NEG_INF, l = 0.0f;
    const T* kb = k + bi * t * kw + (u64)g * hd;
    const T* vb = v + bi * t * kw + (u64)g * hd;
    for (u32 j = 0; j <= i; ++j) {
        const float s = attn_dot(qr, kb + j * kw, hd, lane) * scale;
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new);  // 0 on the first key (m = -inf)
        const float p = expf(s - m_new);
        l = l * corr + p;
        const T* vj = vb + j * kw;
#pragma unroll
        for (int r = 0; r < INGOT_ATTN_PER_LANE; ++r) {
            const u32 d = lane + 32u * r;
            if (d < hd) acc[r] = acc[r] * corr + p * to_f32(vj[d]);
        }
        m = m_new;
    }
    attn_store(out + q_at, acc, 1.0f / l, hd, lane);
    if (lane == 0) lse[(bi * nh + h) * t + i] = m + logf(l);
}

// delta[b, nh, t] = rowsum(dout * out) per query row and head.
template <typename T>
__device__ __forceinline__ void attention_backward_delta_impl(float* delta, const T* out,
                                                              const T* dout, u32 b, u32 t,
                                                              u32 nh, u32 hd) {
    u64 bi;
    u32 h, i;
    if (!attn_row(b, nh, t, &bi, &h, &i)) return;
    const u32 lane = threadIdx.x & 31;
    const u64 at = (bi * t + i) * ((u64)nh * hd) + (u64)h * hd;
    float acc = 0.0f;
    for (u32 d = lane; d < hd; d += 32) acc += to_f32(dout[at + d]) * to_f32(out[at + d]);
    acc = warp_sum(acc);
    if (lane == 0) delta[(bi * nh + h) * t + i] = acc;
}

// dq, one warp per query row (overwritten).
template <typename T>
__device__ __forceinline__ void attention_backward_dq_impl(T* dq, const T* dout, const T* q,
                                                           const T* k, const T* v,
                                                           const float* lse,
                                                           const float* delta, u32 b, u32 t,
                                                           u32 nh, u32 nkv, u32 hd,
                                                           float scale) {
    u64 bi;
    u32 h, i;
    if (!attn_row(b, nh, t, &bi, &h, &i)) return;
    if (hd > INGOT_ATTN_MAX_HD) return;
    const u32 lane = threadIdx.x & 31;
    const u64 qw = (u64)nh * hd, kw = (u64)nkv * hd;
    const u32 g = h / (nh / nkv);
    const u64 q_at = (bi * t + i) * qw + (u64)h * hd;
    const u64 stat = (bi * nh + h) * t + i;
    const float li = lse[stat], di = delta[stat];
    float qr[INGOT_ATTN_PER_LANE], dor[INGOT_ATTN_PER_LANE], acc[INGOT_ATTN_PER_LANE];
    attn_load(qr, q + q_at, hd, lane);
    attn_load(dor, dout + q_at, hd, lane);
#pragma unroll
    for (int r = 0; r < INGOT_ATTN_PER_LANE; ++r) acc[r] = 0.0f;
    const T* kb = k + bi * t * kw + (u64)g * hd;
    const T* vb = v + bi * t * kw + (u64)g * hd;
    for (u32 j = 0; j <= i; ++j) {
        const T* kj = kb + j * kw;
        const float p = expf(attn_dot(qr, kj, hd, lane) * scale - li);
        const float dp = attn_dot(dor, vb + j * kw, hd, lane);
        const float ds = p * (dp - di) * scale;
#pragma unroll
        for (int r = 0; r < INGOT_ATTN_PER_LANE; ++r) {
            const u32 d = lane + 32u * r;
            if (d < hd) acc[r] += ds * to_f32(kj[d]);
        }
    }
    attn_store(dq + q_at, acc, 1.0f, hd, lane);
}

// dk and dv, one warp per key row (bi, kv head g, j) (overwritten). The group's query heads
// are visited in order, then queries i = j..t-1 in order.
template <typename T>
__device__ __forceinline__ void attention_backward_dkv_impl(T* dk, T* dv, const T* dout,
                                                            const T* q, const T* k, const T* v,
                                                            const float* lse,
                                                            const float* delta, u32 b, u32 t,
                                                            u32 nh, u32 nkv, u32 hd,
                                                            float scale) {
    u64 bi;
    u32 g, j;
    if (!attn_row(b, nkv, t, &bi, &g, &j)) return;
    if (hd > INGOT_ATTN_MAX_HD) return;
    const u32 lane = threadIdx.x & 31;
    const u64 qw = (u64)nh * hd, kw = (u64)nkv * hd;
    const u32 group = nh / nkv;
    const u64 k_at = (bi * t + j) * kw + (u64)g * hd;
    float kr[INGOT_ATTN_PER_LANE], vr[INGOT_ATTN_PER_LANE];
    float dk_acc[INGOT_ATTN_PER_LANE], dv_acc[INGOT_ATTN_PER_LANE];
    attn_load(kr, k + k_at, hd, lane);
    attn_load(vr, v + k_at, hd, lane);
#pragma unroll
    for (int r = 0; r < INGOT_ATTN_PER_LANE; ++r) dk_acc[r] = dv_acc[r] = 0.0f;
    for (u32 hh = 0; hh < group; ++hh) {
        const u32 h = g * group + hh;
        const float* lse_h = lse + (bi * nh + h) * t;
        const float* delta_h = delta + (bi * nh + h) * t;
        for (u32 i = j; i < t; ++i) {
            const u64 q_at = (bi * t + i) * qw + (u64)h * hd;
            const T* qi = q + q_at;
            const T* doi = dout + q_at;
            const float p = expf(attn_dot(kr, qi, hd, lane) * scale - lse_h[i]);
            const float dp = attn_dot(vr, doi, hd, lane);
            const float ds = p * (dp - delta_h[i]) * scale;
#pragma unroll
            for (int r = 0; r < INGOT_ATTN_PER_LANE; ++r) {
                const u32 d = lane + 32u * r;
                if (d < hd) {
                    dv_acc[r] += p * to_f32(doi[d]);
                    dk_acc[r] += ds * to_f32(qi[d]);
                }
            }
        }
    }
    attn_store(dk + k_at, dk_acc, 1.0f, hd, lane);
    attn_store(dv + k_at, dv_acc, 1.0f, hd, lane);
}

#define INGOT_ATTENTION(SUFFIX, T)                                                        \
    extern "C" __global__ void attention_forward_##SUFFIX(                                \
        T* out, float* lse, const T* q, const T* k, const T* v, u32 b, u32 t, u32 nh,     \
        u32 nkv, u32 hd, float scale) {                                                   \
        attention_forward_impl<T>(out, lse, q, k, v, b, t, nh, nkv, hd, scale);           \
    }                                                                                     \
    extern "C" __global__ void attention_backward_delta_##SUFFIX(                         \
        float* delta, const T* out, const T* dout, u32 b, u32 t, u32 nh, u32 hd) {        \
        attention_backward_delta_impl<T>(delta, out, dout, b, t, nh, hd);                 \
    }                                                                                     \
    extern "C" __global__ void attention_backward_dq_##SUFFIX(                            \
        T* dq, const T* dout, const T* q, const T* k, const T* v, const float* lse,       \
        const float* delta, u32 b, u32 t, u32 nh, u32 nkv, u32 hd, float scale) {         \
        attention_backward_dq_impl<T>(dq, dout, q, k, v, lse, delta, b, t, nh, nkv, hd,   \
                                      scale);                                             \
    }                                                                                     \
    extern "C" __global__ void attention_backward_dkv_##SUFFIX(                           \
        T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,                  \
        const float* lse, const float* delta, u32 b, u32 t, u32 nh, u32 nkv, u32 hd,      \
        float scale) {                                                                    \
        attention_backward_dkv_impl<T>(dk, dv, dout, q, k, v, lse, delta, b, t, nh, nkv,  \
                                       hd, scale);                                        \
    }
INGOT_ATTENTION(f32, float)
INGOT_ATTENTION(bf16, bf16)
