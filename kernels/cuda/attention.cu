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
// correct and simple, not fast; it serves f32 storage, any head dim up to 256, and as the
// reference of the tensor-core kernels further down (bf16, head dims 64 and 128).
//
// DECODE (attention_decode_*): the same online softmax for n new query rows of one sequence
// against a key/value cache, row i at position past+i seeing cache rows 0..=past+i (generation
// without recomputing the prefix); no lse.
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

// The online softmax of one query row (qr, in the warp's registers) over keys and values
// j = 0 .. keys-1 at kb + j*kw and vb + j*kw, in order; leaves the unnormalised output in acc,
// the running max in *m and the running sum in *l. The forward and the decode share it, so a
// decoded row is computed exactly as the same row of the forward over the same keys.
template <typename T>
__device__ __forceinline__ void attn_online_row(float* acc, float* m_out, float* l_out,
                                                const float* qr, const T* kb, const T* vb,
                                                u64 kw, u32 keys, u32 hd, u32 lane,
                                                float scale) {
#pragma unroll
    for (int r = 0; r < INGOT_ATTN_PER_LANE; ++r) acc[r] = 0.0f;
    float m = INGOT_NEG_INF, l = 0.0f;
    for (u32 j = 0; j < keys; ++j) {
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
    *m_out = m;
    *l_out = l;
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
    float m, l;
    attn_online_row(acc, &m, &l, qr, k + bi * t * kw + (u64)g * hd,
                    v + bi * t * kw + (u64)g * hd, kw, i + 1, hd, lane, scale);
    attn_store(out + q_at, acc, 1.0f / l, hd, lane);
    if (lane == 0) lse[(bi * nh + h) * t + i] = m + logf(l);
}

// DECODE (generation with a key/value cache): n new query rows q[n, nh*hd] of one sequence at
// positions past .. past+n-1, whose keys (after RoPE) and values the host has already written
// to rows past .. past+n-1 of the caches k_cache, v_cache [capacity, nkv*hd]. Query row i
// attends to cache rows j = 0 ..= past+i: the causal mask of the forward, shifted by past.
// One warp per (head, row), row index h * n + i (attn_row with b = 1, t = n), the same online
// softmax as the forward (attn_online_row), so a prefill (past = 0) gives the forward's out
// bit for bit. No lse: nothing runs backward through generation. With hd > 256 it writes NaNs.
template <typename T>
__device__ __forceinline__ void attention_decode_impl(T* out, const T* q, const T* k_cache,
                                                      const T* v_cache, u32 n, u32 past,
                                                      u32 nh, u32 nkv, u32 hd, float scale) {
    u64 bi;
    u32 h, i;
    if (!attn_row(1, nh, n, &bi, &h, &i)) return;
    const u32 lane = threadIdx.x & 31;
    const u64 qw = (u64)nh * hd, kw = (u64)nkv * hd;
    const u32 g = h / (nh / nkv);
    const u64 q_at = (u64)i * qw + (u64)h * hd;
    if (hd > INGOT_ATTN_MAX_HD) {
        for (u32 d = lane; d < hd; d += 32) out[q_at + d] = from_f32<T>(INGOT_NAN);
        return;
    }
    float qr[INGOT_ATTN_PER_LANE], acc[INGOT_ATTN_PER_LANE];
    attn_load(qr, q + q_at, hd, lane);
    float m, l;
    attn_online_row(acc, &m, &l, qr, k_cache + (u64)g * hd, v_cache + (u64)g * hd, kw,
                    past + i + 1, hd, lane, scale);
    attn_store(out + q_at, acc, 1.0f / l, hd, lane);
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
    extern "C" __global__ void attention_decode_##SUFFIX(                                 \
        T* out, const T* q, const T* k_cache, const T* v_cache, u32 n, u32 past, u32 nh,  \
        u32 nkv, u32 hd, float scale) {                                                   \
        attention_decode_impl<T>(out, q, k_cache, v_cache, n, past, nh, nkv, hd, scale);  \
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

// ---- FORWARD ON TENSOR CORES (bf16 storage, head dims 64 and 128) ----------------------------
//
// The same function as attention_forward_bf16 (same out, same lse in the same units), computed
// FlashAttention-2 style with warp-level mma.sync.m16n8k16 (bf16 inputs, f32 accumulation):
//
// - a block of 4 warps takes 64 query rows of one (sequence, query head); warp w owns rows
//   q0 + 16w .. q0 + 16w + 15 and keeps their Q fragments in registers;
// - key tiles of 64 rows, 0 ..= the block's diagonal tile, are staged in shared memory: K as
//   it is ([key][d], the "col" B operand of S = Q K^T) and V transposed ([d][key], the B
//   operand of O = P V); rows past t are zero-filled;
// - per tile each warp computes its 16 x 64 scores in f32, masks j > i (which also covers
//   keys past t for every real row), updates the running max m and per-thread partial sums
//   l, rescales its O accumulator, rounds P to bf16 and adds P V. P is never stored: the C
//   fragment of S is, register for register, the A fragment of P (FlashAttention-2's trick).
//
// Fragment layout of mma.m16n8k16 (PTX ISA), with gid = lane / 4 and tig = lane % 4:
//   A (16x16, row-major): a0 = (gid, 2tig..2tig+1), a1 = (gid+8, same), a2 = (gid, 2tig+8..),
//                         a3 = (gid+8, 2tig+8..)     (two bf16 per register, lower index low)
//   B (16x8, "col"):      b0 = (k 2tig..2tig+1, n gid), b1 = (k 2tig+8.., n gid)
//   C (16x8, f32):        c0,c1 = (gid, 2tig..2tig+1), c2,c3 = (gid+8, same)
//
// Differences from the warp-per-row kernel, all within bf16 tolerance: P is rounded to bf16
// before P V (the row sums l use the f32 P), and the sums run in a different order.
// Launch: grid (ceil(t / 64), nh, b), 128 threads; entry points for hd 64 and hd 128.

#define INGOT_MMA_BQ 64
#define INGOT_MMA_BK 64
// Shared-memory row padding (bf16 elements) so the fragment loads spread over the banks.
#define INGOT_MMA_PAD 8

// bf16 mma.sync exists from sm_80 on. Older GPUs still compile this unit (its warp-per-row
// kernels serve them); the host never launches the tensor-core kernels there
// (`choose_attention` in the CUDA engine), and if one ran anyway it would trap.
// Under the stand-in CUDA device (emulator/, which defines INGOT_EMU) the instruction has an
// emulated body: a warp collective computing each lane's outputs by the same fragment layout.
__device__ __forceinline__ void mma_bf16_16816(float* c, const u32* a, u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 800 && defined(INGOT_EMU)
    ingot_emu_mma_m16n8k16_bf16_f32(c, a, b0, b1);
#elif __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

// Two f32 as a bf16x2 register: x0 in the low half (the lower column index).
__device__ __forceinline__ u32 pack_bf16x2(float x0, float x1) {
    return (u32)f32_to_bf16(x0).bits | ((u32)f32_to_bf16(x1).bits << 16);
}

// Two consecutive bf16 (even index) as one register.
__device__ __forceinline__ u32 load_bf16x2(const unsigned short* p) {
    return *reinterpret_cast<const u32*>(p);
}

// The 4 A-fragment registers of a 16 x 16 block of this warp's rows from global memory
// (row-major, `ld` elements per row), for rows r0 and r0 + 8 (zeros where a row is >= t).
__device__ __forceinline__ void load_a_frag(u32* a, const unsigned short* base, u64 ld, u32 r0,
                                            u32 t, u32 col) {
    const unsigned short* p0 = base + (u64)r0 * ld + col;
    const unsigned short* p1 = base + (u64)(r0 + 8) * ld + col;
    a[0] = r0 < t ? load_bf16x2(p0) : 0u;
    a[1] = r0 + 8 < t ? load_bf16x2(p1) : 0u;
    a[2] = r0 < t ? load_bf16x2(p0 + 8) : 0u;
    a[3] = r0 + 8 < t ? load_bf16x2(p1 + 8) : 0u;
}

// Stages `rows` rows (from row `first` of a row-major [t][ld] slab at `src`, `HD` columns)
// into sm [rows][HD + PAD] and, transposed, into smt [HD][rows + PAD]; zeros past t.
template <int HD, int ROWS>
__device__ __forceinline__ void stage_rows(unsigned short (*sm)[HD + INGOT_MMA_PAD],
                                           unsigned short (*smt)[ROWS + INGOT_MMA_PAD],
                                           const unsigned short* src, u64 ld, u32 first, u32 t) {
    for (u32 e = threadIdx.x; e < ROWS * HD / 2; e += blockDim.x) {
        const u32 r = e / (HD / 2), d = (e % (HD / 2)) * 2;
        const u32 x = first + r < t ? load_bf16x2(src + (u64)(first + r) * ld + d) : 0u;
        if (sm) *reinterpret_cast<u32*>(&sm[r][d]) = x;
        if (smt) {
            smt[d][r] = (unsigned short)(x & 0xffffu);
            smt[d + 1][r] = (unsigned short)(x >> 16);
        }
    }
}

// Row-major [t][ld] slab of sequence `bi`, offset to head `h` (of width HD), as bf16 bits.
template <int HD>
__device__ __forceinline__ const unsigned short* head_slab(const bf16* x, u32 bi, u32 t,
                                                           u64 ld, u32 h) {
    return reinterpret_cast<const unsigned short*>(x) + (u64)bi * t * ld + (u64)h * HD;
}

template <int HD>
__device__ __forceinline__ void attention_forward_mma_impl(bf16* out, float* lse, const bf16* q,
                                                           const bf16* k, const bf16* v, u32 t,
                                                           u32 nh, u32 nkv, float scale) {
    constexpr int KS = HD / 16;  // k-steps of Q K^T
    constexpr int DN = HD / 8;   // n-tiles of O
    constexpr int KN = INGOT_MMA_BK / 8;  // n-tiles of S
    __shared__ __align__(16) unsigned short ks[INGOT_MMA_BK][HD + INGOT_MMA_PAD];
    __shared__ __align__(16) unsigned short vt[HD][INGOT_MMA_BK + INGOT_MMA_PAD];

    const u32 h = blockIdx.y, bi = blockIdx.z;
    const u32 q0 = blockIdx.x * INGOT_MMA_BQ;
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 gid = lane >> 2, tig = lane & 3;
    const u64 qw = (u64)nh * HD, kw = (u64)nkv * HD;
    const u32 g = h / (nh / nkv);
    const unsigned short* qh = head_slab<HD>(q, bi, t, qw, h);
    const unsigned short* kg = head_slab<HD>(k, bi, t, kw, g);
    const unsigned short* vg = head_slab<HD>(v, bi, t, kw, g);

    // This thread's two query rows and their Q fragments (zeros past t).
    const u32 r0 = q0 + warp * 16 + gid, r1 = r0 + 8;
    u32 qa[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) load_a_frag(qa[kk], qh, qw, r0, t, kk * 16 + tig * 2);

    float o[DN][4];
#pragma unroll
    for (int dn = 0; dn < DN; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;
    float m0 = INGOT_NEG_INF, m1 = INGOT_NEG_INF, l0 = 0.0f, l1 = 0.0f;

    const u32 last_tile = (min(q0 + INGOT_MMA_BQ, t) - 1) / INGOT_MMA_BK;
    for (u32 kt = 0; kt <= last_tile; ++kt) {
        const u32 j0 = kt * INGOT_MMA_BK;
        __syncthreads();  // the previous tile is no longer read
        // Stage K [key][d] and V^T [d][key]; zeros past t.
        stage_rows<HD, INGOT_MMA_BK>(ks, nullptr, kg, kw, j0, t);
        stage_rows<HD, INGOT_MMA_BK>(nullptr, vt, vg, kw, j0, t);
        __syncthreads();

        // S = Q K^T for this warp's 16 rows and the tile's 64 keys.
        float s[KN][4];
#pragma unroll
        for (int nt = 0; nt < KN; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
                const unsigned short* kr = &ks[nt * 8 + gid][kk * 16 + tig * 2];
                mma_bf16_16816(s[nt], qa[kk], load_bf16x2(kr), load_bf16x2(kr + 8));
            }
        }
        // Scale, causal mask, and this tile's row maxima.
        float tm0 = INGOT_NEG_INF, tm1 = INGOT_NEG_INF;
#pragma unroll
        for (int nt = 0; nt < KN; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const u32 j = j0 + nt * 8 + tig * 2 + e;
                s[nt][e] = j <= r0 ? s[nt][e] * scale : INGOT_NEG_INF;
                s[nt][2 + e] = j <= r1 ? s[nt][2 + e] * scale : INGOT_NEG_INF;
                tm0 = fmaxf(tm0, s[nt][e]);
                tm1 = fmaxf(tm1, s[nt][2 + e]);
            }
        }
        // The four threads of a group hold one row between them.
        tm0 = fmaxf(tm0, __shfl_xor_sync(INGOT_FULL_MASK, tm0, 1));
        tm0 = fmaxf(tm0, __shfl_xor_sync(INGOT_FULL_MASK, tm0, 2));
        tm1 = fmaxf(tm1, __shfl_xor_sync(INGOT_FULL_MASK, tm1, 1));
        tm1 = fmaxf(tm1, __shfl_xor_sync(INGOT_FULL_MASK, tm1, 2));
        // Key 0 is in tile 0 and j = 0 <= i for every row, so both maxima are finite.
        const float n0 = fmaxf(m0, tm0), n1 = fmaxf(m1, tm1);
        const float c0 = expf(m0 - n0), c1 = expf(m1 - n1);  // 0 on the first tile
        l0 *= c0;
        l1 *= c1;
#pragma unroll
        for (int dn = 0; dn < DN; ++dn) {
            o[dn][0] *= c0;
            o[dn][1] *= c0;
            o[dn][2] *= c1;
            o[dn][3] *= c1;
        }
        m0 = n0;
        m1 = n1;
        // P = exp(S - m) in f32 for l, in bf16 for P V.
        u32 pa[KN / 2][4];
#pragma unroll
        for (int nt = 0; nt < KN; ++nt) {
            const float p0 = expf(s[nt][0] - n0), p1 = expf(s[nt][1] - n0);
            const float p2 = expf(s[nt][2] - n1), p3 = expf(s[nt][3] - n1);
            l0 += p0 + p1;
            l1 += p2 + p3;
            pa[nt / 2][(nt & 1) * 2 + 0] = pack_bf16x2(p0, p1);
            pa[nt / 2][(nt & 1) * 2 + 1] = pack_bf16x2(p2, p3);
        }
        // O += P V over the tile's keys, 16 at a time.
#pragma unroll
        for (int kk = 0; kk < KN / 2; ++kk) {
#pragma unroll
            for (int dn = 0; dn < DN; ++dn) {
                const unsigned short* vr = &vt[dn * 8 + gid][kk * 16 + tig * 2];
                mma_bf16_16816(o[dn], pa[kk], load_bf16x2(vr), load_bf16x2(vr + 8));
            }
        }
    }

    // Full row sums, then O / l and lse = m + ln(l).
    l0 += __shfl_xor_sync(INGOT_FULL_MASK, l0, 1);
    l0 += __shfl_xor_sync(INGOT_FULL_MASK, l0, 2);
    l1 += __shfl_xor_sync(INGOT_FULL_MASK, l1, 1);
    l1 += __shfl_xor_sync(INGOT_FULL_MASK, l1, 2);
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
    u32* out2 = reinterpret_cast<u32*>(out);
#pragma unroll
    for (int dn = 0; dn < DN; ++dn) {
        const u32 c = dn * 8 + tig * 2;
        if (r0 < t)
            out2[(((u64)bi * t + r0) * qw + (u64)h * HD + c) / 2] =
                pack_bf16x2(o[dn][0] * inv0, o[dn][1] * inv0);
        if (r1 < t)
            out2[(((u64)bi * t + r1) * qw + (u64)h * HD + c) / 2] =
                pack_bf16x2(o[dn][2] * inv1, o[dn][3] * inv1);
    }
    if (tig == 0) {
        if (r0 < t) lse[((u64)bi * nh + h) * t + r0] = m0 + logf(l0);
        if (r1 < t) lse[((u64)bi * nh + h) * t + r1] = m1 + logf(l1);
    }
}

// One entry point per head dim: each instantiation has its own static shared memory (36 KB at
// hd 128), and one kernel holding both would exceed the 48 KB static limit.
extern "C" __global__ void __launch_bounds__(128)
    attention_forward_mma_hd64_bf16(bf16* out, float* lse, const bf16* q, const bf16* k,
                                    const bf16* v, u32 t, u32 nh, u32 nkv, float scale) {
    attention_forward_mma_impl<64>(out, lse, q, k, v, t, nh, nkv, scale);
}

extern "C" __global__ void __launch_bounds__(128)
    attention_forward_mma_hd128_bf16(bf16* out, float* lse, const bf16* q, const bf16* k,
                                     const bf16* v, u32 t, u32 nh, u32 nkv, float scale) {
    attention_forward_mma_impl<128>(out, lse, q, k, v, t, nh, nkv, scale);
}

// ---- BACKWARD ON TENSOR CORES (bf16 storage, head dims 64 and 128) ---------------------------
//
// The same dq, dk, dv as attention_backward_dq_bf16 / _dkv_bf16 (P recomputed from the saved
// lse, delta from attention_backward_delta_bf16), with mma.sync.m16n8k16 as in the forward.
// Two kernels, so that every output row is written by one warp and no atomics are needed:
//
// attention_backward_dq_mma: a block of 4 warps takes 64 query rows of one (sequence, head);
//   per key tile (BK keys, 0 ..= the diagonal), staged as K [key][d], V [key][d] and
//   K^T [d][key]:  S = Q K^T,  P = exp(s S - lse) (0 where j > i),  dP = dO V^T,
//   dS = P (dP - delta) s,  dQ += dS K.  Q and dO stay in registers as A fragments.
//
// attention_backward_dkv_mma: a block of 4 warps takes 64 key rows of one (sequence, kv
//   head); for each query head of its group in order, and each query tile (BQ queries) from
//   the diagonal to the end, staged as Q [i][d], Q^T [d][i], dO [i][d], dO^T [d][i] with the
//   tile's lse and delta:  S^T = K Q^T,  P^T = exp(s S^T - lse) (0 where i < j or i >= t),
//   dV += P^T dO,  dP^T = V dO^T,  dS^T = P^T (dP^T - delta) s,  dK += dS^T Q.
//   K and V stay in registers as A fragments.
//
// Tiles are 64 wide at hd 64 and 32 wide at hd 128, so the static shared memory stays under
// 48 KB. P and dS are rounded to bf16 before their products (f32 accumulation throughout).
// Launch: grid (ceil(t / 64), nh, b) for dq and (ceil(t / 64), nkv, b) for dkv, 128 threads.

template <int HD>
struct MmaBwdTile {
    static constexpr int N = HD == 64 ? 64 : 32;
};

template <int HD>
__device__ __forceinline__ void attention_backward_dq_mma_impl(
    bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,
    const float* delta, u32 t, u32 nh, u32 nkv, float scale) {
    constexpr int BK = MmaBwdTile<HD>::N;
    constexpr int KS = HD / 16, DN = HD / 8, KN = BK / 8;
    __shared__ __align__(16) unsigned short ks[BK][HD + INGOT_MMA_PAD];
    __shared__ __align__(16) unsigned short vs[BK][HD + INGOT_MMA_PAD];
    __shared__ __align__(16) unsigned short kt_s[HD][BK + INGOT_MMA_PAD];

    const u32 h = blockIdx.y, bi = blockIdx.z;
    const u32 q0 = blockIdx.x * INGOT_MMA_BQ;
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 gid = lane >> 2, tig = lane & 3;
    const u64 qw = (u64)nh * HD, kw = (u64)nkv * HD;
    const u32 g = h / (nh / nkv);
    const unsigned short* qh = head_slab<HD>(q, bi, t, qw, h);
    const unsigned short* doh = head_slab<HD>(dout, bi, t, qw, h);
    const unsigned short* kg = head_slab<HD>(k, bi, t, kw, g);
    const unsigned short* vg = head_slab<HD>(v, bi, t, kw, g);

    const u32 r0 = q0 + warp * 16 + gid, r1 = r0 + 8;
    u32 qa[KS][4], da[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
        load_a_frag(qa[kk], qh, qw, r0, t, kk * 16 + tig * 2);
        load_a_frag(da[kk], doh, qw, r0, t, kk * 16 + tig * 2);
    }
    const float* lse_h = lse + ((u64)bi * nh + h) * t;
    const float* delta_h = delta + ((u64)bi * nh + h) * t;
    const float lse0 = r0 < t ? lse_h[r0] : 0.0f, lse1 = r1 < t ? lse_h[r1] : 0.0f;
    const float dl0 = r0 < t ? delta_h[r0] : 0.0f, dl1 = r1 < t ? delta_h[r1] : 0.0f;

    float acc[DN][4];
#pragma unroll
    for (int dn = 0; dn < DN; ++dn) acc[dn][0] = acc[dn][1] = acc[dn][2] = acc[dn][3] = 0.0f;

    const u32 last_tile = (min(q0 + INGOT_MMA_BQ, t) - 1) / BK;
    for (u32 kt = 0; kt <= last_tile; ++kt) {
        const u32 j0 = kt * BK;
        __syncthreads();
        stage_rows<HD, BK>(ks, kt_s, kg, kw, j0, t);
        stage_rows<HD, BK>(vs, nullptr, vg, kw, j0, t);
        __syncthreads();

        float s[KN][4], dp[KN][4];
#pragma unroll
        for (int nt = 0; nt < KN; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
                const unsigned short* kr = &ks[nt * 8 + gid][kk * 16 + tig * 2];
                const unsigned short* vr = &vs[nt * 8 + gid][kk * 16 + tig * 2];
                mma_bf16_16816(s[nt], qa[kk], load_bf16x2(kr), load_bf16x2(kr + 8));
                mma_bf16_16816(dp[nt], da[kk], load_bf16x2(vr), load_bf16x2(vr + 8));
            }
        }
        // dS = P (dP - delta) s, as bf16 A fragments over the tile's keys.
        u32 dsa[KN / 2][4];
#pragma unroll
        for (int nt = 0; nt < KN; ++nt) {
            float ds[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const u32 i = e < 2 ? r0 : r1;
                const u32 j = j0 + nt * 8 + tig * 2 + (e & 1);
                const float p = j <= i ? expf(s[nt][e] * scale - (e < 2 ? lse0 : lse1)) : 0.0f;
                ds[e] = p * (dp[nt][e] - (e < 2 ? dl0 : dl1)) * scale;
            }
            dsa[nt / 2][(nt & 1) * 2 + 0] = pack_bf16x2(ds[0], ds[1]);
            dsa[nt / 2][(nt & 1) * 2 + 1] = pack_bf16x2(ds[2], ds[3]);
        }
        // dQ += dS K.
#pragma unroll
        for (int kk = 0; kk < KN / 2; ++kk) {
#pragma unroll
            for (int dn = 0; dn < DN; ++dn) {
                const unsigned short* kr = &kt_s[dn * 8 + gid][kk * 16 + tig * 2];
                mma_bf16_16816(acc[dn], dsa[kk], load_bf16x2(kr), load_bf16x2(kr + 8));
            }
        }
    }

    u32* dq2 = reinterpret_cast<u32*>(dq);
#pragma unroll
    for (int dn = 0; dn < DN; ++dn) {
        const u32 c = dn * 8 + tig * 2;
        if (r0 < t)
            dq2[(((u64)bi * t + r0) * qw + (u64)h * HD + c) / 2] =
                pack_bf16x2(acc[dn][0], acc[dn][1]);
        if (r1 < t)
            dq2[(((u64)bi * t + r1) * qw + (u64)h * HD + c) / 2] =
                pack_bf16x2(acc[dn][2], acc[dn][3]);
    }
}

template <int HD>
__device__ __forceinline__ void attention_backward_dkv_mma_impl(
    bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
    const float* lse, const float* delta, u32 t, u32 nh, u32 nkv, float scale) {
    constexpr int BQ = MmaBwdTile<HD>::N;
    constexpr int KS = HD / 16, DN = HD / 8, QN = BQ / 8;
    __shared__ __align__(16) unsigned short qs[BQ][HD + INGOT_MMA_PAD];
    __shared__ __align__(16) unsigned short qt_s[HD][BQ + INGOT_MMA_PAD];
    __shared__ __align__(16) unsigned short dos[BQ][HD + INGOT_MMA_PAD];
    __shared__ __align__(16) unsigned short dot_s[HD][BQ + INGOT_MMA_PAD];
    __shared__ float lse_s[BQ], delta_s[BQ];

    const u32 g = blockIdx.y, bi = blockIdx.z;
    const u32 k0 = blockIdx.x * INGOT_MMA_BQ;
    const u32 warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u32 gid = lane >> 2, tig = lane & 3;
    const u64 qw = (u64)nh * HD, kw = (u64)nkv * HD;
    const u32 group = nh / nkv;
    const unsigned short* kg = head_slab<HD>(k, bi, t, kw, g);
    const unsigned short* vg = head_slab<HD>(v, bi, t, kw, g);

    // This thread's two key rows and the K, V A fragments.
    const u32 j0r = k0 + warp * 16 + gid, j1r = j0r + 8;
    u32 ka[KS][4], va[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
        load_a_frag(ka[kk], kg, kw, j0r, t, kk * 16 + tig * 2);
        load_a_frag(va[kk], vg, kw, j0r, t, kk * 16 + tig * 2);
    }
    float dk_acc[DN][4], dv_acc[DN][4];
#pragma unroll
    for (int dn = 0; dn < DN; ++dn) {
#pragma unroll
        for (int e = 0; e < 4; ++e) dk_acc[dn][e] = dv_acc[dn][e] = 0.0f;
    }

    for (u32 hh = 0; hh < group; ++hh) {
        const u32 h = g * group + hh;
        const unsigned short* qh = head_slab<HD>(q, bi, t, qw, h);
        const unsigned short* doh = head_slab<HD>(dout, bi, t, qw, h);
        const float* lse_h = lse + ((u64)bi * nh + h) * t;
        const float* delta_h = delta + ((u64)bi * nh + h) * t;
        for (u32 i0 = (k0 / BQ) * BQ; i0 < t; i0 += BQ) {
            __syncthreads();
            stage_rows<HD, BQ>(qs, qt_s, qh, qw, i0, t);
            stage_rows<HD, BQ>(dos, dot_s, doh, qw, i0, t);
            for (u32 r = threadIdx.x; r < BQ; r += blockDim.x) {
                lse_s[r] = i0 + r < t ? lse_h[i0 + r] : 0.0f;
                delta_s[r] = i0 + r < t ? delta_h[i0 + r] : 0.0f;
            }
            __syncthreads();

            float st[QN][4], dpt[QN][4];
#pragma unroll
            for (int nt = 0; nt < QN; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < KS; ++kk) {
                    const unsigned short* qr = &qs[nt * 8 + gid][kk * 16 + tig * 2];
                    const unsigned short* dr = &dos[nt * 8 + gid][kk * 16 + tig * 2];
                    mma_bf16_16816(st[nt], ka[kk], load_bf16x2(qr), load_bf16x2(qr + 8));
                    mma_bf16_16816(dpt[nt], va[kk], load_bf16x2(dr), load_bf16x2(dr + 8));
                }
            }
            // P^T and dS^T as bf16 A fragments over the tile's queries.
            u32 pa[QN / 2][4], dsa[QN / 2][4];
#pragma unroll
            for (int nt = 0; nt < QN; ++nt) {
                float p[4], ds[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const u32 j = e < 2 ? j0r : j1r;
                    const u32 col = nt * 8 + tig * 2 + (e & 1);
                    const u32 i = i0 + col;
                    p[e] = (i >= j && i < t) ? expf(st[nt][e] * scale - lse_s[col]) : 0.0f;
                    ds[e] = p[e] * (dpt[nt][e] - delta_s[col]) * scale;
                }
                pa[nt / 2][(nt & 1) * 2 + 0] = pack_bf16x2(p[0], p[1]);
                pa[nt / 2][(nt & 1) * 2 + 1] = pack_bf16x2(p[2], p[3]);
                dsa[nt / 2][(nt & 1) * 2 + 0] = pack_bf16x2(ds[0], ds[1]);
                dsa[nt / 2][(nt & 1) * 2 + 1] = pack_bf16x2(ds[2], ds[3]);
            }
            // dV += P^T dO, dK += dS^T Q.
#pragma unroll
            for (int kk = 0; kk < QN / 2; ++kk) {
#pragma unroll
                for (int dn = 0; dn < DN; ++dn) {
                    const unsigned short* dr = &dot_s[dn * 8 + gid][kk * 16 + tig * 2];
                    const unsigned short* qr = &qt_s[dn * 8 + gid][kk * 16 + tig * 2];
                    mma_bf16_16816(dv_acc[dn], pa[kk], load_bf16x2(dr), load_bf16x2(dr + 8));
                    mma_bf16_16816(dk_acc[dn], dsa[kk], load_bf16x2(qr), load_bf16x2(qr + 8));
                }
            }
        }
    }

    u32* dk2 = reinterpret_cast<u32*>(dk);
    u32* dv2 = reinterpret_cast<u32*>(dv);
#pragma unroll
    for (int dn = 0; dn < DN; ++dn) {
        const u32 c = dn * 8 + tig * 2;
        if (j0r < t) {
            const u64 at = (((u64)bi * t + j0r) * kw + (u64)g * HD + c) / 2;
            dk2[at] = pack_bf16x2(dk_acc[dn][0], dk_acc[dn][1]);
            dv2[at] = pack_bf16x2(dv_acc[dn][0], dv_acc[dn][1]);
        }
        if (j1r < t) {
            const u64 at = (((u64)bi * t + j1r) * kw + (u64)g * HD + c) / 2;
            dk2[at] = pack_bf16x2(dk_acc[dn][2], dk_acc[dn][3]);
            dv2[at] = pack_bf16x2(dv_acc[dn][2], dv_acc[dn][3]);
        }
    }
}

// The entry points' names are written out (not pasted together) so they can be found here.
#define INGOT_ATTENTION_BWD_MMA(HD, DQ_NAME, DKV_NAME)                                    \
    extern "C" __global__ void __launch_bounds__(128)                                     \
        DQ_NAME(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,  \
                const float* lse, const float* delta, u32 t, u32 nh, u32 nkv, float scale) { \
        attention_backward_dq_mma_impl<HD>(dq, dout, q, k, v, lse, delta, t, nh, nkv,     \
                                           scale);                                        \
    }                                                                                     \
    extern "C" __global__ void __launch_bounds__(128)                                     \
        DKV_NAME(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,      \
                 const bf16* v, const float* lse, const float* delta, u32 t, u32 nh,      \
                 u32 nkv, float scale) {                                                  \
        attention_backward_dkv_mma_impl<HD>(dk, dv, dout, q, k, v, lse, delta, t, nh, nkv, \
                                            scale);                                       \
    }
INGOT_ATTENTION_BWD_MMA(64, attention_backward_dq_mma_hd64_bf16,
                        attention_backward_dkv_mma_hd64_bf16)
INGOT_ATTENTION_BWD_MMA(128, attention_backward_dq_mma_hd128_bf16,
                        attention_backward_dkv_mma_hd128_bf16)
