//! Launchers of reduce.cu: sum/max/min over any axes, argmax/argmin, row softmax.

use super::{grid, per_row, suffix};
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
