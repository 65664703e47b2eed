//! Normalisation, dropout and embedding lookups: composites of core ops, so gradients (through
//! the batch statistics too) come from the ops' own rules.
//!
//! | op | forward |
//! | --- | --- |
//! | batch_norm (train) | `(x - mean) / sqrt(var + eps) · w + b`, mean and biased var over all axes but 1: one tape node on the backend's fused kernel ([`FusedKernels::batch_norm_train`](crate::FusedKernels::batch_norm_train)) where it has one, else composed (two-pass statistics) |
//! | batch_norm (eval) | `x·α + β` per channel, `α = w / sqrt(running_var + eps)`, `β = b - running_mean·α`: one pass on the backend's kernel ([`FusedKernels::batch_norm_eval`](crate::FusedKernels::batch_norm_eval)) when nothing is differentiated, else composed |
//! | layer_norm | the same over the last dims, per row: one tape node on the backend's fused kernel ([`FusedKernels::layer_norm`](crate::FusedKernels::layer_norm)) where it has one, else composed |
//! | dropout | `x · mask / (1 - p)`, mask ~ Bernoulli(1 - p) from the counter-based generator |
//! | embedding | `index_select` of weight rows; the `padding_idx` row takes no gradient |

use super::when;
use crate::error::{Error, Result};
use crate::random::Generator;
use crate::tensor::Tensor;

/// `[1, C, 1, ...]` so a per-channel vector broadcasts against `x`.
fn per_channel(v: &Tensor, x: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1; x.rank()];
    shape[1] = x.dims()[1];
    v.reshape_usize(&shape)
}

/// Batch normalisation over channel axis 1 of `[N, C]`, `[N, C, L]` or `[N, C, H, W]`.
///
/// In training mode uses the batch statistics and returns the updated running statistics
/// (`(1 - momentum)·running + momentum·batch`, the variance unbiased); in eval mode uses the
/// running statistics and returns `None`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    training: bool,
    momentum: f64,
    eps: f64,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    super::float_only("batch_norm", x)?;
    if x.rank() < 2 {
        return Err(Error::invalid(
            "batch_norm",
            format!("needs [N, C, ...], got {}", x.shape()),
        ));
    }
    let c = x.dims()[1];
    for t in [Some(running_mean), Some(running_var), weight, bias]
        .into_iter()
        .flatten()
    {
        if t.dims() != [c] {
            return Err(Error::shape(
                "batch_norm",
                format!("statistics and affine parameters must be [{c}]"),
                t.dims(),
                x.dims(),
            ));
        }
    }
    let axes: Vec<isize> = (0..x.rank() as isize).filter(|&a| a != 1).collect();
    let (y, stats) = if training {
        let m: usize = axes.iter().map(|&a| x.dims()[a as usize]).product();
        if m < 2 {
            return Err(Error::invalid(
                "batch_norm",
                format!(
                    "training needs more than one value per channel, got input {}",
                    x.shape()
                ),
            ));
        }
        for t in [weight, bias].into_iter().flatten() {
            super::same_kind("batch_norm", x, t)?;
        }
        if let Some((y, mean, var)) = train_fused(x, weight, bias, eps)? {
            let stats = running_stats(running_mean, running_var, &mean, &var, m, momentum)?;
            return Ok((y, Some(stats)));
        }
        let mean = x.mean(&axes, true)?;
        let var = x.var(&axes, 0, true)?;
        let y = x.sub(&mean)?.div(&var.add_scalar(eps)?.sqrt()?)?;
        let y = match weight {
            Some(w) => y.mul(&per_channel(w, x)?)?,
            None => y,
        };
        let y = match bias {
            Some(b) => y.add(&per_channel(b, x)?)?,
            None => y,
        };
        let stats = running_stats(running_mean, running_var, &mean, &var, m, momentum)?;
        (y, Some(stats))
    } else {
        // Inference (nothing to differentiate): the backend's one-pass kernel where it has one.
        let recorded = crate::tape::is_grad_enabled()
            && [Some(x), Some(running_mean), Some(running_var), weight, bias]
                .into_iter()
                .flatten()
                .any(|t| t.requires_grad());
        if !recorded {
            for t in [Some(running_mean), Some(running_var), weight, bias]
                .into_iter()
                .flatten()
            {
                super::same_kind("batch_norm", x, t)?;
            }
            let fused = super::fused(x.device(), |k| {
                k.batch_norm_eval(
                    x.view(),
                    running_mean.view(),
                    running_var.view(),
                    weight.map(|w| w.view()),
                    bias.map(|b| b.view()),
                    eps,
                )
            })?;
            if let Some(y) = fused {
                return Ok((x.output(y, x.dims()), None));
            }
        }
        // PyTorch's CPU form: y = x·α + β, two passes instead of four.
        let mut alpha = running_var.add_scalar(eps)?.sqrt()?.recip()?;
        if let Some(w) = weight {
            alpha = alpha.mul(w)?;
        }
        let mut beta = running_mean.mul(&alpha)?.neg()?;
        if let Some(b) = bias {
            beta = beta.add(b)?;
        }
        let y = x
            .mul(&per_channel(&alpha, x)?)?
            .add(&per_channel(&beta, x)?)?;
        (y, None)
    };
    Ok((y, stats))
}

/// The updated running statistics from a batch's `mean` and biased `var` (any shape of `C`
/// elements) over `m` values per channel: `(1 - momentum)·running + momentum·batch`, the
/// variance unbiased.
fn running_stats(
    running_mean: &Tensor,
    running_var: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    m: usize,
    momentum: f64,
) -> Result<(Tensor, Tensor)> {
    let c = running_mean.numel();
    crate::no_grad(|| -> Result<(Tensor, Tensor)> {
        let bm = mean.reshape_usize(&[c])?;
        let bv = var
            .reshape_usize(&[c])?
            .mul_scalar(m as f64 / (m - 1) as f64)?;
        Ok((
            running_mean
                .mul_scalar(1.0 - momentum)?
                .add(&bm.mul_scalar(momentum)?)?,
            running_var
                .mul_scalar(1.0 - momentum)?
                .add(&bv.mul_scalar(momentum)?)?,
        ))
    })
}

/// A normalisation node's inputs: `x`, then the weight and the bias where given.
fn affine_inputs<'a>(
    x: &'a Tensor,
    weight: Option<&'a Tensor>,
    bias: Option<&'a Tensor>,
) -> Vec<&'a Tensor> {
    let mut inputs = vec![x];
    inputs.extend(weight);
    inputs.extend(bias);
    inputs
}

/// The gradients of a normalisation node for the inputs [`affine_inputs`] listed.
fn affine_grads(
    needs: &[bool],
    [dx, dw, db]: [Tensor; 3],
    has_weight: bool,
    has_bias: bool,
) -> Result<Vec<Option<Tensor>>> {
    let mut grads = vec![when(needs[0], || Ok(dx))?];
    if has_weight {
        grads.push(when(needs[1], || Ok(dw))?);
    }
    if has_bias {
        grads.push(when(needs[needs.len() - 1], || Ok(db))?);
    }
    Ok(grads)
}

/// Training-mode batch norm as one tape node on the backend's fused kernels: `(y, mean, var)`,
/// or `None` where the backend has none. Its backward takes the fused backward too, except
/// under `backward_create_graph` (and on a backend without it), where [`train_grads`] writes
/// the gradients with recorded ops.
fn train_fused(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    let c = x.dims()[1];
    let Some([y, mean, var]) = super::fused(x.device(), |k| {
        k.batch_norm_train(
            x.view(),
            weight.map(|w| w.view()),
            bias.map(|b| b.view()),
            eps,
        )
    })?
    else {
        return Ok(None);
    };
    let (y, mean, var) = (
        x.output(y, x.dims()),
        x.output(mean, &[c]),
        x.output(var, &[c]),
    );
    let inputs = affine_inputs(x, weight, bias);
    let (xs, ws, ms, vs) = (x.clone(), weight.cloned(), mean.clone(), var.clone());
    let has_bias = bias.is_some();
    let y = y.record_op("batch_norm", &inputs, move |gy, needs| {
        let gy = &gy.contiguous()?;
        let fused = if crate::tape::is_grad_enabled() {
            None
        } else {
            super::fused(gy.device(), |k| {
                k.batch_norm_backward(
                    xs.view(),
                    gy.view(),
                    ms.view(),
                    vs.view(),
                    ws.as_ref().map(|w| w.view()),
                    eps,
                )
            })?
        };
        let [dx, dw, db] = match fused {
            Some([dx, dw, db]) => [
                xs.output(dx, xs.dims()),
                xs.output(dw, &[c]),
                xs.output(db, &[c]),
            ],
            None => train_grads(&xs, ws.as_ref(), gy, eps)?,
        };
        affine_grads(needs, [dx, dw, db], ws.is_some(), has_bias)
    });
    Ok(Some((y, mean, var)))
}

/// The gradients `[dx, dweight, dbias]` of training-mode batch norm written with recorded ops
/// (so gradients of gradients follow them): `dx = invstd·(g - mean(g) - x̂·mean(g·x̂))` with
/// `g = gy·w`, `dweight = Σ gy·x̂`, `dbias = Σ gy`.
fn train_grads(x: &Tensor, weight: Option<&Tensor>, gy: &Tensor, eps: f64) -> Result<[Tensor; 3]> {
    let axes: Vec<isize> = (0..x.rank() as isize).filter(|&a| a != 1).collect();
    let xmu = x.sub(&x.mean(&axes, true)?)?;
    let invstd = xmu
        .square()?
        .mean(&axes, true)?
        .add_scalar(eps)?
        .sqrt()?
        .recip()?;
    let xhat = xmu.mul(&invstd)?;
    let g = match weight {
        Some(w) => gy.mul(&per_channel(w, x)?)?,
        None => gy.clone(),
    };
    let dx = g
        .sub(&g.mean(&axes, true)?)?
        .sub(&xhat.mul(&g.mul(&xhat)?.mean(&axes, true)?)?)?
        .mul(&invstd)?;
    Ok([dx, gy.mul(&xhat)?.sum(&axes, false)?, gy.sum(&axes, false)?])
}

/// Layer normalisation over the last `normalized_shape.len()` dims.
pub fn layer_norm(
    x: &Tensor,
    normalized_shape: &[usize],
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    super::float_only("layer_norm", x)?;
    let k = normalized_shape.len();
    if k == 0 || k > x.rank() || &x.dims()[x.rank() - k..] != normalized_shape {
        return Err(Error::shape(
            "layer_norm",
            "the input must end with normalized_shape",
            x.dims(),
            normalized_shape,
        ));
    }
    for t in [weight, bias].into_iter().flatten() {
        if t.dims() != normalized_shape {
            return Err(Error::shape(
                "layer_norm",
                "weight and bias must have normalized_shape",
                t.dims(),
                normalized_shape,
            ));
        }
    }
    for t in [weight, bias].into_iter().flatten() {
        super::same_kind("layer_norm", x, t)?;
    }
    if let Some(y) = layer_fused(x, normalized_shape, weight, bias, eps)? {
        return Ok(y);
    }
    let axes: Vec<isize> = (x.rank() - k..x.rank()).map(|a| a as isize).collect();
    let mean = x.mean(&axes, true)?;
    let var = x.var(&axes, 0, true)?;
    let y = x.sub(&mean)?.div(&var.add_scalar(eps)?.sqrt()?)?;
    let y = match weight {
        Some(w) => y.mul(w)?,
        None => y,
    };
    match bias {
        Some(b) => y.add(b),
        None => Ok(y),
    }
}

/// Layer norm as one tape node on the backend's fused kernels, or `None` where it has none.
/// Its backward takes the fused backward too, except under `backward_create_graph` (and on a
/// backend without it), where [`layer_grads`] writes the gradients with recorded ops.
fn layer_fused(
    x: &Tensor,
    normalized_shape: &[usize],
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Option<Tensor>> {
    let d: usize = normalized_shape.iter().product();
    if d == 0 || x.numel() == 0 {
        return Ok(None);
    }
    let rows = x.numel() / d;
    let Some([y, mean, rstd]) = super::fused(x.device(), |k| {
        k.layer_norm(
            x.view(),
            d,
            weight.map(|w| w.view()),
            bias.map(|b| b.view()),
            eps,
        )
    })?
    else {
        return Ok(None);
    };
    let (y, mean, rstd) = (
        x.output(y, x.dims()),
        x.output(mean, &[rows]),
        x.output(rstd, &[rows]),
    );
    let inputs = affine_inputs(x, weight, bias);
    let (xs, ws) = (x.clone(), weight.cloned());
    let shape = normalized_shape.to_vec();
    let has_bias = bias.is_some();
    let y = y.record_op("layer_norm", &inputs, move |gy, needs| {
        let gy = &gy.contiguous()?;
        let fused = if crate::tape::is_grad_enabled() {
            None
        } else {
            super::fused(gy.device(), |k| {
                k.layer_norm_backward(
                    xs.view(),
                    gy.view(),
                    mean.view(),
                    rstd.view(),
                    ws.as_ref().map(|w| w.view()),
                    d,
                )
            })?
        };
        let [dx, dw, db] = match fused {
            Some([dx, dw, db]) => [
                xs.output(dx, xs.dims()),
                xs.output(dw, &shape),
                xs.output(db, &shape),
            ],
            None => layer_grads(&xs, shape.len(), ws.as_ref(), gy, eps)?,
        };
        affine_grads(needs, [dx, dw, db], ws.is_some(), has_bias)
    });
    Ok(Some(y))
}

/// The gradients `[dx, dweight, dbias]` of layer norm over the last `k` dims written with
/// recorded ops (so gradients of gradients follow them): per row
/// `dx = rstd·(g - mean(g) - x̂·mean(g·x̂))` with `g = gy·w`; `dweight = Σ_rows gy·x̂`,
/// `dbias = Σ_rows gy`.
fn layer_grads(
    x: &Tensor,
    k: usize,
    weight: Option<&Tensor>,
    gy: &Tensor,
    eps: f64,
) -> Result<[Tensor; 3]> {
    let r = x.rank();
    let axes: Vec<isize> = (r - k..r).map(|a| a as isize).collect();
    let lead: Vec<isize> = (0..r - k).map(|a| a as isize).collect();
    let xmu = x.sub(&x.mean(&axes, true)?)?;
    let rstd = xmu
        .square()?
        .mean(&axes, true)?
        .add_scalar(eps)?
        .sqrt()?
        .recip()?;
    let xhat = xmu.mul(&rstd)?;
    let g = match weight {
        Some(w) => gy.mul(w)?,
        None => gy.clone(),
    };
    let dx = g
        .sub(&g.mean(&axes, true)?)?
        .sub(&xhat.mul(&g.mul(&xhat)?.mean(&axes, true)?)?)?
        .mul(&rstd)?;
    let sum_lead = |t: Tensor| {
        if lead.is_empty() {
            Ok(t)
        } else {
            t.sum(&lead, false)
        }
    };
    Ok([dx, sum_lead(gy.mul(&xhat)?)?, sum_lead(gy.clone())?])
}

/// `x · mask / (1 - p)` for a given 0/1 mask (any dtype): dropout made deterministic.
pub fn dropout_with_mask(x: &Tensor, mask: &Tensor, p: f64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::invalid(
            "dropout",
            format!("p must be in [0, 1), got {p}"),
        ));
    }
    if mask.dims() != x.dims() {
        return Err(Error::shape(
            "dropout",
            "mask must have the input's shape",
            mask.dims(),
            x.dims(),
        ));
    }
    x.mul(&mask.to_dtype(x.dtype())?)?
        .mul_scalar(1.0 / (1.0 - p))
}

/// Dropout in training mode: each element kept with probability `1 - p` (mask drawn from `gen`,
/// so it is the same on every device) and scaled by `1 / (1 - p)`.
pub fn dropout(x: &Tensor, p: f64, gen: &mut Generator) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::invalid(
            "dropout",
            format!("p must be in [0, 1), got {p}"),
        ));
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    let u = Tensor::rand_with(x.dims(), 0.0, 1.0, x.dtype(), gen, x.device())?;
    let keep = u.flag(crate::backend::BinaryOp::Ge, &u.scalar_like(p)?)?;
    dropout_with_mask(x, &keep, p)
}

/// `weight[indices]`: shape `indices.shape + [D]` for `weight` `[V, D]`. The `padding_idx` row
/// (negative counts from the end) is looked up as stored but receives no gradient.
pub fn embedding(indices: &Tensor, weight: &Tensor, padding_idx: Option<isize>) -> Result<Tensor> {
    if weight.rank() != 2 {
        return Err(Error::shape(
            "embedding",
            "weight must be [V, D]",
            weight.dims(),
            indices.dims(),
        ));
    }
    let (v, d) = (weight.dims()[0], weight.dims()[1]);
    let w = match padding_idx {
        None => weight.clone(),
        Some(p) => {
            let row = crate::layout::normalize_dim("embedding", p, v).map_err(|_| {
                Error::invalid(
                    "embedding",
                    format!("padding_idx {p} is out of range for {v} rows"),
                )
            })?;
            let mut mask = vec![1.0; v];
            mask[row] = 0.0;
            let mask = Tensor::from_host(
                crate::HostData::from_f64(weight.dtype(), &mask),
                &[v, 1],
                weight.device(),
            )?;
            // Same values; the gradient of the padding row is cut.
            mask.where_(weight, &weight.detach())?
        }
    };
    let mut shape = indices.dims().to_vec();
    shape.push(d);
    w.index_select(0, &indices.reshape(&[-1])?)?
        .reshape_usize(&shape)
}
