//! Batched GEMM through the `gemm` crate, which takes row and column strides, so transposed
//! and broadcast operands need no copy, and picks its packed kernels for the CPU at run time
//! (AVX-512, AVX2 + FMA, or portable). Threads are rayon's: a batch runs one single-threaded
//! GEMM per task, a large product uses every thread of the pool (sharing its packed operands),
//! so GEMMs and elementwise kernels share one warm pool instead of two pools spinning against
//! each other. It replaced matrixmultiply, which ran the character transformer's products
//! (W9) at 127-147 GFLOP/s on 2 threads against 183-206 for `gemm` (docs/performance.md).

use super::unravel;
use crate::buffer::alloc;
use rayon::prelude::*;
use tessera_core::Layout;

/// Products with fewer multiply-adds than this (or with an output side under 64) run on one
/// thread. Measured on this 2-core machine, interleaved rounds, medians: splitting from 2^24
/// up gave W3 (128x784x512 GEMMs) 258 -> 314 steps/s over matrixmultiply's own threads; 2^18
/// without the side rule cost W5 ~15% (its 32x256x1024 per-step products then wake a sleeping
/// rayon worker each step); 2^21 with the side rule, against 2^24: W3 321 -> 371, W4 134 ->
/// 138, W5 17.4 -> 17.9.
const SPLIT_MIN: usize = 1 << 21;

/// Shapes of a batched product: batch dims, and `m`, `k`, `n`.
struct Dims<'a> {
    batch: &'a [usize],
    m: usize,
    k: usize,
    n: usize,
}

fn dims<'a>(la: &'a Layout, lb: &Layout) -> Dims<'a> {
    let r = la.rank();
    Dims {
        batch: &la.shape()[..r - 2],
        m: la.shape()[r - 2],
        k: la.shape()[r - 1],
        n: lb.shape()[r - 1],
    }
}

/// Per-batch offsets of `a` and `b`.
fn batch_offsets(d: &Dims<'_>, la: &Layout, lb: &Layout, i: usize) -> (usize, usize) {
    let r = la.rank();
    (
        la.offset() + unravel(i, d.batch, &la.strides()[..r - 2]),
        lb.offset() + unravel(i, d.batch, &lb.strides()[..r - 2]),
    )
}

macro_rules! gemm_impl {
    ($name:ident, $into:ident, $t:ty, $gemm:path) => {
        /// Batched matrix product into a new contiguous `[..., m, n]` vector.
        pub fn $name(a: &[$t], la: &Layout, b: &[$t], lb: &Layout) -> Vec<$t> {
            let d = dims(la, lb);
            let nb: usize = d.batch.iter().product();
            let mut out = alloc::<$t>(nb * d.m * d.n);
            $into(a, la, b, lb, &mut out, 0.0);
            out
        }

        /// `out ← A·B + beta·out` for a contiguous `[..., m, n]` `out` (`beta = 0` overwrites
        /// it, whatever it held; `beta = 1` accumulates a sum of products in place).
        pub fn $into(a: &[$t], la: &Layout, b: &[$t], lb: &Layout, out: &mut [$t], beta: $t) {
            let d = dims(la, lb);
            let nb: usize = d.batch.iter().product();
            let mn = d.m * d.n;
            debug_assert_eq!(out.len(), nb * mn, "matmul output of the wrong length");
            if mn == 0 {
                return;
            }
            if d.k == 0 {
                if beta == 0.0 {
                    out.fill(0.0);
                } else {
                    out.iter_mut().for_each(|v| *v *= beta);
                }
                return;
            }
            let r = la.rank();
            let (rsa, csa) = (la.strides()[r - 2] as isize, la.strides()[r - 1] as isize);
            let (rsb, csb) = (lb.strides()[r - 2] as isize, lb.strides()[r - 1] as isize);
            // One GEMM of batch item `i`, output rows `rows` and columns `cols` of it, written
            // at `c` (the item's output, row stride n).
            let part =
                |i: usize, rows: (usize, usize), cols: (usize, usize), c: usize, threads: usize| {
                    let (oa, ob) = batch_offsets(&d, la, lb, i);
                    let oa = oa as isize + rows.0 as isize * rsa;
                    let ob = ob as isize + cols.0 as isize * csb;
                    // SAFETY: the layouts were checked by core to stay inside `a` and `b`
                    // (offset + Σ (dim-1)·stride < len); `c` addresses this item's m·n output
                    // elements (row-major, strides n and 1), of which this call reads (beta ≠ 0)
                    // and writes only the block rows × cols, disjoint from every other call's.
                    unsafe {
                        $gemm(
                            rows.1,
                            d.k,
                            cols.1,
                            1.0,
                            a.as_ptr().offset(oa),
                            rsa,
                            csa,
                            b.as_ptr().offset(ob),
                            rsb,
                            csb,
                            beta,
                            (c as *mut $t).add(rows.0 * d.n + cols.0),
                            d.n as isize,
                            1,
                            threads,
                        );
                    }
                };
            let base = out.as_mut_ptr() as usize;
            let item = |i: usize| base + i * mn * std::mem::size_of::<$t>();
            let threads = rayon::current_num_threads();
            if nb > 1 && (nb >= threads || d.m * d.n * d.k < SPLIT_MIN) {
                // A batch: one single-threaded GEMM per rayon task.
                (0..nb)
                    .into_par_iter()
                    .for_each(|i| part(i, (0, d.m), (0, d.n), item(i), 1));
            } else {
                // Few products: each on every thread when large (the GEMM shares its packed
                // operands between them), else on this one.
                let t = if d.m * d.n * d.k >= SPLIT_MIN {
                    threads
                } else {
                    1
                };
                (0..nb).for_each(|i| part(i, (0, d.m), (0, d.n), item(i), t));
            }
        }
    };
}
gemm_impl!(matmul_f32_packed, matmul_f32_into, f32, gemm_crate::<f32>);

/// Batched f32 product: products with few rows read their operands in place when `A`'s rows
/// run along `k` and `B` is either column-major (`x · Wᵀ`: [`super::gemm_nt`]) or row-major
/// ([`super::gemm_nn`]); the rest go through the `gemm` crate, which packs both.
pub fn matmul_f32(a: &[f32], la: &Layout, b: &[f32], lb: &Layout) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if let Some(out) = small_rows_f32(a, la, b, lb) {
        return out;
    }
    matmul_f32_packed(a, la, b, lb)
}

/// `A·B + C` for 2-d `A`, `B` and a `C` read through its layout (a bias broadcast over the
/// rows): `C` is copied into the output and the GEMM accumulates onto it (`beta = 1`, PyTorch's
/// `addmm`), so the sum takes no pass of its own; few-row products take their in-place kernels
/// and add `C` afterwards.
pub fn matmul_add_f32(
    a: &[f32],
    la: &Layout,
    b: &[f32],
    lb: &Layout,
    c: &[f32],
    lc: &Layout,
) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if let Some(mut out) = small_rows_f32(a, la, b, lb) {
        super::update2(&mut out, c, lc, |x, y| x + y);
        return out;
    }
    let mut out = alloc::<f32>(lc.numel());
    fill_from(c, lc, &mut out);
    matmul_f32_into(a, la, b, lb, &mut out, 1.0);
    out
}

/// `out ← c` (read through `lc`, shape `[m, n]`): a bias broadcast over the rows (strides
/// `[0, 1]`) is copied row by row on rayon's threads, anything else through `copy_into`.
fn fill_from<T: crate::buffer::CpuElem>(c: &[T], lc: &Layout, out: &mut [T]) {
    let n = lc.shape()[1];
    if lc.strides() == [0, 1] && n > 0 {
        let row = &c[lc.offset()..lc.offset() + n];
        let rows_per_task = (super::CHUNK / n).max(1);
        out.par_chunks_mut(rows_per_task * n).for_each(|chunk| {
            chunk
                .chunks_exact_mut(n)
                .for_each(|r| r.copy_from_slice(row))
        });
    } else {
        super::copy_into(c, lc, out, &Layout::contiguous(lc.shape()));
    }
}

/// [`matmul_add_f32`] for f64 (always the packed GEMM).
pub fn matmul_add_f64(
    a: &[f64],
    la: &Layout,
    b: &[f64],
    lb: &Layout,
    c: &[f64],
    lc: &Layout,
) -> Vec<f64> {
    let mut out = alloc::<f64>(lc.numel());
    fill_from(c, lc, &mut out);
    matmul_f64_into(a, la, b, lb, &mut out, 1.0);
    out
}

#[cfg(target_arch = "x86_64")]
fn small_rows_f32(a: &[f32], la: &Layout, b: &[f32], lb: &Layout) -> Option<Vec<f32>> {
    use super::{gemm_nn, gemm_nt};
    let d = dims(la, lb);
    let r = la.rank();
    let lda = la.strides()[r - 2];
    // Row i of `a` must be k adjacent floats; `b` either has each column j as k adjacent floats
    // (`nt`, column stride `ldb`) or each row as n adjacent floats (row stride `ldb`).
    if la.strides()[r - 1] != 1 {
        return None;
    }
    let (nt, ldb) = if lb.strides()[r - 2] == 1
        && gemm_nt::worthwhile(d.m, d.k, d.n)
        && d.k >= 8
        && gemm_nt::available()
    {
        (true, lb.strides()[r - 1])
    } else if lb.strides()[r - 1] == 1 && gemm_nn::worthwhile(d.m, d.k, d.n) && gemm_nn::available()
    {
        (false, lb.strides()[r - 2])
    } else {
        return None;
    };
    let nb: usize = d.batch.iter().product();
    let mn = d.m * d.n;
    let mut out = alloc::<f32>(nb * mn);
    let base = out.as_mut_ptr() as usize;
    // Columns `cols` of batch item `i`.
    let part = |i: usize, cols: (usize, usize)| {
        let (oa, ob) = batch_offsets(&d, la, lb, i);
        let (a, c) = (
            a.as_ptr().wrapping_add(oa),
            (base as *mut f32).wrapping_add(i * mn + cols.0),
        );
        // SAFETY: the kernel's features were checked above; core checked both layouts to
        // stay inside `a` and `b`, so rows i < m of `a` (stride lda) hold k readable floats,
        // and `b` from column cols.0 holds k columns of cols.1 floats (nt: columns at stride
        // ldb, each k long; nn: k rows at stride ldb, each reaching column n); item i's m·n
        // outputs are its own and these columns this call's alone.
        unsafe {
            if nt {
                let b = b.as_ptr().add(ob + cols.0 * ldb);
                gemm_nt::product(d.m, d.k, cols.1, a, lda, b, ldb, c, d.n)
            } else {
                let b = b.as_ptr().add(ob + cols.0);
                gemm_nn::product(d.m, d.k, cols.1, a, lda, b, ldb, c, d.n)
            }
        }
    };
    let threads = rayon::current_num_threads();
    if nb == 1 && threads > 1 && mn * d.k >= SPLIT_MIN {
        // One product, split from the packed path's threshold: each thread takes a share of
        // the columns (whole vector tiles for the row-major kernel), so each reads only its
        // part of `B`.
        let align = if nt { 1 } else { 32 };
        let chunk = d.n.div_ceil(threads).next_multiple_of(align).min(d.n);
        let parts = d.n.div_ceil(chunk);
        (0..parts)
            .into_par_iter()
            .with_max_len(1)
            .for_each(|p| part(0, (p * chunk, chunk.min(d.n - p * chunk))));
    } else if nb > 1 && nb * mn * d.k >= SPLIT_MIN {
        (0..nb).into_par_iter().for_each(|i| part(i, (0, d.n)));
    } else {
        (0..nb).for_each(|i| part(i, (0, d.n)));
    }
    Some(out)
}
gemm_impl!(matmul_f64, matmul_f64_into, f64, gemm_crate::<f64>);

/// `c ← alpha·A·B + beta·c` (`beta = 0`: `c` is not read) in matrixmultiply's argument order,
/// through the `gemm` crate: packed kernels chosen at run time for the CPU (AVX-512, AVX2 +
/// FMA, or portable), on `threads` rayon threads that share the packed operands.
///
/// # Safety
/// `a` (`m × k`), `b` (`k × n`) and `c` (`m × n`) must address valid elements at the given
/// row and column strides, and no one else may access `c` during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_crate<T: 'static + Copy + Send + Sync + PartialEq + Default>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: *const T,
    rsa: isize,
    csa: isize,
    b: *const T,
    rsb: isize,
    csb: isize,
    beta: T,
    c: *mut T,
    rsc: isize,
    csc: isize,
    threads: usize,
) {
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // gemm's own names are the other way round: `dst ← alpha·dst + beta·lhs·rhs`.
    gemm::gemm(
        m,
        n,
        k,
        c,
        csc,
        rsc,
        beta != T::default(),
        a,
        csa,
        rsa,
        b,
        csb,
        rsb,
        beta,
        alpha,
        false,
        false,
        false,
        parallelism,
    )
}

/// [`gemm_crate`] on the calling thread alone, with exactly matrixmultiply's signature (the
/// attention and recurrent kernels' [`super::attention::GemmFn`]).
///
/// # Safety
/// As for [`gemm_crate`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_st<T: 'static + Copy + Send + Sync + PartialEq + Default>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: *const T,
    rsa: isize,
    csa: isize,
    b: *const T,
    rsb: isize,
    csb: isize,
    beta: T,
    c: *mut T,
    rsc: isize,
    csc: isize,
) {
    // SAFETY: the caller's contract is gemm_crate's.
    gemm_crate(
        m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc, 1,
    )
}

/// Integer product (rare: index arithmetic), a plain triple loop.
pub fn matmul_i64(a: &[i64], la: &Layout, b: &[i64], lb: &Layout) -> Vec<i64> {
    let d = dims(la, lb);
    let nb: usize = d.batch.iter().product();
    let r = la.rank();
    let (sa, sb) = (la.strides(), lb.strides());
    let mut out = vec![0i64; nb * d.m * d.n];
    for bi in 0..nb {
        let (oa, ob) = batch_offsets(&d, la, lb, bi);
        for i in 0..d.m {
            for j in 0..d.n {
                let mut acc = 0i64;
                for p in 0..d.k {
                    acc = acc.wrapping_add(
                        a[oa + i * sa[r - 2] + p * sa[r - 1]]
                            .wrapping_mul(b[ob + p * sb[r - 2] + j * sb[r - 1]]),
                    );
                }
                out[(bi * d.m + i) * d.n + j] = acc;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The small-row paths (gemm_nt for `x · Wᵀ`, gemm_nn for a row-major `B`; split over
    /// columns when large, batched with a broadcast weight) give the packed GEMM's results.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn small_row_products_match_the_packed_gemm() {
        if !super::super::gemm_nt::available() {
            return;
        }
        // (row-major B, batch, m, k, n). Row-major: m·k·n = 32·256·300 splits over the columns
        // (SPLIT_MIN), at a column that is not a multiple of the kernel's 32 with three threads;
        // 64 (row-major) and 128 (`Wᵀ`) rows are the most the kernels take.
        let cases = [
            (true, 1, 32, 256, 300),
            (true, 3, 5, 33, 17),
            (true, 1, 64, 16, 40),
            (true, 2, 64, 20, 37),
            (false, 1, 40, 300, 200),
            (false, 1, 7, 9, 5),
            (false, 3, 5, 33, 17),
            (false, 1, 128, 64, 16),
        ];
        for (row_major, batch, m, k, n) in cases {
            let a: Vec<f32> = (0..batch * m * k)
                .map(|i| ((i * 7) % 29) as f32 - 14.0)
                .collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 3) % 31) as f32 * 0.125).collect();
            let la = Layout::contiguous(&[batch, m, k]);
            // B broadcast over the batch (stride 0): row-major [k, n], or Wᵀ as a transposed
            // view of a row-major [n, k].
            let strides = if row_major {
                vec![0, n, 1]
            } else {
                vec![0, 1, k]
            };
            let lb = Layout::new(vec![batch, k, n], strides, 0);
            let got = small_rows_f32(&a, &la, &w, &lb).expect("a few-row product takes the kernel");
            let want = matmul_f32_packed(&a, &la, &w, &lb);
            assert_eq!(got.len(), want.len());
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "row-major {row_major} {batch}x{m}x{k}x{n} [{i}]: {g} vs {e}"
                );
            }
        }
    }
}
