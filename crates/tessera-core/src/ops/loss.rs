//! Losses, PyTorch's definitions. `Reduction::Mean` of the class losses divides by the number of
//! targets not ignored.
//!
//! | loss | per element |
//! | --- | --- |
//! | cross_entropy | `(1 - ε)·(-lp[t]) + ε·(-mean_c lp[c])`, `lp = log_softmax(x, 1)`, 0 where `t = ignore_index` |
//! | nll_loss | `-x[t]`, 0 where ignored |
//! | mse_loss | `(x - y)²` |
//! | binary_cross_entropy_with_logits | `max(x, 0) - x·t + log(1 + e^-|x|)`; `dx = σ(x) - t`, `dt = -x` |
//!
//! Each loss is a function with PyTorch's defaults (`cross_entropy(&logits, &labels)`: mean,
//! no smoothing, `ignore_index` -100) and an options builder for the rest
//! (`CrossEntropy::new().label_smoothing(0.1).ignore_index(3).forward(&logits, &labels)`).

use super::when;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// How per-element losses are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reduction {
    None,
    Sum,
    /// The default, as in PyTorch.
    #[default]
    Mean,
}

/// Options of [`cross_entropy`], PyTorch's `nn.CrossEntropyLoss`: defaults mean, no label
/// smoothing, `ignore_index` -100.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossEntropy {
    pub reduction: Reduction,
    /// `ε` in `[0, 1)`: the target's weight becomes `1 - ε`, spread `ε / C` over all classes.
    pub label_smoothing: f64,
    /// Targets with this class contribute nothing (and do not count in the mean).
    pub ignore_index: i64,
}

impl Default for CrossEntropy {
    fn default() -> Self {
        CrossEntropy {
            reduction: Reduction::Mean,
            label_smoothing: 0.0,
            ignore_index: -100,
        }
    }
}

impl CrossEntropy {
    /// PyTorch's defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// How the per-target losses are combined.
    pub fn reduction(mut self, r: Reduction) -> Self {
        self.reduction = r;
        self
    }
    /// Label smoothing `ε`.
    pub fn label_smoothing(mut self, eps: f64) -> Self {
        self.label_smoothing = eps;
        self
    }
    /// The ignored class.
    pub fn ignore_index(mut self, i: i64) -> Self {
        self.ignore_index = i;
        self
    }
    /// The loss of logits `[N, C]` or `[N, C, d...]` against class indices `[N]` /
    /// `[N, d...]` (i64).
    pub fn forward(&self, input: &Tensor, target: &Tensor) -> Result<Tensor> {
        cross_entropy_with(
            input,
            target,
            self.reduction,
            self.label_smoothing,
            self.ignore_index,
        )
    }
}

/// Cross-entropy of logits against class indices with PyTorch's defaults; see
/// [`CrossEntropy`] for the options.
pub fn cross_entropy(input: &Tensor, target: &Tensor) -> Result<Tensor> {
    CrossEntropy::new().forward(input, target)
}

/// Options of [`nll_loss`], PyTorch's `nn.NLLLoss`: defaults mean, `ignore_index` -100.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NllLoss {
    pub reduction: Reduction,
    pub ignore_index: i64,
}

impl Default for NllLoss {
    fn default() -> Self {
        NllLoss {
            reduction: Reduction::Mean,
            ignore_index: -100,
        }
    }
}

impl NllLoss {
    /// PyTorch's defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// How the per-target losses are combined.
    pub fn reduction(mut self, r: Reduction) -> Self {
        self.reduction = r;
        self
    }
    /// The ignored class.
    pub fn ignore_index(mut self, i: i64) -> Self {
        self.ignore_index = i;
        self
    }
    /// The loss of log-probabilities `[N, C]` or `[N, C, d...]` against class indices.
    pub fn forward(&self, input: &Tensor, target: &Tensor) -> Result<Tensor> {
        nll_loss_with(input, target, self.reduction, self.ignore_index)
    }
}

/// Negative log-likelihood with PyTorch's defaults; see [`NllLoss`].
pub fn nll_loss(input: &Tensor, target: &Tensor) -> Result<Tensor> {
    NllLoss::new().forward(input, target)
}

/// Options of [`mse_loss`], PyTorch's `nn.MSELoss`: default mean.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct MseLoss {
    pub reduction: Reduction,
}

impl MseLoss {
    /// PyTorch's defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// How the per-element losses are combined.
    pub fn reduction(mut self, r: Reduction) -> Self {
        self.reduction = r;
        self
    }
    /// The loss of `input` against `target` (one shape; both get gradients).
    pub fn forward(&self, input: &Tensor, target: &Tensor) -> Result<Tensor> {
        mse_loss_with(input, target, self.reduction)
    }
}

/// Mean squared error; see [`MseLoss`] for the other reductions.
pub fn mse_loss(input: &Tensor, target: &Tensor) -> Result<Tensor> {
    MseLoss::new().forward(input, target)
}

/// Options of [`binary_cross_entropy_with_logits`], PyTorch's `nn.BCEWithLogitsLoss`: default
/// mean.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct BceWithLogits {
    pub reduction: Reduction,
}

impl BceWithLogits {
    /// PyTorch's defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// How the per-element losses are combined.
    pub fn reduction(mut self, r: Reduction) -> Self {
        self.reduction = r;
        self
    }
    /// The loss of logits against targets in `[0, 1]` (one shape; both get gradients).
    pub fn forward(&self, input: &Tensor, target: &Tensor) -> Result<Tensor> {
        bce_with_logits_with(input, target, self.reduction)
    }
}

/// Binary cross-entropy on logits, mean over elements; see [`BceWithLogits`].
pub fn binary_cross_entropy_with_logits(input: &Tensor, target: &Tensor) -> Result<Tensor> {
    BceWithLogits::new().forward(input, target)
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

/// [`CrossEntropy::forward`]: cross-entropy of logits `[N, C]` or `[N, C, d...]` against class
/// indices `[N]` / `[N, d...]`, with label smoothing and an ignored class. One tape node: a backend's fused
/// [`crate::FusedKernels::cross_entropy`] gives every row's loss in one pass (log-softmax, the
/// target's term, the smoothing term), and its backward is one pass too, instead of a dozen
/// ops each way; elsewhere the composite [`cross_entropy_rows`] runs.
fn cross_entropy_with(
    input: &Tensor,
    target: &Tensor,
    reduction: Reduction,
    label_smoothing: f64,
    ignore_index: i64,
) -> Result<Tensor> {
    let op = "cross_entropy";
    super::float_only(op, input)?;
    if !(0.0..1.0).contains(&label_smoothing) {
        return Err(Error::invalid(
            op,
            format!("label_smoothing must be in [0, 1), got {label_smoothing}"),
        ));
    }
    let (x, t) = rows(op, input, target)?;
    super::same_device(op, &x, &t)?;
    let (m, c) = (x.dims()[0], x.dims()[1]);
    let fused = match crate::backend::cross_entropy_fits(x.view(), t.view()) {
        true => super::fused(x.device(), |k| {
            k.cross_entropy(x.view(), t.view(), label_smoothing, ignore_index)
        })?,
        false => None,
    };
    let (loss, lp, w) = match fused {
        Some([loss, lp, w]) => (
            x.output(loss, &[m]),
            x.output(lp, &[m, c]),
            x.output(w, &[m]),
        ),
        None => crate::no_grad(|| cross_entropy_rows(&x, &t, label_smoothing, ignore_index))?,
    };
    // The reduced value, and for a mean the count of rows not ignored (PyTorch divides by it).
    let (value, count) = crate::no_grad(|| -> Result<_> {
        Ok(match reduction {
            Reduction::None => (loss.clone(), None),
            Reduction::Sum => (loss.sum_all()?, None),
            Reduction::Mean => {
                let n = w.sum_all()?;
                (loss.sum_all()?.div(&n)?, Some(n))
            }
        })
    })?;
    let (x_s, t_s) = (x.clone(), t.clone());
    let value = value.record_op(op, &[&x], move |g, _| {
        let g = match &count {
            Some(n) => g.div(n)?,
            None => g.clone(),
        };
        let g = g.expand(&[m as isize])?;
        let recording = crate::tape::is_grad_enabled();
        if !recording
            && crate::backend::cross_entropy_backward_fits(
                lp.view(),
                t_s.view(),
                w.view(),
                g.view(),
            )
        {
            let fused = super::fused(g.device(), |k| {
                k.cross_entropy_backward(
                    lp.view(),
                    t_s.view(),
                    w.view(),
                    g.view(),
                    label_smoothing,
                    ignore_index,
                )
            })?;
            if let Some(dx) = fused {
                return Ok(vec![Some(g.output(dx, &[m, c]))]);
            }
        }
        // The composite: (p - ε/C - (1 - ε)·onehot(t))·g·w. Under create_graph p is
        // softmax(x), recorded, so the gradient's own gradient reaches x; else exp(lp).
        let p = match recording {
            true => x_s.softmax(1)?,
            false => lp.exp()?,
        };
        let ignored = t_s.eq(&t_s.scalar_like(ignore_index as f64)?)?;
        let safe = ignored.where_(&t_s.scalar_like(0.0)?, &t_s)?.unsqueeze(1)?;
        let ones = x_s.narrow(1, 0, 1)?.ones_like()?.detach();
        let hot = x_s.zeros_like()?.detach().scatter_add(1, &safe, &ones)?;
        let diff = p
            .add_scalar(-label_smoothing / c as f64)?
            .sub(&hot.mul_scalar(1.0 - label_smoothing)?)?;
        Ok(vec![Some(diff.mul(&g.mul(&w)?.unsqueeze(1)?)?)])
    });
    match reduction {
        Reduction::None => value.reshape_usize(target.dims()),
        _ => Ok(value),
    }
}

/// Cross-entropy's composite over rows: `lp = log_softmax(x)`, the losses
/// `(-(1 - ε)·lp[t] - (ε / C)·Σ_c lp[c])·w` `[M]` and the weights `w` `[M]` (0 where the target
/// is ignored, else 1). A target outside `[0, C)` is gather's `IndexOutOfRange`.
fn cross_entropy_rows(
    x: &Tensor,
    t: &Tensor,
    label_smoothing: f64,
    ignore_index: i64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = x.dims()[1];
    let lp = x.log_softmax(1)?;
    let (picked, w) = pick(&lp, t, ignore_index)?;
    let mut loss = picked.mul_scalar(-(1.0 - label_smoothing))?;
    if label_smoothing > 0.0 {
        let smooth = lp
            .sum(&[1], false)?
            .mul_scalar(-label_smoothing / c as f64)?;
        loss = loss.add(&smooth.mul(&w)?)?;
    }
    Ok((loss, lp, w))
}

/// [`NllLoss::forward`].
fn nll_loss_with(
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

/// [`MseLoss::forward`].
fn mse_loss_with(input: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
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

/// [`BceWithLogits::forward`], in the stable form; the target gets a gradient too.
fn bce_with_logits_with(input: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
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
