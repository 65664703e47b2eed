//! Training-mode batch normalisation over contiguous `[outer, C, inner]` data: the statistics
//! in one parallel pass per channel (sums in f64, so f32 data far from zero keeps its variance),
//! then `y = x·α + β` per channel, the form PyTorch's CPU kernel uses. The backward reads `x`
//! and `dy` once for the two per-channel sums and once more for `dx`. The composite it replaces
//! made ~7 passes forward and ~15 backward.

use super::{Num, CHUNK, PAR_MIN};
use crate::buffer::alloc;
use rayon::prelude::*;

/// `[outer, channels, inner]`.
pub type Dims = [usize; 3];

/// Σ f(x, y) over channel `ch`'s elements of `x` (and `y`), in f64, eight partial sums so the
/// loop vectorises.
fn channel_sum<T: Num>(
    [outer, c, inner]: Dims,
    ch: usize,
    x: &[T],
    y: &[T],
    f: impl Fn(f64, f64) -> f64,
) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut tail = 0.0;
    for o in 0..outer {
        let at = (o * c + ch) * inner;
        let (xs, ys) = (&x[at..at + inner], &y[at..at + inner]);
        let (x8, y8) = (xs.chunks_exact(8), ys.chunks_exact(8));
        for (xv, yv) in x8.clone().zip(y8.clone()) {
            for j in 0..8 {
                acc[j] += f(xv[j].to_f64(), yv[j].to_f64());
            }
        }
        for (&a, &b) in x8.remainder().iter().zip(y8.remainder()) {
            tail += f(a.to_f64(), b.to_f64());
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Per-channel values, parallel over channels when the data is large.
fn per_channel<U: Send>(d: Dims, f: impl Fn(usize) -> U + Sync + Send) -> Vec<U> {
    if d[0] * d[1] * d[2] >= PAR_MIN {
        (0..d[1]).into_par_iter().map(f).collect()
    } else {
        (0..d[1]).map(f).collect()
    }
}

/// `out[o, ch, i] = f(x[o, ch, i], y[o, ch, i])` with `f = row(ch)` built once per row (so
/// the per-channel coefficients are hoisted and the loop vectorises), parallel over rows.
fn map_rows<T: Num, F: Fn(T, T) -> T>(
    d: Dims,
    x: &[T],
    y: &[T],
    row: impl Fn(usize) -> F + Sync,
) -> Vec<T> {
    let [_, c, inner] = d;
    let mut out = alloc::<T>(x.len());
    let rows = CHUNK.div_ceil(inner.max(1));
    let task = |(t, o): (usize, &mut [T])| {
        for (r, out_row) in o.chunks_mut(inner.max(1)).enumerate() {
            let at = (t * rows + r) * inner;
            let f = row((t * rows + r) % c);
            let n = out_row.len();
            for ((d, &a), &b) in out_row.iter_mut().zip(&x[at..at + n]).zip(&y[at..at + n]) {
                *d = f(a, b);
            }
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(rows * inner.max(1))
            .enumerate()
            .for_each(task);
    } else {
        out.chunks_mut(rows * inner.max(1))
            .enumerate()
            .for_each(task);
    }
    out
}

/// `y = x·α + β` per channel with `α = w·(var + eps)^-½`, `β = b - mean·α` (coefficients in
/// f64, rounded once).
fn affine<T: Num>(
    x: &[T],
    d: Dims,
    [mean, var]: [&dyn Fn(usize) -> f64; 2],
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    eps: f64,
) -> Vec<T> {
    let (alpha, beta): (Vec<T>, Vec<T>) = (0..d[1])
        .map(|ch| {
            let a = weight.map_or(1.0, |w| w[ch].to_f64()) / (var(ch) + eps).sqrt();
            let b = bias.map_or(0.0, |b| b[ch].to_f64()) - mean(ch) * a;
            (T::from_f64(a), T::from_f64(b))
        })
        .unzip();
    map_rows(d, x, x, |ch| {
        let (a, b) = (alpha[ch], beta[ch]);
        move |v: T, _| v * a + b
    })
}

/// Eval mode: `y = x·α + β` with the given statistics.
pub fn eval<T: Num>(
    x: &[T],
    d: Dims,
    mean: &[T],
    var: &[T],
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    eps: f64,
) -> Vec<T> {
    affine(
        x,
        d,
        [&|ch| mean[ch].to_f64(), &|ch| var[ch].to_f64()],
        weight,
        bias,
        eps,
    )
}

/// `(y, mean, var)`: the normalised, scaled and shifted `x`, and the batch mean and biased
/// variance per channel.
pub fn train<T: Num>(
    x: &[T],
    d: Dims,
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let m = (d[0] * d[2]) as f64;
    // Mean, then the centred sum of squares while the channel is still in cache.
    let (mean, var): (Vec<f64>, Vec<f64>) = per_channel(d, |ch| {
        let mu = channel_sum(d, ch, x, x, |a, _| a) / m;
        (mu, channel_sum(d, ch, x, x, |a, _| (a - mu) * (a - mu)) / m)
    })
    .into_iter()
    .unzip();
    let y = affine(x, d, [&|ch| mean[ch], &|ch| var[ch]], weight, bias, eps);
    let cast = |v: &[f64]| v.iter().map(|&e| T::from_f64(e)).collect();
    (y, cast(&mean), cast(&var))
}

/// `(dx, dweight, dbias)` of [`train`] from `dy`, with the forward's `mean` and `var`.
pub fn backward<T: Num>(
    x: &[T],
    dy: &[T],
    d: Dims,
    mean: &[T],
    var: &[T],
    weight: Option<&[T]>,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let m = (d[0] * d[2]) as f64;
    let invstd: Vec<f64> = var
        .iter()
        .map(|v| 1.0 / (v.to_f64() + eps).sqrt())
        .collect();
    // Per channel: Σ dy and Σ dy·(x - mean).
    let sums: Vec<(f64, f64)> = per_channel(d, |ch| {
        let mu = mean[ch].to_f64();
        (
            channel_sum(d, ch, dy, dy, |g, _| g),
            channel_sum(d, ch, x, dy, |a, g| g * (a - mu)),
        )
    });
    // dx = (dy - Σdy/m - (x - mean)·k)·invstd·w with k = Σdy·(x - mean)·invstd²/m: PyTorch's
    // order of operations.
    let per = |f: &dyn Fn(usize) -> f64| (0..d[1]).map(|ch| T::from_f64(f(ch))).collect();
    let grad_mean: Vec<T> = per(&|ch| sums[ch].0 / m);
    let k: Vec<T> = per(&|ch| sums[ch].1 * invstd[ch] * invstd[ch] / m);
    let scale: Vec<T> = per(&|ch| invstd[ch] * weight.map_or(1.0, |w| w[ch].to_f64()));
    let dx = map_rows(d, x, dy, |ch| {
        let (gm, mu, k, s) = (grad_mean[ch], mean[ch], k[ch], scale[ch]);
        move |xv: T, g: T| (g - gm - (xv - mu) * k) * s
    });
    let dw = per(&|ch| sums[ch].1 * invstd[ch]);
    let db = per(&|ch| sums[ch].0);
    (dx, dw, db)
}

/// Rows per parallel task for rows of `d` elements.
fn rows_per_task(d: usize) -> usize {
    (CHUNK / d.max(1)).max(1)
}

/// Σ f(x) over one row in f64, eight partial sums so the loop vectorises.
fn row_sum<T: Num>(x: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let x8 = x.chunks_exact(8);
    let tail: f64 = x8.remainder().iter().map(|v| f(v.to_f64())).sum();
    for v in x8 {
        for j in 0..8 {
            acc[j] += f(v[j].to_f64());
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Layer normalisation of contiguous rows of `d` elements: `y = (x - mean)·rstd·w + b` per
/// row, with the row's mean and `rstd = (var + eps)^-½` (biased variance, two passes in f64).
/// Returns `(y, mean, rstd)`, the statistics one per row.
pub fn layer_train<T: Num>(
    x: &[T],
    d: usize,
    w: Option<&[T]>,
    b: Option<&[T]>,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let rows = x.len() / d.max(1);
    let (mut y, mut mean, mut rstd) = (alloc::<T>(x.len()), alloc::<T>(rows), alloc::<T>(rows));
    let per = rows_per_task(d);
    let task = |r0: usize, y: &mut [T], mean: &mut [T], rstd: &mut [T]| {
        for (i, ((y, m_out), r_out)) in y
            .chunks_exact_mut(d)
            .zip(mean.iter_mut())
            .zip(rstd.iter_mut())
            .enumerate()
        {
            let xr = &x[(r0 + i) * d..(r0 + i + 1) * d];
            let m = row_sum(xr, |v| v) / d as f64;
            let var = row_sum(xr, |v| (v - m) * (v - m)) / d as f64;
            let r = 1.0 / (var + eps).sqrt();
            (*m_out, *r_out) = (T::from_f64(m), T::from_f64(r));
            let (mt, rt) = (T::from_f64(m), T::from_f64(r));
            match (w, b) {
                (Some(w), Some(b)) => {
                    for (((y, &v), &w), &b) in y.iter_mut().zip(xr).zip(w).zip(b) {
                        *y = (v - mt) * rt * w + b;
                    }
                }
                (Some(w), None) => {
                    for ((y, &v), &w) in y.iter_mut().zip(xr).zip(w) {
                        *y = (v - mt) * rt * w;
                    }
                }
                (None, Some(b)) => {
                    for ((y, &v), &b) in y.iter_mut().zip(xr).zip(b) {
                        *y = (v - mt) * rt + b;
                    }
                }
                (None, None) => {
                    for (y, &v) in y.iter_mut().zip(xr) {
                        *y = (v - mt) * rt;
                    }
                }
            }
        }
    };
    if x.len() >= PAR_MIN {
        y.par_chunks_mut(per * d)
            .zip(mean.par_chunks_mut(per).zip(rstd.par_chunks_mut(per)))
            .enumerate()
            .for_each(|(t, (y, (m, r)))| task(t * per, y, m, r));
    } else {
        task(0, &mut y, &mut mean, &mut rstd);
    }
    (y, mean, rstd)
}

/// The gradients of [`layer_train`] from `dy`: per row, with `x̂ = (x - mean)·rstd` and
/// `g = dy·w`, `dx = rstd·(g - mean(g) - x̂·mean(g·x̂))`; `dw = Σ_rows dy·x̂`, `db = Σ_rows dy`
/// (sums in f64). Returns `(dx, dw, db)`.
pub fn layer_backward<T: Num>(
    x: &[T],
    dy: &[T],
    d: usize,
    mean: &[T],
    rstd: &[T],
    w: Option<&[T]>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dx = alloc::<T>(x.len());
    let per = rows_per_task(d);
    // One task's rows from `r0`: writes their dx and returns their Σ dy·x̂ and Σ dy.
    let task = |r0: usize, dx: &mut [T]| -> Vec<f64> {
        let mut sums = vec![0.0f64; 2 * d];
        let (sw, sb) = sums.split_at_mut(d);
        for (i, dx) in dx.chunks_exact_mut(d).enumerate() {
            let row = r0 + i;
            let (xr, gr) = (&x[row * d..(row + 1) * d], &dy[row * d..(row + 1) * d]);
            let (m, r) = (mean[row].to_f64(), rstd[row].to_f64());
            let (mut c1, mut c2) = (0.0f64, 0.0f64);
            for j in 0..d {
                let xh = (xr[j].to_f64() - m) * r;
                let g = gr[j].to_f64();
                let gw = w.map_or(g, |w| g * w[j].to_f64());
                c1 += gw;
                c2 += gw * xh;
                sw[j] += g * xh;
                sb[j] += g;
            }
            let (c1, c2) = (c1 / d as f64, c2 / d as f64);
            for j in 0..d {
                let xh = (xr[j].to_f64() - m) * r;
                let g = gr[j].to_f64();
                let gw = w.map_or(g, |w| g * w[j].to_f64());
                dx[j] = T::from_f64(r * (gw - c1 - xh * c2));
            }
        }
        sums
    };
    let sums = if x.len() >= PAR_MIN {
        dx.par_chunks_mut(per * d)
            .enumerate()
            .map(|(t, dx)| task(t * per, dx))
            .reduce(
                || vec![0.0; 2 * d],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            )
    } else {
        task(0, &mut dx)
    };
    let (dw, db) = sums.split_at(d);
    (
        dx,
        dw.iter().map(|&v| T::from_f64(v)).collect(),
        db.iter().map(|&v| T::from_f64(v)).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels on inputs large enough to run in parallel chunks (`[N, C, L]` with long
    /// rows, and `[N, C]` with one element per row), against the formulas in f64. The
    /// conformance vectors (small inputs) check them against PyTorch.
    #[test]
    fn parallel_paths_match_f64_formulas() {
        for d in [[5, 7, 3001], [20011, 5, 1]] {
            let n = d[0] * d[1] * d[2];
            let x: Vec<f32> = (0..n)
                .map(|i| 100.0 + ((i * 7919 % 1013) as f32) / 300.0)
                .collect();
            let dy: Vec<f32> = (0..n)
                .map(|i| ((i * 104_729 % 997) as f32) / 500.0 - 1.0)
                .collect();
            let w: Vec<f32> = (0..d[1]).map(|c| 0.5 + c as f32 / 4.0).collect();
            let b: Vec<f32> = (0..d[1]).map(|c| c as f32 - 2.0).collect();
            let eps = 1e-5;
            let (y, mean, var) = train(&x, d, Some(&w), Some(&b), eps);
            let (dx, dw, db) = backward(&x, &dy, d, &mean, &var, Some(&w), eps);
            let m = (d[0] * d[2]) as f64;
            let at = |o: usize, c: usize, i: usize| (o * d[1] + c) * d[2] + i;
            for c in 0..d[1] {
                let idx: Vec<usize> = (0..d[0])
                    .flat_map(|o| (0..d[2]).map(move |i| at(o, c, i)))
                    .collect();
                let mu = idx.iter().map(|&i| x[i] as f64).sum::<f64>() / m;
                let v = idx.iter().map(|&i| (x[i] as f64 - mu).powi(2)).sum::<f64>() / m;
                let inv = 1.0 / (v + eps).sqrt();
                assert!((mean[c] as f64 - mu).abs() < 1e-4, "{d:?} mean {c}");
                assert!(
                    (var[c] as f64 - v).abs() < 1e-5 * (1.0 + v),
                    "{d:?} var {c}"
                );
                let sg = idx.iter().map(|&i| dy[i] as f64).sum::<f64>();
                let sgx = idx
                    .iter()
                    .map(|&i| dy[i] as f64 * (x[i] as f64 - mu) * inv)
                    .sum::<f64>();
                assert!(
                    (db[c] as f64 - sg).abs() < 1e-3 * (1.0 + sg.abs()),
                    "{d:?} db {c}"
                );
                assert!(
                    (dw[c] as f64 - sgx).abs() < 1e-3 * (1.0 + sgx.abs()),
                    "{d:?} dw {c}"
                );
                for &i in &idx {
                    let xh = (x[i] as f64 - mu) * inv;
                    let want_y = xh * w[c] as f64 + b[c] as f64;
                    assert!((y[i] as f64 - want_y).abs() < 2e-3, "{d:?} y at {i}");
                    let want_dx = w[c] as f64 * inv * (dy[i] as f64 - sg / m - xh * sgx / m);
                    assert!((dx[i] as f64 - want_dx).abs() < 2e-3, "{d:?} dx at {i}");
                }
            }
        }
    }
}
