//! Attention blocks with PyTorch's parameter names and layouts: `MultiheadAttention`,
//! `TransformerEncoderLayer`, `TransformerEncoder`, `TransformerDecoderLayer`, and position
//! encodings (sinusoidal and rotary). The math is in `tessera_core::ops::attention`; these
//! hold the parameters and the options.

use super::{Dropout, LayerNorm, Linear};
use crate::init::{xavier_uniform, Ctx};
use crate::module::{Forward, Parameter};
use crate::Module;
use tessera_core::ops::attention::{
    self as att, AttnDropout, EncoderLayerOptions, EncoderLayerWeights, FfActivation, MhaOptions,
    MhaWeights,
};
use tessera_core::{DType, Error, HostData, Result, Tensor};

/// A dropout layer seeded from `ctx` (each one its own stream).
fn dropout(ctx: &mut Ctx, p: f64) -> Result<Dropout> {
    let seed = ctx.gen.seed() ^ ctx.gen.advance(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Dropout::new(p, seed)
}

/// `torch.nn.MultiheadAttention` (no `bias_k`/`bias_v`, no `add_zero_attn`), with dropout on
/// the attention weights in training ([`MultiheadAttention::with_dropout`]). Its
/// `state_dict` names: `in_proj_weight` `[3E, E]` (or `q_proj_weight`, `k_proj_weight`,
/// `v_proj_weight` when the key or value size differs from E), `in_proj_bias` `[3E]`,
/// `out_proj.weight`, `out_proj.bias`.
#[derive(Module)]
pub struct MultiheadAttention {
    pub in_proj_weight: Option<Parameter>,
    pub q_proj_weight: Option<Parameter>,
    pub k_proj_weight: Option<Parameter>,
    pub v_proj_weight: Option<Parameter>,
    pub in_proj_bias: Option<Parameter>,
    pub out_proj: Linear,
    #[module(skip)]
    pub num_heads: usize,
    /// Inputs `[N, L, E]` instead of `[L, N, E]`.
    #[module(skip)]
    pub batch_first: bool,
    /// Dropout on the attention weights (p = 0 unless [`MultiheadAttention::with_dropout`]):
    /// drawn in training mode only, so `eval()` turns it off.
    pub dropout: Dropout,
}

/// The optional arguments of [`MultiheadAttention::forward`] (PyTorch's names and polarity:
/// bool masks are true where a key is masked out).
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionMasks<'a> {
    /// bool `[N, S]`, true = padding.
    pub key_padding_mask: Option<&'a Tensor>,
    /// `[L, S]` or `[N·heads, L, S]`: bool (true = masked out) or float (added).
    pub attn_mask: Option<&'a Tensor>,
    /// Adds the causal mask when `attn_mask` is `None`.
    pub is_causal: bool,
}

impl MultiheadAttention {
    /// `embed_dim` features in `num_heads` heads, with biases; PyTorch's initialisation
    /// (Xavier-uniform projections, zero biases).
    pub fn new(ctx: &mut Ctx, embed_dim: usize, num_heads: usize) -> Result<MultiheadAttention> {
        Self::with_dims(ctx, embed_dim, num_heads, embed_dim, embed_dim, true)
    }

    /// With key size `kdim` and value size `vdim` (separate projections when either differs
    /// from `embed_dim`, as in PyTorch) and biases or not.
    pub fn with_dims(
        ctx: &mut Ctx,
        embed_dim: usize,
        num_heads: usize,
        kdim: usize,
        vdim: usize,
        bias: bool,
    ) -> Result<MultiheadAttention> {
        let e = embed_dim;
        if num_heads == 0 || !e.is_multiple_of(num_heads) {
            return Err(Error::invalid(
                "MultiheadAttention",
                format!("num_heads = {num_heads} must divide embed_dim = {e}"),
            ));
        }
        let packed = kdim == e && vdim == e;
        let p = |ctx: &mut Ctx, rows: usize, cols: usize| {
            Parameter::new(xavier_uniform(ctx, &[rows, cols], cols, rows, 1.0)?)
        };
        let (in_proj_weight, q, k, v) = if packed {
            // PyTorch draws Xavier over the packed [3E, E] matrix.
            (Some(p(ctx, 3 * e, e)?), None, None, None)
        } else {
            (
                None,
                Some(p(ctx, e, e)?),
                Some(p(ctx, e, kdim)?),
                Some(p(ctx, e, vdim)?),
            )
        };
        let zeros = |n: usize| Parameter::new(Tensor::zeros(&[n], ctx.dtype, &ctx.device)?);
        let in_proj_bias = if bias { Some(zeros(3 * e)?) } else { None };
        let mut out_proj = Linear::with_bias(ctx, e, e, bias)?;
        if let Some(b) = &out_proj.bias {
            b.set(Tensor::zeros(&[e], ctx.dtype, &ctx.device)?)?;
        }
        out_proj.relu = false;
        // Seeded from the counter reached after this block's parameters, without advancing
        // it, so adding the attention dropout left every model's initial weights as they were.
        let seed = ctx.gen.seed() ^ (ctx.gen.offset() + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let dropout = Dropout::new(0.0, seed)?;
        Ok(MultiheadAttention {
            in_proj_weight,
            q_proj_weight: q,
            k_proj_weight: k,
            v_proj_weight: v,
            in_proj_bias,
            out_proj,
            num_heads,
            batch_first: false,
            dropout,
        })
    }

    /// Drops each attention weight with probability `p` in training (PyTorch's `dropout`
    /// argument); an error unless `0 ≤ p < 1`. With `p > 0` the weights are materialised, not
    /// run through the fused attention kernel.
    pub fn with_dropout(mut self, p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid(
                "MultiheadAttention",
                format!("dropout must be in [0, 1), got {p}"),
            ));
        }
        self.dropout.p = p;
        Ok(self)
    }

    /// Sequences `[N, L, E]` (PyTorch's `batch_first=True`).
    pub fn batch_first(mut self) -> Self {
        self.batch_first = true;
        self
    }

    /// `(attn_output, attn_weights)`: the weights, averaged over the heads (`[N, L, S]`), only
    /// when `need_weights`.
    pub fn forward(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        masks: &AttentionMasks<'_>,
        need_weights: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (wi, wq, wk, wv, bi) = (
            self.in_proj_weight.as_ref().map(Parameter::tensor),
            self.q_proj_weight.as_ref().map(Parameter::tensor),
            self.k_proj_weight.as_ref().map(Parameter::tensor),
            self.v_proj_weight.as_ref().map(Parameter::tensor),
            self.in_proj_bias.as_ref().map(Parameter::tensor),
        );
        let (wo, bo) = (
            self.out_proj.weight.tensor(),
            self.out_proj.bias.as_ref().map(Parameter::tensor),
        );
        let w = MhaWeights {
            in_proj_weight: wi.as_ref(),
            q_proj_weight: wq.as_ref(),
            k_proj_weight: wk.as_ref(),
            v_proj_weight: wv.as_ref(),
            in_proj_bias: bi.as_ref(),
            out_proj_weight: &wo,
            out_proj_bias: bo.as_ref(),
        };
        let o = MhaOptions {
            num_heads: self.num_heads,
            batch_first: self.batch_first,
            key_padding_mask: masks.key_padding_mask,
            attn_mask: masks.attn_mask,
            need_weights,
            average_attn_weights: true,
            is_causal: masks.is_causal,
            dropout: (self.dropout.p > 0.0 && self.dropout.is_training()).then(|| AttnDropout {
                p: self.dropout.p,
                gen: self.dropout.generator(),
            }),
        };
        att::multi_head_attention(query, key, value, &w, &o)
    }
}

/// Self-attention without masks: `forward(x, x, x)`.
impl Forward for MultiheadAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(MultiheadAttention::forward(self, x, x, x, &AttentionMasks::default(), false)?.0)
    }
}

/// A transformer layer's feed-forward block: `drop_out(linear2(drop(act(linear1(x)))))`.
fn feed_forward(
    [linear1, linear2]: [&Linear; 2],
    [drop, drop_out]: [&Dropout; 2],
    act: FfActivation,
    x: &Tensor,
) -> Result<Tensor> {
    let h = linear1.forward(x)?;
    let h = match act {
        FfActivation::Relu => h.relu()?,
        FfActivation::Gelu => h.gelu(false)?,
    };
    drop_out.forward(&linear2.forward(&drop.forward(&h)?)?)
}

/// Options of a transformer layer (PyTorch's constructor arguments).
#[derive(Clone, Copy, Debug)]
pub struct TransformerOptions {
    pub nhead: usize,
    pub dim_feedforward: usize,
    /// Dropout after attention and in the feed-forward block (training only).
    pub dropout: f64,
    pub activation: FfActivation,
    pub layer_norm_eps: f64,
    pub batch_first: bool,
    /// Pre-norm (`x + SA(LN(x))`) instead of post-norm.
    pub norm_first: bool,
}

impl TransformerOptions {
    /// PyTorch's defaults: ff 2048, dropout 0.1, ReLU, eps 1e-5, sequence first, post-norm.
    pub fn new(nhead: usize) -> TransformerOptions {
        TransformerOptions {
            nhead,
            dim_feedforward: 2048,
            dropout: 0.1,
            activation: FfActivation::Relu,
            layer_norm_eps: 1e-5,
            batch_first: false,
            norm_first: false,
        }
    }
}

/// `torch.nn.TransformerEncoderLayer`: self-attention and a feed-forward block, each with a
/// residual connection and a LayerNorm (after, or before with `norm_first`). `state_dict`
/// names: `self_attn.*`, `linear1.*`, `linear2.*`, `norm1.*`, `norm2.*`.
#[derive(Module)]
pub struct TransformerEncoderLayer {
    pub self_attn: MultiheadAttention,
    pub linear1: Linear,
    pub dropout: Dropout,
    pub linear2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub dropout1: Dropout,
    pub dropout2: Dropout,
    #[module(skip)]
    pub options: TransformerOptions,
}

impl TransformerEncoderLayer {
    /// A layer of width `d_model` (PyTorch's initialisation).
    pub fn new(
        ctx: &mut Ctx,
        d_model: usize,
        options: TransformerOptions,
    ) -> Result<TransformerEncoderLayer> {
        // PyTorch hands the layer's dropout to its attention too.
        let mut self_attn =
            MultiheadAttention::new(ctx, d_model, options.nhead)?.with_dropout(options.dropout)?;
        self_attn.batch_first = options.batch_first;
        let mut norm1 = LayerNorm::new(ctx, &[d_model])?;
        let mut norm2 = LayerNorm::new(ctx, &[d_model])?;
        norm1.eps = options.layer_norm_eps;
        norm2.eps = options.layer_norm_eps;
        Ok(TransformerEncoderLayer {
            self_attn,
            linear1: Linear::new(ctx, d_model, options.dim_feedforward)?,
            dropout: dropout(ctx, options.dropout)?,
            linear2: Linear::new(ctx, options.dim_feedforward, d_model)?,
            norm1,
            norm2,
            dropout1: dropout(ctx, options.dropout)?,
            dropout2: dropout(ctx, options.dropout)?,
            options,
        })
    }

    /// The layer on `src` with masks (`attn_mask` plays PyTorch's `src_mask`,
    /// `key_padding_mask` its `src_key_padding_mask`).
    pub fn forward_masked(&self, src: &Tensor, masks: &AttentionMasks<'_>) -> Result<Tensor> {
        let o = &self.options;
        if self.dropout.p == 0.0 || !self.is_training() {
            // One call into the op (dropout is the identity).
            return self.forward_op(src, masks);
        }
        let sa = |x: &Tensor| -> Result<Tensor> {
            let y = self.self_attn.forward(x, x, x, masks, false)?.0;
            self.dropout1.forward(&y)
        };
        let ff = |x: &Tensor| {
            feed_forward(
                [&self.linear1, &self.linear2],
                [&self.dropout, &self.dropout2],
                o.activation,
                x,
            )
        };
        if o.norm_first {
            let h = src.add(&sa(&self.norm1.forward(src)?)?)?;
            h.add(&ff(&self.norm2.forward(&h)?)?)
        } else {
            let h = self.norm1.forward(&src.add(&sa(src)?)?)?;
            self.norm2.forward(&h.add(&ff(&h)?)?)
        }
    }

    fn is_training(&self) -> bool {
        self.dropout.is_training()
    }

    fn forward_op(&self, src: &Tensor, masks: &AttentionMasks<'_>) -> Result<Tensor> {
        let a = &self.self_attn;
        let t = |p: &Option<Parameter>| p.as_ref().map(Parameter::tensor);
        let (wi, wq, wk, wv, bi) = (
            t(&a.in_proj_weight),
            t(&a.q_proj_weight),
            t(&a.k_proj_weight),
            t(&a.v_proj_weight),
            t(&a.in_proj_bias),
        );
        let (wo, bo) = (a.out_proj.weight.tensor(), t(&a.out_proj.bias));
        let (l1w, l1b) = (self.linear1.weight.tensor(), t(&self.linear1.bias));
        let (l2w, l2b) = (self.linear2.weight.tensor(), t(&self.linear2.bias));
        let (n1w, n1b) = (self.norm1.weight.tensor(), self.norm1.bias.tensor());
        let (n2w, n2b) = (self.norm2.weight.tensor(), self.norm2.bias.tensor());
        let w = EncoderLayerWeights {
            self_attn: MhaWeights {
                in_proj_weight: wi.as_ref(),
                q_proj_weight: wq.as_ref(),
                k_proj_weight: wk.as_ref(),
                v_proj_weight: wv.as_ref(),
                in_proj_bias: bi.as_ref(),
                out_proj_weight: &wo,
                out_proj_bias: bo.as_ref(),
            },
            linear1_weight: &l1w,
            linear1_bias: l1b.as_ref(),
            linear2_weight: &l2w,
            linear2_bias: l2b.as_ref(),
            norm1_weight: Some(&n1w),
            norm1_bias: Some(&n1b),
            norm2_weight: Some(&n2w),
            norm2_bias: Some(&n2b),
        };
        let o = &self.options;
        let eo = EncoderLayerOptions {
            nhead: o.nhead,
            activation: o.activation,
            layer_norm_eps: o.layer_norm_eps,
            batch_first: o.batch_first,
            norm_first: o.norm_first,
            src_mask: masks.attn_mask,
            src_key_padding_mask: masks.key_padding_mask,
            is_causal: masks.is_causal,
        };
        att::transformer_encoder_layer(src, &w, &eo)
    }
}

impl Forward for TransformerEncoderLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_masked(x, &AttentionMasks::default())
    }
}

/// `torch.nn.TransformerEncoder`: `layers.0`, `layers.1`, ... and an optional final `norm`.
#[derive(Module)]
pub struct TransformerEncoder {
    pub layers: Vec<TransformerEncoderLayer>,
    pub norm: Option<LayerNorm>,
}

impl TransformerEncoder {
    /// `num_layers` layers built by `layer` (each with its own parameters).
    pub fn new(
        ctx: &mut Ctx,
        num_layers: usize,
        mut layer: impl FnMut(&mut Ctx) -> Result<TransformerEncoderLayer>,
        norm: Option<LayerNorm>,
    ) -> Result<TransformerEncoder> {
        let layers = (0..num_layers).map(|_| layer(ctx)).collect::<Result<_>>()?;
        Ok(TransformerEncoder { layers, norm })
    }

    /// Every layer with the same masks, then the final norm.
    pub fn forward_masked(&self, src: &Tensor, masks: &AttentionMasks<'_>) -> Result<Tensor> {
        let mut x = src.clone();
        for l in &self.layers {
            x = l.forward_masked(&x, masks)?;
        }
        match &self.norm {
            Some(n) => n.forward(&x),
            None => Ok(x),
        }
    }
}

impl Forward for TransformerEncoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_masked(x, &AttentionMasks::default())
    }
}

/// `torch.nn.TransformerDecoderLayer`: masked self-attention, attention over the encoder's
/// output (`memory`), feed-forward; `state_dict` names `self_attn.*`, `multihead_attn.*`,
/// `linear1.*`, `linear2.*`, `norm1.*`, `norm2.*`, `norm3.*`.
#[derive(Module)]
pub struct TransformerDecoderLayer {
    pub self_attn: MultiheadAttention,
    pub multihead_attn: MultiheadAttention,
    pub linear1: Linear,
    pub dropout: Dropout,
    pub linear2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub norm3: LayerNorm,
    pub dropout1: Dropout,
    pub dropout2: Dropout,
    pub dropout3: Dropout,
    #[module(skip)]
    pub options: TransformerOptions,
}

impl TransformerDecoderLayer {
    /// A layer of width `d_model` (PyTorch's initialisation).
    pub fn new(
        ctx: &mut Ctx,
        d_model: usize,
        options: TransformerOptions,
    ) -> Result<TransformerDecoderLayer> {
        let mut self_attn =
            MultiheadAttention::new(ctx, d_model, options.nhead)?.with_dropout(options.dropout)?;
        let mut multihead_attn =
            MultiheadAttention::new(ctx, d_model, options.nhead)?.with_dropout(options.dropout)?;
        self_attn.batch_first = options.batch_first;
        multihead_attn.batch_first = options.batch_first;
        let linear1 = Linear::new(ctx, d_model, options.dim_feedforward)?;
        let dropout_ff = dropout(ctx, options.dropout)?;
        let linear2 = Linear::new(ctx, options.dim_feedforward, d_model)?;
        let mut norms = (0..3)
            .map(|_| {
                let mut n = LayerNorm::new(ctx, &[d_model])?;
                n.eps = options.layer_norm_eps;
                Ok(n)
            })
            .collect::<Result<Vec<_>>>()?;
        let norm3 = norms
            .pop()
            .ok_or_else(|| Error::invalid("decoder", "norms"))?;
        let norm2 = norms
            .pop()
            .ok_or_else(|| Error::invalid("decoder", "norms"))?;
        let norm1 = norms
            .pop()
            .ok_or_else(|| Error::invalid("decoder", "norms"))?;
        Ok(TransformerDecoderLayer {
            self_attn,
            multihead_attn,
            linear1,
            dropout: dropout_ff,
            linear2,
            norm1,
            norm2,
            norm3,
            dropout1: dropout(ctx, options.dropout)?,
            dropout2: dropout(ctx, options.dropout)?,
            dropout3: dropout(ctx, options.dropout)?,
            options,
        })
    }

    /// The layer on `tgt` attending to `memory`: `tgt_masks` for the self-attention,
    /// `memory_masks` for the attention over `memory` (PyTorch's `memory_mask` and
    /// `memory_key_padding_mask`).
    pub fn forward(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        tgt_masks: &AttentionMasks<'_>,
        memory_masks: &AttentionMasks<'_>,
    ) -> Result<Tensor> {
        let o = &self.options;
        let sa = |x: &Tensor| -> Result<Tensor> {
            let y = self.self_attn.forward(x, x, x, tgt_masks, false)?.0;
            self.dropout1.forward(&y)
        };
        let ca = |x: &Tensor| -> Result<Tensor> {
            let y = self
                .multihead_attn
                .forward(x, memory, memory, memory_masks, false)?
                .0;
            self.dropout2.forward(&y)
        };
        let ff = |x: &Tensor| {
            feed_forward(
                [&self.linear1, &self.linear2],
                [&self.dropout, &self.dropout3],
                o.activation,
                x,
            )
        };
        if o.norm_first {
            let x = tgt.add(&sa(&self.norm1.forward(tgt)?)?)?;
            let x = x.add(&ca(&self.norm2.forward(&x)?)?)?;
            x.add(&ff(&self.norm3.forward(&x)?)?)
        } else {
            let x = self.norm1.forward(&tgt.add(&sa(tgt)?)?)?;
            let x = self.norm2.forward(&x.add(&ca(&x)?)?)?;
            self.norm3.forward(&x.add(&ff(&x)?)?)
        }
    }
}

/// `torch.nn.TransformerDecoder`: `layers.0`, `layers.1`, ... and an optional final `norm`.
#[derive(Module)]
pub struct TransformerDecoder {
    pub layers: Vec<TransformerDecoderLayer>,
    pub norm: Option<LayerNorm>,
}

impl TransformerDecoder {
    /// `num_layers` layers built by `layer` (each with its own parameters).
    pub fn new(
        ctx: &mut Ctx,
        num_layers: usize,
        mut layer: impl FnMut(&mut Ctx) -> Result<TransformerDecoderLayer>,
        norm: Option<LayerNorm>,
    ) -> Result<TransformerDecoder> {
        let layers = (0..num_layers).map(|_| layer(ctx)).collect::<Result<_>>()?;
        Ok(TransformerDecoder { layers, norm })
    }

    /// Every layer on `tgt` with the same `memory` and masks, then the final norm.
    pub fn forward(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        tgt_masks: &AttentionMasks<'_>,
        memory_masks: &AttentionMasks<'_>,
    ) -> Result<Tensor> {
        let mut x = tgt.clone();
        for l in &self.layers {
            x = l.forward(&x, memory, tgt_masks, memory_masks)?;
        }
        match &self.norm {
            Some(n) => Forward::forward(n, &x),
            None => Ok(x),
        }
    }
}

/// The fixed sinusoidal position encoding of "Attention Is All You Need":
/// `pe[p, 2i] = sin(p / 10000^(2i/d))`, `pe[p, 2i+1] = cos(...)`, added to `[..., T, d]`
/// inputs (positions `0..T`). A buffer, not a parameter.
pub struct SinusoidalPositionalEncoding {
    table: Tensor,
}

impl SinusoidalPositionalEncoding {
    /// A table for up to `max_len` positions of `d` features (dtype and device of `ctx`).
    pub fn new(ctx: &Ctx, max_len: usize, d: usize) -> Result<SinusoidalPositionalEncoding> {
        tessera_core::checked_numel("SinusoidalPositionalEncoding", &[max_len, d], 8)?;
        let mut v = vec![0.0f64; max_len * d];
        for p in 0..max_len {
            for i in 0..d {
                let freq = (10000f64).powf(-((i - i % 2) as f64) / d as f64);
                let a = p as f64 * freq;
                v[p * d + i] = if i % 2 == 0 { a.sin() } else { a.cos() };
            }
        }
        let table = Tensor::from_host(
            HostData::from_f64(ctx.dtype, &v),
            &[max_len, d],
            &ctx.device,
        )?;
        Ok(SinusoidalPositionalEncoding { table })
    }
}

impl Module for SinusoidalPositionalEncoding {
    fn kind(&self) -> String {
        "SinusoidalPositionalEncoding".into()
    }
    fn named_parameters(&self) -> crate::Named {
        vec![]
    }
}

impl Forward for SinusoidalPositionalEncoding {
    /// `x + pe[0..T]` for `x` `[..., T, d]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (t, d) = match x.dims() {
            [.., t, d] => (*t, *d),
            _ => {
                return Err(Error::invalid(
                    "SinusoidalPositionalEncoding",
                    format!("needs [..., T, d], got {}", x.shape()),
                ))
            }
        };
        let [max_len, dt] = self.table.dims() else {
            return Err(Error::invalid("SinusoidalPositionalEncoding", "bad table"));
        };
        if t > *max_len || d != *dt {
            return Err(Error::shape(
                "SinusoidalPositionalEncoding",
                "input [.., T, d] needs T <= max_len and d equal to the table's",
                x.dims(),
                self.table.dims(),
            ));
        }
        x.add(&self.table.narrow(0, 0, t)?.to_dtype(x.dtype())?)
    }
}

/// Rotary position embedding (RoPE, Su et al. 2021) in the half-split layout of GPT-NeoX and
/// LLaMA: for `x` `[..., T, D]` (D even) at positions `offset..offset+T`, feature pairs
/// `(x[i], x[i + D/2])` are rotated by the angle `p·base^(-2i/D)`. Applied to queries and
/// keys before attention; composite, so its backward is the inverse rotation of the gradient.
pub fn rotary_embedding(x: &Tensor, offset: usize, base: f64) -> Result<Tensor> {
    let (t, d) = match x.dims() {
        [.., t, d] if d % 2 == 0 => (*t, *d),
        _ => {
            return Err(Error::invalid(
                "rotary_embedding",
                format!("needs [..., T, D] with D even, got {}", x.shape()),
            ))
        }
    };
    let h = d / 2;
    let mut cos = vec![0.0f64; t * d];
    let mut sin = vec![0.0f64; t * d];
    for p in 0..t {
        for i in 0..h {
            let a = (offset + p) as f64 * base.powf(-2.0 * i as f64 / d as f64);
            for j in [i, i + h] {
                cos[p * d + j] = a.cos();
                sin[p * d + j] = a.sin();
            }
        }
    }
    let dt = if x.dtype().is_float() {
        x.dtype()
    } else {
        DType::F32
    };
    let cos = Tensor::from_host(HostData::from_f64(dt, &cos), &[t, d], x.device())?;
    let sin = Tensor::from_host(HostData::from_f64(dt, &sin), &[t, d], x.device())?;
    let (x1, x2) = (x.narrow(-1, 0, h)?, x.narrow(-1, h, h)?);
    let rotated = Tensor::concat(&[&x2.neg()?, &x1], -1)?;
    x.mul(&cos)?.add(&rotated.mul(&sin)?)
}
