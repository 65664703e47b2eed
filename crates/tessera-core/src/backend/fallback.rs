//! Default bodies of the composite ops of [`Backend`], written with its primitives only.

use super::{Backend, BinaryOp, Buffer, ReduceOp, UnaryOp, View};
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
