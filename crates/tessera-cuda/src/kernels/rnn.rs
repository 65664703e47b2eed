//! Launchers of rnn.cu: the LSTM cell and its backward, one kernel each.

use super::{grid, rows_ptr, suffix};
use crate::{launch, CudaBackend, CudaBuffer};
use tessera_core::{Result, View};

/// `FusedKernels::lstm_cell` for f32/f64: `x`, `r` `[B, 4H]`, `c` `[B, H]` → act, c', tanh(c'), h'.
pub fn lstm_cell(
    be: &CudaBackend,
    x: View<'_>,
    r: View<'_>,
    c: View<'_>,
) -> Result<[CudaBuffer; 4]> {
    let op = "lstm_cell";
    let s = c.layout.shape();
    let (b, h, d) = (s[0], s[1], x.buf.dtype());
    let mut hold: [Option<CudaBuffer>; 3] = Default::default();
    let [h0, h1, h2] = &mut hold;
    let (xp, rp, cp) = (
        rows_ptr(be, op, x, h0)?,
        rows_ptr(be, op, r, h1)?,
        rows_ptr(be, op, c, h2)?,
    );
    let out = [
        be.empty(b * 4 * h, d)?,
        be.empty(b * h, d)?,
        be.empty(b * h, d)?,
        be.empty(b * h, d)?,
    ];
    let (bb, hh) = (b as i64, h as i64);
    let [ap, cn, tc, hn] = [0, 1, 2, 3].map(|k| out[k].ptr());
    let name = format!("lstm_cell_{}", suffix(d));
    launch!(
        be,
        "rnn",
        name,
        grid(b * h),
        bb,
        hh,
        xp,
        rp,
        cp,
        ap,
        cn,
        tc,
        hn
    )?;
    Ok(out)
}

/// `FusedKernels::lstm_cell_backward` for f32/f64: from act `[B, 4H]`, c_prev, tanh(c'), dh and dc
/// `[B, H]` → dz `[B, 4H]` and dc_prev `[B, H]`.
pub fn lstm_cell_backward(be: &CudaBackend, v: [View<'_>; 5]) -> Result<[CudaBuffer; 2]> {
    let op = "lstm_cell_backward";
    let s = v[1].layout.shape();
    let (b, h, d) = (s[0], s[1], v[0].buf.dtype());
    let mut hold: [Option<CudaBuffer>; 5] = Default::default();
    let [h0, h1, h2, h3, h4] = &mut hold;
    let (ap, cp, tp, dhp, dcp) = (
        rows_ptr(be, op, v[0], h0)?,
        rows_ptr(be, op, v[1], h1)?,
        rows_ptr(be, op, v[2], h2)?,
        rows_ptr(be, op, v[3], h3)?,
        rows_ptr(be, op, v[4], h4)?,
    );
    let out = [be.empty(b * 4 * h, d)?, be.empty(b * h, d)?];
    let (bb, hh, dz, dcprev) = (b as i64, h as i64, out[0].ptr(), out[1].ptr());
    let name = format!("lstm_cell_backward_{}", suffix(d));
    launch!(
        be,
        "rnn",
        name,
        grid(b * h),
        bb,
        hh,
        ap,
        cp,
        tp,
        dhp,
        dcp,
        dz,
        dcprev
    )?;
    Ok(out)
}
