// Prepended to every kernel family: the strided-layout descriptor and indexing helpers.
// Must match `Strided` in kernels/mod.rs field for field.
#define MAX_DIMS 8
typedef long long i64;
typedef unsigned long long u64;

struct Strided {
    i64 shape[MAX_DIMS];
    i64 stride[MAX_DIMS];
    i64 offset;
    int rank;
    int contiguous;  // 1 when element i (row-major) lives at offset + i
};

// Offset of the i-th element (row-major order of `s.shape`) in its buffer.
__device__ __forceinline__ i64 at(const Strided& s, i64 i) {
    if (s.contiguous) return s.offset + i;
    i64 off = s.offset;
    for (int d = s.rank - 1; d >= 0; --d) {
        i64 n = s.shape[d];
        i64 q = i / n;
        off += (i - q * n) * s.stride[d];
        i = q;
    }
    return off;
}

#define FOR_EACH(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)blockDim.x * gridDim.x)

// Math by element type, so one template serves f32 and f64 with the matching precision.
template <typename T> struct M;
template <> struct M<float> {
    static __device__ __forceinline__ float exp(float v) { return expf(v); }
    static __device__ __forceinline__ float log(float v) { return logf(v); }
    static __device__ __forceinline__ float log1p(float v) { return log1pf(v); }
    static __device__ __forceinline__ float sqrt(float v) { return sqrtf(v); }
    static __device__ __forceinline__ float tanh(float v) { return tanhf(v); }
    static __device__ __forceinline__ float erf(float v) { return erff(v); }
    static __device__ __forceinline__ float pow(float a, float b) { return powf(a, b); }
    static __device__ __forceinline__ float abs(float v) { return fabsf(v); }
    static __device__ __forceinline__ bool isnan(float v) { return v != v; }
    static __device__ __forceinline__ float lowest() { return -__int_as_float(0x7f800000); }
    static __device__ __forceinline__ float highest() { return __int_as_float(0x7f800000); }
};
template <> struct M<double> {
    static __device__ __forceinline__ double exp(double v) { return ::exp(v); }
    static __device__ __forceinline__ double log(double v) { return ::log(v); }
    static __device__ __forceinline__ double log1p(double v) { return ::log1p(v); }
    static __device__ __forceinline__ double sqrt(double v) { return ::sqrt(v); }
    static __device__ __forceinline__ double tanh(double v) { return ::tanh(v); }
    static __device__ __forceinline__ double erf(double v) { return ::erf(v); }
    static __device__ __forceinline__ double pow(double a, double b) { return ::pow(a, b); }
    static __device__ __forceinline__ double abs(double v) { return fabs(v); }
    static __device__ __forceinline__ bool isnan(double v) { return v != v; }
    static __device__ __forceinline__ double lowest() { return -__longlong_as_double(0x7ff0000000000000LL); }
    static __device__ __forceinline__ double highest() { return __longlong_as_double(0x7ff0000000000000LL); }
};
template <> struct M<i64> {
    static __device__ __forceinline__ i64 abs(i64 v) { return v < 0 ? -v : v; }
    static __device__ __forceinline__ bool isnan(i64) { return false; }
    static __device__ __forceinline__ i64 lowest() { return (i64)0x8000000000000000ULL; }
    static __device__ __forceinline__ i64 highest() { return 0x7fffffffffffffffLL; }
};

// Float -> integer as Rust's `as` does it: saturating, NaN -> 0 (PTX cvt.rzi.sat semantics).
__device__ __forceinline__ i64 to_i64(double v) {
    if (v != v) return 0;
    if (v >= 9223372036854775807.0) return 0x7fffffffffffffffLL;
    if (v <= -9223372036854775808.0) return (i64)0x8000000000000000ULL;
    return (i64)v;
}
template <typename T> __device__ __forceinline__ T from_f64(double v) { return (T)v; }
template <> __device__ __forceinline__ i64 from_f64<i64>(double v) { return to_i64(v); }
// bool tensors are one byte per element, 0 or 1; any non-zero value (NaN too) is true.
typedef unsigned char b8;
template <> __device__ __forceinline__ b8 from_f64<b8>(double v) { return v != 0.0 ? 1 : 0; }

// Index errors: err[0] is a flag (0 = fine), err[1] the offending index (the first reported
// wins); the host reads both back after the launch.
__device__ __forceinline__ void report(i64* err, i64 j) {
    if (atomicCAS((u64*)err, 0ULL, 1ULL) == 0ULL) err[1] = j;
}
