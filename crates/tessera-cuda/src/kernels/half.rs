//! Launchers of half.cu: unary, binary, where, cast and fill for f16/bf16 (math in f32).
//! Ops that accumulate (sums, softmax, col2im, scatter-add) run on f32 copies, see `via_f32`
//! in lib.rs; GEMM is cuBLAS with f32 accumulation (matmul.rs).

use super::{grid, suffix, Strided};
use crate::{cuda_buf, launch, strided, CudaBackend, CudaBuffer};
use tessera_core::{BinaryOp, Buffer, DType, Result, UnaryOp, View};

/// `op` on every element of an f16/bf16 view, computed in f32.
pub fn unary(be: &CudaBackend, op: UnaryOp, x: View<'_>) -> Result<CudaBuffer> {
    let xb = cuda_buf("unary", x)?;
    let n = x.layout.numel();
    let out = be.empty(n, xb.dtype())?;
    if n > 0 {
        let (code, p0, p1) = super::elementwise::unary_code(op);
        let (len, xp, lx, op_) = (n as i64, xb.ptr(), strided("unary", x.layout)?, out.ptr());
        let name = format!("unary_{}", suffix(xb.dtype()));
        launch!(be, "half", name, grid(n), code, p0, p1, len, xp, lx, op_)?;
    }
    Ok(out)
}

/// `op` on pairs of f16/bf16 elements, computed in f32.
pub fn binary(be: &CudaBackend, op: BinaryOp, a: View<'_>, b: View<'_>) -> Result<CudaBuffer> {
    let (ab, bb) = (cuda_buf("binary", a)?, cuda_buf("binary", b)?);
    let n = a.layout.numel();
    let out = be.empty(n, ab.dtype())?;
    if n > 0 {
        let s = Strided::joint("binary", &[a.layout, b.layout])?;
        let (code, len, ap, la, bp, lb, op_) = (
            super::elementwise::binary_code(op),
            n as i64,
            ab.ptr(),
            s[0],
            bb.ptr(),
            s[1],
            out.ptr(),
        );
        let name = format!("binary_{}", suffix(ab.dtype()));
        launch!(be, "half", name, grid(n), code, len, ap, la, bp, lb, op_)?;
    }
    Ok(out)
}

/// `cond` is f32, f64 or i64 here (a half condition is cast to f32 by the caller).
pub fn where_cond(
    be: &CudaBackend,
    cond: View<'_>,
    a: View<'_>,
    b: View<'_>,
) -> Result<CudaBuffer> {
    let (cb, ab, bb) = (
        cuda_buf("where", cond)?,
        cuda_buf("where", a)?,
        cuda_buf("where", b)?,
    );
    let n = a.layout.numel();
    let out = be.empty(n, ab.dtype())?;
    if n > 0 {
        let s = Strided::joint("where", &[cond.layout, a.layout, b.layout])?;
        let (len, cp, lc, ap, la, bp, lb, op_) = (
            n as i64,
            cb.ptr(),
            s[0],
            ab.ptr(),
            s[1],
            bb.ptr(),
            s[2],
            out.ptr(),
        );
        let name = format!("where_{}_{}", suffix(cb.dtype()), suffix(ab.dtype()));
        launch!(be, "half", name, grid(n), len, cp, lc, ap, la, bp, lb, op_)?;
    }
    Ok(out)
}

/// Casts where the source or the target (not both the same) is a half type.
pub fn cast(be: &CudaBackend, x: View<'_>, dtype: DType) -> Result<CudaBuffer> {
    let xb = cuda_buf("cast", x)?;
    let n = x.layout.numel();
    let out = be.empty(n, dtype)?;
    if n > 0 {
        let (len, xp, lx, op_) = (n as i64, xb.ptr(), strided("cast", x.layout)?, out.ptr());
        let name = format!("cast_{}_{}", suffix(xb.dtype()), suffix(dtype));
        launch!(be, "half", name, grid(n), len, xp, lx, op_)?;
    }
    Ok(out)
}

/// `len` copies of `value` rounded to f16/bf16.
pub fn fill(be: &CudaBackend, len: usize, dtype: DType, value: f64) -> Result<CudaBuffer> {
    let out = be.empty(len, dtype)?;
    if len > 0 {
        let (n, v, op_) = (len as i64, value, out.ptr());
        launch!(
            be,
            "half",
            format!("fill_{}", suffix(dtype)),
            grid(len),
            n,
            v,
            op_
        )?;
    }
    Ok(out)
}
