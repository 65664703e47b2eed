// Reductions (sum, max, min, argmax, argmin) and row softmax.
// A reduction sees `x` as [outer, inner]: `lo` walks the kept dims (one output each), `li` the
// reduced dims (offsets relative to the output's base). Op codes: 0 sum, 1 max, 2 min.

#define BLOCK 256

template <typename T>
__device__ __forceinline__ T combine(int op, T acc, T v) {
    if (op == 0) return acc + v;
    // NaN propagates, as in PyTorch.
    if (op == 1) return (v > acc || (M<T>::isnan(v) && !M<T>::isnan(acc))) ? v : acc;
    return (v < acc || (M<T>::isnan(v) && !M<T>::isnan(acc))) ? v : acc;
}

template <typename T>
__device__ __forceinline__ T identity(int op) {
    return op == 0 ? (T)0 : (op == 1 ? M<T>::lowest() : M<T>::highest());
}

// One block per output: threads stride over the reduced elements, then a tree in shared memory.
template <typename T>
__device__ void reduce_block(int op, i64 n_out, i64 n_in, const T* x, const Strided& lo,
                             const Strided& li, T* out) {
    __shared__ T buf[BLOCK];
    for (i64 o = blockIdx.x; o < n_out; o += gridDim.x) {
        i64 base = at(lo, o);
        T acc = identity<T>(op);
        for (i64 j = threadIdx.x; j < n_in; j += blockDim.x) acc = combine<T>(op, acc, x[base + at(li, j)]);
        buf[threadIdx.x] = acc;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) buf[threadIdx.x] = combine<T>(op, buf[threadIdx.x], buf[threadIdx.x + s]);
            __syncthreads();
        }
        if (threadIdx.x == 0) out[o] = buf[0];
        __syncthreads();
    }
}

// One thread per output, for short reductions with many outputs.
template <typename T>
__device__ void reduce_thread(int op, i64 n_out, i64 n_in, const T* x, const Strided& lo,
                              const Strided& li, T* out) {
    FOR_EACH(o, n_out) {
        i64 base = at(lo, o);
        T acc = identity<T>(op);
        for (i64 j = 0; j < n_in; ++j) acc = combine<T>(op, acc, x[base + at(li, j)]);
        out[o] = acc;
    }
}

#define REDUCE(T, S)                                                                             \
    extern "C" __global__ void reduce_block_##S(int op, i64 n_out, i64 n_in, const T* x,         \
                                                Strided lo, Strided li, T* out) {                \
        reduce_block<T>(op, n_out, n_in, x, lo, li, out);                                        \
    }                                                                                            \
    extern "C" __global__ void reduce_thread_##S(int op, i64 n_out, i64 n_in, const T* x,        \
                                                 Strided lo, Strided li, T* out) {               \
        reduce_thread<T>(op, n_out, n_in, x, lo, li, out);                                       \
    }
REDUCE(float, f32)
REDUCE(double, f64)
REDUCE(i64, i64)

// Index of the first maximum (op 1) or minimum (op 2) along one axis of length n with `stride`;
// NaN counts as the extreme, as in PyTorch. One thread per output.
#define ARG_REDUCE(T, S)                                                                         \
    extern "C" __global__ void arg_reduce_##S(int op, i64 n_out, i64 n, i64 stride, const T* x,  \
                                              Strided lo, i64* out) {                            \
        FOR_EACH(o, n_out) {                                                                     \
            i64 base = at(lo, o);                                                                \
            T best = x[base];                                                                    \
            i64 arg = 0;                                                                         \
            for (i64 k = 1; k < n; ++k) {                                                        \
                T v = x[base + k * stride];                                                      \
                bool nan_v = M<T>::isnan(v), nan_b = M<T>::isnan(best);                          \
                bool better = op == 1 ? (v > best || (nan_v && !nan_b))                          \
                                      : (v < best || (nan_v && !nan_b));                         \
                if (better) { best = v; arg = k; }                                               \
            }                                                                                    \
            out[o] = arg;                                                                        \
        }                                                                                        \
    }
ARG_REDUCE(float, f32)
ARG_REDUCE(double, f64)
ARG_REDUCE(i64, i64)

// Softmax (or log-softmax) of contiguous rows of length n: one block per row.
template <typename T>
__device__ void softmax_rows(i64 rows, i64 n, const T* x, T* out, int log_) {
    __shared__ T buf[BLOCK];
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * n;
        T* o = out + r * n;
        T m = M<T>::lowest();
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) m = combine<T>(1, m, xr[j]);
        buf[threadIdx.x] = m;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) buf[threadIdx.x] = combine<T>(1, buf[threadIdx.x], buf[threadIdx.x + s]);
            __syncthreads();
        }
        m = buf[0];
        __syncthreads();
        T sum = 0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) sum += M<T>::exp(xr[j] - m);
        buf[threadIdx.x] = sum;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
            __syncthreads();
        }
        sum = buf[0];
        __syncthreads();
        if (log_) {
            T ls = M<T>::log(sum);
            for (i64 j = threadIdx.x; j < n; j += blockDim.x) o[j] = xr[j] - m - ls;
        } else {
            T inv = (T)1 / sum;
            for (i64 j = threadIdx.x; j < n; j += blockDim.x) o[j] = M<T>::exp(xr[j] - m) * inv;
        }
    }
}

extern "C" __global__ void softmax_f32(i64 rows, i64 n, const float* x, float* out, int log_) {
    softmax_rows<float>(rows, n, x, out, log_);
}
extern "C" __global__ void softmax_f64(i64 rows, i64 n, const double* x, double* out, int log_) {
    softmax_rows<double>(rows, n, x, out, log_);
}

// Cross-entropy rows from the log-softmax `lp` [rows, n] and the targets: per row the loss
// -(keep·lp[t]) - spread·Σ_j lp[j] (the sum only with label smoothing) and the weight 1, or 0
// and 0 where t = ignore; a target outside [0, n) that is not ignored goes to `err`. One block
// per row (the smoothing sum is a block reduction).
template <typename T>
__device__ void ce_rows(i64 rows, i64 n, const T* lp, const i64* t, T keep, T spread, i64 ignore,
                        T* loss, T* w, i64* err) {
    __shared__ T buf[BLOCK];
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* row = lp + r * n;
        T sum = 0;
        if (spread != (T)0) {
            for (i64 j = threadIdx.x; j < n; j += blockDim.x) sum += row[j];
            buf[threadIdx.x] = sum;
            __syncthreads();
            for (int s = blockDim.x / 2; s > 0; s >>= 1) {
                if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
                __syncthreads();
            }
            sum = buf[0];
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            i64 c = t[r];
            if (c == ignore || c < 0 || c >= n) {
                if (c != ignore) report(err, c);
                loss[r] = (T)0;
                w[r] = (T)0;
            } else {
                loss[r] = (T)0 - keep * row[c] - spread * sum;
                w[r] = (T)1;
            }
        }
    }
}
extern "C" __global__ void cross_entropy_f32(i64 rows, i64 n, const float* lp, const i64* t,
                                             double keep, double spread, i64 ignore, float* loss,
                                             float* w, i64* err) {
    ce_rows<float>(rows, n, lp, t, (float)keep, (float)spread, ignore, loss, w, err);
}
extern "C" __global__ void cross_entropy_f64(i64 rows, i64 n, const double* lp, const i64* t,
                                             double keep, double spread, i64 ignore, double* loss,
                                             double* w, i64* err) {
    ce_rows<double>(rows, n, lp, t, keep, spread, ignore, loss, w, err);
}

// dx[r][k] = g_r·w_r·(exp(lp[r][k]) - spread - keep·[k = t_r]) over [rows, n], one thread per
// element; `g` is read at stride `gs` (0 when it is one value broadcast).
#define CE_BACKWARD(S, T)                                                                        \
    extern "C" __global__ void cross_entropy_backward_##S(i64 rows, i64 n, const T* lp,         \
                                                          const i64* t, const T* w, const T* g,  \
                                                          i64 gs, double keep, double spread,    \
                                                          T* dx) {                               \
        FOR_EACH(e, rows * n) {                                                                  \
            i64 r = e / n, k = e - r * n;                                                        \
            T s = g[r * gs] * w[r];                                                              \
            T v = s * (M<T>::exp(lp[e]) - (T)spread);                                            \
            if (k == t[r]) v = v - s * (T)keep;                                                  \
            dx[e] = v;                                                                           \
        }                                                                                        \
    }
CE_BACKWARD(f32, float)
CE_BACKWARD(f64, double)
