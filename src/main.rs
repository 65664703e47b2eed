//! The `tessera` command line (clap): every subcommand has `--help`, unknown commands and flags
//! are errors (exit 2), and flag values are checked before any work starts.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tessera::prelude::*;

/// A deep-learning framework in Rust: train, evaluate and inspect models.
#[derive(Parser)]
#[command(name = "tessera", version, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (defaults: LeNet-5 on the embedded MNIST-10k, 10 epochs).
    Train(TrainArgs),
    /// Test accuracy and confusion matrix of a checkpoint.
    Eval {
        /// A checkpoint written by `tessera train`, or a PyTorch state_dict (with --model).
        ckpt: PathBuf,
        /// The model, when the checkpoint does not say (a PyTorch state_dict).
        #[arg(long, value_parser = MODELS)]
        model: Option<String>,
        /// The data set (default: the one the checkpoint was trained on).
        #[arg(long)]
        data: Option<String>,
        /// Attention heads of a chartransformer state_dict (default: the checkpoint's, else 4).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
        heads: Option<u64>,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Classify one 28×28 grayscale PNG.
    Predict {
        ckpt: PathBuf,
        image: PathBuf,
        #[arg(long, value_parser = MODELS)]
        model: Option<String>,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Run PyTorch-generated test vectors (*.json in DIR).
    Conformance {
        dir: PathBuf,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Per-layer table of a zoo model.
    Summary {
        #[arg(value_parser = ["lenet5", "lenet1998", "lenet1998-softmax", "alexnet", "googlenet", "mlp", "textcnn", "charlstm"])]
        model: String,
        #[command(flatten)]
        device: DeviceArg,
    },
}

/// The models `train` builds.
const MODELS: [&str; 5] = ["lenet5", "lenet1998", "googlenet", "mlp", "chartransformer"];

#[derive(Args)]
struct DeviceArg {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = device_name)]
    device: String,
}

impl DeviceArg {
    fn open(&self) -> Result<Device> {
        Device::parse(&self.device)
    }
}

#[derive(Args)]
struct TrainArgs {
    #[arg(long, default_value = "lenet5", value_parser = MODELS)]
    model: String,
    /// mnist-10k, mnist1d, fashion-mnist, or a folder of IDX files; `text` (or a UTF-8 file)
    /// for chartransformer [default: mnist-10k, text for chartransformer].
    #[arg(long)]
    data: Option<String>,
    /// Passes over the data; for chartransformer, blocks of 300 steps [default: 10, 8 for
    /// chartransformer].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    epochs: Option<u64>,
    /// [default: 64, 32 for chartransformer]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
    batch_size: Option<u64>,
    /// Learning rate (default: 0.05 for SGD, 0.001 for Adam and AdamW, 0.002 for
    /// chartransformer).
    #[arg(long, value_parser = positive, allow_hyphen_values = true)]
    lr: Option<f64>,
    /// [default: sgd, adamw for chartransformer]
    #[arg(long, value_parser = ["sgd", "adam", "adamw"])]
    optimizer: Option<String>,
    #[arg(long, default_value = "cosine", value_parser = ["cosine", "constant"])]
    schedule: String,
    /// Normalise pixels (after scaling to [0, 1]) as (x - MEAN) / STD.
    #[arg(long, value_name = "MEAN,STD", value_parser = mean_std)]
    normalize: Option<(f32, f32)>,
    /// Random crops after padding by P pixels.
    #[arg(long, default_value_t = 0)]
    crop_padding: usize,
    /// Random horizontal flips.
    #[arg(long)]
    hflip: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the run's checkpoints, metrics and curves go (default: runs/<model>-<data>-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from a checkpoint written by `tessera train` (its model, data and optimizer).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Train into an --out folder that already holds a run, replacing it.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    device: DeviceArg,
}

/// `println!` for results through [`tessera::train::print_line`]: a closed or full stdout
/// (`> /dev/full`) is an error, not a panic.
macro_rules! say {
    ($($t:tt)*) => {
        tessera::train::print_line(format_args!($($t)*))?
    };
}

fn device_name(s: &str) -> std::result::Result<String, String> {
    let ok = s == "cpu"
        || s == "cuda"
        || s.strip_prefix("cuda:")
            .is_some_and(|i| i.parse::<usize>().is_ok());
    if ok {
        Ok(s.to_string())
    } else {
        Err("expected cpu, cuda or cuda:N".into())
    }
}

fn positive(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err("expected a finite number above 0".into()),
    }
}

fn mean_std(s: &str) -> std::result::Result<(f32, f32), String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    match parts[..] {
        [m, d] => match (m.parse::<f32>(), d.parse::<f32>()) {
            (Ok(m), Ok(d)) if m.is_finite() && d.is_finite() && d > 0.0 => Ok((m, d)),
            _ => Err("expected MEAN,STD: finite numbers, STD above 0".into()),
        },
        _ => Err("expected MEAN,STD".into()),
    }
}

fn main() -> ExitCode {
    // Usage errors exit 2 with clap's message; --help and --version exit 0.
    let cli = Cli::parse();
    // This thread joins the CPU pool as one of its workers (see `set_num_threads`).
    if let Err(e) = tessera::cpu::set_num_threads(0) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Conformance { dir, device } => {
            let report = tessera::conformance::run_dir(&dir, &device.open()?)?;
            for line in report.failure_lines() {
                say!("{line}");
            }
            if !report.skipped_ops.is_empty() {
                say!(
                    "skipped ops (not implemented yet): {}",
                    report.skipped_ops.join(", ")
                );
            }
            say!("{}", report.summary());
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Train(a) => {
            let device = a.device.open()?;
            // The character transformer's recipe differs from the image models'.
            let text = a.model == "chartransformer";
            let pick = |image: &str, lm: &str| if text { lm } else { image }.to_string();
            let o = tessera::train::TrainOptions {
                data: a.data.unwrap_or_else(|| pick("mnist-10k", "text")),
                epochs: a.epochs.unwrap_or(if text { 8 } else { 10 }) as usize,
                batch_size: a.batch_size.unwrap_or(if text { 32 } else { 64 }) as usize,
                lr: a.lr,
                optimizer: a.optimizer.unwrap_or_else(|| pick("sgd", "adamw")),
                model: a.model,
                seed: a.seed,
                out: a.out,
                resume: a.resume,
                normalize: a.normalize,
                cosine: a.schedule == "cosine",
                augment: tessera::data::Augment {
                    crop_padding: a.crop_padding,
                    hflip: a.hflip,
                },
                overwrite: a.overwrite,
            };
            tessera::train::train(&o, &device)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval {
            ckpt,
            model,
            data,
            heads,
            device,
        } => {
            let device = device.open()?;
            let recorded = match &model {
                Some(_) => None,
                None => tessera::nn::checkpoint::load(&ckpt, &device)?
                    .metadata
                    .get("model")
                    .cloned(),
            };
            if model.as_deref().or(recorded.as_deref()) == Some("chartransformer") {
                let data = data.as_deref().unwrap_or("text");
                tessera::text::eval(&ckpt, data, heads.map(|h| h as usize), &device)?;
            } else {
                tessera::train::eval(&ckpt, model.as_deref(), data.as_deref(), &device)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict {
            ckpt,
            image,
            model,
            device,
        } => {
            tessera::train::predict(&ckpt, &image, model.as_deref(), &device.open()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Summary { model, device } => {
            let (m, input) = tessera::zoo_model(&model, &device.open()?)?;
            say!("{model}");
            say!("{}", tessera::nn::summary(m.as_ref(), &input)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
