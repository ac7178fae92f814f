// Rotary position embedding, HF Llama "rotate half", in place (same math as cpu/ops/rope.rs).
//
// x is [b*t, heads*hd]; row r is position p = r mod t. In every head, element i < hd/2 is
// paired with i + hd/2 and rotated by angle = p * theta^(-2i/hd):
//
//   out_i        = x_i * cos - x_{i+hd/2} * sin
//   out_{i+hd/2} = x_{i+hd/2} * cos + x_i * sin
//
// The backward (inverse = 1) applies the transposed rotation to the gradient. As on the CPU,
// the angles, sines and cosines are computed in f64 and rounded to f32, once, into tables
// cos/sin[t, hd/2] by rope_tables; the rotation kernels read the tables.

// cos/sin[t, hd/2]; one thread per entry.
extern "C" __global__ void rope_tables(float* cos_t, float* sin_t, u32 t, u32 hd, double theta) {
    const u32 half = hd / 2;
    INGOT_GRID_STRIDE(e, (u64)t * half) {
        const u64 p = e / half, i = e % half;
        const double inv_freq = pow(theta, -((double)(2 * i)) / (double)hd);
        const double angle = (double)p * inv_freq;
        cos_t[e] = (float)cos(angle);
        sin_t[e] = (float)sin(angle);
    }
}

// One thread per rotated pair: (row, head, i < hd/2). hd must be even.
template <typename T>
__device__ __forceinline__ void rope_impl(T* x, const float* cos_t, const float* sin_t,
                                          u32 rows, u32 t, u32 heads, u32 hd, int inverse) {
    const u32 half = hd / 2;
    INGOT_GRID_STRIDE(e, (u64)rows * heads * half) {
        const u64 i = e % half;
        const u64 rh = e / half;  // row * heads + head
        const u64 row = rh / heads;
        const u64 p = row % t;
        T* head = x + rh * hd;
        const float a = to_f32(head[i]), b = to_f32(head[i + half]);
        const float c = cos_t[p * half + i], s = sin_t[p * half + i];
        float lo, hi;
        if (inverse) {
            lo = a * c + b * s;
            hi = b * c - a * s;
        } else {
            lo = a * c - b * s;
            hi = b * c + a * s;
        }
        head[i] = from_f32<T>(lo);
        head[i + half] = from_f32<T>(hi);
    }
}

#define INGOT_ROPE(SUFFIX, T)                                                             \
    extern "C" __global__ void rope_forward_##SUFFIX(T* x, const float* cos_t,            \
                                                     const float* sin_t, u32 rows, u32 t,  \
                                                     u32 heads, u32 hd) {                  \
        rope_impl<T>(x, cos_t, sin_t, rows, t, heads, hd, 0);                             \
    }                                                                                     \
    extern "C" __global__ void rope_backward_##SUFFIX(T* dx, const float* cos_t,          \
                                                      const float* sin_t, u32 rows, u32 t, \
                                                      u32 heads, u32 hd) {                 \
        rope_impl<T>(dx, cos_t, sin_t, rows, t, heads, hd, 1);                            \
    }
INGOT_ROPE(f32, float)
INGOT_ROPE(bf16, bf16)
