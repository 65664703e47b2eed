//! Runs the PyTorch-generated vectors in tests/conformance on every available device.

use tessera::prelude::*;

/// tests/conformance: under `CARGO_MANIFEST_DIR` as cargo sets it when running the test, or as
/// it was at build time (a test binary copied to another machine is given it by .ci/gpu-run.sh).
fn vectors_dir() -> std::path::PathBuf {
    std::env::var("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
        .join("tests/conformance")
}

/// Families checked one by one too, so a regression names its file.
const IMPLEMENTED_FAMILIES: &[&str] = &[
    "elementwise.json",
    "reduce.json",
    "matmul.json",
    "shape.json",
    "select.json",
    "attention.json",
];

/// Every vector on `dev`: none fails or is skipped, and all 450 run.
fn all_pass_on(dev: &Device) -> Result<()> {
    let report = tessera::conformance::run_dir(&vectors_dir(), dev)?;
    for line in report.failure_lines() {
        eprintln!("{line}");
    }
    eprintln!("{dev}: {}", report.summary());
    assert_eq!(report.failed, 0, "{}", report.failure_lines().join("\n"));
    assert_eq!(report.skipped, 0, "skipped ops: {:?}", report.skipped_ops);
    assert!(report.passed >= 450, "{}", report.summary());
    Ok(())
}

#[test]
fn conformance_vectors_pass_on_cpu() -> Result<()> {
    let dir = vectors_dir();
    let dev = Device::parse("cpu")?;
    all_pass_on(&dev)?;

    for family in IMPLEMENTED_FAMILIES {
        let mut r = tessera::conformance::Report::default();
        let mut skipped = Default::default();
        tessera::conformance::run_file(&dir.join(family), &dev, &mut r, &mut skipped)?;
        assert_eq!(r.skipped, 0, "{family}: skipped {skipped:?}");
        assert_eq!(r.failed, 0, "{family}");
    }
    Ok(())
}

/// The same vectors on the CPU's primitives alone ([`tessera::Composed`]): every composite op
/// (what runs wherever a backend has no fused kernel, and under `backward_create_graph`) against
/// PyTorch, not only against the CPU's fused kernels.
#[test]
fn conformance_vectors_pass_on_the_cpu_primitives_alone() -> Result<()> {
    let dev = tessera::Composed::device(&Device::parse("cpu")?);
    assert!(dev.fused().is_none());
    all_pass_on(&dev)
}

/// The same vectors on the GPU when one is usable; otherwise the error must say why.
#[test]
fn conformance_vectors_pass_on_cuda_when_present() -> Result<()> {
    let dev = match Device::parse("cuda") {
        Ok(d) => d,
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("cuda"), "{msg}");
            eprintln!("skipped: cuda conformance: {msg}");
            return Ok(());
        }
    };
    all_pass_on(&dev)
}
