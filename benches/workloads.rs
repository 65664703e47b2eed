//! The workloads of WORKLOADS.md (shared with the other frameworks' benches), one JSON line each
//! on stdout; progress goes to stderr.
//!
//! ```text
//! cargo bench --bench workloads -- [--threads N] [--only PREFIX[,PREFIX]] [--device cpu|cuda]
//!                                   [--memory-check]
//! ```
//! `--memory-check` also runs 1,000 W4 training steps and prints the process's peak resident
//! memory (VmHWM) after 10 and after 1,000 steps (the CPU-speed issue asks for at most +10%).
//! Threads: `--threads N`, else `RAYON_NUM_THREADS`, else all cores: rayon's pool, which the
//! GEMMs share, set before the first kernel.

use std::hint::black_box;
use std::time::{Duration, Instant};
use tessera::prelude::*;

struct Args {
    threads: usize,
    only: Vec<String>,
    device: String,
    memory_check: bool,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok());
    let (mut only, mut device, mut memory_check) = (vec![], "cpu".to_string(), false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => {
                threads = Some(
                    args.next()
                        .and_then(|s| s.parse().ok())
                        .ok_or("--threads needs a number")?,
                )
            }
            "--only" => {
                only = args
                    .next()
                    .ok_or("--only needs a prefix list")?
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            "--device" => device = args.next().ok_or("--device needs cpu or cuda")?,
            "--memory-check" => memory_check = true,
            // cargo bench passes --bench to harness-less benches.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    Ok(Args {
        threads,
        only,
        device,
        memory_check,
    })
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass, which is zero-initialised POD.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Resets the process's peak resident memory to its current resident memory (Linux:
/// `5 > /proc/self/clear_refs`), so a measurement after other workloads is not their peak.
/// Whether it worked.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident memory of this process so far (VmHWM), in KiB; 0 where /proc is unavailable.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Measured {
    median_s: f64,
    /// The fastest repetition: on a shared machine, the figure least disturbed by neighbours
    /// (an extra field; WORKLOADS.md's rate stays the median's).
    min_s: f64,
    reps: usize,
    cpu_util: f64,
}

/// WORKLOADS.md's timing rules: warm up (≥ 2 reps and ≥ 0.2 s, at most 50), then time each
/// repetition alone (≥ 7 reps and ≥ 0.5 s, at most 500) and take the median. A first warm-up
/// repetition over 1 s means one warm-up and 3 timed repetitions.
fn measure(
    sync: &dyn Fn() -> Result<()>,
    mut inner: impl FnMut() -> Result<()>,
) -> Result<Measured> {
    // An asynchronous device finishes its queued work inside the timed region.
    let mut rep = || {
        inner()?;
        sync()
    };
    let start = Instant::now();
    rep()?;
    let first = start.elapsed();
    let (min_timed, min_time) = if first > Duration::from_secs(1) {
        (3, Duration::ZERO)
    } else {
        let mut n = 1;
        while n < 50 && (n < 2 || start.elapsed() < Duration::from_millis(200)) {
            rep()?;
            n += 1;
        }
        (7, Duration::from_millis(500))
    };
    let mut times = Vec::new();
    let (wall0, cpu0) = (Instant::now(), cpu_time());
    while times.len() < 500 && (times.len() < min_timed || wall0.elapsed() < min_time) {
        let t = Instant::now();
        rep()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let (wall, cpu) = (
        wall0.elapsed().as_secs_f64(),
        (cpu_time() - cpu0).as_secs_f64(),
    );
    times.sort_by(|a, b| a.total_cmp(b));
    let n = times.len();
    let median_s = if n % 2 == 1 {
        times[n / 2]
    } else {
        0.5 * (times[n / 2 - 1] + times[n / 2])
    };
    Ok(Measured {
        median_s,
        min_s: times[0],
        reps: n,
        cpu_util: cpu / wall,
    })
}

fn build_note() -> &'static str {
    if cfg!(target_feature = "avx2") && cfg!(target_feature = "fma") {
        "release, target-cpu with avx2+fma"
    } else {
        "release, default target (not -C target-cpu=native)"
    }
}

fn report(device: &str, threads: usize, workload: &str, m: &Measured, rate: f64, unit: &str) {
    println!(
        "{{\"framework\":\"tessera\",\"device\":\"{device}\",\"workload\":\"{workload}\",\"threads\":{threads},\
         \"median_s\":{:e},\"rate\":{rate:.4},\"unit\":\"{unit}\",\"reps\":{},\"cpu_util\":{:.2},\"min_s\":{:e},\
         \"version\":\"{}\",\"build\":\"{}\"}}",
        m.median_s,
        m.reps,
        m.cpu_util,
        m.min_s,
        env!("CARGO_PKG_VERSION"),
        build_note()
    );
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("workloads: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("workloads: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    let device = Device::parse(&args.device)?;
    let threads = if args.device == "cpu" {
        tessera::cpu::set_num_threads(args.threads)?;
        args.threads
    } else {
        0
    };
    // WORKLOADS.md names devices "cpu" or "cuda" (no ordinal).
    let kind = if args.device == "cpu" { "cpu" } else { "cuda" };
    let gpu = match args.device.as_str() {
        "cpu" => None,
        _ => Some(tessera::cuda::backend(
            args.device
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .unwrap_or(0),
        )?),
    };
    if let Some(g) = &gpu {
        eprintln!("GPU: {}", g.gpu_name());
    }
    let sync = || match &gpu {
        Some(g) => g.synchronize(),
        None => Ok(()),
    };
    let wanted =
        |id: &str| args.only.is_empty() || args.only.iter().any(|p| id.starts_with(p.as_str()));
    let mut gen = Generator::new(0);

    for n in [256usize, 512, 1024, 2048] {
        let id = format!("W1_sgemm_{n}");
        if !wanted(&id) {
            continue;
        }
        eprintln!("{id} ...");
        let a = Tensor::randn_with(&[n, n], 0.0, 1.0, DType::F32, &mut gen, &device)?;
        let b = Tensor::randn_with(&[n, n], 0.0, 1.0, DType::F32, &mut gen, &device)?;
        let m = measure(&sync, || {
            black_box(a.matmul(&b)?);
            Ok(())
        })?;
        report(
            kind,
            threads,
            &id,
            &m,
            2.0 * (n as f64).powi(3) / m.median_s / 1e9,
            "GFLOP/s",
        );
    }

    let labels = |n: usize| {
        Tensor::from_vec(
            (0..n)
                .map(|i| ((7 * i + 3) % 10) as i64)
                .collect::<Vec<_>>(),
            &[n],
            &device,
        )
    };
    let ce = |logits: &Tensor, y: &Tensor| tessera::nn::loss::cross_entropy(logits, y);

    for (id, n, ci, co, hw, k, pad) in [
        ("W2a_conv_lenet", 64, 6, 16, 14, 5, 0),
        ("W2b_conv_alexnet", 16, 192, 384, 13, 3, 1),
    ] {
        if !wanted(id) {
            continue;
        }
        eprintln!("{id} ...");
        use tessera::ops::conv::{conv2d, ConvOptions};
        let x = Tensor::randn_with(&[n, ci, hw, hw], 0.0, 1.0, DType::F32, &mut gen, &device)?
            .requires_grad_()?;
        let w = Tensor::randn_with(&[co, ci, k, k], 0.0, 1.0, DType::F32, &mut gen, &device)?
            .requires_grad_()?;
        let b =
            Tensor::randn_with(&[co], 0.0, 1.0, DType::F32, &mut gen, &device)?.requires_grad_()?;
        let opts = ConvOptions::new().padding(pad);
        let m = measure(&sync, || {
            let g = conv2d(&x, &w, Some(&b), &opts)?.sum_all()?.backward()?;
            black_box((
                g.get(&x).is_some(),
                g.get(&w).is_some(),
                g.get(&b).is_some(),
            ));
            Ok(())
        })?;
        let ho = hw + 2 * pad - k + 1;
        let flops = 3.0 * 2.0 * (n * co * ho * ho * ci * k * k) as f64;
        report(kind, threads, id, &m, flops / m.median_s / 1e9, "GFLOP/s");
    }

    if wanted("W3_mlp_train_step") {
        eprintln!("W3_mlp_train_step ...");
        let model = tessera::nn::zoo::Mlp::new(
            &mut tessera::nn::Ctx::new(&device, 1),
            &[784, 512, 256, 10],
        )?;
        let mut opt = tessera::optim::Sgd::new(model.parameters(), 0.01);
        let x = Tensor::randn_with(&[128, 784], 0.0, 1.0, DType::F32, &mut gen, &device)?;
        let y = labels(128)?;
        let m = measure(&sync, || {
            let loss = ce(&model.forward(&x)?, &y)?;
            opt.step(&loss.backward()?)
        })?;
        report(
            kind,
            threads,
            "W3_mlp_train_step",
            &m,
            1.0 / m.median_s,
            "steps/s",
        );
    }

    if wanted("W4_lenet5_train_step") {
        eprintln!("W4_lenet5_train_step ...");
        let model = tessera::nn::zoo::LeNet5::new(&mut tessera::nn::Ctx::new(&device, 1))?;
        let mut opt = tessera::optim::Sgd::new(model.parameters(), 0.01).momentum(0.9);
        let x = Tensor::randn_with(&[64, 1, 28, 28], 0.0, 1.0, DType::F32, &mut gen, &device)?;
        let y = labels(64)?;
        let m = measure(&sync, || {
            let loss = ce(&model.forward(&x)?, &y)?;
            opt.step(&loss.backward()?)
        })?;
        report(
            kind,
            threads,
            "W4_lenet5_train_step",
            &m,
            1.0 / m.median_s,
            "steps/s",
        );
    }

    if args.memory_check {
        eprintln!("W4 memory check (1,000 steps) ...");
        let model = tessera::nn::zoo::LeNet5::new(&mut tessera::nn::Ctx::new(&device, 1))?;
        let mut opt = tessera::optim::Sgd::new(model.parameters(), 0.01).momentum(0.9);
        let x = Tensor::randn_with(&[64, 1, 28, 28], 0.0, 1.0, DType::F32, &mut gen, &device)?;
        let y = labels(64)?;
        let mut peaks = vec![];
        // Measure this model's peak, not that of the workloads run before it.
        let reset = reset_peak_rss();
        for step in 1..=1000 {
            let loss = ce(&model.forward(&x)?, &y)?;
            opt.step(&loss.backward()?)?;
            if step == 10 || step == 1000 {
                sync()?;
                peaks.push(peak_rss_kib());
            }
        }
        println!(
            "{{\"framework\":\"tessera\",\"device\":\"{kind}\",\"workload\":\"W4_memory_check\",\"threads\":{threads},\"peak_rss_kib_after_10\":{},\"peak_rss_kib_after_1000\":{},\"ratio\":{:.4},\"peak_reset\":{reset}}}",
            peaks[0],
            peaks[1],
            peaks[1] as f64 / peaks[0] as f64
        );
    }

    if wanted("W5_lstm_bptt") {
        eprintln!("W5_lstm_bptt ...");
        use tessera::ops::rnn::RnnOptions;
        let opts = RnnOptions {
            hidden_size: 256,
            num_layers: 1,
            bidirectional: false,
            batch_first: false,
            bias: true,
        };
        let lstm = tessera::nn::Lstm::new(&mut tessera::nn::Ctx::new(&device, 1), 128, opts)?;
        let x = Tensor::randn_with(&[35, 32, 128], 0.0, 1.0, DType::F32, &mut gen, &device)?;
        let m = measure(&sync, || {
            let g = lstm.forward(&x)?.sum_all()?.backward()?;
            black_box(g.len());
            Ok(())
        })?;
        report(
            kind,
            threads,
            "W5_lstm_bptt",
            &m,
            1.0 / m.median_s,
            "steps/s",
        );
    }

    if wanted("W7_lenet5_infer") {
        eprintln!("W7_lenet5_infer ...");
        let model = tessera::nn::zoo::LeNet5::new(&mut tessera::nn::Ctx::new(&device, 1))?;
        let x = Tensor::randn_with(&[256, 1, 28, 28], 0.0, 1.0, DType::F32, &mut gen, &device)?;
        let m = measure(&sync, || {
            black_box(no_grad(|| model.forward(&x))?);
            Ok(())
        })?;
        report(
            kind,
            threads,
            "W7_lenet5_infer",
            &m,
            256.0 / m.median_s,
            "images/s",
        );
    }

    if wanted("W6_elementwise") {
        eprintln!("W6_elementwise ...");
        let n = 16_777_216;
        let a = Tensor::randn_with(&[n], 0.0, 1.0, DType::F32, &mut gen, &device)?;
        let b = Tensor::randn_with(&[n], 0.0, 1.0, DType::F32, &mut gen, &device)?;
        let c = Tensor::randn_with(&[n], 0.0, 1.0, DType::F32, &mut gen, &device)?;
        let m = measure(&sync, || {
            black_box(a.mul(&b)?.add(&c)?.relu()?);
            Ok(())
        })?;
        report(
            kind,
            threads,
            "W6_elementwise",
            &m,
            16.0 * n as f64 / m.median_s / 1e9,
            "GB/s",
        );
    }
    if wanted("W8_attention") {
        eprintln!("W8_attention ...");
        let make = |g: &mut Generator| -> Result<Tensor> {
            Tensor::randn_with(&[8, 8, 256, 64], 0.0, 1.0, DType::F32, g, &device)?.requires_grad_()
        };
        let (q, k, v) = (make(&mut gen)?, make(&mut gen)?, make(&mut gen)?);
        let m = measure(&sync, || {
            let y = tessera::ops::attention::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                None,
                true,
                Some(0.125),
            )?;
            black_box(y.sum_all()?.backward()?);
            Ok(())
        })?;
        report(
            kind,
            threads,
            "W8_attention",
            &m,
            1.0 / m.median_s,
            "steps/s",
        );
    }

    if wanted("W9_transformer_train_step") {
        eprintln!("W9_transformer_train_step ...");
        use tessera::nn::zoo::{CharTransformer, CharTransformerConfig};
        use tessera::optim::Optimizer;
        let config = CharTransformerConfig {
            vocab: 256,
            context: 128,
            d_model: 256,
            heads: 4,
            dim_feedforward: 1024,
            layers: 2,
        };
        let model = CharTransformer::new(&mut tessera::nn::Ctx::new(&device, 1), config)?;
        let mut opt = tessera::optim::Adam::adamw(model.parameters(), 1e-3).weight_decay(0.01);
        let ids: Vec<i64> = (0..16 * 129)
            .map(|i| (tessera::random::uniform(5, i) * 256.0) as i64)
            .collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for r in ids.chunks(129) {
            x.extend_from_slice(&r[..128]);
            y.extend_from_slice(&r[1..]);
        }
        let x = Tensor::from_vec(x, &[16, 128], &device)?;
        let y = Tensor::from_vec(y, &[16 * 128], &device)?;
        let m = measure(&sync, || {
            let logits = model.logits(&x)?.reshape(&[-1, 256])?;
            let loss = tessera::nn::loss::cross_entropy(&logits, &y)?;
            opt.step(&loss.backward()?)?;
            Ok(())
        })?;
        report(
            kind,
            threads,
            "W9_transformer_train_step",
            &m,
            1.0 / m.median_s,
            "steps/s",
        );
    }
    Ok(())
}
