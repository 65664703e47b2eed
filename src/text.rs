//! Character-level language modelling on text: the corpus and its split, validation bits per
//! character, and `tessera train --model chartransformer --data text` / `tessera eval FILE
//! --model chartransformer --data text`.
//!
//! The corpus is the embedded *Pride and Prejudice* (`--data text`) or a UTF-8 file
//! (`--data path/to/file.txt`). Character ids are the sorted distinct characters of the whole
//! text; the first 90 % of the characters train, the last 10 % validate. Validation bits per
//! character are measured over the whole last 10 %, cut into consecutive windows of the
//! context length (the last one shorter), each window predicted from its own start.

use crate::train::{
    append_line, next_epoch, open_run, print_line, restart_metrics, Progress, Stdout, TrainOptions,
    TrainReport,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tessera_core::{no_grad, Device, Error, Result, Tensor};
use tessera_nn::checkpoint::{load_model, save_model};
use tessera_nn::loss::{cross_entropy, CrossEntropy, Reduction};
use tessera_nn::optim::{clip_grad_norm, Adam, Optimizer, Schedule};
use tessera_nn::zoo::{CharTransformer, CharTransformerConfig};
use tessera_nn::{Ctx, Module};

/// A corpus as character ids, split 90 / 10.
pub struct Corpus {
    /// The sorted distinct characters; id `i` is `vocab[i]`.
    pub vocab: Vec<char>,
    pub train: Vec<i64>,
    pub valid: Vec<i64>,
}

impl Corpus {
    /// `text` (the embedded novel) or a UTF-8 file.
    pub fn load(name: &str) -> Result<Corpus> {
        let text = if name == "text" {
            crate::data::embedded_text().to_string()
        } else {
            let bytes = tessera_nn::checkpoint::read_bounded(Path::new(name), 1 << 30)?;
            String::from_utf8(bytes).map_err(|e| Error::BadFile {
                path: name.into(),
                msg: format!("not UTF-8 text: {e}"),
            })?
        };
        Corpus::from_text(&text)
    }

    /// Ids of `text`, split 90 / 10.
    pub fn from_text(text: &str) -> Result<Corpus> {
        let vocab: Vec<char> = text
            .chars()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let ids: Vec<i64> = text
            .chars()
            .map(|c| vocab.binary_search(&c).map(|i| i as i64).unwrap_or(0))
            .collect();
        let cut = ids.len() * 9 / 10;
        if cut < 2 || ids.len() - cut < 2 {
            return Err(Error::invalid(
                "text",
                format!("{} characters are too few to split 90/10", ids.len()),
            ));
        }
        Ok(Corpus {
            vocab,
            valid: ids[cut..].to_vec(),
            train: ids[..cut].to_vec(),
        })
    }
}

/// `batch` random windows of `context + 1` ids of `ids` (drawn from `(seed, step)`): inputs
/// `[batch, context]` and next-character targets.
pub fn random_windows(
    ids: &[i64],
    batch: usize,
    context: usize,
    seed: u64,
    step: usize,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let span = ids.len().saturating_sub(context + 1);
    if span == 0 {
        return Err(Error::invalid(
            "text",
            format!(
                "{} training characters are too few for windows of {context}",
                ids.len()
            ),
        ));
    }
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for b in 0..batch {
        let u = tessera_core::random::uniform(seed, (step * batch + b) as u64);
        let at = ((u * span as f64) as usize).min(span - 1);
        x.extend_from_slice(&ids[at..at + context]);
        y.extend_from_slice(&ids[at + 1..at + context + 1]);
    }
    Ok((
        Tensor::from_vec(x, &[batch, context], dev)?,
        Tensor::from_vec(y, &[batch, context], dev)?,
    ))
}

/// Validation bits per character (see the module docs) and next-character accuracy.
pub fn bits_per_char(model: &CharTransformer, ids: &[i64], dev: &Device) -> Result<(f64, f64)> {
    let (context, vocab) = (model.config.context, model.config.vocab as isize);
    let (mut nats, mut count, mut correct) = (0.0, 0usize, 0usize);
    let mut s = 0;
    while s + 1 < ids.len() {
        let t = context.min(ids.len() - 1 - s);
        let x = Tensor::from_vec(ids[s..s + t].to_vec(), &[1, t], dev)?;
        let y = Tensor::from_vec(ids[s + 1..s + t + 1].to_vec(), &[t], dev)?;
        let logits = no_grad(|| model.logits(&x))?.reshape(&[-1, vocab])?;
        nats += CrossEntropy::new()
            .reduction(Reduction::Sum)
            .forward(&logits, &y)?
            .to_scalar()?;
        correct += logits.argmax(1, false)?.eq(&y)?.sum_all()?.to_scalar()? as usize;
        count += t;
        s += t;
    }
    Ok((
        nats / count.max(1) as f64 / std::f64::consts::LN_2,
        correct as f64 / count.max(1) as f64,
    ))
}

/// The character transformer of the CLI (the data README's reference sizes): d 128, 4 heads,
/// feed-forward 512, 3 pre-norm layers, context 128.
pub fn default_config(vocab: usize) -> CharTransformerConfig {
    CharTransformerConfig {
        vocab,
        context: 128,
        d_model: 128,
        heads: 4,
        dim_feedforward: 512,
        layers: 3,
    }
}

/// Steps of one "epoch" of text training: progress, metrics and checkpoints come per epoch.
pub const STEPS_PER_EPOCH: usize = 300;
/// Linear warm-up steps before the cosine decay.
pub const WARMUP: usize = 200;

/// `tessera train --model chartransformer --data text`: AdamW (weight decay 0.01), warm-up then
/// cosine decay, gradient clipping at 1, random windows; `epochs` × 300 steps. Writes
/// `metrics.jsonl` (losses in nats per character, accuracies of the next character),
/// `curves.png`, `last.safetensors` and `best.safetensors` (lowest validation loss), and ends
/// with `validation bits/char: X`.
pub fn train(opts: &TrainOptions, device: &Device) -> Result<TrainReport> {
    let start = Instant::now();
    let mut opts = opts.clone();
    // A resumed run keeps the text, the seed (which picks every batch's windows), the optimizer
    // and the head count it was trained with.
    let resume_meta = match &opts.resume {
        Some(p) => Some(tessera_nn::checkpoint::load(p, device)?.metadata),
        None => None,
    };
    let mut heads = None;
    if let (Some(p), Some(m)) = (&opts.resume, &resume_meta) {
        if let Some(other) = m.get("model").filter(|v| *v != "chartransformer") {
            return Err(Error::invalid(
                "train",
                format!(
                    "{} is a checkpoint of {other}, not of chartransformer",
                    p.display()
                ),
            ));
        }
        if let Some(d) = m.get("data") {
            opts.data = d.clone();
        }
        if let Some(s) = m.get("seed").and_then(|s| s.parse().ok()) {
            opts.seed = s;
        }
        if let Some(o) = m.get("optimizer") {
            opts.optimizer = o.clone();
        }
        heads = m.get("heads").and_then(|h| h.parse().ok());
    }
    let opts = &opts;
    if opts.optimizer != "adamw" {
        return Err(Error::invalid(
            "train",
            format!(
                "the character transformer trains with --optimizer adamw, got {}",
                opts.optimizer
            ),
        ));
    }
    let corpus = Corpus::load(&opts.data)?;
    let mut config = default_config(corpus.vocab.len());
    if let Some(h) = heads {
        config.heads = h;
    }
    let model = CharTransformer::new(&mut Ctx::new(device, opts.seed), config)?;
    let base_lr = opts.lr.unwrap_or(2e-3);
    let mut optimizer = Adam::adamw(model.parameters(), base_lr).weight_decay(0.01);
    let mut first_epoch = 1;
    if let Some(p) = &opts.resume {
        // The weights and AdamW's moments and step count; a checkpoint of other sizes is an
        // error naming the tensor.
        let meta = load_model(p, &model, Some(&mut optimizer), device)?;
        first_epoch = next_epoch(p, &meta, opts.epochs)?;
    }
    let total = opts.epochs * STEPS_PER_EPOCH;
    let cosine = Schedule::Cosine {
        t_max: total.saturating_sub(WARMUP).max(1),
        eta_min: 0.0,
    };
    let (out_dir, _lock) = open_run(
        opts.out.as_deref(),
        "chartransformer-text",
        (opts.resume.is_some(), true),
        opts.overwrite,
    )?;
    let metrics_path = out_dir.join("metrics.jsonl");
    // The history continues the checkpoint's (lines of later epochs are dropped).
    let history = restart_metrics(&metrics_path, first_epoch)?;
    let mut out = Stdout::default();
    out.line(format_args!(
        "training chartransformer on {} ({} train / {} validation characters, vocabulary {}) on {device} for {} steps, batch {} x {}, adamw lr {base_lr}, {} parameters",
        opts.data,
        corpus.train.len(),
        corpus.valid.len(),
        corpus.vocab.len(),
        total,
        opts.batch_size,
        config.context,
        model.num_parameters()
    ));
    // test_loss is the validation loss in nats per character.
    let mut best = history
        .iter()
        .map(|m| m.test_loss / std::f64::consts::LN_2)
        .fold(f64::INFINITY, f64::min);
    let mut last_bpc = f64::NAN;
    for epoch in first_epoch..=opts.epochs {
        let t0 = Instant::now();
        let progress = Progress::new(epoch, opts.epochs, STEPS_PER_EPOCH);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        for i in 0..STEPS_PER_EPOCH {
            let step = (epoch - 1) * STEPS_PER_EPOCH + i;
            let lr = if step < WARMUP {
                base_lr * (step + 1) as f64 / WARMUP as f64
            } else {
                cosine.lr(base_lr, step - WARMUP)
            };
            optimizer.set_lr(lr);
            let (x, y) = random_windows(
                &corpus.train,
                opts.batch_size,
                config.context,
                opts.seed,
                step,
                device,
            )?;
            let logits = model.logits(&x)?.reshape(&[-1, config.vocab as isize])?;
            let y = y.reshape(&[-1])?;
            let loss = cross_entropy(&logits, &y)?;
            let value = loss.to_scalar()?;
            if !value.is_finite() {
                progress.finish();
                return Err(Error::NonFinite {
                    op: "train (loss; the last good checkpoint is kept)",
                    step,
                    value,
                });
            }
            let mut grads = loss.backward()?;
            clip_grad_norm(&mut grads, &model.parameters(), 1.0)?;
            optimizer.step(&grads)?;
            let n = y.numel();
            correct += logits.argmax(1, false)?.eq(&y)?.sum_all()?.to_scalar()? as usize;
            loss_sum += value * n as f64;
            seen += n;
            progress.update(
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                seen as f64 / t0.elapsed().as_secs_f64(),
            );
        }
        progress.finish();
        let (bpc, acc) = bits_per_char(&model, &corpus.valid, device)?;
        let secs = t0.elapsed().as_secs_f64();
        let (train_loss, train_acc) = (loss_sum / seen as f64, correct as f64 / seen as f64);
        let valid_loss = bpc * std::f64::consts::LN_2;
        out.line(format_args!(
            "epoch {epoch}/{}: train loss {train_loss:.4} acc {train_acc:.4} | validation {bpc:.3} bits/char acc {acc:.4} | {secs:.1} s",
            opts.epochs
        ));
        let line = format!(
            "{{\"epoch\":{epoch},\"train_loss\":{train_loss},\"train_accuracy\":{train_acc},\"test_loss\":{valid_loss},\"test_accuracy\":{acc},\"validation_bits_per_char\":{bpc},\"seconds\":{secs},\"lr\":{}}}\n",
            optimizer.lr()
        );
        append_line(&metrics_path, &line)?;
        let meta = BTreeMap::from([
            ("model".to_string(), "chartransformer".to_string()),
            ("data".to_string(), opts.data.clone()),
            ("epoch".to_string(), epoch.to_string()),
            ("heads".to_string(), config.heads.to_string()),
            ("validation_bits_per_char".to_string(), format!("{bpc:.4}")),
            ("optimizer".to_string(), opts.optimizer.clone()),
            ("seed".to_string(), opts.seed.to_string()),
        ]);
        save_model(
            &out_dir.join("last.safetensors"),
            &model,
            Some(&optimizer),
            &meta,
        )?;
        let history = crate::plot::read_metrics(&metrics_path)?;
        crate::plot::write_curves(
            &out_dir.join("curves.png"),
            &format!("chartransformer on {}", opts.data),
            &history,
        )?;
        if bpc < best {
            best = bpc;
            save_model(
                &out_dir.join("best.safetensors"),
                &model,
                Some(&optimizer),
                &meta,
            )?;
        }
        last_bpc = bpc;
        if out.closed {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    out.line(format_args!(
        "wrote {} (best {best:.3} bits/char) in {seconds:.1} s",
        out_dir.display()
    ));
    out.line(format_args!("validation bits/char: {last_bpc:.3}"));
    Ok(TrainReport {
        test_accuracy: last_bpc,
        best_accuracy: best,
        best_epoch: 0,
        out_dir,
        seconds,
    })
}

/// `tessera eval FILE --model chartransformer --data text [--heads N]`: validation bits per
/// character of a checkpoint of ours or of a PyTorch `state_dict` of the same module (its sizes
/// read from the tensor shapes; the head count from `heads`, else the checkpoint's metadata,
/// else 4).
pub fn eval(ckpt: &Path, data_name: &str, heads: Option<usize>, device: &Device) -> Result<f64> {
    let loaded = tessera_nn::checkpoint::load(ckpt, device)?;
    let heads = heads
        .or_else(|| loaded.metadata.get("heads").and_then(|h| h.parse().ok()))
        .unwrap_or(4);
    let tensors: Vec<(String, Tensor)> = loaded.tensors.into_iter().collect();
    let config = CharTransformer::config_from(&tensors, heads)?;
    let corpus = Corpus::load(data_name)?;
    if config.vocab != corpus.vocab.len() {
        return Err(Error::invalid(
            "eval",
            format!(
                "{} has a vocabulary of {} characters, {data_name} has {}",
                ckpt.display(),
                config.vocab,
                corpus.vocab.len()
            ),
        ));
    }
    if config.d_model % heads != 0 {
        return Err(Error::invalid(
            "eval",
            format!(
                "--heads {heads} does not divide the width {}",
                config.d_model
            ),
        ));
    }
    let model = CharTransformer::new(&mut Ctx::new(device, 0), config)?;
    load_model(ckpt, &model, None, device)?;
    let (bpc, acc) = bits_per_char(&model, &corpus.valid, device)?;
    print_line(format_args!(
        "chartransformer ({} layers, d {}, {heads} heads, context {}) on {data_name}: next-character accuracy {acc:.4}",
        config.layers, config.d_model, config.context
    ))?;
    print_line(format_args!("validation bits/char: {bpc:.3}"))?;
    Ok(bpc)
}
