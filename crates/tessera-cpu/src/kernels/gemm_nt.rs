//! `C = A·Bᵀ`-shaped f32 products with few rows, where both operands run contiguously along
//! the summed dimension: row `i` of `A` and column `j` of `B` are each `k` adjacent floats.
//! That is the layout of `x · Wᵀ` with `W` stored `[out, in]` (a Linear layer, an LSTM's
//! recurrent product), so the kernel reads both operands in place. matrixmultiply repacks all
//! of `B` on every call, which for 32 rows costs about as much as the arithmetic (W5's
//! per-step `[32, 256] · [256, 1024]` took 348 µs through it, 186 µs here on one core).
//!
//! Each tile keeps `MR × NR` running dot products in AVX registers over `k` and reduces them
//! horizontally once at the end.

use std::arch::x86_64::*;

/// Whether a product of these sizes should take the kernel rather than the packed GEMM: few
/// rows of `A`, whose tiles then read `B` few times. Measured on the 2-core Zen 4 machine
/// (2 threads, best of 300, `x · Wᵀ` through `Tensor::matmul`), GFLOP/s packed (then
/// matrixmultiply) → here: 128×784×512 178 → 208, 128×512×256 167 → 210, 64×400×120 124 →
/// 192, 64×120×84 63 → 88, 32×256×1024 (W5's step) 48 → 80. With many rows the packed GEMM
/// (now the `gemm` crate) wins everywhere: on a Sapphire Rapids machine, 2 threads, medians
/// of 15 interleaved rounds, 2048×256×{256,768,1024} and 2048×1024×256 ran at 183-194
/// GFLOP/s packed against 86-103 here (`docs/performance.md`).
pub fn worthwhile(m: usize, _k: usize, _n: usize) -> bool {
    m <= 128
}

/// Whether this CPU runs the kernel (AVX2 and FMA, detected at run time).
pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// One product: `c[i·ldc + j] = Σ_p a[i·lda + p] · bt[j·ldb + p]` for `i < m`, `j < n`,
/// `p < k`.
///
/// # Safety
/// `available()` must be true; `a`, `bt` and `c` must address every element those indices
/// reach, and `c`'s elements must not be read or written by anyone else during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn product(
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    lda: usize,
    bt: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    let op = Operands {
        k,
        a,
        lda,
        bt,
        ldb,
        c,
        ldc,
    };
    // Tiles of 4 rows × 3 columns, smaller at the bottom and right edges.
    let tile = |i: usize, j: usize| tile_at(&op, i, j, (m - i).min(4), (n - j).min(3));
    if m * k <= A_IN_L1 {
        // All of `A` stays in L1: columns outer, so each 3 rows of `B` are read once.
        for j in (0..n).step_by(3) {
            for i in (0..m).step_by(4) {
                tile(i, j);
            }
        }
    } else {
        for i in (0..m).step_by(4) {
            for j in (0..n).step_by(3) {
                tile(i, j);
            }
        }
    }
}

/// Floats of `A` that fit in L1 beside a tile's rows of `B` (32 KiB of a 32-48 KiB L1). W5's
/// forward step (32×256 · 256×1024, one thread, best of 400, 3 runs): rows outer 194-233 µs,
/// columns outer 181-187 µs.
const A_IN_L1: usize = 8192;

/// The `mr × nr` tile at `(i, j)` (`mr ≤ 4`, `nr ≤ 3`), each size compiled on its own so the
/// accumulators stay in registers.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_at(op: &Operands, i: usize, j: usize, mr: usize, nr: usize) {
    match (mr, nr) {
        (4, 3) => tile::<4, 3>(op, i, j),
        (4, 2) => tile::<4, 2>(op, i, j),
        (4, 1) => tile::<4, 1>(op, i, j),
        (3, 3) => tile::<3, 3>(op, i, j),
        (3, 2) => tile::<3, 2>(op, i, j),
        (3, 1) => tile::<3, 1>(op, i, j),
        (2, 3) => tile::<2, 3>(op, i, j),
        (2, 2) => tile::<2, 2>(op, i, j),
        (2, 1) => tile::<2, 1>(op, i, j),
        (1, 3) => tile::<1, 3>(op, i, j),
        (1, 2) => tile::<1, 2>(op, i, j),
        _ => tile::<1, 1>(op, i, j),
    }
}

/// Pointers and leading dimensions shared by every tile of one product.
struct Operands {
    k: usize,
    a: *const f32,
    lda: usize,
    bt: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
}

/// `C[i..i+MR, j..j+NR]`: 8 floats of `k` per step, the last `k % 8` through a masked load
/// (zeros past the end, so they add nothing).
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const MR: usize, const NR: usize>(op: &Operands, i: usize, j: usize) {
    let a = |r: usize| op.a.add((i + r) * op.lda);
    let b = |v: usize| op.bt.add((j + v) * op.ldb);
    let mut acc = [[_mm256_setzero_ps(); NR]; MR];
    let k8 = op.k - op.k % 8;
    let mut p = 0;
    while p < k8 {
        let mut bv = [_mm256_setzero_ps(); NR];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(b(v).add(p));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm256_loadu_ps(a(r).add(p));
            for (s, x) in row.iter_mut().zip(&bv) {
                *s = _mm256_fmadd_ps(av, *x, *s);
            }
        }
        p += 8;
    }
    if p < op.k {
        let mask = tail_mask(op.k - p);
        let mut bv = [_mm256_setzero_ps(); NR];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm256_maskload_ps(b(v).add(p), mask);
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm256_maskload_ps(a(r).add(p), mask);
            for (s, x) in row.iter_mut().zip(&bv) {
                *s = _mm256_fmadd_ps(av, *x, *s);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, s) in row.iter().enumerate() {
            *op.c.add((i + r) * op.ldc + j + v) = hsum(*s);
        }
    }
}

/// Lanes `0..len` (len < 8) set.
#[target_feature(enable = "avx2,fma")]
unsafe fn tail_mask(len: usize) -> __m256i {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), lanes)
}

/// The sum of the 8 lanes.
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps(x, x, 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every remainder of rows (mod 4), columns (mod 3) and k (mod 8), with padded leading
    /// dimensions, in both loop orders, against an f64 reference.
    #[test]
    fn matches_f64_dot_products() {
        if !available() {
            eprintln!("skipped: no AVX2+FMA");
            return;
        }
        // Both loop orders: `A` within L1 (m·k ≤ A_IN_L1) and beyond it.
        for (m, k, n) in [
            (1, 1, 1),
            (4, 8, 3),
            (7, 13, 5),
            (32, 256, 1024),
            (6, 35, 8),
            (9, 1001, 7),
            (13, 700, 11),
        ] {
            let (lda, ldb, ldc) = (k + 3, k + 1, n + 2);
            let a: Vec<f32> = (0..m * lda).map(|i| ((i * 7) % 19) as f32 - 9.0).collect();
            let b: Vec<f32> = (0..n * ldb).map(|i| ((i * 5) % 23) as f32 * 0.25).collect();
            let mut c = vec![f32::NAN; m * ldc];
            // SAFETY: AVX2+FMA checked; the buffers hold m·lda, n·ldb and m·ldc elements.
            unsafe {
                product(
                    m,
                    k,
                    n,
                    a.as_ptr(),
                    lda,
                    b.as_ptr(),
                    ldb,
                    c.as_mut_ptr(),
                    ldc,
                )
            };
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| a[i * lda + p] as f64 * b[j * ldb + p] as f64)
                        .sum();
                    let got = c[i * ldc + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{m}x{k}x{n} [{i}, {j}]: {got} vs {want}"
                    );
                }
                // Padding columns of C stay untouched.
                assert!(c[i * ldc + n].is_nan());
            }
        }
    }
}
