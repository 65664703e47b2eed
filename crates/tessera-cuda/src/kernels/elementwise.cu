// Elementwise maps over strided layouts (operands already broadcast to one shape by core):
// unary, binary, where, cast, fill and counter-based random numbers.
// The op templates are in ops.cuh.

// 16 bytes of T, loaded and stored as one vector: contiguous operands move in 128-bit
// accesses, which keeps enough bytes in flight to reach the memory's bandwidth.
template <typename T> struct V16;
template <> struct V16<float> { typedef float4 V; enum { N = 4 }; };
template <> struct V16<double> { typedef double2 V; enum { N = 2 }; };
template <> struct V16<i64> { typedef longlong2 V; enum { N = 2 }; };
template <typename T> union Lanes {
    typename V16<T>::V v;
    T e[V16<T>::N];
};
__device__ __forceinline__ bool aligned16(const void* p) { return ((u64)p & 15) == 0; }

// Contiguous, 16-byte aligned operands (the common case) take whole vectors, then a scalar
// tail; any other layout is read element by element through its strides.
#define UNARY(NAME, T, F)                                                                        \
    extern "C" __global__ void NAME(int op, double p0, double p1, i64 n, const T* x, Strided lx, \
                                    T* out) {                                                    \
        const T* xs = x + lx.offset;                                                             \
        if (lx.contiguous && aligned16(xs) && aligned16(out)) {                                  \
            typedef typename V16<T>::V V;                                                        \
            const i64 nv = n / V16<T>::N;                                                        \
            FOR_EACH(q, nv) {                                                                    \
                Lanes<T> u;                                                                      \
                u.v = reinterpret_cast<const V*>(xs)[q];                                         \
                for (int k = 0; k < V16<T>::N; ++k) u.e[k] = F<T>(op, u.e[k], p0, p1);           \
                reinterpret_cast<V*>(out)[q] = u.v;                                              \
            }                                                                                    \
            FOR_EACH(i, n - nv * V16<T>::N) {                                                    \
                i64 j = nv * V16<T>::N + i;                                                      \
                out[j] = F<T>(op, xs[j], p0, p1);                                                \
            }                                                                                    \
            return;                                                                              \
        }                                                                                        \
        FOR_EACH(i, n) out[i] = F<T>(op, x[at(lx, i)], p0, p1);                                  \
    }
UNARY(unary_f32, float, unary_float)
UNARY(unary_f64, double, unary_float)
UNARY(unary_i64, i64, unary_num)

#define BINARY(NAME, T)                                                                          \
    extern "C" __global__ void NAME(int op, i64 n, const T* a, Strided la, const T* b,           \
                                    Strided lb, T* out) {                                        \
        const T *as = a + la.offset, *bs = b + lb.offset;                                        \
        if (la.contiguous && lb.contiguous && aligned16(as) && aligned16(bs) &&                  \
            aligned16(out)) {                                                                    \
            typedef typename V16<T>::V V;                                                        \
            const i64 nv = n / V16<T>::N;                                                        \
            FOR_EACH(q, nv) {                                                                    \
                Lanes<T> u, w;                                                                   \
                u.v = reinterpret_cast<const V*>(as)[q];                                         \
                w.v = reinterpret_cast<const V*>(bs)[q];                                         \
                for (int k = 0; k < V16<T>::N; ++k) u.e[k] = binary_op<T>(op, u.e[k], w.e[k]);   \
                reinterpret_cast<V*>(out)[q] = u.v;                                              \
            }                                                                                    \
            FOR_EACH(i, n - nv * V16<T>::N) {                                                    \
                i64 j = nv * V16<T>::N + i;                                                      \
                out[j] = binary_op<T>(op, as[j], bs[j]);                                         \
            }                                                                                    \
            return;                                                                              \
        }                                                                                        \
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
WHERE(where_bool_f32, b8, float)
WHERE(where_bool_f64, b8, double)
WHERE(where_bool_i64, b8, i64)
WHERE(where_bool_bool, b8, b8)
WHERE(where_f32_bool, float, b8)
WHERE(where_f64_bool, double, b8)
WHERE(where_i64_bool, i64, b8)

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
CAST(cast_bool_f32, b8, float)
CAST(cast_bool_f64, b8, double)
CAST(cast_bool_i64, b8, i64)
CAST(cast_bool_bool, b8, b8)
CAST(cast_f32_bool, float, b8)
CAST(cast_f64_bool, double, b8)
CAST(cast_i64_bool, i64, b8)

#define FILL(NAME, T)                                                                            \
    extern "C" __global__ void NAME(i64 n, double v, T* out) {                                   \
        T x = from_f64<T>(v);                                                                    \
        FOR_EACH(i, n) out[i] = x;                                                               \
    }
FILL(fill_f32, float)
FILL(fill_f64, double)
FILL(fill_i64, i64)
FILL(fill_bool, b8)

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
