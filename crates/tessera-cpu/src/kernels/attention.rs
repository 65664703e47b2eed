//! Fused scaled dot-product attention, forward and backward, over `B` independent
//! (batch × head) problems: `q` `[B, L, E]`, `k` `[B, S, E]`, `v` `[B, S, Ev]`, an optional
//! additive bias read at `bias(b, i, j)`, and the causal rule `j <= i`.
//!
//! Query rows go in tiles of 64: each tile's scores against the keys it may see are one GEMM
//! into a per-thread `[64, S]` block, the softmax runs on that block, and the output is a
//! second GEMM. The `[L, S]` score matrix is never stored, so memory is `O(64·S)` per thread
//! however many queries there are. The forward saves each row's log-sum-exp; the backward
//! recomputes the probabilities from it (FlashAttention-2's scheme), with five GEMMs per tile.

use super::Float;
use rayon::prelude::*;

/// Shapes and options of one call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub b: usize,
    pub l: usize,
    pub s: usize,
    pub e: usize,
    pub ev: usize,
    pub causal: bool,
    pub scale: f64,
}

impl Dims {
    /// Keys row `i` may see: all, or `0..=i` when causal (at most `s`).
    fn keys(&self, i: usize) -> usize {
        if self.causal {
            (i + 1).min(self.s)
        } else {
            self.s
        }
    }
}

/// Query rows per tile: each task keeps one `[BR, S]` block of scores, so memory per thread is
/// `O(BR·S)` however many queries there are.
const BR: usize = 64;

/// A strided GEMM (matrixmultiply's signature, kept by [`super::matmul::gemm_st`]): `m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc,
/// csc`.
pub type GemmFn<T> = unsafe fn(
    usize,
    usize,
    usize,
    T,
    *const T,
    isize,
    isize,
    *const T,
    isize,
    isize,
    T,
    *mut T,
    isize,
    isize,
);

/// The element types with a GEMM (the `gemm` crate's, packed and vectorised).
pub trait AttnFloat: Float {
    /// Single-threaded `gemm` for this type.
    const GEMM: GemmFn<Self>;
}
impl AttnFloat for f32 {
    const GEMM: GemmFn<f32> = super::matmul::gemm_st::<f32>;
}
impl AttnFloat for f64 {
    const GEMM: GemmFn<f64> = super::matmul::gemm_st::<f64>;
}

/// `len` zeros from the buffer pool: fresh multi-megabyte vectors each step would cost page
/// faults and TLB shootdowns on every call.
fn zeroed<T: AttnFloat>(len: usize) -> Vec<T> {
    let mut v = crate::buffer::alloc::<T>(len);
    v.fill(T::zero());
    v
}

/// A matrix operand: its elements and (row, column) strides.
type Mat<'a, T> = (&'a [T], usize, usize);

/// The highest element an `r × c` operand with strides `(rs, cs)` reads, plus one.
fn extent(r: usize, c: usize, rs: usize, cs: usize) -> usize {
    if r == 0 || c == 0 {
        0
    } else {
        (r - 1) * rs + (c - 1) * cs + 1
    }
}

/// `C = A·B + beta·C` for `A` `m×k`, `B` `k×n`, `C` `m×n` row-major with row stride `ldc`.
fn gemm<T: AttnFloat>(
    (m, k, n): (usize, usize, usize),
    (a, rsa, csa): Mat<'_, T>,
    (b, rsb, csb): Mat<'_, T>,
    beta: T,
    c: &mut [T],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        extent(m, k, rsa, csa) <= a.len()
            && extent(k, n, rsb, csb) <= b.len()
            && extent(m, n, ldc, 1) <= c.len(),
        "attention gemm operands out of bounds"
    );
    // SAFETY: the assert above keeps every element the product reads (A, B) or writes (C)
    // inside its slice; C is borrowed mutably, so it overlaps neither A nor B.
    unsafe {
        T::GEMM(
            m,
            k,
            n,
            T::one(),
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        )
    }
}

/// An additive bias read at `(problem, query, key)`.
pub type Bias<'a, T> = dyn Fn(usize, usize, usize) -> T + Sync + 'a;

/// The scores of query rows `i0..i0+rows` of problem `b` against keys `0..n` into `sc`
/// (`rows × n`): `q·kᵀ·scale + bias`, −∞ past the causal diagonal.
#[allow(clippy::too_many_arguments)]
fn score_tile<T: AttnFloat>(
    d: &Dims,
    q: &[T],
    k: &[T],
    bias: Option<&Bias<'_, T>>,
    b: usize,
    i0: usize,
    rows: usize,
    n: usize,
    sc: &mut [T],
) {
    let qt = &q[(b * d.l + i0) * d.e..][..rows * d.e];
    let kb = &k[b * d.s * d.e..][..n * d.e];
    gemm((rows, d.e, n), (qt, d.e, 1), (kb, 1, d.e), T::zero(), sc, n);
    let scale = T::from_f64(d.scale);
    for (r, row) in sc.chunks_mut(n).take(rows).enumerate() {
        let i = i0 + r;
        let vis = d.keys(i).min(n);
        let (seen, hidden) = row.split_at_mut(vis);
        match bias {
            Some(f) => seen
                .iter_mut()
                .enumerate()
                .for_each(|(j, x)| *x = *x * scale + f(b, i, j)),
            None => seen.iter_mut().for_each(|x| *x = *x * scale),
        }
        hidden.fill(T::from_f64(f64::NEG_INFINITY));
    }
}

/// `row[..vis] = exp(row[..vis] - m)` (vectorised for f32), zeros after: the unnormalised
/// probabilities of one query row.
fn exp_shifted<T: AttnFloat>(row: &mut [T], vis: usize, m: T) {
    let (seen, hidden) = row.split_at_mut(vis.min(row.len()));
    seen.iter_mut().for_each(|x| *x = *x - m);
    T::exp_in_place(seen);
    hidden.fill(T::zero());
}

/// Forward: the output `[B, L, Ev]` and each row's log-sum-exp `[B, L]` (−∞ for a row with
/// no visible key, whose output is then NaN as in the composite).
pub fn forward<T: AttnFloat>(
    d: Dims,
    q: &[T],
    k: &[T],
    v: &[T],
    bias: Option<&Bias<'_, T>>,
) -> (Vec<T>, Vec<T>) {
    let mut out = zeroed::<T>(d.b * d.l * d.ev);
    let mut lse = zeroed::<T>(d.b * d.l);
    if d.ev == 0 || d.l == 0 {
        return (out, lse);
    }
    let tiles = d.l.div_ceil(BR);
    // One task per (problem, tile of query rows).
    let mut tasks: Vec<(usize, usize, &mut [T], &mut [T])> = Vec::with_capacity(d.b * tiles);
    for (b, (ob, lb)) in out
        .chunks_mut(d.l * d.ev)
        .zip(lse.chunks_mut(d.l))
        .enumerate()
    {
        for (t, (ot, lt)) in ob.chunks_mut(BR * d.ev).zip(lb.chunks_mut(BR)).enumerate() {
            tasks.push((b, t * BR, ot, lt));
        }
    }
    tasks
        .into_par_iter()
        .for_each_init(Vec::new, |sc: &mut Vec<T>, (b, i0, o, m_out)| {
            let rows = m_out.len();
            let n = d.keys(i0 + rows - 1);
            sc.resize(rows * n, T::zero());
            score_tile(&d, q, k, bias, b, i0, rows, n, sc);
            let mut inv = vec![T::zero(); rows];
            for (r, row) in sc.chunks_mut(n.max(1)).take(rows).enumerate() {
                let vis = d.keys(i0 + r);
                let m = row[..vis.min(row.len())].iter().fold(
                    T::from_f64(f64::NEG_INFINITY),
                    |a, &x| if x > a { x } else { a },
                );
                exp_shifted(row, vis, m);
                let l = row.iter().fold(T::zero(), |a, &x| a + x);
                inv[r] = T::one() / l;
                m_out[r] = m + l.ln();
            }
            let vb = &v[b * d.s * d.ev..][..n * d.ev];
            gemm(
                (rows, n, d.ev),
                (sc, n, 1),
                (vb, d.ev, 1),
                T::zero(),
                o,
                d.ev,
            );
            for (r, orow) in o.chunks_mut(d.ev).enumerate() {
                orow.iter_mut().for_each(|x| *x = *x * inv[r]);
            }
        });
    (out, lse)
}

/// Backward: `dq`, `dk`, `dv` from the forward's output and log-sum-exp and the output's
/// gradient `dout`. Problems run in parallel; within one, query tiles run in order, since
/// every tile adds to the same `dk` and `dv`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: AttnFloat>(
    d: Dims,
    q: &[T],
    k: &[T],
    v: &[T],
    bias: Option<&Bias<'_, T>>,
    out: &[T],
    lse: &[T],
    dout: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dq = zeroed::<T>(d.b * d.l * d.e);
    let mut dk = zeroed::<T>(d.b * d.s * d.e);
    let mut dv = zeroed::<T>(d.b * d.s * d.ev);
    if d.b == 0 || d.l == 0 || d.s == 0 || d.e == 0 {
        return (dq, dk, dv);
    }
    let scale = T::from_f64(d.scale);
    dq.par_chunks_mut(d.l * d.e)
        .zip(dk.par_chunks_mut(d.s * d.e))
        .zip(dv.par_chunks_mut((d.s * d.ev).max(1)))
        .enumerate()
        .for_each(|(b, ((dq_b, dk_b), dv_b))| {
            let (mut p, mut dp) = (Vec::new(), Vec::new());
            for i0 in (0..d.l).step_by(BR) {
                let rows = BR.min(d.l - i0);
                let n = d.keys(i0 + rows - 1);
                if n == 0 {
                    continue;
                }
                p.resize(rows * n, T::zero());
                dp.resize(rows * n, T::zero());
                score_tile(&d, q, k, bias, b, i0, rows, n, &mut p);
                let go = &dout[(b * d.l + i0) * d.ev..][..rows * d.ev];
                let oi = &out[(b * d.l + i0) * d.ev..][..rows * d.ev];
                // P = exp(s - lse): exactly the forward's probabilities (0 where masked).
                for (r, row) in p.chunks_mut(n).enumerate() {
                    let m = lse[b * d.l + i0 + r];
                    let live = m.to_f64() > f64::NEG_INFINITY;
                    if live {
                        exp_shifted(row, d.keys(i0 + r), m);
                    } else {
                        row.fill(T::zero());
                    }
                }
                let vb = &v[b * d.s * d.ev..][..n * d.ev];
                // dV += Pᵀ·dO, dP = dO·Vᵀ.
                gemm(
                    (n, rows, d.ev),
                    (&p, 1, n),
                    (go, d.ev, 1),
                    T::one(),
                    dv_b,
                    d.ev,
                );
                gemm(
                    (rows, d.ev, n),
                    (go, d.ev, 1),
                    (vb, 1, d.ev),
                    T::zero(),
                    &mut dp,
                    n,
                );
                // dS = P ⊙ (dP − rowsum(dO ⊙ O))·scale, into dp.
                for r in 0..rows {
                    let g = &go[r * d.ev..][..d.ev];
                    let o = &oi[r * d.ev..][..d.ev];
                    let di = g.iter().zip(o).fold(T::zero(), |a, (x, y)| a + *x * *y);
                    for (x, pj) in dp[r * n..][..n].iter_mut().zip(&p[r * n..][..n]) {
                        *x = *pj * (*x - di) * scale;
                    }
                }
                let qt = &q[(b * d.l + i0) * d.e..][..rows * d.e];
                let kb = &k[b * d.s * d.e..][..n * d.e];
                // dQ = dS·K, dK += dSᵀ·Q.
                gemm(
                    (rows, n, d.e),
                    (&dp, n, 1),
                    (kb, d.e, 1),
                    T::zero(),
                    &mut dq_b[i0 * d.e..],
                    d.e,
                );
                gemm(
                    (n, rows, d.e),
                    (&dp, 1, n),
                    (qt, d.e, 1),
                    T::one(),
                    dk_b,
                    d.e,
                );
            }
        });
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook formula, one problem at a time.
    fn reference(d: Dims, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; d.b * d.l * d.ev];
        for b in 0..d.b {
            for i in 0..d.l {
                let n = d.keys(i);
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..d.e)
                            .map(|t| q[(b * d.l + i) * d.e + t] * k[(b * d.s + j) * d.e + t])
                            .sum::<f64>()
                            * d.scale
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for j in 0..n {
                    let p = (s[j] - m).exp() / z;
                    for t in 0..d.ev {
                        out[(b * d.l + i) * d.ev + t] += p * v[(b * d.s + j) * d.ev + t];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn forward_matches_the_formula_with_and_without_the_causal_rule() {
        for causal in [false, true] {
            // Two query tiles, the second partial; more keys than queries.
            let d = Dims {
                b: 3,
                l: 70,
                s: 75,
                e: 11,
                ev: 4,
                causal,
                scale: 0.3,
            };
            let f = |n: usize, s: u64| -> Vec<f64> {
                (0..n)
                    .map(|i| tessera_core::random::normal(s, i as u64))
                    .collect()
            };
            let (q, k, v) = (
                f(d.b * d.l * d.e, 1),
                f(d.b * d.s * d.e, 2),
                f(d.b * d.s * d.ev, 3),
            );
            let (out, _) = forward(d, &q, &k, &v, None);
            for (a, b) in out.iter().zip(reference(d, &q, &k, &v)) {
                assert!((a - b).abs() < 1e-12, "{a} vs {b}");
            }
        }
    }
}
