//! Attention: scaled dot-product attention, multi-head attention and the transformer encoder
//! layer as functions of tensors (the `nn` modules hold the parameters and call these).
//!
//! | op | definition | backward |
//! | --- | --- | --- |
//! | scaled_dot_product_attention | `softmax(q·kᵀ·scale + bias)·v` | through matmul, softmax and the mask's `add`/`where` |
//! | multi_head_attention | projections, heads of `E / H` features, SDPA per head, output projection (PyTorch's `MultiheadAttention`) | through its ops |
//! | transformer_encoder_layer | `LN(x + SA(x))`, `LN(h + FF(h))` (post-norm) or `x + SA(LN(x))`, `h + FF(LN(h))` (pre-norm) | through its ops |
//!
//! Masks become an additive bias on the scores. Polarity follows PyTorch, which uses two
//! opposite conventions: a bool mask given to [`scaled_dot_product_attention`] is **true where
//! a query may attend**; bool masks given to [`multi_head_attention`] and the encoder layer
//! (`attn_mask`, `key_padding_mask`) are **true where a key is masked out**. Float masks are
//! added as they are and receive a gradient. A query row whose keys are all masked gives NaN,
//! as PyTorch's math kernel does.

use super::same_device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The causal mask `[l, s]`, true where query `i` may see key `j` (`j <= i`, top-left aligned).
pub fn causal_mask(l: usize, s: usize, device: &crate::Device) -> Result<Tensor> {
    Tensor::triangle_mask(l, s, device, |i, j| j <= i)
}

/// `softmax(q·kᵀ·scale + bias)·v` over `q` `[..., L, E]`, `k` `[..., S, E]`, `v` `[..., S, Ev]`
/// (the leading dims broadcast as in `matmul`): shape `[..., L, Ev]`.
///
/// - `attn_mask`: bool (true = may attend; false adds -∞) or float (added; it gets a
///   gradient), broadcastable to `[..., L, S]`;
/// - `is_causal`: query `i` sees keys `0..=i` (not together with `attn_mask`);
/// - `scale`: `None` means `1/√E`.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attn_mask: Option<&Tensor>,
    is_causal: bool,
    scale: Option<f64>,
) -> Result<Tensor> {
    Ok(attention_with_weights(q, k, v, attn_mask, is_causal, scale)?.0)
}

/// [`scaled_dot_product_attention`] and its attention weights `softmax(...)` `[..., L, S]`.
pub fn attention_with_weights(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attn_mask: Option<&Tensor>,
    is_causal: bool,
    scale: Option<f64>,
) -> Result<(Tensor, Tensor)> {
    let op = "scaled_dot_product_attention";
    super::same_kind(op, q, k)?;
    super::same_kind(op, q, v)?;
    super::float_only(op, q)?;
    if q.rank() < 2 || k.rank() < 2 || v.rank() < 2 {
        return Err(Error::invalid(
            op,
            format!(
                "q, k, v need at least 2 dims ([..., L, E]), got {}, {}, {}",
                q.shape(),
                k.shape(),
                v.shape()
            ),
        ));
    }
    let e = q.dims()[q.rank() - 1];
    let (ek, s, sv) = (
        k.dims()[k.rank() - 1],
        k.dims()[k.rank() - 2],
        v.dims()[v.rank() - 2],
    );
    if ek != e || sv != s {
        return Err(Error::invalid(
            op,
            format!(
                "q [..., L, E], k [..., S, E] and v [..., S, Ev] disagree: {}, {}, {}",
                q.shape(),
                k.shape(),
                v.shape()
            ),
        ));
    }
    if is_causal && attn_mask.is_some() {
        return Err(Error::invalid(
            op,
            "takes is_causal or attn_mask, not both (fold the causal mask into attn_mask)",
        ));
    }
    let l = q.dims()[q.rank() - 2];
    let scale = scale.unwrap_or(1.0 / (e as f64).sqrt());
    let scores = q.matmul(&k.transpose(-2, -1)?)?.mul_scalar(scale)?;
    let neg_inf = || Ok::<_, Error>(scores.scalar_like(f64::NEG_INFINITY)?.detach());
    let scores = match attn_mask {
        _ if is_causal => causal_mask(l, s, q.device())?.where_(&scores, &neg_inf()?)?,
        None => scores,
        Some(m) => {
            same_device(op, q, m)?;
            match m.dtype() {
                DType::Bool => m.where_(&scores, &neg_inf()?)?,
                d if d == q.dtype() => scores.add(m)?,
                d => {
                    return Err(Error::DType {
                        op,
                        msg: format!(
                            "attn_mask must be bool or {} like q, got {d} {}",
                            q.dtype(),
                            m.shape()
                        ),
                    })
                }
            }
        }
    };
    let p = scores.softmax(-1)?;
    Ok((p.matmul(v)?, p))
}

/// A bool mask with true = masked out (MHA's polarity) as an additive float bias (-∞ / 0), or
/// a float mask as it is.
fn mha_bias(op: &'static str, m: &Tensor, like: &Tensor) -> Result<Tensor> {
    same_device(op, like, m)?;
    match m.dtype() {
        DType::Bool => m.where_(
            &like.scalar_like(f64::NEG_INFINITY)?.detach(),
            &like.scalar_like(0.0)?.detach(),
        ),
        d if d == like.dtype() => Ok(m.clone()),
        d => Err(Error::DType {
            op,
            msg: format!(
                "masks must be bool or {} like the input, got {d} {}",
                like.dtype(),
                m.shape()
            ),
        }),
    }
}

/// The projection weights of [`multi_head_attention`], named as in PyTorch's `state_dict`.
#[derive(Clone, Copy, Debug)]
pub struct MhaWeights<'a> {
    /// `in_proj_weight` `[3E, E]` (rows: W_q, W_k, W_v), when kdim = vdim = E.
    pub in_proj_weight: Option<&'a Tensor>,
    /// `q_proj_weight` `[E, E]`, `k_proj_weight` `[E, kdim]`, `v_proj_weight` `[E, vdim]`,
    /// when kdim or vdim differs from E.
    pub q_proj_weight: Option<&'a Tensor>,
    /// See `q_proj_weight`.
    pub k_proj_weight: Option<&'a Tensor>,
    /// See `q_proj_weight`.
    pub v_proj_weight: Option<&'a Tensor>,
    /// `in_proj_bias` `[3E]` (b_q, b_k, b_v).
    pub in_proj_bias: Option<&'a Tensor>,
    /// `out_proj.weight` `[E, E]`.
    pub out_proj_weight: &'a Tensor,
    /// `out_proj.bias` `[E]`.
    pub out_proj_bias: Option<&'a Tensor>,
}

/// Options of [`multi_head_attention`] (PyTorch's `MultiheadAttention.forward` arguments).
#[derive(Clone, Copy, Debug)]
pub struct MhaOptions<'a> {
    pub num_heads: usize,
    /// Inputs `[N, L, E]` instead of `[L, N, E]`.
    pub batch_first: bool,
    /// bool `[N, S]`, true = padding (not attended).
    pub key_padding_mask: Option<&'a Tensor>,
    /// `[L, S]` or `[N·H, L, S]`; bool (true = masked out) or float (added).
    pub attn_mask: Option<&'a Tensor>,
    /// Also return the attention weights.
    pub need_weights: bool,
    /// Average the returned weights over the heads (`[N, L, S]`) instead of `[N, H, L, S]`.
    pub average_attn_weights: bool,
    /// Adds the causal mask (when no `attn_mask` is given; with one, PyTorch treats this as a
    /// hint that the mask is causal, and so does tessera).
    pub is_causal: bool,
}

impl MhaOptions<'_> {
    /// `num_heads` heads, sequence-first, no masks, no weights returned.
    pub fn new(num_heads: usize) -> MhaOptions<'static> {
        MhaOptions {
            num_heads,
            batch_first: false,
            key_padding_mask: None,
            attn_mask: None,
            need_weights: false,
            average_attn_weights: true,
            is_causal: false,
        }
    }
}

/// PyTorch's `MultiheadAttention` forward (no dropout, no bias_k/bias_v): `(attn_output,
/// attn_weights)`, the weights only when `need_weights`.
pub fn multi_head_attention(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    w: &MhaWeights<'_>,
    o: &MhaOptions<'_>,
) -> Result<(Tensor, Option<Tensor>)> {
    let op = "multi_head_attention";
    for t in [query, key, value] {
        if t.rank() != 3 {
            return Err(Error::invalid(
                op,
                format!(
                    "query, key and value must be batched 3-D tensors, got {}, {}, {}",
                    query.shape(),
                    key.shape(),
                    value.shape()
                ),
            ));
        }
    }
    // To batch-first [N, L, E].
    let bf = |t: &Tensor| -> Result<Tensor> {
        if o.batch_first {
            Ok(t.clone())
        } else {
            t.transpose(0, 1)
        }
    };
    let (q_in, k_in, v_in) = (bf(query)?, bf(key)?, bf(value)?);
    let (n, l, e) = (q_in.dims()[0], q_in.dims()[1], q_in.dims()[2]);
    let s = k_in.dims()[1];
    let h = o.num_heads;
    if h == 0 || e % h != 0 {
        return Err(Error::invalid(
            op,
            format!("num_heads = {h} must divide the embedding size {e}"),
        ));
    }
    if k_in.dims()[0] != n || v_in.dims()[0] != n || v_in.dims()[1] != s {
        return Err(Error::invalid(
            op,
            format!(
                "query, key and value disagree on batch or length: {}, {}, {}",
                query.shape(),
                key.shape(),
                value.shape()
            ),
        ));
    }
    let third = |t: &Tensor, i: usize| t.narrow(0, i * e, e);
    let (wq, wk, wv) = match (
        w.in_proj_weight,
        w.q_proj_weight,
        w.k_proj_weight,
        w.v_proj_weight,
    ) {
        (Some(p), _, _, _) => {
            if p.dims() != [3 * e, e] {
                return Err(Error::shape(
                    op,
                    "in_proj_weight must be [3E, E]",
                    p.dims(),
                    &[3 * e, e],
                ));
            }
            (third(p, 0)?, third(p, 1)?, third(p, 2)?)
        }
        (None, Some(a), Some(b), Some(c)) => (a.clone(), b.clone(), c.clone()),
        _ => {
            return Err(Error::invalid(
                op,
                "needs in_proj_weight, or all of q_proj_weight, k_proj_weight, v_proj_weight",
            ))
        }
    };
    let (bq, bk, bv) = match w.in_proj_bias {
        Some(b) => (Some(third(b, 0)?), Some(third(b, 1)?), Some(third(b, 2)?)),
        None => (None, None, None),
    };
    let qp = q_in.linear(&wq, bq.as_ref())?;
    let kp = k_in.linear(&wk, bk.as_ref())?;
    let vp = v_in.linear(&wv, bv.as_ref())?;
    // [N, T, E] -> [N, H, T, hd]
    let heads = |t: &Tensor, len: usize| {
        t.reshape(&[n as isize, len as isize, h as isize, (e / h) as isize])?
            .transpose(1, 2)
    };
    let (qh, kh, vh) = (heads(&qp, l)?, heads(&kp, s)?, heads(&vp, s)?);
    // The bias [N or 1, H or 1, L or 1, S].
    let mut bias: Option<Tensor> = None;
    let mut add_bias = |b: Tensor| -> Result<()> {
        bias = Some(match bias.take() {
            Some(acc) => acc.add(&b)?,
            None => b,
        });
        Ok(())
    };
    match o.attn_mask {
        Some(m) => {
            let b = mha_bias(op, m, &qp)?;
            let b = match b.rank() {
                2 if b.dims() == [l, s] => b,
                3 if b.dims() == [n * h, l, s] => {
                    b.reshape(&[n as isize, h as isize, l as isize, s as isize])?
                }
                _ => {
                    return Err(Error::shape(
                        op,
                        "attn_mask must be [L, S] or [N·num_heads, L, S]",
                        m.dims(),
                        &[n * h, l, s],
                    ))
                }
            };
            add_bias(b)?;
        }
        None if o.is_causal => {
            let c = causal_mask(l, s, q_in.device())?.logical_not()?;
            add_bias(mha_bias(op, &c, &qp)?)?;
        }
        None => {}
    }
    if let Some(m) = o.key_padding_mask {
        if m.dims() != [n, s] {
            return Err(Error::shape(
                op,
                "key_padding_mask must be [N, S]",
                m.dims(),
                &[n, s],
            ));
        }
        add_bias(mha_bias(op, m, &qp)?.reshape(&[n as isize, 1, 1, s as isize])?)?;
    }
    let (oh, p) = attention_with_weights(&qh, &kh, &vh, bias.as_ref(), false, None)?;
    // [N, H, L, hd] -> [N, L, E]
    let out = oh
        .transpose(1, 2)?
        .reshape(&[n as isize, l as isize, e as isize])?;
    let out = out.linear(w.out_proj_weight, w.out_proj_bias)?;
    let out = if o.batch_first {
        out
    } else {
        out.transpose(0, 1)?
    };
    let weights = match (o.need_weights, o.average_attn_weights) {
        (false, _) => None,
        (true, true) => Some(p.mean(&[1], false)?),
        (true, false) => Some(p),
    };
    Ok((out, weights))
}

/// The parameters of [`transformer_encoder_layer`], named as in PyTorch's
/// `TransformerEncoderLayer.state_dict()`.
#[derive(Clone, Copy, Debug)]
pub struct EncoderLayerWeights<'a> {
    /// `self_attn.*`.
    pub self_attn: MhaWeights<'a>,
    pub linear1_weight: &'a Tensor,
    pub linear1_bias: Option<&'a Tensor>,
    pub linear2_weight: &'a Tensor,
    pub linear2_bias: Option<&'a Tensor>,
    pub norm1_weight: Option<&'a Tensor>,
    pub norm1_bias: Option<&'a Tensor>,
    pub norm2_weight: Option<&'a Tensor>,
    pub norm2_bias: Option<&'a Tensor>,
}

/// The feed-forward activation of a transformer layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfActivation {
    Relu,
    /// The exact (erf) GELU.
    Gelu,
}

/// Options of [`transformer_encoder_layer`].
#[derive(Clone, Copy, Debug)]
pub struct EncoderLayerOptions<'a> {
    pub nhead: usize,
    pub activation: FfActivation,
    pub layer_norm_eps: f64,
    pub batch_first: bool,
    /// Pre-norm (`x + SA(LN(x))`) instead of post-norm (`LN(x + SA(x))`).
    pub norm_first: bool,
    /// As MHA's `attn_mask` (bool: true = masked out).
    pub src_mask: Option<&'a Tensor>,
    /// bool `[N, S]`, true = padding.
    pub src_key_padding_mask: Option<&'a Tensor>,
    /// Adds the causal mask when no `src_mask` is given.
    pub is_causal: bool,
}

/// PyTorch's `TransformerEncoderLayer` forward with dropout 0.
pub fn transformer_encoder_layer(
    src: &Tensor,
    w: &EncoderLayerWeights<'_>,
    o: &EncoderLayerOptions<'_>,
) -> Result<Tensor> {
    let d = src.dims().last().copied().unwrap_or(0);
    let ln = |x: &Tensor, wt: Option<&Tensor>, b: Option<&Tensor>| {
        super::norm::layer_norm(x, &[d], wt, b, o.layer_norm_eps)
    };
    let sa = |x: &Tensor| -> Result<Tensor> {
        let mo = MhaOptions {
            num_heads: o.nhead,
            batch_first: o.batch_first,
            key_padding_mask: o.src_key_padding_mask,
            attn_mask: o.src_mask,
            need_weights: false,
            average_attn_weights: true,
            is_causal: o.is_causal,
        };
        Ok(multi_head_attention(x, x, x, &w.self_attn, &mo)?.0)
    };
    let ff = |x: &Tensor| -> Result<Tensor> {
        let hdn = x.linear(w.linear1_weight, w.linear1_bias)?;
        let hdn = match o.activation {
            FfActivation::Relu => hdn.relu()?,
            FfActivation::Gelu => hdn.gelu(false)?,
        };
        hdn.linear(w.linear2_weight, w.linear2_bias)
    };
    if o.norm_first {
        let h = src.add(&sa(&ln(src, w.norm1_weight, w.norm1_bias)?)?)?;
        h.add(&ff(&ln(&h, w.norm2_weight, w.norm2_bias)?)?)
    } else {
        let h = ln(&src.add(&sa(src)?)?, w.norm1_weight, w.norm1_bias)?;
        ln(&h.add(&ff(&h)?)?, w.norm2_weight, w.norm2_bias)
    }
}
