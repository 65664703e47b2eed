//! The `tessera` command on bad input (issue 15): every case is a clear message and a non-zero
//! exit — 2 for usage errors before any work, 1 for a run that could not do what was asked —
//! never a panic, a hang or a lie. Bad files are written by the tests themselves.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `tessera ARGS` (stdout to `stdout`, or captured): a failing case must end within 10 s,
/// a run that trains within 60 s.
fn tessera_to(args: &[&str], stdout: Option<Stdio>) -> Output {
    let limit = if args.first() == Some(&"train") {
        60
    } else {
        10
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args).stderr(Stdio::piped());
    match stdout {
        Some(s) => cmd.stdout(s),
        None => cmd.stdout(Stdio::piped()),
    };
    let mut child = cmd.spawn().expect("the tessera binary starts");
    let start = Instant::now();
    while child.try_wait().expect("waitable").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(limit),
            "tessera {args:?} hung"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("its output")
}

fn tessera(args: &[&str]) -> Output {
    tessera_to(args, None)
}

/// Exits with `code`, says `needle` on stderr, and did not panic.
fn fails(args: &[&str], code: i32, needle: &str) {
    let out = tessera(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked"),
        "tessera {args:?} panicked: {err}"
    );
    assert_eq!(out.status.code(), Some(code), "tessera {args:?}: {err}");
    assert!(
        err.contains(needle),
        "tessera {args:?}: {err:?} lacks {needle:?}"
    );
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An IDX file: magic (type 0x08 = u8, then the rank), big-endian dims, then `data`.
fn idx(path: &Path, dims: &[u32], data: &[u8]) {
    let mut b = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    std::fs::write(path, b).unwrap();
}

#[test]
fn usage_errors_exit_2_before_any_work() {
    fails(&["bogus"], 2, "unrecognized subcommand");
    fails(&["train", "--epoch", "1"], 2, "--epochs");
    fails(&["train", "--bogus"], 2, "unexpected argument");
    for bad in ["0", "-1", "nan", "1.5"] {
        fails(&["train", "--epochs", bad], 2, "--epochs");
    }
    fails(&["train", "--lr", "-1"], 2, "--lr");
    fails(&["train", "--lr", "inf"], 2, "--lr");
    fails(&["train", "--batch-size", "0"], 2, "--batch-size");
    fails(&["train", "--model", "resnet"], 2, "possible values");
    fails(&["train", "--normalize", "0.1"], 2, "MEAN,STD");
    fails(&["train", "--device", "tpu"], 2, "cpu, cuda or cuda:N");
    fails(&["summary", "vgg"], 2, "possible values");
    // --help does nothing but print.
    let dir = scratch("help");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["train", "--help"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--epochs"));
    assert!(!dir.join("runs").exists(), "--help started a run");
}

#[test]
fn bad_data_files_are_errors_naming_the_file() {
    let dir = scratch("data");
    let img = vec![0u8; 10 * 28 * 28];
    idx(&dir.join("train-images-idx3-ubyte"), &[10, 28, 28], &img);
    idx(&dir.join("train-labels-idx1-ubyte"), &[10], &[1; 10]);
    // An empty test split: nothing to measure.
    idx(&dir.join("t10k-images-idx3-ubyte"), &[0, 28, 28], &[]);
    idx(&dir.join("t10k-labels-idx1-ubyte"), &[0], &[]);
    let d = dir.to_str().unwrap();
    let out = scratch("data-out");
    let o = out.to_str().unwrap();
    fails(&["train", "--data", d, "--out", o], 1, "empty");
    // A header that claims 4 × 2^31 × 2^31 bytes with none behind it.
    idx(
        &dir.join("t10k-images-idx3-ubyte"),
        &[4, 1 << 31, 1 << 31],
        &[],
    );
    idx(&dir.join("t10k-labels-idx1-ubyte"), &[4], &[0; 4]);
    fails(
        &["train", "--data", d, "--out", o],
        1,
        "t10k-images-idx3-ubyte",
    );
    // Images with a zero-size plane.
    idx(&dir.join("t10k-images-idx3-ubyte"), &[2, 0, 28], &[]);
    idx(&dir.join("t10k-labels-idx1-ubyte"), &[2], &[0; 2]);
    let r = tessera(&["train", "--data", d, "--out", o]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !err.contains("panicked") && r.status.code() == Some(1),
        "{err}"
    );
    // A checkpoint that is not one.
    std::fs::write(dir.join("junk.safetensors"), b"not a checkpoint").unwrap();
    let junk = dir.join("junk.safetensors");
    fails(&["eval", junk.to_str().unwrap()], 1, "junk.safetensors");
}

#[test]
fn runs_refuse_to_overwrite_and_stop_quietly_on_a_closed_pipe() {
    let dir = scratch("runs");
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    let ok = tessera(&["train", "--model", "mlp", "--epochs", "1", "--out", o]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("test accuracy"));
    // A second run into the same folder would replace the first without a word.
    fails(
        &["train", "--model", "mlp", "--epochs", "1", "--out", o],
        1,
        "already holds a run",
    );
    // Resuming a finished run has nothing to do.
    let last = out.join("last.safetensors");
    let l = last.to_str().unwrap();
    fails(
        &["train", "--epochs", "1", "--resume", l, "--out", o],
        1,
        "nothing to train",
    );
    // Another run holds the folder's lock (this test's own process id: alive).
    std::fs::write(out.join(".lock"), std::process::id().to_string()).unwrap();
    fails(
        &[
            "train", "--model", "mlp", "--epochs", "2", "--resume", l, "--out", o,
        ],
        1,
        "in use",
    );
    // A lock and temporary files left by a killed run are cleaned up.
    std::fs::write(out.join(".lock"), "4294967295").unwrap();
    std::fs::write(out.join(".last.safetensors.tmp.123"), b"half").unwrap();
    let resumed = tessera(&["train", "--epochs", "2", "--resume", l, "--out", o]);
    assert_eq!(resumed.status.code(), Some(0));
    assert!(!out.join(".lock").exists() && !out.join(".last.safetensors.tmp.123").exists());
    // The optimizer comes back with its state on --resume.
    let adam = dir.join("adam");
    let a = adam.to_str().unwrap();
    let first = tessera(&[
        "train",
        "--model",
        "mlp",
        "--optimizer",
        "adam",
        "--epochs",
        "1",
        "--out",
        a,
    ]);
    assert_eq!(first.status.code(), Some(0));
    let last = adam.join("last.safetensors");
    let again = tessera(&[
        "train",
        "--epochs",
        "2",
        "--resume",
        last.to_str().unwrap(),
        "--out",
        a,
    ]);
    assert!(String::from_utf8_lossy(&again.stdout).contains(", adam lr"));
    // A closed pipe (`| head -1`) ends the run quietly after its checkpoint.
    let piped = dir.join("piped");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "train",
            "--model",
            "mlp",
            "--epochs",
            "5",
            "--out",
            piped.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first_line,
    )
    .unwrap();
    assert!(first_line.starts_with("training mlp"), "{first_line}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && out.status.code() == Some(0),
        "{err}"
    );
    assert!(piped.join("last.safetensors").exists());
    let epochs = std::fs::read_to_string(piped.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(epochs < 5, "kept training for nobody: {epochs} epochs");
    // A full stdout is an error, not a panic.
    let full = std::fs::File::create("/dev/full").map(Stdio::from);
    if let Ok(full) = full {
        let r = tessera_to(&["summary", "alexnet"], Some(full));
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            !err.contains("panicked") && r.status.code() == Some(1),
            "{err}"
        );
    }
}

/// `tessera eval` on a PyTorch state_dict of the character transformer prints PyTorch's
/// validation bits per character (fixture: tests/fixtures/make_fixtures.py); wrong sizes or
/// data are errors, not panics.
#[test]
fn eval_of_a_pytorch_char_transformer_prints_pytorchs_bits_per_char() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (ckpt, text) = (
        fixtures.join("transformer.safetensors"),
        fixtures.join("tiny.txt"),
    );
    let (ckpt, text) = (ckpt.to_str().unwrap(), text.to_str().unwrap());
    let out = tessera(&[
        "eval",
        ckpt,
        "--model",
        "chartransformer",
        "--data",
        text,
        "--heads",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("validation bits/char: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no bits/char line in {stdout}"));
    let bytes = std::fs::read(fixtures.join("tiny_bpc.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want = f64::from_le_bytes(
        st.tensor("tiny_bpc").unwrap().data()[..8]
            .try_into()
            .unwrap(),
    );
    assert!((got - want).abs() < 1e-3, "tessera {got} vs PyTorch {want}");
    // Three heads do not divide the width 8; the embedded novel has another vocabulary.
    fails(
        &[
            "eval",
            ckpt,
            "--model",
            "chartransformer",
            "--data",
            text,
            "--heads",
            "3",
        ],
        1,
        "does not divide",
    );
    fails(
        &["eval", ckpt, "--model", "chartransformer", "--data", "text"],
        1,
        "vocabulary",
    );
    fails(
        &["train", "--model", "mlp", "--data", "text"],
        1,
        "chartransformer",
    );
}

/// `--resume` for the character transformer: the resumed run starts after the checkpoint's
/// epoch, keeps its metrics history, continues from its weights (the second epoch's training
/// loss is below the first's, where a fresh model would start over) and refuses a finished
/// run or a checkpoint of another model.
#[test]
fn a_char_transformer_run_resumes_where_it_stopped() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let text = fixtures.join("tiny.txt");
    let text = text.to_str().unwrap();
    let dir = scratch("text-resume");
    let run = dir.join("run");
    let o = run.to_str().unwrap();
    let common = [
        "--model",
        "chartransformer",
        "--data",
        text,
        "--batch-size",
        "1",
        "--out",
        o,
    ];
    let first = tessera(&[&["train", "--epochs", "1"], &common[..]].concat());
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let last = run.join("last.safetensors");
    let l = last.to_str().unwrap();
    fails(
        &["train", "--epochs", "1", "--resume", l, "--out", o],
        1,
        "nothing to train",
    );
    let resumed = tessera(&[
        "train",
        "--epochs",
        "2",
        "--batch-size",
        "1",
        "--resume",
        l,
        "--out",
        o,
    ]);
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert_eq!(
        resumed.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(
        stdout.contains("epoch 2/2") && !stdout.contains("epoch 1/2"),
        "{stdout}"
    );
    assert!(stdout.contains("validation bits/char: "), "{stdout}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["train_loss"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 2, "{metrics}");
    assert!(
        losses[1] < losses[0],
        "epoch 2 did not continue epoch 1: {losses:?}"
    );
    // An image model's checkpoint is not a character transformer's.
    let mlp = dir.join("mlp");
    let m = mlp.to_str().unwrap();
    let img = tessera(&["train", "--model", "mlp", "--epochs", "1", "--out", m]);
    assert_eq!(img.status.code(), Some(0));
    let ml = mlp.join("last.safetensors");
    fails(
        &[
            "train",
            "--model",
            "chartransformer",
            "--epochs",
            "3",
            "--resume",
            ml.to_str().unwrap(),
            "--out",
            dir.join("x").to_str().unwrap(),
        ],
        1,
        "not of chartransformer",
    );
}
