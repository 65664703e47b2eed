//! Gather, scatter-add and assemble (copy parts into regions of a filled buffer).

use super::{copy_into, for_segments, Num, Rows};
use crate::buffer::alloc;
use crate::buffer::CpuElem;
use std::sync::Mutex;
use tessera_core::{Error, Layout, Result};

/// `x`'s layout over the index's shape, with the gathered dim's stride zeroed: the offset of
/// everything but the looked-up coordinate.
fn base_layout(lx: &Layout, li: &Layout, dim: usize) -> Layout {
    let mut strides = lx.strides().to_vec();
    strides[dim] = 0;
    Layout::new(li.shape().to_vec(), strides, lx.offset())
}

/// `out[i] = x[i with index[i] at dim]`.
pub fn gather<T: CpuElem>(
    x: &[T],
    lx: &Layout,
    dim: usize,
    index: &[i64],
    li: &Layout,
) -> Result<Vec<T>> {
    let mut out = alloc::<T>(li.numel());
    let (size, sd) = (lx.shape()[dim], lx.strides()[dim]);
    let base = base_layout(lx, li, dim);
    let rows = Rows::new(&[li, &base]);
    let (si, sx) = (rows.inner_strides[0], rows.inner_strides[1]);
    let bad: Mutex<Option<Error>> = Mutex::new(None);
    for_segments(&mut out, rows.inner, |o, row, col| {
        let (pi, px) = (rows.at(0, row, col), rows.at(1, row, col));
        for (k, v) in o.iter_mut().enumerate() {
            let j = index[pi + k * si];
            if j < 0 || j as usize >= size {
                *bad.lock().unwrap_or_else(|e| e.into_inner()) = Some(Error::IndexOutOfRange {
                    op: "gather",
                    index: j,
                    dim,
                    size,
                });
                return;
            }
            *v = x[px + k * sx + j as usize * sd];
        }
    });
    match bad.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(out),
    }
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
    let lo = Layout::contiguous(shape);
    let (size, sd) = (shape[dim], lo.strides()[dim]);
    let base = base_layout(&lo, li, dim);
    let rows = Rows::new(&[li, ls, &base]);
    let (si, ss, so) = (
        rows.inner_strides[0],
        rows.inner_strides[1],
        rows.inner_strides[2],
    );
    let n_rows: usize = rows.outer.iter().product();
    // Sequential: repeated indices make writes collide.
    for row in 0..n_rows {
        let (pi, ps, po) = (rows.at(0, row, 0), rows.at(1, row, 0), rows.at(2, row, 0));
        for k in 0..rows.inner {
            let j = index[pi + k * si];
            if j < 0 || j as usize >= size {
                return Err(Error::IndexOutOfRange {
                    op: "scatter_add",
                    index: j,
                    dim,
                    size,
                });
            }
            let o = po + k * so + j as usize * sd;
            out[o] = out[o] + src[ps + k * ss];
        }
    }
    Ok(out)
}

/// A buffer of `len` copies of `fill` with each part copied into its region.
pub fn assemble<T: CpuElem>(len: usize, fill: f64, parts: &[(&Layout, &[T], &Layout)]) -> Vec<T> {
    let mut out = alloc::<T>(len);
    out.fill(T::from_f64(fill));
    for (region, src, ls) in parts {
        copy_into(src, ls, &mut out, region);
    }
    out
}
