// im2col and col2im over contiguous [N*C, H, W] planes, the window geometry of `Window`.
// cols is [N*C, taps, positions]; tap t = (t / kw, t % kw), position p = (p / ow, p % ow).

struct Win {
    i64 k0, k1, s0, s1, d0, d1, p0, p1, o0, o1;
};

#define UNFOLD(T, S)                                                                             \
    extern "C" __global__ void unfold_##S(i64 n, const T* x, i64 h, i64 w, Win g, T fill,        \
                                          T* cols) {                                             \
        i64 pos = g.o0 * g.o1, taps = g.k0 * g.k1;                                               \
        FOR_EACH(i, n) {                                                                         \
            i64 p = i % pos, t = (i / pos) % taps, plane = i / (pos * taps);                     \
            i64 r = (p / g.o1) * g.s0 - g.p0 + (t / g.k1) * g.d0;                                \
            i64 c = (p % g.o1) * g.s1 - g.p1 + (t % g.k1) * g.d1;                                \
            cols[i] = (r >= 0 && r < h && c >= 0 && c < w) ? x[(plane * h + r) * w + c] : fill; \
        }                                                                                        \
    }
UNFOLD(float, f32)
UNFOLD(double, f64)
UNFOLD(unsigned short, u16)  // f16 and bf16: a 16-bit copy, fill given as bits

// One thread per input pixel sums the taps that read it: no atomics, deterministic.
#define FOLD(T, S)                                                                               \
    extern "C" __global__ void fold_##S(i64 n, const T* cols, i64 h, i64 w, Win g, T* x) {       \
        i64 pos = g.o0 * g.o1, taps = g.k0 * g.k1;                                               \
        FOR_EACH(i, n) {                                                                         \
            i64 c = i % w, r = (i / w) % h, plane = i / (h * w);                                 \
            const T* src = cols + plane * taps * pos;                                            \
            T acc = (T)0;                                                                        \
            for (i64 a = 0; a < g.k0; ++a) {                                                     \
                i64 rr = r + g.p0 - a * g.d0;                                                    \
                if (rr < 0 || rr % g.s0 != 0 || rr / g.s0 >= g.o0) continue;                     \
                for (i64 b = 0; b < g.k1; ++b) {                                                 \
                    i64 cc = c + g.p1 - b * g.d1;                                                \
                    if (cc < 0 || cc % g.s1 != 0 || cc / g.s1 >= g.o1) continue;                 \
                    acc += src[(a * g.k1 + b) * pos + (rr / g.s0) * g.o1 + cc / g.s1];           \
                }                                                                                \
            }                                                                                    \
            x[i] = acc;                                                                          \
        }                                                                                        \
    }
FOLD(float, f32)
FOLD(double, f64)
