//! Elementwise ops. Backward rules (g = upstream gradient, y = output):
//!
//! | op | rule |
//! | --- | --- |
//! | neg | -g |
//! | abs | g·sign(x) (0 at 0, as PyTorch) |
//! | exp | g·y |
//! | log | g / x |
//! | sqrt | g / (2y) |
//! | tanh | g·(1 - y²) |
//! | sigmoid | g·y·(1 - y) |
//! | relu | g·\[x > 0\] (0 at 0, as PyTorch), read from the output |
//! | add_relu (max(a + b, 0)) | relu's, then summed over each operand's broadcast dims |
//! | leaky_relu(s) | g·(\[x > 0\] + s·\[x ≤ 0\]) |
//! | erf | g·2/√π·exp(-x²) |
//! | gelu | g·(Φ(x) + x·φ(x)); tanh form g·(½(1 + t) + ½x(1 - t²)·√(2/π)(1 + 3κx²)) |
//! | softplus(β, t) | g where βx > t, else g·sigmoid(βx) |
//! | x^p (scalar p) | g·p·x^(p-1) |
//! | clamp(lo, hi) | g·[lo ≤ x ≤ hi] |
//! | a + b, a - b | g, ±g (summed over broadcast dims) |
//! | a·b | g·b, g·a |
//! | a / b | g / b, -g·a / b² |
//! | a^b | g·b·a^(b-1), g·a^b·ln a (0 where a = 0) |
//! | maximum/minimum | g to the larger/smaller side, halved on ties (PyTorch) |
//! | where(c, a, b) | g where c else 0, 0 where c else g |
//!
//! Rules that reuse the output (exp, sqrt, tanh, sigmoid) read it saved when the backward runs
//! plainly, and recompute it from the input under `create_graph`, so the graph of the gradient
//! still reaches the input.

use super::{float_only, same_kind, when};
use crate::backend::{BinaryOp, UnaryOp};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::broadcast_shapes;
use crate::tape::is_grad_enabled;
use crate::tensor::{GradKind, Tensor};
use std::f64::consts::PI;

/// The saved output when backward runs plainly, or `recompute()` when it is being recorded.
fn saved_or(y: &Tensor, recompute: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
    if is_grad_enabled() {
        recompute()
    } else {
        Ok(y.clone())
    }
}

impl Tensor {
    /// `op` on every element, not recorded (the callers record).
    pub(crate) fn map(&self, op: &'static str, u: UnaryOp) -> Result<Tensor> {
        let float_needed = !matches!(
            u,
            UnaryOp::Neg
                | UnaryOp::Abs
                | UnaryOp::Sign
                | UnaryOp::Relu
                | UnaryOp::Square
                | UnaryOp::AddScalar(_)
                | UnaryOp::MulScalar(_)
                | UnaryOp::Clamp { .. }
        );
        if float_needed {
            float_only(op, self)?;
        }
        let buf = self.device().backend().unary(u, self.view())?;
        Ok(self.output(buf, self.dims()))
    }

    /// A 0-d tensor of this tensor's dtype and device.
    pub fn scalar_like(&self, value: f64) -> Result<Tensor> {
        Tensor::scalar(value, self.dtype(), self.device())
    }

    /// `-x`.
    pub fn neg(&self) -> Result<Tensor> {
        let out = self.map("neg", UnaryOp::Neg)?;
        Ok(out.record_op("neg", &[self], |g, _| Ok(vec![Some(g.neg()?)])))
    }

    /// `|x|`; the gradient at 0 is 0, as in PyTorch.
    pub fn abs(&self) -> Result<Tensor> {
        let out = self.map("abs", UnaryOp::Abs)?;
        let x = self.clone();
        Ok(out.record_op("abs", &[self], move |g, _| {
            Ok(vec![Some(g.mul(&x.sign()?)?)])
        }))
    }

    /// -1, 0 or 1 by the sign of each element (gradient 0).
    pub fn sign(&self) -> Result<Tensor> {
        let out = self.map("sign", UnaryOp::Sign)?;
        Ok(out.record_op("sign", &[self], |g, _| Ok(vec![Some(g.zeros_like()?)])))
    }

    /// `e^x`.
    pub fn exp(&self) -> Result<Tensor> {
        let out = self.map("exp", UnaryOp::Exp)?;
        let (x, y) = (self.clone(), out.detach());
        Ok(out.record_op("exp", &[self], move |g, _| {
            Ok(vec![Some(g.mul(&saved_or(&y, || x.exp())?)?)])
        }))
    }

    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        let out = self.map("log", UnaryOp::Log)?;
        let x = self.clone();
        Ok(out.record_op("log", &[self], move |g, _| Ok(vec![Some(g.div(&x)?)])))
    }

    /// Square root.
    pub fn sqrt(&self) -> Result<Tensor> {
        let out = self.map("sqrt", UnaryOp::Sqrt)?;
        let (x, y) = (self.clone(), out.detach());
        Ok(out.record_op("sqrt", &[self], move |g, _| {
            let y = saved_or(&y, || x.sqrt())?;
            Ok(vec![Some(g.div(&y)?.mul_scalar(0.5)?)])
        }))
    }

    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Result<Tensor> {
        let out = self.map("tanh", UnaryOp::Tanh)?;
        let (x, y) = (self.clone(), out.detach());
        Ok(out.record_op("tanh", &[self], move |g, _| {
            let y = saved_or(&y, || x.tanh())?;
            // 1 - y² written as -(y² - 1) keeps it one fused-friendly chain.
            let d = y.square()?.neg()?.add_scalar(1.0)?;
            Ok(vec![Some(g.mul(&d)?)])
        }))
    }

    /// `1 / (1 + e^-x)`.
    pub fn sigmoid(&self) -> Result<Tensor> {
        let out = self.map("sigmoid", UnaryOp::Sigmoid)?;
        let (x, y) = (self.clone(), out.detach());
        Ok(out.record_op("sigmoid", &[self], move |g, _| {
            let y = saved_or(&y, || x.sigmoid())?;
            let d = y.mul(&y.neg()?.add_scalar(1.0)?)?;
            Ok(vec![Some(g.mul(&d)?)])
        }))
    }

    /// `max(x, 0)`; the gradient at 0 is 0, as in PyTorch.
    pub fn relu(&self) -> Result<Tensor> {
        let out = self.map("relu", UnaryOp::Relu)?;
        let y = out.detach();
        Ok(out.record_op("relu", &[self], move |g, _| {
            Ok(vec![Some(relu_grad(g, &y)?)])
        }))
    }

    /// `max(a + b, 0)`, broadcast: a layer's bias and ReLU in one pass and one tape node
    /// (PyTorch's fused `LinearReLU`).
    pub fn add_relu(&self, rhs: &Tensor) -> Result<Tensor> {
        let op = "add_relu";
        float_only(op, self)?;
        let out = match self.zip_fused(op, rhs, |k, x, y| k.add_relu(x, y))? {
            Some(out) => out,
            None => crate::no_grad(|| self.add(rhs)?.relu())?,
        };
        let y = out.detach();
        let (sa, sb) = (self.dims().to_vec(), rhs.dims().to_vec());
        Ok(out.record_op(op, &[self, rhs], move |g, n| {
            let d = relu_grad(g, &y)?;
            Ok(vec![
                when(n[0], || d.sum_to_shape(&sa))?,
                when(n[1], || d.sum_to_shape(&sb))?,
            ])
        }))
    }

    /// `x` for `x > 0`, else `negative_slope · x`.
    pub fn leaky_relu(&self, negative_slope: f64) -> Result<Tensor> {
        let out = self.map("leaky_relu", UnaryOp::LeakyRelu(negative_slope))?;
        let x = self.clone();
        Ok(out.record_op("leaky_relu", &[self], move |g, _| {
            // [x > 0]·(1 - s) + s: 1 above zero, s at and below it.
            let pos = x.flag(BinaryOp::Gt, &x.scalar_like(0.0)?)?;
            let d = pos
                .mul_scalar(1.0 - negative_slope)?
                .add_scalar(negative_slope)?;
            Ok(vec![Some(g.mul(&d)?)])
        }))
    }

    /// The error function.
    pub fn erf(&self) -> Result<Tensor> {
        let out = self.map("erf", UnaryOp::Erf)?;
        let x = self.clone();
        Ok(out.record_op("erf", &[self], move |g, _| {
            let d = x.square()?.neg()?.exp()?.mul_scalar(2.0 / PI.sqrt())?;
            Ok(vec![Some(g.mul(&d)?)])
        }))
    }

    /// GELU: `0.5·x·(1 + erf(x/√2))`, or with `approximate_tanh` the tanh form
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`. One tape node: the backend's kernel, or
    /// the composite of erf/tanh, forward; `g·gelu'(x)` backward, as a recorded composite under
    /// `create_graph` so second derivatives reach `x`.
    pub fn gelu(&self, approximate_tanh: bool) -> Result<Tensor> {
        let op = "gelu";
        float_only(op, self)?;
        let out = match super::fused(self.device(), |k| k.gelu(self.view(), approximate_tanh))? {
            Some(buf) => self.output(buf, self.dims()),
            None => crate::no_grad(|| gelu_composite(self, approximate_tanh))?,
        };
        let x = self.clone();
        Ok(out.record_op(op, &[self], move |g, _| {
            Ok(vec![Some(gelu_grad(g, &x, approximate_tanh)?)])
        }))
    }

    /// `log(1 + e^(βx)) / β`, and `x` itself where `βx > threshold` (PyTorch's softplus).
    pub fn softplus(&self, beta: f64, threshold: f64) -> Result<Tensor> {
        let out = self.map("softplus", UnaryOp::Softplus { beta, threshold })?;
        let x = self.clone();
        Ok(out.record_op("softplus", &[self], move |g, _| {
            let bx = x.mul_scalar(beta)?;
            let linear = bx.flag(BinaryOp::Gt, &bx.scalar_like(threshold)?)?;
            let d = linear.where_(&linear, &bx.sigmoid()?)?;
            Ok(vec![Some(g.mul(&d)?)])
        }))
    }

    /// `x²`.
    pub fn square(&self) -> Result<Tensor> {
        let out = self.map("square", UnaryOp::Square)?;
        let x = self.clone();
        Ok(out.record_op("square", &[self], move |g, _| {
            Ok(vec![Some(g.mul(&x)?.mul_scalar(2.0)?)])
        }))
    }

    /// `1 / x`.
    pub fn recip(&self) -> Result<Tensor> {
        let out = self.map("recip", UnaryOp::Recip)?;
        let x = self.clone();
        Ok(out.record_op("recip", &[self], move |g, _| {
            Ok(vec![Some(g.neg()?.div(&x.square()?)?)])
        }))
    }

    /// `x + c`.
    pub fn add_scalar(&self, c: f64) -> Result<Tensor> {
        let out = self.map("add_scalar", UnaryOp::AddScalar(c))?;
        Ok(out.record_op("add_scalar", &[self], |g, _| Ok(vec![Some(g.clone())])))
    }

    /// `x · c`.
    pub fn mul_scalar(&self, c: f64) -> Result<Tensor> {
        let out = self.map("mul_scalar", UnaryOp::MulScalar(c))?;
        Ok(out.record_op("mul_scalar", &[self], move |g, _| {
            Ok(vec![Some(g.mul_scalar(c)?)])
        }))
    }

    /// `x ^ p` for a scalar exponent.
    pub fn powf(&self, p: f64) -> Result<Tensor> {
        let out = self.map("powf", UnaryOp::PowScalar(p))?;
        let x = self.clone();
        Ok(out.record_op("powf", &[self], move |g, _| {
            Ok(vec![Some(g.mul(&x.powf(p - 1.0)?.mul_scalar(p)?)?)])
        }))
    }

    /// `min(max(x, min), max)`; the gradient passes where `min ≤ x ≤ max`, as in PyTorch.
    pub fn clamp(&self, min: f64, max: f64) -> Result<Tensor> {
        if min > max || min.is_nan() || max.is_nan() {
            return Err(Error::invalid(
                "clamp",
                format!("need min <= max, got min {min}, max {max}"),
            ));
        }
        let out = self.map("clamp", UnaryOp::Clamp { min, max })?;
        let x = self.clone();
        Ok(out.record_op("clamp", &[self], move |g, _| {
            let inside = x
                .flag(BinaryOp::Ge, &x.scalar_like(min)?)?
                .mul(&x.flag(BinaryOp::Le, &x.scalar_like(max)?)?)?;
            Ok(vec![Some(g.mul(&inside)?)])
        }))
    }

    /// A copy converted to `dtype` (the same handle if it already has it). Gradients flow
    /// between floating-point dtypes.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let buf = self.device().backend().cast(self.view(), dtype)?;
        let out = self.output(buf, self.dims());
        if !dtype.is_float() {
            return Ok(out);
        }
        let from = self.dtype();
        Ok(out.record_op("to_dtype", &[self], move |g, _| {
            Ok(vec![Some(g.to_dtype(from)?)])
        }))
    }

    // ---- binary ----

    /// `f` over both operands broadcast to one shape (one device, one dtype), and that shape.
    fn broadcast_views<R>(
        &self,
        op: &'static str,
        rhs: &Tensor,
        f: impl FnOnce(crate::backend::View<'_>, crate::backend::View<'_>) -> Result<R>,
    ) -> Result<(R, Vec<usize>)> {
        same_kind(op, self, rhs)?;
        let shape = broadcast_shapes(op, self.dims(), rhs.dims())?;
        let (la, lb) = (
            self.layout().broadcast_to(&shape),
            rhs.layout().broadcast_to(&shape),
        );
        let r = f(
            crate::backend::View {
                buf: self.buffer().as_ref(),
                layout: &la,
            },
            crate::backend::View {
                buf: rhs.buffer().as_ref(),
                layout: &lb,
            },
        )?;
        Ok((r, shape))
    }

    /// `op` on broadcast operands, not recorded (the callers record).
    fn zip(&self, op: &'static str, b: BinaryOp, rhs: &Tensor) -> Result<Tensor> {
        let be = self.device().backend();
        let (buf, shape) = self.broadcast_views(op, rhs, |x, y| be.binary(b, x, y))?;
        Ok(self.output(buf, &shape))
    }

    /// The fused kernel `f` over both operands broadcast to one shape, or `None` where the
    /// backend declines (the caller then composes the op).
    fn zip_fused(
        &self,
        op: &'static str,
        rhs: &Tensor,
        f: impl FnOnce(
            &dyn crate::backend::FusedKernels,
            crate::backend::View<'_>,
            crate::backend::View<'_>,
        ) -> Result<Option<std::sync::Arc<dyn crate::backend::Buffer>>>,
    ) -> Result<Option<Tensor>> {
        let (buf, shape) =
            self.broadcast_views(op, rhs, |x, y| super::fused(self.device(), |k| f(k, x, y)))?;
        Ok(buf.map(|b| self.output(b, &shape)))
    }

    /// `self ← beta·self + alpha·rhs` (`rhs` broadcast to this shape): an optimizer's update,
    /// PyTorch's `p.mul_(beta).add_(rhs, alpha=alpha)`. It writes this handle's buffer in place
    /// when nothing else can observe it (no clone of the handle, no view of or tape node on its
    /// buffer) and the backend has an in-place path; otherwise the handle gets a new buffer.
    /// Either way it is a new value: the handle gets a fresh id, and stays a variable if it was
    /// one (any other tensor becomes a constant, as under `no_grad`). Not recorded on the tape,
    /// so an operand that requires grad is an error while grad mode is on.
    pub fn scale_add_(&mut self, beta: f64, rhs: &Tensor, alpha: f64) -> Result<()> {
        let op = "scale_add_";
        same_kind(op, self, rhs)?;
        if broadcast_shapes(op, self.dims(), rhs.dims())? != self.dims() {
            return Err(Error::shape(
                op,
                "the operand must broadcast to the updated tensor's shape",
                self.dims(),
                rhs.dims(),
            ));
        }
        if is_grad_enabled() && (self.requires_grad() || rhs.requires_grad()) {
            return Err(Error::invalid(
                op,
                "an in-place update is not recorded on the tape: run it under no_grad",
            ));
        }
        let kind = match self.kind() {
            GradKind::Leaf => GradKind::Leaf,
            _ => GradKind::None,
        };
        let lb = rhs.layout().broadcast_to(self.dims());
        let src = crate::backend::View {
            buf: rhs.buffer().as_ref(),
            layout: &lb,
        };
        let done = self.write_in_place(kind, |device, buf, layout| {
            Ok(match device.fused() {
                Some(k) => k
                    .scale_add_in_place(buf, layout, beta, alpha, src)?
                    .is_some(),
                None => false,
            })
        })?;
        if !done {
            let scaled = if beta == 1.0 {
                self.clone()
            } else {
                self.mul_scalar(beta)?
            };
            let new = crate::tape::no_grad(|| scaled.add_scaled(rhs, alpha))?;
            *self = match kind {
                GradKind::Leaf => new.requires_grad_()?,
                _ => new,
            };
        }
        Ok(())
    }

    /// `a + alpha·b`, broadcast, in one pass where the backend fuses it (the optimizers'
    /// updates: `p - lr·d` and `d + momentum·buf`).
    pub fn add_scaled(&self, rhs: &Tensor, alpha: f64) -> Result<Tensor> {
        let op = "add_scaled";
        let out = match self.zip_fused(op, rhs, |k, x, y| k.add_scaled(x, alpha, y))? {
            Some(out) => out,
            None => crate::no_grad(|| self.add(&rhs.mul_scalar(alpha)?))?,
        };
        let (sa, sb) = (self.dims().to_vec(), rhs.dims().to_vec());
        Ok(out.record_op(op, &[self, rhs], move |g, n| {
            Ok(vec![
                when(n[0], || g.sum_to_shape(&sa))?,
                when(n[1], || g.mul_scalar(alpha)?.sum_to_shape(&sb))?,
            ])
        }))
    }

    /// `a + b`, broadcast.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        let out = self.zip("add", BinaryOp::Add, rhs)?;
        let (sa, sb) = (self.dims().to_vec(), rhs.dims().to_vec());
        Ok(out.record_op("add", &[self, rhs], move |g, n| {
            Ok(vec![
                when(n[0], || g.sum_to_shape(&sa))?,
                when(n[1], || g.sum_to_shape(&sb))?,
            ])
        }))
    }

    /// `a - b`, broadcast.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        let out = self.zip("sub", BinaryOp::Sub, rhs)?;
        let (sa, sb) = (self.dims().to_vec(), rhs.dims().to_vec());
        Ok(out.record_op("sub", &[self, rhs], move |g, n| {
            Ok(vec![
                when(n[0], || g.sum_to_shape(&sa))?,
                when(n[1], || g.neg()?.sum_to_shape(&sb))?,
            ])
        }))
    }

    /// `a · b`, broadcast.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        let out = self.zip("mul", BinaryOp::Mul, rhs)?;
        let (a, b) = (self.clone(), rhs.clone());
        Ok(out.record_op("mul", &[self, rhs], move |g, n| {
            Ok(vec![
                when(n[0], || g.mul(&b)?.sum_to_shape(a.dims()))?,
                when(n[1], || g.mul(&a)?.sum_to_shape(b.dims()))?,
            ])
        }))
    }

    /// `a / b`, broadcast.
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        let out = self.zip("div", BinaryOp::Div, rhs)?;
        let (a, b) = (self.clone(), rhs.clone());
        Ok(out.record_op("div", &[self, rhs], move |g, n| {
            Ok(vec![
                when(n[0], || g.div(&b)?.sum_to_shape(a.dims()))?,
                when(n[1], || {
                    g.mul(&a)?.div(&b.square()?)?.neg()?.sum_to_shape(b.dims())
                })?,
            ])
        }))
    }

    /// `a ^ b`, broadcast.
    pub fn pow(&self, rhs: &Tensor) -> Result<Tensor> {
        float_only("pow", self)?;
        let out = self.zip("pow", BinaryOp::Pow, rhs)?;
        let (a, b) = (self.clone(), rhs.clone());
        Ok(out.record_op("pow", &[self, rhs], move |g, n| {
            Ok(vec![
                when(n[0], || {
                    let d = b.mul(&a.pow(&b.add_scalar(-1.0)?)?)?;
                    g.mul(&d)?.sum_to_shape(a.dims())
                })?,
                when(n[1], || {
                    // a^b·ln a, with 0 where a = 0 (PyTorch's convention) instead of 0·(-inf).
                    let zero = a.scalar_like(0.0)?;
                    let d = a.pow(&b)?.mul(&a.log()?)?;
                    let d = a.eq(&zero)?.where_(&zero, &d)?;
                    g.mul(&d)?.sum_to_shape(b.dims())
                })?,
            ])
        }))
    }

    /// Elementwise maximum, broadcast; ties split the gradient half and half.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        let out = self.zip("maximum", BinaryOp::Maximum, rhs)?;
        let (a, b) = (self.clone(), rhs.clone());
        Ok(out.record_op("maximum", &[self, rhs], move |g, n| {
            extreme_grads(g, n, &a, &b, a.flag(BinaryOp::Gt, &b)?)
        }))
    }

    /// Elementwise minimum, broadcast; ties split the gradient half and half.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        let out = self.zip("minimum", BinaryOp::Minimum, rhs)?;
        let (a, b) = (self.clone(), rhs.clone());
        Ok(out.record_op("minimum", &[self, rhs], move |g, n| {
            extreme_grads(g, n, &a, &b, a.flag(BinaryOp::Lt, &b)?)
        }))
    }

    /// Comparisons give bool; bool operands compare as 0 < 1. Not differentiable.
    fn compare(&self, op: &'static str, b: BinaryOp, rhs: &Tensor) -> Result<Tensor> {
        let (x, y) = (self.detach(), rhs.detach());
        let (x, y) = match (x.dtype(), y.dtype()) {
            (DType::Bool, DType::Bool) => (x.to_dtype(DType::I64)?, y.to_dtype(DType::I64)?),
            _ => (x, y),
        };
        x.zip(op, b, &y)?.to_dtype(DType::Bool)
    }

    /// 1 where `op` holds, else 0, in the operands' dtype: the numeric masks backward rules
    /// multiply by (the public comparisons return bool).
    pub(crate) fn flag(&self, op: BinaryOp, rhs: &Tensor) -> Result<Tensor> {
        self.zip("compare", op, rhs)
    }

    /// `a == b` elementwise, broadcast, as bool.
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare("eq", BinaryOp::Eq, rhs)
    }
    /// `a != b`, as bool.
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare("ne", BinaryOp::Ne, rhs)
    }
    /// `a < b`, as bool.
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare("lt", BinaryOp::Lt, rhs)
    }
    /// `a <= b`, as bool.
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare("le", BinaryOp::Le, rhs)
    }
    /// `a > b`, as bool.
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare("gt", BinaryOp::Gt, rhs)
    }
    /// `a >= b`, as bool.
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare("ge", BinaryOp::Ge, rhs)
    }

    /// `a` where `self` (the condition, any dtype) is non-zero, else `b`; all three broadcast.
    pub fn where_(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        same_kind("where", a, b)?;
        super::same_device("where", self, a)?;
        let shape = broadcast_shapes("where", self.dims(), a.dims())?;
        let shape = broadcast_shapes("where", &shape, b.dims())?;
        let (lc, la, lb) = (
            self.layout().broadcast_to(&shape),
            a.layout().broadcast_to(&shape),
            b.layout().broadcast_to(&shape),
        );
        use crate::backend::View;
        let buf = self.device().backend().where_cond(
            View {
                buf: self.buffer().as_ref(),
                layout: &lc,
            },
            View {
                buf: a.buffer().as_ref(),
                layout: &la,
            },
            View {
                buf: b.buffer().as_ref(),
                layout: &lb,
            },
        )?;
        let out = a.output(buf, &shape);
        let (c, sa, sb) = (self.detach(), a.dims().to_vec(), b.dims().to_vec());
        Ok(out.record_op("where", &[a, b], move |g, n| {
            let zero = g.scalar_like(0.0)?;
            Ok(vec![
                when(n[0], || c.where_(g, &zero)?.sum_to_shape(&sa))?,
                when(n[1], || c.where_(&zero, g)?.sum_to_shape(&sb))?,
            ])
        }))
    }
}

/// Gradients of maximum/minimum: `wins` marks where `a` is the extreme; ties get half each.
fn extreme_grads(
    g: &Tensor,
    need: &[bool],
    a: &Tensor,
    b: &Tensor,
    wins: Tensor,
) -> Result<Vec<Option<Tensor>>> {
    let ties = a.flag(BinaryOp::Eq, b)?.mul_scalar(0.5)?;
    let wa = wins.add(&ties)?;
    Ok(vec![
        when(need[0], || g.mul(&wa)?.sum_to_shape(a.dims()))?,
        when(need[1], || {
            g.mul(&wa.neg()?.add_scalar(1.0)?)?.sum_to_shape(b.dims())
        })?,
    ])
}

// Only `&Tensor` gets operators: an impl on `Tensor` by value would win method resolution
// over the inherent `add(&self, ..)` and silently move the receiver.
macro_rules! operator {
    ($trait:ident, $method:ident, $op:ident) => {
        impl std::ops::$trait<&Tensor> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                self.$op(rhs)
            }
        }
    };
}
operator!(Add, add, add);
operator!(Sub, sub, sub);
operator!(Mul, mul, mul);
operator!(Div, div, div);

impl std::ops::Add<f64> for &Tensor {
    type Output = Result<Tensor>;
    fn add(self, c: f64) -> Result<Tensor> {
        self.add_scalar(c)
    }
}
impl std::ops::Sub<f64> for &Tensor {
    type Output = Result<Tensor>;
    fn sub(self, c: f64) -> Result<Tensor> {
        self.add_scalar(-c)
    }
}
impl std::ops::Mul<f64> for &Tensor {
    type Output = Result<Tensor>;
    fn mul(self, c: f64) -> Result<Tensor> {
        self.mul_scalar(c)
    }
}
impl std::ops::Div<f64> for &Tensor {
    type Output = Result<Tensor>;
    fn div(self, c: f64) -> Result<Tensor> {
        self.mul_scalar(1.0 / c)
    }
}
impl std::ops::Neg for &Tensor {
    type Output = Result<Tensor>;
    fn neg(self) -> Result<Tensor> {
        Tensor::neg(self)
    }
}

/// GELU from erf or tanh (the formula [`Tensor::gelu`] documents).
fn gelu_composite(x: &Tensor, tanh_form: bool) -> Result<Tensor> {
    let inner = if tanh_form {
        let cube = x.powf(3.0)?.mul_scalar(0.044715)?;
        x.add(&cube)?.mul_scalar((2.0 / PI).sqrt())?.tanh()?
    } else {
        x.mul_scalar(std::f64::consts::FRAC_1_SQRT_2)?.erf()?
    };
    x.mul(&inner.add_scalar(1.0)?)?.mul_scalar(0.5)
}

/// GELU's gradient `g·gelu'(x)`: the backend's one pass when backward runs plainly, else the
/// composite `Φ(x) + x·φ(x)` (erf form) or `½(1 + t) + ½x(1 - t²)·√(2/π)(1 + 3·0.044715x²)`
/// with `t` the tanh (tanh form), recorded under `create_graph`.
fn gelu_grad(g: &Tensor, x: &Tensor, tanh_form: bool) -> Result<Tensor> {
    if !is_grad_enabled() {
        let lg = g.layout().broadcast_to(x.dims());
        let dy = crate::backend::View {
            buf: g.buffer().as_ref(),
            layout: &lg,
        };
        if let Some(buf) = super::fused(x.device(), |k| k.gelu_backward(dy, x.view(), tanh_form))? {
            return Ok(x.output(buf, x.dims()));
        }
    }
    let d = if tanh_form {
        let beta = (2.0 / PI).sqrt();
        let x2 = x.square()?;
        let t = x
            .mul(&x2.mul_scalar(0.044715)?.add_scalar(1.0)?)?
            .mul_scalar(beta)?
            .tanh()?;
        let inner_d = x2.mul_scalar(3.0 * 0.044715 * beta)?.add_scalar(beta)?;
        let slope = t.square()?.neg()?.add_scalar(1.0)?.mul(x)?.mul(&inner_d)?;
        t.add_scalar(1.0)?.add(&slope)?.mul_scalar(0.5)?
    } else {
        let cdf = x
            .mul_scalar(std::f64::consts::FRAC_1_SQRT_2)?
            .erf()?
            .add_scalar(1.0)?
            .mul_scalar(0.5)?;
        let pdf = x
            .square()?
            .mul_scalar(-0.5)?
            .exp()?
            .mul_scalar(1.0 / (2.0 * PI).sqrt())?;
        cdf.add(&x.mul(&pdf)?)?
    };
    g.mul(&d)
}

/// ReLU's gradient `g·[not y <= 0]` from its output `y`: the backend's one pass where it has
/// one, else (and under `create_graph`, where the mask is a recorded constant) the composite.
pub(crate) fn relu_grad(g: &Tensor, y: &Tensor) -> Result<Tensor> {
    if !is_grad_enabled() {
        let lg = g.layout().broadcast_to(y.dims());
        let fused = super::fused(y.device(), |k| {
            k.relu_backward(
                crate::backend::View {
                    buf: g.buffer().as_ref(),
                    layout: &lg,
                },
                crate::backend::View {
                    buf: y.buffer().as_ref(),
                    layout: y.layout(),
                },
            )
        })?;
        if let Some(buf) = fused {
            return Ok(y.output(buf, y.dims()));
        }
    }
    // 1 - (y <= 0), not (y > 0): a NaN output passes its gradient on (PyTorch's rule).
    let mask = y
        .flag(BinaryOp::Le, &y.scalar_like(0.0)?)?
        .neg()?
        .add_scalar(1.0)?;
    g.mul(&mask)
}
