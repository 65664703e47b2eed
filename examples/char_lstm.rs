//! A character-level LSTM language model with embeddings and truncated backpropagation through
//! time, on the embedded *Pride and Prejudice* (or a text file given as the argument). Prints
//! the bits per character on held-out text and a sample.
//!
//! `cargo run --release --example char_lstm [FILE] [STEPS]`

use std::collections::BTreeSet;
use tessera::nn::loss::{cross_entropy, CrossEntropy, Reduction};
use tessera::nn::zoo::CharLstm;
use tessera::nn::{Ctx, Module};
use tessera::optim::clip_grad_norm;
use tessera::prelude::*;

const BATCH: usize = 32;
const SEQ: usize = 64;

/// `n` parallel streams of the ids, cut into chunks of `SEQ` (+1 for the targets).
fn streams(ids: &[i64], n: usize) -> Vec<Vec<i64>> {
    let len = ids.len() / n;
    (0..n)
        .map(|i| ids[i * len..(i + 1) * len].to_vec())
        .collect()
}

fn chunk(streams: &[Vec<i64>], at: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let (mut x, mut y) = (vec![], vec![]);
    for s in streams {
        x.extend_from_slice(&s[at..at + SEQ]);
        y.extend_from_slice(&s[at + 1..at + SEQ + 1]);
    }
    Ok((
        Tensor::from_vec(x, &[streams.len(), SEQ], dev)?,
        Tensor::from_vec(y, &[streams.len(), SEQ], dev)?,
    ))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let text = match args.first().filter(|a| a.parse::<usize>().is_err()) {
        Some(path) => std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?,
        None => tessera::data::embedded_text().to_string(),
    };
    let steps: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(900);
    let vocab: Vec<char> = text.chars().collect::<BTreeSet<_>>().into_iter().collect();
    let index = |c: char| vocab.binary_search(&c).map(|i| i as i64).unwrap_or(0);
    let ids: Vec<i64> = text.chars().map(index).collect();
    let cut = ids.len() * 9 / 10;
    let (train_ids, held_out) = (&ids[..cut], &ids[cut..]);
    println!(
        "{} characters, vocabulary {}, {} train / {} held out",
        ids.len(),
        vocab.len(),
        train_ids.len(),
        held_out.len()
    );

    let dev = Device::parse("cpu")?;
    let model = CharLstm::new(&mut Ctx::new(&dev, 0), vocab.len(), 32, 128, 1)?;
    let mut opt = tessera::optim::Adam::new(model.parameters(), 3e-3);
    let train_streams = streams(train_ids, BATCH);
    let per_stream = train_streams[0].len();
    let mut state: Option<(Tensor, Tensor)> = None;
    let (mut at, t0) = (0, std::time::Instant::now());
    for step in 1..=steps {
        if at + SEQ + 1 > per_stream {
            at = 0;
            state = None;
        }
        let (x, y) = chunk(&train_streams, at, &dev)?;
        at += SEQ;
        let (logits, out) = model.forward_with_state(&x, state.as_ref().map(|(h, c)| (h, c)))?;
        let loss = cross_entropy(
            &logits.reshape(&[-1, vocab.len() as isize])?,
            &y.reshape(&[-1])?,
        )?;
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &model.parameters(), 1.0)?;
        opt.step(&grads)?;
        // Truncated BPTT: carry the state's values, not its graph.
        state = Some((
            out.h_n.detach(),
            out.c_n.map(|c| c.detach()).unwrap_or(out.h_n.detach()),
        ));
        if step % 100 == 0 {
            let bpc = loss.to_scalar()? / std::f64::consts::LN_2;
            eprintln!(
                "step {step}: train {bpc:.3} bits/char, {:.1} s",
                t0.elapsed().as_secs_f64()
            );
        }
    }

    // Held-out bits per character, state carried across chunks.
    let eval_streams = streams(&held_out[..held_out.len().min(BATCH * 1024)], BATCH);
    let (mut nats, mut count, mut state): (f64, usize, Option<(Tensor, Tensor)>) = (0.0, 0, None);
    let mut at = 0;
    while at + SEQ < eval_streams[0].len() {
        let (x, y) = chunk(&eval_streams, at, &dev)?;
        let (logits, out) =
            no_grad(|| model.forward_with_state(&x, state.as_ref().map(|(h, c)| (h, c))))?;
        nats += CrossEntropy::new()
            .reduction(Reduction::Sum)
            .forward(
                &logits.reshape(&[-1, vocab.len() as isize])?,
                &y.reshape(&[-1])?,
            )?
            .to_scalar()?;
        count += y.numel();
        state = Some((out.h_n, out.c_n.unwrap_or_else(|| x.clone())));
        at += SEQ;
    }
    println!(
        "held-out: {:.3} bits per character over {count} characters",
        nats / count as f64 / std::f64::consts::LN_2
    );

    // Sample 300 characters at temperature 0.8 from a prompt.
    let prompt = "It is a truth universally acknowledged";
    let mut out_text = String::from(prompt);
    let mut state: Option<(Tensor, Tensor)> = None;
    let mut input: Vec<i64> = prompt.chars().map(index).collect();
    for draw in 0..300u64 {
        let x = Tensor::from_vec(input.clone(), &[1, input.len()], &dev)?;
        let (logits, out) =
            no_grad(|| model.forward_with_state(&x, state.as_ref().map(|(h, c)| (h, c))))?;
        state = Some((out.h_n, out.c_n.unwrap_or_else(|| x.clone())));
        let last = logits
            .narrow(1, input.len() - 1, 1)?
            .reshape(&[-1])?
            .mul_scalar(1.0 / 0.8)?
            .softmax(0)?
            .to_vec::<f32>()?;
        let u = tessera::random::uniform(42, draw) as f32;
        let (mut acc, mut next) = (0.0, last.len() - 1);
        for (i, p) in last.iter().enumerate() {
            acc += p;
            if u < acc {
                next = i;
                break;
            }
        }
        out_text.push(vocab[next]);
        input = vec![next as i64];
    }
    println!("sample:\n{out_text}");
    Ok(())
}
