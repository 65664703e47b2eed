//! im2col and col2im over contiguous `[N, C, H, W]` data, parallel over (example, channel)
//! planes: no index tensors, no bounds-checked gathers.

use super::{Num, PAR_MIN};
use crate::buffer::alloc;
use rayon::prelude::*;
use tessera_core::Window;

/// The output columns `ow` whose tap `kw` lands inside a row of width `n`: `lo..hi`, with the
/// input column of `lo` (later ones step by the stride).
#[inline]
fn inside(w: &Window, kw: usize, n: usize) -> (usize, usize, usize) {
    let off = (kw * w.d[1]) as isize - w.p[1] as isize; // input column of ow = 0
    let s = w.s[1] as isize;
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    let hi = if n as isize - 1 - off < 0 {
        0
    } else {
        (n as isize - 1 - off) / s + 1
    };
    let (lo, hi) = (
        lo.min(w.out[1] as isize) as usize,
        hi.clamp(0, w.out[1] as isize) as usize,
    );
    let first = (off + lo as isize * s).max(0) as usize;
    (lo, hi.max(lo), first)
}

/// `[N, C, taps, positions]` columns of `x` (contiguous `[N, C, H, W]`), `fill` outside.
pub fn unfold<T: Num>(x: &[T], planes: usize, hw: [usize; 2], w: &Window, fill: T) -> Vec<T> {
    let (h, wd) = (hw[0], hw[1]);
    let (taps, pos) = (w.taps(), w.positions());
    let mut out = alloc::<T>(planes * taps * pos);
    let plane = |(p, o): (usize, &mut [T])| {
        let src = &x[p * h * wd..(p + 1) * h * wd];
        for kh in 0..w.k[0] {
            for kw in 0..w.k[1] {
                let dst = &mut o[(kh * w.k[1] + kw) * pos..(kh * w.k[1] + kw + 1) * pos];
                for oh in 0..w.out[0] {
                    let row = &mut dst[oh * w.out[1]..(oh + 1) * w.out[1]];
                    match w.source(0, oh, kh, h) {
                        None => row.fill(fill),
                        Some(ih) => {
                            let line = &src[ih * wd..(ih + 1) * wd];
                            let (lo, hi, first) = inside(w, kw, wd);
                            row[..lo].fill(fill);
                            row[hi..].fill(fill);
                            if w.s[1] == 1 {
                                row[lo..hi].copy_from_slice(&line[first..first + hi - lo]);
                            } else {
                                for (j, v) in row[lo..hi].iter_mut().enumerate() {
                                    *v = line[first + j * w.s[1]];
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(taps * pos).enumerate().for_each(plane);
    } else {
        out.chunks_mut(taps * pos).enumerate().for_each(plane);
    }
    out
}

/// The adjoint of [`unfold`]: columns summed into a new contiguous `[N, C, H, W]`.
pub fn fold<T: Num>(cols: &[T], planes: usize, hw: [usize; 2], w: &Window) -> Vec<T> {
    let (h, wd) = (hw[0], hw[1]);
    let (taps, pos) = (w.taps(), w.positions());
    let mut out = alloc::<T>(planes * h * wd);
    let plane = |(p, o): (usize, &mut [T])| {
        o.fill(T::zero());
        let src = &cols[p * taps * pos..(p + 1) * taps * pos];
        for kh in 0..w.k[0] {
            for kw in 0..w.k[1] {
                let tap = &src[(kh * w.k[1] + kw) * pos..(kh * w.k[1] + kw + 1) * pos];
                for oh in 0..w.out[0] {
                    let Some(ih) = w.source(0, oh, kh, h) else {
                        continue;
                    };
                    let line = &mut o[ih * wd..(ih + 1) * wd];
                    let (lo, hi, first) = inside(w, kw, wd);
                    let vals = &tap[oh * w.out[1] + lo..oh * w.out[1] + hi];
                    if w.s[1] == 1 {
                        for (d, &v) in line[first..first + vals.len()].iter_mut().zip(vals) {
                            *d = *d + v;
                        }
                    } else {
                        for (j, &v) in vals.iter().enumerate() {
                            let iw = first + j * w.s[1];
                            line[iw] = line[iw] + v;
                        }
                    }
                }
            }
        }
    };
    if cols.len() >= PAR_MIN {
        out.par_chunks_mut(h * wd).enumerate().for_each(plane);
    } else {
        out.chunks_mut(h * wd).enumerate().for_each(plane);
    }
    out
}

/// Max pooling of contiguous `[planes, H, W]`: the maxima `[planes, positions]` and, when
/// `index`, the plane index `h·W + w` of each. A NaN replaces the running maximum, as in
/// PyTorch's kernel, so NaN propagates and its gradient goes to it.
pub fn max_pool<T: Num + PartialOrd>(
    x: &[T],
    planes: usize,
    hw: [usize; 2],
    w: &Window,
    index: bool,
) -> (Vec<T>, Option<Vec<i64>>) {
    let (h, wd) = (hw[0], hw[1]);
    let l = w.positions();
    let mut vals = alloc::<T>(planes * l);
    let mut idx = index.then(|| alloc::<i64>(planes * l));
    // Every tap of every window inside the plane (no padding, and no ceil-mode window past the
    // edge): no bounds checks, the taps of a window are fixed offsets from its corner.
    let inside =
        (0..2).all(|i| w.p[i] == 0 && (w.out[i] - 1) * w.s[i] + (w.k[i] - 1) * w.d[i] < hw[i]);
    let plane = |p: usize, vo: &mut [T], mut io: Option<&mut [i64]>| {
        let src = &x[p * h * wd..(p + 1) * h * wd];
        let ow_n = w.out[1];
        let mut tmp = vec![T::zero(); if inside && w.s[1] > 1 { ow_n } else { 0 }];
        for oh in 0..w.out[0] {
            let best = &mut vo[oh * ow_n..(oh + 1) * ow_n];
            let mut at = io
                .as_deref_mut()
                .map(|i| &mut i[oh * ow_n..(oh + 1) * ow_n]);
            if inside {
                // Taps outer, outputs inner: each output row is updated tap by tap (PyTorch's
                // tap order, so ties and NaNs resolve the same), with no dependency from one
                // output to the next for the CPU to wait on.
                best.fill(T::from_f64(f64::NEG_INFINITY));
                let corner = oh * w.s[0] * wd;
                if let Some(at) = at.as_deref_mut() {
                    for (ow, a) in at.iter_mut().enumerate() {
                        *a = (corner + ow * w.s[1]) as i64;
                    }
                }
                for kh in 0..w.k[0] {
                    for kw in 0..w.k[1] {
                        let first = corner + kh * w.d[0] * wd + kw * w.d[1];
                        // The tap's values for the whole row, made contiguous, so the update
                        // below vectorises into compares and blends instead of one
                        // unpredictable branch per element.
                        let taps: &[T] = if w.s[1] == 1 {
                            &src[first..first + ow_n]
                        } else {
                            for (t, &v) in tmp.iter_mut().zip(src[first..].iter().step_by(w.s[1])) {
                                *t = v;
                            }
                            &tmp
                        };
                        match at.as_deref_mut() {
                            Some(at) => {
                                for (ow, ((b, a), &v)) in
                                    best.iter_mut().zip(at.iter_mut()).zip(taps).enumerate()
                                {
                                    let take = v > *b || v.is_nan();
                                    *b = if take { v } else { *b };
                                    *a = if take {
                                        (first + ow * w.s[1]) as i64
                                    } else {
                                        *a
                                    };
                                }
                            }
                            None => {
                                for (b, &v) in best.iter_mut().zip(taps) {
                                    *b = if v > *b || v.is_nan() { v } else { *b };
                                }
                            }
                        }
                    }
                }
                continue;
            }
            for ow in 0..ow_n {
                let (mut m, mut arg) = (T::from_f64(f64::NEG_INFINITY), None);
                for kh in 0..w.k[0] {
                    let Some(ih) = w.source(0, oh, kh, h) else {
                        continue;
                    };
                    for kw in 0..w.k[1] {
                        let Some(iw) = w.source(1, ow, kw, wd) else {
                            continue;
                        };
                        let v = src[ih * wd + iw];
                        if arg.is_none() || v > m || v.is_nan() {
                            (m, arg) = (v, Some(ih * wd + iw));
                        }
                    }
                }
                best[ow] = m;
                if let Some(at) = at.as_deref_mut() {
                    at[ow] = arg.unwrap_or(0) as i64;
                }
            }
        }
    };
    // Planes per task: small pools stay on one thread.
    let min = (PAR_MIN / 4).div_ceil(l.max(1));
    match idx.as_mut() {
        Some(idx) => vals
            .par_chunks_mut(l)
            .zip(idx.par_chunks_mut(l))
            .with_min_len(min)
            .enumerate()
            .for_each(|(p, (vo, io))| plane(p, vo, Some(io))),
        None => vals
            .par_chunks_mut(l)
            .with_min_len(min)
            .enumerate()
            .for_each(|(p, vo)| plane(p, vo, None)),
    }
    (vals, idx)
}
