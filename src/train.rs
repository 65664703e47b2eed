//! The `tessera train` and `tessera eval` jobs: a model from the zoo on a dataset, with a
//! progress bar, per-epoch evaluation, `metrics.jsonl`, atomic checkpoints and resumption.

use crate::data::{self, Batch, DataLoader, LoaderOptions, Split};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tessera_core::{no_grad, DType, Device, Error, Result};
use tessera_nn::checkpoint::{load_model, save_model};
use tessera_nn::loss::{cross_entropy, CrossEntropy, Reduction};
use tessera_nn::optim::{Adam, Optimizer, Schedule, Sgd};
use tessera_nn::zoo::{GoogLeNetSmall, LeNet1998, LeNet5, Mlp};
use tessera_nn::{Ctx, Forward, Module};

/// Everything `tessera train` takes.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub model: String,
    pub data: String,
    pub epochs: usize,
    pub batch_size: usize,
    /// Defaults per optimizer: 0.05 for SGD (momentum 0.9), 0.001 for Adam/AdamW.
    pub lr: Option<f64>,
    pub optimizer: String,
    pub seed: u64,
    pub out: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    pub normalize: Option<(f32, f32)>,
    /// Cosine decay of the learning rate to 0 over all steps (else constant).
    pub cosine: bool,
    /// Augmentation of training images (random crop with padding, horizontal flips).
    pub augment: data::Augment,
    /// Train into an `out` folder that already holds a run, replacing it.
    pub overwrite: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            model: "lenet5".into(),
            data: "mnist-10k".into(),
            epochs: 10,
            batch_size: 64,
            lr: None,
            optimizer: "sgd".into(),
            seed: 0,
            out: None,
            resume: None,
            normalize: None,
            cosine: true,
            augment: data::Augment::default(),
            overwrite: false,
        }
    }
}

/// What a training run measured.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub test_accuracy: f64,
    pub best_accuracy: f64,
    pub best_epoch: usize,
    pub out_dir: PathBuf,
    pub seconds: f64,
}

/// Models `tessera train` can build, for data of `example_shape` with `classes` classes.
pub fn build_model(
    name: &str,
    example_shape: &[usize],
    classes: usize,
    ctx: &mut Ctx,
) -> Result<Box<dyn Forward>> {
    let image28 = example_shape == [1, 28, 28];
    let need28 = |m: &str| {
        Error::invalid(
            "train",
            format!("model {m} needs 1×28×28 images, the data has {example_shape:?}"),
        )
    };
    Ok(match name {
        "lenet5" if image28 => Box::new(LeNet5::new(ctx)?),
        "lenet1998" if image28 => Box::new(LeNet1998::new(ctx, false)?),
        "googlenet" if image28 => Box::new(GoogLeNetSmall::new(ctx, 1, classes)?),
        "lenet5" | "lenet1998" | "googlenet" => return Err(need28(name)),
        "mlp" => {
            let input: usize = example_shape.iter().product();
            Box::new(Mlp::new(ctx, &[input, 256, classes])?)
        }
        other => {
            return Err(Error::invalid(
                "train",
                format!("unknown model {other:?}: lenet5, lenet1998, googlenet, mlp"),
            ))
        }
    })
}

fn make_optimizer(opts: &TrainOptions, model: &dyn Module) -> Result<(Box<dyn Optimizer>, f64)> {
    let params = model.parameters();
    Ok(match opts.optimizer.as_str() {
        "sgd" => {
            let lr = opts.lr.unwrap_or(0.05);
            (Box::new(Sgd::new(params, lr).momentum(0.9)), lr)
        }
        "adam" => {
            let lr = opts.lr.unwrap_or(1e-3);
            (Box::new(Adam::new(params, lr)), lr)
        }
        "adamw" => {
            let lr = opts.lr.unwrap_or(1e-3);
            (Box::new(Adam::adamw(params, lr)), lr)
        }
        other => {
            return Err(Error::invalid(
                "train",
                format!("unknown optimizer {other:?}: sgd, adam, adamw"),
            ))
        }
    })
}

/// Mean loss and accuracy of `model` on `data` (eval mode, no gradients), and the confusion
/// matrix `[true][predicted]`.
pub fn evaluate(
    model: &dyn Forward,
    data: &Arc<data::Dataset>,
    device: &Device,
    normalize: Option<(f32, f32)>,
) -> Result<(f64, f64, Vec<Vec<usize>>)> {
    let loader = DataLoader::new(
        data.clone(),
        LoaderOptions {
            shuffle: false,
            normalize,
            ..LoaderOptions::new(500, 0)
        },
    )?;
    let (mut loss, mut correct, mut n) = (0.0, 0usize, 0usize);
    let k = data.classes;
    let mut confusion = vec![vec![0usize; k]; k];
    for batch in loader.epoch(0, device) {
        let Batch { inputs, labels } = batch?;
        let logits = no_grad(|| model.forward(&inputs))?;
        loss += CrossEntropy::new()
            .reduction(Reduction::Sum)
            .forward(&logits, &labels)?
            .to_scalar()?;
        let pred = logits.argmax(1, false)?.to_vec::<i64>()?;
        for (p, t) in pred.iter().zip(labels.to_vec::<i64>()?) {
            correct += (*p == t) as usize;
            if let Some(row) = confusion.get_mut(t as usize) {
                if let Some(cell) = row.get_mut(*p as usize) {
                    *cell += 1;
                }
            }
        }
        n += pred.len();
    }
    Ok((
        loss / n.max(1) as f64,
        correct as f64 / n.max(1) as f64,
        confusion,
    ))
}

/// One line on stdout for the commands that print a result: a closed or full stdout is an
/// [`Error::Io`], not a panic (`println!` panics). The binary's `say!` calls it too.
pub fn print_line(args: std::fmt::Arguments<'_>) -> Result<()> {
    writeln!(std::io::stdout(), "{args}").map_err(|e| Error::Io {
        path: "stdout".into(),
        source: e,
    })
}

/// `println!` through [`print_line`].
macro_rules! say {
    ($($t:tt)*) => {
        print_line(format_args!($($t)*))?
    };
}

/// Standard output that a closed pipe (`tessera train | head -1`) does not turn into a panic:
/// the first failed write marks it closed and later lines are dropped.
#[derive(Default)]
pub(crate) struct Stdout {
    pub(crate) closed: bool,
}

impl Stdout {
    pub(crate) fn line(&mut self, args: std::fmt::Arguments<'_>) {
        if !self.closed {
            self.closed = print_line(args).is_err();
        }
    }
}

/// The lock of a run folder (`.lock`, holding the owner's process id), released on drop. A
/// lock whose process is gone (a killed run) is taken over, and the killed run's temporary
/// checkpoint files are removed.
pub(crate) struct RunLock(PathBuf);

impl RunLock {
    pub(crate) fn take(dir: &Path) -> Result<RunLock> {
        let path = dir.join(".lock");
        let io = |e| Error::Io {
            path: path.display().to_string(),
            source: e,
        };
        let me = std::process::id().to_string();
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => f.write_all(me.as_bytes()).map_err(io)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Bounded: a `.lock` that is not our small file reads as no owner.
                let owner = tessera_nn::checkpoint::read_bounded(&path, 64)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let alive = owner
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                if alive {
                    return Err(Error::invalid(
                        "train",
                        format!(
                            "{} is in use by process {} (another run writes there)",
                            dir.display(),
                            owner.trim()
                        ),
                    ));
                }
                std::fs::write(&path, &me).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        }
        // Temporary files of checkpoints a killed run was writing (`.NAME.tmp.PID`).
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with('.') && name.contains(".tmp.") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(RunLock(path))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Shows progress: a bar on a terminal, a line per epoch otherwise.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub(crate) fn new(epoch: usize, epochs: usize, steps: usize) -> Progress {
        if !std::io::stdout().is_terminal() {
            return Progress { bar: None };
        }
        let bar = indicatif::ProgressBar::new(steps as u64);
        let style =
            indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(format!("{epoch}/{epochs}"));
        Progress { bar: Some(bar) }
    }
    pub(crate) fn update(&self, loss: f64, acc: f64, rate: f64) {
        if let Some(b) = &self.bar {
            b.set_message(format!("loss {loss:.4} acc {acc:.4} {rate:.0} ex/s"));
            b.inc(1);
        }
    }
    pub(crate) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

/// The run folder (`out`, else `runs/<default>-<unix seconds>`), created and locked; a folder
/// that already holds a run is refused unless `resuming` it or told to `overwrite` it (the
/// message offers `--resume` where the model `can_resume`).
pub(crate) fn open_run(
    out: Option<&Path>,
    default: &str,
    (resuming, can_resume): (bool, bool),
    overwrite: bool,
) -> Result<(PathBuf, RunLock)> {
    let out_dir = match out {
        Some(d) => d.to_path_buf(),
        None => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            PathBuf::from(format!("runs/{default}-{t}"))
        }
    };
    std::fs::create_dir_all(&out_dir).map_err(|e| Error::Io {
        path: out_dir.display().to_string(),
        source: e,
    })?;
    // One run per folder, and none over a finished run unless asked.
    let lock = RunLock::take(&out_dir)?;
    let holds_run = ["last.safetensors", "best.safetensors", "metrics.jsonl"]
        .iter()
        .any(|f| out_dir.join(f).exists());
    if holds_run && !resuming && !overwrite {
        let d = out_dir.display();
        let resume = if can_resume {
            format!("--resume {d}/last.safetensors to continue it, ")
        } else {
            String::new()
        };
        return Err(Error::invalid(
            "train",
            format!(
                "{d} already holds a run: pass {resume}--overwrite to replace it, or another --out"
            ),
        ));
    }
    Ok((out_dir, lock))
}

/// Appends `line` to the file at `path` (created if missing).
pub(crate) fn append_line(path: &Path, line: &str) -> Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })
}

/// Keeps the lines of `metrics.jsonl` for epochs before `first_epoch` and returns them. A fresh
/// run (`first_epoch == 1`) starts an empty file whatever was there; when resuming, a line that
/// is not an epoch record is a `BadFile` error.
pub(crate) fn restart_metrics(
    path: &Path,
    first_epoch: usize,
) -> Result<Vec<crate::plot::EpochMetrics>> {
    let io = |e| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) if first_epoch > 1 => t,
        Ok(_) => String::new(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let (mut kept, mut lines) = (vec![], String::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let m = crate::plot::parse_metrics_line(path, line)?;
        if m.epoch < first_epoch {
            kept.push(m);
            lines.push_str(line);
            lines.push('\n');
        }
    }
    std::fs::write(path, lines).map_err(io)?;
    Ok(kept)
}

/// The epoch a run resumed from checkpoint `path` (metadata `meta`) starts at: the one after
/// the checkpoint's; an error when that is past `epochs`.
pub(crate) fn next_epoch(
    path: &Path,
    meta: &BTreeMap<String, String>,
    epochs: usize,
) -> Result<usize> {
    let first = meta
        .get("epoch")
        .and_then(|e| e.parse::<usize>().ok())
        .map_or(1, |e| e + 1);
    if first > epochs {
        return Err(Error::invalid(
            "train",
            format!(
                "{} already finished epoch {} of {epochs}: nothing to train (raise --epochs)",
                path.display(),
                first - 1
            ),
        ));
    }
    Ok(first)
}

/// Trains `opts.model` on `opts.data`, printing progress and ending with `test accuracy: X`.
pub fn train(opts: &TrainOptions, device: &Device) -> Result<TrainReport> {
    // `--resume` of a character transformer's checkpoint continues it whatever --model says.
    let resumes_text = match &opts.resume {
        Some(p) => tessera_nn::checkpoint::load(p, device)?
            .metadata
            .get("model")
            .is_some_and(|m| m == "chartransformer"),
        None => false,
    };
    if opts.model == "chartransformer" || resumes_text {
        return crate::text::train(opts, device);
    }
    if opts.data == "text" {
        return Err(Error::invalid(
            "train",
            format!(
                "--data text is for --model chartransformer, not {}",
                opts.model
            ),
        ));
    }
    let start = Instant::now();
    let mut opts = opts.clone();
    // A resumed run keeps the model and data it was trained with.
    let resume_meta = match &opts.resume {
        Some(p) => Some(tessera_nn::checkpoint::load(p, device)?.metadata),
        None => None,
    };
    if let Some(m) = &resume_meta {
        // The model, data and optimizer (whose state the checkpoint holds) stay the run's.
        for (key, slot) in [
            ("model", &mut opts.model),
            ("data", &mut opts.data),
            ("optimizer", &mut opts.optimizer),
        ] {
            if let Some(v) = m.get(key) {
                *slot = v.clone();
            }
        }
    }
    let split: Split = data::load(&opts.data)?;
    let (train, test) = (Arc::new(split.train), Arc::new(split.test));
    for (what, set) in [("training", &train), ("test", &test)] {
        if set.is_empty() {
            return Err(Error::invalid(
                "train",
                format!(
                    "the {what} split of {} is empty: nothing to learn or measure",
                    opts.data
                ),
            ));
        }
    }
    let mut ctx = Ctx::new(device, opts.seed);
    let mut model = build_model(&opts.model, &train.example_shape, train.classes, &mut ctx)?;
    let (mut optimizer, base_lr) = make_optimizer(&opts, model.as_ref())?;
    let mut first_epoch = 1;
    if let Some(p) = &opts.resume {
        let meta = load_model(p, model.as_ref(), Some(optimizer.as_mut()), device)?;
        first_epoch = next_epoch(p, &meta, opts.epochs)?;
    }
    let default = format!("{}-{}", opts.model, opts.data.replace('/', "_"));
    let (out_dir, _lock) = open_run(
        opts.out.as_deref(),
        &default,
        (opts.resume.is_some(), true),
        opts.overwrite,
    )?;
    let loader = DataLoader::new(
        train.clone(),
        LoaderOptions {
            normalize: opts.normalize,
            augment: opts.augment,
            ..LoaderOptions::new(opts.batch_size, opts.seed)
        },
    )?;
    let steps_per_epoch = loader.batches_per_epoch();
    let schedule = if opts.cosine {
        Schedule::Cosine {
            t_max: opts.epochs * steps_per_epoch,
            eta_min: 0.0,
        }
    } else {
        Schedule::Constant
    };
    let mut out = Stdout::default();
    out.line(format_args!(
        "training {} on {} ({} train / {} test) on {} for {} epochs, batch {}, {} lr {}, {} parameters",
        opts.model,
        opts.data,
        train.len(),
        test.len(),
        device,
        opts.epochs,
        opts.batch_size,
        opts.optimizer,
        base_lr,
        model.num_parameters()
    ));
    let metrics_path = out_dir.join("metrics.jsonl");
    // The history continues the checkpoint's: stale lines (a previous run in the same folder,
    // or epochs after the checkpoint we resume from) would otherwise be appended to.
    let history = restart_metrics(&metrics_path, first_epoch)?;
    let (mut best, mut best_epoch) = history
        .iter()
        .map(|m| (m.test_accuracy, m.epoch))
        .fold((-1.0f64, 0usize), |b, m| if m.0 > b.0 { m } else { b });
    let mut last_acc = history.last().map_or(0.0, |m| m.test_accuracy);
    for epoch in first_epoch..=opts.epochs {
        model.train();
        let t0 = Instant::now();
        let progress = Progress::new(epoch, opts.epochs, steps_per_epoch);
        let (mut seen, mut loss_sum, mut correct) = (0usize, 0.0f64, 0usize);
        for (i, batch) in loader.epoch(epoch, device).enumerate() {
            let step = (epoch - 1) * steps_per_epoch + i;
            optimizer.set_lr(schedule.lr(base_lr, step));
            let Batch { inputs, labels } = batch?;
            let logits = model.forward(&inputs)?;
            let loss = cross_entropy(&logits, &labels)?;
            let value = loss.to_scalar()?;
            if !value.is_finite() {
                progress.finish();
                return Err(Error::NonFinite {
                    op: "train (loss; the last good checkpoint is kept)",
                    step,
                    value,
                });
            }
            optimizer.step(&loss.backward()?)?;
            let n = labels.numel();
            let pred = logits.argmax(1, false)?;
            correct += pred.eq(&labels)?.sum_all()?.to_scalar()? as usize;
            seen += n;
            loss_sum += value * n as f64;
            progress.update(
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                seen as f64 / t0.elapsed().as_secs_f64(),
            );
        }
        progress.finish();
        model.eval();
        let (test_loss, test_acc, _) = evaluate(model.as_ref(), &test, device, opts.normalize)?;
        let secs = t0.elapsed().as_secs_f64();
        let (train_loss, train_acc) = (
            loss_sum / seen.max(1) as f64,
            correct as f64 / seen.max(1) as f64,
        );
        out.line(format_args!(
            "epoch {epoch}/{}: train loss {train_loss:.4} acc {train_acc:.4} | test loss {test_loss:.4} acc {test_acc:.4} | {:.1} s, {:.0} ex/s",
            opts.epochs,
            secs,
            seen as f64 / secs
        ));
        let line = format!(
            "{{\"epoch\":{epoch},\"train_loss\":{train_loss},\"train_accuracy\":{train_acc},\"test_loss\":{test_loss},\"test_accuracy\":{test_acc},\"seconds\":{secs},\"lr\":{}}}\n",
            optimizer.lr()
        );
        append_line(&metrics_path, &line)?;
        let meta = BTreeMap::from([
            ("model".to_string(), opts.model.clone()),
            ("data".to_string(), opts.data.clone()),
            ("epoch".to_string(), epoch.to_string()),
            ("test_accuracy".to_string(), format!("{test_acc:.4}")),
            ("optimizer".to_string(), opts.optimizer.clone()),
            ("seed".to_string(), opts.seed.to_string()),
        ]);
        save_model(
            &out_dir.join("last.safetensors"),
            model.as_ref(),
            Some(optimizer.as_ref()),
            &meta,
        )?;
        let history = crate::plot::read_metrics(&metrics_path)?;
        let title = format!("{} on {}", opts.model, opts.data);
        crate::plot::write_curves(&out_dir.join("curves.png"), &title, &history)?;
        if test_acc > best {
            best = test_acc;
            best_epoch = epoch;
            save_model(
                &out_dir.join("best.safetensors"),
                model.as_ref(),
                Some(optimizer.as_ref()),
                &meta,
            )?;
        }
        last_acc = test_acc;
        if out.closed {
            // Nobody reads the output any more (`| head`): stop quietly, checkpoints saved.
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    out.line(format_args!(
        "wrote {} (best epoch {best_epoch}: {best:.4}) in {seconds:.1} s",
        out_dir.display()
    ));
    out.line(format_args!("test accuracy: {last_acc:.4}"));
    Ok(TrainReport {
        test_accuracy: last_acc,
        best_accuracy: best,
        best_epoch,
        out_dir,
        seconds,
    })
}

/// `tessera eval`: accuracy and confusion matrix of a checkpoint (model and data default to
/// what its metadata records).
pub fn eval(
    ckpt: &Path,
    model: Option<&str>,
    data_name: Option<&str>,
    device: &Device,
) -> Result<f64> {
    let meta = tessera_nn::checkpoint::load(ckpt, device)?.metadata;
    let model_name = model
        .map(String::from)
        .or_else(|| meta.get("model").cloned())
        .ok_or_else(|| {
            Error::invalid(
                "eval",
                format!("{} records no model: pass --model", ckpt.display()),
            )
        })?;
    let data_name = data_name
        .map(String::from)
        .or_else(|| meta.get("data").cloned())
        .unwrap_or_else(|| "mnist-10k".into());
    let split = data::load(&data_name)?;
    let test = Arc::new(split.test);
    let m = build_model(
        &model_name,
        &test.example_shape,
        test.classes,
        &mut Ctx::new(device, 0),
    )?;
    let dtype = m
        .named_parameters()
        .first()
        .map(|(_, p)| p.tensor().dtype())
        .unwrap_or(DType::F32);
    if dtype != DType::F32 {
        return Err(Error::invalid("eval", "only f32 models are supported"));
    }
    load_model(ckpt, m.as_ref(), None, device)?;
    let (loss, acc, confusion) = evaluate(m.as_ref(), &test, device, None)?;
    say!(
        "{model_name} on {data_name} ({} test examples): loss {loss:.4}",
        test.len()
    );
    say!("confusion matrix (rows: true class, columns: predicted):");
    for (i, row) in confusion.iter().enumerate() {
        say!(
            "{i:>3} {}",
            row.iter().map(|c| format!("{c:>5}")).collect::<String>()
        );
    }
    say!("test accuracy: {acc:.4}");
    Ok(acc)
}

/// Reads a 28×28 PNG as grayscale in [0, 1] (RGB is averaged; alpha ignored).
pub fn read_digit_png(path: &Path) -> Result<Vec<f32>> {
    let bad = |msg: String| Error::BadFile {
        path: path.display().to_string(),
        msg,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .map_err(|e| bad(format!("not a PNG: {e}")))?;
    // The size the header declares is checked before anything is allocated for it.
    let (w, h) = (reader.info().width, reader.info().height);
    if (w, h) != (28, 28) {
        return Err(bad(format!("image is {w}×{h}, expected 28×28")));
    }
    let size = reader.output_buffer_size();
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(format!("corrupt PNG: {e}")))?;
    if (info.width, info.height) != (28, 28) {
        return Err(bad(format!(
            "image is {}×{}, expected 28×28",
            info.width, info.height
        )));
    }
    let channels = info.color_type.samples();
    let gray: Vec<f32> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|px| {
            let c = if channels >= 3 {
                (px[0] as f32 + px[1] as f32 + px[2] as f32) / 3.0
            } else {
                px[0] as f32
            };
            c / 255.0
        })
        .collect();
    Ok(gray)
}

/// `tessera predict`: the class of one 28×28 grayscale PNG. MNIST digits are light on dark; a
/// dark-on-light image (mean above 0.5) is inverted first, and the output says so.
pub fn predict(ckpt: &Path, image: &Path, model: Option<&str>, device: &Device) -> Result<usize> {
    let meta = tessera_nn::checkpoint::load(ckpt, device)?.metadata;
    let name = model
        .map(String::from)
        .or_else(|| meta.get("model").cloned())
        .ok_or_else(|| {
            Error::invalid(
                "predict",
                format!("{} records no model: pass --model", ckpt.display()),
            )
        })?;
    let m = build_model(&name, &[1, 28, 28], 10, &mut Ctx::new(device, 0))?;
    load_model(ckpt, m.as_ref(), None, device)?;
    let mut px = read_digit_png(image)?;
    let mean = px.iter().sum::<f32>() / px.len() as f32;
    if mean > 0.5 {
        px.iter_mut().for_each(|v| *v = 1.0 - *v);
        say!("(dark digit on a light background: inverted to MNIST's light-on-dark)");
    }
    let x = tessera_core::Tensor::from_vec(px, &[1, 1, 28, 28], device)?;
    let probs = no_grad(|| m.forward(&x)?.softmax(1))?.to_vec::<f32>()?;
    let (best, p) =
        probs.iter().enumerate().fold(
            (0, 0.0f32),
            |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
        );
    say!(
        "probabilities: {}",
        probs
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{i}:{p:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    say!("predicted: {best} (p = {p:.3})");
    Ok(best)
}
