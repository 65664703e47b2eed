// The elementwise op codes shared by elementwise.cu and half.cu (half computes in f32).
// Codes match `UnaryOp`/`BinaryOp` as numbered in elementwise.rs.

template <typename T>
__device__ __forceinline__ T unary_num(int op, T v, double p0, double p1) {
    const T z = (T)0;
    switch (op) {
        case 0: return -v;
        case 1: return M<T>::abs(v);
        case 2: return v > z ? (T)1 : (v < z ? (T)-1 : v);
        case 8: return v <= z ? z : v;
        case 11: return v * v;
        case 14: return v + from_f64<T>(p0);
        case 15: return v * from_f64<T>(p0);
        case 17: {
            T lo = from_f64<T>(p0), hi = from_f64<T>(p1);
            return v < lo ? lo : (v > hi ? hi : v);
        }
    }
    return v;
}

template <typename T>
__device__ __forceinline__ T unary_float(int op, T v, double p0, double p1) {
    const T one = (T)1, z = (T)0;
    switch (op) {
        case 3: return M<T>::exp(v);
        case 4: return M<T>::log(v);
        case 5: return M<T>::sqrt(v);
        case 6: return M<T>::tanh(v);
        // Both branches keep exp's argument non-positive, so nothing overflows.
        case 7: if (v >= z) { return one / (one + M<T>::exp(-v)); } else { T e = M<T>::exp(v); return e / (one + e); }
        case 9: return M<T>::erf(v);
        case 10: return one / v;
        case 12: return v > z ? v : v * (T)p0;
        case 13: {
            T b = (T)p0, t = (T)p1, x = v * b;
            if (x > t) return v;
            T m = x > z ? x : z;
            return (m + M<T>::log1p(M<T>::exp(-M<T>::abs(x)))) / b;
        }
        case 16: return M<T>::pow(v, (T)p0);
    }
    return unary_num<T>(op, v, p0, p1);
}

template <typename T> __device__ __forceinline__ T pow_op(T a, T b) { return M<T>::pow(a, b); }
template <> __device__ __forceinline__ i64 pow_op<i64>(i64 a, i64 b) {
    if (b < 0) return 0;
    // Wrapping exponentiation by squaring, as Rust's wrapping_pow.
    u64 r = 1, base = (u64)a, e = (u64)b;
    while (e) { if (e & 1) r *= base; base *= base; e >>= 1; }
    return (i64)r;
}

template <typename T>
__device__ __forceinline__ T binary_op(int op, T x, T y) {
    switch (op) {
        case 0: return x + y;
        case 1: return x - y;
        case 2: return x * y;
        case 3: return x / y;
        case 4: return pow_op<T>(x, y);
        // NaN wins, as in PyTorch.
        case 5: return (x > y || M<T>::isnan(x)) ? x : y;
        case 6: return (x < y || M<T>::isnan(x)) ? x : y;
        case 7: return x == y ? (T)1 : (T)0;
        case 8: return x != y ? (T)1 : (T)0;
        case 9: return x < y ? (T)1 : (T)0;
        case 10: return x <= y ? (T)1 : (T)0;
        case 11: return x > y ? (T)1 : (T)0;
        case 12: return x >= y ? (T)1 : (T)0;
    }
    return x;
}

// cond != 0 ? a : b, with `cond` of any numeric type.
#define WHERE(NAME, C, T)                                                                        \
    extern "C" __global__ void NAME(i64 n, const C* c, Strided lc, const T* a, Strided la,       \
                                    const T* b, Strided lb, T* out) {                            \
        FOR_EACH(i, n) out[i] = c[at(lc, i)] != (C)0 ? a[at(la, i)] : b[at(lb, i)];             \
    }
