//! Losses, PyTorch's definitions. `Reduction::Mean` of the class losses divides by the number of
//! targets not ignored.
//!
//! | loss | per element |
//! | --- | --- |
//! | cross_entropy | `(1 - ε)·(-lp[t]) + ε·(-mean_c lp[c])`, `lp = log_softmax(x, 1)`, 0 where `t = ignore_index` |
//! | nll_loss | `-x[t]`, 0 where ignored |
//! | mse_loss | `(x - y)²` |
//! | binary_cross_entropy_with_logits | `max(x, 0) - x·t + log(1 + e^-|x|)`; `dx = σ(x) - t`, `dt = -x` |

use super::when;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// How per-element losses are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    None,
    Sum,
    Mean,
}

impl Reduction {
    /// Parses `none`, `sum` or `mean`.
    pub fn parse(s: &str) -> Result<Reduction> {
        match s {
            "none" => Ok(Reduction::None),
            "sum" => Ok(Reduction::Sum),
            "mean" => Ok(Reduction::Mean),
            _ => Err(Error::invalid(
                "loss",
                format!("unknown reduction {s:?} (none, sum, mean)"),
            )),
        }
    }
}

/// Class scores `[N, C, d...]` as rows `[M, C]` and targets `[N, d...]` as `[M]`.
fn rows(op: &'static str, input: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor)> {
    Error::expect_dtype(op, target.dtype(), DType::I64)?;
    let r = input.rank();
    let mut expected = vec![];
    if r >= 1 {
        expected.push(input.dims()[0]);
    }
    if r >= 2 {
        expected.extend_from_slice(&input.dims()[2..]);
    }
    if r < 2 || target.dims() != expected.as_slice() {
        return Err(Error::shape(
            op,
            "input [N, C, d...] needs target [N, d...]",
            input.dims(),
            target.dims(),
        ));
    }
    let c = input.dims()[1];
    let x = if r > 2 {
        let mut perm: Vec<isize> = vec![0];
        perm.extend(2..r as isize);
        perm.push(1);
        input.permute(&perm)?.reshape_usize(&[target.numel(), c])?
    } else {
        input.clone()
    };
    Ok((x, target.reshape(&[-1])?))
}

/// Picks `lp[j, t_j]` for targets not ignored (0 elsewhere) and returns it with the 0/1 weights.
fn pick(lp: &Tensor, t: &Tensor, ignore_index: i64) -> Result<(Tensor, Tensor)> {
    let ignored = t.eq(&t.scalar_like(ignore_index as f64)?)?;
    let safe = ignored.where_(&t.scalar_like(0.0)?, t)?;
    let picked = lp.gather(1, &safe.unsqueeze(1)?)?.squeeze(1)?;
    let w = ignored.to_dtype(lp.dtype())?.neg()?.add_scalar(1.0)?;
    Ok((picked.mul(&w)?, w))
}

fn reduce(
    loss: Tensor,
    weights: Option<&Tensor>,
    reduction: Reduction,
    shape: &[usize],
) -> Result<Tensor> {
    match reduction {
        Reduction::None => loss.reshape_usize(shape),
        Reduction::Sum => loss.sum_all(),
        Reduction::Mean => match weights {
            Some(w) => loss.sum_all()?.div(&w.sum_all()?),
            None => loss.mean_all(),
        },
    }
}

/// Cross-entropy of logits `[N, C]` or `[N, C, d...]` against class indices `[N]` / `[N, d...]`,
/// with label smoothing and an ignored class.
pub fn cross_entropy(
    input: &Tensor,
    target: &Tensor,
    reduction: Reduction,
    label_smoothing: f64,
    ignore_index: i64,
) -> Result<Tensor> {
    super::float_only("cross_entropy", input)?;
    if !(0.0..1.0).contains(&label_smoothing) {
        return Err(Error::invalid(
            "cross_entropy",
            format!("label_smoothing must be in [0, 1), got {label_smoothing}"),
        ));
    }
    let (x, t) = rows("cross_entropy", input, target)?;
    let lp = x.log_softmax(1)?;
    let (picked, w) = pick(&lp, &t, ignore_index)?;
    let mut loss = picked.neg()?;
    if label_smoothing > 0.0 {
        let smooth = lp.mean(&[1], false)?.neg()?.mul(&w)?;
        loss = loss
            .mul_scalar(1.0 - label_smoothing)?
            .add(&smooth.mul_scalar(label_smoothing)?)?;
    }
    reduce(loss, Some(&w), reduction, target.dims())
}

/// Negative log-likelihood of log-probabilities `[N, C]` or `[N, C, d...]`.
pub fn nll_loss(
    input: &Tensor,
    target: &Tensor,
    reduction: Reduction,
    ignore_index: i64,
) -> Result<Tensor> {
    super::float_only("nll_loss", input)?;
    let (x, t) = rows("nll_loss", input, target)?;
    let (picked, w) = pick(&x, &t, ignore_index)?;
    reduce(picked.neg()?, Some(&w), reduction, target.dims())
}

/// Mean squared error; both inputs get gradients.
pub fn mse_loss(input: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    if input.dims() != target.dims() {
        return Err(Error::shape(
            "mse_loss",
            "input and target need one shape",
            input.dims(),
            target.dims(),
        ));
    }
    reduce(input.sub(target)?.square()?, None, reduction, input.dims())
}

/// Binary cross-entropy on logits in the stable form; the target gets a gradient too.
pub fn binary_cross_entropy_with_logits(
    input: &Tensor,
    target: &Tensor,
    reduction: Reduction,
) -> Result<Tensor> {
    super::same_kind("binary_cross_entropy_with_logits", input, target)?;
    if input.dims() != target.dims() {
        return Err(Error::shape(
            "binary_cross_entropy_with_logits",
            "input and target need one shape",
            input.dims(),
            target.dims(),
        ));
    }
    let loss = crate::no_grad(|| -> Result<Tensor> {
        // log(1 + e^-|x|) is softplus(-|x|), which the kernel computes without overflow.
        input
            .relu()?
            .sub(&input.mul(target)?)?
            .add(&input.abs()?.neg()?.softplus(1.0, 20.0)?)
    })?;
    let (x, t) = (input.clone(), target.clone());
    let loss = loss.record_op(
        "binary_cross_entropy_with_logits",
        &[input, target],
        move |g, n| {
            Ok(vec![
                when(n[0], || g.mul(&x.sigmoid()?.sub(&t)?))?,
                when(n[1], || g.mul(&x.neg()?))?,
            ])
        },
    );
    reduce(loss, None, reduction, input.dims())
}
