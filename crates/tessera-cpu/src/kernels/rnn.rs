//! The fused LSTM cell (PyTorch's gate order i, f, g, o): one pass over each batch row instead
//! of a dozen elementwise ops, each with its own allocation and dispatch, per time step.

use super::{vmath, Float};
use crate::buffer::alloc;
use rayon::prelude::*;

/// Gate elements (`4h` per row) one parallel task takes at least: a cell row costs ~5-10× an
/// `add` per element (transcendentals), so it splits at 1/8 of the elementwise threshold
/// (`PAR_MIN`) — W5's 32 rows of 1024 gates become two tasks. Measured in W5 (2 threads, 3
/// alternating runs of 60 steps, best step): 19.95 -> 16.42 ms.
const CELL_ROWS_MIN: usize = 1 << 13;

/// Row-wise sigmoid and tanh: the vectorised f32 versions, libm for f64.
pub trait CellMath: Float {
    fn sigmoid_into(x: &[Self], o: &mut [Self]);
    fn tanh_into(x: &[Self], o: &mut [Self]);
}

impl CellMath for f32 {
    fn sigmoid_into(x: &[f32], o: &mut [f32]) {
        vmath::sigmoid_into(x, o)
    }
    fn tanh_into(x: &[f32], o: &mut [f32]) {
        vmath::tanh_into(x, o)
    }
}

impl CellMath for f64 {
    fn sigmoid_into(x: &[f64], o: &mut [f64]) {
        for (o, &v) in o.iter_mut().zip(x) {
            // Both branches keep exp's argument non-positive.
            *o = if v >= 0.0 {
                1.0 / (1.0 + (-v).exp())
            } else {
                let e = v.exp();
                e / (1.0 + e)
            };
        }
    }
    fn tanh_into(x: &[f64], o: &mut [f64]) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = v.tanh();
        }
    }
}

/// One step over `b` rows of hidden size `h` (all inputs contiguous): the activations
/// `[b, 4h]`, `c'`, `tanh(c')` and `h'` (`[b, h]` each).
pub fn lstm_cell<T: CellMath>(x: &[T], r: &[T], c: &[T], b: usize, h: usize) -> [Vec<T>; 4] {
    let mut act = alloc::<T>(b * 4 * h);
    let (mut c_new, mut tanh_c, mut h_new) =
        (alloc::<T>(b * h), alloc::<T>(b * h), alloc::<T>(b * h));
    let row = |j: usize, a: &mut [T], cn: &mut [T], tc: &mut [T], hn: &mut [T]| {
        let z: Vec<T> = x[j * 4 * h..(j + 1) * 4 * h]
            .iter()
            .zip(&r[j * 4 * h..(j + 1) * 4 * h])
            .map(|(&p, &q)| p + q)
            .collect();
        T::sigmoid_into(&z[..2 * h], &mut a[..2 * h]);
        T::tanh_into(&z[2 * h..3 * h], &mut a[2 * h..3 * h]);
        T::sigmoid_into(&z[3 * h..], &mut a[3 * h..]);
        let (i, rest) = a.split_at(h);
        let (f, rest) = rest.split_at(h);
        let (g, o) = rest.split_at(h);
        for k in 0..h {
            cn[k] = f[k] * c[j * h + k] + i[k] * g[k];
        }
        T::tanh_into(cn, tc);
        for k in 0..h {
            hn[k] = o[k] * tc[k];
        }
    };
    let rows = act
        .par_chunks_mut(4 * h)
        .zip(c_new.par_chunks_mut(h))
        .zip(tanh_c.par_chunks_mut(h))
        .zip(h_new.par_chunks_mut(h))
        .enumerate()
        .with_min_len(CELL_ROWS_MIN.div_ceil(4 * h));
    rows.for_each(|(j, (((a, cn), tc), hn))| row(j, a, cn, tc, hn));
    [act, c_new, tanh_c, h_new]
}

/// The step's backward: from the activations, `c_prev`, `tanh(c')`, `dh` and `dc` (all
/// contiguous), the gradient of the pre-activations `[b, 4h]` and of `c_prev` `[b, h]`.
pub fn lstm_cell_backward<T: Float>(
    act: &[T],
    c_prev: &[T],
    tanh_c: &[T],
    dh: &[T],
    dc: &[T],
    b: usize,
    h: usize,
) -> [Vec<T>; 2] {
    let mut dz = alloc::<T>(b * 4 * h);
    let mut dc_prev = alloc::<T>(b * h);
    let one = T::one();
    dz.par_chunks_mut(4 * h)
        .zip(dc_prev.par_chunks_mut(h))
        .enumerate()
        .with_min_len(CELL_ROWS_MIN.div_ceil(4 * h))
        .for_each(|(j, (d, dcp))| {
            let a = &act[j * 4 * h..(j + 1) * 4 * h];
            let s = j * h..(j + 1) * h;
            let (cp, tc, dh, dc) = (
                &c_prev[s.clone()],
                &tanh_c[s.clone()],
                &dh[s.clone()],
                &dc[s],
            );
            let (di, rest) = d.split_at_mut(h);
            let (df, rest) = rest.split_at_mut(h);
            let (dg, d_o) = rest.split_at_mut(h);
            for k in 0..h {
                let (i, f, g, o) = (a[k], a[h + k], a[2 * h + k], a[3 * h + k]);
                let dct = dc[k] + dh[k] * o * (one - tc[k] * tc[k]);
                di[k] = dct * g * i * (one - i);
                df[k] = dct * cp[k] * f * (one - f);
                dg[k] = dct * i * (one - g * g);
                d_o[k] = dh[k] * tc[k] * o * (one - o);
                dcp[k] = dct * f;
            }
        });
    [dz, dc_prev]
}
