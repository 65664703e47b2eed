//! Reductions. Backward rules (g reshaped to keep the reduced dims as size 1, then broadcast):
//!
//! | op | rule |
//! | --- | --- |
//! | sum | g |
//! | mean | g / N |
//! | amax / amin | g·[x = y] / count(x = y): tied extremes share the gradient evenly |
//! | logsumexp | composite: m + log Σ exp(x - m), m the (detached) max |
//! | var | composite, two-pass: Σ (x - mean)² / (N - correction) |
//! | softmax | y·(g - Σ g·y) |
//! | log_softmax | g - exp(y)·Σ g |

use super::{float_only, when};
use crate::backend::ReduceOp;
use crate::error::{Error, Result};
use crate::layout::normalize_dim;
use crate::tape::is_grad_enabled;
use crate::tensor::Tensor;

/// Sorted, distinct, non-negative dims; an error names the op on repeats or out-of-range dims.
pub(crate) fn normalize_dims(op: &'static str, dims: &[isize], rank: usize) -> Result<Vec<usize>> {
    if rank == 0 {
        // A 0-d tensor accepts dim 0 or -1, as in PyTorch, and has nothing to reduce.
        return match dims.iter().find(|&&d| d != 0 && d != -1) {
            Some(&d) => Err(Error::invalid(
                op,
                format!("dim {d} is out of range for a 0-d tensor"),
            )),
            None => Ok(vec![]),
        };
    }
    let mut out = Vec::with_capacity(dims.len());
    for &d in dims {
        let nd = normalize_dim(op, d, rank)?;
        if out.contains(&nd) {
            return Err(Error::invalid(
                op,
                format!("dim {d} appears twice in {dims:?}"),
            ));
        }
        out.push(nd);
    }
    out.sort_unstable();
    Ok(out)
}

fn kept_shape(dims: &[usize], axes: &[usize]) -> Vec<usize> {
    let mut s = dims.to_vec();
    for &a in axes {
        s[a] = 1;
    }
    s
}

fn removed_shape(dims: &[usize], axes: &[usize]) -> Vec<usize> {
    dims.iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect()
}

impl Tensor {
    /// `op` over `axes` of this tensor, keeping them as size 1 (not recorded).
    fn reduce_raw(&self, op: ReduceOp, axes: &[usize]) -> Result<Tensor> {
        if self.rank() == 0 {
            // Nothing to reduce: the value itself (or index 0).
            return match op {
                ReduceOp::ArgMax | ReduceOp::ArgMin => {
                    Tensor::zeros(&[], crate::DType::I64, self.device())
                }
                _ => Ok(self.detach()),
            };
        }
        if matches!(
            op,
            ReduceOp::Max | ReduceOp::Min | ReduceOp::ArgMax | ReduceOp::ArgMin
        ) && axes.iter().any(|&a| self.dims()[a] == 0)
        {
            return Err(Error::invalid(
                "reduce",
                format!(
                    "cannot take {op:?} over an empty dim of shape {}",
                    self.shape()
                ),
            ));
        }
        let buf = self.device().backend().reduce(op, self.view(), axes)?;
        Ok(self.output(buf, &kept_shape(self.dims(), axes)))
    }

    /// The gradient `g` of a reduction output, reshaped so it broadcasts against the input.
    fn unreduce(g: &Tensor, input_dims: &[usize], axes: &[usize], keepdim: bool) -> Result<Tensor> {
        let g = if keepdim {
            g.clone()
        } else {
            g.reshape_usize(&kept_shape(input_dims, axes))?
        };
        g.broadcast_to(input_dims)
    }

    /// Sum over `dims` (negative dims count from the end).
    pub fn sum(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        if self.dtype() == crate::DType::Bool {
            // Counts, as PyTorch: bool sums to i64.
            return self.to_dtype(crate::DType::I64)?.sum(dims, keepdim);
        }
        let axes = normalize_dims("sum", dims, self.rank())?;
        let out = self.reduce_raw(ReduceOp::Sum, &axes)?;
        let out = if keepdim {
            out
        } else {
            out.reshape_usize(&removed_shape(self.dims(), &axes))?
        };
        let xd = self.dims().to_vec();
        Ok(out.record_op("sum", &[self], move |g, _| {
            Ok(vec![Some(Tensor::unreduce(g, &xd, &axes, keepdim)?)])
        }))
    }

    /// Sum of all elements, shape `[]`.
    pub fn sum_all(&self) -> Result<Tensor> {
        let dims: Vec<isize> = (0..self.rank() as isize).collect();
        if dims.is_empty() {
            return Ok(self.clone());
        }
        self.sum(&dims, false)
    }

    /// Mean over `dims`.
    pub fn mean(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        float_only("mean", self)?;
        let axes = normalize_dims("mean", dims, self.rank())?;
        let n: usize = axes.iter().map(|&a| self.dims()[a]).product();
        self.sum(dims, keepdim)?.mul_scalar(1.0 / n as f64)
    }

    /// Mean of all elements, shape `[]`.
    pub fn mean_all(&self) -> Result<Tensor> {
        float_only("mean", self)?;
        // Over no elements this is 0·∞ = NaN, as in PyTorch.
        self.sum_all()?.mul_scalar(1.0 / self.numel() as f64)
    }

    fn extreme(
        &self,
        op: &'static str,
        r: ReduceOp,
        dims: &[isize],
        keepdim: bool,
    ) -> Result<Tensor> {
        let axes = normalize_dims(op, dims, self.rank())?;
        let out = self.reduce_raw(r, &axes)?;
        let out = if keepdim {
            out
        } else {
            out.reshape_usize(&removed_shape(self.dims(), &axes))?
        };
        let x = self.clone();
        Ok(out.record_op(op, &[self], move |g, _| {
            let xd = x.dims().to_vec();
            // The extreme is recomputed from x so the mask is right under create_graph too.
            let y = x.detach().reduce_raw(r, &axes)?.broadcast_to(&xd)?;
            let mask = x.flag(crate::backend::BinaryOp::Eq, &y)?;
            let count = mask.sum(&axes.iter().map(|&a| a as isize).collect::<Vec<_>>(), true)?;
            let g = Tensor::unreduce(g, &xd, &axes, keepdim)?;
            Ok(vec![Some(g.mul(&mask)?.div(&count)?)])
        }))
    }

    /// Maximum over `dims` (`torch.amax`); tied maxima share the gradient evenly.
    pub fn amax(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.extreme("amax", ReduceOp::Max, dims, keepdim)
    }

    /// Minimum over `dims` (`torch.amin`); tied minima share the gradient evenly.
    pub fn amin(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.extreme("amin", ReduceOp::Min, dims, keepdim)
    }

    fn arg_extreme(
        &self,
        op: &'static str,
        r: ReduceOp,
        dim: isize,
        keepdim: bool,
    ) -> Result<Tensor> {
        let axes = normalize_dims(op, &[dim], self.rank())?;
        let out = self.reduce_raw(r, &axes)?;
        if keepdim || self.rank() == 0 {
            Ok(out)
        } else {
            out.reshape_usize(&removed_shape(self.dims(), &axes))
        }
    }

    /// Index (i64) of the first maximum along `dim`.
    pub fn argmax(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.arg_extreme("argmax", ReduceOp::ArgMax, dim, keepdim)
    }

    /// Index (i64) of the first minimum along `dim`.
    pub fn argmin(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.arg_extreme("argmin", ReduceOp::ArgMin, dim, keepdim)
    }

    /// `log Σ exp(x)` over `dims`, computed as `m + log Σ exp(x - m)` so nothing overflows.
    pub fn logsumexp(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        float_only("logsumexp", self)?;
        let axes = normalize_dims("logsumexp", dims, self.rank())?;
        // The result does not depend on m, so m needs no gradient; a group of -inf keeps m = 0.
        let m = self.detach().reduce_raw(ReduceOp::Max, &axes)?;
        let finite = m.abs()?.lt(&m.scalar_like(f64::INFINITY)?)?;
        let m = finite.where_(&m, &m.scalar_like(0.0)?)?;
        let out = self.sub(&m)?.exp()?.sum(dims, true)?.log()?.add(&m)?;
        if keepdim {
            Ok(out)
        } else {
            out.reshape_usize(&removed_shape(self.dims(), &axes))
        }
    }

    /// Variance over `dims` with `correction` (1 = unbiased), in two passes for accuracy.
    pub fn var(&self, dims: &[isize], correction: usize, keepdim: bool) -> Result<Tensor> {
        float_only("var", self)?;
        let axes = normalize_dims("var", dims, self.rank())?;
        let n: usize = axes.iter().map(|&a| self.dims()[a]).product();
        if n <= correction {
            return Err(Error::invalid(
                "var",
                format!("{n} elements per group with correction {correction} leave no degrees of freedom"),
            ));
        }
        let centered = self.sub(&self.mean(dims, true)?)?;
        centered
            .square()?
            .sum(dims, keepdim)?
            .mul_scalar(1.0 / (n - correction) as f64)
    }

    fn softmax_impl(&self, op: &'static str, dim: isize, log: bool) -> Result<Tensor> {
        float_only(op, self)?;
        if self.rank() == 0 {
            return self
                .unsqueeze(0)?
                .softmax_impl(op, 0, log)?
                .reshape_usize(&[]);
        }
        let d = normalize_dim(op, dim, self.rank())?;
        let out = match super::fused(self.device(), |k| k.softmax(self.view(), d, log))? {
            Some(buf) => self.output(buf, self.dims()),
            None => crate::no_grad(|| softmax_composite(self, d, log))?,
        };
        let (x, y) = (self.clone(), out.detach());
        Ok(out.record_op(op, &[self], move |g, _| {
            let y = if is_grad_enabled() {
                x.softmax_impl(op, dim, log)?
            } else {
                y.clone()
            };
            let di = d as isize;
            let gx = if log {
                g.sub(&y.exp()?.mul(&g.sum(&[di], true)?)?)?
            } else {
                y.mul(&g.sub(&g.mul(&y)?.sum(&[di], true)?)?)?
            };
            Ok(vec![when(true, || Ok(gx))?])
        }))
    }

    /// Softmax along `dim`, stable against large inputs.
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl("softmax", dim, false)
    }

    /// Log-softmax along `dim`, stable against large inputs.
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl("log_softmax", dim, true)
    }

    /// Sums a broadcast gradient back to `shape` (the shape it was broadcast from).
    pub fn sum_to_shape(&self, shape: &[usize]) -> Result<Tensor> {
        if self.dims() == shape {
            return Ok(self.clone());
        }
        let extra = self.rank().checked_sub(shape.len()).ok_or_else(|| {
            Error::shape(
                "sum_to_shape",
                "target has more dims than the tensor",
                self.dims(),
                shape,
            )
        })?;
        let mut axes = Vec::new();
        for (i, &d) in self.dims().iter().enumerate() {
            if i < extra || (shape[i - extra] == 1 && d != 1) {
                axes.push(i as isize);
            } else if shape[i - extra] != d {
                return Err(Error::shape(
                    "sum_to_shape",
                    "shape is not a broadcast source of the tensor",
                    self.dims(),
                    shape,
                ));
            }
        }
        let s = if axes.is_empty() {
            self.clone()
        } else {
            self.sum(&axes, true)?
        };
        s.reshape_usize(shape)
    }
}

/// Softmax's composite: `exp(x - m) / Σ exp(x - m)`, or `x - m - log Σ exp(x - m)` for the log
/// form, with `m` the max along `dim` so no `exp` overflows.
fn softmax_composite(x: &Tensor, dim: usize, log: bool) -> Result<Tensor> {
    let d = [dim as isize];
    let shifted = x.sub(&x.amax(&d, true)?)?;
    let e = shifted.exp()?;
    let total = e.sum(&d, true)?;
    if log {
        shifted.sub(&total.log()?)
    } else {
        e.div(&total)
    }
}
