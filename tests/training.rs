//! Training smoke tests on the embedded real data, with accuracy floors.

use tessera::prelude::*;
use tessera::train::{train, TrainOptions};

fn out(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tessera-train-{name}-{}", std::process::id()))
}

#[test]
fn mlp_learns_embedded_mnist_and_resumes() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let dir = out("mlp");
    // A previous run's history in the folder (a reused pid on CI did this): refused without
    // --overwrite, and with it not appended to.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("metrics.jsonl"),
        "{\"epoch\":1,\"test_accuracy\":0.5}\nnot json\n{\"epoch\":2}\n",
    )
    .unwrap();
    let opts = TrainOptions {
        model: "mlp".into(),
        epochs: 2,
        out: Some(dir.clone()),
        ..TrainOptions::default()
    };
    let once = TrainOptions {
        epochs: 1,
        ..opts.clone()
    };
    let refused = train(&once, &dev).unwrap_err().to_string();
    assert!(refused.contains("already holds a run"), "{refused}");
    let first = train(
        &TrainOptions {
            overwrite: true,
            ..once
        },
        &dev,
    )?;
    assert!(
        first.test_accuracy > 0.88,
        "after one epoch: {}",
        first.test_accuracy
    );
    // The resumed run keeps the checkpoint's history and drops what came after it (a stale
    // epoch-2 line here); a best epoch 1 (raised to 0.999 here) stays the best.
    let m = dir.join("metrics.jsonl");
    let line1 = std::fs::read_to_string(&m).unwrap();
    let at = line1.find("\"test_accuracy\":").unwrap() + "\"test_accuracy\":".len();
    let end = at + line1[at..].find(',').unwrap();
    let line1 = format!("{}0.999{}", &line1[..at], &line1[end..]);
    let stale = line1.replace("{\"epoch\":1,", "{\"epoch\":2,");
    std::fs::write(&m, format!("{line1}{stale}")).unwrap();
    // Resuming from epoch 1 runs only epoch 2, with the optimizer state restored.
    let resumed = train(
        &TrainOptions {
            resume: Some(dir.join("last.safetensors")),
            ..opts
        },
        &dev,
    )?;
    assert!(
        resumed.test_accuracy > 0.90,
        "after two epochs: {}",
        resumed.test_accuracy
    );
    assert_eq!((resumed.best_epoch, resumed.best_accuracy), (1, 0.999));
    let lines = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
    assert!(lines.lines().nth(1).unwrap().starts_with("{\"epoch\":2,"));
    let acc = tessera::train::eval(&dir.join("last.safetensors"), None, None, &dev)?;
    assert!((acc - resumed.test_accuracy).abs() < 1e-9);
    assert!(dir.join("curves.png").exists());

    // predict on a test digit written as a PNG, and a clear error for a wrong size.
    let split = tessera::data::load("mnist-10k")?;
    let digit: Vec<u8> = split.test.inputs[..784]
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    let write_png = |path: &std::path::Path, w: u32, h: u32, px: &[u8]| {
        let mut enc = png::Encoder::new(std::fs::File::create(path).unwrap(), w, h);
        enc.set_color(png::ColorType::Grayscale);
        enc.write_header().unwrap().write_image_data(px).unwrap();
    };
    let png_path = dir.join("digit.png");
    write_png(&png_path, 28, 28, &digit);
    let class = tessera::train::predict(&dir.join("last.safetensors"), &png_path, None, &dev)?;
    assert_eq!(class as i64, split.test.labels[0]);
    write_png(&png_path, 10, 10, &[0; 100]);
    let e = tessera::train::predict(&dir.join("last.safetensors"), &png_path, None, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("10×10") && e.contains("digit.png"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    Ok(())
}

#[test]
fn a_diverging_run_stops_with_an_error_naming_the_step() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let opts = TrainOptions {
        model: "mlp".into(),
        epochs: 1,
        lr: Some(1e9),
        cosine: false,
        out: Some(out("nan")),
        ..TrainOptions::default()
    };
    let e = train(&opts, &dev).unwrap_err().to_string();
    assert!(e.contains("non-finite") && e.contains("step"), "{e}");
    Ok(())
}

#[test]
fn unknown_models_and_missing_data_are_clear_errors() {
    let dev = Device::parse("cpu").unwrap();
    let e = train(
        &TrainOptions {
            model: "resnet".into(),
            ..TrainOptions::default()
        },
        &dev,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown model"), "{e}");
    let e = train(
        &TrainOptions {
            data: "/nonexistent/dir".into(),
            ..TrainOptions::default()
        },
        &dev,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/dir"), "{e}");
    let e = train(
        &TrainOptions {
            model: "lenet5".into(),
            data: "mnist1d".into(),
            ..TrainOptions::default()
        },
        &dev,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("1×28×28"), "{e}");
}

/// LeNet-5 for three epochs on the GPU (0.9735 on the CPU), when one is usable: it must learn as it does on the CPU,
/// and its checkpoint must load and evaluate on the CPU to the same accuracy.
#[test]
fn lenet5_trains_on_cuda_when_present() -> Result<()> {
    let dev = match Device::parse("cuda") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: cuda training: {e}");
            return Ok(());
        }
    };
    let dir = out("lenet-cuda");
    let opts = TrainOptions {
        model: "lenet5".into(),
        epochs: 3,
        out: Some(dir.clone()),
        ..TrainOptions::default()
    };
    let r = train(&opts, &dev)?;
    assert!(
        r.test_accuracy > 0.96,
        "after three epochs on cuda: {}",
        r.test_accuracy
    );
    let on_cpu = tessera::train::eval(
        &dir.join("last.safetensors"),
        None,
        None,
        &Device::parse("cpu")?,
    )?;
    assert!(
        (on_cpu - r.test_accuracy).abs() < 0.005,
        "cpu {on_cpu} vs cuda {}",
        r.test_accuracy
    );
    Ok(())
}
