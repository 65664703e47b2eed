//! Views and data movement. Views (reshape of contiguous data, permute, transpose, slice,
//! expand, squeeze) share the buffer and only change the layout. Backward rules:
//!
//! | op | rule |
//! | --- | --- |
//! | reshape | g reshaped back |
//! | permute / transpose | g permuted by the inverse |
//! | slice / narrow | g placed into zeros of x's shape (assemble) |
//! | expand / broadcast_to | g summed over the expanded dims |
//! | concat / stack / pad | each input takes its region of g |
//! | gather, index_select | scatter-add of g at the index into zeros of x's shape |
//! | scatter_add(x, i, src) | dx = g, dsrc = gather(g, i) |

use super::{same_device, same_kind, when};
use crate::backend::View;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::{contiguous_strides, normalize_dim, Layout};
use crate::tensor::Tensor;

impl Tensor {
    /// A view with `layout` over the same buffer, recorded with `backward`.
    fn view_op(
        &self,
        op: &'static str,
        layout: Layout,
        backward: impl Fn(&Tensor) -> Result<Tensor> + 'static,
    ) -> Tensor {
        self.with_layout(layout)
            .record_op(op, &[self], move |g, _| Ok(vec![Some(backward(g)?)]))
    }

    /// The same elements in a new shape; one dim may be `-1` (inferred). A view when the layout
    /// allows it, otherwise a copy.
    pub fn reshape(&self, shape: &[isize]) -> Result<Tensor> {
        let n = self.numel();
        let mut inferred = None;
        let mut known = 1usize;
        for (i, &d) in shape.iter().enumerate() {
            if d == -1 {
                if inferred.replace(i).is_some() {
                    return Err(Error::invalid(
                        "reshape",
                        format!("more than one -1 in {shape:?}"),
                    ));
                }
            } else if d < 0 {
                return Err(Error::invalid(
                    "reshape",
                    format!("negative size in {shape:?}"),
                ));
            } else {
                known = known.saturating_mul(d as usize);
            }
        }
        let mut dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        if let Some(i) = inferred {
            if known == 0 || !n.is_multiple_of(known) {
                return Err(Error::invalid(
                    "reshape",
                    format!(
                        "cannot infer -1 in {shape:?} for {n} elements of {}",
                        self.shape()
                    ),
                ));
            }
            dims[i] = n / known;
        }
        self.reshape_usize(&dims)
    }

    /// [`Tensor::reshape`] with every size given.
    pub fn reshape_usize(&self, dims: &[usize]) -> Result<Tensor> {
        let n = crate::layout::checked_numel("reshape", dims, 1)?;
        if n != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("{} elements cannot be re-read as {n}", self.numel()),
                self.dims(),
                dims,
            ));
        }
        if dims == self.dims() {
            return Ok(self.clone());
        }
        let src = self.dims().to_vec();
        match self.layout().reshape(dims) {
            Some(l) => Ok(self.view_op("reshape", l, move |g| g.reshape_usize(&src))),
            None => self.contiguous()?.reshape_usize(dims),
        }
    }

    /// A contiguous copy, or the same tensor if it already is contiguous.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.layout().is_contiguous() {
            return Ok(self.clone());
        }
        let buf = self.device().backend().cast(self.view(), self.dtype())?;
        let out = self.output(buf, self.dims());
        Ok(out.record_op("contiguous", &[self], |g, _| Ok(vec![Some(g.clone())])))
    }

    /// Dims reordered: `out.dims()[i] = self.dims()[dims[i]]`.
    pub fn permute(&self, dims: &[isize]) -> Result<Tensor> {
        let r = self.rank();
        if dims.len() != r {
            return Err(Error::invalid(
                "permute",
                format!(
                    "{dims:?} is not a permutation of the {r} dims of {}",
                    self.shape()
                ),
            ));
        }
        let mut perm = Vec::with_capacity(r);
        for &d in dims {
            let d = normalize_dim("permute", d, r)?;
            if perm.contains(&d) {
                return Err(Error::invalid(
                    "permute",
                    format!("dim {d} repeated in {dims:?}"),
                ));
            }
            perm.push(d);
        }
        let mut inverse = vec![0isize; r];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i as isize;
        }
        let l = self.layout().permute(&perm);
        Ok(self.view_op("permute", l, move |g| g.permute(&inverse)))
    }

    /// Swaps two dims.
    pub fn transpose(&self, dim0: isize, dim1: isize) -> Result<Tensor> {
        let r = self.rank();
        let (a, b) = (
            normalize_dim("transpose", dim0, r)?,
            normalize_dim("transpose", dim1, r)?,
        );
        if a == b {
            return Ok(self.clone());
        }
        let mut perm: Vec<isize> = (0..r as isize).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Transpose of a 2-d tensor.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(Error::invalid(
                "t",
                format!("needs a 2-d tensor, got shape {}", self.shape()),
            ));
        }
        self.transpose(0, 1)
    }

    /// Python slicing `start:end:step` along `dim`: negative bounds count from the end, then
    /// both are clamped to the dim.
    pub fn slice(&self, dim: isize, start: isize, end: isize, step: usize) -> Result<Tensor> {
        let d = normalize_dim("slice", dim, self.rank())?;
        if step == 0 {
            return Err(Error::invalid("slice", "step must be at least 1"));
        }
        let size = self.dims()[d] as isize;
        let clamp = |v: isize| (if v < 0 { v + size } else { v }).clamp(0, size) as usize;
        let (s, e) = (clamp(start), clamp(end));
        let len = if e > s { (e - s).div_ceil(step) } else { 0 };
        self.strided_slice(d, s, len, step)
    }

    /// `len` elements from `start` along `dim`.
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let d = normalize_dim("narrow", dim, self.rank())?;
        if start
            .checked_add(len)
            .is_none_or(|end| end > self.dims()[d])
        {
            return Err(Error::invalid(
                "narrow",
                format!(
                    "start {start}, length {len} is out of range for dim {d} of shape {}",
                    self.shape()
                ),
            ));
        }
        self.strided_slice(d, start, len, 1)
    }

    fn strided_slice(&self, d: usize, start: usize, len: usize, step: usize) -> Result<Tensor> {
        if start == 0 && step == 1 && len == self.dims()[d] {
            return Ok(self.clone());
        }
        let l = self.layout().slice(d, start, len, step);
        let src = self.dims().to_vec();
        let region = Layout::contiguous(&src).slice(d, start, len, step);
        Ok(self.view_op("slice", l, move |g| {
            Tensor::assemble("slice", &src, 0.0, &[(region.clone(), g)])
        }))
    }

    /// Broadcast to `shape` without copying: new leading dims, size-1 dims grow.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        if shape == self.dims() {
            return Ok(self.clone());
        }
        let r = self.rank();
        let ok = shape.len() >= r
            && (0..r).all(|i| {
                let (d, s) = (self.dims()[i], shape[shape.len() - r + i]);
                d == s || d == 1
            });
        if !ok {
            return Err(Error::shape(
                "expand",
                "cannot broadcast",
                self.dims(),
                shape,
            ));
        }
        crate::layout::checked_numel("expand", shape, 1)?;
        let l = self.layout().broadcast_to(shape);
        let src = self.dims().to_vec();
        Ok(self.view_op("expand", l, move |g| g.sum_to_shape(&src)))
    }

    /// `torch.expand`: like [`Tensor::broadcast_to`], where `-1` keeps a dim's size.
    pub fn expand(&self, shape: &[isize]) -> Result<Tensor> {
        let r = self.rank();
        if shape.len() < r {
            return Err(Error::invalid(
                "expand",
                format!("target {shape:?} has fewer dims than {}", self.shape()),
            ));
        }
        let extra = shape.len() - r;
        let mut dims = Vec::with_capacity(shape.len());
        for (i, &s) in shape.iter().enumerate() {
            dims.push(match s {
                -1 if i >= extra => self.dims()[i - extra],
                s if s >= 0 => s as usize,
                _ => {
                    return Err(Error::invalid(
                        "expand",
                        format!("bad size {s} in {shape:?}"),
                    ))
                }
            });
        }
        self.broadcast_to(&dims)
    }

    /// Inserts a size-1 dim at `dim` (in `[-(r+1), r]`).
    pub fn unsqueeze(&self, dim: isize) -> Result<Tensor> {
        let d = normalize_dim("unsqueeze", dim, self.rank() + 1)?;
        let mut dims = self.dims().to_vec();
        dims.insert(d, 1);
        self.reshape_usize(&dims)
    }

    /// Removes `dim` if it has size 1 (as PyTorch, leaves other sizes alone).
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        let d = normalize_dim("squeeze", dim, self.rank())?;
        if self.dims()[d] != 1 {
            return Ok(self.clone());
        }
        let mut dims = self.dims().to_vec();
        dims.remove(d);
        self.reshape_usize(&dims)
    }

    /// Merges dims `start..=end` into one.
    pub fn flatten(&self, start: isize, end: isize) -> Result<Tensor> {
        if self.rank() == 0 {
            return self.reshape_usize(&[1]);
        }
        let (s, e) = (
            normalize_dim("flatten", start, self.rank())?,
            normalize_dim("flatten", end, self.rank())?,
        );
        if s > e {
            return Err(Error::invalid(
                "flatten",
                format!("start dim {s} is after end dim {e}"),
            ));
        }
        let mut dims = self.dims()[..s].to_vec();
        dims.push(self.dims()[s..=e].iter().product());
        dims.extend_from_slice(&self.dims()[e + 1..]);
        self.reshape_usize(&dims)
    }

    /// A new tensor of `shape` filled with `fill`, with each part copied into its region (a
    /// layout into the new contiguous buffer). Differentiable in every part.
    fn assemble(
        op: &'static str,
        shape: &[usize],
        fill: f64,
        parts: &[(Layout, &Tensor)],
    ) -> Result<Tensor> {
        let first = parts[0].1;
        let views: Vec<(Layout, View<'_>)> =
            parts.iter().map(|(l, t)| (l.clone(), t.view())).collect();
        let n = crate::layout::checked_numel(op, shape, first.dtype().size_in_bytes())?;
        let buf = first
            .device()
            .backend()
            .assemble(n, first.dtype(), fill, &views)?;
        let out = first.output(buf, shape);
        let regions: Vec<Layout> = parts.iter().map(|(l, _)| l.clone()).collect();
        let inputs: Vec<&Tensor> = parts.iter().map(|(_, t)| *t).collect();
        Ok(out.record_op(op, &inputs, move |g, need| {
            let g = g.contiguous()?;
            regions
                .iter()
                .zip(need)
                .map(|(r, &n)| when(n, || g.region(r)))
                .collect()
        }))
    }

    /// The region `r` (a layout relative to the start of this contiguous tensor), as a view.
    fn region(&self, r: &Layout) -> Result<Tensor> {
        let l = Layout::new(
            r.shape().to_vec(),
            r.strides().to_vec(),
            self.layout().offset() + r.offset(),
        );
        let src = self.dims().to_vec();
        let r = r.clone();
        Ok(self.view_op("region", l, move |g| {
            Tensor::assemble("region", &src, 0.0, &[(r.clone(), g)])
        }))
    }

    /// `torch.cat` along `dim`.
    pub fn concat(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let first = *tensors
            .first()
            .ok_or_else(|| Error::invalid("concat", "needs at least one tensor"))?;
        let d = normalize_dim("concat", dim, first.rank())?;
        let mut total = 0;
        for t in tensors {
            same_kind("concat", first, t)?;
            let fits = t.rank() == first.rank()
                && (0..first.rank()).all(|i| i == d || t.dims()[i] == first.dims()[i]);
            if !fits {
                return Err(Error::shape(
                    "concat",
                    format!("sizes must match except in dim {d}"),
                    first.dims(),
                    t.dims(),
                ));
            }
            total += t.dims()[d];
        }
        let mut shape = first.dims().to_vec();
        shape[d] = total;
        let base = Layout::contiguous(&shape);
        let mut parts = Vec::with_capacity(tensors.len());
        let mut at = 0;
        for t in tensors {
            let len = t.dims()[d];
            parts.push((base.slice(d, at, len, 1), *t));
            at += len;
        }
        Tensor::assemble("concat", &shape, 0.0, &parts)
    }

    /// `torch.stack`: a new dim at `dim` (in `[-(r+1), r]`).
    pub fn stack(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let first = *tensors
            .first()
            .ok_or_else(|| Error::invalid("stack", "needs at least one tensor"))?;
        for t in tensors {
            if t.dims() != first.dims() {
                return Err(Error::shape(
                    "stack",
                    "all tensors need one shape",
                    first.dims(),
                    t.dims(),
                ));
            }
        }
        let d = normalize_dim("stack", dim, first.rank() + 1)? as isize;
        let parts = tensors
            .iter()
            .map(|t| t.unsqueeze(d))
            .collect::<Result<Vec<_>>>()?;
        Tensor::concat(&parts.iter().collect::<Vec<_>>(), d)
    }

    /// Constant padding, `torch.nn.functional.pad` order: `(before, after)` pairs starting with
    /// the last dim.
    pub fn pad(&self, pads: &[usize], value: f64) -> Result<Tensor> {
        if !pads.len().is_multiple_of(2) || pads.len() / 2 > self.rank() {
            return Err(Error::invalid(
                "pad",
                format!(
                    "{pads:?} must hold (before, after) pairs for at most {} dims",
                    self.rank()
                ),
            ));
        }
        let mut shape = self.dims().to_vec();
        let r = self.rank();
        for (i, p) in pads.chunks(2).enumerate() {
            shape[r - 1 - i] += p[0] + p[1];
        }
        let mut region = Layout::contiguous(&shape);
        for (i, p) in pads.chunks(2).enumerate() {
            let d = r - 1 - i;
            region = region.slice(d, p[0], self.dims()[d], 1);
        }
        Tensor::assemble("pad", &shape, value, &[(region, self)])
    }

    /// `torch.gather`: `out[i][j][k] = x[index[i][j][k]][j][k]` for `dim = 0`, and so on.
    pub fn gather(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        same_device("gather", self, index)?;
        crate::Error::expect_dtype("gather", index.dtype(), DType::I64)?;
        let d = normalize_dim("gather", dim, self.rank())?;
        let fits = index.rank() == self.rank()
            && (0..self.rank()).all(|i| i == d || index.dims()[i] <= self.dims()[i]);
        if !fits {
            return Err(Error::shape(
                "gather",
                format!("index needs the input's rank and sizes no larger outside dim {d}"),
                self.dims(),
                index.dims(),
            ));
        }
        let buf = self
            .device()
            .backend()
            .gather(self.view(), d, index.view())?;
        let out = self.output(buf, index.dims());
        let (src, idx) = (self.dims().to_vec(), index.clone());
        Ok(out.record_op("gather", &[self], move |g, _| {
            Ok(vec![Some(g.scatter_into(&src, d, &idx)?)])
        }))
    }

    /// Zeros of `shape` with this tensor's elements added at `index` along `dim`.
    pub(crate) fn scatter_into(&self, shape: &[usize], d: usize, index: &Tensor) -> Result<Tensor> {
        let buf = self
            .device()
            .backend()
            .scatter_add(shape, d, index.view(), self.view())?;
        let out = self.output(buf, shape);
        let idx = index.clone();
        Ok(out.record_op("scatter_add", &[self], move |g, _| {
            Ok(vec![Some(g.gather(d as isize, &idx)?)])
        }))
    }

    /// `torch.scatter_add`: a copy of this tensor with `src[i..]` added at `index[i..]` along
    /// `dim`; repeated indices accumulate.
    pub fn scatter_add(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        same_kind("scatter_add", self, src)?;
        same_device("scatter_add", self, index)?;
        crate::Error::expect_dtype("scatter_add", index.dtype(), DType::I64)?;
        let d = normalize_dim("scatter_add", dim, self.rank())?;
        if index.dims() != src.dims() || index.rank() != self.rank() {
            return Err(Error::shape(
                "scatter_add",
                "index and src need one shape, of the input's rank",
                index.dims(),
                src.dims(),
            ));
        }
        self.add(&src.scatter_into(self.dims(), d, index)?)
    }

    /// The slices of `dim` listed in `index` (1-d i64); indices may repeat.
    pub fn index_select(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        crate::Error::expect_dtype("index_select", index.dtype(), DType::I64)?;
        if index.rank() != 1 {
            return Err(Error::invalid(
                "index_select",
                format!("index must be 1-d, got shape {}", index.shape()),
            ));
        }
        let d = normalize_dim("index_select", dim, self.rank())?;
        let mut shape = self.dims().to_vec();
        shape[d] = index.dims()[0];
        let mut ishape = vec![1; self.rank()];
        ishape[d] = index.dims()[0];
        // A stride-0 view of the index over the output shape: no copy.
        let idx = index.reshape_usize(&ishape)?.broadcast_to(&shape)?;
        self.gather(d as isize, &idx)
    }

    /// Strides of this tensor's layout (in elements).
    pub fn strides(&self) -> &[usize] {
        self.layout().strides()
    }

    /// Whether the data is laid out row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        self.layout().is_contiguous()
    }

    /// Row-major strides of this tensor's shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        contiguous_strides(self.dims())
    }
}
