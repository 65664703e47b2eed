//! im2col and col2im over contiguous `[N, C, H, W]` data, parallel over (example, channel)
//! planes: no index tensors, no bounds-checked gathers.

use super::{Num, PAR_MIN};
use crate::buffer::alloc;
use rayon::prelude::*;
use tessera_core::Window;

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
                            for (ow, v) in row.iter_mut().enumerate() {
                                *v = match w.source(1, ow, kw, wd) {
                                    Some(iw) => line[iw],
                                    None => fill,
                                };
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
                    for (ow, &v) in tap[oh * w.out[1]..(oh + 1) * w.out[1]].iter().enumerate() {
                        if let Some(iw) = w.source(1, ow, kw, wd) {
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
