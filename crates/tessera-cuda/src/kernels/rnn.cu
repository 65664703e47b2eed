// The LSTM cell (PyTorch's gate order i, f, g, o) over contiguous rows, one thread per (row,
// hidden unit): its four gates, the new cell and output in one pass, where core's default
// takes about ten launches; and its backward in one pass instead of about twenty. The same
// formulas as the CPU backend's `kernels::rnn`.

template <typename T>
__device__ __forceinline__ T sigmoid_of(T v) {
    const T one = (T)1;
    // Both branches keep exp's argument non-positive, as the unary kernel's sigmoid.
    if (v >= (T)0) return one / (one + M<T>::exp(-v));
    T e = M<T>::exp(v);
    return e / (one + e);
}

// x, r: [b, 4h] (the input projection and the recurrent product); c: [b, h].
// Writes act [b, 4h] = (σ(i), σ(f), tanh(g), σ(o)), c' = σ(f)·c + σ(i)·tanh(g), tanh(c') and
// h' = σ(o)·tanh(c') ([b, h] each).
#define LSTM_CELL(S, T)                                                                          \
    extern "C" __global__ void lstm_cell_##S(i64 b, i64 h, const T* x, const T* r, const T* c,  \
                                             T* act, T* c_new, T* tanh_c, T* h_new) {            \
        FOR_EACH(e, b * h) {                                                                     \
            i64 j = e / h, k = e - j * h;                                                        \
            const T* xr = x + j * 4 * h;                                                         \
            const T* rr = r + j * 4 * h;                                                         \
            T* a = act + j * 4 * h;                                                              \
            T i = sigmoid_of<T>(xr[k] + rr[k]);                                                  \
            T f = sigmoid_of<T>(xr[h + k] + rr[h + k]);                                          \
            T g = M<T>::tanh(xr[2 * h + k] + rr[2 * h + k]);                                     \
            T o = sigmoid_of<T>(xr[3 * h + k] + rr[3 * h + k]);                                  \
            a[k] = i;                                                                            \
            a[h + k] = f;                                                                        \
            a[2 * h + k] = g;                                                                    \
            a[3 * h + k] = o;                                                                    \
            T cn = f * c[e] + i * g;                                                             \
            T tc = M<T>::tanh(cn);                                                               \
            c_new[e] = cn;                                                                       \
            tanh_c[e] = tc;                                                                      \
            h_new[e] = o * tc;                                                                   \
        }                                                                                        \
    }
LSTM_CELL(f32, float)
LSTM_CELL(f64, double)

// From act [b, 4h], c_prev, tanh(c'), dh and dc ([b, h] each): dz [b, 4h] and dc_prev [b, h].
#define LSTM_CELL_BACKWARD(S, T)                                                                 \
    extern "C" __global__ void lstm_cell_backward_##S(i64 b, i64 h, const T* act,               \
                                                      const T* c_prev, const T* tanh_c,          \
                                                      const T* dh, const T* dc, T* dz,           \
                                                      T* dc_prev) {                              \
        FOR_EACH(e, b * h) {                                                                     \
            const T one = (T)1;                                                                  \
            i64 j = e / h, k = e - j * h;                                                        \
            const T* a = act + j * 4 * h;                                                        \
            T* d = dz + j * 4 * h;                                                               \
            T i = a[k], f = a[h + k], g = a[2 * h + k], o = a[3 * h + k];                        \
            T tc = tanh_c[e];                                                                    \
            T dct = dc[e] + dh[e] * o * (one - tc * tc);                                         \
            d[k] = dct * g * i * (one - i);                                                      \
            d[h + k] = dct * c_prev[e] * f * (one - f);                                          \
            d[2 * h + k] = dct * i * (one - g * g);                                              \
            d[3 * h + k] = dh[e] * tc * o * (one - o);                                           \
            dc_prev[e] = dct * f;                                                                \
        }                                                                                        \
    }
LSTM_CELL_BACKWARD(f32, float)
LSTM_CELL_BACKWARD(f64, double)
