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
use crate::backend::{Attention, View};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::Layout;
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
    let e = check(q, k, v, attn_mask, is_causal)?;
    let scale = scale.unwrap_or(1.0 / (e as f64).sqrt());
    // One fused node when the backend has the kernel and no mask needs a gradient; otherwise
    // the composite, recorded op by op.
    let lead = &q.dims()[..q.rank() - 2];
    let same_lead = k.dims()[..k.rank() - 2] == *lead && v.dims()[..v.rank() - 2] == *lead;
    let bias = match attn_mask {
        Some(m) if m.dtype() == DType::Bool => Some(bool_bias(m, q)?),
        Some(m) => Some(m.clone()),
        None => None,
    };
    if same_lead && !bias.as_ref().is_some_and(Tensor::requires_grad) {
        if let Some(y) = fused_attention(q, k, v, bias.as_ref(), is_causal, scale)? {
            return Ok(y);
        }
    }
    Ok(attention_with_weights(q, k, v, attn_mask, is_causal, Some(scale))?.0)
}

/// The checks shared by both paths; returns E.
fn check(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attn_mask: Option<&Tensor>,
    is_causal: bool,
) -> Result<usize> {
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
    if let Some(m) = attn_mask {
        same_device(op, q, m)?;
        if m.dtype() != DType::Bool && m.dtype() != q.dtype() {
            return Err(Error::DType {
                op,
                msg: format!(
                    "attn_mask must be bool or {} like q, got {} {}",
                    q.dtype(),
                    m.dtype(),
                    m.shape()
                ),
            });
        }
    }
    Ok(e)
}

/// SDPA's bool mask (true = may attend) as an additive bias: 0 where true, −∞ where false.
fn bool_bias(m: &Tensor, like: &Tensor) -> Result<Tensor> {
    m.where_(
        &like.scalar_like(0.0)?.detach(),
        &like.scalar_like(f64::NEG_INFINITY)?.detach(),
    )
}

/// `bias` broadcast to `[B, L, S]` as a layout over its own buffer: leading dims merged
/// where their strides allow, else a contiguous copy.
fn bias_view(bias: &Tensor, lead: &[usize], l: usize, s: usize) -> Result<(Tensor, Layout)> {
    let mut full = lead.to_vec();
    full.extend([l, s]);
    let shape =
        crate::layout::broadcast_shapes("scaled_dot_product_attention", bias.dims(), &full)?;
    if shape != full {
        return Err(Error::shape(
            "scaled_dot_product_attention",
            "attn_mask must broadcast to [..., L, S]",
            bias.dims(),
            &full,
        ));
    }
    let b: usize = lead.iter().product();
    let lay = bias.layout().broadcast_to(&full);
    let st = lay.strides();
    let r = lead.len();
    // Leading dims merge into one stride when each steps over the next whole.
    let merged = (0..r)
        .rev()
        .try_fold(None::<usize>, |inner: Option<usize>, d| {
            let (n, sd) = (lead[d], st[d]);
            match inner {
                _ if n == 1 => Some(inner),
                None => Some(Some(sd)),
                Some(si) => {
                    let below: usize = lead[d + 1..].iter().product();
                    (sd == si * below).then_some(Some(si))
                }
            }
        });
    match merged {
        Some(sb) => Ok((
            bias.clone(),
            Layout::new(
                vec![b, l, s],
                vec![sb.unwrap_or(0), st[r], st[r + 1]],
                lay.offset(),
            ),
        )),
        None => {
            let c = bias
                .expand(&full.iter().map(|&d| d as isize).collect::<Vec<_>>())?
                .contiguous()?;
            let lay = Layout::contiguous(&[b, l, s]);
            Ok((c, lay))
        }
    }
}

/// The kernel's operands: `[B, ·, ·]` views of q, k, v and the bias with its `[B, L, S]`
/// layout.
fn attention_args<'a>(
    [q, k, v]: [&'a Tensor; 3],
    bias: Option<&'a (Tensor, Layout)>,
    causal: bool,
    scale: f64,
) -> Attention<'a> {
    Attention {
        q: q.view(),
        k: k.view(),
        v: v.view(),
        bias: bias.map(|(t, lay)| View {
            buf: t.buffer().as_ref(),
            layout: lay,
        }),
        causal,
        scale,
    }
}

/// The fused forward as one tape node, or `None` when the backend declines.
fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    causal: bool,
    scale: f64,
) -> Result<Option<Tensor>> {
    let (lead, l, e) = (
        &q.dims()[..q.rank() - 2],
        q.dims()[q.rank() - 2],
        q.dims()[q.rank() - 1],
    );
    let (s, ev) = (k.dims()[k.rank() - 2], v.dims()[v.rank() - 1]);
    let b: usize = lead.iter().product();
    let flat = move |t: &Tensor, rows: usize, cols: usize| {
        t.detach()
            .reshape(&[b as isize, rows as isize, cols as isize])?
            .contiguous()
    };
    let (q3, k3, v3) = (flat(q, l, e)?, flat(k, s, e)?, flat(v, s, ev)?);
    let bias = bias
        .map(|m| bias_view(&m.detach(), lead, l, s))
        .transpose()?;
    let a = attention_args([&q3, &k3, &v3], bias.as_ref(), causal, scale);
    let Some([out, lse]) = super::fused(q.device(), |kn| kn.attention(&a))? else {
        return Ok(None);
    };
    let mut shape = lead.to_vec();
    shape.extend([l, ev]);
    let y = q3.output(out, &shape);
    let lse = q3.output(lse, &[b, l]);
    let (qs, ks, vs, ys) = (q.clone(), k.clone(), v.clone(), y.detach());
    let bias_t = bias.map(|(t, _)| t);
    Ok(Some(y.record_op(
        "scaled_dot_product_attention",
        &[q, k, v],
        move |g, need| {
            if !crate::tape::is_grad_enabled() {
                let (q3, k3, v3) = (flat(&qs, l, e)?, flat(&ks, s, e)?, flat(&vs, s, ev)?);
                let (y3, g3) = (flat(&ys, l, ev)?, flat(g, l, ev)?);
                let bl = bias_t
                    .as_ref()
                    .map(|t| bias_view(t, &qs.dims()[..qs.rank() - 2], l, s))
                    .transpose()?;
                let a = attention_args([&q3, &k3, &v3], bl.as_ref(), causal, scale);
                let grads = super::fused(qs.device(), |kn| {
                    kn.attention_backward(&a, y3.view(), lse.view(), g3.view())
                })?;
                if let Some([dq, dk, dv]) = grads {
                    let shaped = |buf, t: &Tensor| q3.output(buf, t.dims());
                    return Ok(vec![
                        Some(shaped(dq, &qs)),
                        Some(shaped(dk, &ks)),
                        Some(shaped(dv, &vs)),
                    ]);
                }
            }
            let [dq, dk, dv] = attention_grads(&qs, &ks, &vs, bias_t.as_ref(), causal, scale, g)?;
            Ok(vec![
                need[0].then_some(dq),
                need[1].then_some(dk),
                need[2].then_some(dv),
            ])
        },
    )))
}

/// The gradients of attention written with tensor ops (recorded under `create_graph`, so
/// second derivatives follow): with `P = softmax(q·kᵀ·scale + bias)`, `dV = Pᵀ·g`,
/// `dP = g·vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = dS·k·scale`, `dK = dSᵀ·q·scale`.
fn attention_grads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    causal: bool,
    scale: f64,
    g: &Tensor,
) -> Result<[Tensor; 3]> {
    let (l, s) = (q.dims()[q.rank() - 2], k.dims()[k.rank() - 2]);
    let mut scores = q.matmul(&k.transpose(-2, -1)?)?.mul_scalar(scale)?;
    if causal {
        scores = causal_mask(l, s, q.device())?
            .where_(&scores, &scores.scalar_like(f64::NEG_INFINITY)?.detach())?;
    }
    if let Some(b) = bias {
        scores = scores.add(b)?;
    }
    let p = scores.softmax(-1)?;
    let dv = p.transpose(-2, -1)?.matmul(g)?;
    let dp = g.matmul(&v.transpose(-2, -1)?)?;
    let ds = p.mul(&dp.sub(&dp.mul(&p)?.sum(&[-1], true)?)?)?;
    let dq = ds.matmul(k)?.mul_scalar(scale)?;
    let dk = ds.transpose(-2, -1)?.matmul(q)?.mul_scalar(scale)?;
    Ok([dq, dk, dv])
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
    let e = check(q, k, v, attn_mask, is_causal)?;
    let s = k.dims()[k.rank() - 2];
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

/// Dropout on the attention weights inside [`multi_head_attention`] (PyTorch's `dropout`
/// argument of `MultiheadAttention`): each weight is zeroed with probability `p` and the rest
/// scaled by `1 / (1 - p)`, the masks drawn from `gen`.
#[derive(Clone, Copy, Debug)]
pub struct AttnDropout<'a> {
    pub p: f64,
    pub gen: &'a std::sync::Mutex<crate::random::Generator>,
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
    /// Dropout on the attention weights (training), or `None`. With `p > 0` the weights are
    /// materialised (no fused kernel), as in PyTorch's CPU path; the weights returned with
    /// `need_weights` are the ones after dropout, as PyTorch returns them.
    pub dropout: Option<AttnDropout<'a>>,
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
            dropout: None,
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
        // Causal and nothing else: the kernel's own rule, no bias tensor.
        None if o.is_causal && o.key_padding_mask.is_some() => {
            let c = causal_mask(l, s, q_in.device())?.logical_not()?;
            add_bias(mha_bias(op, &c, &qp)?)?;
        }
        None => {}
    }
    let causal = o.is_causal && o.attn_mask.is_none() && o.key_padding_mask.is_none();
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
    let dropout = o.dropout.filter(|d| d.p > 0.0);
    let (oh, p) = if let Some(d) = dropout {
        let (_, p) = attention_with_weights(&qh, &kh, &vh, bias.as_ref(), causal, None)?;
        let p = {
            let mut gen = d.gen.lock().map_err(|_| {
                Error::invalid(op, "the dropout generator's lock was poisoned by a panic")
            })?;
            super::norm::dropout(&p, d.p, &mut gen)?
        };
        (p.matmul(&vh)?, o.need_weights.then_some(p))
    } else if o.need_weights {
        let (oh, p) = attention_with_weights(&qh, &kh, &vh, bias.as_ref(), causal, None)?;
        (oh, Some(p))
    } else {
        let oh = scaled_dot_product_attention(&qh, &kh, &vh, bias.as_ref(), causal, None)?;
        (oh, None)
    };
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
    let weights = match (p, o.average_attn_weights) {
        (None, _) => None,
        (Some(p), true) => Some(p.mean(&[1], false)?),
        (Some(p), false) => Some(p),
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
            dropout: None,
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
