//! Plumbing shared by the CPU's primitives and fused kernels: reading a [`View`] as a typed
//! slice, wrapping a result, and running one kernel body per dtype.

use crate::buffer::CpuElem;
use crate::kernels::{self, elementwise as ew, elementwise::relu, Float, Num};
use crate::{CpuBackend, CpuBuffer, CpuStorage};
use std::sync::Arc;
use tessera_core::{Backend, BinaryOp, Buffer, DType, Error, Layout, Result, UnaryOp, View};

/// `b` as a CPU buffer, or an error naming `op` when it belongs to another backend.
pub(crate) fn cpu_buf<'a>(op: &'static str, b: &'a dyn Buffer) -> Result<&'a CpuStorage> {
    b.as_any()
        .downcast_ref::<CpuBuffer>()
        .map(|c| &c.data)
        .ok_or_else(|| Error::DeviceMismatch {
            op,
            lhs: "cpu".into(),
            rhs: format!("a {:?} buffer of another backend", b.dtype()),
        })
}

/// `v`'s buffer as a slice of `T`, checked to hold every element `v`'s layout reaches.
pub(crate) fn typed<'a, T: CpuElem>(op: &'static str, v: View<'a>) -> Result<&'a [T]> {
    let s = cpu_buf(op, v.buf)?;
    let data = T::slice(s).ok_or_else(|| Error::DType {
        op,
        msg: format!("expected {}, got {}", T::DTYPE, v.buf.dtype()),
    })?;
    if v.layout.max_extent() > data.len() {
        return Err(Error::invalid(
            op,
            format!(
                "layout reaches element {} of a buffer of {}",
                v.layout.max_extent(),
                data.len()
            ),
        ));
    }
    Ok(data)
}

/// A kernel's result as a new buffer.
pub(crate) fn out<T: CpuElem>(v: Vec<T>) -> Result<Arc<dyn Buffer>> {
    Ok(Arc::new(CpuBuffer::new(T::wrap(v))))
}

/// Runs `$body` with `$T` bound to the element type of `$dtype`, so each kernel is written once
/// and monomorphised per dtype: the numeric types (bool is an error naming `$op`), every type
/// with `all` (for kernels that only move or convert elements), the float types with `float`.
macro_rules! with_dtype {
    ($dtype:expr, $op:expr, |$T:ident| $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            DType::I64 => {
                type $T = i64;
                $body
            }
            DType::F16 => {
                type $T = half::f16;
                $body
            }
            DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            DType::Bool => Err(Error::DType {
                op: $op,
                msg: "does not take bool tensors; cast with to_dtype first".into(),
            }),
        }
    };
    (all $dtype:expr, $op:expr, |$T:ident| $body:expr) => {
        match $dtype {
            DType::Bool => {
                type $T = bool;
                $body
            }
            d => with_dtype!(d, $op, |$T| $body),
        }
    };
    (float $dtype:expr, $op:expr, |$T:ident| $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            DType::F16 => {
                type $T = half::f16;
                $body
            }
            DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            d => Err(Error::DType {
                op: $op,
                msg: format!("needs a floating-point tensor, got {d}"),
            }),
        }
    };
}

/// A float unary op (the primitive's body).
pub(crate) fn unary_typed<T: Float>(op: UnaryOp, x: View<'_>) -> Result<Arc<dyn Buffer>> {
    out(ew::unary_float(op, typed::<T>("unary", x)?, x.layout))
}

/// `a^b` for floats (the binary primitive's `Pow`).
pub(crate) fn pow_f<T: Float>(a: T, b: T) -> T {
    a.powf(b)
}

/// A binary op of one dtype (the primitive's body).
pub(crate) fn binary_typed<T: Num>(
    op: BinaryOp,
    a: View<'_>,
    b: View<'_>,
    pow: fn(T, T) -> T,
) -> Result<Arc<dyn Buffer>> {
    let (x, y) = (typed::<T>("binary", a)?, typed::<T>("binary", b)?);
    out(ew::binary(op, x, a.layout, y, b.layout, pow))
}

/// From this many bytes up a new buffer is first reserved with `try_reserve`: a request the
/// machine cannot meet is then [`Error::OutOfMemory`] instead of a process abort (Rust's
/// allocator aborts on failure). Below it the cost of the probe is not worth paying.
const CHECKED_ALLOC_BYTES: usize = 1 << 30;

/// Checks that `len` elements of `dtype` can be allocated (see [`CHECKED_ALLOC_BYTES`]).
pub(crate) fn ensure_memory(op: &'static str, len: usize, dtype: DType) -> Result<()> {
    let bytes = len.saturating_mul(dtype.size_in_bytes());
    if bytes < CHECKED_ALLOC_BYTES {
        return Ok(());
    }
    let oom = || Error::OutOfMemory {
        op,
        device: "cpu".into(),
        bytes,
    };
    if bytes > isize::MAX as usize {
        return Err(oom());
    }
    // Reserved and freed at once: with Linux's overcommit the pages are not touched, so this
    // costs two system calls, and the kernel's allocation right after reuses the mapping.
    let mut probe: Vec<u8> = Vec::new();
    probe.try_reserve_exact(bytes).map_err(|_| oom())
}

/// i64 arithmetic as PyTorch does it: wrapping on overflow (`i64::MIN / -1` is `i64::MIN`),
/// division truncating toward zero, and a zero divisor an error (PyTorch raises too) — never a
/// panic.
pub(crate) fn int_binary(op: BinaryOp, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
    let (x, y) = (typed::<i64>("binary", a)?, typed::<i64>("binary", b)?);
    let wrapping: fn(i64, i64) -> i64 = match op {
        BinaryOp::Add => i64::wrapping_add,
        BinaryOp::Sub => i64::wrapping_sub,
        BinaryOp::Mul => i64::wrapping_mul,
        BinaryOp::Div => {
            if kernels::map1(y, b.layout, |v: i64| v).contains(&0) {
                return Err(Error::invalid("div", "integer division by zero"));
            }
            i64::wrapping_div
        }
        _ => return out(ew::binary(op, x, a.layout, y, b.layout, int_pow)),
    };
    out(kernels::map2(x, a.layout, y, b.layout, wrapping))
}

/// `a^b` for i64: 0 for a negative exponent, wrapping on overflow.
pub(crate) fn int_pow(a: i64, b: i64) -> i64 {
    if b < 0 {
        0
    } else {
        a.wrapping_pow(b as u32)
    }
}

/// [`relu`] over a kernel's fresh output, in place (parallel from [`kernels::PAR_MIN`]).
pub(crate) fn relu_in_place<T: kernels::Num>(v: &mut [T]) {
    use rayon::prelude::*;
    let pass = |c: &mut [T]| c.iter_mut().for_each(|x| *x = relu(*x));
    if v.len() < kernels::PAR_MIN {
        pass(v)
    } else {
        v.par_chunks_mut(kernels::CHUNK).for_each(pass)
    }
}

impl CpuBackend {
    /// `f` over two operands of one shape (any layouts) into a new contiguous buffer.
    pub(crate) fn map2_typed<T: kernels::Num>(
        &self,
        op: &'static str,
        a: View<'_>,
        b: View<'_>,
        f: impl Fn(T, T) -> T + Sync + Send + Copy,
    ) -> Result<Arc<dyn Buffer>> {
        let (x, y) = (typed::<T>(op, a)?, typed::<T>(op, b)?);
        out(kernels::map2(x, a.layout, y, b.layout, f))
    }

    /// Runs `f` on `x` converted to f32 and converts the result back to `x`'s dtype: half types
    /// accumulate (sums, GEMM, softmax, col2im) in f32, as PyTorch's CPU kernels do.
    pub(crate) fn via_f32(
        &self,
        x: View<'_>,
        f: impl FnOnce(View<'_>) -> Result<Arc<dyn Buffer>>,
    ) -> Result<Arc<dyn Buffer>> {
        let x32 = self.cast(x, DType::F32)?;
        let l = Layout::contiguous(x.layout.shape());
        let y = f(View {
            buf: x32.as_ref(),
            layout: &l,
        })?;
        let ly = Layout::contiguous(&[y.len()]);
        self.cast(
            View {
                buf: y.as_ref(),
                layout: &ly,
            },
            x.buf.dtype(),
        )
    }
}

impl CpuBackend {
    /// `v`'s elements in row-major order as one slice of `T`: the buffer itself when the layout
    /// is contiguous, else a copy kept alive in `hold`.
    pub(crate) fn rows<'a, T: CpuElem>(
        &self,
        op: &'static str,
        v: View<'a>,
        hold: &'a mut Option<Arc<dyn Buffer>>,
    ) -> Result<&'a [T]> {
        let r = v.layout.offset()..v.layout.offset() + v.layout.numel();
        if v.layout.is_contiguous() {
            return Ok(&typed::<T>(op, v)?[r]);
        }
        let copy: &'a Arc<dyn Buffer> = hold.insert(self.cast(v, T::DTYPE)?);
        let data = T::slice(cpu_buf(op, copy.as_ref())?).ok_or_else(|| Error::DType {
            op,
            msg: format!("expected {}, got {}", T::DTYPE, copy.dtype()),
        })?;
        Ok(&data[..v.layout.numel()])
    }
}

/// All of `buf`'s elements as `T`.
pub(crate) fn whole<'a, T: CpuElem>(op: &'static str, buf: &'a Arc<dyn Buffer>) -> Result<&'a [T]> {
    T::slice(cpu_buf(op, buf.as_ref())?).ok_or_else(|| Error::DType {
        op,
        msg: format!("expected {}, got {}", T::DTYPE, buf.dtype()),
    })
}
