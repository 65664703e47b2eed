//! Reductions over axes, and a fused row-wise softmax.

use super::{unravel, Float, Num, CHUNK, PAR_MIN};
use crate::buffer::alloc;
use rayon::prelude::*;
use tessera_core::{coalesce, Layout, ReduceOp};

/// The layout split into kept dims and reduced dims, each coalesced.
struct Split {
    kept: Vec<usize>,
    kept_strides: Vec<usize>,
    red: Vec<usize>,
    red_strides: Vec<usize>,
    offset: usize,
    n_out: usize,
    group: usize,
}

fn split(l: &Layout, axes: &[usize]) -> Split {
    let (mut ks, mut kst, mut rs, mut rst) = (vec![], vec![], vec![], vec![]);
    for i in 0..l.rank() {
        if axes.contains(&i) {
            rs.push(l.shape()[i]);
            rst.push(l.strides()[i]);
        } else {
            ks.push(l.shape()[i]);
            kst.push(l.strides()[i]);
        }
    }
    let n_out = ks.iter().product();
    let group = rs.iter().product();
    let (ks, kst) = coalesce(&ks, &[&kst]);
    let (rs, rst) = coalesce(&rs, &[&rst]);
    Split {
        kept: ks,
        kept_strides: kst.into_iter().next().unwrap_or_default(),
        red: rs,
        red_strides: rst.into_iter().next().unwrap_or_default(),
        offset: l.offset(),
        n_out,
        group,
    }
}

#[inline]
fn sum_contig<T: Num>(s: &[T]) -> T {
    // Eight independent partial sums: vectorisable, and more accurate than one running sum.
    let mut acc = [T::zero(); 8];
    let chunks = s.chunks_exact(8);
    let rem = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i] + c[i];
        }
    }
    let mut t = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for &v in rem {
        t = t + v;
    }
    t
}

#[inline(always)]
fn better<T: Num>(op: ReduceOp, v: T, m: T) -> bool {
    // NaN propagates, as in PyTorch.
    match op {
        ReduceOp::Max | ReduceOp::ArgMax => v > m || (v.is_nan() && !m.is_nan()),
        _ => v < m || (v.is_nan() && !m.is_nan()),
    }
}

/// Folds `count` contiguous rows of `x` (row `r` starting at `start(r)`, each `o.len()` long)
/// into `o` with `op` (sum, max or min), whole rows at a time so the loop vectorises.
fn accumulate_rows<T: Num>(
    op: ReduceOp,
    x: &[T],
    o: &mut [T],
    count: usize,
    start: impl Fn(usize) -> usize,
) {
    for r in 0..count {
        let b = start(r);
        let row = &x[b..b + o.len()];
        if r == 0 {
            o.copy_from_slice(row);
            continue;
        }
        match op {
            ReduceOp::Sum => o.iter_mut().zip(row).for_each(|(a, &v)| *a = *a + v),
            _ => o.iter_mut().zip(row).for_each(|(a, &v)| {
                if better(op, v, *a) {
                    *a = v
                }
            }),
        }
    }
}

/// Sum, max or min over `axes`; one value per kept position.
pub fn reduce<T: Num>(op: ReduceOp, x: &[T], l: &Layout, axes: &[usize]) -> Vec<T> {
    let s = split(l, axes);
    let mut out = alloc::<T>(s.n_out);
    if s.n_out == 0 {
        // Nothing kept (a kept dim of size 0): the strides may point past an empty buffer.
        return out;
    }
    if s.group == 0 {
        out.fill(T::zero());
        return out;
    }
    let contiguous_groups = s.red.is_empty() || (s.red.len() == 1 && s.red_strides[0] == 1);
    let big = s.n_out * s.group >= PAR_MIN;
    if contiguous_groups {
        let one = |o: usize| -> T {
            let base = s.offset + unravel(o, &s.kept, &s.kept_strides);
            let g = &x[base..base + s.group];
            match op {
                ReduceOp::Sum => sum_contig(g),
                _ => g[1..]
                    .iter()
                    .fold(g[0], |m, &v| if better(op, v, m) { v } else { m }),
            }
        };
        if big {
            out.par_iter_mut()
                .enumerate()
                .with_min_len(8)
                .for_each(|(o, v)| *v = one(o));
        } else {
            out.iter_mut().enumerate().for_each(|(o, v)| *v = one(o));
        }
        return out;
    }
    if s.kept.len() == 1 && s.kept_strides[0] == 1 {
        // Kept dims contiguous (e.g. summing a [batch, features] gradient over the batch):
        // accumulate whole rows, which vectorises.
        let rows = |start: usize, o: &mut [T]| {
            let base = s.offset + start;
            accumulate_rows(op, x, o, s.group, |r| {
                base + unravel(r, &s.red, &s.red_strides)
            });
        };
        if big && s.n_out >= 512 {
            let chunk = (CHUNK / s.group).max(256).min(s.n_out);
            out.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, o)| rows(i * chunk, o));
        } else {
            rows(0, &mut out);
        }
        return out;
    }
    let k = s.kept.len();
    if k >= 2 && s.kept_strides[k - 1] == 1 {
        // The innermost kept dim is contiguous (a middle axis reduced, e.g. the taps of
        // [N·C, taps, positions] in pooling): for each outer position, accumulate whole
        // contiguous rows of that dim, which vectorises.
        let len = s.kept[k - 1];
        let (outer, outer_strides) = (&s.kept[..k - 1], &s.kept_strides[..k - 1]);
        let rows = |(i, o): (usize, &mut [T])| {
            let base = s.offset + unravel(i, outer, outer_strides);
            accumulate_rows(op, x, o, s.group, |r| {
                base + unravel(r, &s.red, &s.red_strides)
            });
        };
        if big {
            out.par_chunks_mut(len).enumerate().for_each(rows);
        } else {
            out.chunks_mut(len).enumerate().for_each(rows);
        }
        return out;
    }
    // General case: walk the reduced elements row by row (the last reduced dim inner).
    let r = s.red.len();
    let (inner, istr) = (s.red[r - 1], s.red_strides[r - 1]);
    let rows_n = s.group / inner;
    let one = |o: usize| -> T {
        let base = s.offset + unravel(o, &s.kept, &s.kept_strides);
        let mut acc: Option<T> = None;
        for row in 0..rows_n {
            let rb = base + unravel(row, &s.red[..r - 1], &s.red_strides[..r - 1]);
            let part = match (op, istr) {
                (ReduceOp::Sum, 1) => sum_contig(&x[rb..rb + inner]),
                (ReduceOp::Sum, _) => (1..inner).fold(x[rb], |a, k| a + x[rb + k * istr]),
                _ => (1..inner).fold(x[rb], |m, k| {
                    let v = x[rb + k * istr];
                    if better(op, v, m) {
                        v
                    } else {
                        m
                    }
                }),
            };
            acc = Some(match acc {
                None => part,
                Some(a) => match op {
                    ReduceOp::Sum => a + part,
                    _ => {
                        if better(op, part, a) {
                            part
                        } else {
                            a
                        }
                    }
                },
            });
        }
        acc.unwrap_or_else(T::zero)
    };
    if big {
        out.par_iter_mut()
            .enumerate()
            .for_each(|(o, v)| *v = one(o));
    } else {
        out.iter_mut().enumerate().for_each(|(o, v)| *v = one(o));
    }
    out
}

/// Index of the first maximum (or minimum) along the single axis `axis`.
pub fn arg_reduce<T: Num>(op: ReduceOp, x: &[T], l: &Layout, axis: usize) -> Vec<i64> {
    let (n, stride) = (l.shape()[axis], l.strides()[axis]);
    let s = split(l, &[axis]);
    let mut out = alloc::<i64>(s.n_out);
    if s.n_out == 0 {
        return out;
    }
    let r = s.kept.len();
    let (inner, istr) = if r == 0 {
        (1, 0)
    } else {
        (s.kept[r - 1], s.kept_strides[r - 1])
    };
    let (outer, outer_strides) = if r == 0 {
        (&[][..], &[][..])
    } else {
        (&s.kept[..r - 1], &s.kept_strides[..r - 1])
    };
    // A run of neighbouring outputs at a time, candidates in the outer loop: the inner loop
    // runs over contiguous memory when the kept dims are.
    super::for_segments(&mut out, inner, |o, row, col| {
        let base = s.offset + unravel(row, outer, outer_strides) + col * istr;
        let mut best: Vec<T> = (0..o.len()).map(|j| x[base + j * istr]).collect();
        o.fill(0);
        for k in 1..n {
            let b = base + k * stride;
            for (j, (at, m)) in o.iter_mut().zip(best.iter_mut()).enumerate() {
                let v = x[b + j * istr];
                if better(op, v, *m) {
                    *m = v;
                    *at = k as i64;
                }
            }
        }
    });
    out
}

/// Cross-entropy of the contiguous rows of `x` (`c` classes each) against `target`, as
/// `FusedKernels::cross_entropy` defines it: the losses, `lp = log_softmax(x)` and the weights (0
/// where ignored, else 1). `Err(t)` for the first target outside `[0, c)` not ignored.
pub fn cross_entropy<T: Float>(
    x: &[T],
    target: &[i64],
    c: usize,
    label_smoothing: f64,
    ignore_index: i64,
) -> Result<[Vec<T>; 3], i64> {
    if let Some(&t) = target
        .iter()
        .find(|&&t| t != ignore_index && (t < 0 || t as usize >= c))
    {
        return Err(t);
    }
    let lp = softmax_rows(x, c, true);
    let (keep, spread) = (
        T::from_f64(1.0 - label_smoothing),
        T::from_f64(label_smoothing / c as f64),
    );
    let (mut loss, mut w) = (alloc::<T>(target.len()), alloc::<T>(target.len()));
    for ((&t, row), (l, w)) in target
        .iter()
        .zip(lp.chunks(c))
        .zip(loss.iter_mut().zip(w.iter_mut()))
    {
        (*l, *w) = if t == ignore_index {
            (T::zero(), T::zero())
        } else if label_smoothing > 0.0 {
            (
                T::zero() - keep * row[t as usize] - spread * sum_contig(row),
                T::one(),
            )
        } else {
            (T::zero() - row[t as usize], T::one())
        };
    }
    Ok([loss, lp, w])
}

/// The backward of [`cross_entropy`]: `dx[j][k] = g_j·w_j·(exp(lp[j][k]) - ε/c - (1 - ε)·[k =
/// t_j])`, one pass over `lp`.
pub fn cross_entropy_backward<T: Float>(
    lp: &[T],
    target: &[i64],
    w: &[T],
    g: &[T],
    c: usize,
    label_smoothing: f64,
) -> Vec<T> {
    let mut dx = alloc::<T>(lp.len());
    let (keep, spread) = (
        T::from_f64(1.0 - label_smoothing),
        T::from_f64(label_smoothing / c as f64),
    );
    let row = |j: usize, o: &mut [T]| {
        let s = g[j] * w[j];
        o.copy_from_slice(&lp[j * c..(j + 1) * c]);
        T::exp_in_place(o);
        for o in o.iter_mut() {
            *o = s * (*o - spread);
        }
        // An ignored row's target may lie outside [0, c); its weight is 0 anyway.
        if let Some(o) = usize::try_from(target[j]).ok().and_then(|t| o.get_mut(t)) {
            *o = *o - s * keep;
        }
    };
    if dx.len() >= PAR_MIN {
        dx.par_chunks_mut(c)
            .enumerate()
            .for_each(|(j, o)| row(j, o));
    } else {
        dx.chunks_mut(c).enumerate().for_each(|(j, o)| row(j, o));
    }
    dx
}

/// Softmax or log-softmax of each contiguous row of length `n` (the last dim).
pub fn softmax_rows<T: Float>(x: &[T], n: usize, log: bool) -> Vec<T> {
    let mut out = alloc::<T>(x.len());
    let row = |xr: &[T], o: &mut [T]| {
        let m = xr[1..]
            .iter()
            .fold(xr[0], |m, &v| if v > m || v.is_nan() { v } else { m });
        for (o, &v) in o.iter_mut().zip(xr) {
            *o = v - m;
        }
        T::exp_in_place(o);
        let s = sum_contig(o);
        if log {
            let ls = s.ln();
            for (o, &v) in o.iter_mut().zip(xr) {
                *o = v - m - ls;
            }
        } else {
            let r = T::one() / s;
            o.iter_mut().for_each(|o| *o = *o * r);
        }
    };
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .for_each(|(o, xr)| row(xr, o));
    } else {
        out.chunks_mut(n)
            .zip(x.chunks(n))
            .for_each(|(o, xr)| row(xr, o));
    }
    out
}
