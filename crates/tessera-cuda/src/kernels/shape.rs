//! Launchers of shape.cu: strided copy, assemble, gather, scatter-add.

use super::{bits_suffix, dev_err, grid, suffix, Strided};
use crate::{cuda_buf, launch, CudaBackend, CudaBuffer};
use cudarc::driver::result;
use tessera_core::{contiguous_strides, Buffer, DType, Error, Layout, Result, View};

/// Copies the elements of `src` (read with `ls`) to `dst` at the positions of `ld` (same shape).
pub fn copy(
    be: &CudaBackend,
    src: &CudaBuffer,
    ls: &Layout,
    dst: &CudaBuffer,
    ld: &Layout,
) -> Result<()> {
    let n = ls.numel();
    if n == 0 {
        return Ok(());
    }
    let s = Strided::joint("copy", &[ls, ld])?;
    let (len, sp, l0, dp, l1) = (n as i64, src.ptr(), s[0], dst.ptr(), s[1]);
    launch!(
        be,
        "shape",
        format!("copy_{}", bits_suffix(src.dtype())),
        grid(n),
        len,
        sp,
        l0,
        dp,
        l1
    )
}

/// A buffer of `len` elements set to `fill` with each part copied into its region
/// (`Backend::assemble`).
pub fn assemble(
    be: &CudaBackend,
    len: usize,
    dtype: DType,
    fill: f64,
    parts: &[(Layout, View<'_>)],
) -> Result<CudaBuffer> {
    for (region, v) in parts {
        if region.numel() > 0 && region.max_extent() > len {
            return Err(Error::invalid("assemble", "region outside the output"));
        }
        if region.shape() != v.layout.shape() {
            return Err(Error::invalid(
                "assemble",
                "a part's region and source differ in shape",
            ));
        }
        if v.buf.dtype() != dtype {
            return Err(Error::DType {
                op: "assemble",
                msg: format!("expected {dtype}, got {}", v.buf.dtype()),
            });
        }
    }
    let covered: usize = parts.iter().map(|(r, _)| r.numel()).sum();
    let out = if covered >= len && parts.len() == 1 {
        be.empty(len, dtype)? // one part fills everything: no need to fill first
    } else {
        be.filled(len, dtype, fill)?
    };
    for (region, v) in parts {
        copy(be, cuda_buf("assemble", *v)?, v.layout, &out, region)?;
    }
    Ok(out)
}

/// A two-word device flag for index errors: [bad?, offending index].
pub(crate) fn error_flag(be: &CudaBackend) -> Result<CudaBuffer> {
    be.zeros(2, DType::I64)
}

pub(crate) fn check_flag(
    flag: &CudaBuffer,
    op: &'static str,
    dim: usize,
    size: usize,
) -> Result<()> {
    let mut v = [0i64; 2];
    // SAFETY: the flag holds two i64; the synchronous copy waits for the kernel.
    unsafe { result::memcpy_dtoh_sync(&mut v, flag.ptr()) }.map_err(|e| dev_err(op, e))?;
    if v[0] != 0 {
        return Err(Error::IndexOutOfRange {
            op,
            index: v[1],
            dim,
            size,
        });
    }
    Ok(())
}

fn index_buf<'a>(op: &'static str, index: View<'a>) -> Result<&'a CudaBuffer> {
    let b = cuda_buf(op, index)?;
    if b.dtype() != DType::I64 {
        return Err(Error::DType {
            op,
            msg: format!("indices must be i64, got {}", b.dtype()),
        });
    }
    Ok(b)
}

/// `x` read at the index's positions with the gathered dim contributing only through the
/// returned stride (the kernel adds `index * stride`).
pub fn gather_view(x: &Layout, dim: usize, ishape: &[usize]) -> (Layout, i64) {
    let mut xs = x.strides().to_vec();
    let sd = xs[dim] as i64;
    xs[dim] = 0;
    (Layout::new(ishape.to_vec(), xs, x.offset()), sd)
}

/// The contiguous output of `shape` seen at the index's positions, the scattered dim
/// contributing only through the returned stride.
pub fn scatter_view(shape: &[usize], dim: usize, ishape: &[usize]) -> (Layout, i64) {
    let mut os = contiguous_strides(shape);
    let sd = os[dim] as i64;
    os[dim] = 0;
    (Layout::new(ishape.to_vec(), os, 0), sd)
}

/// `x` gathered along `dim` at `index` (`Backend::gather`); bad indices are errors.
pub fn gather(be: &CudaBackend, x: View<'_>, dim: usize, index: View<'_>) -> Result<CudaBuffer> {
    let (xb, ib) = (cuda_buf("gather", x)?, index_buf("gather", index)?);
    let ishape = index.layout.shape();
    if dim >= ishape.len() || ishape.len() != x.layout.rank() {
        return Err(Error::invalid(
            "gather",
            format!("dim {dim} for index shape {ishape:?}"),
        ));
    }
    let n = index.layout.numel();
    let out = be.empty(n, xb.dtype())?;
    if n == 0 {
        return Ok(out);
    }
    let size = x.layout.shape()[dim];
    let (lx, sd) = gather_view(x.layout, dim, ishape);
    let s = Strided::joint("gather", &[&lx, index.layout])?;
    let flag = error_flag(be)?;
    let (len, xp, l0, sz, ip, l1, op_, fp) = (
        n as i64,
        xb.ptr(),
        s[0],
        size as i64,
        ib.ptr(),
        s[1],
        out.ptr(),
        flag.ptr(),
    );
    let name = format!("gather_{}", bits_suffix(xb.dtype()));
    launch!(
        be,
        "shape",
        name,
        grid(n),
        len,
        xp,
        l0,
        sd,
        sz,
        ip,
        l1,
        op_,
        fp
    )?;
    check_flag(&flag, "gather", dim, size)?;
    Ok(out)
}

/// `src` added into a zero buffer of `shape` along `dim` at `index` (`Backend::scatter_add`).
pub fn scatter_add(
    be: &CudaBackend,
    shape: &[usize],
    dim: usize,
    index: View<'_>,
    src: View<'_>,
) -> Result<CudaBuffer> {
    let (sb, ib) = (
        cuda_buf("scatter_add", src)?,
        index_buf("scatter_add", index)?,
    );
    let ishape = index.layout.shape();
    if dim >= shape.len() || ishape.len() != shape.len() || src.layout.shape() != ishape {
        return Err(Error::invalid(
            "scatter_add",
            format!(
                "dim {dim}, output {shape:?}, index {ishape:?}, src {:?}",
                src.layout.shape()
            ),
        ));
    }
    let out = be.zeros(shape.iter().product(), sb.dtype())?;
    let n = index.layout.numel();
    if n == 0 {
        return Ok(out);
    }
    let size = shape[dim];
    let (lo, sd) = scatter_view(shape, dim, ishape);
    let s = Strided::joint("scatter_add", &[src.layout, index.layout, &lo])?;
    let flag = error_flag(be)?;
    let (len, sp, l0, ip, l1, l2, sz, op_, fp) = (
        n as i64,
        sb.ptr(),
        s[0],
        ib.ptr(),
        s[1],
        s[2],
        size as i64,
        out.ptr(),
        flag.ptr(),
    );
    let name = format!("scatter_add_{}", suffix(sb.dtype()));
    launch!(
        be,
        "shape",
        name,
        grid(n),
        len,
        sp,
        l0,
        ip,
        l1,
        l2,
        sd,
        sz,
        op_,
        fp
    )?;
    check_flag(&flag, "scatter_add", dim, size)?;
    Ok(out)
}
