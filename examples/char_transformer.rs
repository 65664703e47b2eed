//! A character transformer (the zoo's `CharTransformer`: token and learned position
//! embeddings, pre-norm encoder layers with the causal mask, a final LayerNorm and a linear
//! head) trained on the embedded *Pride and Prejudice*: the first 90 % of the characters
//! train, the last 10 % validate. Ends with `validation bits/char: X` — the whole last 10 %,
//! cut into consecutive windows of the context length (the last one shorter), each window
//! predicted from its own start — and a generated sample.
//!
//! `cargo run --release --example char_transformer [STEPS]`

use std::collections::BTreeSet;
use tessera::nn::loss::{cross_entropy, CrossEntropy, Reduction};
use tessera::nn::zoo::{CharTransformer, CharTransformerConfig};
use tessera::nn::{Ctx, Module};
use tessera::optim::{clip_grad_norm, Optimizer};
use tessera::prelude::*;

const BATCH: usize = 32;
const CONTEXT: usize = 128;
const WARMUP: usize = 200;

/// `BATCH` random windows of `CONTEXT + 1` characters: inputs and next-character targets.
fn batch(ids: &[i64], step: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for b in 0..BATCH {
        let u = tessera::random::uniform(7, (step * BATCH + b) as u64);
        let at = (u * (ids.len() - CONTEXT - 1) as f64) as usize;
        x.extend_from_slice(&ids[at..at + CONTEXT]);
        y.extend_from_slice(&ids[at + 1..at + CONTEXT + 1]);
    }
    Ok((
        Tensor::from_vec(x, &[BATCH, CONTEXT], dev)?,
        Tensor::from_vec(y, &[BATCH, CONTEXT], dev)?,
    ))
}

/// Bits per character over `ids` cut into consecutive windows of `CONTEXT` (the last one
/// shorter), each predicted from its own start.
fn bits_per_char(model: &CharTransformer, ids: &[i64], dev: &Device) -> Result<f64> {
    let vocab = model.config.vocab as isize;
    let (mut nats, mut count) = (0.0, 0usize);
    // Window at s: inputs ids[s..s+t], targets ids[s+1..s+t+1].
    let mut s = 0;
    while s + 1 < ids.len() {
        let t = CONTEXT.min(ids.len() - 1 - s);
        let x = Tensor::from_vec(ids[s..s + t].to_vec(), &[1, t], dev)?;
        let y = Tensor::from_vec(ids[s + 1..s + t + 1].to_vec(), &[t], dev)?;
        let logits = no_grad(|| model.logits(&x))?.reshape(&[-1, vocab])?;
        nats += CrossEntropy::new()
            .reduction(Reduction::Sum)
            .forward(&logits, &y)?
            .to_scalar()?;
        count += t;
        s += t;
    }
    Ok(nats / count as f64 / std::f64::consts::LN_2)
}

fn main() -> Result<()> {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3000);
    let text = tessera::data::embedded_text();
    let vocab: Vec<char> = text.chars().collect::<BTreeSet<_>>().into_iter().collect();
    let index = |c: char| vocab.binary_search(&c).map(|i| i as i64).unwrap_or(0);
    let ids: Vec<i64> = text.chars().map(index).collect();
    let cut = ids.len() * 9 / 10;
    let (train, valid) = (&ids[..cut], &ids[cut..]);
    println!(
        "{} characters, vocabulary {}, {} train / {} validation",
        ids.len(),
        vocab.len(),
        train.len(),
        valid.len()
    );

    let dev = Device::parse("cpu")?;
    let config = CharTransformerConfig {
        vocab: vocab.len(),
        context: CONTEXT,
        d_model: 128,
        heads: 4,
        dim_feedforward: 512,
        layers: 3,
    };
    let model = CharTransformer::new(&mut Ctx::new(&dev, 0), config)?;
    println!("{} parameters", model.num_parameters());
    let base_lr = 1e-3;
    let mut opt = tessera::optim::Adam::adamw(model.parameters(), base_lr).weight_decay(0.01);
    let cosine = tessera::optim::Schedule::Cosine {
        t_max: steps.saturating_sub(WARMUP).max(1),
        eta_min: 0.0,
    };
    let t0 = std::time::Instant::now();
    for step in 0..steps {
        let lr = if step < WARMUP {
            base_lr * (step + 1) as f64 / WARMUP as f64
        } else {
            cosine.lr(base_lr, step - WARMUP)
        };
        opt.set_lr(lr);
        let (x, y) = batch(train, step, &dev)?;
        let logits = model.logits(&x)?;
        let loss = cross_entropy(
            &logits.reshape(&[-1, vocab.len() as isize])?,
            &y.reshape(&[-1])?,
        )?;
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &model.parameters(), 1.0)?;
        opt.step(&grads)?;
        if (step + 1) % 100 == 0 {
            eprintln!(
                "step {}: train {:.3} bits/char, {:.0} s",
                step + 1,
                loss.to_scalar()? / std::f64::consts::LN_2,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "trained {steps} steps in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    println!(
        "validation bits/char: {:.3}",
        bits_per_char(&model, valid, &dev)?
    );

    // 300 characters at temperature 0.8, each from the last CONTEXT characters.
    let prompt = "It is a truth universally acknowledged";
    let mut out: Vec<i64> = prompt.chars().map(index).collect();
    for draw in 0..300u64 {
        let start = out.len().saturating_sub(CONTEXT);
        let window = &out[start..];
        let x = Tensor::from_vec(window.to_vec(), &[1, window.len()], &dev)?;
        let logits = no_grad(|| model.logits(&x))?;
        let p = logits
            .narrow(1, window.len() - 1, 1)?
            .reshape(&[-1])?
            .mul_scalar(1.0 / 0.8)?
            .softmax(0)?
            .to_vec::<f32>()?;
        let u = tessera::random::uniform(42, draw) as f32;
        let (mut acc, mut next) = (0.0, p.len() - 1);
        for (i, q) in p.iter().enumerate() {
            acc += q;
            if u < acc {
                next = i;
                break;
            }
        }
        out.push(next as i64);
    }
    let sample: String = out.iter().map(|&i| vocab[i as usize]).collect();
    println!("sample:\n{sample}");
    Ok(())
}
