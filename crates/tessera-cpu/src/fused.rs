//! The CPU's fused kernels ([`FusedKernels`]): each method says which operands its kernel
//! takes and declines (`Ok(None)`) the rest, which core then composes. The convolutions are
//! planned in [`crate::conv`].

use crate::dispatch::{out, typed};
use crate::kernels::elementwise::{gelu, gelu_grad, relu, relu_grad};
use crate::kernels::{self, conv as cv, reduce as rd, rnn, Float};
use crate::{CpuBackend, CpuBuffer, CpuStorage};
use std::sync::Arc;
use tessera_core::backend::{Attention, LstmCell, LstmSequence, LstmSequenceGrads, Pooled};
use tessera_core::{Backend, Buffer, DType, Error, FusedKernels, Layout, Result, View, Window};

/// A new buffer, or `None` to decline.
type Fused = Result<Option<Arc<dyn Buffer>>>;

impl FusedKernels for CpuBackend {
    fn attention(&self, a: &Attention<'_>) -> Result<Option<[Arc<dyn Buffer>; 2]>> {
        match a.q.buf.dtype() {
            DType::F32 => self.attention_typed::<f32>(a),
            DType::F64 => self.attention_typed::<f64>(a),
            _ => Ok(None),
        }
    }

    fn attention_backward(
        &self,
        a: &Attention<'_>,
        out: View<'_>,
        lse: View<'_>,
        dout: View<'_>,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        match a.q.buf.dtype() {
            DType::F32 => self.attention_backward_typed::<f32>(a, out, lse, dout),
            DType::F64 => self.attention_backward_typed::<f64>(a, out, lse, dout),
            _ => Ok(None),
        }
    }

    fn argsort(&self, x: View<'_>, descending: bool) -> Fused {
        let l = x.layout;
        if !l.is_contiguous() || l.numel() == 0 || x.buf.dtype() == DType::Bool {
            return Ok(None);
        }
        let n = l.shape()[l.rank() - 1];
        let r = l.offset()..l.offset() + l.numel();
        with_dtype!(x.buf.dtype(), "argsort", |T| out(
            kernels::sort::argsort_rows(&typed::<T>("argsort", x)?[r], n, descending)
        ))
        .map(Some)
    }

    fn softmax(&self, x: View<'_>, dim: usize, log: bool) -> Fused {
        let l = x.layout;
        if dim + 1 != l.rank() || !l.is_contiguous() || l.numel() == 0 {
            return Ok(None);
        }
        self.softmax_rows(x, log).map(Some)
    }

    fn unfold2d(&self, x: View<'_>, w: &Window, fill: f64) -> Fused {
        // Empty operands go to the composite (the kernels split work by non-zero sizes).
        if !x.buf.dtype().is_float() || x.layout.numel() == 0 || w.positions() == 0 {
            return Ok(None);
        }
        self.unfold_rows(x, w, fill).map(Some)
    }

    fn fold2d(&self, cols: View<'_>, w: &Window, hw: [usize; 2]) -> Fused {
        if !cols.buf.dtype().is_float() || cols.layout.numel() == 0 || hw.contains(&0) {
            return Ok(None);
        }
        self.fold_rows(cols, w, hw).map(Some)
    }

    fn max_pool2d(&self, x: View<'_>, w: &Window, index: bool) -> Result<Option<Pooled>> {
        let s = x.layout.shape();
        let empty = x.layout.numel() == 0 || w.positions() == 0;
        if !matches!(x.buf.dtype(), DType::F32 | DType::F64) || !x.layout.is_contiguous() || empty {
            return Ok(None);
        }
        let r = x.layout.offset()..x.layout.offset() + x.layout.numel();
        with_dtype!(float x.buf.dtype(), "max_pool2d", |T| {
            let (v, i) =
                cv::max_pool(&typed::<T>("max_pool2d", x)?[r], s[0] * s[1], [s[2], s[3]], w, index);
            Ok(Some((out(v)?, i.map(out).transpose()?)))
        })
    }

    fn add_scaled(&self, a: View<'_>, alpha: f64, b: View<'_>) -> Fused {
        match a.buf.dtype() {
            DType::F32 => {
                let al = alpha as f32;
                self.map2_typed::<f32>("add_scaled", a, b, move |x, y| x + al * y)
            }
            DType::F64 => self.map2_typed::<f64>("add_scaled", a, b, move |x, y| x + alpha * y),
            _ => return Ok(None),
        }
        .map(Some)
    }

    fn add_relu(&self, a: View<'_>, b: View<'_>) -> Fused {
        match a.buf.dtype() {
            DType::F32 => self.map2_typed::<f32>("add_relu", a, b, |x, y| relu(x + y)),
            DType::F64 => self.map2_typed::<f64>("add_relu", a, b, |x, y| relu(x + y)),
            _ => return Ok(None),
        }
        .map(Some)
    }

    fn relu_backward(&self, dy: View<'_>, y: View<'_>) -> Fused {
        match dy.buf.dtype() {
            DType::F32 => self.map2_typed::<f32>("relu_backward", dy, y, relu_grad),
            DType::F64 => self.map2_typed::<f64>("relu_backward", dy, y, relu_grad),
            _ => return Ok(None),
        }
        .map(Some)
    }

    fn matmul_add(&self, a: View<'_>, b: View<'_>, c: View<'_>) -> Fused {
        let op = "matmul_add";
        match a.buf.dtype() {
            DType::F32 => out(kernels::matmul::matmul_add_f32(
                typed(op, a)?,
                a.layout,
                typed(op, b)?,
                b.layout,
                typed(op, c)?,
                c.layout,
            )),
            DType::F64 => out(kernels::matmul::matmul_add_f64(
                typed(op, a)?,
                a.layout,
                typed(op, b)?,
                b.layout,
                typed(op, c)?,
                c.layout,
            )),
            _ => return Ok(None),
        }
        .map(Some)
    }

    fn gelu(&self, x: View<'_>, tanh_form: bool) -> Fused {
        match x.buf.dtype() {
            DType::F32 => {
                let v = typed::<f32>("gelu", x)?;
                match kernels::vmath::gelu(v, x.layout, tanh_form) {
                    Some(o) => out(o),
                    None => out(kernels::map1(v, x.layout, move |v| gelu(v, tanh_form))),
                }
            }
            DType::F64 => out(kernels::map1(
                typed::<f64>("gelu", x)?,
                x.layout,
                move |v| gelu(v, tanh_form),
            )),
            _ => return Ok(None),
        }
        .map(Some)
    }

    fn gelu_backward(&self, dy: View<'_>, x: View<'_>, tanh_form: bool) -> Fused {
        let op = "gelu_backward";
        match dy.buf.dtype() {
            DType::F32 => {
                let (g, v) = (typed::<f32>(op, dy)?, typed::<f32>(op, x)?);
                match kernels::vmath::gelu_backward(g, dy.layout, v, x.layout, tanh_form) {
                    Some(o) => out(o),
                    None => {
                        self.map2_typed::<f32>(op, dy, x, move |g, v| gelu_grad(g, v, tanh_form))
                    }
                }
            }
            DType::F64 => self.map2_typed::<f64>(op, dy, x, move |g, v| gelu_grad(g, v, tanh_form)),
            _ => return Ok(None),
        }
        .map(Some)
    }

    fn scale_add_in_place(
        &self,
        dst: &mut dyn Buffer,
        layout: &Layout,
        beta: f64,
        alpha: f64,
        src: View<'_>,
    ) -> Result<Option<()>> {
        if !layout.is_contiguous() || src.layout.shape() != layout.shape() {
            return Ok(None);
        }
        let Some(dst) = dst.as_any_mut().and_then(|a| a.downcast_mut::<CpuBuffer>()) else {
            return Ok(None);
        };
        let r = layout.offset()..layout.offset() + layout.numel();
        match (&mut dst.data, src.buf.dtype()) {
            (CpuStorage::F32(d), DType::F32) => {
                let (b, a) = (beta as f32, alpha as f32);
                let s = typed::<f32>("scale_add_", src)?;
                kernels::update2(&mut d[r], s, src.layout, move |x, y| b * x + a * y);
            }
            (CpuStorage::F64(d), DType::F64) => {
                let s = typed::<f64>("scale_add_", src)?;
                kernels::update2(&mut d[r], s, src.layout, move |x, y| beta * x + alpha * y);
            }
            _ => return Ok(None),
        }
        Ok(Some(()))
    }

    fn batch_norm_train(
        &self,
        x: View<'_>,
        weight: Option<View<'_>>,
        bias: Option<View<'_>>,
        eps: f64,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        let Some(d) = norm_dims(x) else {
            return Ok(None);
        };
        let (mut hx, mut hw, mut hb) = (None, None, None);
        with_dtype!(float x.buf.dtype(), "batch_norm", |T| {
            let xs = self.rows::<T>("batch_norm", x, &mut hx)?;
            let ws = weight.map(|w| self.rows::<T>("batch_norm", w, &mut hw)).transpose()?;
            let bs = bias.map(|b| self.rows::<T>("batch_norm", b, &mut hb)).transpose()?;
            let (y, mean, var) = kernels::norm::train(xs, d, ws, bs, eps);
            Ok(Some([out(y)?, out(mean)?, out(var)?]))
        })
    }

    fn batch_norm_eval(
        &self,
        x: View<'_>,
        mean: View<'_>,
        var: View<'_>,
        weight: Option<View<'_>>,
        bias: Option<View<'_>>,
        eps: f64,
    ) -> Fused {
        let Some(d) = norm_dims(x) else {
            return Ok(None);
        };
        let (mut hx, mut hm, mut hv, mut hw, mut hb) = (None, None, None, None, None);
        with_dtype!(float x.buf.dtype(), "batch_norm", |T| {
            let op = "batch_norm";
            let xs = self.rows::<T>(op, x, &mut hx)?;
            let ms = self.rows::<T>(op, mean, &mut hm)?;
            let vs = self.rows::<T>(op, var, &mut hv)?;
            let ws = weight.map(|w| self.rows::<T>(op, w, &mut hw)).transpose()?;
            let bs = bias.map(|b| self.rows::<T>(op, b, &mut hb)).transpose()?;
            Ok(Some(out(kernels::norm::eval(xs, d, ms, vs, ws, bs, eps))?))
        })
    }

    fn batch_norm_backward(
        &self,
        x: View<'_>,
        dy: View<'_>,
        mean: View<'_>,
        var: View<'_>,
        weight: Option<View<'_>>,
        eps: f64,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        let Some(d) = norm_dims(x) else {
            return Ok(None);
        };
        let (mut hx, mut hd, mut hm, mut hv, mut hw) = (None, None, None, None, None);
        with_dtype!(float x.buf.dtype(), "batch_norm_backward", |T| {
            let op = "batch_norm_backward";
            let xs = self.rows::<T>(op, x, &mut hx)?;
            let ds = self.rows::<T>(op, dy, &mut hd)?;
            let ms = self.rows::<T>(op, mean, &mut hm)?;
            let vs = self.rows::<T>(op, var, &mut hv)?;
            let ws = weight.map(|w| self.rows::<T>(op, w, &mut hw)).transpose()?;
            let (dx, dw, db) = kernels::norm::backward(xs, ds, d, ms, vs, ws, eps);
            Ok(Some([out(dx)?, out(dw)?, out(db)?]))
        })
    }

    fn layer_norm(
        &self,
        x: View<'_>,
        d: usize,
        weight: Option<View<'_>>,
        bias: Option<View<'_>>,
        eps: f64,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        // Half types decline: their statistics would be stored in the half type (PyTorch
        // keeps them in f32), and the composite then runs in f32 per op.
        if d == 0
            || !x.layout.numel().is_multiple_of(d)
            || !matches!(x.buf.dtype(), DType::F32 | DType::F64)
        {
            return Ok(None);
        }
        let (mut hx, mut hw, mut hb) = (None, None, None);
        with_dtype!(float x.buf.dtype(), "layer_norm", |T| {
            let xs = self.rows::<T>("layer_norm", x, &mut hx)?;
            let ws = weight.map(|w| self.rows::<T>("layer_norm", w, &mut hw)).transpose()?;
            let bs = bias.map(|b| self.rows::<T>("layer_norm", b, &mut hb)).transpose()?;
            let (y, mean, rstd) = kernels::norm::layer_train(xs, d, ws, bs, eps);
            Ok(Some([out(y)?, out(mean)?, out(rstd)?]))
        })
    }

    fn layer_norm_backward(
        &self,
        x: View<'_>,
        dy: View<'_>,
        mean: View<'_>,
        rstd: View<'_>,
        weight: Option<View<'_>>,
        d: usize,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        // Half types decline: their statistics would be stored in the half type (PyTorch
        // keeps them in f32), and the composite then runs in f32 per op.
        if d == 0
            || !x.layout.numel().is_multiple_of(d)
            || !matches!(x.buf.dtype(), DType::F32 | DType::F64)
        {
            return Ok(None);
        }
        let (mut hx, mut hd, mut hm, mut hr, mut hw) = (None, None, None, None, None);
        with_dtype!(float x.buf.dtype(), "layer_norm_backward", |T| {
            let op = "layer_norm_backward";
            let xs = self.rows::<T>(op, x, &mut hx)?;
            let ds = self.rows::<T>(op, dy, &mut hd)?;
            let ms = self.rows::<T>(op, mean, &mut hm)?;
            let rs = self.rows::<T>(op, rstd, &mut hr)?;
            let ws = weight.map(|w| self.rows::<T>(op, w, &mut hw)).transpose()?;
            let (dx, dw, db) = kernels::norm::layer_backward(xs, ds, d, ms, rs, ws);
            Ok(Some([out(dx)?, out(dw)?, out(db)?]))
        })
    }

    fn cross_entropy(
        &self,
        x: View<'_>,
        target: View<'_>,
        label_smoothing: f64,
        ignore_index: i64,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        let v = [x, target];
        match x.buf.dtype() {
            DType::F32 => self.cross_entropy_typed::<f32>(v, label_smoothing, ignore_index),
            DType::F64 => self.cross_entropy_typed::<f64>(v, label_smoothing, ignore_index),
            _ => return Ok(None),
        }
        .map(Some)
    }

    fn cross_entropy_backward(
        &self,
        lp: View<'_>,
        target: View<'_>,
        w: View<'_>,
        g: View<'_>,
        label_smoothing: f64,
        _ignore_index: i64,
    ) -> Fused {
        let v = [lp, target, w, g];
        match lp.buf.dtype() {
            DType::F32 => self.cross_entropy_backward_typed::<f32>(v, label_smoothing),
            DType::F64 => self.cross_entropy_backward_typed::<f64>(v, label_smoothing),
            _ => return Ok(None),
        }
        .map(Some)
    }

    fn lstm_cell(&self, x: View<'_>, r: View<'_>, c: View<'_>) -> Result<Option<LstmCell>> {
        if c.layout.numel() == 0 {
            return Ok(None);
        }
        match x.buf.dtype() {
            DType::F32 => self.lstm_cell_typed::<f32>(x, r, c),
            DType::F64 => self.lstm_cell_typed::<f64>(x, r, c),
            _ => return Ok(None),
        }
        .map(Some)
    }

    fn lstm_cell_backward(
        &self,
        act: View<'_>,
        c_prev: View<'_>,
        tanh_c: View<'_>,
        dh: View<'_>,
        dc: View<'_>,
    ) -> Result<Option<[Arc<dyn Buffer>; 2]>> {
        if c_prev.layout.numel() == 0 {
            return Ok(None);
        }
        let v = [act, c_prev, tanh_c, dh, dc];
        match act.buf.dtype() {
            DType::F32 => self.lstm_backward_typed::<f32>(v),
            DType::F64 => self.lstm_backward_typed::<f64>(v),
            _ => return Ok(None),
        }
        .map(Some)
    }

    fn lstm_sequence(
        &self,
        xp: View<'_>,
        bias: Option<View<'_>>,
        w_t: View<'_>,
        h0: View<'_>,
        c0: View<'_>,
        reverse: bool,
    ) -> Result<Option<LstmSequence>> {
        let (x, h) = (xp.layout.shape(), h0.layout.shape());
        // The shapes core's LSTM passes; anything else (or an empty sequence) takes the steps.
        let fits = x.len() == 3
            && h.len() == 2
            && x[0] * h[0] * h[1] > 0
            && x[1..] == [h[0], 4 * h[1]]
            && w_t.layout.shape() == [h[1], 4 * h[1]]
            && c0.layout.shape() == h
            && bias
                .is_none_or(|b| b.layout.shape() == [4 * h[1]] && b.buf.dtype() == xp.buf.dtype());
        let v = [xp, w_t, h0, c0];
        match xp.buf.dtype() {
            _ if !fits || v.iter().any(|v| v.buf.dtype() != xp.buf.dtype()) => Ok(None),
            DType::F32 => self.lstm_sequence_typed::<f32>(v, bias, reverse).map(Some),
            DType::F64 => self.lstm_sequence_typed::<f64>(v, bias, reverse).map(Some),
            _ => Ok(None),
        }
    }

    fn lstm_sequence_backward(
        &self,
        w_hh: View<'_>,
        act: View<'_>,
        c_prev: View<'_>,
        tanh_c: View<'_>,
        grad: View<'_>,
        reverse: bool,
        need_h0: bool,
        need_bias: bool,
    ) -> Result<Option<LstmSequenceGrads>> {
        let s = c_prev.layout.shape();
        let fits = s.len() == 3
            && s.iter().product::<usize>() > 0
            && w_hh.layout.shape() == [4 * s[2], s[2]]
            && act.layout.shape() == [s[0], s[1], 4 * s[2]]
            && tanh_c.layout.shape() == s
            && grad.layout.shape() == [s[0] + 1, s[1], s[2]];
        let v = [w_hh, act, c_prev, tanh_c, grad];
        let needs = [need_h0, need_bias];
        match act.buf.dtype() {
            _ if !fits || v.iter().any(|v| v.buf.dtype() != act.buf.dtype()) => Ok(None),
            DType::F32 => self
                .lstm_sequence_backward_typed::<f32>(v, reverse, needs)
                .map(Some),
            DType::F64 => self
                .lstm_sequence_backward_typed::<f64>(v, reverse, needs)
                .map(Some),
            _ => Ok(None),
        }
    }

    fn conv2d(
        &self,
        x: View<'_>,
        weight: View<'_>,
        bias: Option<View<'_>>,
        w: &Window,
        relu: bool,
    ) -> Fused {
        self.conv2d_planned(x, weight, bias, w, relu)
    }

    fn conv2d_input_grad(
        &self,
        dy: View<'_>,
        weight: View<'_>,
        w: &Window,
        hw: [usize; 2],
    ) -> Fused {
        self.conv2d_input_grad_planned(dy, weight, w, hw)
    }

    fn conv2d_weight_grad(&self, x: View<'_>, dy: View<'_>, w: &Window) -> Fused {
        self.conv2d_weight_grad_planned(x, dy, w)
    }
}

/// `x` `[N, C, ...]` as `[outer, C, inner]` for the batch-norm kernels, when they take it
/// (rank ≥ 2, f32 or f64; the kernels decline anything else).
fn norm_dims(x: View<'_>) -> Option<kernels::norm::Dims> {
    let shape = x.layout.shape();
    let typed = matches!(x.buf.dtype(), DType::F32 | DType::F64);
    (typed && shape.len() >= 2).then(|| [shape[0], shape[1], shape[2..].iter().product()])
}

/// The kernels' typed bodies (operand checks are the trait methods').
impl CpuBackend {
    /// Softmax over the contiguous last dim of `x` (half types through f32).
    fn softmax_rows(&self, x: View<'_>, log: bool) -> Result<Arc<dyn Buffer>> {
        if x.buf.dtype().is_half() {
            return self.via_f32(x, |v| self.softmax_rows(v, log));
        }
        let l = x.layout;
        let n = l.shape()[l.rank() - 1];
        let r = l.offset()..l.offset() + l.numel();
        with_dtype!(float x.buf.dtype(), "softmax", |T| out(rd::softmax_rows(&typed::<T>("softmax", x)?[r], n, log)))
    }

    /// im2col of `x` (copied first when strided).
    fn unfold_rows(&self, x: View<'_>, w: &Window, fill: f64) -> Result<Arc<dyn Buffer>> {
        let s = x.layout.shape();
        // (An empty layout need not pass is_contiguous, and its copy would not either.)
        if !x.layout.is_contiguous() && x.layout.numel() > 0 {
            let copy = self.cast(x, x.buf.dtype())?;
            let l = Layout::contiguous(s);
            return self.unfold_rows(
                View {
                    buf: copy.as_ref(),
                    layout: &l,
                },
                w,
                fill,
            );
        }
        let r = x.layout.offset()..x.layout.offset() + x.layout.numel();
        with_dtype!(float x.buf.dtype(), "unfold2d", |T| {
            out(cv::unfold(&typed::<T>("unfold2d", x)?[r], s[0] * s[1], [s[2], s[3]], w, <T as crate::buffer::CpuElem>::from_f64(fill)))
        })
    }

    /// col2im of `cols` (copied first when strided; half types accumulate in f32).
    fn fold_rows(&self, cols: View<'_>, w: &Window, hw: [usize; 2]) -> Result<Arc<dyn Buffer>> {
        let s = cols.layout.shape();
        if !cols.layout.is_contiguous() && cols.layout.numel() > 0 {
            let copy = self.cast(cols, cols.buf.dtype())?;
            let l = Layout::contiguous(s);
            return self.fold_rows(
                View {
                    buf: copy.as_ref(),
                    layout: &l,
                },
                w,
                hw,
            );
        }
        if cols.buf.dtype().is_half() {
            return self.via_f32(cols, |c| self.fold_rows(c, w, hw));
        }
        let r = cols.layout.offset()..cols.layout.offset() + cols.layout.numel();
        with_dtype!(float cols.buf.dtype(), "fold2d", |T| out(cv::fold(&typed::<T>("fold2d", cols)?[r], s[0] * s[1], hw, w)))
    }
}

/// The LSTM and cross-entropy kernels, per dtype.
impl CpuBackend {
    fn lstm_cell_typed<T: rnn::CellMath>(
        &self,
        x: View<'_>,
        r: View<'_>,
        c: View<'_>,
    ) -> Result<LstmCell> {
        let s = c.layout.shape();
        let (mut hx, mut hr, mut hc) = (None, None, None);
        let [a, cn, tc, hn] = rnn::lstm_cell(
            self.rows::<T>("lstm_cell", x, &mut hx)?,
            self.rows::<T>("lstm_cell", r, &mut hr)?,
            self.rows::<T>("lstm_cell", c, &mut hc)?,
            s[0],
            s[1],
        );
        Ok([out(a)?, out(cn)?, out(tc)?, out(hn)?])
    }

    /// `v` = [act, c_prev, tanh_c, dh, dc].
    fn lstm_backward_typed<T: Float>(&self, v: [View<'_>; 5]) -> Result<[Arc<dyn Buffer>; 2]> {
        let s = v[1].layout.shape();
        let mut hold: [Option<Arc<dyn Buffer>>; 5] = Default::default();
        let [h0, h1, h2, h3, h4] = &mut hold;
        let [dz, dcp] = rnn::lstm_cell_backward(
            self.rows::<T>("lstm_cell_backward", v[0], h0)?,
            self.rows::<T>("lstm_cell_backward", v[1], h1)?,
            self.rows::<T>("lstm_cell_backward", v[2], h2)?,
            self.rows::<T>("lstm_cell_backward", v[3], h3)?,
            self.rows::<T>("lstm_cell_backward", v[4], h4)?,
            s[0],
            s[1],
        );
        Ok([out(dz)?, out(dcp)?])
    }

    /// `v` = [x, target].
    fn cross_entropy_typed<T: kernels::Float>(
        &self,
        v: [View<'_>; 2],
        label_smoothing: f64,
        ignore_index: i64,
    ) -> Result<[Arc<dyn Buffer>; 3]> {
        let op = "cross_entropy";
        let c = v[0].layout.shape()[1];
        let (mut h0, mut h1) = (None, None);
        let (x, t) = (
            self.rows::<T>(op, v[0], &mut h0)?,
            self.rows::<i64>(op, v[1], &mut h1)?,
        );
        match rd::cross_entropy(x, t, c, label_smoothing, ignore_index) {
            Ok([loss, lp, w]) => Ok([out(loss)?, out(lp)?, out(w)?]),
            Err(index) => Err(Error::IndexOutOfRange {
                op,
                index,
                dim: 1,
                size: c,
            }),
        }
    }

    /// `v` = [lp, target, w, g].
    fn cross_entropy_backward_typed<T: kernels::Float>(
        &self,
        v: [View<'_>; 4],
        label_smoothing: f64,
    ) -> Result<Arc<dyn Buffer>> {
        let op = "cross_entropy_backward";
        let c = v[0].layout.shape()[1];
        let mut hold: [Option<Arc<dyn Buffer>>; 4] = Default::default();
        let [h0, h1, h2, h3] = &mut hold;
        out(rd::cross_entropy_backward(
            self.rows::<T>(op, v[0], h0)?,
            self.rows::<i64>(op, v[1], h1)?,
            self.rows::<T>(op, v[2], h2)?,
            self.rows::<T>(op, v[3], h3)?,
            c,
            label_smoothing,
        ))
    }

    /// `v` = [xp, w_t, h0, c0].
    fn lstm_sequence_typed<T: rnn::SeqFloat>(
        &self,
        v: [View<'_>; 4],
        bias: Option<View<'_>>,
        reverse: bool,
    ) -> Result<LstmSequence> {
        let (xs, hs) = (v[0].layout.shape(), v[2].layout.shape());
        let mut hold: [Option<Arc<dyn Buffer>>; 5] = Default::default();
        let [h0, h1, h2, h3, h4] = &mut hold;
        let op = "lstm_sequence";
        let f = rnn::lstm_sequence(
            self.rows::<T>(op, v[0], h0)?,
            bias.map(|b| self.rows::<T>(op, b, h4)).transpose()?,
            self.rows::<T>(op, v[1], h1)?,
            self.rows::<T>(op, v[2], h2)?,
            self.rows::<T>(op, v[3], h3)?,
            [xs[0], hs[0], hs[1]],
            reverse,
            rnn::seq_threads(hs[0], hs[1]),
        );
        Ok(LstmSequence {
            out: out(f.out)?,
            h_prev: out(f.h_prev)?,
            c_prev: out(f.c_prev)?,
            act: out(f.act)?,
            tanh_c: out(f.tanh_c)?,
        })
    }

    /// `v` = [w_hh, act, c_prev, tanh_c, grad].
    fn lstm_sequence_backward_typed<T: rnn::SeqFloat>(
        &self,
        v: [View<'_>; 5],
        reverse: bool,
        [need_h0, need_bias]: [bool; 2],
    ) -> Result<LstmSequenceGrads> {
        let s = v[2].layout.shape();
        let mut hold: [Option<Arc<dyn Buffer>>; 5] = Default::default();
        let [h0, h1, h2, h3, h4] = &mut hold;
        let op = "lstm_sequence_backward";
        let g = rnn::lstm_sequence_backward(
            self.rows::<T>(op, v[0], h0)?,
            self.rows::<T>(op, v[1], h1)?,
            self.rows::<T>(op, v[2], h2)?,
            self.rows::<T>(op, v[3], h3)?,
            self.rows::<T>(op, v[4], h4)?,
            [s[0], s[1], s[2]],
            reverse,
            [need_h0, need_bias],
            rnn::seq_threads(s[1], s[2]),
        );
        Ok(LstmSequenceGrads {
            dz: out(g.dz)?,
            dh0: g.dh0.map(out).transpose()?,
            dc0: out(g.dc0)?,
            db: g.db.map(out).transpose()?,
        })
    }
}

/// The elements of a contiguous view.
fn whole<T: Float>(v: View<'_>) -> Result<&[T]> {
    Ok(&typed::<T>("attention", v)?[v.layout.offset()..][..v.layout.numel()])
}

/// The dims of a fused attention call whose operands are contiguous, or `None` to decline.
fn attention_dims(a: &Attention<'_>) -> Option<kernels::attention::Dims> {
    let (q, k, v) = (a.q.layout, a.k.layout, a.v.layout);
    let (&[b, l, e], &[bk, s, ek], &[bv, sv, ev]) = (q.shape(), k.shape(), v.shape()) else {
        return None;
    };
    let ok = b == bk && b == bv && e == ek && s == sv;
    let contiguous = q.is_contiguous() && k.is_contiguous() && v.is_contiguous();
    let bias_ok = a.bias.is_none_or(|m| m.layout.shape() == [b, l, s]);
    (ok && contiguous && bias_ok).then_some(kernels::attention::Dims {
        b,
        l,
        s,
        e,
        ev,
        causal: a.causal,
        scale: a.scale,
    })
}

impl CpuBackend {
    /// `bias(b, i, j)` read through the bias view's strides (0 where it broadcasts).
    fn bias_reader<'a, T: Float>(
        bias: Option<View<'a>>,
    ) -> Result<Option<impl Fn(usize, usize, usize) -> T + Sync + 'a>> {
        let Some(m) = bias else {
            return Ok(None);
        };
        let (data, l) = (typed::<T>("attention", m)?, m.layout);
        let (st, off) = (l.strides(), l.offset());
        let (s0, s1, s2) = (st[0], st[1], st[2]);
        Ok(Some(move |b: usize, i: usize, j: usize| {
            data[off + b * s0 + i * s1 + j * s2]
        }))
    }

    fn attention_typed<T: kernels::attention::AttnFloat>(
        &self,
        a: &Attention<'_>,
    ) -> Result<Option<[Arc<dyn Buffer>; 2]>> {
        let Some(d) = attention_dims(a) else {
            return Ok(None);
        };
        let (q, k, v) = (whole::<T>(a.q)?, whole::<T>(a.k)?, whole::<T>(a.v)?);
        let bias = Self::bias_reader::<T>(a.bias)?;
        let bias = bias.as_ref().map(|f| f as &kernels::attention::Bias<'_, T>);
        let (o, lse) = kernels::attention::forward(d, q, k, v, bias);
        Ok(Some([out(o)?, out(lse)?]))
    }

    fn attention_backward_typed<T: kernels::attention::AttnFloat>(
        &self,
        a: &Attention<'_>,
        o: View<'_>,
        lse: View<'_>,
        dout: View<'_>,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        let Some(d) = attention_dims(a) else {
            return Ok(None);
        };
        if !(o.layout.is_contiguous() && lse.layout.is_contiguous() && dout.layout.is_contiguous())
        {
            return Ok(None);
        }
        let bias = Self::bias_reader::<T>(a.bias)?;
        let bias = bias.as_ref().map(|f| f as &kernels::attention::Bias<'_, T>);
        let (dq, dk, dv) = kernels::attention::backward(
            d,
            whole::<T>(a.q)?,
            whole::<T>(a.k)?,
            whole::<T>(a.v)?,
            bias,
            whole::<T>(o)?,
            whole::<T>(lse)?,
            whole::<T>(dout)?,
        );
        Ok(Some([out(dq)?, out(dk)?, out(dv)?]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use tessera_core::{HostData, Tensor};

    /// The fused LSTM cell (forward and backward, f32 and f64) against the cell written with
    /// tensor ops in f64, its gradients by autodiff, on a strided input (the gate blocks of a
    /// wider product).
    #[test]
    fn fused_lstm_cell_matches_the_cell_by_autodiff() {
        let b = CpuBackend;
        let (rows, h) = (3, 5);
        let data = |len: usize, seed: usize| -> Vec<f64> {
            (0..len)
                .map(|i| (((i + seed) * 7919 + seed * 131) % 2001) as f64 / 500.0 - 2.0)
                .collect()
        };
        let dev = cpu();
        for dtype in [DType::F32, DType::F64] {
            let round = |v: Vec<f64>| -> Vec<f64> { HostData::from_f64(dtype, &v).to_f64() };
            let (xw, r, c, dh, dc) = (
                round(data(rows * 6 * h, 1)),
                round(data(rows * 4 * h, 2)),
                round(data(rows * h, 3)),
                round(data(rows * h, 4)),
                round(data(rows * h, 5)),
            );
            let up = |v: &[f64]| b.upload(HostData::from_f64(dtype, v)).unwrap();
            let (xb, rb, cb, dhb, dcb) = (up(&xw), up(&r), up(&c), up(&dh), up(&dc));
            // x is read through a layout with a row stride wider than 4h.
            let xl = Layout::new(vec![rows, 4 * h], vec![6 * h, 1], h);
            let (gl, hl) = (
                Layout::contiguous(&[rows, 4 * h]),
                Layout::contiguous(&[rows, h]),
            );
            let view = |buf: &Arc<dyn Buffer>, l: &Layout| -> Vec<f64> {
                b.download(View {
                    buf: buf.as_ref(),
                    layout: l,
                })
                .unwrap()
                .to_f64()
            };
            fn v<'a>(buf: &'a Arc<dyn Buffer>, layout: &'a Layout) -> View<'a> {
                View {
                    buf: buf.as_ref(),
                    layout,
                }
            }
            let [act, c_new, tc, h_new] = b
                .lstm_cell(v(&xb, &xl), v(&rb, &gl), v(&cb, &hl))
                .unwrap()
                .expect("the CPU runs f32 and f64 cells");
            let [dz, dcp] = b
                .lstm_cell_backward(
                    v(&act, &gl),
                    v(&cb, &hl),
                    v(&tc, &hl),
                    v(&dhb, &hl),
                    v(&dcb, &hl),
                )
                .unwrap()
                .expect("the CPU runs f32 and f64 cells");
            // The reference: z = x + r, c' = σ(f)·c + σ(i)·tanh(g), h = σ(o)·tanh(c').
            let t = |v: Vec<f64>, s: &[usize]| Tensor::from_vec(v, s, &dev).unwrap();
            let x = t(xw.clone(), &[rows, 6 * h]).narrow(1, h, 4 * h).unwrap();
            let z = x
                .add(&t(r.clone(), &[rows, 4 * h]))
                .unwrap()
                .detach()
                .requires_grad_()
                .unwrap();
            let c0 = t(c.clone(), &[rows, h]).requires_grad_().unwrap();
            let gate = |k: usize| z.narrow(1, k * h, h).unwrap();
            let (i, f, g, o) = (
                gate(0).sigmoid().unwrap(),
                gate(1).sigmoid().unwrap(),
                gate(2).tanh().unwrap(),
                gate(3).sigmoid().unwrap(),
            );
            let c1 = f.mul(&c0).unwrap().add(&i.mul(&g).unwrap()).unwrap();
            let tc1 = c1.tanh().unwrap();
            let h1 = o.mul(&tc1).unwrap();
            let loss = h1
                .mul(&t(dh.clone(), &[rows, h]))
                .unwrap()
                .sum_all()
                .unwrap()
                .add(
                    &c1.mul(&t(dc.clone(), &[rows, h]))
                        .unwrap()
                        .sum_all()
                        .unwrap(),
                )
                .unwrap();
            let grads = loss.backward().unwrap();
            let acts = Tensor::concat(&[&i, &f, &g, &o], 1).unwrap();
            let pairs = [
                ("act", view(&act, &gl), acts.to_vec::<f64>().unwrap()),
                ("c", view(&c_new, &hl), c1.to_vec::<f64>().unwrap()),
                ("tanh c", view(&tc, &hl), tc1.to_vec::<f64>().unwrap()),
                ("h", view(&h_new, &hl), h1.to_vec::<f64>().unwrap()),
                (
                    "dz",
                    view(&dz, &gl),
                    grads.get(&z).unwrap().to_vec::<f64>().unwrap(),
                ),
                (
                    "dc_prev",
                    view(&dcp, &hl),
                    grads.get(&c0).unwrap().to_vec::<f64>().unwrap(),
                ),
            ];
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            for (what, got, want) in pairs {
                assert_eq!(got.len(), want.len(), "{what}");
                for (p, q) in got.iter().zip(&want) {
                    assert!(
                        (p - q).abs() <= tol * (1.0 + q.abs()),
                        "{dtype:?} {what}: {p} vs {q}"
                    );
                }
            }
        }
    }
}
