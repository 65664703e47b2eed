//! Pooling, built on [`super::conv`]'s unfold (a `gather`):
//!
//! | op | forward | backward (automatic) |
//! | --- | --- | --- |
//! | max_pool | [`FusedKernels::max_pool2d`](crate::FusedKernels::max_pool2d): the maxima and the plane index of each where the backend has it, else the composite: unfold with -inf outside, `argmax` over the taps, `gather` | `scatter_add` of the gradient at the saved plane indices: exact for every kernel/stride/padding/dilation, overlapping windows accumulate |
//! | avg_pool2d | unfold with 0 outside, sum over taps, divide by each window's divisor | |
//! | adaptive_avg_pool2d | `A_h · x · A_wᵀ` with averaging matrices (windows may overlap) | matmul rules |
//! | global_avg_pool2d | mean over H, W | |

use super::conv::{out_size, per_dim, unfold, Window};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Options of max and average pooling; per-dim lists of length 1 apply to every spatial dim.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolOptions {
    pub kernel_size: Vec<usize>,
    /// Defaults to the kernel size, as in PyTorch.
    pub stride: Option<Vec<usize>>,
    pub padding: Vec<usize>,
    pub dilation: Vec<usize>,
    pub ceil_mode: bool,
    /// Average pooling only: count padded cells in the divisor.
    pub count_include_pad: bool,
}

impl PoolOptions {
    /// A `k`-wide window with stride `k`, no padding.
    pub fn new(k: usize) -> Self {
        PoolOptions {
            kernel_size: vec![k],
            stride: None,
            padding: vec![0],
            dilation: vec![1],
            ceil_mode: false,
            count_include_pad: true,
        }
    }
    /// The same stride in every dim.
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = Some(vec![s]);
        self
    }
    /// The same padding in every dim.
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = vec![p];
        self
    }
    /// The same dilation in every dim.
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = vec![d];
        self
    }
    /// Round output sizes up.
    pub fn ceil_mode(mut self, c: bool) -> Self {
        self.ceil_mode = c;
        self
    }
    /// Average pooling: whether padded cells count in the divisor.
    pub fn count_include_pad(mut self, c: bool) -> Self {
        self.count_include_pad = c;
        self
    }
}

/// The pooling window over `[N, C, H, W]`, with PyTorch's output-size rule (ceil mode drops a
/// last window that would start in the right padding).
fn pool_window(op: &'static str, x: &Tensor, o: &PoolOptions) -> Result<Window> {
    if x.rank() != 4 {
        return Err(Error::invalid(
            op,
            format!("needs input [N, C, H, W], got {}", x.shape()),
        ));
    }
    let k = per_dim(op, "kernel_size", &o.kernel_size, 2)?;
    let s = per_dim(
        op,
        "stride",
        o.stride.as_deref().unwrap_or(&o.kernel_size),
        2,
    )?;
    let p = per_dim(op, "padding", &o.padding, 2)?;
    let d = per_dim(op, "dilation", &o.dilation, 2)?;
    let mut out = [0; 2];
    for i in 0..2 {
        let n = x.dims()[2 + i];
        if 2 * p[i] > k[i] {
            return Err(Error::invalid(
                op,
                format!(
                    "padding {} must be at most half the kernel size {}",
                    p[i], k[i]
                ),
            ));
        }
        let floor = out_size(op, n, p[i], p[i], k[i], s[i], d[i])?;
        out[i] = if o.ceil_mode {
            let span = d[i] * (k[i] - 1) + 1;
            let mut c = (n + 2 * p[i] - span).div_ceil(s[i]) + 1;
            if (c - 1) * s[i] >= n + p[i] {
                c -= 1;
            }
            c
        } else {
            floor
        };
    }
    Ok(Window {
        k: [k[0], k[1]],
        s: [s[0], s[1]],
        d: [d[0], d[1]],
        p: [p[0], p[1]],
        out,
    })
}

/// Max pooling over `[N, C, H, W]`; padding acts as -inf.
pub fn max_pool2d(x: &Tensor, opts: &PoolOptions) -> Result<Tensor> {
    super::float_only("max_pool2d", x)?;
    let w = pool_window("max_pool2d", x, opts)?;
    let d = x.dims();
    let (n, c, h, wd, l) = (d[0], d[1], d[2], d[3], w.positions());
    let routed = crate::tape::is_grad_enabled() && x.requires_grad();
    let (y, idx) = match super::fused(x.device(), |k| k.max_pool2d(x.view(), &w, routed))? {
        Some((vals, idx)) => (
            x.output(vals, &[n, c, w.out[0], w.out[1]]),
            idx.map(|i| x.output(i, &[n, c, l])),
        ),
        None => crate::no_grad(|| max_pool2d_composite(x, &w, routed))?,
    };
    let Some(idx) = idx.filter(|_| routed) else {
        return Ok(y);
    };
    Ok(y.record_op("max_pool2d", &[x], move |g, _| {
        // Each output's gradient goes to the input element it came from; overlapping
        // windows accumulate. Recorded under create_graph (scatter_add's backward is gather).
        let g3 = g.reshape_usize(&[n, c, l])?;
        let dx = Tensor::zeros(&[n, c, h * wd], g.dtype(), g.device())?
            .scatter_add(2, &idx, &g3)?
            .reshape_usize(&[n, c, h, wd])?;
        Ok(vec![Some(dx)])
    }))
}

/// Max pooling's composite: the windows as columns with -inf outside, then the max over the
/// taps; with `index`, the first maximal tap of each window (NaN wins), the value there, and
/// the plane index of that tap read from a `[taps, positions]` table, `[N, C, positions]`.
fn max_pool2d_composite(x: &Tensor, w: &Window, index: bool) -> Result<(Tensor, Option<Tensor>)> {
    let d = x.dims();
    let (n, c, h, wd) = (d[0], d[1], d[2], d[3]);
    let (taps, l) = (w.taps(), w.positions());
    let cols = super::conv::unfold(x, w, f64::NEG_INFINITY)?;
    let shape = [n, c, w.out[0], w.out[1]];
    if !index {
        return Ok((cols.amax(&[2], false)?.reshape_usize(&shape)?, None));
    }
    let at = cols.argmax(2, true)?;
    let vals = cols.gather(2, &at)?.reshape_usize(&shape)?;
    let mut table = Vec::with_capacity(taps * l);
    for kh in 0..w.k[0] {
        for kw in 0..w.k[1] {
            for oh in 0..w.out[0] {
                for ow in 0..w.out[1] {
                    // A tap outside the input holds -inf and is chosen only when the whole
                    // window is -inf; any index inside the plane is then as good as another.
                    let ih = w.source(0, oh, kh, h).unwrap_or(0);
                    let iw = w.source(1, ow, kw, wd).unwrap_or(0);
                    table.push((ih * wd + iw) as i64);
                }
            }
        }
    }
    let table =
        Tensor::from_vec(table, &[1, 1, taps, l], x.device())?.broadcast_to(&[n, c, taps, l])?;
    let idx = table.gather(2, &at)?.reshape_usize(&[n, c, l])?;
    Ok((vals, Some(idx)))
}

/// Max pooling over `[N, C, L]`.
pub fn max_pool1d(x: &Tensor, opts: &PoolOptions) -> Result<Tensor> {
    if x.rank() != 3 {
        return Err(Error::invalid(
            "max_pool1d",
            format!("needs input [N, C, L], got {}", x.shape()),
        ));
    }
    let lift = |v: &[usize], one: usize| -> Vec<usize> { vec![one, v[0]] };
    let o2 = PoolOptions {
        kernel_size: lift(&opts.kernel_size, 1),
        stride: opts
            .stride
            .as_ref()
            .map(|s| lift(s, 1))
            .or_else(|| Some(lift(&opts.kernel_size, 1))),
        padding: lift(&opts.padding, 0),
        dilation: lift(&opts.dilation, 1),
        ceil_mode: opts.ceil_mode,
        count_include_pad: opts.count_include_pad,
    };
    for (what, v) in [
        ("kernel_size", &opts.kernel_size),
        ("padding", &opts.padding),
        ("dilation", &opts.dilation),
    ] {
        if v.len() != 1 {
            return Err(Error::invalid(
                "max_pool1d",
                format!("{what} needs one value"),
            ));
        }
    }
    max_pool2d(&x.unsqueeze(2)?, &o2)?.squeeze(2)
}

/// Average pooling over `[N, C, H, W]` (PyTorch's divisor rules for padding and ceil mode).
pub fn avg_pool2d(x: &Tensor, opts: &PoolOptions) -> Result<Tensor> {
    super::float_only("avg_pool2d", x)?;
    if opts.dilation.iter().any(|&d| d != 1) {
        return Err(Error::invalid(
            "avg_pool2d",
            "dilation is not supported (PyTorch has none either)",
        ));
    }
    let w = pool_window("avg_pool2d", x, opts)?;
    let (h, wd) = (x.dims()[2], x.dims()[3]);
    let mut div = Vec::with_capacity(w.positions());
    for i in 0..w.out[0] {
        for j in 0..w.out[1] {
            let span = |o: usize, dim: usize, n: usize| -> (usize, usize) {
                let start = (o * w.s[dim]) as isize - w.p[dim] as isize;
                let end = (start + w.k[dim] as isize).min((n + w.p[dim]) as isize);
                let pool = (end - start) as usize;
                let clipped = (end.min(n as isize) - start.max(0)) as usize;
                (pool, clipped)
            };
            let ((ph, ch), (pw, cw)) = (span(i, 0, h), span(j, 1, wd));
            div.push(if opts.count_include_pad {
                (ph * pw) as f64
            } else {
                (ch * cw) as f64
            });
        }
    }
    let div = Tensor::from_host(
        crate::HostData::from_f64(x.dtype(), &div),
        &[w.positions()],
        x.device(),
    )?;
    let (n, c) = (x.dims()[0], x.dims()[1]);
    unfold(x, &w, 0.0)?
        .sum(&[2], false)?
        .div(&div)?
        .reshape_usize(&[n, c, w.out[0], w.out[1]])
}

/// The `[out, n]` matrix averaging rows `floor(i·n/out)` to `ceil((i+1)·n/out) - 1` into row `i`.
fn averaging_matrix(x: &Tensor, n: usize, out: usize) -> Result<Tensor> {
    let mut m = vec![0.0; out * n];
    for i in 0..out {
        let (start, end) = ((i * n) / out, ((i + 1) * n).div_ceil(out));
        for j in start..end {
            m[i * n + j] = 1.0 / (end - start) as f64;
        }
    }
    Tensor::from_host(
        crate::HostData::from_f64(x.dtype(), &m),
        &[out, n],
        x.device(),
    )
}

/// Adaptive average pooling of `[N, C, H, W]` to `[N, C, oh, ow]` (PyTorch's windows).
pub fn adaptive_avg_pool2d(x: &Tensor, output_size: [usize; 2]) -> Result<Tensor> {
    super::float_only("adaptive_avg_pool2d", x)?;
    if x.rank() != 4 || output_size.contains(&0) {
        return Err(Error::invalid(
            "adaptive_avg_pool2d",
            format!(
                "needs input [N, C, H, W] and a non-zero output size, got {} and {output_size:?}",
                x.shape()
            ),
        ));
    }
    let ah = averaging_matrix(x, x.dims()[2], output_size[0])?;
    let aw = averaging_matrix(x, x.dims()[3], output_size[1])?;
    ah.matmul(x)?.matmul(&aw.t()?)
}

/// Mean over H and W of `[N, C, H, W]`: `[N, C, 1, 1]` with `keepdim`, else `[N, C]`.
pub fn global_avg_pool2d(x: &Tensor, keepdim: bool) -> Result<Tensor> {
    if x.rank() != 4 {
        return Err(Error::invalid(
            "global_avg_pool2d",
            format!("needs input [N, C, H, W], got {}", x.shape()),
        ));
    }
    x.mean(&[2, 3], keepdim)
}
