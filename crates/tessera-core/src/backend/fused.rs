//! Optional fast paths, one protocol for all of them.
//!
//! Every method takes buffers and layouts like a primitive and returns `Result<Option<T>>`:
//! `Ok(Some(value))` when the backend ran its kernel, `Ok(None)` when it declines (no kernel, or
//! not for these dtypes or layouts), and an error only for what is wrong whichever way the op
//! runs (a target out of range, a device fault). Each default is `Ok(None)`, so a backend
//! overrides exactly the kernels it has. On `None` core runs the op's composite, written once
//! with tensor ops in `ops/<family>.rs` — the same code that records the gradient under
//! `backward_create_graph` — so a fused kernel can always be checked against it (see
//! [`super::Composed`]).

use super::args::{Attention, LstmCell, LstmSequence, LstmSequenceGrads, Pooled, Window};
use super::{Buffer, View};
use crate::error::Result;
use crate::layout::Layout;
use std::sync::Arc;

/// A new buffer, or `None` to decline.
type Fused = Result<Option<Arc<dyn Buffer>>>;

/// A backend's fused kernels, reached through [`super::Backend::fused`]. See the module docs
/// for the protocol; each method names the composite it replaces.
pub trait FusedKernels: Send + Sync {
    /// Softmax (or log-softmax when `log`) along `dim`, stable against large inputs.
    fn softmax(&self, x: View<'_>, dim: usize, log: bool) -> Fused {
        let _ = (x, dim, log);
        Ok(None)
    }

    /// im2col: the windows of `x` `[N, C, H, W]` as `[N, C, taps, positions]`, reading `fill`
    /// outside the input.
    fn unfold2d(&self, x: View<'_>, w: &Window, fill: f64) -> Fused {
        let _ = (x, w, fill);
        Ok(None)
    }

    /// col2im, the adjoint of `unfold2d`: `cols` `[N, C, taps, positions]` summed into a new
    /// `[N, C, H, W]` (`hw` = `[H, W]`); entries that read the fill value are dropped.
    fn fold2d(&self, cols: View<'_>, w: &Window, hw: [usize; 2]) -> Fused {
        let _ = (cols, w, hw);
        Ok(None)
    }

    /// Max pooling of `x` `[N, C, H, W]` over the window `w` (padding reads -inf): the maxima,
    /// a new `[N, C, OH, OW]`, and, when `index` (a backward needs it), for each the flat index
    /// `h·W + w` in its input plane of the element it came from, a new i64 `[N, C, OH·OW]`
    /// (NaN wins, as in PyTorch).
    fn max_pool2d(&self, x: View<'_>, w: &Window, index: bool) -> Result<Option<Pooled>> {
        let _ = (x, w, index);
        Ok(None)
    }

    /// `a + alpha·b` elementwise (one shape; the optimizers' updates).
    fn add_scaled(&self, a: View<'_>, alpha: f64, b: View<'_>) -> Fused {
        let _ = (a, alpha, b);
        Ok(None)
    }

    /// `max(a + b, 0)` (both read through their layouts, of one shape): a layer's bias and
    /// ReLU in one pass; a NaN stays NaN.
    fn add_relu(&self, a: View<'_>, b: View<'_>) -> Fused {
        let _ = (a, b);
        Ok(None)
    }

    /// ReLU's gradient from its output `y`: 0 where `y <= 0`, else `dy` (so a NaN output passes
    /// `dy` on, as in PyTorch; one shape).
    fn relu_backward(&self, dy: View<'_>, y: View<'_>) -> Fused {
        let _ = (dy, y);
        Ok(None)
    }

    /// `a·b + c` for `a` `[m, k]` and `b` `[k, n]` (any strides) and `c` read through a layout
    /// of shape `[m, n]` (a bias broadcast over the rows): a linear layer's product and bias
    /// in one pass (composite: [`crate::Tensor::linear`]).
    fn matmul_add(&self, a: View<'_>, b: View<'_>, c: View<'_>) -> Fused {
        let _ = (a, b, c);
        Ok(None)
    }

    /// GELU of `x`: `0.5·x·(1 + erf(x/√2))`, or with `tanh_form` PyTorch's approximation
    /// `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))` (composite: [`crate::Tensor::gelu`]).
    fn gelu(&self, x: View<'_>, tanh_form: bool) -> Fused {
        let _ = (x, tanh_form);
        Ok(None)
    }

    /// GELU's gradient `dy·gelu'(x)` for the chosen form (`dy` and `x` of one shape).
    fn gelu_backward(&self, dy: View<'_>, x: View<'_>, tanh_form: bool) -> Fused {
        let _ = (dy, x, tanh_form);
        Ok(None)
    }

    /// `dst ← beta·dst + alpha·src` in place: the optimizers' updates without a new buffer.
    /// `dst` is read through `layout` (contiguous); `src` has the same shape (any layout, a
    /// broadcast included) and dtype. `Some(())` when done; `None` leaves `dst` untouched, and
    /// the caller computes a new buffer.
    fn scale_add_in_place(
        &self,
        dst: &mut dyn Buffer,
        layout: &Layout,
        beta: f64,
        alpha: f64,
        src: View<'_>,
    ) -> Result<Option<()>> {
        let _ = (dst, layout, beta, alpha, src);
        Ok(None)
    }

    /// Training-mode batch normalisation of `x` `[N, C, ...]` over every axis but 1:
    /// `y = (x - mean)·(var + eps)^-½·weight + bias` with the batch mean and biased variance:
    /// `[y, mean, var]` (`y` contiguous in `x`'s shape, the statistics `[C]`).
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
    /// parameters): `y = x·α + β` per channel with `α = weight / sqrt(var + eps)` and
    /// `β = bias - mean·α`.
    fn batch_norm_eval(
        &self,
        x: View<'_>,
        mean: View<'_>,
        var: View<'_>,
        weight: Option<View<'_>>,
        bias: Option<View<'_>>,
        eps: f64,
    ) -> Fused {
        let _ = (x, mean, var, weight, bias, eps);
        Ok(None)
    }

    /// The gradients of [`FusedKernels::batch_norm_train`] from `dy` (the shape of `x`),
    /// `mean` and `var` (what the forward returned): `[dx, dweight, dbias]` (`dweight` and
    /// `dbias` `[C]`, whether or not the forward had them).
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

    /// Layer normalisation of the rows of `x` (its last dims, `d` elements each, flattened):
    /// `y = (x - mean)·rstd·weight + bias` per row with `rstd = (var + eps)^-½` (biased
    /// variance); `weight` and `bias` have `d` elements. Returns `[y, mean, rstd]` (`y`
    /// contiguous in `x`'s shape, the statistics one per row).
    fn layer_norm(
        &self,
        x: View<'_>,
        d: usize,
        weight: Option<View<'_>>,
        bias: Option<View<'_>>,
        eps: f64,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        let _ = (x, d, weight, bias, eps);
        Ok(None)
    }

    /// The gradients of [`FusedKernels::layer_norm`] from `dy` (the shape of `x`) and the
    /// forward's `mean` and `rstd`: `[dx, dweight, dbias]` (`d` elements each for the last two,
    /// whether or not the forward had them).
    fn layer_norm_backward(
        &self,
        x: View<'_>,
        dy: View<'_>,
        mean: View<'_>,
        rstd: View<'_>,
        weight: Option<View<'_>>,
        d: usize,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        let _ = (x, dy, mean, rstd, weight, d);
        Ok(None)
    }

    /// Cross-entropy of the rows of `x` `[M, C]` (logits) against class indices `target` `[M]`
    /// (i64), PyTorch's definition with label smoothing `ε`: per row `lp = log_softmax(x)` and
    /// `loss = -(1 - ε)·lp[t] - (ε / C)·Σ_c lp[c]`, 0 where `t = ignore_index`. Returns the
    /// losses `[M]`, `lp` `[M, C]` (for the backward) and the rows' weights `[M]` (0 where
    /// ignored, else 1). A target outside `[0, C)` other than `ignore_index` is
    /// [`crate::Error::IndexOutOfRange`]. Core only calls it with operands that pass
    /// [`super::cross_entropy_fits`].
    fn cross_entropy(
        &self,
        x: View<'_>,
        target: View<'_>,
        label_smoothing: f64,
        ignore_index: i64,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        let _ = (x, target, label_smoothing, ignore_index);
        Ok(None)
    }

    /// The backward of [`FusedKernels::cross_entropy`]: from its `lp` and weights `w`, the
    /// targets and the gradient `g` `[M]` reaching each row's loss, the gradient of `x`:
    /// `dx[j, c] = g_j·w_j·(exp(lp[j, c]) - ε / C - (1 - ε)·[c = t_j])` `[M, C]`.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_backward(
        &self,
        lp: View<'_>,
        target: View<'_>,
        w: View<'_>,
        g: View<'_>,
        label_smoothing: f64,
        ignore_index: i64,
    ) -> Fused {
        let _ = (lp, target, w, g, label_smoothing, ignore_index);
        Ok(None)
    }

    /// One LSTM step (PyTorch's gate order i, f, g, o) from the pre-activations `x + r`
    /// (`[B, 4H]` each: the input projection and the recurrent product) and the previous cell
    /// state `c` `[B, H]`: `c' = σ(f)·c + σ(i)·tanh(g)`, `h = σ(o)·tanh(c')`.
    fn lstm_cell(&self, x: View<'_>, r: View<'_>, c: View<'_>) -> Result<Option<LstmCell>> {
        let _ = (x, r, c);
        Ok(None)
    }

    /// The backward of [`FusedKernels::lstm_cell`] for one step: from its gate activations
    /// `act`, the previous cell state `c_prev`, `tanh(c')` and the gradients `dh` and `dc`
    /// reaching `h` and `c'`, the gradient of the pre-activations `[B, 4H]` and of `c_prev`
    /// `[B, H]`.
    fn lstm_cell_backward(
        &self,
        act: View<'_>,
        c_prev: View<'_>,
        tanh_c: View<'_>,
        dh: View<'_>,
        dc: View<'_>,
    ) -> Result<Option<[Arc<dyn Buffer>; 2]>> {
        let _ = (act, c_prev, tanh_c, dh, dc);
        Ok(None)
    }

    /// A whole LSTM sequence (every step of [`FusedKernels::lstm_cell`] and its recurrent
    /// product) in one call: `xp` `[T, B, 4H]` holds each step's input projection, `bias`
    /// `[4H]` (when given; both biases summed) is added to every step's pre-activations, `w_t`
    /// `[H, 4H]` is `W_hhᵀ` (contiguous), `h0` and `c0` `[B, H]`; `reverse` runs the steps from
    /// `T - 1` down to 0.
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

    /// Backpropagation through a sequence run by [`FusedKernels::lstm_sequence`]: from `w_hh`
    /// `[4H, H]`, the forward's `act`, `c_prev` and `tanh_c`, and `grad` `[T + 1, B, H]` (the
    /// gradient of its `out`: of each `h_t`, then of the last cell state), the gradients
    /// [`LstmSequenceGrads`]; that of `h0` only with `need_h0`, that of the bias only with
    /// `need_bias` (and then optionally: core sums `dz` where the backend does not). The
    /// weight gradients are core's (one GEMM over all steps).
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
    /// over the window `w`, plus `bias` `[O]` when given, then a ReLU when `relu` (the
    /// backend may apply it in the convolution's last pass): a new `[N, O, OH, OW]`.
    fn conv2d(
        &self,
        x: View<'_>,
        weight: View<'_>,
        bias: Option<View<'_>>,
        w: &Window,
        relu: bool,
    ) -> Fused {
        let _ = (x, weight, bias, w, relu);
        Ok(None)
    }

    /// The gradient of [`FusedKernels::conv2d`] (without its ReLU) with respect to its input:
    /// `dy` `[N, O, OH, OW]` into a new `[N, C, H, W]` (`hw` = `[H, W]`).
    fn conv2d_input_grad(
        &self,
        dy: View<'_>,
        weight: View<'_>,
        w: &Window,
        hw: [usize; 2],
    ) -> Fused {
        let _ = (dy, weight, w, hw);
        Ok(None)
    }

    /// The gradient of [`FusedKernels::conv2d`] (without its ReLU) with respect to its weight:
    /// a new `[O, C, KH, KW]` from `x` `[N, C, H, W]` and `dy` `[N, O, OH, OW]`.
    fn conv2d_weight_grad(&self, x: View<'_>, dy: View<'_>, w: &Window) -> Fused {
        let _ = (x, dy, w);
        Ok(None)
    }

    /// Stable argsort along the last dim of the contiguous `x` (f32, f64, i64 or half): a new
    /// i64 buffer of `x`'s shape whose row `r` lists the positions of row `r`'s elements in
    /// ascending (`descending`: descending) order, equal values in their original order and
    /// NaN as the largest value. Replaces the O(n²) ranking composite of `Tensor::argsort`.
    fn argsort(&self, x: View<'_>, descending: bool) -> Fused {
        let _ = (x, descending);
        Ok(None)
    }

    /// Scaled dot-product attention `softmax(q·kᵀ·scale + bias)·v` without storing the
    /// `[L, S]` scores: the output `[B, L, Ev]` and each query row's log-sum-exp of its scores
    /// `[B, L]` (what the backward needs). Replaces the composite of
    /// `ops::attention::scaled_dot_product_attention`.
    fn attention(&self, a: &Attention<'_>) -> Result<Option<[Arc<dyn Buffer>; 2]>> {
        let _ = a;
        Ok(None)
    }

    /// The backward of [`FusedKernels::attention`]: from its output `out`, log-sum-exp `lse`
    /// and the output's gradient `dout` `[B, L, Ev]`, the gradients of `q`, `k` and `v`.
    fn attention_backward(
        &self,
        a: &Attention<'_>,
        out: View<'_>,
        lse: View<'_>,
        dout: View<'_>,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        let _ = (a, out, lse, dout);
        Ok(None)
    }
}
