//! The argument and result types of [`crate::FusedKernels`]: what a fused kernel is given and
//! returns. They live apart from the contract so that adding a kernel adds its types here, not
//! to the trait file.

use super::{Buffer, View};
use crate::dtype::DType;
use std::sync::Arc;

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

/// What [`FusedKernels::lstm_cell`](crate::FusedKernels::lstm_cell) returns, each a new contiguous buffer: the gate activations
/// `[B, 4H]` (`σ(i), σ(f), tanh(g), σ(o)`), `c` `[B, H]`, `tanh(c)` `[B, H]` and `h` `[B, H]`.
pub type LstmCell = [Arc<dyn Buffer>; 4];

/// What [`FusedKernels::lstm_sequence`](crate::FusedKernels::lstm_sequence) returns, each a new contiguous buffer in time order (index
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

/// What [`FusedKernels::lstm_sequence_backward`](crate::FusedKernels::lstm_sequence_backward) returns, each a new contiguous buffer.
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

/// Whether [`FusedKernels::cross_entropy`](crate::FusedKernels::cross_entropy)'s operands are what core passes: logits `[M, C]` with
/// `M·C > 0` and i64 targets `[M]`. A backend's kernel takes these (in the dtypes it has);
/// anything else goes to the default. One check for every backend.
pub fn cross_entropy_fits(x: View<'_>, target: View<'_>) -> bool {
    let s = x.layout.shape();
    s.len() == 2
        && s[0] * s[1] > 0
        && target.layout.shape() == [s[0]]
        && target.buf.dtype() == DType::I64
}

/// The same for [`FusedKernels::cross_entropy_backward`](crate::FusedKernels::cross_entropy_backward): `lp` `[M, C]`, i64 targets `[M]`, and the
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

/// What [`FusedKernels::max_pool2d`](crate::FusedKernels::max_pool2d) returns: the maxima, and the plane index of each when asked.
pub type Pooled = (Arc<dyn Buffer>, Option<Arc<dyn Buffer>>);

/// The operands of a fused scaled dot-product attention over `B` independent problems
/// (batch × heads): `q` `[B, L, E]`, `k` `[B, S, E]`, `v` `[B, S, Ev]` of one float dtype,
/// an optional additive `bias` viewed as `[B, L, S]` (its strides may be 0 where a mask
/// broadcasts; −∞ entries mask a key out), the causal rule (query `i` sees keys `0..=i`) and
/// the scale applied to `q·kᵀ`.
#[derive(Clone, Copy, Debug)]
pub struct Attention<'a> {
    pub q: View<'a>,
    pub k: View<'a>,
    pub v: View<'a>,
    pub bias: Option<View<'a>>,
    pub causal: bool,
    pub scale: f64,
}
