//! Bad input gets a clear error or PyTorch's result, never a panic, an abort or a wrong answer
//! (issue 15): sizes of zero, size arithmetic that would overflow, memory requests that cannot
//! be met, integer division, strict loaders.

use tessera::prelude::*;

fn cpu() -> Device {
    Device::parse("cpu").unwrap()
}

/// `f` neither panics nor returns `Ok` — it must be an error whose message contains `needle`.
fn fails_with<T: std::fmt::Debug>(what: &str, needle: &str, f: impl FnOnce() -> Result<T>) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    match r {
        Err(_) => panic!("{what}: panicked"),
        Ok(Ok(v)) => panic!("{what}: accepted ({v:?})"),
        Ok(Err(e)) => {
            let m = e.to_string();
            assert!(m.contains(needle), "{what}: message {m:?} lacks {needle:?}");
        }
    }
}

#[test]
fn zero_size_dims_work_where_pytorch_allows_them() -> Result<()> {
    let dev = cpu();
    let z = Tensor::zeros(&[2, 0, 3], DType::F32, &dev)?;
    assert!(z.layout().is_contiguous());
    assert_eq!(z.reshape(&[0, 3])?.dims(), &[0, 3]);
    assert_eq!(z.flatten(1, -1)?.dims(), &[2, 0]);
    let img = Tensor::zeros(&[4, 1, 0, 28], DType::F32, &dev)?;
    assert_eq!(img.flatten(1, -1)?.dims(), &[4, 0]);
    let a = Tensor::ones(&[2, 3], DType::F32, &dev)?;
    let e = Tensor::zeros(&[0, 3], DType::F32, &dev)?;
    assert_eq!(Tensor::concat(&[&a, &e], 0)?.to_vec::<f32>()?, vec![1.0; 6]);
    assert_eq!(Tensor::concat(&[&e, &e], 0)?.dims(), &[0, 3]);
    assert_eq!(Tensor::stack(&[&e, &e], 0)?.dims(), &[2, 0, 3]);
    assert_eq!(e.pad(&[1, 1], 0.0)?.dims(), &[0, 5]);
    assert_eq!(z.pad(&[1, 1, 1, 1], 2.0)?.dims(), &[2, 2, 5]);
    // Reductions over nothing: PyTorch's sum is 0, its mean NaN, its max an error.
    assert_eq!(e.sum_all()?.to_vec::<f32>()?, vec![0.0]);
    assert!(e.mean_all()?.to_vec::<f32>()?[0].is_nan());
    assert!(e
        .mean(&[0], false)?
        .to_vec::<f32>()?
        .iter()
        .all(|v| v.is_nan()));
    fails_with("amax of nothing", "empty", || e.amax(&[0], false));
    Ok(())
}

#[test]
fn lstm_with_hidden_size_zero_is_an_error_or_empty_never_a_panic() {
    use tessera::nn::{Ctx, Lstm};
    use tessera::ops::rnn::RnnOptions;
    let dev = cpu();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<Vec<usize>> {
        let opts = RnnOptions {
            hidden_size: 0,
            num_layers: 1,
            bidirectional: false,
            batch_first: false,
            bias: true,
        };
        let lstm = Lstm::new(&mut Ctx::new(&dev, 0), 3, opts)?;
        let x = Tensor::ones(&[5, 2, 3], DType::F32, &dev)?;
        Ok(lstm.forward(&x)?.dims().to_vec())
    }));
    match r {
        Ok(Ok(d)) => assert_eq!(d, vec![5, 2, 0]),
        Ok(Err(_)) => {}
        Err(_) => panic!("LSTM with hidden size 0 panicked"),
    }
}

#[test]
fn sizes_that_overflow_are_errors() {
    let dev = cpu();
    fails_with("zeros 2^64", "elements", || {
        Tensor::zeros(&[1 << 32, 1 << 32], DType::F32, &dev)
    });
    fails_with("from_vec 2^80", "elements", || {
        Tensor::from_vec(Vec::<f32>::new(), &[1 << 40, 1 << 40], &dev)
    });
    fails_with("f64 zeros 2^61", "bytes", || {
        Tensor::zeros(&[1 << 61], DType::F64, &dev)
    });
    fails_with("expand to 2^80", "elements", || {
        Tensor::ones(&[1, 1], DType::F32, &dev)?.expand(&[1 << 40, 1 << 40])
    });
    fails_with("broadcast to 2^80", "elements", || {
        let a = Tensor::ones(&[1], DType::F32, &dev)?.expand(&[1 << 40, 1])?;
        let b = Tensor::ones(&[1], DType::F32, &dev)?.expand(&[1, 1 << 40])?;
        a.add(&b)
    });
    fails_with("reshape wrapping around", "elements", || {
        Tensor::zeros(&[16], DType::F32, &dev)?.reshape(&[1 << 32, 1 << 32, 16])
    });
    // A zero dim makes any shape empty, as in PyTorch.
    let empty = Tensor::zeros(&[1 << 32, 1 << 32, 0], DType::F32, &dev).unwrap();
    assert_eq!(empty.numel(), 0);
    fails_with("narrow wrapping", "narrow", || {
        Tensor::zeros(&[2, 3], DType::F32, &dev)?.narrow(1, usize::MAX, 2)
    });
}

#[test]
fn memory_that_cannot_be_had_is_an_error_not_an_abort() {
    let dev = cpu();
    fails_with("zeros 4 TiB", "memory", || {
        Tensor::zeros(&[1 << 40], DType::F32, &dev)
    });
    fails_with("expand then copy 4 TiB", "memory", || {
        Tensor::ones(&[1], DType::F32, &dev)?
            .expand(&[1 << 40])?
            .contiguous()
    });
}

#[test]
fn layers_too_large_to_exist_are_errors() {
    use tessera::nn::{Ctx, Linear};
    let dev = cpu();
    fails_with("Linear 2^31 x 2^31", "bytes", || {
        Linear::new(&mut Ctx::new(&dev, 0), 1 << 31, 1 << 31).map(|_| ())
    });
}

#[test]
fn readers_are_bounded() {
    use std::io::Write;
    let dev = cpu();
    // Not a regular file: read forever before.
    fails_with("checkpoint /dev/zero", "not a regular file", || {
        tessera::nn::checkpoint::load(std::path::Path::new("/dev/zero"), &dev).map(|_| ())
    });
    // A gzip bomb: a header declaring 2 × 2 bytes, then 64 MiB of zeros in a few KiB.
    let dir = std::env::temp_dir().join(format!("tessera-bomb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bomb-idx2-ubyte.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&[0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 2]).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        gz.write_all(&zeros).unwrap();
    }
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
    fails_with("gzip bomb", "more", || tessera::data::read_idx(&path));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn integer_division_by_zero_is_an_error_and_overflow_wraps() -> Result<()> {
    let dev = cpu();
    let a = Tensor::from_vec(vec![7i64, i64::MIN], &[2], &dev)?;
    let zero = Tensor::from_vec(vec![1i64, 0], &[2], &dev)?;
    fails_with("i64 / 0", "division by zero", || a.div(&zero));
    let m1 = Tensor::from_vec(vec![2i64, -1], &[2], &dev)?;
    // PyTorch: 7 // 2 = 3 (truncated for positives), i64::MIN / -1 wraps to i64::MIN.
    assert_eq!(a.div(&m1)?.to_vec::<i64>()?, vec![3, i64::MIN]);
    Ok(())
}
