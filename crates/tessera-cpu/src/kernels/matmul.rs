//! Batched GEMM through `matrixmultiply`, which takes row and column strides, so transposed
//! and broadcast operands need no copy.

use super::unravel;
use crate::buffer::alloc;
use rayon::prelude::*;
use tessera_core::Layout;

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
    ($name:ident, $t:ty, $gemm:path) => {
        /// Batched matrix product into a new contiguous `[..., m, n]` vector.
        pub fn $name(a: &[$t], la: &Layout, b: &[$t], lb: &Layout) -> Vec<$t> {
            let d = dims(la, lb);
            let nb: usize = d.batch.iter().product();
            let mn = d.m * d.n;
            let mut out = alloc::<$t>(nb * mn);
            if mn == 0 {
                return out;
            }
            if d.k == 0 {
                out.fill(0.0);
                return out;
            }
            let r = la.rank();
            let (rsa, csa) = (la.strides()[r - 2] as isize, la.strides()[r - 1] as isize);
            let (rsb, csb) = (lb.strides()[r - 2] as isize, lb.strides()[r - 1] as isize);
            let one = |i: usize, c: &mut [$t]| {
                let (oa, ob) = batch_offsets(&d, la, lb, i);
                // SAFETY: the layouts were checked by core to stay inside `a` and `b`
                // (offset + Σ (dim-1)·stride < len), `c` holds exactly m·n elements written
                // row-major (strides n, 1), and beta = 0 means `c` is only written.
                unsafe {
                    $gemm(
                        d.m,
                        d.k,
                        d.n,
                        1.0,
                        a.as_ptr().add(oa),
                        rsa,
                        csa,
                        b.as_ptr().add(ob),
                        rsb,
                        csb,
                        0.0,
                        c.as_mut_ptr(),
                        d.n as isize,
                        1,
                    );
                }
            };
            // Small matrices: one GEMM per rayon task. Large ones: matrixmultiply's own threads.
            if nb > 1 && d.m * d.n * d.k < (1 << 18) {
                out.par_chunks_mut(mn)
                    .enumerate()
                    .for_each(|(i, c)| one(i, c));
            } else {
                out.chunks_mut(mn).enumerate().for_each(|(i, c)| one(i, c));
            }
            out
        }
    };
}
gemm_impl!(matmul_f32, f32, matrixmultiply::sgemm);
gemm_impl!(matmul_f64, f64, matrixmultiply::dgemm);

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
