//! The `tessera` command line.

use std::process::ExitCode;
use tessera::prelude::*;

const USAGE: &str = "usage:
  tessera conformance DIR [--device cpu]   run PyTorch-generated test vectors (*.json in DIR)
  tessera summary MODEL [--device cpu]     per-layer table of a zoo model: lenet5, lenet1998,
                                           lenet1998-softmax, alexnet, googlenet, mlp, textcnn, charlstm
  tessera help";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
