//! The contract every device implements.
//!
//! A backend owns its memory (core sees only `Arc<dyn Buffer>`) and provides a small set of
//! required primitives over strided layouts. Composite ops have provided bodies written with the
//! primitives (see [`fallback`]); a backend overrides one only to go faster, so a new backend is
//! correct as soon as its primitives are.
//!
//! Conventions shared by all primitives:
//! - every input comes with a [`Layout`] (shape, strides, offset) into its buffer;
//! - every output is a new buffer, contiguous, in row-major order of the output shape;
//! - operands of binary and ternary ops have already been broadcast to one shape by core
//!   (broadcast dims have stride 0), and share one dtype unless stated otherwise.

pub mod fallback;

use crate::dtype::{DType, HostData};
use crate::error::Result;
use crate::layout::Layout;
use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

/// Device memory holding `len` elements of one dtype. Opaque to core.
pub trait Buffer: Send + Sync + Debug + 'static {
    /// Number of elements.
    fn len(&self) -> usize;
    /// Whether the buffer holds no elements.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element type.
    fn dtype(&self) -> DType;
    /// For the owning backend to downcast to its concrete type.
    fn as_any(&self) -> &dyn Any;
    /// Mutable access for the owning backend's in-place hooks
    /// ([`Backend::scale_add_in_place`]). The default, `None`, makes those hooks decline, and
    /// callers then compute a new buffer.
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        None
    }
}

/// A buffer together with the layout to read it with.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub buf: &'a dyn Buffer,
    pub layout: &'a Layout,
}

/// Elementwise functions of one tensor. Ops carrying a parameter hold it as `f64`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Abs,
    /// -1, 0 or 1.
    Sign,
    Exp,
    Log,
    Sqrt,
    Tanh,
    Sigmoid,
    /// `max(x, 0)`; a NaN stays NaN (PyTorch's rule).
    Relu,
    Erf,
    Recip,
    Square,
    /// `x` if `x > 0`, else `slope * x`.
    LeakyRelu(f64),
    /// `x` where `beta * x > threshold`, else `log(1 + exp(beta x)) / beta`, computed stably.
    Softplus {
        beta: f64,
        threshold: f64,
    },
    AddScalar(f64),
    MulScalar(f64),
    /// `x ^ p`.
    PowScalar(f64),
    /// `min(max(x, min), max)`.
    Clamp {
        min: f64,
        max: f64,
    },
}

/// Elementwise functions of two tensors of the same shape and dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Maximum,
    Minimum,
    /// Comparisons give 1 where true and 0 where false, in the operands' dtype.
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Reductions over a set of axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
    /// Index (i64) of the first maximum along a single axis.
    ArgMax,
    /// Index (i64) of the first minimum along a single axis.
    ArgMin,
}

/// Distributions of [`Backend::random`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// Uniform on `[low, high)`.
    Uniform { low: f64, high: f64 },
    /// Normal with the given mean and standard deviation.
    Normal { mean: f64, std: f64 },
}

/// A sliding window over the last two dims of `[N, C, H, W]` (convolution and pooling).
/// Output position `o`, tap `t` reads input row `o·s - p + t·d` (likewise for columns);
/// positions outside the input read a fill value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Kernel size (rows, columns).
    pub k: [usize; 2],
    /// Stride.
    pub s: [usize; 2],
    /// Dilation.
    pub d: [usize; 2],
    /// Padding before (top, left).
    pub p: [usize; 2],
    /// Output positions per dim.
    pub out: [usize; 2],
}

impl Window {
    /// Taps per window (`k[0]·k[1]`).
    pub fn taps(&self) -> usize {
        self.k[0] * self.k[1]
    }
    /// Window positions (`out[0]·out[1]`).
    pub fn positions(&self) -> usize {
        self.out[0] * self.out[1]
    }
    /// The input coordinate of output position `o` and tap `t` along `dim`, if inside `[0, n)`.
    #[inline]
    pub fn source(&self, dim: usize, o: usize, t: usize, n: usize) -> Option<usize> {
        let i = (o * self.s[dim] + t * self.d[dim]) as isize - self.p[dim] as isize;
        (i >= 0 && (i as usize) < n).then_some(i as usize)
    }
}

/// What [`Backend::lstm_cell`] returns, each a new contiguous buffer: the gate activations
/// `[B, 4H]` (`σ(i), σ(f), tanh(g), σ(o)`), `c` `[B, H]`, `tanh(c)` `[B, H]` and `h` `[B, H]`.
pub type LstmCell = [Arc<dyn Buffer>; 4];

/// What [`Backend::lstm_sequence`] returns, each a new contiguous buffer in time order (index
/// `t` is time step `t` whichever way the sequence was run).
pub struct LstmSequence {
    /// `[T + 1, B, H]`: `h_t` for every step, then the last cell state (`c_{T-1}`, or `c_0`
    /// for a reversed run) — the layout of the sequence node's value.
    pub out: Arc<dyn Buffer>,
    /// `[T, B, H]`: the hidden state each step started from (`h0` for the first one run).
    pub h_prev: Arc<dyn Buffer>,
    /// `[T, B, H]`: the cell state each step started from.
    pub c_prev: Arc<dyn Buffer>,
    /// `[T, B, 4H]`: the gate activations `σ(i), σ(f), tanh(g), σ(o)`.
    pub act: Arc<dyn Buffer>,
    /// `[T, B, H]`: `tanh(c_t)`.
    pub tanh_c: Arc<dyn Buffer>,
}

/// What [`Backend::lstm_sequence_backward`] returns, each a new contiguous buffer.
pub struct LstmSequenceGrads {
    /// `[T, B, 4H]`: the gradient of the pre-activations (that of `xp`).
    pub dz: Arc<dyn Buffer>,
    /// `[B, H]`: the gradient of `h0`, when asked for.
    pub dh0: Option<Arc<dyn Buffer>>,
    /// `[B, H]`: the gradient of `c0`.
    pub dc0: Arc<dyn Buffer>,
    /// `[4H]`: the gradient of the bias (`dz` summed over steps and rows), when asked for.
    /// A backend may leave it to core (`None`), which then sums `dz` itself.
    pub db: Option<Arc<dyn Buffer>>,
}

/// Whether [`Backend::cross_entropy`]'s operands are what core passes: logits `[M, C]` with
/// `M·C > 0` and i64 targets `[M]`. A backend's kernel takes these (in the dtypes it has);
/// anything else goes to the default. One check for every backend.
pub fn cross_entropy_fits(x: View<'_>, target: View<'_>) -> bool {
    let s = x.layout.shape();
    s.len() == 2
        && s[0] * s[1] > 0
        && target.layout.shape() == [s[0]]
        && target.buf.dtype() == DType::I64
}

/// The same for [`Backend::cross_entropy_backward`]: `lp` `[M, C]`, i64 targets `[M]`, and the
/// weights and gradient `[M]` in `lp`'s dtype.
pub fn cross_entropy_backward_fits(
    lp: View<'_>,
    target: View<'_>,
    w: View<'_>,
    g: View<'_>,
) -> bool {
    let rows = [lp.layout.shape().first().copied().unwrap_or(0)];
    cross_entropy_fits(lp, target)
        && [w, g]
            .iter()
            .all(|v| v.layout.shape() == rows && v.buf.dtype() == lp.buf.dtype())
}

/// What [`Backend::max_pool2d`] returns: the maxima, and the plane index of each when asked.
pub type Pooled = (Arc<dyn Buffer>, Option<Arc<dyn Buffer>>);

/// A device implementation. Object-safe: core holds it as `Arc<dyn Backend>`.
pub trait Backend: Send + Sync + Debug + 'static {
    /// The device's name, e.g. `cpu` or `cuda:0`.
    fn name(&self) -> String;

    // ---- required primitives ----

    /// Copies host data into a new buffer.
    fn upload(&self, data: HostData) -> Result<Arc<dyn Buffer>>;
    /// Reads the elements of `x` (in row-major order of its layout) back to the host.
    fn download(&self, x: View<'_>) -> Result<HostData>;
    /// A new buffer of `len` elements all equal to `value`.
    fn fill(&self, len: usize, dtype: DType, value: f64) -> Result<Arc<dyn Buffer>>;
    /// `len` random numbers. Element `i` must depend only on `(seed, offset + i)` through
    /// [`crate::random::philox_4x32`], so every device and thread count gives the same values.
    fn random(
        &self,
        len: usize,
        dtype: DType,
        dist: Distribution,
        seed: u64,
        offset: u64,
    ) -> Result<Arc<dyn Buffer>>;
    /// A contiguous copy of `x`, converted to `dtype` (a plain copy when the dtype is the same).
    fn cast(&self, x: View<'_>, dtype: DType) -> Result<Arc<dyn Buffer>>;
    /// `op` applied to every element.
    fn unary(&self, op: UnaryOp, x: View<'_>) -> Result<Arc<dyn Buffer>>;
    /// `op` applied to pairs of elements (same shape, same dtype).
    fn binary(&self, op: BinaryOp, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>>;
    /// `cond != 0 ? a : b` elementwise; `cond` may have any dtype, `a` and `b` share one.
    fn where_cond(&self, cond: View<'_>, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>>;
    /// Reduces over `axes` (sorted, distinct). The output has `x`'s shape with the reduced axes
    /// set to 1. `ArgMax`/`ArgMin` take exactly one axis and give i64.
    fn reduce(&self, op: ReduceOp, x: View<'_>, axes: &[usize]) -> Result<Arc<dyn Buffer>>;
    /// Batched matrix product of `[..., m, k]` and `[..., k, n]` (same batch shape) into
    /// `[..., m, n]`.
    fn matmul(&self, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>>;
    /// `out[i..] = x[i.. with index[i..] at dim]`; `out` has `index`'s shape. Indices outside
    /// `[0, x.shape[dim])` give [`crate::Error::IndexOutOfRange`].
    fn gather(&self, x: View<'_>, dim: usize, index: View<'_>) -> Result<Arc<dyn Buffer>>;
    /// A zero buffer of `shape` into which `src[i..]` is added at `i..` with `index[i..]` at
    /// `dim`; `src` and `index` share one shape. Repeated indices accumulate.
    fn scatter_add(
        &self,
        shape: &[usize],
        dim: usize,
        index: View<'_>,
        src: View<'_>,
    ) -> Result<Arc<dyn Buffer>>;
    /// A new contiguous buffer of `len` elements set to `fill`, then each part's source copied
    /// into the region of the new buffer that the part's layout describes. Concat, stack, pad
    /// and the backward of slicing are all this one primitive.
    fn assemble(
        &self,
        len: usize,
        dtype: DType,
        fill: f64,
        parts: &[(Layout, View<'_>)],
    ) -> Result<Arc<dyn Buffer>>;

    // ---- provided composite ops: override only to go faster ----

    /// Softmax (or log-softmax when `log`) along `dim`, stable against large inputs.
    fn softmax(&self, x: View<'_>, dim: usize, log: bool) -> Result<Arc<dyn Buffer>> {
        fallback::softmax(self, x, dim, log)
    }

    /// im2col: the windows of `x` `[N, C, H, W]` as `[N, C, taps, positions]`, reading `fill`
    /// outside the input.
    fn unfold2d(&self, x: View<'_>, w: &Window, fill: f64) -> Result<Arc<dyn Buffer>> {
        fallback::unfold2d(self, x, w, fill)
    }

    /// col2im, the adjoint of `unfold2d`: `cols` `[N, C, taps, positions]` summed into a new
    /// `[N, C, H, W]` (`hw` = `[H, W]`); entries that read the fill value are dropped.
    fn fold2d(&self, cols: View<'_>, w: &Window, hw: [usize; 2]) -> Result<Arc<dyn Buffer>> {
        fallback::fold2d(self, cols, w, hw)
    }

    /// Max pooling of `x` `[N, C, H, W]` over the window `w` (padding reads -inf): the maxima,
    /// a new `[N, C, OH, OW]`, and, when `index` (a backward needs it), for each the flat index
    /// `h·W + w` in its input plane of the element it came from, a new i64 `[N, C, OH·OW]`
    /// (NaN wins, as in PyTorch). Default: `unfold2d`, then a max reduction over the taps, or
    /// `argmax` and two `gather`s for the index.
    fn max_pool2d(&self, x: View<'_>, w: &Window, index: bool) -> Result<Pooled> {
        fallback::max_pool2d(self, x, w, index)
    }

    /// `a + alpha·b` elementwise (one shape; the optimizers' updates). Default: `MulScalar`,
    /// then `Add`.
    fn add_scaled(&self, a: View<'_>, alpha: f64, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        fallback::add_scaled(self, a, alpha, b)
    }

    /// `max(a + b, 0)` (both read through their layouts, of one shape): a layer's bias and
    /// ReLU in one pass. Default: `binary` add, then `unary` relu.
    fn add_relu(&self, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        fallback::add_relu(self, a, b)
    }

    /// ReLU's gradient from its output `y`: 0 where `y <= 0`, else `dy` (so a NaN output passes
    /// `dy` on, as in PyTorch; one shape). Default: the mask `1 - (y <= 0)` from `binary` le
    /// and two scalar ops, then a `binary` mul.
    fn relu_backward(&self, dy: View<'_>, y: View<'_>) -> Result<Arc<dyn Buffer>> {
        fallback::relu_backward(self, dy, y)
    }

    /// Training-mode batch normalisation of `x` `[N, C, ...]` over every axis but 1, in one
    /// pass of statistics and one of output: `y = (x - mean)·(var + eps)^-½·weight + bias`
    /// with the batch mean and biased variance, which it returns too (`[C]` each; the output
    /// has `x`'s shape, contiguous). `None` (the default) where the backend has no fused
    /// kernel: core then composes the op from primitives.
    fn batch_norm_train(
        &self,
        x: View<'_>,
        weight: Option<View<'_>>,
        bias: Option<View<'_>>,
        eps: f64,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        let _ = (x, weight, bias, eps);
        Ok(None)
    }

    /// Eval-mode batch normalisation with given statistics (`[C]` each, like the affine
    /// parameters), not differentiated: `y = x·α + β` per channel with `α = weight /
    /// sqrt(var + eps)` and `β = bias - mean·α`, one pass. `None` (the default) where the
    /// backend has no fused kernel: core then composes it.
    fn batch_norm_eval(
        &self,
        x: View<'_>,
        mean: View<'_>,
        var: View<'_>,
        weight: Option<View<'_>>,
        bias: Option<View<'_>>,
        eps: f64,
    ) -> Result<Option<Arc<dyn Buffer>>> {
        let _ = (x, mean, var, weight, bias, eps);
        Ok(None)
    }

    /// The gradients of [`Backend::batch_norm_train`] from `dy` (the shape of `x`), `mean` and
    /// `var` (what the forward returned): `[dx, dweight, dbias]` (`dweight` and `dbias` `[C]`,
    /// whether or not the forward had them). `None` (the default) where the backend has no fused
    /// kernel: core then writes the gradient with primitives.
    fn batch_norm_backward(
        &self,
        x: View<'_>,
        dy: View<'_>,
        mean: View<'_>,
        var: View<'_>,
        weight: Option<View<'_>>,
        eps: f64,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        let _ = (x, dy, mean, var, weight, eps);
        Ok(None)
    }

    /// `dst ← beta·dst + alpha·src` in place: the optimizers' updates without a new buffer.
    /// `dst` is read through `layout` (contiguous); `src` has the same shape (any layout, a
    /// broadcast included) and dtype. Returns `false`, leaving `dst` untouched, where the
    /// backend has no in-place path for these operands; the caller then computes a new buffer.
    /// Default: `false`.
    fn scale_add_in_place(
        &self,
        dst: &mut dyn Buffer,
        layout: &Layout,
        beta: f64,
        alpha: f64,
        src: View<'_>,
    ) -> Result<bool> {
        let _ = (dst, layout, beta, alpha, src);
        Ok(false)
    }

    /// Cross-entropy of the rows of `x` `[M, C]` (logits) against class indices `target` `[M]`
    /// (i64), PyTorch's definition with label smoothing `ε`: per row `lp = log_softmax(x)` and
    /// `loss = -(1 - ε)·lp[t] - (ε / C)·Σ_c lp[c]`, 0 where `t = ignore_index`. Returns the
    /// losses `[M]`, `lp` `[M, C]` (for the backward) and the rows' weights `[M]` (0 where
    /// ignored, else 1). A target outside `[0, C)` other than `ignore_index` is
    /// [`crate::Error::IndexOutOfRange`]. Default: `softmax` (log), `gather` and elementwise
    /// primitives.
    fn cross_entropy(
        &self,
        x: View<'_>,
        target: View<'_>,
        label_smoothing: f64,
        ignore_index: i64,
    ) -> Result<[Arc<dyn Buffer>; 3]> {
        fallback::cross_entropy(self, x, target, label_smoothing, ignore_index)
    }

    /// The backward of [`Backend::cross_entropy`]: from its `lp` and weights `w`, the targets
    /// and the gradient `g` `[M]` reaching each row's loss, the gradient of `x`:
    /// `dx[j, c] = g_j·w_j·(exp(lp[j, c]) - ε / C - (1 - ε)·[c = t_j])` `[M, C]`.
    fn cross_entropy_backward(
        &self,
        lp: View<'_>,
        target: View<'_>,
        w: View<'_>,
        g: View<'_>,
        label_smoothing: f64,
        ignore_index: i64,
    ) -> Result<Arc<dyn Buffer>> {
        fallback::cross_entropy_backward(self, lp, target, w, g, label_smoothing, ignore_index)
    }

    /// One LSTM step (PyTorch's gate order i, f, g, o) from the pre-activations `x + r`
    /// (`[B, 4H]` each: the input projection and the recurrent product) and the previous cell
    /// state `c` `[B, H]`: `c' = σ(f)·c + σ(i)·tanh(g)`, `h = σ(o)·tanh(c')`. Default: the
    /// elementwise primitives, one call per op.
    fn lstm_cell(&self, x: View<'_>, r: View<'_>, c: View<'_>) -> Result<LstmCell> {
        fallback::lstm_cell(self, x, r, c)
    }

    /// The backward of [`Backend::lstm_cell`] for one step: from its gate activations `act`,
    /// the previous cell state `c_prev`, `tanh(c')` and the gradients `dh` and `dc` reaching
    /// `h` and `c'`, the gradient of the pre-activations `[B, 4H]` and of `c_prev` `[B, H]`.
    fn lstm_cell_backward(
        &self,
        act: View<'_>,
        c_prev: View<'_>,
        tanh_c: View<'_>,
        dh: View<'_>,
        dc: View<'_>,
    ) -> Result<[Arc<dyn Buffer>; 2]> {
        fallback::lstm_cell_backward(self, act, c_prev, tanh_c, dh, dc)
    }

    /// A whole LSTM sequence (every step of [`Backend::lstm_cell`] and its recurrent product)
    /// in one call: `xp` `[T, B, 4H]` holds each step's input projection, `bias` `[4H]` (when
    /// given; both biases summed) is added to every step's pre-activations, `w_t` `[H, 4H]` is
    /// `W_hhᵀ` (contiguous), `h0` and `c0` `[B, H]`; `reverse` runs the steps from `T - 1` down
    /// to 0. A backend can then keep its threads and caches across the steps instead of
    /// dispatching two ops per step, and add the bias on the way instead of in a pass of its
    /// own. `None` (the default) where the backend has no sequence kernel for these operands:
    /// core then adds the bias and runs the steps one by one.
    fn lstm_sequence(
        &self,
        xp: View<'_>,
        bias: Option<View<'_>>,
        w_t: View<'_>,
        h0: View<'_>,
        c0: View<'_>,
        reverse: bool,
    ) -> Result<Option<LstmSequence>> {
        let _ = (xp, bias, w_t, h0, c0, reverse);
        Ok(None)
    }

    /// Backpropagation through a sequence run by [`Backend::lstm_sequence`]: from `w_hh`
    /// `[4H, H]`, the forward's `act`, `c_prev` and `tanh_c`, and `grad` `[T + 1, B, H]` (the
    /// gradient of its `out`: of each `h_t`, then of the last cell state), the gradients
    /// [`LstmSequenceGrads`]; that of `h0` only with `need_h0`, that of the bias only with
    /// `need_bias` (and then optionally: core sums `dz` where the backend does not). The
    /// weight gradients are the caller's (one GEMM over all steps). `None` (the default) where
    /// the backend has no sequence kernel: core then walks the steps with
    /// [`Backend::lstm_cell_backward`].
    #[allow(clippy::too_many_arguments)]
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
        let _ = (w_hh, act, c_prev, tanh_c, grad, reverse, need_h0, need_bias);
        Ok(None)
    }

    /// 2-d cross-correlation (one group) of `x` `[N, C, H, W]` with `weight` `[O, C, KH, KW]`
    /// over the window `w`, plus `bias` `[O]` when given: a new `[N, O, OH, OW]`. Default:
    /// `unfold2d`, one batched `matmul`, then the bias added.
    fn conv2d(
        &self,
        x: View<'_>,
        weight: View<'_>,
        bias: Option<View<'_>>,
        w: &Window,
    ) -> Result<Arc<dyn Buffer>> {
        fallback::conv2d(self, x, weight, bias, w)
    }

    /// [`Backend::conv2d`] followed by ReLU (a convolution layer and its activation): the
    /// backend may apply the ReLU in the convolution's last pass. Default: `conv2d`, then
    /// `unary` ReLU.
    fn conv2d_relu(
        &self,
        x: View<'_>,
        weight: View<'_>,
        bias: Option<View<'_>>,
        w: &Window,
    ) -> Result<Arc<dyn Buffer>> {
        fallback::conv2d_relu(self, x, weight, bias, w)
    }

    /// The gradient of [`Backend::conv2d`] with respect to its input: `dy` `[N, O, OH, OW]`
    /// into a new `[N, C, H, W]` (`hw` = `[H, W]`). Default: `matmul` by the weight, then
    /// `fold2d`.
    fn conv2d_input_grad(
        &self,
        dy: View<'_>,
        weight: View<'_>,
        w: &Window,
        hw: [usize; 2],
    ) -> Result<Arc<dyn Buffer>> {
        fallback::conv2d_input_grad(self, dy, weight, w, hw)
    }

    /// The gradient of [`Backend::conv2d`] with respect to its weight: a new `[O, C, KH, KW]`
    /// from `x` `[N, C, H, W]` and `dy` `[N, O, OH, OW]`. Default: `unfold2d`, one batched
    /// `matmul`, and a sum over the batch.
    fn conv2d_weight_grad(&self, x: View<'_>, dy: View<'_>, w: &Window) -> Result<Arc<dyn Buffer>> {
        fallback::conv2d_weight_grad(self, x, dy, w)
    }
}

// The compiler checks that `Backend` stays usable as a trait object.
const _: Option<&dyn Backend> = None;
