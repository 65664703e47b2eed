//! Default bodies of the composite ops of [`Backend`], written with its primitives only.

use super::{Backend, BinaryOp, Buffer, ReduceOp, UnaryOp, View, Window};
use crate::dtype::{DType, HostData};
use crate::error::Result;
use crate::layout::Layout;
use std::sync::Arc;

/// `softmax(x) = exp(x - m) / sum(exp(x - m))` and `log_softmax(x) = x - m - log(sum(exp(x - m)))`
/// with `m` the max along `dim`, so no `exp` overflows.
pub fn softmax<B: Backend + ?Sized>(
    b: &B,
    x: View<'_>,
    dim: usize,
    log: bool,
) -> Result<Arc<dyn Buffer>> {
    let shape = x.layout.shape().to_vec();
    let mut kshape = shape.clone();
    kshape[dim] = 1;
    let klayout = Layout::contiguous(&kshape).broadcast_to(&shape);
    let full = Layout::contiguous(&shape);
    let m = b.reduce(ReduceOp::Max, x, &[dim])?;
    let shifted = b.binary(
        BinaryOp::Sub,
        x,
        View {
            buf: m.as_ref(),
            layout: &klayout,
        },
    )?;
    let e = b.unary(
        UnaryOp::Exp,
        View {
            buf: shifted.as_ref(),
            layout: &full,
        },
    )?;
    let s = b.reduce(
        ReduceOp::Sum,
        View {
            buf: e.as_ref(),
            layout: &full,
        },
        &[dim],
    )?;
    if log {
        let ls = b.unary(
            UnaryOp::Log,
            View {
                buf: s.as_ref(),
                layout: &Layout::contiguous(&kshape),
            },
        )?;
        b.binary(
            BinaryOp::Sub,
            View {
                buf: shifted.as_ref(),
                layout: &full,
            },
            View {
                buf: ls.as_ref(),
                layout: &klayout,
            },
        )
    } else {
        b.binary(
            BinaryOp::Div,
            View {
                buf: e.as_ref(),
                layout: &full,
            },
            View {
                buf: s.as_ref(),
                layout: &klayout,
            },
        )
    }
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

/// Uploads the unfold index as a `[N, L]` view (stride 0 over the batch).
fn index_view<B: Backend + ?Sized>(
    b: &B,
    c: usize,
    h: usize,
    wd: usize,
    w: &Window,
    n: usize,
) -> Result<(Arc<dyn Buffer>, Layout)> {
    let idx = unfold_index(c, h, wd, w);
    let l = idx.len();
    Ok((
        b.upload(HostData::I64(idx))?,
        Layout::new(vec![n, l], vec![0, 1], 0),
    ))
}

/// `unfold2d` from `assemble` (the input plus a fill column per example) and `gather`.
pub fn unfold2d<B: Backend + ?Sized>(
    b: &B,
    x: View<'_>,
    w: &Window,
    fill: f64,
) -> Result<Arc<dyn Buffer>> {
    let s = x.layout.shape();
    let (n, c, h, wd) = (s[0], s[1], s[2], s[3]);
    let row = c * h * wd + 1;
    let region = Layout::new(s.to_vec(), vec![row, h * wd, wd, 1], 0);
    let ext = b.assemble(n * row, x.buf.dtype(), fill, &[(region, x)])?;
    let (idx, il) = index_view(b, c, h, wd, w, n)?;
    let ext_l = Layout::contiguous(&[n, row]);
    b.gather(
        View {
            buf: ext.as_ref(),
            layout: &ext_l,
        },
        1,
        View {
            buf: idx.as_ref(),
            layout: &il,
        },
    )
}

/// `fold2d` from `scatter_add` into the extended rows, then a copy without the fill column.
pub fn fold2d<B: Backend + ?Sized>(
    b: &B,
    cols: View<'_>,
    w: &Window,
    hw: [usize; 2],
) -> Result<Arc<dyn Buffer>> {
    let s = cols.layout.shape();
    let (n, c) = (s[0], s[1]);
    let (h, wd) = (hw[0], hw[1]);
    let row = c * h * wd + 1;
    let l = c * w.taps() * w.positions();
    // The columns as `[N, L]`: a view of contiguous data, else a contiguous copy.
    let copy;
    let (buf, flat) = if cols.layout.is_contiguous() {
        (
            cols.buf,
            Layout::new(vec![n, l], vec![l, 1], cols.layout.offset()),
        )
    } else {
        copy = b.cast(cols, cols.buf.dtype())?;
        (copy.as_ref(), Layout::contiguous(&[n, l]))
    };
    let (idx, il) = index_view(b, c, h, wd, w, n)?;
    let summed = b.scatter_add(
        &[n, row],
        1,
        View {
            buf: idx.as_ref(),
            layout: &il,
        },
        View { buf, layout: &flat },
    )?;
    let body = Layout::new(vec![n, c, h, wd], vec![row, h * wd, wd, 1], 0);
    b.cast(
        View {
            buf: summed.as_ref(),
            layout: &body,
        },
        cols.buf.dtype(),
    )
}

/// `x` as a view with a contiguous layout of `shape` (same element count): the view itself
/// when its layout is contiguous, else a copy kept alive in `hold`.
fn contiguous_as<'a, B: Backend + ?Sized>(
    b: &B,
    x: View<'a>,
    hold: &'a mut Option<Arc<dyn Buffer>>,
    shape: &[usize],
) -> Result<(&'a dyn Buffer, Layout)> {
    let strides = crate::layout::contiguous_strides(shape);
    if x.layout.is_contiguous() {
        return Ok((
            x.buf,
            Layout::new(shape.to_vec(), strides, x.layout.offset()),
        ));
    }
    let copy: &'a Arc<dyn Buffer> = hold.insert(b.cast(x, x.buf.dtype())?);
    Ok((copy.as_ref(), Layout::new(shape.to_vec(), strides, 0)))
}

/// `conv2d` as im2col and a batched product: `weight` `[O, C·taps]` (broadcast over the batch)
/// · `cols` `[N, C·taps, positions]`, then `bias` broadcast over the batch and positions.
pub fn conv2d<B: Backend + ?Sized>(
    b: &B,
    x: View<'_>,
    weight: View<'_>,
    bias: Option<View<'_>>,
    w: &Window,
) -> Result<Arc<dyn Buffer>> {
    let (n, c) = (x.layout.shape()[0], x.layout.shape()[1]);
    let o = weight.layout.shape()[0];
    let (ct, l) = (c * w.taps(), w.positions());
    let cols = b.unfold2d(x, w, 0.0)?;
    let mut hold = None;
    let (wb, wl) = contiguous_as(b, weight, &mut hold, &[1, o, ct])?;
    let y = b.matmul(
        View {
            buf: wb,
            layout: &wl.broadcast_to(&[n, o, ct]),
        },
        View {
            buf: cols.as_ref(),
            layout: &Layout::contiguous(&[n, ct, l]),
        },
    )?;
    match bias {
        None => Ok(y),
        Some(bias) => add_channel_bias(b, view(&y, &Layout::contiguous(&[n, o, l])), bias),
    }
}

/// `y` `[N, O, L]` (any layout) plus `bias` `[O]` broadcast over the batch and positions, into a
/// new contiguous buffer.
pub fn add_channel_bias<B: Backend + ?Sized>(
    b: &B,
    y: View<'_>,
    bias: View<'_>,
) -> Result<Arc<dyn Buffer>> {
    let bl = Layout::new(
        y.layout.shape().to_vec(),
        vec![0, bias.layout.strides()[0], 0],
        bias.layout.offset(),
    );
    b.binary(
        BinaryOp::Add,
        y,
        View {
            buf: bias.buf,
            layout: &bl,
        },
    )
}

/// The input gradient of `conv2d`: `weightᵀ` `[C·taps, O]` · `dy` `[N, O, positions]`, then
/// col2im.
pub fn conv2d_input_grad<B: Backend + ?Sized>(
    b: &B,
    dy: View<'_>,
    weight: View<'_>,
    w: &Window,
    hw: [usize; 2],
) -> Result<Arc<dyn Buffer>> {
    let (n, o) = (dy.layout.shape()[0], dy.layout.shape()[1]);
    let c = weight.layout.shape()[1];
    let (ct, l) = (c * w.taps(), w.positions());
    let (mut hw_, mut hd) = (None, None);
    let (wb, wl) = contiguous_as(b, weight, &mut hw_, &[1, o, ct])?;
    let (db, dl) = contiguous_as(b, dy, &mut hd, &[n, o, l])?;
    let cols = b.matmul(
        View {
            buf: wb,
            layout: &wl.broadcast_to(&[n, o, ct]).permute(&[0, 2, 1]),
        },
        View {
            buf: db,
            layout: &dl,
        },
    )?;
    b.fold2d(
        View {
            buf: cols.as_ref(),
            layout: &Layout::contiguous(&[n, c, w.taps(), l]),
        },
        w,
        hw,
    )
}

/// The weight gradient of `conv2d`: `dy` `[N, O, positions]` · `colsᵀ` `[N, positions, C·taps]`,
/// summed over the batch.
pub fn conv2d_weight_grad<B: Backend + ?Sized>(
    b: &B,
    x: View<'_>,
    dy: View<'_>,
    w: &Window,
) -> Result<Arc<dyn Buffer>> {
    let (n, c) = (x.layout.shape()[0], x.layout.shape()[1]);
    let o = dy.layout.shape()[1];
    let (ct, l) = (c * w.taps(), w.positions());
    let cols = b.unfold2d(x, w, 0.0)?;
    let mut hd = None;
    let (db, dl) = contiguous_as(b, dy, &mut hd, &[n, o, l])?;
    let per_example = b.matmul(
        View {
            buf: db,
            layout: &dl,
        },
        View {
            buf: cols.as_ref(),
            layout: &Layout::contiguous(&[n, ct, l]).permute(&[0, 2, 1]),
        },
    )?;
    b.reduce(
        ReduceOp::Sum,
        View {
            buf: per_example.as_ref(),
            layout: &Layout::contiguous(&[n, o, ct]),
        },
        &[0],
    )
}

/// `max_pool2d` from primitives: columns with -inf outside, then the max over the taps; with
/// `index`, the argmax tap of each window, the value there, and the plane index of that tap
/// read from a `[taps, positions]` table.
pub fn max_pool2d<B: Backend + ?Sized>(
    b: &B,
    x: View<'_>,
    w: &Window,
    index: bool,
) -> Result<super::Pooled> {
    let s = x.layout.shape();
    let (n, c, h, wd) = (s[0], s[1], s[2], s[3]);
    let (taps, l) = (w.taps(), w.positions());
    let cols = b.unfold2d(x, w, f64::NEG_INFINITY)?;
    let cl = Layout::contiguous(&[n, c, taps, l]);
    let cv = View {
        buf: cols.as_ref(),
        layout: &cl,
    };
    if !index {
        return Ok((b.reduce(ReduceOp::Max, cv, &[2])?, None));
    }
    let at = b.reduce(ReduceOp::ArgMax, cv, &[2])?;
    let al = Layout::contiguous(&[n, c, 1, l]);
    let av = View {
        buf: at.as_ref(),
        layout: &al,
    };
    let vals = b.gather(cv, 2, av)?;
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
    let tb = b.upload(HostData::I64(table))?;
    let tl = Layout::new(vec![n, c, taps, l], vec![0, 0, l, 1], 0);
    let idx = b.gather(
        View {
            buf: tb.as_ref(),
            layout: &tl,
        },
        2,
        av,
    )?;
    Ok((vals, Some(idx)))
}

/// A view of a whole buffer with layout `l`.
fn view<'a>(buf: &'a Arc<dyn Buffer>, l: &'a Layout) -> View<'a> {
    View {
        buf: buf.as_ref(),
        layout: l,
    }
}

/// Column block `k` (of width `h`) of a contiguous `[b, 4h]` buffer, as a `[b, h]` view layout.
fn gate_layout(b: usize, h: usize, k: usize) -> Layout {
    Layout::new(vec![b, h], vec![4 * h, 1], k * h)
}

/// `lstm_cell` from primitives: sigmoid and tanh of the whole pre-activation, the four gate
/// blocks assembled from them, then the state update.
pub fn lstm_cell<B: Backend + ?Sized>(
    be: &B,
    x: View<'_>,
    r: View<'_>,
    c: View<'_>,
) -> Result<super::LstmCell> {
    let s = x.layout.shape();
    let (b, h) = (s[0], s[1] / 4);
    let dtype = x.buf.dtype();
    let full = Layout::contiguous(&[b, 4 * h]);
    let z = be.binary(BinaryOp::Add, x, r)?;
    let zv = View {
        buf: z.as_ref(),
        layout: &full,
    };
    let sig = be.unary(UnaryOp::Sigmoid, zv)?;
    let tanh = be.unary(UnaryOp::Tanh, zv)?;
    // Gate k is column block k of both the activations and the assembled result.
    let gl = [0, 1, 2, 3].map(|k| gate_layout(b, h, k));
    let parts: Vec<(Layout, View<'_>)> = (0..4)
        .map(|k| {
            let src = if k == 2 { &tanh } else { &sig };
            (gl[k].clone(), view(src, &gl[k]))
        })
        .collect();
    let act = be.assemble(b * 4 * h, dtype, 0.0, &parts)?;
    let gate = |k: usize| View {
        buf: act.as_ref(),
        layout: &gl[k],
    };
    let hl = Layout::contiguous(&[b, h]);
    let fc = be.binary(BinaryOp::Mul, gate(1), c)?;
    let ig = be.binary(BinaryOp::Mul, gate(0), gate(2))?;
    let c_new = be.binary(BinaryOp::Add, view(&fc, &hl), view(&ig, &hl))?;
    let tanh_c = be.unary(UnaryOp::Tanh, view(&c_new, &hl))?;
    let h_new = be.binary(BinaryOp::Mul, gate(3), view(&tanh_c, &hl))?;
    Ok([act, c_new, tanh_c, h_new])
}

/// `lstm_cell_backward` from primitives.
pub fn lstm_cell_backward<B: Backend + ?Sized>(
    be: &B,
    act: View<'_>,
    c_prev: View<'_>,
    tanh_c: View<'_>,
    dh: View<'_>,
    dc: View<'_>,
) -> Result<[Arc<dyn Buffer>; 2]> {
    let s = act.layout.shape();
    let (b, h) = (s[0], s[1] / 4);
    let dtype = act.buf.dtype();
    let al: [Layout; 4] = [0, 1, 2, 3].map(|k| {
        let l = act.layout;
        Layout::new(
            vec![b, h],
            l.strides().to_vec(),
            l.offset() + k * h * l.strides()[1],
        )
    });
    let gate = |k: usize| View {
        buf: act.buf,
        layout: &al[k],
    };
    let hl = Layout::contiguous(&[b, h]);
    let mul = |a: View<'_>, c: View<'_>| be.binary(BinaryOp::Mul, a, c);
    // σ'(a) = a·(1 - a), tanh'(a) = 1 - a² for an activation value a.
    let one_minus = |a: View<'_>| -> Result<Arc<dyn Buffer>> {
        let neg = be.unary(UnaryOp::Neg, a)?;
        be.unary(UnaryOp::AddScalar(1.0), view(&neg, &hl))
    };
    let sig_d = |a: View<'_>| -> Result<Arc<dyn Buffer>> { mul(a, view(&one_minus(a)?, &hl)) };
    let tanh_d = |a: View<'_>| -> Result<Arc<dyn Buffer>> { one_minus(view(&mul(a, a)?, &hl)) };
    // dc_total = dc + dh·o·(1 - tanh(c')²)
    let dho = mul(dh, gate(3))?;
    let dtc = tanh_d(tanh_c)?;
    let through_h = mul(view(&dho, &hl), view(&dtc, &hl))?;
    let dc_t = be.binary(BinaryOp::Add, dc, view(&through_h, &hl))?;
    let dct = view(&dc_t, &hl);
    let (di, df, dg, d_o) = (
        sig_d(gate(0))?,
        sig_d(gate(1))?,
        tanh_d(gate(2))?,
        sig_d(gate(3))?,
    );
    let (ai, af, ag, ao) = (
        mul(dct, gate(2))?,
        mul(dct, c_prev)?,
        mul(dct, gate(0))?,
        mul(dh, tanh_c)?,
    );
    let dzi = mul(view(&ai, &hl), view(&di, &hl))?;
    let dzf = mul(view(&af, &hl), view(&df, &hl))?;
    let dzg = mul(view(&ag, &hl), view(&dg, &hl))?;
    let dzo = mul(view(&ao, &hl), view(&d_o, &hl))?;
    let dst: [Layout; 4] = [0, 1, 2, 3].map(|k| gate_layout(b, h, k));
    let dz = be.assemble(
        b * 4 * h,
        dtype,
        0.0,
        &[
            (dst[0].clone(), view(&dzi, &hl)),
            (dst[1].clone(), view(&dzf, &hl)),
            (dst[2].clone(), view(&dzg, &hl)),
            (dst[3].clone(), view(&dzo, &hl)),
        ],
    )?;
    let dc_prev = mul(dct, gate(1))?;
    Ok([dz, dc_prev])
}

/// `conv2d_relu` as the backend's `conv2d` and a relu.
pub fn conv2d_relu<B: Backend + ?Sized>(
    be: &B,
    x: View<'_>,
    weight: View<'_>,
    bias: Option<View<'_>>,
    w: &Window,
) -> Result<Arc<dyn Buffer>> {
    let y = be.conv2d(x, weight, bias, w)?;
    let l = Layout::contiguous(&[y.len()]);
    be.unary(UnaryOp::Relu, view(&y, &l))
}

/// `add_relu` as an add and a relu.
pub fn add_relu<B: Backend + ?Sized>(be: &B, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
    let sum = be.binary(BinaryOp::Add, a, b)?;
    let l = Layout::contiguous(a.layout.shape());
    be.unary(UnaryOp::Relu, view(&sum, &l))
}

/// `relu_backward` as a mask (`1 - (y <= 0)`, against a broadcast zero) and a product.
pub fn relu_backward<B: Backend + ?Sized>(
    be: &B,
    dy: View<'_>,
    y: View<'_>,
) -> Result<Arc<dyn Buffer>> {
    let shape = y.layout.shape();
    let zero = be.fill(1, y.buf.dtype(), 0.0)?;
    let lz = Layout::new(shape.to_vec(), vec![0; shape.len()], 0);
    // 1 - (y <= 0), not (y > 0): a NaN output passes its gradient on, as in PyTorch.
    let lm = Layout::contiguous(shape);
    let le = be.binary(BinaryOp::Le, y, view(&zero, &lz))?;
    let mask = be.unary(UnaryOp::MulScalar(-1.0), view(&le, &lm))?;
    let mask = be.unary(UnaryOp::AddScalar(1.0), view(&mask, &lm))?;
    be.binary(BinaryOp::Mul, dy, view(&mask, &lm))
}

/// `add_scaled` as a scaled copy of `b` and an add.
pub fn add_scaled<B: Backend + ?Sized>(
    be: &B,
    a: View<'_>,
    alpha: f64,
    b: View<'_>,
) -> Result<Arc<dyn Buffer>> {
    let scaled = be.unary(UnaryOp::MulScalar(alpha), b)?;
    let l = Layout::contiguous(b.layout.shape());
    be.binary(BinaryOp::Add, a, view(&scaled, &l))
}

/// `where(target == ignore_index, 0, target)`: indices every row can gather at, and `ignored`
/// (i64 0/1), both `[M]`.
fn safe_targets<B: Backend + ?Sized>(
    be: &B,
    target: View<'_>,
    ignore_index: i64,
) -> Result<[Arc<dyn Buffer>; 2]> {
    let m = target.layout.shape()[0];
    let bcast = Layout::new(vec![m], vec![0], 0);
    let ign = be.fill(1, DType::I64, ignore_index as f64)?;
    let ignored = be.binary(BinaryOp::Eq, target, view(&ign, &bcast))?;
    let zero = be.fill(1, DType::I64, 0.0)?;
    let rows = Layout::contiguous(&[m]);
    let safe = be.where_cond(view(&ignored, &rows), view(&zero, &bcast), target)?;
    Ok([safe, ignored])
}

/// `cross_entropy` from primitives: `softmax` (log), the targets' log-probabilities gathered,
/// then the smoothing term and the weights elementwise.
pub fn cross_entropy<B: Backend + ?Sized>(
    be: &B,
    x: View<'_>,
    target: View<'_>,
    label_smoothing: f64,
    ignore_index: i64,
) -> Result<[Arc<dyn Buffer>; 3]> {
    let s = x.layout.shape();
    let (m, c) = (s[0], s[1]);
    let dtype = x.buf.dtype();
    let (rows, full) = (Layout::contiguous(&[m]), Layout::contiguous(&[m, c]));
    let bcast = Layout::new(vec![m], vec![0], 0);
    let lp = be.softmax(x, 1, true)?;
    let [safe, ignored] = safe_targets(be, target, ignore_index)?;
    let col = Layout::contiguous(&[m, 1]);
    let picked = be.gather(view(&lp, &full), 1, view(&safe, &col))?;
    let ignored = be.cast(view(&ignored, &rows), dtype)?;
    let one = be.fill(1, dtype, 1.0)?;
    let w = be.binary(BinaryOp::Sub, view(&one, &bcast), view(&ignored, &rows))?;
    // -(1 - ε)·lp[t] - (ε / C)·Σ_c lp[c], then the weight.
    let coef = be.fill(1, dtype, -(1.0 - label_smoothing))?;
    let mut loss = be.binary(BinaryOp::Mul, view(&picked, &rows), view(&coef, &bcast))?;
    if label_smoothing > 0.0 {
        let total = be.reduce(ReduceOp::Sum, view(&lp, &full), &[1])?;
        let k = be.fill(1, dtype, -label_smoothing / c as f64)?;
        let smooth = be.binary(BinaryOp::Mul, view(&total, &rows), view(&k, &bcast))?;
        loss = be.binary(BinaryOp::Add, view(&loss, &rows), view(&smooth, &rows))?;
    }
    let loss = be.binary(BinaryOp::Mul, view(&loss, &rows), view(&w, &rows))?;
    Ok([loss, lp, w])
}

/// `cross_entropy_backward` from primitives: `exp(lp) - ε / C`, the scaled one-hot of the
/// targets subtracted (a scatter), times `g·w` per row.
pub fn cross_entropy_backward<B: Backend + ?Sized>(
    be: &B,
    lp: View<'_>,
    target: View<'_>,
    w: View<'_>,
    g: View<'_>,
    label_smoothing: f64,
    ignore_index: i64,
) -> Result<Arc<dyn Buffer>> {
    let s = lp.layout.shape();
    let (m, c) = (s[0], s[1]);
    let dtype = lp.buf.dtype();
    let full = Layout::contiguous(&[m, c]);
    let mut p = be.unary(UnaryOp::Exp, lp)?;
    if label_smoothing > 0.0 {
        let k = be.fill(1, dtype, label_smoothing / c as f64)?;
        let kb = Layout::new(vec![m, c], vec![0, 0], 0);
        p = be.binary(BinaryOp::Sub, view(&p, &full), view(&k, &kb))?;
    }
    let [safe, _] = safe_targets(be, target, ignore_index)?;
    let col = Layout::contiguous(&[m, 1]);
    let coef = be.fill(1, dtype, 1.0 - label_smoothing)?;
    let coef_col = Layout::new(vec![m, 1], vec![0, 0], 0);
    let hot = be.scatter_add(&[m, c], 1, view(&safe, &col), view(&coef, &coef_col))?;
    let diff = be.binary(BinaryOp::Sub, view(&p, &full), view(&hot, &full))?;
    let gw = be.binary(BinaryOp::Mul, g, w)?;
    let per_row = Layout::new(vec![m, c], vec![1, 0], 0);
    be.binary(BinaryOp::Mul, view(&diff, &full), view(&gw, &per_row))
}
