//! Convolution is multiplication by a Toeplitz matrix (1-D) or a doubly block Toeplitz matrix
//! (2-D), and it commutes with shifts (translation equivariance). Both checked numerically
//! against `conv1d`/`conv2d`.
//!
//! `cargo run --release --example toeplitz`

use tessera::ops::conv::{conv1d, conv2d, ConvOptions};
use tessera::prelude::*;

/// The `[n - k + 1, n]` matrix T with `T[i, i + j] = w[j]`: `T · x` is the valid 1-D
/// cross-correlation of x with w.
fn toeplitz(w: &[f64], n: usize) -> Vec<f64> {
    let (k, m) = (w.len(), n - w.len() + 1);
    let mut t = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..k {
            t[i * n + i + j] = w[j];
        }
    }
    t
}

/// The `[(h-kh+1)(w-kw+1), h·w]` doubly block Toeplitz matrix of a 2-D kernel: block (i, i + a)
/// is the 1-D Toeplitz matrix of kernel row a.
fn doubly_block_toeplitz(kernel: &[Vec<f64>], h: usize, w: usize) -> Vec<f64> {
    let (kh, kw) = (kernel.len(), kernel[0].len());
    let (oh, ow) = (h - kh + 1, w - kw + 1);
    let mut t = vec![0.0; oh * ow * h * w];
    for (a, row) in kernel.iter().enumerate() {
        let block = toeplitz(row, w); // [ow, w]
        for i in 0..oh {
            for r in 0..ow {
                for c in 0..w {
                    t[(i * ow + r) * (h * w) + (i + a) * w + c] = block[r * w + c];
                }
            }
        }
    }
    t
}

fn main() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let mut gen = Generator::new(0);
    let max_diff = |a: &Tensor, b: &Tensor| -> Result<f64> {
        a.sub(b)?
            .abs()?
            .amax(&(0..a.rank() as isize).collect::<Vec<_>>(), false)?
            .to_scalar()
    };

    // 1-D: conv1d(x, w) == T(w) · x
    let n = 12;
    let x = Tensor::randn_with(&[n], 0.0, 1.0, DType::F64, &mut gen, &dev)?;
    let w = vec![0.5, -1.0, 2.0];
    let t = Tensor::from_vec(toeplitz(&w, n), &[n - w.len() + 1, n], &dev)?;
    let by_matrix = t.matmul(&x)?;
    let wt = Tensor::from_vec(w.clone(), &[1, 1, w.len()], &dev)?;
    let by_conv = conv1d(
        &x.reshape(&[1, 1, n as isize])?,
        &wt,
        None,
        &ConvOptions::new(),
    )?
    .reshape(&[-1])?;
    println!(
        "1-D: Toeplitz matrix {:?}, max |T·x - conv1d(x)| = {:.1e}",
        t.dims(),
        max_diff(&by_matrix, &by_conv)?
    );

    // 2-D: conv2d(x, k) == B(k) · vec(x)
    let (h, wd) = (6, 7);
    let img = Tensor::randn_with(&[1, 1, h, wd], 0.0, 1.0, DType::F64, &mut gen, &dev)?;
    let kernel = vec![vec![1.0, 0.0, -1.0], vec![2.0, 0.5, -2.0]];
    let b = Tensor::from_vec(
        doubly_block_toeplitz(&kernel, h, wd),
        &[(h - 1) * (wd - 2), h * wd],
        &dev,
    )?;
    let by_matrix = b.matmul(&img.reshape(&[-1])?)?;
    let k = Tensor::from_vec(kernel.concat(), &[1, 1, 2, 3], &dev)?;
    let by_conv = conv2d(&img, &k, None, &ConvOptions::new())?.reshape(&[-1])?;
    println!(
        "2-D: doubly block Toeplitz matrix {:?}, max |B·vec(x) - conv2d(x)| = {:.1e}",
        b.dims(),
        max_diff(&by_matrix, &by_conv)?
    );

    // Equivariance: shifting the input by s shifts the output by s (away from the borders).
    let s = 2;
    let long = Tensor::randn_with(&[1, 1, 20], 0.0, 1.0, DType::F64, &mut gen, &dev)?;
    let shifted = long.narrow(2, 0, 20 - s)?.pad(&[s, 0], 0.0)?; // x[t - s]
    let y = conv1d(&long, &wt, None, &ConvOptions::new())?;
    let y_shifted = conv1d(&shifted, &wt, None, &ConvOptions::new())?;
    let interior = 20 - w.len() + 1 - s;
    let diff = max_diff(
        &y_shifted.narrow(2, s, interior)?,
        &y.narrow(2, 0, interior)?,
    )?;
    println!("equivariance: max |conv(shift(x)) - shift(conv(x))| over the interior = {diff:.1e}");
    let ok = diff < 1e-12 && max_diff(&by_matrix, &by_conv)? < 1e-12;
    println!(
        "{}",
        if ok {
            "all checks passed"
        } else {
            "CHECK FAILED"
        }
    );
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("toeplitz", "a check failed"))
    }
}
