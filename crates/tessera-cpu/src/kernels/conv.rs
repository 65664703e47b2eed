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

/// The columns of one plane `src` (`[H, W]`): tap `t`'s positions go to
/// `dst[t·tap_stride..][..positions]`, `fill` outside the plane.
fn unfold_plane<T: Num>(
    src: &[T],
    hw: [usize; 2],
    w: &Window,
    fill: T,
    dst: &mut [T],
    tap_stride: usize,
) {
    let (h, wd) = (hw[0], hw[1]);
    for kh in 0..w.k[0] {
        for kw in 0..w.k[1] {
            let t = kh * w.k[1] + kw;
            let tap = &mut dst[t * tap_stride..t * tap_stride + w.positions()];
            let (lo, hi, first) = inside(w, kw, wd);
            for oh in 0..w.out[0] {
                let row = &mut tap[oh * w.out[1]..(oh + 1) * w.out[1]];
                match w.source(0, oh, kh, h) {
                    None => row.fill(fill),
                    Some(ih) => {
                        let line = &src[ih * wd..(ih + 1) * wd];
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
}

/// Adds the columns of one plane (tap `t` at `src[t·tap_stride..]`) into `out` (`[H, W]`).
fn fold_plane<T: Num>(src: &[T], tap_stride: usize, hw: [usize; 2], w: &Window, out: &mut [T]) {
    let (h, wd) = (hw[0], hw[1]);
    let pos = w.positions();
    for kh in 0..w.k[0] {
        for kw in 0..w.k[1] {
            let t = kh * w.k[1] + kw;
            let tap = &src[t * tap_stride..t * tap_stride + pos];
            let (lo, hi, first) = inside(w, kw, wd);
            for oh in 0..w.out[0] {
                let Some(ih) = w.source(0, oh, kh, h) else {
                    continue;
                };
                let line = &mut out[ih * wd..(ih + 1) * wd];
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
}

/// `[N, C, taps, positions]` columns of `x` (contiguous `[N, C, H, W]`), `fill` outside.
pub fn unfold<T: Num>(x: &[T], planes: usize, hw: [usize; 2], w: &Window, fill: T) -> Vec<T> {
    let plane_len = hw[0] * hw[1];
    let (taps, pos) = (w.taps(), w.positions());
    let mut out = alloc::<T>(planes * taps * pos);
    let plane = |(p, o): (usize, &mut [T])| {
        unfold_plane(&x[p * plane_len..(p + 1) * plane_len], hw, w, fill, o, pos)
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(taps * pos).enumerate().for_each(plane);
    } else {
        out.chunks_mut(taps * pos).enumerate().for_each(plane);
    }
    out
}

/// The columns of a batch `x` (contiguous `[N, C, H, W]`) in channel-major order,
/// `[C·taps, N·positions]`, so that one GEMM by the weight covers the whole batch (the weight
/// is packed once, not once per example). Zeros outside.
pub fn unfold_channel_major<T: Num>(x: &[T], nc: [usize; 2], hw: [usize; 2], w: &Window) -> Vec<T> {
    let [n, c] = nc;
    let plane_len = hw[0] * hw[1];
    let (taps, pos) = (w.taps(), w.positions());
    let mut out = alloc::<T>(c * taps * n * pos);
    out.par_chunks_mut(taps * n * pos)
        .enumerate()
        .for_each(|(ci, block)| {
            for ni in 0..n {
                let p = ni * c + ci;
                let src = &x[p * plane_len..(p + 1) * plane_len];
                unfold_plane(src, hw, w, T::zero(), &mut block[ni * pos..], n * pos);
            }
        });
    out
}

/// The adjoint of [`unfold`]: columns summed into a new contiguous `[N, C, H, W]`.
pub fn fold<T: Num>(cols: &[T], planes: usize, hw: [usize; 2], w: &Window) -> Vec<T> {
    let (taps, pos) = (w.taps(), w.positions());
    let mut out = alloc::<T>(planes * hw[0] * hw[1]);
    let plane = |(p, o): (usize, &mut [T])| {
        o.fill(T::zero());
        fold_plane(&cols[p * taps * pos..(p + 1) * taps * pos], pos, hw, w, o);
    };
    if cols.len() >= PAR_MIN {
        out.par_chunks_mut(hw[0] * hw[1])
            .enumerate()
            .for_each(plane);
    } else {
        out.chunks_mut(hw[0] * hw[1]).enumerate().for_each(plane);
    }
    out
}

/// The adjoint of [`unfold_channel_major`]: `[C·taps, N·positions]` columns summed into `out`,
/// a contiguous `[N, C, H, W]` (overwritten).
pub fn fold_channel_major_into<T: Num>(
    cols: &[T],
    nc: [usize; 2],
    hw: [usize; 2],
    w: &Window,
    out: &mut [T],
) {
    let [n, c] = nc;
    let (taps, pos) = (w.taps(), w.positions());
    out.par_chunks_mut(hw[0] * hw[1])
        .enumerate()
        .for_each(|(p, o)| {
            let (ni, ci) = (p / c, p % c);
            o.fill(T::zero());
            fold_plane(&cols[ci * taps * n * pos + ni * pos..], n * pos, hw, w, o);
        });
}

/// `[O, N·L]` (channel-major GEMM output) as `[N, O, L]` into `y`, plus `bias[o]` when given.
pub fn from_channel_major<T: Num>(
    ycm: &[T],
    [n, o, l]: [usize; 3],
    bias: Option<&[T]>,
    y: &mut [T],
) {
    y.par_chunks_mut(l).enumerate().for_each(|(row, dst)| {
        let (ni, oi) = (row / o, row % o);
        let src = &ycm[oi * n * l + ni * l..][..l];
        match bias {
            Some(b) => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s + b[oi]),
            None => dst.copy_from_slice(src),
        }
    });
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
    let inside = h * wd <= i32::MAX as usize
        && (0..2).all(|i| w.p[i] == 0 && (w.out[i] - 1) * w.s[i] + (w.k[i] - 1) * w.d[i] < hw[i]);
    // Plane index of each window's first tap; tap (kh, kw) of window j is corners[j] + offset.
    let corners: Vec<i32> = if inside {
        (0..w.out[0])
            .flat_map(|oh| (0..w.out[1]).map(move |ow| (oh * w.s[0] * wd + ow * w.s[1]) as i32))
            .collect()
    } else {
        Vec::new()
    };
    // Per task scratch: one tap's values and the running i32 indices of a plane.
    let scratch = || (vec![T::zero(); l], vec![0i32; l]);
    let plane = |(tmp, at32): &mut (Vec<T>, Vec<i32>),
                 p: usize,
                 vo: &mut [T],
                 mut io: Option<&mut [i64]>| {
        let src = &x[p * h * wd..(p + 1) * h * wd];
        let ow_n = w.out[1];
        if inside && w.k == [2, 2] && w.s == [2, 2] && w.d == [1, 1] {
            pool2x2(src, wd, w.out, vo, io);
            return;
        }
        if inside {
            // Taps outer, windows inner: the whole plane of maxima is updated tap by tap
            // (PyTorch's tap order, so ties and NaNs resolve the same), with the tap's values
            // first copied to a contiguous run so the update vectorises into compares and
            // blends instead of one unpredictable branch per element.
            vo.fill(T::from_f64(f64::NEG_INFINITY));
            if io.is_some() {
                at32.copy_from_slice(&corners);
            }
            for kh in 0..w.k[0] {
                for kw in 0..w.k[1] {
                    let off = kh * w.d[0] * wd + kw * w.d[1];
                    for (t, &c) in tmp.iter_mut().zip(&corners) {
                        *t = src[c as usize + off];
                    }
                    let idx = io.is_some().then_some(&mut at32[..]);
                    pool_taps(vo, idx, tmp, &corners, off as i32);
                }
            }
            if let Some(io) = io {
                for (d, &a) in io.iter_mut().zip(at32.iter()) {
                    *d = a as i64;
                }
            }
            return;
        }
        for oh in 0..w.out[0] {
            let best = &mut vo[oh * ow_n..(oh + 1) * ow_n];
            let mut at = io
                .as_deref_mut()
                .map(|i| &mut i[oh * ow_n..(oh + 1) * ow_n]);
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
            .for_each_init(scratch, |s, (p, (vo, io))| plane(s, p, vo, Some(io))),
        None => vals
            .par_chunks_mut(l)
            .with_min_len(min)
            .enumerate()
            .for_each_init(scratch, |s, (p, vo)| plane(s, p, vo, None)),
    }
    (vals, idx)
}

/// One tap's update of running maxima (and, with `at`, their i32 plane indices
/// `corners[j] + off`): `v > best || v is NaN` takes the tap, as in PyTorch. Compiled for AVX2
/// where the CPU has it: the baseline build (SSE2) leaves the select of values and indices as
/// one unpredictable branch per element.
/// The 2×2, stride-2 pool of one plane (windows inside it): per output row, the two input
/// rows read as pairs, so the taps need no gather and the loop vectorises (AVX2 where present).
/// Taps in PyTorch's order, a NaN winning as in [`max_pool`].
fn pool2x2<T: Num + PartialOrd>(
    src: &[T],
    wd: usize,
    out: [usize; 2],
    vo: &mut [T],
    io: Option<&mut [i64]>,
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above).
        return unsafe { pool2x2_avx2(src, wd, out, vo, io) };
    }
    pool2x2_body(src, wd, out, vo, io)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pool2x2_avx2<T: Num + PartialOrd>(
    src: &[T],
    wd: usize,
    out: [usize; 2],
    vo: &mut [T],
    io: Option<&mut [i64]>,
) {
    pool2x2_body(src, wd, out, vo, io)
}

#[inline(always)]
fn pool2x2_body<T: Num + PartialOrd>(
    src: &[T],
    wd: usize,
    [oh_n, ow_n]: [usize; 2],
    vo: &mut [T],
    mut io: Option<&mut [i64]>,
) {
    let take = |v: T, m: T| (v > m) | v.is_nan();
    for oh in 0..oh_n {
        let r0 = &src[2 * oh * wd..][..2 * ow_n];
        let r1 = &src[(2 * oh + 1) * wd..][..2 * ow_n];
        let best = &mut vo[oh * ow_n..(oh + 1) * ow_n];
        let pairs = r0.chunks_exact(2).zip(r1.chunks_exact(2));
        match io.as_deref_mut() {
            None => {
                for (o, (p, q)) in best.iter_mut().zip(pairs) {
                    let mut m = p[0];
                    for v in [p[1], q[0], q[1]] {
                        m = if take(v, m) { v } else { m };
                    }
                    *o = m;
                }
            }
            Some(io) => {
                let at = &mut io[oh * ow_n..(oh + 1) * ow_n];
                let base = (2 * oh * wd) as i64;
                for (ow, ((o, a), (p, q))) in best.iter_mut().zip(at).zip(pairs).enumerate() {
                    let (mut m, mut k) = (p[0], 0);
                    for (v, t) in [(p[1], 1), (q[0], wd as i64), (q[1], wd as i64 + 1)] {
                        if take(v, m) {
                            (m, k) = (v, t);
                        }
                    }
                    *o = m;
                    *a = base + 2 * ow as i64 + k;
                }
            }
        }
    }
}

fn pool_taps<T: Num + PartialOrd>(
    best: &mut [T],
    at: Option<&mut [i32]>,
    taps: &[T],
    corners: &[i32],
    off: i32,
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above).
        return unsafe { pool_taps_avx2(best, at, taps, corners, off) };
    }
    pool_taps_body(best, at, taps, corners, off)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pool_taps_avx2<T: Num + PartialOrd>(
    best: &mut [T],
    at: Option<&mut [i32]>,
    taps: &[T],
    corners: &[i32],
    off: i32,
) {
    pool_taps_body(best, at, taps, corners, off)
}

#[inline(always)]
fn pool_taps_body<T: Num + PartialOrd>(
    best: &mut [T],
    at: Option<&mut [i32]>,
    taps: &[T],
    corners: &[i32],
    off: i32,
) {
    let n = best.len().min(taps.len());
    let (best, taps) = (&mut best[..n], &taps[..n]);
    match at {
        Some(at) => {
            let (at, corners) = (&mut at[..n], &corners[..n]);
            for j in 0..n {
                let (old, v) = (best[j], taps[j]);
                let take = (v > old) | v.is_nan();
                best[j] = if take { v } else { old };
                at[j] = if take { corners[j] + off } else { at[j] };
            }
        }
        None => {
            for j in 0..n {
                let (old, v) = (best[j], taps[j]);
                best[j] = if (v > old) | v.is_nan() { v } else { old };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The windows-inside path (taps gathered through the window corners) against a direct scan of each
    /// window, for strides 1, 2 and 3, a dilation, a non-square kernel, ties, and a NaN (which
    /// wins, as in PyTorch), with and without indices.
    #[test]
    fn max_pool_inside_windows_match_a_direct_scan() {
        let (planes, h, wd) = (3, 9, 11);
        let mut x: Vec<f32> = (0..planes * h * wd)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.5)
            .collect();
        x[40] = f32::NAN;
        for (k, s, d) in [
            ([2, 2], [2, 2], [1, 1]),
            ([3, 3], [1, 1], [1, 1]),
            ([2, 3], [3, 3], [1, 1]),
            ([2, 2], [1, 2], [2, 2]),
        ] {
            let out = [0, 1].map(|i| ([h, wd][i] - d[i] * (k[i] - 1) - 1) / s[i] + 1);
            let w = Window {
                k,
                s,
                d,
                p: [0, 0],
                out,
            };
            let (vals, idx) = max_pool(&x, planes, [h, wd], &w, true);
            let (vals_only, _) = max_pool(&x, planes, [h, wd], &w, false);
            let idx = idx.expect("indices were asked for");
            for p in 0..planes {
                for oh in 0..out[0] {
                    for ow in 0..out[1] {
                        let (mut m, mut arg) = (f32::NEG_INFINITY, None);
                        for kh in 0..k[0] {
                            for kw in 0..k[1] {
                                let at = (oh * s[0] + kh * d[0]) * wd + ow * s[1] + kw * d[1];
                                let v = x[p * h * wd + at];
                                if arg.is_none() || v > m || v.is_nan() {
                                    (m, arg) = (v, Some(at));
                                }
                            }
                        }
                        let j = p * out[0] * out[1] + oh * out[1] + ow;
                        let same = |a: f32| a == m || (a.is_nan() && m.is_nan());
                        assert!(
                            same(vals[j]) && same(vals_only[j]),
                            "{k:?} {s:?} {d:?} at {j}"
                        );
                        assert_eq!(idx[j], arg.unwrap_or(0) as i64, "{k:?} {s:?} {d:?} at {j}");
                    }
                }
            }
        }
    }
}
