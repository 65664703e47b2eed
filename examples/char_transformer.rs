//! A character transformer (the zoo's `CharTransformer`: token and learned position
//! embeddings, pre-norm encoder layers with the causal mask, a final LayerNorm and a linear
//! head) trained on the embedded *Pride and Prejudice*: the first 90 % of the characters
//! train, the last 10 % validate. Ends with `validation bits/char: X` — the whole last 10 %,
//! cut into consecutive windows of the context length (the last one shorter), each window
//! predicted from its own start — and a generated sample.
//!
//! `cargo run --release --example char_transformer [STEPS] [LR]` (defaults: 2400 steps, peak
//! learning rate 2e-3). `tessera train --model chartransformer --data text` runs the same
//! recipe with checkpoints, metrics and curves.

use tessera::nn::loss::cross_entropy;
use tessera::nn::zoo::CharTransformer;
use tessera::nn::{Ctx, Module};
use tessera::optim::{clip_grad_norm, Optimizer};
use tessera::prelude::*;
use tessera::text::{bits_per_char, default_config, random_windows, Corpus, WARMUP};

const BATCH: usize = 32;

fn main() -> Result<()> {
    let arg = |i: usize| std::env::args().nth(i);
    let steps: usize = arg(1).and_then(|a| a.parse().ok()).unwrap_or(2400);
    let base_lr: f64 = arg(2).and_then(|a| a.parse().ok()).unwrap_or(2e-3);
    let corpus = Corpus::load("text")?;
    println!(
        "{} characters, vocabulary {}, {} train / {} validation",
        corpus.train.len() + corpus.valid.len(),
        corpus.vocab.len(),
        corpus.train.len(),
        corpus.valid.len()
    );
    let dev = Device::parse("cpu")?;
    let config = default_config(corpus.vocab.len());
    let model = CharTransformer::new(&mut Ctx::new(&dev, 0), config)?;
    println!("{} parameters", model.num_parameters());
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
        let (x, y) = random_windows(&corpus.train, BATCH, config.context, 0, step, &dev)?;
        let logits = model.logits(&x)?;
        let loss = cross_entropy(
            &logits.reshape(&[-1, config.vocab as isize])?,
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
    let (bpc, _) = bits_per_char(&model, &corpus.valid, &dev)?;
    println!("validation bits/char: {bpc:.3}");

    // 300 characters at temperature 0.8, each from the last `context` characters.
    let index = |c: char| {
        corpus
            .vocab
            .binary_search(&c)
            .map(|i| i as i64)
            .unwrap_or(0)
    };
    let prompt = "It is a truth universally acknowledged";
    let mut out: Vec<i64> = prompt.chars().map(index).collect();
    for draw in 0..300u64 {
        let window = &out[out.len().saturating_sub(config.context)..];
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
    let sample: String = out.iter().map(|&i| corpus.vocab[i as usize]).collect();
    println!("sample:\n{sample}");
    Ok(())
}
