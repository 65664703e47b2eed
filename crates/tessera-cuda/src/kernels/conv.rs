//! Launchers of conv.cu: im2col (`unfold2d`) and col2im (`fold2d`) for convolution and pooling.

use super::{grid, suffix};
use crate::{cuda_buf, launch, CudaBackend, CudaBuffer};
use cudarc::driver::DeviceRepr;
use tessera_core::{half, Buffer, DType, Error, Result, View, Window};

/// The window geometry as conv.cu reads it (`Win`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Win {
    /// Kernel size (rows, columns).
    pub k: [i64; 2],
    /// Stride.
    pub s: [i64; 2],
    /// Dilation.
    pub d: [i64; 2],
    /// Padding before.
    pub p: [i64; 2],
    /// Output positions per dim.
    pub o: [i64; 2],
}

// SAFETY: plain old data laid out as the C struct (k0, k1, s0, s1, ...).
unsafe impl DeviceRepr for Win {}

impl From<&Window> for Win {
    fn from(w: &Window) -> Win {
        let two = |a: [usize; 2]| [a[0] as i64, a[1] as i64];
        Win {
            k: two(w.k),
            s: two(w.s),
            d: two(w.d),
            p: two(w.p),
            o: two(w.out),
        }
    }
}

fn rank4(op: &'static str, shape: &[usize]) -> Result<()> {
    if shape.len() != 4 {
        return Err(Error::invalid(
            op,
            format!("expected a rank-4 tensor, got shape {shape:?}"),
        ));
    }
    Ok(())
}

/// im2col of `x` `[N, C, H, W]` into `[N, C, taps, positions]` (`FusedKernels::unfold2d`).
pub fn unfold(be: &CudaBackend, x: View<'_>, w: &Window, fill: f64) -> Result<CudaBuffer> {
    let s = x.layout.shape();
    rank4("unfold2d", s)?;
    let xb = cuda_buf("unfold2d", x)?;
    let copy = be.contiguous("unfold2d", x)?;
    let src = match &copy {
        Some(c) => c.ptr(),
        None => xb.ptr_at(x.layout.offset()),
    };
    let n = s[0] * s[1] * w.taps() * w.positions();
    let out = be.empty(n, xb.dtype())?;
    if n == 0 {
        return Ok(out);
    }
    let (len, h, wd, g, op_) = (n as i64, s[2] as i64, s[3] as i64, Win::from(w), out.ptr());
    // The fill value travels in the element type (as 16 bits for f16/bf16).
    match xb.dtype() {
        DType::F32 => {
            let f = fill as f32;
            launch!(
                be,
                "conv",
                "unfold_f32",
                grid(n),
                len,
                src,
                h,
                wd,
                g,
                f,
                op_
            )?
        }
        DType::F16 => {
            let f = half::f16::from_f64(fill).to_bits();
            launch!(
                be,
                "conv",
                "unfold_u16",
                grid(n),
                len,
                src,
                h,
                wd,
                g,
                f,
                op_
            )?
        }
        DType::BF16 => {
            let f = half::bf16::from_f64(fill).to_bits();
            launch!(
                be,
                "conv",
                "unfold_u16",
                grid(n),
                len,
                src,
                h,
                wd,
                g,
                f,
                op_
            )?
        }
        d => {
            let f = fill;
            launch!(
                be,
                "conv",
                format!("unfold_{}", suffix(d)),
                grid(n),
                len,
                src,
                h,
                wd,
                g,
                f,
                op_
            )?
        }
    }
    Ok(out)
}

/// col2im, the adjoint of [`unfold`] (`FusedKernels::fold2d`), summed without atomics.
pub fn fold(be: &CudaBackend, cols: View<'_>, w: &Window, hw: [usize; 2]) -> Result<CudaBuffer> {
    let s = cols.layout.shape();
    rank4("fold2d", s)?;
    if s[2] != w.taps() || s[3] != w.positions() {
        return Err(Error::invalid(
            "fold2d",
            format!(
                "columns of shape {s:?} do not match {} taps x {} positions",
                w.taps(),
                w.positions()
            ),
        ));
    }
    let cb = cuda_buf("fold2d", cols)?;
    let copy = be.contiguous("fold2d", cols)?;
    let src = match &copy {
        Some(c) => c.ptr(),
        None => cb.ptr_at(cols.layout.offset()),
    };
    let n = s[0] * s[1] * hw[0] * hw[1];
    let out = be.empty(n, cb.dtype())?;
    if n == 0 {
        return Ok(out);
    }
    let (len, h, wd, g, op_) = (
        n as i64,
        hw[0] as i64,
        hw[1] as i64,
        Win::from(w),
        out.ptr(),
    );
    launch!(
        be,
        "conv",
        format!("fold_{}", suffix(cb.dtype())),
        grid(n),
        len,
        src,
        h,
        wd,
        g,
        op_
    )?;
    Ok(out)
}
