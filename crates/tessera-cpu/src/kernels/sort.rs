//! Stable argsort of rows, in parallel over rows.

use super::Num;
use rayon::prelude::*;
use std::cmp::Ordering;

/// NaN last (the largest), everything else by value: PyTorch's order.
fn total<T: Num>(a: T, b: T) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// For each row of `n` elements of `x`, the positions of its elements in ascending
/// (`descending`: descending) order; equal elements keep their order either way, because a
/// stable sort with the reversed comparison never swaps equals.
pub fn argsort_rows<T: Num>(x: &[T], n: usize, descending: bool) -> Vec<i64> {
    let mut out = vec![0i64; x.len()];
    if n == 0 {
        return out;
    }
    let row = |(o, xs): (&mut [i64], &[T])| {
        o.iter_mut().enumerate().for_each(|(i, v)| *v = i as i64);
        if descending {
            o.sort_by(|&a, &b| total(xs[b as usize], xs[a as usize]));
        } else {
            o.sort_by(|&a, &b| total(xs[a as usize], xs[b as usize]));
        }
    };
    if x.len() < super::PAR_MIN {
        out.chunks_mut(n).zip(x.chunks(n)).for_each(row);
    } else {
        out.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_both_ways_with_nan_largest() {
        let x = [2.0f64, f64::NAN, 1.0, 2.0, -1.0, 1.0];
        assert_eq!(argsort_rows(&x, 6, false), vec![4, 2, 5, 0, 3, 1]);
        assert_eq!(argsort_rows(&x, 6, true), vec![1, 0, 3, 2, 5, 4]);
        assert_eq!(argsort_rows(&x, 3, false), vec![2, 0, 1, 1, 2, 0]);
    }
}
