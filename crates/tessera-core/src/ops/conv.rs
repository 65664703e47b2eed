//! Convolutions, built from differentiable primitives so every backend runs them and every
//! order of derivative works:
//!
//! | op | forward | backward (automatic) |
//! | --- | --- | --- |
//! | unfold (im2col) | `gather` of the input at precomputed window positions (a fill value outside) | `scatter_add` into the input (col2im) |
//! | conv2d, one group | [`Backend::conv2d`](crate::Backend::conv2d) (default: unfold, then weight · cols) | `conv2d_input_grad` and `conv2d_weight_grad` of the backend; under `create_graph`, unfold/fold and matmul recorded |
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
    let buf = x.device().backend().unfold2d(x.view(), w, fill)?;
    let out = x.output(buf, &[n, c, w.taps(), w.positions()]);
    let win = *w;
    Ok(out.record_op("unfold", &[x], move |g, _| {
        Ok(vec![Some(fold(g, &win, [h, wd])?)])
    }))
}

/// col2im: columns `[N, C, KH·KW, OH·OW]` summed back into `[N, C, H, W]`.
pub(crate) fn fold(cols: &Tensor, w: &Window, hw: [usize; 2]) -> Result<Tensor> {
    let d = cols.dims();
    let buf = cols.device().backend().fold2d(cols.view(), w, hw)?;
    let out = cols.output(buf, &[d[0], d[1], hw[0], hw[1]]);
    let win = *w;
    Ok(out.record_op("fold", &[cols], move |g, _| {
        Ok(vec![Some(unfold(g, &win, 0.0)?)])
    }))
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
/// in the convolution's last pass where the backend can ([`crate::Backend::conv2d_relu`]).
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
    if g == 1 {
        // One group: the backend's conv2d (a direct kernel where it has one, bias included) as
        // one tape node.
        if let Some(b) = bias {
            check_bias(op, b, o, &[n, o, out[0], out[1]])?;
            same_kind(op, x, b)?;
        }
        let backend = x.device().backend();
        let (xv, wv, bv) = (x.view(), weight.view(), bias.map(|b| b.view()));
        let buf = if relu {
            backend.conv2d_relu(xv, wv, bv, &win)?
        } else {
            backend.conv2d(xv, wv, bv, &win)?
        };
        let y = x.output(buf, &[n, o, out[0], out[1]]);
        // The output is kept for the ReLU's gradient only (a plain convolution's backward
        // does not read it).
        let (xs, ws, yd) = (x.clone(), weight.clone(), relu.then(|| y.detach()));
        let mut inputs = vec![x, weight];
        inputs.extend(bias);
        return Ok(y.record_op(op, &inputs, move |gy, needs| {
            // The ReLU's gradient first (from the output), then the convolution's.
            let gy = match &yd {
                Some(y) => &super::elementwise::relu_grad(gy, y)?,
                None => gy,
            };
            // Both gradients and the bias sum read gy: copy a broadcast seed (the gradient of
            // a sum) or other strided view once, not once per reader.
            let gy = &gy.contiguous()?;
            let mut grads = if crate::tape::is_grad_enabled() {
                conv2d_grads_recorded(&xs, &ws, gy, &win, needs)?
            } else {
                let b = gy.device().backend();
                vec![
                    when(needs[0], || {
                        let buf = b.conv2d_input_grad(gy.view(), ws.view(), &win, sizes)?;
                        Ok(xs.output(buf, xs.dims()))
                    })?,
                    when(needs[1], || {
                        let buf = b.conv2d_weight_grad(xs.view(), gy.view(), &win)?;
                        Ok(ws.output(buf, ws.dims()))
                    })?,
                ]
            };
            if needs.len() == 3 {
                grads.push(when(needs[2], || gy.sum(&[0, 2, 3], false))?);
            }
            Ok(grads)
        }));
    }
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

/// The gradients of a one-group conv2d written with recorded ops (im2col and products), for
/// `backward_create_graph`: gradients of these gradients then follow every dependence.
fn conv2d_grads_recorded(
    x: &Tensor,
    weight: &Tensor,
    gy: &Tensor,
    win: &Window,
    needs: &[bool],
) -> Result<Vec<Option<Tensor>>> {
    let d = x.dims();
    let (n, c, o) = (d[0], d[1], weight.dims()[0]);
    let (ct, l) = (c * win.taps(), win.positions());
    let g3 = gy.reshape_usize(&[n, o, l])?;
    Ok(vec![
        when(needs[0], || {
            let cols = weight.reshape_usize(&[o, ct])?.t()?.matmul(&g3)?;
            fold(
                &cols.reshape_usize(&[n, c, win.taps(), l])?,
                win,
                [d[2], d[3]],
            )
        })?,
        when(needs[1], || {
            let cols = unfold(x, win, 0.0)?.reshape_usize(&[n, ct, l])?;
            g3.matmul(&cols.transpose(-1, -2)?)?
                .sum(&[0], false)?
                .reshape_usize(weight.dims())
        })?,
    ])
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
