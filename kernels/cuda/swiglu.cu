// SwiGLU gate, elementwise on g (gate_proj output) and u (up_proj) (cpu/ops/swiglu.rs):
//
//   s(g) = 1 / (1 + e^(-g))
//   a    = silu(g) * u = g * s(g) * u
//   dg   = da * u * s(g) * (1 + g * (1 - s(g)))
//   du   = da * silu(g)
//
// Nothing is saved: the backward recomputes s(g). IEEE expf (no fast math).

__device__ __forceinline__ float ingot_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename T>
__device__ __forceinline__ void swiglu_forward_impl(T* a, const T* g, const T* u, u64 n) {
    INGOT_GRID_STRIDE(i, n) {
        const float gv = to_f32(g[i]);
        a[i] = from_f32<T>(gv * ingot_sigmoid(gv) * to_f32(u[i]));
    }
}

// dg and du may alias g and u (each element is read before it is written, by one thread).
template <typename T>
__device__ __forceinline__ void swiglu_backward_impl(T* dg, T* du, const T* da, const T* g,
                                                     const T* u, u64 n) {
    INGOT_GRID_STRIDE(i, n) {
        const float gv = to_f32(g[i]), uv = to_f32(u[i]), dav = to_f32(da[i]);
        const float s = ingot_sigmoid(gv);
        const float silu = gv * s;
        du[i] = from_f32<T>(dav * silu);
        dg[i] = from_f32<T>(dav * uv * s * (1.0f + gv * (1.0f - s)));
    }
}

#define INGOT_SWIGLU(SUFFIX, T)                                                           \
    extern "C" __global__ void swiglu_forward_##SUFFIX(T* a, const T* g, const T* u,      \
                                                       u64 n) {                            \
        swiglu_forward_impl<T>(a, g, u, n);                                               \
    }                                                                                     \
    extern "C" __global__ void swiglu_backward_##SUFFIX(T* dg, T* du, const T* da,        \
                                                        const T* g, const T* u, u64 n) {   \
        swiglu_backward_impl<T>(dg, du, da, g, u, n);                                     \
    }
INGOT_SWIGLU(f32, float)
INGOT_SWIGLU(bf16, bf16)
