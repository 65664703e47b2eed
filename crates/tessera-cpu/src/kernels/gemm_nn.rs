//! `C = A · B` for a row-major `B` that is small or meets few rows of `A` (see [`worthwhile`]),
//! read in place (no packing): each tile of C (up to 12 rows × 32 columns with AVX-512, 6 × 16
//! with AVX2) accumulates over a block of 256 steps of `k`, each step one load of B's row
//! segment and one broadcast per row of A. It
//! serves the LSTM's per-step products (`h · W_hhᵀ` with `W_hhᵀ` stored row-major once per
//! sequence, and `dz · W_hh`), where matrixmultiply would repack the 1 MiB weight on each of
//! the 70 steps, and where the dot-product tiles of [`super::gemm_nt`] (one horizontal sum per
//! output) ran at ~82 GFLOP/s on one core against this kernel's 98-113 (AVX-512; measured
//! standalone on the reference Zen 4 with the W5 shapes, `docs/performance.md`).

use std::arch::x86_64::*;

/// Steps of `k` per block: C is reloaded once per block. 256 ran the `k` = 1024 shape at 98-99
/// GFLOP/s, 512 and unblocked at 82-84 (a 12-row group of `A` no longer stays in L1).
const KB: usize = 256;

/// Which kernel this CPU runs, if any (detected at run time; the build does not assume them).
pub fn available() -> bool {
    avx512() || avx2()
}

fn avx512() -> bool {
    is_x86_feature_detected!("avx512f")
}

fn avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Whether an `m × k × n` product with a row-major `B` should take this kernel: enough depth
/// and width for full vectors, and few rows (`B`'s reuse per packing is then low: the LSTM's
/// per-step products). With many rows the packed GEMM (the `gemm` crate) wins: Sapphire
/// Rapids, 2 threads, medians of 15 interleaved rounds, GFLOP/s packed / here: 2048×768×256
/// 206 / 145, 2048×256×1024 197 / 149, 1024³ 201 / 128 (`docs/performance.md`).
pub fn worthwhile(m: usize, k: usize, n: usize) -> bool {
    k >= 16 && n >= 16 && m <= 64
}

/// `c[i][j] = Σ_p a[i][p] · b[p][j]` for `i < m`, `j < n`: `a` rows at stride `lda` (each `k`
/// adjacent floats), `b` rows at stride `ldb` (each `n` adjacent floats), `c` rows at `ldc`.
///
/// # Safety
/// [`available`] must hold; `a`, `b` must hold the elements so addressed, and `c`'s `m × n`
/// elements must be writable and not read or written by anything else during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn product(
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    product_on(avx512(), m, k, n, a, lda, b, ldb, c, ldc)
}

/// [`product`] on the AVX-512 kernel (`wide`) or the AVX2 one.
// `i + $mr <= m` reads the same for every tile height, 1 included.
#[allow(clippy::too_many_arguments, clippy::int_plus_one)]
unsafe fn product_on(
    wide: bool,
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    for p0 in (0..k).step_by(KB) {
        let kc = KB.min(k - p0);
        let add = p0 > 0;
        let (a, b) = (a.add(p0), b.add(p0 * ldb));
        if wide {
            for j in (0..n).step_by(32) {
                let cols = 32.min(n - j);
                let (b, c) = (b.add(j), c.add(j));
                let mut i = 0;
                macro_rules! rows {
                    ($mr:literal) => {
                        while i + $mr <= m {
                            let t = (kc, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc);
                            tile512::<$mr>(t.0, t.1, t.2, t.3, t.4, t.5, t.6, cols, add);
                            i += $mr;
                        }
                    };
                }
                rows!(12);
                rows!(8);
                rows!(4);
                rows!(1);
            }
        } else {
            let full = n - n % 16;
            for j in (0..full).step_by(16) {
                let (b, c) = (b.add(j), c.add(j));
                let mut i = 0;
                macro_rules! rows {
                    ($mr:literal) => {
                        while i + $mr <= m {
                            let t = (kc, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc);
                            tile256::<$mr>(t.0, t.1, t.2, t.3, t.4, t.5, t.6, add);
                            i += $mr;
                        }
                    };
                }
                rows!(6);
                rows!(3);
                rows!(1);
            }
            // The last `n % 16` columns, scalar.
            for i in 0..m {
                for j in full..n {
                    let mut s = 0.0f32;
                    for p in 0..kc {
                        s += *a.add(i * lda + p) * *b.add(p * ldb + j);
                    }
                    let d = c.add(i * ldc + j);
                    *d = if add { *d + s } else { s };
                }
            }
        }
    }
}

/// The first `n` lanes of a 16-lane mask.
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        (1u16 << n) - 1
    }
}

/// `MR` rows × `cols` (≤ 32) columns of C over `kc` steps, added to C's values when `add`.
/// Masked loads and stores keep a partial tile inside B's and C's rows.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile512<const MR: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    add: bool,
) {
    let mask = [lanes(cols), lanes(cols.saturating_sub(16))];
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if add {
        for (i, row) in acc.iter_mut().enumerate() {
            for (h, v) in row.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_ps(mask[h], c.add(i * ldc + 16 * h));
            }
        }
    }
    let mut bp = b;
    for p in 0..kc {
        let b0 = _mm512_maskz_loadu_ps(mask[0], bp);
        let b1 = _mm512_maskz_loadu_ps(mask[1], bp.add(16));
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(i * lda + p));
            row[0] = _mm512_fmadd_ps(av, b0, row[0]);
            row[1] = _mm512_fmadd_ps(av, b1, row[1]);
        }
        bp = bp.add(ldb);
    }
    for (i, row) in acc.iter().enumerate() {
        for (h, v) in row.iter().enumerate() {
            _mm512_mask_storeu_ps(c.add(i * ldc + 16 * h), mask[h], *v);
        }
    }
}

/// `MR` rows × 16 columns of C over `kc` steps (AVX2 + FMA), added to C's values when `add`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile256<const MR: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    if add {
        for (i, row) in acc.iter_mut().enumerate() {
            for (h, v) in row.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(c.add(i * ldc + 8 * h));
            }
        }
    }
    let mut bp = b;
    for p in 0..kc {
        let b0 = _mm256_loadu_ps(bp);
        let b1 = _mm256_loadu_ps(bp.add(8));
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(i * lda + p));
            row[0] = _mm256_fmadd_ps(av, b0, row[0]);
            row[1] = _mm256_fmadd_ps(av, b1, row[1]);
        }
        bp = bp.add(ldb);
    }
    for (i, row) in acc.iter().enumerate() {
        for (h, v) in row.iter().enumerate() {
            _mm256_storeu_ps(c.add(i * ldc + 8 * h), *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row, column and depth remainder (and more than one depth block), with padded
    /// rows in all three matrices, against f64 sums; on each kernel this CPU runs.
    #[test]
    fn products_match_f64_sums() {
        for wide in [true, false] {
            if (wide && !avx512()) || (!wide && !avx2()) {
                eprintln!("skipped: products_match_f64_sums (avx512: {wide}): not on this CPU");
                continue;
            }
            check(wide);
        }
    }

    fn check(wide: bool) {
        for (m, k, n) in [
            (1, 16, 16),
            (13, 300, 33),
            (32, 256, 64),
            (23, 513, 47),
            (64, 40, 17),
        ] {
            let (lda, ldb, ldc) = (k + 3, n + 5, n + 2);
            let a: Vec<f32> = (0..m * lda)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
                .collect();
            let b: Vec<f32> = (0..k * ldb)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 32.0)
                .collect();
            let mut c = vec![f32::NAN; m * ldc];
            // SAFETY: the kernel's features are present (checked by the caller); the matrices
            // hold m × lda, k × ldb and m × ldc elements.
            unsafe {
                product_on(
                    wide,
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
                    let terms = (0..k).map(|p| a[i * lda + p] as f64 * b[p * ldb + j] as f64);
                    let want: f64 = terms.clone().sum();
                    let scale: f64 = terms.map(f64::abs).sum();
                    let got = c[i * ldc + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + scale),
                        "avx512 {wide}: {m}x{k}x{n} at ({i},{j}): {got} vs {want}"
                    );
                }
                // Nothing past column n is written.
                assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()));
            }
        }
    }
}
