//! Matrix products. Backward rules for C = A·B (batched; batch dims broadcast):
//!
//! | op | rule |
//! | --- | --- |
//! | bmm | dA = G·Bᵀ, dB = Aᵀ·G (computed as (Gᵀ·A)ᵀ when B is a transposed view, likewise A) |
//! | matmul | composite: 1-d operands are unsqueezed, batch dims expanded (expand's rule sums them back), then bmm |
//! | linear | dx = G·W, dW = Gᵀ·x (rows of x flattened), db = Σ_rows G; composite x·Wᵀ + b where the backend has no `matmul_add` |

use super::{float_only, same_kind, when};
use crate::error::{Error, Result};
use crate::layout::broadcast_shapes;
use crate::tensor::Tensor;

/// Whether `t` is a transposed contiguous matrix (2-d, strides `(1, rows)`). Batched operands
/// keep the plain rule: their gradients are summed over broadcast batch dims, which is faster
/// on row-major products.
fn col_major(t: &Tensor) -> bool {
    let (d, s) = (t.dims(), t.strides());
    t.rank() == 2 && d[0] > 1 && d[1] > 1 && s[0] == 1 && s[1] == d[0]
}

impl Tensor {
    /// Product of `[..., m, k]` and `[..., k, n]` with identical batch dims.
    fn bmm(&self, rhs: &Tensor) -> Result<Tensor> {
        let r = self.rank();
        let mut shape = self.dims().to_vec();
        shape[r - 1] = rhs.dims()[r - 1];
        crate::layout::checked_numel("matmul", &shape, self.dtype().size_in_bytes())?;
        let buf = self.device().backend().matmul(self.view(), rhs.view())?;
        let out = self.output(buf, &shape);
        let (a, b) = (self.clone(), rhs.clone());
        Ok(out.record_op("matmul", &[self, rhs], move |g, n| {
            // An operand that is a transposed view (x·Wᵀ in linear) gets its gradient as the
            // transpose of a contiguous product, so the gradient reaching the stored tensor
            // (W) is contiguous and the optimizer's update runs on the fast path.
            Ok(vec![
                when(n[0], || {
                    if col_major(&a) {
                        b.bmm(&g.transpose(-1, -2)?)?.transpose(-1, -2)
                    } else {
                        g.bmm(&b.transpose(-1, -2)?)
                    }
                })?,
                when(n[1], || {
                    if col_major(&b) {
                        g.transpose(-1, -2)?.bmm(&a)?.transpose(-1, -2)
                    } else {
                        a.transpose(-1, -2)?.bmm(g)
                    }
                })?,
            ])
        }))
    }

    /// `torch.matmul`: dot product of 1-d tensors, matrix product of 2-d ones, and batched
    /// products (batch dims broadcast) beyond; a 1-d operand acts as a row (left) or a column
    /// (right) vector whose dim is removed from the result.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        same_kind("matmul", self, rhs)?;
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(Error::shape(
                "matmul",
                "both operands need at least one dim",
                self.dims(),
                rhs.dims(),
            ));
        }
        let a = if self.rank() == 1 {
            self.unsqueeze(0)?
        } else {
            self.clone()
        };
        let b = if rhs.rank() == 1 {
            rhs.unsqueeze(1)?
        } else {
            rhs.clone()
        };
        let (ra, rb) = (a.rank(), b.rank());
        let (m, k, k2, n) = (
            a.dims()[ra - 2],
            a.dims()[ra - 1],
            b.dims()[rb - 2],
            b.dims()[rb - 1],
        );
        if k != k2 {
            return Err(Error::shape(
                "matmul",
                format!("inner dims differ ({k} vs {k2})"),
                self.dims(),
                rhs.dims(),
            ));
        }
        if ra > 2 && rb == 2 {
            // `[..., m, k] · [k, n]` folds the batch into rows, as PyTorch does: one
            // `[rows, k] · [k, n]` product, whose weight gradient is one GEMM over every row
            // instead of a product per batch item summed afterwards.
            let rows: usize = a.dims()[..ra - 1].iter().product();
            let out = a.reshape_usize(&[rows, k])?.bmm(&b)?;
            let mut shape = a.dims()[..ra - 1].to_vec();
            if rhs.rank() > 1 {
                shape.push(n);
            }
            return out.reshape_usize(&shape);
        }
        let batch =
            broadcast_shapes("matmul", &a.dims()[..ra - 2], &b.dims()[..rb - 2]).map_err(|_| {
                Error::shape(
                    "matmul",
                    "batch dims cannot be broadcast",
                    self.dims(),
                    rhs.dims(),
                )
            })?;
        let mut sa = batch.clone();
        sa.extend([m, k]);
        let mut sb = batch.clone();
        sb.extend([k, n]);
        let out = a.broadcast_to(&sa)?.bmm(&b.broadcast_to(&sb)?)?;
        // Drop the dims that stood in for 1-d operands.
        let mut shape = batch;
        if self.rank() > 1 {
            shape.push(m);
        }
        if rhs.rank() > 1 {
            shape.push(n);
        }
        if shape.as_slice() == out.dims() {
            Ok(out)
        } else {
            out.reshape_usize(&shape)
        }
    }

    /// `x·weightᵀ + bias` for `x` `[..., in]`, `weight` `[out, in]`, `bias` `[out]`.
    /// With a bias it is one tape node when the backend has [`FusedKernels::matmul_add`]
    /// (the product accumulates onto the bias, PyTorch's `addmm`), else `x·Wᵀ` then `+ b`.
    ///
    /// [`FusedKernels::matmul_add`]: crate::FusedKernels::matmul_add
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let Some(b) = bias else {
            return self.linear_product("linear", weight, None);
        };
        match self.linear_fused(weight, b)? {
            Some(y) => Ok(y),
            None => self.linear_product("linear", weight, bias)?.add(b),
        }
    }

    /// `x·Wᵀ + b` through the backend's `matmul_add`, rows of `x` flattened; `None` where the
    /// backend declines. Backward: `dx = G·W`, `dW = Gᵀ·x`, `db = Σ_rows G`.
    fn linear_fused(&self, weight: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
        let op = "linear";
        self.check_linear(op, weight, Some(b))?;
        same_kind(op, self, weight)?;
        same_kind(op, self, b)?;
        let (n, k) = (weight.dims()[0], weight.dims()[1]);
        if k == 0 || self.numel() == 0 {
            return Ok(None);
        }
        let rows = self.numel() / k;
        let x = self.reshape_usize(&[rows, k])?;
        let wt = weight.t()?;
        let lb = b.layout().broadcast_to(&[rows, n]);
        let bias = crate::backend::View {
            buf: b.buffer().as_ref(),
            layout: &lb,
        };
        let fused = super::fused(self.device(), |kern| {
            kern.matmul_add(x.view(), wt.view(), bias)
        })?;
        let Some(buf) = fused else {
            return Ok(None);
        };
        let (xs, w) = (x.clone(), weight.clone());
        let out = x
            .output(buf, &[rows, n])
            .record_op(op, &[&x, weight, b], move |g, need| {
                Ok(vec![
                    when(need[0], || g.matmul(&w))?,
                    when(need[1], || g.t()?.matmul(&xs))?,
                    when(need[2], || g.sum(&[0], false))?,
                ])
            });
        let mut shape = self.dims().to_vec();
        // check_linear refused a rank-0 input, so there is a last dim.
        *shape.last_mut().expect("rank checked") = n;
        Ok(Some(out.reshape_usize(&shape)?))
    }

    /// `relu(x·weightᵀ + bias)`, the bias and ReLU in one pass ([`Tensor::add_relu`]).
    pub fn linear_relu(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let y = self.linear_product("linear_relu", weight, bias)?;
        match bias {
            Some(b) => y.add_relu(b),
            None => y.relu(),
        }
    }

    /// `x·weightᵀ` once the shapes of a linear layer `op` are checked.
    fn linear_product(
        &self,
        op: &'static str,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.check_linear(op, weight, bias)?;
        self.matmul(&weight.t()?)
    }

    /// The shapes of a linear layer: `x` `[..., in]`, `weight` `[out, in]`, `bias` `[out]`.
    fn check_linear(&self, op: &'static str, weight: &Tensor, bias: Option<&Tensor>) -> Result<()> {
        float_only(op, self)?;
        if weight.rank() != 2
            || self.rank() == 0
            || self.dims()[self.rank() - 1] != weight.dims()[1]
        {
            return Err(Error::shape(
                op,
                "input [..., in] needs weight [out, in]",
                self.dims(),
                weight.dims(),
            ));
        }
        if let Some(b) = bias {
            if b.dims() != [weight.dims()[0]] {
                return Err(Error::shape(
                    op,
                    "bias must be [out]",
                    b.dims(),
                    weight.dims(),
                ));
            }
        }
        Ok(())
    }
}
