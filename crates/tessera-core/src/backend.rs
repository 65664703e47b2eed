//! The contract every device implements, in two parts:
//!
//! - [`Backend`]: the required primitives (upload, download, fill, random, cast, unary, binary,
//!   where, reduce, matmul, gather, scatter_add, assemble). A backend implements these and
//!   nothing else to be correct: every other op of tessera is composed from them in
//!   `ops/<family>.rs`.
//! - [`FusedKernels`], reached through [`Backend::fused`]: optional fast paths for composite
//!   ops, each returning `Ok(None)` to decline ("compose it"). The argument and result types
//!   they share live in [`args`].
//!
//! Conventions shared by all primitives and kernels:
//! - every input comes with a [`Layout`] (shape, strides, offset) into its buffer;
//! - every output is a new buffer, contiguous, in row-major order of the output shape;
//! - operands of binary and ternary ops have already been broadcast to one shape by core
//!   (broadcast dims have stride 0), and share one dtype unless stated otherwise.

pub mod args;
mod composed;
mod fused;

pub use args::{
    cross_entropy_backward_fits, cross_entropy_fits, Attention, LstmCell, LstmSequence,
    LstmSequenceGrads, Pooled, Window,
};
pub use composed::Composed;
pub use fused::FusedKernels;

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
    /// ([`FusedKernels::scale_add_in_place`]). The default, `None`, makes those kernels decline, and
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

    // ---- the one optional part ----

    /// This backend's fused kernels: fast paths for composite ops (fused bias + ReLU, whole
    /// LSTM sequences, convolution algorithms, ...). `None` (the default) means the backend has
    /// none, and every composite op runs as tensor ops over the primitives above; a backend that
    /// returns `Some` may still decline any single call (see [`FusedKernels`]).
    fn fused(&self) -> Option<&dyn FusedKernels> {
        None
    }
}

// The compiler checks that `Backend` stays usable as a trait object.
const _: Option<&dyn Backend> = None;
