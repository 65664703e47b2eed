// Data movement: strided copy (assemble, contiguous copies), gather and scatter-add along a dim.
// Index errors are reported through `err` (first bad index wins), which the host reads back.

#define COPY(T, S)                                                                               \
    extern "C" __global__ void copy_##S(i64 n, const T* src, Strided ls, T* dst, Strided ld) {   \
        FOR_EACH(i, n) dst[at(ld, i)] = src[at(ls, i)];                                          \
    }
COPY(float, f32)
COPY(double, f64)
COPY(i64, i64)
COPY(unsigned short, u16)  // f16 and bf16
COPY(b8, u8)               // bool

// out (index's shape, contiguous) = x[.. index .. at dim]; `lx` has index's shape and x's
// strides with stride 0 at `dim`; `sd` is x's stride at `dim` and `size` its length.
#define GATHER(T, S)                                                                             \
    extern "C" __global__ void gather_##S(i64 n, const T* x, Strided lx, i64 sd, i64 size,       \
                                          const i64* idx, Strided li, T* out, i64* err) {        \
        FOR_EACH(i, n) {                                                                         \
            i64 j = idx[at(li, i)];                                                              \
            if (j < 0 || j >= size) { report(err, j); out[i] = (T)0; continue; }                \
            out[i] = x[at(lx, i) + j * sd];                                                      \
        }                                                                                        \
    }
GATHER(float, f32)
GATHER(double, f64)
GATHER(i64, i64)
GATHER(unsigned short, u16)
GATHER(b8, u8)

__device__ __forceinline__ void add_to(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void add_to(double* p, double v) { atomicAdd(p, v); }
__device__ __forceinline__ void add_to(i64* p, i64 v) { atomicAdd((u64*)p, (u64)v); }

// out (zeroed, contiguous) gets src added at index along dim; `lo` has index's shape and
// out's contiguous strides with stride 0 at `dim`; `sd` is out's stride at `dim`.
#define SCATTER_ADD(T, S)                                                                        \
    extern "C" __global__ void scatter_add_##S(i64 n, const T* src, Strided ls, const i64* idx,  \
                                               Strided li, Strided lo, i64 sd, i64 size, T* out, \
                                               i64* err) {                                       \
        FOR_EACH(i, n) {                                                                         \
            i64 j = idx[at(li, i)];                                                              \
            if (j < 0 || j >= size) { report(err, j); continue; }                                \
            add_to(out + at(lo, i) + j * sd, src[at(ls, i)]);                                    \
        }                                                                                        \
    }
SCATTER_ADD(float, f32)
SCATTER_ADD(double, f64)
SCATTER_ADD(i64, i64)
