//! Convolutions, built from differentiable primitives so every backend runs them and every
//! order of derivative works:
//!
//! | op | forward | backward (automatic) |
//! | --- | --- | --- |
//! | unfold (im2col) | `gather` of the input at precomputed window positions (a fill value outside) | `scatter_add` into the input (col2im) |
//! | conv2d, one group | the backend's fused [`conv2d`](crate::FusedKernels::conv2d) as one node where it has one, else the composite: unfold, then weight · cols | the fused `conv2d_input_grad` / `conv2d_weight_grad`, else (and under `create_graph`) their composites: fold of weightᵀ · gy, and gy · colsᵀ |
//! | conv2d, groups | unfold, then weight `[G, O/G, C/G·K]` · cols `[N, G, C/G·K, L]` | matmul and gather rules |
//! | conv1d | conv2d with a height of 1 | |
//! | conv_transpose2d | weightᵀ · x, then `scatter_add` of the columns into the output (col2im), cropped | matmul and scatter rules |
//!
//! Padding follows PyTorch (zeros); `Padding::Same` is JAX/TensorFlow `SAME` (also for strides
//! > 1, where PyTorch refuses): `out = ceil(n / s)`, the odd pixel of padding goes after.

use super::{same_kind, when};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Padding of a convolution's spatial dims.
#[derive(Clone, Debug, PartialEq)]
pub enum Padding {
    /// `(before, after)` per spatial dim; one pair applies to every dim.
    Explicit(Vec<(usize, usize)>),
    /// Output size `ceil(n / stride)`, padding split with the odd pixel after (JAX `SAME`).
    Same,
    /// No padding.
    Valid,
}

impl Padding {
    /// The same padding on both sides of every spatial dim.
    pub fn symmetric(p: usize) -> Padding {
        Padding::Explicit(vec![(p, p)])
    }
}

/// Options of [`conv1d`] and [`conv2d`]: per-dim lists of length 1 apply to every spatial dim.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvOptions {
    pub stride: Vec<usize>,
    pub padding: Padding,
    pub dilation: Vec<usize>,
    pub groups: usize,
}

impl Default for ConvOptions {
    fn default() -> Self {
        ConvOptions {
            stride: vec![1],
            padding: Padding::Valid,
            dilation: vec![1],
            groups: 1,
        }
    }
}

impl ConvOptions {
    /// Stride 1, no padding, dilation 1, one group.
    pub fn new() -> Self {
        Self::default()
    }
    /// The same stride in every spatial dim.
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = vec![s];
        self
    }
    /// The same padding on both sides of every spatial dim.
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = Padding::symmetric(p);
        self
    }
    /// Any padding.
    pub fn padding_mode(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }
    /// The same dilation in every spatial dim.
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = vec![d];
        self
    }
    /// Grouped convolution.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
}

/// A per-dim list of length 1 or `n`, expanded to `n`.
pub(crate) fn per_dim(op: &'static str, what: &str, v: &[usize], n: usize) -> Result<Vec<usize>> {
    match v.len() {
        1 => Ok(vec![v[0]; n]),
        l if l == n => Ok(v.to_vec()),
        l => Err(Error::invalid(
            op,
            format!("{what} has {l} values for {n} spatial dims"),
        )),
    }
}

pub(crate) use crate::backend::Window;

/// `floor((n + before + after - d·(k - 1) - 1) / s) + 1`, or an error when the window does not fit.
pub(crate) fn out_size(
    op: &'static str,
    n: usize,
    before: usize,
    after: usize,
    k: usize,
    s: usize,
    d: usize,
) -> Result<usize> {
    if k == 0 || s == 0 || d == 0 {
        return Err(Error::invalid(
            op,
            "kernel size, stride and dilation must be at least 1",
        ));
    }
    let span = d * (k - 1) + 1;
    let padded = n + before + after;
    if padded < span {
        return Err(Error::invalid(
            op,
            format!("input of size {n} (padded to {padded}) is smaller than the dilated kernel ({span})"),
        ));
    }
    Ok((padded - span) / s + 1)
}

/// The windows of `x` `[N, C, H, W]` as columns `[N, C, KH·KW, OH·OW]` (im2col); taps outside
/// the input read `fill`. Its backward is [`fold`] (col2im), whose backward is this again.
pub(crate) fn unfold(x: &Tensor, w: &Window, fill: f64) -> Result<Tensor> {
    let d = x.dims();
    let (n, c, h, wd) = (d[0], d[1], d[2], d[3]);
    let out = match super::fused(x.device(), |k| k.unfold2d(x.view(), w, fill))? {
        Some(buf) => x.output(buf, &[n, c, w.taps(), w.positions()]),
        None => crate::no_grad(|| unfold_composite(x, w, fill))?,
    };
    let win = *w;
    Ok(out.record_op("unfold", &[x], move |g, _| {
        Ok(vec![Some(fold(g, &win, [h, wd])?)])
    }))
}

/// col2im: columns `[N, C, KH·KW, OH·OW]` summed back into `[N, C, H, W]`.
pub(crate) fn fold(cols: &Tensor, w: &Window, hw: [usize; 2]) -> Result<Tensor> {
    let d = cols.dims();
    let out = match super::fused(cols.device(), |k| k.fold2d(cols.view(), w, hw))? {
        Some(buf) => cols.output(buf, &[d[0], d[1], hw[0], hw[1]]),
        None => crate::no_grad(|| fold_composite(cols, w, hw))?,
    };
    let win = *w;
    Ok(out.record_op("fold", &[cols], move |g, _| {
        Ok(vec![Some(unfold(g, &win, 0.0)?)])
    }))
}

/// For each (channel, tap, position), the flat index into one example `[C·H·W]`, or `C·H·W`
/// (one past the end) where the window reads outside the input.
pub fn unfold_index(c: usize, h: usize, wd: usize, w: &Window) -> Vec<i64> {
    let hw = h * wd;
    let outside = (c * hw) as i64;
    let mut idx = Vec::with_capacity(c * w.taps() * w.positions());
    for ci in 0..c {
        for kh in 0..w.k[0] {
            for kw in 0..w.k[1] {
                for oh in 0..w.out[0] {
                    let ih = w.source(0, oh, kh, h);
                    for ow in 0..w.out[1] {
                        idx.push(match (ih, w.source(1, ow, kw, wd)) {
                            (Some(i), Some(j)) => (ci * hw + i * wd + j) as i64,
                            _ => outside,
                        });
                    }
                }
            }
        }
    }
    idx
}

/// [`unfold_index`] as an i64 tensor `[N, C·taps·positions]` (one row broadcast over the batch).
fn window_index(x: &Tensor, c: usize, hw: [usize; 2], w: &Window) -> Result<Tensor> {
    let idx = unfold_index(c, hw[0], hw[1], w);
    let l = idx.len();
    Tensor::from_vec(idx, &[1, l], x.device())?.broadcast_to(&[x.dims()[0], l])
}

/// im2col's composite: each example flattened with one `fill` element appended, gathered at
/// the window positions (taps outside the input read the appended element).
fn unfold_composite(x: &Tensor, w: &Window, fill: f64) -> Result<Tensor> {
    let d = x.dims();
    let (n, c) = (d[0], d[1]);
    let flat = x.reshape_usize(&[n, c * d[2] * d[3]])?;
    let pad = Tensor::full(&[n, 1], fill, x.dtype(), x.device())?;
    Tensor::concat(&[&flat, &pad], 1)?
        .gather(1, &window_index(x, c, [d[2], d[3]], w)?)?
        .reshape_usize(&[n, c, w.taps(), w.positions()])
}

/// col2im's composite: the columns scattered (summed) into each example with its appended
/// element, which collects the taps outside the input and is then dropped.
fn fold_composite(cols: &Tensor, w: &Window, hw: [usize; 2]) -> Result<Tensor> {
    let (n, c) = (cols.dims()[0], cols.dims()[1]);
    let chw = c * hw[0] * hw[1];
    let flat = cols.reshape_usize(&[n, c * w.taps() * w.positions()])?;
    flat.scatter_into(&[n, chw + 1], 1, &window_index(cols, c, hw, w)?)?
        .narrow(1, 0, chw)?
        .reshape_usize(&[n, c, hw[0], hw[1]])
}

/// Resolves padding to `(before, after)` per spatial dim.
fn resolve_padding(
    op: &'static str,
    pad: &Padding,
    sizes: &[usize],
    k: &[usize],
    s: &[usize],
    d: &[usize],
) -> Result<Vec<(usize, usize)>> {
    let n = sizes.len();
    Ok(match pad {
        Padding::Valid => vec![(0, 0); n],
        Padding::Explicit(p) if p.len() == 1 => vec![p[0]; n],
        Padding::Explicit(p) if p.len() == n => p.clone(),
        Padding::Explicit(p) => {
            return Err(Error::invalid(
                op,
                format!("padding has {} pairs for {n} spatial dims", p.len()),
            ))
        }
        Padding::Same => (0..n)
            .map(|i| {
                let out = sizes[i].div_ceil(s[i]);
                let total =
                    ((out.max(1) - 1) * s[i] + d[i] * (k[i] - 1) + 1).saturating_sub(sizes[i]);
                (total / 2, total - total / 2)
            })
            .collect(),
    })
}

/// 2-d convolution (cross-correlation, as PyTorch): `x` `[N, C_in, H, W]`, `weight`
/// `[C_out, C_in/groups, KH, KW]`, `bias` `[C_out]`.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: &ConvOptions,
) -> Result<Tensor> {
    conv_nd("conv2d", x, weight, bias, opts, false)
}

/// `relu(conv2d(x, weight, bias))`: a convolution layer and its activation as one op, the ReLU
/// in the convolution's last pass where the backend can ([`crate::FusedKernels::conv2d`] with `relu`).
pub fn conv2d_relu(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: &ConvOptions,
) -> Result<Tensor> {
    conv_nd("conv2d_relu", x, weight, bias, opts, true)
}

/// 1-d convolution: `x` `[N, C_in, L]`, `weight` `[C_out, C_in/groups, K]`, `bias` `[C_out]`.
pub fn conv1d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: &ConvOptions,
) -> Result<Tensor> {
    if x.rank() != 3 || weight.rank() != 3 {
        return Err(Error::shape(
            "conv1d",
            "needs input [N, C, L] and weight [O, C/groups, K]",
            x.dims(),
            weight.dims(),
        ));
    }
    let lift = |v: &[usize]| -> Vec<usize> {
        let mut out = vec![1];
        out.extend_from_slice(&v[..1.min(v.len())]);
        out
    };
    let padding = match &opts.padding {
        Padding::Explicit(p) if p.len() == 1 => Padding::Explicit(vec![(0, 0), p[0]]),
        Padding::Explicit(p) => {
            return Err(Error::invalid(
                "conv1d",
                format!("padding has {} pairs for 1 spatial dim", p.len()),
            ))
        }
        other => other.clone(),
    };
    for (what, v) in [("stride", &opts.stride), ("dilation", &opts.dilation)] {
        if v.len() != 1 {
            return Err(Error::invalid(
                "conv1d",
                format!("{what} has {} values for 1 spatial dim", v.len()),
            ));
        }
    }
    let o2 = ConvOptions {
        stride: lift(&opts.stride),
        padding,
        dilation: lift(&opts.dilation),
        groups: opts.groups,
    };
    let y = conv_nd(
        "conv1d",
        &x.unsqueeze(2)?,
        &weight.unsqueeze(2)?,
        bias,
        &o2,
        false,
    )?;
    y.squeeze(2)
}

/// A 2-d convolution (`conv1d` lifts its operands), followed by a ReLU with `relu`.
fn conv_nd(
    op: &'static str,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: &ConvOptions,
    relu: bool,
) -> Result<Tensor> {
    same_kind(op, x, weight)?;
    super::float_only(op, x)?;
    if x.rank() != 4 || weight.rank() != 4 {
        return Err(Error::shape(
            op,
            "needs input [N, C, H, W] and weight [O, C/groups, KH, KW]",
            x.dims(),
            weight.dims(),
        ));
    }
    let g = opts.groups;
    let (n, c) = (x.dims()[0], x.dims()[1]);
    let (o, cg) = (weight.dims()[0], weight.dims()[1]);
    if g == 0 || c % g != 0 || o % g != 0 || cg * g != c {
        return Err(Error::shape(
            op,
            format!("input has {c} channels, weight expects {} (groups = {g}); channels and outputs must divide by groups", cg * g),
            x.dims(),
            weight.dims(),
        ));
    }
    let k = [weight.dims()[2], weight.dims()[3]];
    let s = per_dim(op, "stride", &opts.stride, 2)?;
    let d = per_dim(op, "dilation", &opts.dilation, 2)?;
    let sizes = [x.dims()[2], x.dims()[3]];
    let pads = resolve_padding(op, &opts.padding, &sizes, &k, &s, &d)?;
    let out = [
        out_size(op, sizes[0], pads[0].0, pads[0].1, k[0], s[0], d[0])?,
        out_size(op, sizes[1], pads[1].0, pads[1].1, k[1], s[1], d[1])?,
    ];
    let win = Window {
        k,
        s: [s[0], s[1]],
        d: [d[0], d[1]],
        p: [pads[0].0, pads[1].0],
        out,
    };
    if let Some(b) = bias {
        check_bias(op, b, o, &[n, o, out[0], out[1]])?;
        same_kind(op, x, b)?;
    }
    if g == 1 {
        if let Some(y) = conv2d_fused(op, x, weight, bias, &win, relu)? {
            return Ok(y);
        }
    }
    // The composite, for any number of groups: im2col, then weight `[G, O/G, C/G·K]` · cols
    // `[N, G, C/G·K, L]`, recorded op by op.
    let cols = unfold(x, &win, 0.0)?.reshape_usize(&[n, g, cg * win.taps(), win.positions()])?;
    let wg = weight.reshape_usize(&[g, o / g, cg * win.taps()])?;
    let y = wg.matmul(&cols)?.reshape_usize(&[n, o, out[0], out[1]])?;
    let y = add_bias(op, y, bias, o)?;
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// A one-group convolution (and its ReLU) on the backend's kernel as one tape node, or `None`
/// where the backend declines. Its gradients take the backend's kernels too, each falling back
/// to the composite [`conv2d_input_grad`] / [`conv2d_weight_grad`], which are also what runs
/// under `create_graph`.
fn conv2d_fused(
    op: &'static str,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    win: &Window,
    relu: bool,
) -> Result<Option<Tensor>> {
    let (xv, wv, bv) = (x.view(), weight.view(), bias.map(|b| b.view()));
    let Some(buf) = super::fused(x.device(), |k| k.conv2d(xv, wv, bv, win, relu))? else {
        return Ok(None);
    };
    let (n, o) = (x.dims()[0], weight.dims()[0]);
    let y = x.output(buf, &[n, o, win.out[0], win.out[1]]);
    // The output is kept for the ReLU's gradient only (a plain convolution's backward does
    // not read it).
    let (xs, ws, yd, win) = (x.clone(), weight.clone(), relu.then(|| y.detach()), *win);
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    Ok(Some(y.record_op(op, &inputs, move |gy, needs| {
        // The ReLU's gradient first (from the output), then the convolution's.
        let gy = match &yd {
            Some(y) => &super::elementwise::relu_grad(gy, y)?,
            None => gy,
        };
        // Both gradients and the bias sum read gy: copy a broadcast seed (the gradient of a
        // sum) or other strided view once, not once per reader.
        let gy = &gy.contiguous()?;
        let recording = crate::tape::is_grad_enabled();
        let dev = gy.device();
        let mut grads = vec![
            when(needs[0], || {
                let hw = [xs.dims()[2], xs.dims()[3]];
                let fused = match recording {
                    true => None,
                    false => {
                        super::fused(dev, |k| k.conv2d_input_grad(gy.view(), ws.view(), &win, hw))?
                    }
                };
                match fused {
                    Some(buf) => Ok(xs.output(buf, xs.dims())),
                    None => conv2d_input_grad(gy, &ws, &win, hw),
                }
            })?,
            when(needs[1], || {
                let fused = match recording {
                    true => None,
                    false => {
                        super::fused(dev, |k| k.conv2d_weight_grad(xs.view(), gy.view(), &win))?
                    }
                };
                match fused {
                    Some(buf) => Ok(ws.output(buf, ws.dims())),
                    None => conv2d_weight_grad(&xs, gy, &win, ws.dims()),
                }
            })?,
        ];
        if needs.len() == 3 {
            grads.push(when(needs[2], || gy.sum(&[0, 2, 3], false))?);
        }
        Ok(grads)
    })))
}

/// The input gradient of a one-group conv2d, composed: `weightᵀ` `[C·K, O]` · `gy`
/// `[N, O, L]`, then col2im.
fn conv2d_input_grad(gy: &Tensor, weight: &Tensor, win: &Window, hw: [usize; 2]) -> Result<Tensor> {
    let (n, o, c) = (gy.dims()[0], weight.dims()[0], weight.dims()[1]);
    let l = win.positions();
    let cols = weight
        .reshape_usize(&[o, c * win.taps()])?
        .t()?
        .matmul(&gy.reshape_usize(&[n, o, l])?)?;
    fold(&cols.reshape_usize(&[n, c, win.taps(), l])?, win, hw)
}

/// The weight gradient of a one-group conv2d, composed: `gy` `[N, O, L]` · `colsᵀ`
/// `[N, L, C·K]`, summed over the batch.
fn conv2d_weight_grad(x: &Tensor, gy: &Tensor, win: &Window, wdims: &[usize]) -> Result<Tensor> {
    let (n, c, o) = (x.dims()[0], x.dims()[1], gy.dims()[1]);
    let l = win.positions();
    let cols = unfold(x, win, 0.0)?.reshape_usize(&[n, c * win.taps(), l])?;
    gy.reshape_usize(&[n, o, l])?
        .matmul(&cols.transpose(-1, -2)?)?
        .sum(&[0], false)?
        .reshape_usize(wdims)
}

/// A bias must be `[channels]`.
fn check_bias(op: &'static str, b: &Tensor, channels: usize, out: &[usize]) -> Result<()> {
    if b.dims() != [channels] {
        return Err(Error::shape(
            op,
            format!("bias must be [{channels}]"),
            b.dims(),
            out,
        ));
    }
    Ok(())
}

fn add_bias(op: &'static str, y: Tensor, bias: Option<&Tensor>, channels: usize) -> Result<Tensor> {
    match bias {
        None => Ok(y),
        Some(b) => {
            check_bias(op, b, channels, y.dims())?;
            let mut shape = vec![1; y.rank()];
            shape[1] = channels;
            y.add(&b.reshape_usize(&shape)?)
        }
    }
}

/// Options of [`conv_transpose2d`]; per-dim lists of length 1 apply to both dims.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvTransposeOptions {
    pub stride: Vec<usize>,
    pub padding: Vec<usize>,
    pub output_padding: Vec<usize>,
    pub dilation: Vec<usize>,
    pub groups: usize,
}

impl Default for ConvTransposeOptions {
    fn default() -> Self {
        ConvTransposeOptions {
            stride: vec![1],
            padding: vec![0],
            output_padding: vec![0],
            dilation: vec![1],
            groups: 1,
        }
    }
}

/// Transposed 2-d convolution (the gradient of conv2d with respect to its input): `x`
/// `[N, C_in, H, W]`, `weight` `[C_in, C_out/groups, KH, KW]`, `bias` `[C_out]`.
pub fn conv_transpose2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: &ConvTransposeOptions,
) -> Result<Tensor> {
    let op = "conv_transpose2d";
    same_kind(op, x, weight)?;
    super::float_only(op, x)?;
    if x.rank() != 4 || weight.rank() != 4 {
        return Err(Error::shape(
            op,
            "needs input [N, C_in, H, W] and weight [C_in, C_out/groups, KH, KW]",
            x.dims(),
            weight.dims(),
        ));
    }
    let g = opts.groups;
    let (n, c, h, w) = (x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]);
    let (cw, og) = (weight.dims()[0], weight.dims()[1]);
    if g == 0 || cw != c || c % g != 0 {
        return Err(Error::shape(
            op,
            format!("input has {c} channels, weight expects {cw} (groups = {g})"),
            x.dims(),
            weight.dims(),
        ));
    }
    let (cig, o) = (c / g, og * g);
    let k = [weight.dims()[2], weight.dims()[3]];
    let s = per_dim(op, "stride", &opts.stride, 2)?;
    let p = per_dim(op, "padding", &opts.padding, 2)?;
    let op_ = per_dim(op, "output_padding", &opts.output_padding, 2)?;
    let d = per_dim(op, "dilation", &opts.dilation, 2)?;
    let mut full = [0; 2];
    let mut out = [0; 2];
    for i in 0..2 {
        if s[i] == 0 || d[i] == 0 || k[i] == 0 {
            return Err(Error::invalid(
                op,
                "kernel size, stride and dilation must be at least 1",
            ));
        }
        if op_[i] >= s[i].max(d[i]) {
            return Err(Error::invalid(
                op,
                format!(
                    "output_padding {} must be smaller than stride or dilation",
                    op_[i]
                ),
            ));
        }
        let n_in = [h, w][i];
        full[i] = (n_in - 1) * s[i] + d[i] * (k[i] - 1) + 1 + op_[i];
        out[i] = full[i]
            .checked_sub(2 * p[i])
            .filter(|&v| v > 0)
            .ok_or_else(|| {
                Error::invalid(
                    op,
                    format!(
                        "padding {} leaves no output in dim {i} (full size {})",
                        p[i], full[i]
                    ),
                )
            })?;
    }
    let taps = k[0] * k[1];
    // cols[n, (g, co, kh, kw), (ih, iw)] = Σ_ci weight[ci, co, kh, kw] · x[n, ci, ih, iw]
    let xg = x.reshape_usize(&[n, g, cig, h * w])?;
    let wg = weight
        .reshape_usize(&[g, cig, og * taps])?
        .transpose(-1, -2)?;
    let cols = wg.matmul(&xg)?.reshape_usize(&[n, o * taps * h * w])?;
    let mut idx = Vec::with_capacity(o * taps * h * w);
    for co in 0..o {
        for kh in 0..k[0] {
            for kw in 0..k[1] {
                for ih in 0..h {
                    for iw in 0..w {
                        let (qh, qw) = (ih * s[0] + kh * d[0], iw * s[1] + kw * d[1]);
                        idx.push(((co * full[0] + qh) * full[1] + qw) as i64);
                    }
                }
            }
        }
    }
    let len = idx.len();
    let index = Tensor::from_vec(idx, &[1, len], x.device())?.broadcast_to(&[n, len])?;
    let canvas = Tensor::zeros(&[n, o * full[0] * full[1]], x.dtype(), x.device())?;
    let y = canvas
        .scatter_add(1, &index, &cols)?
        .reshape_usize(&[n, o, full[0], full[1]])?
        .narrow(2, p[0], out[0])?
        .narrow(3, p[1], out[1])?;
    add_bias(op, y, bias, o)
}
