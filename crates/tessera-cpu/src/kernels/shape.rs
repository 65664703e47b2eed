//! Gather, scatter-add and assemble (copy parts into regions of a filled buffer).

use super::{copy_into, Num};
use crate::buffer::alloc;
use tessera_core::{contiguous_strides, Error, Layout, Result};

/// Multi-index odometer over `shape`, calling `f(index)` in row-major order.
fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize]) -> Result<()>) -> Result<()> {
    if shape.contains(&0) {
        return Ok(());
    }
    let mut idx = vec![0usize; shape.len()];
    loop {
        f(&idx)?;
        let mut d = shape.len();
        loop {
            if d == 0 {
                return Ok(());
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

fn checked(op: &'static str, v: i64, dim: usize, size: usize) -> Result<usize> {
    if v < 0 || v as usize >= size {
        return Err(Error::IndexOutOfRange {
            op,
            index: v,
            dim,
            size,
        });
    }
    Ok(v as usize)
}

/// `out[i] = x[i with index[i] at dim]`.
pub fn gather<T: Num>(
    x: &[T],
    lx: &Layout,
    dim: usize,
    index: &[i64],
    li: &Layout,
) -> Result<Vec<T>> {
    let mut out = alloc::<T>(li.numel());
    let size = lx.shape()[dim];
    let mut k = 0;
    for_each_index(li.shape(), |idx| {
        let j = checked("gather", index[li.offset_of(idx)], dim, size)?;
        let off = lx.offset_of(idx) + j * lx.strides()[dim] - idx[dim] * lx.strides()[dim];
        out[k] = x[off];
        k += 1;
        Ok(())
    })?;
    Ok(out)
}

/// Zeros of `shape` with `src[i]` added at `i with index[i] at dim`.
pub fn scatter_add<T: Num>(
    shape: &[usize],
    dim: usize,
    index: &[i64],
    li: &Layout,
    src: &[T],
    ls: &Layout,
) -> Result<Vec<T>> {
    let n = shape.iter().product();
    let mut out = alloc::<T>(n);
    out.fill(T::zero());
    let strides = contiguous_strides(shape);
    let size = shape[dim];
    for_each_index(li.shape(), |idx| {
        let j = checked("scatter_add", index[li.offset_of(idx)], dim, size)?;
        let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()
            + (j * strides[dim])
            - idx[dim] * strides[dim];
        out[off] = out[off] + src[ls.offset_of(idx)];
        Ok(())
    })?;
    Ok(out)
}

/// A buffer of `len` copies of `fill` with each part copied into its region.
pub fn assemble<T: Num>(len: usize, fill: f64, parts: &[(&Layout, &[T], &Layout)]) -> Vec<T> {
    let mut out = alloc::<T>(len);
    out.fill(T::from_f64(fill));
    for (region, src, ls) in parts {
        copy_into(src, ls, &mut out, region);
    }
    out
}
