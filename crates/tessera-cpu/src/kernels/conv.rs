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
    let offsets: Vec<usize> = (0..w.k[0])
        .flat_map(|kh| (0..w.k[1]).map(move |kw| kh * w.d[0] * wd + kw * w.d[1]))
        .collect();
    let plane = |p: usize, vo: &mut [T], mut io: Option<&mut [i64]>| {
        let src = &x[p * h * wd..(p + 1) * h * wd];
        for oh in 0..w.out[0] {
            for ow in 0..w.out[1] {
                let (mut best, mut at) = (T::from_f64(f64::NEG_INFINITY), None);
                if inside {
                    let corner = oh * w.s[0] * wd + ow * w.s[1];
                    at = Some(corner);
                    for &o in &offsets {
                        let v = src[corner + o];
                        if v > best || v.is_nan() {
                            (best, at) = (v, Some(corner + o));
                        }
                    }
                } else {
                    for kh in 0..w.k[0] {
                        let Some(ih) = w.source(0, oh, kh, h) else {
                            continue;
                        };
                        for kw in 0..w.k[1] {
                            let Some(iw) = w.source(1, ow, kw, wd) else {
                                continue;
                            };
                            let v = src[ih * wd + iw];
                            if at.is_none() || v > best || v.is_nan() {
                                (best, at) = (v, Some(ih * wd + iw));
                            }
                        }
                    }
                }
                vo[oh * w.out[1] + ow] = best;
                if let Some(io) = io.as_deref_mut() {
                    io[oh * w.out[1] + ow] = at.unwrap_or(0) as i64;
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
