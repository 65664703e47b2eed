// Elementwise maps over strided layouts (operands already broadcast to one shape by core):
// unary, binary, where, cast, fill and counter-based random numbers.
// The op templates are in ops.cuh.

#define UNARY(NAME, T, F)                                                                        \
    extern "C" __global__ void NAME(int op, double p0, double p1, i64 n, const T* x, Strided lx, \
                                    T* out) {                                                    \
        FOR_EACH(i, n) out[i] = F<T>(op, x[at(lx, i)], p0, p1);                                  \
    }
UNARY(unary_f32, float, unary_float)
UNARY(unary_f64, double, unary_float)
UNARY(unary_i64, i64, unary_num)

#define BINARY(NAME, T)                                                                          \
    extern "C" __global__ void NAME(int op, i64 n, const T* a, Strided la, const T* b,           \
                                    Strided lb, T* out) {                                        \
        FOR_EACH(i, n) out[i] = binary_op<T>(op, a[at(la, i)], b[at(lb, i)]);                    \
    }
BINARY(binary_f32, float)
BINARY(binary_f64, double)
BINARY(binary_i64, i64)

WHERE(where_f32_f32, float, float)
WHERE(where_f32_f64, float, double)
WHERE(where_f32_i64, float, i64)
WHERE(where_f64_f32, double, float)
WHERE(where_f64_f64, double, double)
WHERE(where_f64_i64, double, i64)
WHERE(where_i64_f32, i64, float)
WHERE(where_i64_f64, i64, double)
WHERE(where_i64_i64, i64, i64)

// Conversion through f64, as the CPU backend does it.
#define CAST(NAME, S, D)                                                                         \
    extern "C" __global__ void NAME(i64 n, const S* x, Strided lx, D* out) {                     \
        FOR_EACH(i, n) out[i] = from_f64<D>((double)x[at(lx, i)]);                               \
    }
CAST(cast_f32_f32, float, float)
CAST(cast_f32_f64, float, double)
CAST(cast_f32_i64, float, i64)
CAST(cast_f64_f32, double, float)
CAST(cast_f64_f64, double, double)
CAST(cast_f64_i64, double, i64)
CAST(cast_i64_f32, i64, float)
CAST(cast_i64_f64, i64, double)
CAST(cast_i64_i64, i64, i64)

#define FILL(NAME, T)                                                                            \
    extern "C" __global__ void NAME(i64 n, double v, T* out) {                                   \
        T x = from_f64<T>(v);                                                                    \
        FOR_EACH(i, n) out[i] = x;                                                               \
    }
FILL(fill_f32, float)
FILL(fill_f64, double)
FILL(fill_i64, i64)

// Philox 4x32-10, the same function as tessera_core::random::philox_4x32.
__device__ __forceinline__ void philox(unsigned int c[4], unsigned int k0, unsigned int k1) {
    for (int r = 0; r < 10; ++r) {
        unsigned int hi0 = __umulhi(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
        unsigned int hi1 = __umulhi(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
        unsigned int n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

// 53 random bits -> [0, 1), as tessera_core::random does it.
__device__ __forceinline__ double unit(unsigned int hi, unsigned int lo) {
    u64 bits = ((u64)hi << 21) ^ ((u64)lo >> 11);
    return (double)bits * (1.0 / 9007199254740992.0);
}

// dist 0: uniform on [a, b); dist 1: normal with mean a and std b (Box-Muller on one block).
#define RANDOM(NAME, T)                                                                          \
    extern "C" __global__ void NAME(i64 n, int dist, double a, double b, u64 seed, u64 offset,   \
                                    T* out) {                                                    \
        FOR_EACH(i, n) {                                                                         \
            u64 idx = offset + (u64)i;                                                           \
            unsigned int c[4] = {(unsigned int)idx, (unsigned int)(idx >> 32), 0u, 0u};          \
            philox(c, (unsigned int)seed, (unsigned int)(seed >> 32));                           \
            double v;                                                                            \
            if (dist == 0) {                                                                     \
                v = a + (b - a) * unit(c[0], c[1]);                                              \
            } else {                                                                             \
                double u1 = 1.0 - unit(c[0], c[1]), u2 = unit(c[2], c[3]);                       \
                v = a + b * (sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));                \
            }                                                                                    \
            out[i] = (T)v;                                                                       \
        }                                                                                        \
    }
RANDOM(random_f32, float)
RANDOM(random_f64, double)
