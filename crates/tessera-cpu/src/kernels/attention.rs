//! Fused scaled dot-product attention, forward and backward, over `B` independent
//! (batch × head) problems: `q` `[B, L, E]`, `k` `[B, S, E]`, `v` `[B, S, Ev]`, an optional
//! additive bias read at `bias(b, i, j)`, and the causal rule `j <= i`.
//!
//! Each query row keeps one row of scores (`S` values) in a per-thread buffer: the `[L, S]`
//! score matrix is never stored, so memory stays `O(L·Ev + S)` per problem however long the
//! sequences are. The forward saves each row's log-sum-exp; the backward recomputes the
//! probabilities from it (FlashAttention-2's scheme) instead of keeping them.

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

/// `Σ a·b` with eight partial sums, so the compiler vectorises it (a single running sum would
/// fix the order of the additions and keep it scalar).
#[inline(always)]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] = acc[k] + x[k] * y[k];
        }
    }
    let mut s = T::zero();
    for (x, y) in ra.iter().zip(rb) {
        s = s + *x * *y;
    }
    acc.iter().fold(s, |t, &v| t + v)
}

/// `y += alpha·x`.
#[inline(always)]
fn axpy<T: Float>(y: &mut [T], alpha: T, x: &[T]) {
    for (a, b) in y.iter_mut().zip(x) {
        *a = *a + alpha * *b;
    }
}

/// The scores of query row `i` of problem `b` into `row[..n]`: `q_i·k_j·scale + bias`.
#[inline(always)]
fn scores<T: Float>(
    d: &Dims,
    q: &[T],
    k: &[T],
    bias: &(impl Fn(usize, usize, usize) -> T + Sync),
    b: usize,
    i: usize,
    row: &mut [T],
) {
    let qi = &q[(b * d.l + i) * d.e..][..d.e];
    let scale = T::from_f64(d.scale);
    for (j, r) in row.iter_mut().enumerate() {
        let kj = &k[(b * d.s + j) * d.e..][..d.e];
        *r = dot(qi, kj) * scale + bias(b, i, j);
    }
}

/// Forward: the output `[B, L, Ev]` and each row's log-sum-exp `[B, L]` (−∞ for a row with
/// no visible key, whose output is then NaN as in the composite).
pub fn forward<T: Float>(
    d: Dims,
    q: &[T],
    k: &[T],
    v: &[T],
    bias: impl Fn(usize, usize, usize) -> T + Sync,
) -> (Vec<T>, Vec<T>) {
    let mut out = vec![T::zero(); d.b * d.l * d.ev];
    let mut lse = vec![T::zero(); d.b * d.l];
    if d.ev == 0 || d.l == 0 {
        return (out, lse);
    }
    // One task per (problem, query row): enough parallelism even for a single head.
    out.par_chunks_mut(d.ev)
        .zip(lse.par_iter_mut())
        .enumerate()
        .for_each_init(
            || vec![T::zero(); d.s],
            |row, (r, (o, m_out))| {
                let (b, i) = (r / d.l, r % d.l);
                let n = d.keys(i);
                let row = &mut row[..n];
                scores(&d, q, k, &bias, b, i, row);
                let m = row
                    .iter()
                    .fold(T::from_f64(f64::NEG_INFINITY), |a, &x| if x > a { x } else { a });
                let mut l = T::zero();
                for x in row.iter_mut() {
                    *x = (*x - m).exp();
                    l = l + *x;
                }
                for (j, &p) in row.iter().enumerate() {
                    if p != T::zero() {
                        axpy(o, p, &v[(b * d.s + j) * d.ev..][..d.ev]);
                    }
                }
                let inv = T::one() / l;
                o.iter_mut().for_each(|x| *x = *x * inv);
                *m_out = m + l.ln();
            },
        );
    (out, lse)
}

/// Backward: `dq`, `dk`, `dv` from the forward's output and log-sum-exp and the output's
/// gradient `dout`. Problems run in parallel; within one, rows run in order, since every row
/// adds to the same `dk` and `dv`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Float>(
    d: Dims,
    q: &[T],
    k: &[T],
    v: &[T],
    bias: impl Fn(usize, usize, usize) -> T + Sync,
    out: &[T],
    lse: &[T],
    dout: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dq = vec![T::zero(); d.b * d.l * d.e];
    let mut dk = vec![T::zero(); d.b * d.s * d.e];
    let mut dv = vec![T::zero(); d.b * d.s * d.ev];
    if d.b == 0 || d.l == 0 || d.s == 0 {
        return (dq, dk, dv);
    }
    let scale = T::from_f64(d.scale);
    dq.par_chunks_mut((d.l * d.e).max(1))
        .zip(dk.par_chunks_mut((d.s * d.e).max(1)))
        .zip(dv.par_chunks_mut((d.s * d.ev).max(1)))
        .enumerate()
        .for_each(|(b, ((dq_b, dk_b), dv_b))| {
            let mut row = vec![T::zero(); d.s];
            for i in 0..d.l {
                let n = d.keys(i);
                let m = lse[b * d.l + i];
                if !(m.to_f64() > f64::NEG_INFINITY) {
                    continue; // no visible key: nothing flows back
                }
                let row = &mut row[..n];
                scores(&d, q, k, &bias, b, i, row);
                let go = &dout[(b * d.l + i) * d.ev..][..d.ev];
                let oi = &out[(b * d.l + i) * d.ev..][..d.ev];
                let di = dot(go, oi);
                let qi = &q[(b * d.l + i) * d.e..][..d.e];
                let dqi = &mut dq_b[i * d.e..][..d.e];
                for (j, s) in row.iter().enumerate() {
                    let p = (*s - m).exp();
                    if p == T::zero() {
                        continue;
                    }
                    let vj = &v[(b * d.s + j) * d.ev..][..d.ev];
                    axpy(&mut dv_b[j * d.ev..][..d.ev], p, go);
                    let ds = p * (dot(go, vj) - di) * scale;
                    axpy(dqi, ds, &k[(b * d.s + j) * d.e..][..d.e]);
                    axpy(&mut dk_b[j * d.e..][..d.e], ds, qi);
                }
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
            let d = Dims {
                b: 3,
                l: 5,
                s: 7,
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
            let (q, k, v) = (f(d.b * d.l * d.e, 1), f(d.b * d.s * d.e, 2), f(d.b * d.s * d.ev, 3));
            let (out, _) = forward(d, &q, &k, &v, |_, _, _| 0.0);
            for (a, b) in out.iter().zip(reference(d, &q, &k, &v)) {
                assert!((a - b).abs() < 1e-12, "{a} vs {b}");
            }
        }
    }
}
