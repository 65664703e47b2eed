//! LSTM and GRU over whole sequences (PyTorch's equations, gate order and parameter layout),
//! composed of core ops, so backpropagation through time is the ops' own rules. Truncated BPTT
//! is the caller detaching the carried state between chunks.
//!
//! - LSTM (blocks i, f, g, o): `z = W_ih x + b_ih + W_hh h + b_hh`; `c' = σ(f)·c + σ(i)·tanh(g)`;
//!   `h' = σ(o)·tanh(c')`.
//! - GRU (blocks r, z, n): `r = σ(..)`, `z = σ(..)`, `n = tanh(W_in x + b_in + r·(W_hn h + b_hn))`,
//!   `h' = (1 - z)·n + z·h`.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Which recurrent cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    Lstm,
    Gru,
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }
}

/// Shape options of a recurrent network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RnnOptions {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub bidirectional: bool,
    pub batch_first: bool,
    pub bias: bool,
}

/// Parameters of one layer and direction: `weight_ih`, `weight_hh`, and the biases if any.
#[derive(Clone, Debug)]
pub struct RnnWeights<'a> {
    pub w_ih: &'a Tensor,
    pub w_hh: &'a Tensor,
    pub b_ih: Option<&'a Tensor>,
    pub b_hh: Option<&'a Tensor>,
}

/// Output of [`rnn`]: per-step outputs of the last layer, final hidden states and (LSTM) cells.
#[derive(Clone, Debug)]
pub struct RnnOutput {
    pub output: Tensor,
    pub h_n: Tensor,
    pub c_n: Option<Tensor>,
}

/// Runs one direction of one layer over `xp` (input projections `[T, B, G·H]`; for the GRU
/// with the input bias added, for the LSTM without: its `bias`, both biases summed, goes into
/// the sequence node), returning the hidden states `[T, B, H]` in time order and the final
/// state(s). The GRU is composed of recorded ops; the LSTM is one node ([`lstm_sequence`]).
fn run_direction(
    cell: Cell,
    xp: &Tensor,
    bias: Option<&Tensor>,
    w: &RnnWeights<'_>,
    h0: Tensor,
    c0: Option<Tensor>,
    reverse: bool,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    if cell == Cell::Lstm {
        let c0 = c0.ok_or_else(|| Error::invalid("lstm", "missing cell state"))?;
        return lstm_sequence(xp, bias, w.w_hh, &h0, &c0, reverse);
    }
    let t_len = xp.dims()[0];
    let hsz = h0.dims()[1];
    let w_hh_t = w.w_hh.t()?;
    let mut h = h0;
    let mut outs = vec![None; t_len];
    for step in 0..t_len {
        let t = if reverse { t_len - 1 - step } else { step };
        let x_t = xp.narrow(0, t, 1)?.squeeze(0)?;
        let mut hp = h.matmul(&w_hh_t)?;
        if let Some(b) = w.b_hh {
            hp = hp.add(b)?;
        }
        let gate = |src: &Tensor, k: usize| src.narrow(1, k * hsz, hsz);
        let r = gate(&x_t, 0)?.add(&gate(&hp, 0)?)?.sigmoid()?;
        let z = gate(&x_t, 1)?.add(&gate(&hp, 1)?)?.sigmoid()?;
        let n = gate(&x_t, 2)?.add(&r.mul(&gate(&hp, 2)?)?)?.tanh()?;
        // h' = n + z·(h - n) = (1 - z)·n + z·h
        h = n.add(&z.mul(&h.sub(&n)?)?)?;
        outs[t] = Some(h.clone());
    }
    let outs = outs
        .into_iter()
        .map(|o| o.ok_or_else(|| Error::invalid("rnn", "empty sequence")))
        .collect::<Result<Vec<_>>>()?;
    Ok((Tensor::stack(&outs.iter().collect::<Vec<_>>(), 0)?, h, c0))
}

/// What one LSTM pass over a sequence computes, per time index (not processing order):
/// the gate activations `(i, f, g, o)` (as `act` or as `gates`), `tanh(c_t)`, and the states
/// each step started from.
struct LstmTrace {
    /// The gate activations of each step.
    gates: Vec<StepGates>,
    tanh_c: Vec<Tensor>,
    h_prev: Vec<Tensor>,
    c_prev: Vec<Tensor>,
    /// The whole-sequence tensors when the backend ran the sequence in one call
    /// ([`crate::FusedKernels::lstm_sequence`]); the per-step fields above are then empty.
    seq: Option<SeqTrace>,
}

/// One step's gate activations `σ(i), σ(f), tanh(g), σ(o)`.
enum StepGates {
    /// `[B, 4H]` from the backend's fused cell.
    Act(Tensor),
    /// The four gates `[B, H]` from the composite (recorded under `create_graph`).
    Split([Tensor; 4]),
}

impl StepGates {
    /// The four gates, as views of `Act`'s columns where needed.
    fn split(&self) -> Result<[Tensor; 4]> {
        match self {
            StepGates::Split(g) => Ok(g.clone()),
            StepGates::Act(a) => {
                let h = a.dims()[1] / 4;
                Ok([
                    a.narrow(1, 0, h)?,
                    a.narrow(1, h, h)?,
                    a.narrow(1, 2 * h, h)?,
                    a.narrow(1, 3 * h, h)?,
                ])
            }
        }
    }
}

/// [`crate::backend::LstmSequence`]'s buffers as tensors, `[T, B, ·]` in time order.
struct SeqTrace {
    act: Tensor,
    c_prev: Tensor,
    tanh_c: Tensor,
    h_prev: Tensor,
}

/// Processing order of the time indices.
fn time_order(t_len: usize, reverse: bool) -> Vec<usize> {
    if reverse {
        (0..t_len).rev().collect()
    } else {
        (0..t_len).collect()
    }
}

/// The LSTM recurrence over `xp` (`[T, B, 4H]`, every bias added), from `h0`, `c0` (`[B, H]`).
/// With `try_fused` (no ops to record) each step's cell is one
/// [`crate::FusedKernels::lstm_cell`] call where the backend has it; otherwise it is the
/// composite below, recorded under `create_graph` so gradients of gradients flow through it.
/// Returns the trace, the outputs `h_t` in time order and the last cell state.
fn lstm_steps(
    xp: &Tensor,
    w_t: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
    reverse: bool,
    try_fused: bool,
) -> Result<(LstmTrace, Vec<Tensor>, Tensor)> {
    let t_len = xp.dims()[0];
    let (b, hsz) = (h0.dims()[0], h0.dims()[1]);
    let (mut h, mut c) = (h0.clone(), c0.clone());
    // Per time index: (h_t, gates, tanh(c_t), h_prev, c_prev).
    type Slot = (Tensor, StepGates, Tensor, Tensor, Tensor);
    let mut slots: Vec<Option<Slot>> = (0..t_len).map(|_| None).collect();
    for t in time_order(t_len, reverse) {
        let x_t = xp.narrow(0, t, 1)?.squeeze(0)?;
        let r = h.matmul(w_t)?;
        let cell = match try_fused {
            true => super::fused(xp.device(), |k| k.lstm_cell(x_t.view(), r.view(), c.view()))?,
            false => None,
        };
        let (gates, c_new, tc, h_new) = match cell {
            Some([act, c_new, tc, h_new]) => {
                let state = |buf| xp.output(buf, &[b, hsz]);
                (
                    StepGates::Act(xp.output(act, &[b, 4 * hsz])),
                    state(c_new),
                    state(tc),
                    state(h_new),
                )
            }
            None => {
                let z = x_t.add(&r)?;
                let gate = |k: usize| z.narrow(1, k * hsz, hsz);
                let (i, f, g, o) = (
                    gate(0)?.sigmoid()?,
                    gate(1)?.sigmoid()?,
                    gate(2)?.tanh()?,
                    gate(3)?.sigmoid()?,
                );
                let c_new = f.mul(&c)?.add(&i.mul(&g)?)?;
                let tc = c_new.tanh()?;
                let h_new = o.mul(&tc)?;
                (StepGates::Split([i, f, g, o]), c_new, tc, h_new)
            }
        };
        slots[t] = Some((h_new.clone(), gates, tc, h, c));
        h = h_new;
        c = c_new;
    }
    let mut tr = LstmTrace {
        gates: Vec::with_capacity(t_len),
        tanh_c: Vec::with_capacity(t_len),
        h_prev: Vec::with_capacity(t_len),
        c_prev: Vec::with_capacity(t_len),
        seq: None,
    };
    let mut outs = Vec::with_capacity(t_len);
    for slot in slots {
        let (out, gates, tc, hp, cp) =
            slot.ok_or_else(|| Error::invalid("lstm", "empty sequence"))?;
        outs.push(out);
        tr.gates.push(gates);
        tr.tanh_c.push(tc);
        tr.h_prev.push(hp);
        tr.c_prev.push(cp);
    }
    Ok((tr, outs, c))
}

/// `W_hhᵀ` stored row-major once per sequence: each step's `h · W_hhᵀ` then reads both operands
/// in place (the CPU's row-major small-row kernels), not repacking 1 MiB per step.
fn recurrent_weight_t(w_hh: &Tensor) -> Result<Tensor> {
    w_hh.t()?.contiguous()
}

/// The trace of a sequence the backend ran in one call (adding `bias` to every step), and the
/// node's packed value `[T + 1, B, H]`; `None` where the backend declines.
fn lstm_sequence_fused(
    xp: &Tensor,
    bias: Option<&Tensor>,
    w_t: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
    reverse: bool,
) -> Result<Option<(LstmTrace, Tensor)>> {
    let seq = super::fused(xp.device(), |k| {
        k.lstm_sequence(
            xp.view(),
            bias.map(|b| b.view()),
            w_t.view(),
            h0.view(),
            c0.view(),
            reverse,
        )
    })?;
    let Some(bufs) = seq else {
        return Ok(None);
    };
    let (t_len, b, hsz) = (xp.dims()[0], h0.dims()[0], h0.dims()[1]);
    let state = |buf| xp.output(buf, &[t_len, b, hsz]);
    let seq = SeqTrace {
        act: xp.output(bufs.act, &[t_len, b, 4 * hsz]),
        c_prev: state(bufs.c_prev),
        tanh_c: state(bufs.tanh_c),
        h_prev: state(bufs.h_prev),
    };
    let packed = xp.output(bufs.out, &[t_len + 1, b, hsz]);
    // The per-step fields stay empty: building ~5T views costs more than a step's cell, and
    // only a backend without the sequence backward needs them (`SeqTrace::per_step`).
    let trace = LstmTrace {
        gates: vec![],
        tanh_c: vec![],
        h_prev: vec![],
        c_prev: vec![],
        seq: Some(seq),
    };
    Ok(Some((trace, packed)))
}

impl SeqTrace {
    /// The per-step trace the step-by-step backward reads, as views of the sequence tensors.
    fn per_step(&self) -> Result<LstmTrace> {
        let steps = |x: &Tensor| -> Result<Vec<Tensor>> {
            (0..x.dims()[0])
                .map(|t| x.narrow(0, t, 1)?.squeeze(0))
                .collect()
        };
        Ok(LstmTrace {
            gates: steps(&self.act)?.into_iter().map(StepGates::Act).collect(),
            tanh_c: steps(&self.tanh_c)?,
            h_prev: steps(&self.h_prev)?,
            c_prev: steps(&self.c_prev)?,
            seq: None,
        })
    }
}

/// The weight gradient of one direction, `dZᵀ · H_prev` over all steps at once.
fn recurrent_weight_grad(dz: &Tensor, h_prev: &Tensor) -> Result<Tensor> {
    let (rows, g, hsz) = (dz.dims()[0] * dz.dims()[1], dz.dims()[2], h_prev.dims()[2]);
    dz.reshape_usize(&[rows, g])?
        .t()?
        .matmul(&h_prev.reshape_usize(&[rows, hsz])?)
}

/// `xp + bias` (every step's pre-activations before the recurrent product).
fn with_bias(xp: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => xp.add(b),
        None => Ok(xp.clone()),
    }
}

/// One LSTM direction as a single tape node with a hand-written BPTT: the per-step backward
/// needs one GEMM (`dz · W_hh`) and the weight gradient is one GEMM over all steps,
/// `dZᵀ · H_prev`, instead of one small accumulated GEMM per step. `bias` `[4H]` (both biases
/// summed) is an input of the node, so a backend's sequence kernel adds it, and sums its
/// gradient, on the way. Returns the outputs in time order as one `[T, B, H]` view of the
/// node's result (one view, so backward pads one gradient into the node's shape rather than
/// one per step), `h_T` and `c_T`.
///
/// Under `backward_create_graph` the closure recomputes the forward with recorded ops, so
/// gradients of gradients see every dependence on the inputs.
fn lstm_sequence(
    xp: &Tensor,
    bias: Option<&Tensor>,
    w_hh: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
    reverse: bool,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let t_len = xp.dims()[0];
    // One packed result [T + 1, B, H]: the T outputs, then c_T (h_T is output T-1 or 0).
    let (trace, packed) = crate::no_grad(|| -> Result<_> {
        let w_t = recurrent_weight_t(w_hh)?;
        if let Some(done) = lstm_sequence_fused(xp, bias, &w_t, h0, c0, reverse)? {
            return Ok(done);
        }
        let xpb = with_bias(xp, bias)?;
        let (trace, outs, c_last) = lstm_steps(&xpb, &w_t, h0, c0, reverse, true)?;
        let mut rows: Vec<&Tensor> = outs.iter().collect();
        rows.push(&c_last);
        let packed = Tensor::stack(&rows, 0)?;
        Ok((trace, packed))
    })?;
    let saved = std::rc::Rc::new(trace);
    let (xp_s, w_s, h0_s, c0_s) = (xp.clone(), w_hh.clone(), h0.clone(), c0.clone());
    let b_s = bias.cloned();
    let mut inputs = vec![xp, w_hh, h0, c0];
    inputs.extend(bias);
    let packed = packed.record_op("lstm", &inputs, move |gp, needs| {
        // With create_graph, recompute the trace with recorded ops (see above).
        let fresh;
        let recording = crate::tape::is_grad_enabled();
        let tr = if recording {
            let w_t = recurrent_weight_t(&w_s)?;
            let xpb = with_bias(&xp_s, b_s.as_ref())?;
            fresh = lstm_steps(&xpb, &w_t, &h0_s, &c0_s, reverse, false)?.0;
            &fresh
        } else {
            &*saved
        };
        let (b, hsz) = (h0_s.dims()[0], h0_s.dims()[1]);
        let need_bias = b_s.is_some() && needs.get(4) == Some(&true);
        // The bias gradient where the backend left it: dz summed over steps and rows.
        let bias_grad = |dxp: &Tensor| -> Result<Option<Tensor>> {
            need_bias.then(|| dxp.sum(&[0, 1], false)).transpose()
        };
        let dev = gp.device();
        if let (false, Some(seq)) = (recording, &tr.seq) {
            let grads = super::fused(dev, |k| {
                k.lstm_sequence_backward(
                    w_s.view(),
                    seq.act.view(),
                    seq.c_prev.view(),
                    seq.tanh_c.view(),
                    gp.view(),
                    reverse,
                    needs[2],
                    need_bias,
                )
            })?;
            if let Some(g) = grads {
                let dxp = gp.output(g.dz, &[t_len, b, 4 * hsz]);
                let dw = recurrent_weight_grad(&dxp, &seq.h_prev)?;
                let db = match g.db {
                    Some(db) if need_bias => Some(gp.output(db, &[4 * hsz])),
                    _ => bias_grad(&dxp)?,
                };
                let state = |buf| gp.output(buf, &[b, hsz]);
                let mut grads = vec![Some(dxp), Some(dw), g.dh0.map(state), Some(state(g.dc0))];
                if b_s.is_some() {
                    grads.push(db);
                }
                return Ok(grads);
            }
        }
        let expanded;
        let tr = match &tr.seq {
            Some(seq) => {
                expanded = seq.per_step()?;
                &expanded
            }
            None => tr,
        };
        let mut dh_next: Option<Tensor> = None;
        let mut dc_next = gp.narrow(0, t_len, 1)?.squeeze(0)?;
        let mut dz_all: Vec<Option<Tensor>> = vec![None; t_len];
        // `dz · W_hh` with `W_hh` row-major as stored, the layout of the forward's products.
        let w_back = &w_s;
        let one_minus_sq = |a: &Tensor| a.square()?.neg()?.add_scalar(1.0);
        let one_minus = |a: &Tensor| a.neg()?.add_scalar(1.0);
        for t in time_order(t_len, reverse).into_iter().rev() {
            let tc = &tr.tanh_c[t];
            let mut dh = gp.narrow(0, t, 1)?.squeeze(0)?;
            if let Some(d) = &dh_next {
                dh = dh.add(d)?;
            }
            // The step's gradient of the pre-activations and of c_prev: one fused cell
            // backward where the backend has it (never under create_graph), else the composite.
            let fused = match (&tr.gates[t], recording) {
                (StepGates::Act(act), false) => super::fused(dev, |k| {
                    k.lstm_cell_backward(
                        act.view(),
                        tr.c_prev[t].view(),
                        tc.view(),
                        dh.view(),
                        dc_next.view(),
                    )
                })?
                .map(|[dz, dc]| {
                    (
                        gp.output(dz, act.dims()),
                        gp.output(dc, tr.c_prev[t].dims()),
                    )
                }),
                _ => None,
            };
            let (dz, dc_prev) = match fused {
                Some(done) => done,
                None => {
                    let [i, f, g, o] = &tr.gates[t].split()?;
                    let dc = dc_next.add(&dh.mul(o)?.mul(&one_minus_sq(tc)?)?)?;
                    let dzi = dc.mul(g)?.mul(&i.mul(&one_minus(i)?)?)?;
                    let dzf = dc.mul(&tr.c_prev[t])?.mul(&f.mul(&one_minus(f)?)?)?;
                    let dzg = dc.mul(i)?.mul(&one_minus_sq(g)?)?;
                    let dzo = dh.mul(tc)?.mul(&o.mul(&one_minus(o)?)?)?;
                    (Tensor::concat(&[&dzi, &dzf, &dzg, &dzo], 1)?, dc.mul(f)?)
                }
            };
            dh_next = Some(dz.matmul(w_back)?);
            dc_next = dc_prev;
            dz_all[t] = Some(dz);
        }
        let dz: Vec<Tensor> = dz_all.into_iter().flatten().collect();
        let dxp = Tensor::stack(&dz.iter().collect::<Vec<_>>(), 0)?;
        let hp = Tensor::stack(&tr.h_prev.iter().collect::<Vec<_>>(), 0)?;
        let dw = recurrent_weight_grad(&dxp, &hp)?;
        let mut grads = vec![Some(dxp.clone()), Some(dw), dh_next, Some(dc_next)];
        if b_s.is_some() {
            grads.push(bias_grad(&dxp)?);
        }
        Ok(grads)
    });
    let last = if reverse { 0 } else { t_len - 1 };
    let outs = packed.narrow(0, 0, t_len)?;
    let h_last = packed.narrow(0, last, 1)?.squeeze(0)?;
    let c_last = packed.narrow(0, t_len, 1)?.squeeze(0)?;
    Ok((outs, h_last, Some(c_last)))
}

/// A multi-layer, optionally bidirectional LSTM or GRU over `x` (`[T, B, I]`, or `[B, T, I]`
/// with `batch_first`), from `h0` (and `c0` for LSTM) `[L·D, B, H]`. `weights` holds one entry
/// per layer and direction, in PyTorch's order (layer 0 forward, layer 0 reverse, layer 1 ...).
pub fn rnn(
    cell: Cell,
    x: &Tensor,
    h0: &Tensor,
    c0: Option<&Tensor>,
    weights: &[RnnWeights<'_>],
    opts: &RnnOptions,
) -> Result<RnnOutput> {
    let op = match cell {
        Cell::Lstm => "lstm",
        Cell::Gru => "gru",
    };
    super::float_only(op, x)?;
    if x.rank() != 3 {
        return Err(Error::invalid(
            op,
            format!("input must be 3-d, got {}", x.shape()),
        ));
    }
    let dirs = if opts.bidirectional { 2 } else { 1 };
    let (l, hsz, g) = (opts.num_layers, opts.hidden_size, cell.gates());
    let x = if opts.batch_first {
        x.transpose(0, 1)?
    } else {
        x.clone()
    };
    let (t_len, b) = (x.dims()[0], x.dims()[1]);
    if t_len == 0 {
        return Err(Error::invalid(op, "the sequence is empty"));
    }
    let state_shape = [l * dirs, b, hsz];
    if h0.dims() != state_shape {
        return Err(Error::shape(
            op,
            format!("h0 must be [{}, {b}, {hsz}]", l * dirs),
            h0.dims(),
            x.dims(),
        ));
    }
    if cell == Cell::Lstm && c0.map(|c| c.dims() != state_shape).unwrap_or(true) {
        return Err(Error::invalid(
            op,
            format!("c0 must be [{}, {b}, {hsz}]", l * dirs),
        ));
    }
    if weights.len() != l * dirs {
        return Err(Error::invalid(
            op,
            format!(
                "expected {} weight sets (layers × directions), got {}",
                l * dirs,
                weights.len()
            ),
        ));
    }
    let mut input = x;
    let (mut h_n, mut c_n) = (Vec::new(), Vec::new());
    for layer in 0..l {
        let in_size = input.dims()[2];
        let mut dir_outs = Vec::new();
        for d in 0..dirs {
            let k = layer * dirs + d;
            let w = &weights[k];
            if w.w_ih.dims() != [g * hsz, in_size] || w.w_hh.dims() != [g * hsz, hsz] {
                return Err(Error::shape(
                    op,
                    format!(
                        "layer {layer} expects weight_ih [{}, {in_size}] and weight_hh [{}, {hsz}]",
                        g * hsz,
                        g * hsz
                    ),
                    w.w_ih.dims(),
                    w.w_hh.dims(),
                ));
            }
            // One GEMM projects every time step's input at once.
            let mut xp = input.matmul(&w.w_ih.t()?)?;
            // The LSTM's two biases both add to every step's pre-activations: summed first,
            // they go into the sequence node, whose kernel adds them on the way (no pass over
            // `xp` of its own, and no reduction in backward). The GRU's b_ih is added here (its
            // b_hh is scaled by the reset gate, so it stays in the recurrence).
            let bias = match (cell, w.b_ih, w.b_hh) {
                (Cell::Lstm, Some(bi), Some(bh)) => Some(bi.add(bh)?),
                (Cell::Lstm, bi, bh) => bi.or(bh).cloned(),
                (Cell::Gru, bi, _) => {
                    if let Some(bi) = bi {
                        xp = xp.add(bi)?;
                    }
                    None
                }
            };
            let h = h0.narrow(0, k, 1)?.squeeze(0)?;
            let c = c0.map(|c| c.narrow(0, k, 1)?.squeeze(0)).transpose()?;
            let (outs, hl, cl) = run_direction(cell, &xp, bias.as_ref(), w, h, c, d == 1)?;
            dir_outs.push(outs);
            h_n.push(hl);
            if let Some(cl) = cl {
                c_n.push(cl);
            }
        }
        input = if dirs == 1 {
            dir_outs.remove(0)
        } else {
            Tensor::concat(&dir_outs.iter().collect::<Vec<_>>(), 2)?
        };
    }
    let output = if opts.batch_first {
        input.transpose(0, 1)?
    } else {
        input
    };
    let h_n = Tensor::stack(&h_n.iter().collect::<Vec<_>>(), 0)?;
    let c_n = if c_n.is_empty() {
        None
    } else {
        Some(Tensor::stack(&c_n.iter().collect::<Vec<_>>(), 0)?)
    };
    Ok(RnnOutput { output, h_n, c_n })
}
