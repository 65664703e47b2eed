//! Every differentiable op of tessera, one family per file. Each op's user-facing method, its
//! checks and its backward rule sit together; the `//!` block of each file gives the math.
//!
//! - [`elementwise`]: unary maps, binary ops with broadcasting, comparisons, `where_`, casts
//! - [`reduce`]: sum, mean, max, min, argmax, logsumexp, var, softmax, log_softmax
//! - [`matmul`]: matmul (with batch broadcasting), linear
//! - [`shape`]: reshape, permute, transpose, slice, expand, concat, stack, pad, gather, ...
//! - [`conv`]: conv1d, conv2d (any padding incl. JAX `SAME`, dilation, groups), conv_transpose2d
//! - [`pool`]: max_pool1d/2d, avg_pool2d, adaptive_avg_pool2d, global_avg_pool2d
//! - [`norm`]: batch_norm, layer_norm, dropout, embedding
//! - [`loss`]: cross_entropy, nll_loss, mse_loss, binary_cross_entropy_with_logits
//! - [`rnn`]: LSTM and GRU over sequences (multi-layer, bidirectional)
//! - [`select`]: logical ops, masked_fill, tril/triu, cumsum/cumprod, sort/argsort/topk, flip,
//!   roll, repeat
//! - [`einsum`]: any einsum equation, lowered to permute/reshape/matmul/sum
//! - [`attention`]: scaled dot-product attention

pub mod attention;
pub mod conv;
pub mod einsum;
pub mod elementwise;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod reduce;
pub mod rnn;
pub mod select;
pub mod shape;

use crate::backend::FusedKernels;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The device's fused kernel run by `f`: `Some` result, or `None` where the backend has no
/// fused kernels or declines this call — the caller then runs the op's composite. The one
/// place every op asks for a fast path.
pub(crate) fn fused<T>(
    device: &Device,
    f: impl FnOnce(&dyn FusedKernels) -> Result<Option<T>>,
) -> Result<Option<T>> {
    match device.fused() {
        Some(k) => f(k),
        None => Ok(None),
    }
}

/// Both operands on one device.
pub(crate) fn same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device() == b.device() {
        Ok(())
    } else {
        Err(Error::DeviceMismatch {
            op,
            lhs: a.device().name().to_string(),
            rhs: b.device().name().to_string(),
        })
    }
}

/// Both operands on one device with one dtype.
pub(crate) fn same_kind(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    same_device(op, a, b)?;
    if a.dtype() != b.dtype() {
        return Err(Error::DType {
            op,
            msg: format!(
                "operands have dtypes {} and {} (shapes {} and {}); cast one with to_dtype",
                a.dtype(),
                b.dtype(),
                a.shape(),
                b.shape()
            ),
        });
    }
    Ok(())
}

/// A floating-point operand.
pub(crate) fn float_only(op: &'static str, a: &Tensor) -> Result<()> {
    if a.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::DType {
            op,
            msg: format!("needs a floating-point tensor, got {}", a.dtype()),
        })
    }
}

/// `Some(f())` when the gradient is needed.
pub(crate) fn when(need: bool, f: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    if need {
        f().map(Some)
    } else {
        Ok(None)
    }
}
