//! Attention blocks against PyTorch and against their defining properties:
//! - a PyTorch `state_dict` of the zoo's character transformer (pre-norm GELU encoder, causal)
//!   and of a post-norm ReLU `TransformerEncoder` with a final norm and a key-padding mask load
//!   under their own names, in PyTorch's order, and reproduce PyTorch's outputs (fixtures from
//!   `tests/fixtures/make_fixtures.py`);
//! - `MultiheadAttention` names its projections as PyTorch does in both forms;
//! - rotary embeddings rotate (norms kept, scores depend only on the relative position), and
//!   their gradient matches finite differences; the sinusoidal table is the paper's.

use std::path::Path;
use tessera::nn::checkpoint::{load, load_model};
use tessera::nn::zoo::CharTransformer;
use tessera::nn::{
    rotary_embedding, AttentionMasks, Ctx, FfActivation, LayerNorm, MultiheadAttention,
    SinusoidalPositionalEncoding, TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
    TransformerEncoderLayer, TransformerOptions,
};
use tessera::prelude::*;
use tessera::testing::{gradcheck, GradcheckOptions};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (a.to_vec_f64()?, b.to_vec_f64()?);
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max))
}

fn names(m: &dyn Module) -> Vec<String> {
    m.named_parameters().into_iter().map(|(n, _)| n).collect()
}

#[test]
fn a_pytorch_char_transformer_loads_and_gives_pytorchs_logits() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let sd = load(&fixture("transformer.safetensors"), &dev)?;
    let tensors: Vec<(String, Tensor)> = sd.tensors.clone().into_iter().collect();
    let config = CharTransformer::config_from(&tensors, 2)?;
    assert_eq!(
        (config.vocab, config.context, config.d_model, config.layers),
        (11, 9, 8, 2)
    );
    let model = CharTransformer::new(&mut Ctx::new(&dev, 0), config)?;
    let order: Vec<String> = sd.metadata["order"].split(',').map(String::from).collect();
    assert_eq!(names(&model), order);
    load_model(&fixture("transformer.safetensors"), &model, None, &dev)?;
    let io = load(&fixture("transformer_io.safetensors"), &dev)?;
    let y = no_grad(|| model.logits(&io.tensors["x"]))?;
    let d = max_diff(&y, &io.tensors["y"])?;
    assert!(d < 1e-5, "max difference from PyTorch: {d}");
    Ok(())
}

#[test]
fn a_post_norm_encoder_with_padding_matches_pytorch() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let mut ctx = Ctx::new(&dev, 0);
    let mut o = TransformerOptions::new(4);
    o.dim_feedforward = 12;
    o.dropout = 0.0;
    o.activation = FfActivation::Relu;
    let enc = TransformerEncoder::new(
        &mut ctx,
        2,
        |c| TransformerEncoderLayer::new(c, 8, o),
        Some(LayerNorm::new(&mut Ctx::new(&dev, 1), &[8])?),
    )?;
    let sd = load(&fixture("encoder.safetensors"), &dev)?;
    let order: Vec<String> = sd.metadata["order"].split(',').map(String::from).collect();
    assert_eq!(names(&enc), order);
    load_model(&fixture("encoder.safetensors"), &enc, None, &dev)?;
    let io = load(&fixture("transformer_io.safetensors"), &dev)?;
    let pad = &io.tensors["pad"];
    assert_eq!(pad.dtype(), DType::Bool);
    let masks = AttentionMasks {
        key_padding_mask: Some(pad),
        ..Default::default()
    };
    let y = no_grad(|| enc.forward_masked(&io.tensors["src"], &masks))?;
    let d = max_diff(&y, &io.tensors["enc_y"])?;
    assert!(d < 1e-5, "max difference from PyTorch: {d}");
    Ok(())
}

#[test]
fn a_post_norm_decoder_with_causal_target_and_padded_memory_matches_pytorch() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let mut o = TransformerOptions::new(2);
    o.dim_feedforward = 12;
    o.dropout = 0.0;
    let dec = TransformerDecoder::new(
        &mut Ctx::new(&dev, 0),
        2,
        |c| TransformerDecoderLayer::new(c, 8, o),
        Some(LayerNorm::new(&mut Ctx::new(&dev, 1), &[8])?),
    )?;
    let sd = load(&fixture("decoder.safetensors"), &dev)?;
    let order: Vec<String> = sd.metadata["order"].split(',').map(String::from).collect();
    assert_eq!(names(&dec), order);
    load_model(&fixture("decoder.safetensors"), &dec, None, &dev)?;
    let io = load(&fixture("decoder_io.safetensors"), &dev)?;
    let tgt_masks = AttentionMasks {
        is_causal: true,
        ..Default::default()
    };
    let memory_masks = AttentionMasks {
        key_padding_mask: Some(&io.tensors["mem_pad"]),
        ..Default::default()
    };
    let y = no_grad(|| {
        dec.forward(
            &io.tensors["tgt"],
            &io.tensors["memory"],
            &tgt_masks,
            &memory_masks,
        )
    })?;
    let d = max_diff(&y, &io.tensors["y"])?;
    assert!(d < 1e-5, "max difference from PyTorch: {d}");
    Ok(())
}

#[test]
fn multihead_attention_names_its_projections_as_pytorch() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let mut ctx = Ctx::new(&dev, 0);
    let packed = MultiheadAttention::new(&mut ctx, 8, 2)?;
    assert_eq!(
        names(&packed),
        [
            "in_proj_weight",
            "in_proj_bias",
            "out_proj.weight",
            "out_proj.bias"
        ]
    );
    let separate = MultiheadAttention::with_dims(&mut ctx, 8, 2, 5, 3, false)?;
    assert_eq!(
        names(&separate),
        [
            "q_proj_weight",
            "k_proj_weight",
            "v_proj_weight",
            "out_proj.weight"
        ]
    );
    // Cross-attention with other key/value sizes runs and keeps the query's layout.
    let q = Tensor::randn(&[4, 2, 8], &dev)?;
    let (k, v) = (
        Tensor::randn(&[6, 2, 5], &dev)?,
        Tensor::randn(&[6, 2, 3], &dev)?,
    );
    let (y, w) = separate.forward(&q, &k, &v, &AttentionMasks::default(), true)?;
    assert_eq!(y.dims(), &[4, 2, 8]);
    assert_eq!(w.map(|w| w.dims().to_vec()), Some(vec![2, 4, 6]));
    assert!(MultiheadAttention::new(&mut ctx, 8, 3).is_err());
    Ok(())
}

/// Dropout on the attention weights (PyTorch's `MultiheadAttention(dropout=p)`): in training
/// about a fraction p of the returned weights are zero and the rest scaled by 1/(1 - p); the
/// output is exactly those weights applied to the projected values; eval mode is the plain
/// attention; gradients reach every parameter.
#[test]
fn multihead_attention_drops_attention_weights_in_training_only() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let mut ctx = Ctx::new(&dev, 3);
    let p = 0.4;
    let mut attn = MultiheadAttention::new(&mut ctx, 8, 1)?
        .batch_first()
        .with_dropout(p)?;
    assert!(MultiheadAttention::new(&mut ctx, 8, 1)?
        .with_dropout(1.0)
        .is_err());
    let x = Tensor::randn(&[2, 16, 8], &dev)?;
    let masks = AttentionMasks::default();
    let (y, w) = attn.forward(&x, &x, &x, &masks, true)?;
    let w = w.expect("weights were asked for");
    // One head: the returned weights are the head's, after dropout.
    let wv = w.to_vec_f64()?;
    let zeros = wv.iter().filter(|&&v| v == 0.0).count() as f64 / wv.len() as f64;
    assert!(
        (zeros - p).abs() < 0.08,
        "dropped fraction {zeros}, p = {p}"
    );
    // Eval: no dropout, rows of the weights sum to 1; kept training weights are the eval ones
    // scaled by 1/(1 - p).
    attn.set_training(false);
    let (y_eval, w_eval) = no_grad(|| attn.forward(&x, &x, &x, &masks, true))?;
    let we = w_eval.expect("weights").to_vec_f64()?;
    for (&d, &e) in wv.iter().zip(&we) {
        assert!(d == 0.0 || (d - e / (1.0 - p)).abs() < 1e-5, "{d} vs {e}");
    }
    for row in we.chunks(16) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    }
    assert!(
        max_diff(&y, &y_eval)? > 1e-3,
        "training output equals eval output"
    );
    // The output is the dropped weights applied to the projected values, then out_proj.
    let wi = attn.in_proj_weight.as_ref().expect("packed").tensor();
    let bi = attn.in_proj_bias.as_ref().expect("bias").tensor();
    let v = x.linear(&wi.narrow(0, 16, 8)?, Some(&bi.narrow(0, 16, 8)?))?;
    let want = attn.out_proj.forward(&w.matmul(&v)?)?;
    let d = max_diff(&y, &want)?;
    assert!(d < 1e-5, "output vs weights · values: {d}");
    // Gradients reach every parameter through the dropped weights.
    attn.set_training(true);
    let (y, _) = attn.forward(&x, &x, &x, &masks, false)?;
    let grads = y.square()?.sum_all()?.backward()?;
    for (name, prm) in attn.named_parameters() {
        assert!(grads.get(&prm.tensor()).is_some(), "no gradient for {name}");
    }
    Ok(())
}

#[test]
fn rotary_embeddings_rotate_and_depend_on_relative_position_only() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let q = Tensor::randn(&[1, 8], &dev)?.to_dtype(DType::F64)?;
    let k = Tensor::randn(&[1, 8], &dev)?.to_dtype(DType::F64)?;
    let norm = |t: &Tensor| -> Result<f64> { t.square()?.sum_all()?.to_scalar() };
    let score = |m: usize, n: usize| -> Result<f64> {
        let a = rotary_embedding(&q, m, 10000.0)?;
        let b = rotary_embedding(&k, n, 10000.0)?;
        a.mul(&b)?.sum_all()?.to_scalar()
    };
    let r = rotary_embedding(&q, 5, 10000.0)?;
    assert!((norm(&r)? - norm(&q)?).abs() < 1e-12);
    assert!((score(7, 3)? - score(24, 20)?).abs() < 1e-10);
    assert!((score(7, 3)? - score(7, 4)?).abs() > 1e-6);
    // At position 0 nothing turns.
    assert!(max_diff(&rotary_embedding(&q, 0, 10000.0)?, &q)? < 1e-15);
    let x = Tensor::randn(&[2, 3, 6], &dev)?.to_dtype(DType::F64)?;
    gradcheck(
        |x: &[Tensor]| rotary_embedding(&x[0], 2, 100.0),
        &[x],
        GradcheckOptions::default(),
    )?;
    Ok(())
}

#[test]
fn the_sinusoidal_table_is_the_papers() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let ctx = Ctx::new(&dev, 0).with_dtype(DType::F64);
    let pe = SinusoidalPositionalEncoding::new(&ctx, 16, 6)?;
    let y = pe.forward(&Tensor::zeros(&[2, 3, 6], DType::F64, &dev)?)?;
    let v = y.to_vec::<f64>()?;
    // Position 2 of the first batch: sin(2), cos(2), sin(2/10000^(2/6)), ...
    let p = 2.0f64;
    let want = [
        p.sin(),
        p.cos(),
        (p / 10000f64.powf(2.0 / 6.0)).sin(),
        (p / 10000f64.powf(2.0 / 6.0)).cos(),
        (p / 10000f64.powf(4.0 / 6.0)).sin(),
        (p / 10000f64.powf(4.0 / 6.0)).cos(),
    ];
    for (g, w) in v[12..18].iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{g} vs {w}");
    }
    assert!(pe
        .forward(&Tensor::zeros(&[17, 6], DType::F64, &dev)?)
        .is_err());
    Ok(())
}

// The custom block of the README: pre-norm causal self-attention with rotary positions,
// written as a derived module.
use tessera::nn::Linear;
use tessera::ops::attention::scaled_dot_product_attention;

#[derive(Module)]
struct RotaryAttention {
    norm: LayerNorm,
    qkv: Linear,
    out: Linear,
    #[module(skip)]
    heads: usize,
}

impl RotaryAttention {
    fn new(ctx: &mut Ctx, d: usize, heads: usize) -> Result<Self> {
        Ok(RotaryAttention {
            norm: LayerNorm::new(ctx, &[d])?,
            qkv: Linear::new(ctx, d, 3 * d)?,
            out: Linear::new(ctx, d, d)?,
            heads,
        })
    }
}

impl Forward for RotaryAttention {
    /// `x + out(SDPA(rope(q), rope(k), v))` with q, k, v from `qkv(norm(x))`; `x` `[N, T, D]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [n, t, d] = [0, 1, 2].map(|i| x.dims()[i] as isize);
        let h = self.heads as isize;
        let qkv = self
            .qkv
            .forward(&self.norm.forward(x)?)?
            .reshape(&[n, t, 3, h, d / h])?
            .permute(&[2, 0, 3, 1, 4])?; // [3, N, H, T, D/H]
        let part = |i| qkv.narrow(0, i, 1)?.squeeze(0);
        let q = rotary_embedding(&part(0)?, 0, 10000.0)?;
        let k = rotary_embedding(&part(1)?, 0, 10000.0)?;
        let y = scaled_dot_product_attention(&q, &k, &part(2)?, None, true, None)?;
        x.add(&self.out.forward(&y.transpose(1, 2)?.reshape(&[n, t, d])?)?)
    }
}

#[test]
fn a_custom_rotary_attention_block_is_causal_and_trains() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let block = RotaryAttention::new(&mut Ctx::new(&dev, 0), 8, 2)?;
    assert_eq!(
        names(&block),
        [
            "norm.weight",
            "norm.bias",
            "qkv.weight",
            "qkv.bias",
            "out.weight",
            "out.bias"
        ]
    );
    let x = Tensor::randn(&[2, 5, 8], &dev)?;
    let y = block.forward(&x)?;
    // Changing the last position leaves the earlier outputs alone.
    let later = Tensor::concat(&[&x.narrow(1, 0, 4)?, &Tensor::randn(&[2, 1, 8], &dev)?], 1)?;
    let y2 = block.forward(&later)?;
    assert!(max_diff(&y.narrow(1, 0, 4)?, &y2.narrow(1, 0, 4)?)? < 1e-6);
    assert!(max_diff(&y.narrow(1, 4, 1)?, &y2.narrow(1, 4, 1)?)? > 1e-3);
    let grads = y.square()?.sum_all()?.backward()?;
    for (name, p) in block.named_parameters() {
        assert!(grads.get(&p.tensor()).is_some(), "no gradient for {name}");
    }
    Ok(())
}
