//! Launchers of reduce.cu: sum/max/min over any axes, argmax/argmin, row softmax.

use super::shape::{check_flag, error_flag};
use super::{grid, per_row, rows_ptr, suffix};
use crate::{cuda_buf, launch, strided, CudaBackend, CudaBuffer};
use tessera_core::{Buffer, DType, Error, Layout, ReduceOp, Result, View};

/// `x` seen as (kept dims, reduced dims): two layouts over the same buffer, the second with
/// offset 0 (it is added to the first's offset of each output).
pub fn split(x: &Layout, axes: &[usize]) -> (Layout, Layout) {
    let (mut ks, mut kst, mut rs, mut rst) = (vec![], vec![], vec![], vec![]);
    for (d, (&n, &s)) in x.shape().iter().zip(x.strides()).enumerate() {
        if axes.contains(&d) {
            rs.push(n);
            rst.push(s);
        } else {
            ks.push(n);
            kst.push(s);
        }
    }
    (Layout::new(ks, kst, x.offset()), Layout::new(rs, rst, 0))
}

/// Sum/max/min over `axes`, or argmax/argmin over one axis (`Backend::reduce`).
pub fn reduce(be: &CudaBackend, op: ReduceOp, x: View<'_>, axes: &[usize]) -> Result<CudaBuffer> {
    let xb = cuda_buf("reduce", x)?;
    if let Some(&a) = axes.iter().find(|&&a| a >= x.layout.rank()) {
        return Err(Error::invalid(
            "reduce",
            format!("axis {a} of a rank-{} tensor", x.layout.rank()),
        ));
    }
    let (kept, red) = split(x.layout, axes);
    let (n_out, n_in) = (kept.numel(), red.numel());
    let d = xb.dtype();
    let code = match op {
        ReduceOp::Sum => 0i32,
        ReduceOp::Max | ReduceOp::ArgMax => 1,
        ReduceOp::Min | ReduceOp::ArgMin => 2,
    };
    if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) {
        let [axis] = axes else {
            return Err(Error::invalid(
                "reduce",
                format!("{op:?} takes one axis, got {axes:?}"),
            ));
        };
        let out = be.empty(n_out, DType::I64)?;
        if n_out == 0 {
            return Ok(out);
        }
        if n_in == 0 {
            return Err(Error::invalid(
                "reduce",
                format!("{op:?} of an empty dimension"),
            ));
        }
        let (no, n, st) = (n_out as i64, n_in as i64, x.layout.strides()[*axis] as i64);
        let (xp, lo, op_) = (xb.ptr(), strided("reduce", &kept)?, out.ptr());
        let name = format!("arg_reduce_{}", suffix(d));
        launch!(
            be,
            "reduce",
            name,
            grid(n_out),
            code,
            no,
            n,
            st,
            xp,
            lo,
            op_
        )?;
        return Ok(out);
    }
    if n_out == 0 || n_in == 0 {
        // An empty reduction gives 0, as on the CPU.
        return be.zeros(n_out, d);
    }
    let out = be.empty(n_out, d)?;
    let (no, ni, xp, lo, li, op_) = (
        n_out as i64,
        n_in as i64,
        xb.ptr(),
        strided("reduce", &kept)?,
        strided("reduce", &red)?,
        out.ptr(),
    );
    // Long reductions get a block each; short ones with many outputs a thread each.
    if n_in >= 128 || n_out < 256 {
        let name = format!("reduce_block_{}", suffix(d));
        launch!(
            be,
            "reduce",
            name,
            per_row(n_out),
            code,
            no,
            ni,
            xp,
            lo,
            li,
            op_
        )?;
    } else {
        let name = format!("reduce_thread_{}", suffix(d));
        launch!(
            be,
            "reduce",
            name,
            grid(n_out),
            code,
            no,
            ni,
            xp,
            lo,
            li,
            op_
        )?;
    }
    Ok(out)
}

/// Softmax or log-softmax along the last dim.
pub fn softmax(be: &CudaBackend, x: View<'_>, log: bool) -> Result<CudaBuffer> {
    let xb = cuda_buf("softmax", x)?;
    let copy = be.contiguous("softmax", x)?;
    let src = match &copy {
        Some(c) => c.ptr(),
        None => xb.ptr_at(x.layout.offset()),
    };
    let total = x.layout.numel();
    let n = x.layout.shape()[x.layout.rank() - 1];
    let rows = total / n;
    let out = be.empty(total, xb.dtype())?;
    let (r, len, op_, lg) = (rows as i64, n as i64, out.ptr(), log as i32);
    let name = format!("softmax_{}", suffix(xb.dtype()));
    launch!(be, "reduce", name, per_row(rows), r, len, src, op_, lg)?;
    Ok(out)
}

/// `FusedKernels::cross_entropy` for f32/f64 logits `[M, C]` and i64 targets `[M]`: the log-softmax
/// (the row kernel above), then one block per row for the losses and weights; a target out of
/// range is `IndexOutOfRange` (read back after the launch, as gather does).
pub fn cross_entropy(
    be: &CudaBackend,
    x: View<'_>,
    target: View<'_>,
    label_smoothing: f64,
    ignore_index: i64,
) -> Result<[CudaBuffer; 3]> {
    let op = "cross_entropy";
    let (m, c) = (x.layout.shape()[0], x.layout.shape()[1]);
    let d = cuda_buf(op, x)?.dtype();
    let lp = softmax(be, x, true)?;
    let mut hold = None;
    let tp = rows_ptr(be, op, target, &mut hold)?;
    let (loss, w, err) = (be.empty(m, d)?, be.empty(m, d)?, error_flag(be)?);
    let (rows, n, lpp, lossp, wp, errp) =
        (m as i64, c as i64, lp.ptr(), loss.ptr(), w.ptr(), err.ptr());
    let (keep, spread) = (1.0 - label_smoothing, label_smoothing / c as f64);
    let name = format!("cross_entropy_{}", suffix(d));
    launch!(
        be,
        "reduce",
        name,
        per_row(m),
        rows,
        n,
        lpp,
        tp,
        keep,
        spread,
        ignore_index,
        lossp,
        wp,
        errp
    )?;
    check_flag(&err, op, 1, c)?;
    Ok([loss, lp, w])
}

/// `FusedKernels::cross_entropy_backward` for f32/f64: one thread per element of `dx` `[M, C]`; `g`
/// `[M]` may be one value broadcast (stride 0).
pub fn cross_entropy_backward(
    be: &CudaBackend,
    [lp, target, w, g]: [View<'_>; 4],
    label_smoothing: f64,
) -> Result<CudaBuffer> {
    let op = "cross_entropy_backward";
    let (m, c) = (lp.layout.shape()[0], lp.layout.shape()[1]);
    let d = cuda_buf(op, lp)?.dtype();
    let mut hold: [Option<CudaBuffer>; 3] = Default::default();
    let [h0, h1, h2] = &mut hold;
    let (lpp, tp, wp) = (
        rows_ptr(be, op, lp, h0)?,
        rows_ptr(be, op, target, h1)?,
        rows_ptr(be, op, w, h2)?,
    );
    let gb = cuda_buf(op, g)?;
    let (gp, gs) = (gb.ptr_at(g.layout.offset()), g.layout.strides()[0] as i64);
    let dx = be.empty(m * c, d)?;
    let (rows, n, dxp) = (m as i64, c as i64, dx.ptr());
    let (keep, spread) = (1.0 - label_smoothing, label_smoothing / c as f64);
    let name = format!("cross_entropy_backward_{}", suffix(d));
    launch!(
        be,
        "reduce",
        name,
        grid(m * c),
        rows,
        n,
        lpp,
        tp,
        wp,
        gp,
        gs,
        keep,
        spread,
        dxp
    )?;
    Ok(dx)
}
