//! Launchers of elementwise.cu (f32, f64, i64) and half.cu (f16, bf16, computed in f32):
//! unary, binary, where, cast, fill, random. The kernel family follows the dtype. Ops that
//! accumulate run on f32 copies of half tensors (`via_f32` in lib.rs).

use super::{grid, grid_elementwise, suffix, Strided};
use crate::{cuda_buf, launch, strided, CudaBackend, CudaBuffer};
use tessera_core::{BinaryOp, Buffer, DType, Distribution, Error, Result, UnaryOp, View};

/// The kernel's op code and its two parameters.
pub(crate) fn unary_code(op: UnaryOp) -> (i32, f64, f64) {
    use UnaryOp::*;
    match op {
        Neg => (0, 0.0, 0.0),
        Abs => (1, 0.0, 0.0),
        Sign => (2, 0.0, 0.0),
        Exp => (3, 0.0, 0.0),
        Log => (4, 0.0, 0.0),
        Sqrt => (5, 0.0, 0.0),
        Tanh => (6, 0.0, 0.0),
        Sigmoid => (7, 0.0, 0.0),
        Relu => (8, 0.0, 0.0),
        Erf => (9, 0.0, 0.0),
        Recip => (10, 0.0, 0.0),
        Square => (11, 0.0, 0.0),
        LeakyRelu(s) => (12, s, 0.0),
        Softplus { beta, threshold } => (13, beta, threshold),
        AddScalar(c) => (14, c, 0.0),
        MulScalar(c) => (15, c, 0.0),
        PowScalar(p) => (16, p, 0.0),
        Clamp { min, max } => (17, min, max),
    }
}

/// The family holding the kernels of `d`: half types have their own (f32 math, no headers).
fn family(d: DType) -> &'static str {
    if d.is_half() {
        "half"
    } else {
        "elementwise"
    }
}

/// Ops that integer tensors support (the rest need floating point), as on the CPU.
fn integer_ok(op: UnaryOp) -> bool {
    use UnaryOp::*;
    matches!(
        op,
        Neg | Abs | Sign | Relu | Square | AddScalar(_) | MulScalar(_) | Clamp { .. }
    )
}

/// `op` on every element of an f32/f64/i64 view (`Backend::unary`).
pub fn unary(be: &CudaBackend, op: UnaryOp, x: View<'_>) -> Result<CudaBuffer> {
    let xb = cuda_buf("unary", x)?;
    let d = xb.dtype();
    if d == DType::I64 && !integer_ok(op) {
        return Err(Error::DType {
            op: "unary",
            msg: format!("{op:?} needs a floating-point tensor, got i64"),
        });
    }
    let n = x.layout.numel();
    let out = be.empty(n, d)?;
    if n > 0 {
        let (code, p0, p1) = unary_code(op);
        let (len, xp, lx, op_) = (n as i64, xb.ptr(), strided("unary", x.layout)?, out.ptr());
        let cfg = if d.is_half() {
            grid(n)
        } else {
            grid_elementwise(n, lx.is_contiguous())
        };
        launch!(
            be,
            family(d),
            format!("unary_{}", suffix(d)),
            cfg,
            code,
            p0,
            p1,
            len,
            xp,
            lx,
            op_
        )?;
    }
    Ok(out)
}

pub(crate) fn binary_code(op: BinaryOp) -> i32 {
    use BinaryOp::*;
    match op {
        Add => 0,
        Sub => 1,
        Mul => 2,
        Div => 3,
        Pow => 4,
        Maximum => 5,
        Minimum => 6,
        Eq => 7,
        Ne => 8,
        Lt => 9,
        Le => 10,
        Gt => 11,
        Ge => 12,
    }
}

/// `op` on pairs of elements of two views of one shape and dtype (`Backend::binary`).
pub fn binary(be: &CudaBackend, op: BinaryOp, a: View<'_>, b: View<'_>) -> Result<CudaBuffer> {
    let (ab, bb) = (cuda_buf("binary", a)?, cuda_buf("binary", b)?);
    let n = a.layout.numel();
    let out = be.empty(n, ab.dtype())?;
    if n > 0 {
        let s = Strided::joint("binary", &[a.layout, b.layout])?;
        let (code, len, ap, la, bp, lb, op_) = (
            binary_code(op),
            n as i64,
            ab.ptr(),
            s[0],
            bb.ptr(),
            s[1],
            out.ptr(),
        );
        let name = format!("binary_{}", suffix(ab.dtype()));
        let cfg = if ab.dtype().is_half() {
            grid(n)
        } else {
            grid_elementwise(n, la.is_contiguous() && lb.is_contiguous())
        };
        launch!(
            be,
            family(ab.dtype()),
            name,
            cfg,
            code,
            len,
            ap,
            la,
            bp,
            lb,
            op_
        )?;
    }
    Ok(out)
}

/// `cond != 0 ? a : b` (`Backend::where_cond`); a half `cond` is cast to f32 by the caller.
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
        launch!(
            be,
            family(ab.dtype()),
            name,
            grid(n),
            len,
            cp,
            lc,
            ap,
            la,
            bp,
            lb,
            op_
        )?;
    }
    Ok(out)
}

/// A contiguous copy of `x` converted to `dtype` through f64 (`Backend::cast`); a half to the
/// same half type is a 16-bit copy, done by the caller.
pub fn cast(be: &CudaBackend, x: View<'_>, dtype: DType) -> Result<CudaBuffer> {
    let xb = cuda_buf("cast", x)?;
    let n = x.layout.numel();
    let out = be.empty(n, dtype)?;
    if n > 0 {
        let (len, xp, lx, op_) = (n as i64, xb.ptr(), strided("cast", x.layout)?, out.ptr());
        let name = format!("cast_{}_{}", suffix(xb.dtype()), suffix(dtype));
        let fam = family(if dtype.is_half() { dtype } else { xb.dtype() });
        launch!(be, fam, name, grid(n), len, xp, lx, op_)?;
    }
    Ok(out)
}

/// `len` copies of `value` (`Backend::fill`).
pub fn fill(be: &CudaBackend, len: usize, dtype: DType, value: f64) -> Result<CudaBuffer> {
    let out = be.empty(len, dtype)?;
    if len > 0 {
        let (n, v, op_) = (len as i64, value, out.ptr());
        launch!(
            be,
            family(dtype),
            format!("fill_{}", suffix(dtype)),
            grid(len),
            n,
            v,
            op_
        )?;
    }
    Ok(out)
}

/// Element `i` from Philox at counter `offset + i`, the same function as the CPU backend's.
pub fn random(
    be: &CudaBackend,
    len: usize,
    dtype: DType,
    dist: Distribution,
    seed: u64,
    offset: u64,
) -> Result<CudaBuffer> {
    let out = be.empty(len, dtype)?;
    if len > 0 {
        let (kind, a, b) = match dist {
            Distribution::Uniform { low, high } => (0i32, low, high),
            Distribution::Normal { mean, std } => (1i32, mean, std),
        };
        let (n, op_) = (len as i64, out.ptr());
        let name = format!("random_{}", suffix(dtype));
        launch!(
            be,
            "elementwise",
            name,
            grid(len),
            n,
            kind,
            a,
            b,
            seed,
            offset,
            op_
        )?;
    }
    Ok(out)
}
