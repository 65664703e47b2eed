//! The `tessera` command line.

use std::process::ExitCode;
use tessera::prelude::*;

const USAGE: &str = "usage:
  tessera train [--model lenet5|lenet1998|googlenet|mlp] [--data mnist-10k|mnist1d|fashion-mnist|DIR]
                [--epochs N] [--batch-size B] [--lr X] [--optimizer sgd|adam|adamw]
                [--schedule cosine|constant] [--normalize MEAN,STD] [--crop-padding P] [--hflip]
                [--device cpu|cuda] [--seed S]
                [--out DIR] [--resume CKPT]      train (defaults: LeNet-5 on the embedded MNIST-10k)
  tessera eval CKPT [--model M] [--data D] [--device cpu|cuda]
                                           test accuracy and confusion matrix
  tessera predict CKPT IMAGE.png [--model M]   classify one 28×28 grayscale PNG
  tessera conformance DIR [--device cpu|cuda]
                                           run PyTorch-generated test vectors (*.json in DIR)
  tessera summary MODEL [--device cpu|cuda]
                                           per-layer table of a zoo model: lenet5, lenet1998,
                                           lenet1998-softmax, alexnet, googlenet, mlp, textcnn, charlstm
  tessera help";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // This thread joins the CPU pool as one of its workers (see `set_num_threads`).
    if let Err(e) = tessera::cpu::set_num_threads(0) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn run(args: &[String]) -> Result<ExitCode> {
    match args.first().map(String::as_str) {
        Some("conformance") => {
            let Some(dir) = args.get(1).filter(|a| !a.starts_with("--")) else {
                eprintln!("{USAGE}");
                return Ok(ExitCode::from(2));
            };
            let device = Device::parse(&flag(args, "--device").unwrap_or_else(|| "cpu".into()))?;
            let report = tessera::conformance::run_dir(std::path::Path::new(dir), &device)?;
            for line in report.failure_lines() {
                println!("{line}");
            }
            if !report.skipped_ops.is_empty() {
                println!(
                    "skipped ops (not implemented yet): {}",
                    report.skipped_ops.join(", ")
                );
            }
            println!("{}", report.summary());
            Ok(if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Some("train") => {
            let device = Device::parse(&flag(args, "--device").unwrap_or_else(|| "cpu".into()))?;
            let mut o = tessera::train::TrainOptions::default();
            let num = |name: &str| -> Result<Option<f64>> {
                flag(args, name)
                    .map(|v| {
                        v.parse::<f64>().map_err(|_| {
                            Error::invalid("train", format!("{name} needs a number, got {v:?}"))
                        })
                    })
                    .transpose()
            };
            if let Some(v) = flag(args, "--model") {
                o.model = v;
            }
            if let Some(v) = flag(args, "--data") {
                o.data = v;
            }
            if let Some(v) = flag(args, "--optimizer") {
                o.optimizer = v;
            }
            if let Some(v) = num("--epochs")? {
                o.epochs = v as usize;
            }
            if let Some(v) = num("--batch-size")? {
                o.batch_size = v as usize;
            }
            if let Some(v) = num("--seed")? {
                o.seed = v as u64;
            }
            o.lr = num("--lr")?;
            o.out = flag(args, "--out").map(Into::into);
            o.resume = flag(args, "--resume").map(Into::into);
            if let Some(v) = flag(args, "--schedule") {
                o.cosine = match v.as_str() {
                    "cosine" => true,
                    "constant" => false,
                    other => {
                        return Err(Error::invalid(
                            "train",
                            format!("--schedule cosine|constant, got {other:?}"),
                        ))
                    }
                };
            }
            if let Some(v) = num("--crop-padding")? {
                o.augment.crop_padding = v as usize;
            }
            o.augment.hflip = args.iter().any(|a| a == "--hflip");
            if let Some(v) = flag(args, "--normalize") {
                let parts: Vec<f32> = v.split(',').filter_map(|p| p.trim().parse().ok()).collect();
                let [m, s] = parts[..] else {
                    return Err(Error::invalid(
                        "train",
                        format!("--normalize MEAN,STD, got {v:?}"),
                    ));
                };
                o.normalize = Some((m, s));
            }
            tessera::train::train(&o, &device)?;
            Ok(ExitCode::SUCCESS)
        }
        Some("eval") => {
            let Some(ckpt) = args.get(1).filter(|a| !a.starts_with("--")) else {
                eprintln!("{USAGE}");
                return Ok(ExitCode::from(2));
            };
            let device = Device::parse(&flag(args, "--device").unwrap_or_else(|| "cpu".into()))?;
            tessera::train::eval(
                std::path::Path::new(ckpt),
                flag(args, "--model").as_deref(),
                flag(args, "--data").as_deref(),
                &device,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Some("predict") => {
            let (Some(ckpt), Some(image)) = (args.get(1), args.get(2)) else {
                eprintln!("{USAGE}");
                return Ok(ExitCode::from(2));
            };
            let device = Device::parse(&flag(args, "--device").unwrap_or_else(|| "cpu".into()))?;
            tessera::train::predict(
                std::path::Path::new(ckpt),
                std::path::Path::new(image),
                flag(args, "--model").as_deref(),
                &device,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Some("summary") => {
            let Some(name) = args.get(1).filter(|a| !a.starts_with("--")) else {
                eprintln!("{USAGE}");
                return Ok(ExitCode::from(2));
            };
            let device = Device::parse(&flag(args, "--device").unwrap_or_else(|| "cpu".into()))?;
            let (model, input) = tessera::zoo_model(name, &device)?;
            println!("{name}");
            println!("{}", tessera::nn::summary(model.as_ref(), &input)?);
            Ok(ExitCode::SUCCESS)
        }
        Some("help") | Some("--help") | Some("-h") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    }
}
