// f16 and bf16: storage as 16-bit patterns, arithmetic in f32 (ops.cuh), results rounded to
// nearest even. Conversions are PTX `cvt` (f16) and bit arithmetic (bf16), so this family needs
// no CUDA headers. Data movement of half tensors (copy, gather, im2col) is in shape.cu/conv.cu
// as plain 16-bit copies.

struct f16_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

#ifdef TESSERA_HOST_EMULATION
inline float f16_to_f32(unsigned short h) { _Float16 x; memcpy(&x, &h, 2); return (float)x; }
inline unsigned short f32_to_f16(float f) { _Float16 x = (_Float16)f; unsigned short h; memcpy(&h, &x, 2); return h; }
#else
__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ unsigned short f32_to_f16(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#endif

__device__ __forceinline__ float bf16_to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}
__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    return (unsigned short)(u >> 16);
}

// Loads as f64 (exact for every source type) and stores from f64.
__device__ __forceinline__ double load(float v) { return v; }
__device__ __forceinline__ double load(double v) { return v; }
__device__ __forceinline__ double load(i64 v) { return (double)v; }
__device__ __forceinline__ double load(f16_t v) { return f16_to_f32(v.bits); }
__device__ __forceinline__ double load(bf16_t v) { return bf16_to_f32(v.bits); }
template <typename T> __device__ __forceinline__ T store(double v);
template <> __device__ __forceinline__ float store<float>(double v) { return (float)v; }
template <> __device__ __forceinline__ double store<double>(double v) { return v; }
template <> __device__ __forceinline__ i64 store<i64>(double v) { return to_i64(v); }
// f64 -> half rounds through f32 (a tie after the first rounding can differ in the last bit).
template <> __device__ __forceinline__ f16_t store<f16_t>(double v) { f16_t r; r.bits = f32_to_f16((float)v); return r; }
template <> __device__ __forceinline__ bf16_t store<bf16_t>(double v) { bf16_t r; r.bits = f32_to_bf16((float)v); return r; }

#define HALF_OPS(H, S)                                                                           \
    extern "C" __global__ void unary_##S(int op, double p0, double p1, i64 n, const H* x,        \
                                         Strided lx, H* out) {                                   \
        FOR_EACH(i, n) out[i] = store<H>(unary_float<float>(op, (float)load(x[at(lx, i)]), p0, p1)); \
    }                                                                                            \
    extern "C" __global__ void binary_##S(int op, i64 n, const H* a, Strided la, const H* b,     \
                                          Strided lb, H* out) {                                  \
        FOR_EACH(i, n) {                                                                         \
            float x = (float)load(a[at(la, i)]), y = (float)load(b[at(lb, i)]);                  \
            out[i] = store<H>(binary_op<float>(op, x, y));                                       \
        }                                                                                        \
    }                                                                                            \
    extern "C" __global__ void fill_##S(i64 n, double v, H* out) {                               \
        H x = store<H>(v);                                                                       \
        FOR_EACH(i, n) out[i] = x;                                                               \
    }
HALF_OPS(f16_t, f16)
HALF_OPS(bf16_t, bf16)

WHERE(where_f32_f16, float, f16_t)
WHERE(where_f64_f16, double, f16_t)
WHERE(where_i64_f16, i64, f16_t)
WHERE(where_f32_bf16, float, bf16_t)
WHERE(where_f64_bf16, double, bf16_t)
WHERE(where_i64_bf16, i64, bf16_t)

#define CAST_HALF(S, D, SN, DN)                                                                  \
    extern "C" __global__ void cast_##SN##_##DN(i64 n, const S* x, Strided lx, D* out) {         \
        FOR_EACH(i, n) out[i] = store<D>(load(x[at(lx, i)]));                                    \
    }
CAST_HALF(float, f16_t, f32, f16)
CAST_HALF(double, f16_t, f64, f16)
CAST_HALF(i64, f16_t, i64, f16)
CAST_HALF(bf16_t, f16_t, bf16, f16)
CAST_HALF(float, bf16_t, f32, bf16)
CAST_HALF(double, bf16_t, f64, bf16)
CAST_HALF(i64, bf16_t, i64, bf16)
CAST_HALF(f16_t, bf16_t, f16, bf16)
CAST_HALF(f16_t, float, f16, f32)
CAST_HALF(f16_t, double, f16, f64)
CAST_HALF(f16_t, i64, f16, i64)
CAST_HALF(bf16_t, float, bf16, f32)
CAST_HALF(bf16_t, double, bf16, f64)
CAST_HALF(bf16_t, i64, bf16, i64)
