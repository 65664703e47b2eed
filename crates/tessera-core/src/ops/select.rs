//! Logical, selection and index ops: what masks, attention and sequence models reach for.
//! Backward rules (g = upstream gradient):
//!
//! | op | rule |
//! | --- | --- |
//! | logical_and/or/xor/not, any, all | none (bool results) |
//! | masked_fill(x, m, v) | g where m is false, 0 where true (through `where`) |
//! | tril/triu(x, d) | g on the kept triangle, 0 elsewhere (through `where`) |
//! | cumsum(x, dim) | reverse cumulative sum of g: flip(cumsum(flip(g))) |
//! | cumprod(x, dim) | recorded as its scan (⌈log₂ n⌉ products of shifted copies), so exact at zeros and to any order |
//! | sort/topk values | g scattered back to the positions in `indices` (through `gather`) |
//! | flip, roll | g permuted back (through `index_select`) |
//! | repeat | g summed over the tiles (through `expand`) |
//!
//! Sorting is the one op here that is not a composition of cheap primitives: backends with
//! [`FusedKernels::argsort`](crate::FusedKernels::argsort) sort in O(n log n); the composite
//! ranks every element against every other along the dim (O(n²) memory), which is exact and
//! stable but meant for short rows.

use super::{fused, same_device};
use crate::backend::View;
use crate::dtype::{DType, HostData};
use crate::error::{Error, Result};
use crate::layout::{broadcast_shapes, normalize_dim};
use crate::tensor::Tensor;

/// Both operands bool, for the logical ops.
fn bools(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    same_device(op, a, b)?;
    if a.dtype() != DType::Bool || b.dtype() != DType::Bool {
        return Err(Error::DType {
            op,
            msg: format!(
                "takes bool tensors, got {} {} and {} {}; compare (eq, gt, ...) or cast with to_dtype(DType::Bool)",
                a.dtype(),
                a.shape(),
                b.dtype(),
                b.shape()
            ),
        });
    }
    Ok(())
}

fn one_bool(op: &'static str, x: &Tensor) -> Result<()> {
    if x.dtype() != DType::Bool {
        return Err(Error::DType {
            op,
            msg: format!(
                "takes a bool tensor, got {} {}; compare or cast with to_dtype(DType::Bool)",
                x.dtype(),
                x.shape()
            ),
        });
    }
    Ok(())
}

/// The `(before, after)` pad list of [`Tensor::pad`] that pads `dim` of a rank-`r` tensor.
fn pads_for(dim: usize, r: usize, before: usize, after: usize) -> Vec<usize> {
    let mut p = vec![0; 2 * (r - dim)];
    p[2 * (r - 1 - dim)] = before;
    p[2 * (r - 1 - dim) + 1] = after;
    p
}

impl Tensor {
    /// A 0-d bool constant on this tensor's device.
    fn bool_scalar(&self, v: bool) -> Result<Tensor> {
        Tensor::scalar(v as u8 as f64, DType::Bool, self.device())
    }

    /// Elementwise `a and b` of bool tensors, broadcast.
    pub fn logical_and(&self, rhs: &Tensor) -> Result<Tensor> {
        bools("logical_and", self, rhs)?;
        self.where_(rhs, &self.bool_scalar(false)?)
    }

    /// Elementwise `a or b` of bool tensors, broadcast.
    pub fn logical_or(&self, rhs: &Tensor) -> Result<Tensor> {
        bools("logical_or", self, rhs)?;
        self.where_(&self.bool_scalar(true)?, rhs)
    }

    /// Elementwise exclusive or of bool tensors, broadcast.
    pub fn logical_xor(&self, rhs: &Tensor) -> Result<Tensor> {
        bools("logical_xor", self, rhs)?;
        self.where_(&rhs.logical_not()?, rhs)
    }

    /// Elementwise `not x` of a bool tensor.
    pub fn logical_not(&self) -> Result<Tensor> {
        one_bool("logical_not", self)?;
        self.where_(&self.bool_scalar(false)?, &self.bool_scalar(true)?)
    }

    /// Whether any element over `dims` is true (bool `x`); over no elements, false.
    pub fn any(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        one_bool("any", self)?;
        let n = self.to_dtype(DType::I64)?.sum(dims, keepdim)?;
        n.gt(&n.scalar_like(0.0)?)
    }

    /// Whether every element over `dims` is true (bool `x`); over no elements, true.
    pub fn all(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        one_bool("all", self)?;
        let n = self
            .logical_not()?
            .to_dtype(DType::I64)?
            .sum(dims, keepdim)?;
        n.eq(&n.scalar_like(0.0)?)
    }

    /// `value` where the bool `mask` is true, else `x`; `mask` broadcasts to `x`'s shape.
    /// `value` may be infinite (`f64::NEG_INFINITY` for attention scores).
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        one_bool("masked_fill", mask)?;
        same_device("masked_fill", self, mask)?;
        let shape = broadcast_shapes("masked_fill", mask.dims(), self.dims())?;
        if shape != self.dims() {
            return Err(Error::shape(
                "masked_fill",
                "the mask must broadcast to the input's shape",
                mask.dims(),
                self.dims(),
            ));
        }
        mask.where_(&self.scalar_like(value)?.detach(), self)
    }

    /// The triangle `j - i <= diagonal` of the last two dims (row `i`, column `j`), zeros
    /// elsewhere; leading dims are a batch.
    pub fn tril(&self, diagonal: i64) -> Result<Tensor> {
        self.triangle("tril", |i, j| j - i <= diagonal)
    }

    /// The triangle `j - i >= diagonal` of the last two dims, zeros elsewhere.
    pub fn triu(&self, diagonal: i64) -> Result<Tensor> {
        self.triangle("triu", |i, j| j - i >= diagonal)
    }

    fn triangle(&self, op: &'static str, keep: impl Fn(i64, i64) -> bool) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::invalid(
                op,
                format!("needs at least 2 dims, got shape {}", self.shape()),
            ));
        }
        let (r, c) = (self.dims()[self.rank() - 2], self.dims()[self.rank() - 1]);
        let mask = Tensor::triangle_mask(r, c, self.device(), keep)?;
        mask.where_(self, &self.scalar_like(0.0)?.detach())
    }

    /// A bool `[rows, cols]` tensor, true where `keep(i, j)` (host-built: it depends on the
    /// shape only).
    pub(crate) fn triangle_mask(
        rows: usize,
        cols: usize,
        device: &crate::Device,
        keep: impl Fn(i64, i64) -> bool,
    ) -> Result<Tensor> {
        crate::layout::checked_numel("mask", &[rows, cols], 1)?;
        let v = (0..rows as i64)
            .flat_map(|i| (0..cols as i64).map(move |j| (i, j)))
            .map(|(i, j)| keep(i, j))
            .collect();
        Tensor::from_host(HostData::Bool(v), &[rows, cols], device)
    }

    /// `x` shifted by `shift` along `dim` with `fill` in the vacated places: the step of the
    /// scans below.
    fn shifted(&self, dim: usize, shift: usize, fill: f64) -> Result<Tensor> {
        let n = self.dims()[dim];
        self.narrow(dim as isize, 0, n - shift)?
            .pad(&pads_for(dim, self.rank(), shift, 0), fill)
    }

    /// Inclusive scan along `dim` by `step` (Hillis–Steele: ⌈log₂ n⌉ passes over the tensor).
    fn scan(
        &self,
        dim: usize,
        fill: f64,
        step: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let n = self.dims()[dim];
        let mut y = self.clone();
        let mut shift = 1;
        while shift < n {
            y = step(&y, &y.shifted(dim, shift, fill)?)?;
            shift *= 2;
        }
        Ok(y)
    }

    /// `y[.., i, ..] = Σ_{k ≤ i} x[.., k, ..]` along `dim`.
    pub fn cumsum(&self, dim: isize) -> Result<Tensor> {
        let d = normalize_dim("cumsum", dim, self.rank().max(1))?;
        if self.rank() == 0 {
            return Ok(self.clone());
        }
        let out = crate::no_grad(|| self.detach().scan(d, 0.0, |a, b| a.add(b)))?;
        Ok(out.record_op("cumsum", &[self], move |g, _| {
            Ok(vec![Some(
                g.flip(&[d as isize])?
                    .cumsum(d as isize)?
                    .flip(&[d as isize])?,
            )])
        }))
    }

    /// `y[.., i, ..] = Π_{k ≤ i} x[.., k, ..]` along `dim`. Recorded as its scan, so the
    /// gradient is exact where elements are 0 and to any order.
    pub fn cumprod(&self, dim: isize) -> Result<Tensor> {
        let d = normalize_dim("cumprod", dim, self.rank().max(1))?;
        if self.rank() == 0 {
            return Ok(self.clone());
        }
        self.scan(d, 1.0, |a, b| a.mul(b))
    }

    /// The elements reversed along each of `dims`.
    pub fn flip(&self, dims: &[isize]) -> Result<Tensor> {
        let axes = super::reduce::normalize_dims("flip", dims, self.rank())?;
        let mut y = self.clone();
        for a in axes {
            let n = self.dims()[a];
            let idx: Vec<i64> = (0..n as i64).rev().collect();
            let idx = Tensor::from_vec(idx, &[n], self.device())?;
            y = y.index_select(a as isize, &idx)?;
        }
        Ok(y)
    }

    /// For each `(shift, dim)`: `y[.., i, ..] = x[.., (i - shift) mod n, ..]` (an element moves
    /// `shift` places forward, wrapping around).
    pub fn roll(&self, shifts: &[i64], dims: &[isize]) -> Result<Tensor> {
        if shifts.len() != dims.len() || dims.is_empty() {
            return Err(Error::invalid(
                "roll",
                format!(
                    "needs one shift per dim (at least one), got shifts {shifts:?} and dims {dims:?}"
                ),
            ));
        }
        let mut y = self.clone();
        for (&s, &dim) in shifts.iter().zip(dims) {
            let a = normalize_dim("roll", dim, self.rank())?;
            let n = self.dims()[a] as i64;
            if n == 0 {
                continue;
            }
            // Reduced first, so no shift (i64::MIN included) overflows the subtraction.
            let s = s.rem_euclid(n);
            let idx: Vec<i64> = (0..n).map(|i| (i - s).rem_euclid(n)).collect();
            let idx = Tensor::from_vec(idx, &[n as usize], self.device())?;
            y = y.index_select(a as isize, &idx)?;
        }
        Ok(y)
    }

    /// `torch.Tensor.repeat`: `x` (given leading size-1 dims up to `repeats.len()`) tiled
    /// `repeats[d]` times along each dim `d`.
    pub fn repeat(&self, repeats: &[usize]) -> Result<Tensor> {
        let r = self.rank();
        if repeats.len() < r {
            return Err(Error::invalid(
                "repeat",
                format!(
                    "needs at least one count per dim: {} counts for shape {}",
                    repeats.len(),
                    self.shape()
                ),
            ));
        }
        let lead = repeats.len() - r;
        let dims: Vec<usize> = std::iter::repeat_n(1, lead)
            .chain(self.dims().iter().copied())
            .collect();
        // [1, s0, 1, s1, ...] -> expand to [r0, s0, r1, s1, ...] -> merge pairs.
        let mut split = Vec::with_capacity(2 * dims.len());
        let mut grown = Vec::with_capacity(2 * dims.len());
        let mut merged = Vec::with_capacity(dims.len());
        for (&s, &k) in dims.iter().zip(repeats) {
            split.extend([1, s as isize]);
            grown.extend([k as isize, s as isize]);
            let m = s
                .checked_mul(k)
                .ok_or_else(|| Error::invalid("repeat", format!("{s} x {k} elements overflow")))?;
            merged.push(m as isize);
        }
        crate::layout::checked_numel(
            "repeat",
            &merged.iter().map(|&m| m as usize).collect::<Vec<_>>(),
            self.dtype().size_in_bytes(),
        )?;
        self.reshape(&split)?.expand(&grown)?.reshape(&merged)
    }

    /// Stable sort along `dim`: `(values, indices)`, equal values in their original order
    /// (also when `descending`); NaN sorts as the largest value, as in PyTorch. `values` is
    /// differentiable (its gradient goes back to the positions in `indices`).
    pub fn sort(&self, dim: isize, descending: bool) -> Result<(Tensor, Tensor)> {
        let idx = self.argsort(dim, descending)?;
        let d = if self.rank() == 0 { 0 } else { dim };
        let values = if self.rank() == 0 {
            self.clone()
        } else {
            self.gather(d, &idx)?
        };
        Ok((values, idx))
    }

    /// The i64 positions that sort `x` along `dim` (stable; see [`Tensor::sort`]).
    pub fn argsort(&self, dim: isize, descending: bool) -> Result<Tensor> {
        if self.dtype() == DType::Bool {
            return self.to_dtype(DType::I64)?.argsort(dim, descending);
        }
        if self.rank() == 0 {
            return Tensor::scalar(0.0, DType::I64, self.device());
        }
        let d = normalize_dim("argsort", dim, self.rank())?;
        let last = self.rank() - 1;
        // Sort along the last dim of a contiguous copy: one row per sort.
        let xt = self
            .detach()
            .transpose(d as isize, last as isize)?
            .contiguous()?;
        let kernel = fused(self.device(), |k| {
            k.argsort(
                View {
                    buf: xt.buffer().as_ref(),
                    layout: xt.layout(),
                },
                descending,
            )
        })?;
        let idx = match kernel {
            Some(buf) => xt.output(buf, xt.dims()),
            None => argsort_composite(&xt, descending)?,
        };
        idx.transpose(d as isize, last as isize)?.contiguous()
    }

    /// The `k` largest (`largest`) or smallest elements along `dim`, in descending (ascending)
    /// order, and their i64 positions. Ties keep their original order.
    pub fn topk(&self, k: usize, dim: isize, largest: bool) -> Result<(Tensor, Tensor)> {
        let d = normalize_dim("topk", dim, self.rank().max(1))?;
        let n = if self.rank() == 0 { 1 } else { self.dims()[d] };
        if k > n {
            return Err(Error::invalid(
                "topk",
                format!("k = {k} is larger than dim {d} of shape {}", self.shape()),
            ));
        }
        if self.rank() == 0 {
            return self.sort(0, largest);
        }
        let idx = self
            .argsort(d as isize, largest)?
            .narrow(d as isize, 0, k)?;
        let values = self.gather(d as isize, &idx)?;
        Ok((values, idx))
    }
}

/// Stable argsort along the last dim by ranking: element `i`'s place is the number of
/// elements that sort before it (smaller, or equal and earlier). NaN counts as the largest.
fn argsort_composite(x: &Tensor, descending: bool) -> Result<Tensor> {
    let n = x.dims()[x.rank() - 1];
    let xi = x.unsqueeze(-1)?; // [..., n(i), 1]
    let xj = x.unsqueeze(-2)?; // [..., 1, n(j)]
    let (ahead, same) = if x.dtype().is_float() {
        let (ni, nj) = (xi.ne(&xi)?, xj.ne(&xj)?);
        let ahead = if descending {
            // j before i: x_j > x_i, or x_j NaN and x_i not.
            xj.gt(&xi)?
                .logical_or(&nj.logical_and(&ni.logical_not()?)?)?
        } else {
            xj.lt(&xi)?
                .logical_or(&ni.logical_and(&nj.logical_not()?)?)?
        };
        (ahead, xj.eq(&xi)?.logical_or(&ni.logical_and(&nj)?)?)
    } else if descending {
        (xj.gt(&xi)?, xj.eq(&xi)?)
    } else {
        (xj.lt(&xi)?, xj.eq(&xi)?)
    };
    let earlier = Tensor::triangle_mask(n, n, x.device(), |i, j| j < i)?;
    let before = ahead.logical_or(&same.logical_and(&earlier)?)?;
    let rank = before.to_dtype(DType::I64)?.sum(&[-1], false)?; // [..., n]
    let pos = Tensor::arange(0.0, n as f64, 1.0, DType::I64, x.device())?.broadcast_to(x.dims())?;
    rank.zeros_like()?
        .scatter_add(-1, &rank, &pos.contiguous()?)
}
