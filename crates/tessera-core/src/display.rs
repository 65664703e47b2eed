//! Printing like PyTorch: nested brackets, one number format for the whole tensor, and `...`
//! in place of the middle of any dim when the tensor has more than 1000 elements.

use crate::dtype::DType;
use crate::tensor::Tensor;
use std::fmt;

const THRESHOLD: usize = 1000;
const EDGE: usize = 3;

fn number_format(values: &[f64], dtype: DType) -> impl Fn(f64) -> String {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let ints = dtype == DType::I64 || finite.iter().all(|v| v.fract() == 0.0);
    let max = finite.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let min = finite
        .iter()
        .filter(|v| **v != 0.0)
        .fold(f64::INFINITY, |m, v| m.min(v.abs()));
    let sci = max >= 1e8
        || (min < 1e-4 && min.is_finite())
        || (max / min.min(max.max(1e-300)) > 1e3 && min < 1e-2);
    move |v: f64| {
        if !v.is_finite() {
            if v.is_nan() {
                "nan".into()
            } else if v > 0.0 {
                "inf".into()
            } else {
                "-inf".into()
            }
        } else if dtype == DType::I64 {
            format!("{}", v as i64)
        } else if sci {
            format!("{v:.4e}")
        } else if ints {
            format!("{v:.0}.")
        } else {
            format!("{v:.4}")
        }
    }
}

fn write_dim(
    out: &mut String,
    cells: &[String],
    dims: &[usize],
    strides: &[usize],
    base: usize,
    elide: bool,
    depth: usize,
) {
    if dims.is_empty() {
        out.push_str(&cells[base]);
        return;
    }
    out.push('[');
    let n = dims[0];
    let shown: Vec<Option<usize>> = if elide && n > 2 * EDGE {
        (0..EDGE)
            .map(Some)
            .chain([None])
            .chain((n - EDGE..n).map(Some))
            .collect()
    } else {
        (0..n).map(Some).collect()
    };
    for (k, i) in shown.iter().enumerate() {
        if k > 0 {
            out.push(',');
            if dims.len() > 1 {
                out.push_str(&"\n".repeat(dims.len() - 1));
                out.push_str(&" ".repeat(depth + 8));
            } else {
                out.push(' ');
            }
        }
        match i {
            Some(i) => write_dim(
                out,
                cells,
                &dims[1..],
                &strides[1..],
                base + i * strides[0],
                elide,
                depth + 1,
            ),
            None => out.push_str("..."),
        }
    }
    out.push(']');
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values = match self.to_vec_f64() {
            Ok(v) => v,
            Err(e) => return write!(f, "tensor(<unreadable: {e}>)"),
        };
        let fmt_num = number_format(&values, self.dtype());
        let mut cells: Vec<String> = values.iter().map(|&v| fmt_num(v)).collect();
        let width = cells.iter().map(|c| c.len()).max().unwrap_or(0);
        for c in cells.iter_mut() {
            *c = format!("{c:>width$}");
        }
        let mut s = String::from("tensor(");
        let strides = crate::layout::contiguous_strides(self.dims());
        write_dim(
            &mut s,
            &cells,
            self.dims(),
            &strides,
            0,
            self.numel() > THRESHOLD,
            0,
        );
        write!(f, "{s}, shape={}, dtype={}", self.shape(), self.dtype())?;
        if self.device().name() != "cpu" {
            write!(f, ", device={}", self.device())?;
        }
        if self.requires_grad() {
            write!(f, ", requires_grad")?;
        }
        f.write_str(")")
    }
}
