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

/// Runs one direction of one layer over `xp` (input projections `[T, B, G·H]`, biases added),
/// returning the per-step hidden states in time order and the final state(s).
fn run_direction(
    cell: Cell,
    xp: &Tensor,
    w: &RnnWeights<'_>,
    h0: Tensor,
    c0: Option<Tensor>,
    reverse: bool,
) -> Result<(Vec<Tensor>, Tensor, Option<Tensor>)> {
    let t_len = xp.dims()[0];
    let hsz = h0.dims()[1];
    let w_hh_t = w.w_hh.t()?;
    let (mut h, mut c) = (h0, c0);
    let mut outs = vec![None; t_len];
    for step in 0..t_len {
        let t = if reverse { t_len - 1 - step } else { step };
        let x_t = xp.narrow(0, t, 1)?.squeeze(0)?;
        let mut hp = h.matmul(&w_hh_t)?;
        if let Some(b) = w.b_hh {
            hp = hp.add(b)?;
        }
        let gate = |src: &Tensor, k: usize| src.narrow(1, k * hsz, hsz);
        match cell {
            Cell::Lstm => {
                let z = x_t.add(&hp)?;
                let i = gate(&z, 0)?.sigmoid()?;
                let f = gate(&z, 1)?.sigmoid()?;
                let g = gate(&z, 2)?.tanh()?;
                let o = gate(&z, 3)?.sigmoid()?;
                let c_prev = c
                    .as_ref()
                    .ok_or_else(|| Error::invalid("lstm", "missing cell state"))?;
                let c_new = f.mul(c_prev)?.add(&i.mul(&g)?)?;
                h = o.mul(&c_new.tanh()?)?;
                c = Some(c_new);
            }
            Cell::Gru => {
                let r = gate(&x_t, 0)?.add(&gate(&hp, 0)?)?.sigmoid()?;
                let z = gate(&x_t, 1)?.add(&gate(&hp, 1)?)?.sigmoid()?;
                let n = gate(&x_t, 2)?.add(&r.mul(&gate(&hp, 2)?)?)?.tanh()?;
                // h' = n + z·(h - n) = (1 - z)·n + z·h
                h = n.add(&z.mul(&h.sub(&n)?)?)?;
            }
        }
        outs[t] = Some(h.clone());
    }
    let outs = outs
        .into_iter()
        .map(|o| o.ok_or_else(|| Error::invalid("rnn", "empty sequence")))
        .collect::<Result<Vec<_>>>()?;
    Ok((outs, h, c))
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
            if let Some(bi) = w.b_ih {
                xp = xp.add(bi)?;
            }
            let h = h0.narrow(0, k, 1)?.squeeze(0)?;
            let c = c0.map(|c| c.narrow(0, k, 1)?.squeeze(0)).transpose()?;
            let (outs, hl, cl) = run_direction(cell, &xp, w, h, c, d == 1)?;
            dir_outs.push(Tensor::stack(&outs.iter().collect::<Vec<_>>(), 0)?);
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
