//! CPU kernels by family. Each family file holds generic inner functions; `lib.rs` matches on
//! dtype and op once and calls them, so the inner loops are monomorphised per op and dtype and
//! LLVM can vectorise the contiguous paths.

pub mod attention;
pub mod conv;
#[cfg(target_arch = "x86_64")]
pub mod conv_direct;
pub mod elementwise;
#[cfg(target_arch = "x86_64")]
pub mod gemm_nn;
#[cfg(target_arch = "x86_64")]
pub mod gemm_nt;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod rnn;
pub mod shape;
pub mod sort;
pub mod vmath;
pub mod winograd;

use crate::buffer::{alloc, CpuElem};
use rayon::prelude::*;
use tessera_core::{coalesce, Layout};

/// Elements below which a kernel runs on one thread. Measured on the 2-core reference machine
/// (f32 `add`, contiguous, one thread vs two): 32K elements 5-7 µs either way, 64K 8-11 µs vs
/// 5.6 µs, 128K 22 µs vs 10 µs. So parallelism starts paying at 64K elements.
pub const PAR_MIN: usize = 1 << 16;
/// Elements one parallel task handles.
pub const CHUNK: usize = 1 << 14;

/// Arithmetic shared by every element type.
pub trait Num:
    CpuElem
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
{
    fn zero() -> Self;
    fn one() -> Self;
    fn is_nan(self) -> bool;
    fn abs(self) -> Self;
}

/// Floating-point functions.
pub trait Float: Num {
    fn exp(self) -> Self;
    /// `e^v` of every element, in place: f32 through [`vmath`]'s vectorised `exp`.
    fn exp_in_place(v: &mut [Self]) {
        v.iter_mut().for_each(|x| *x = x.exp())
    }
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn erf(self) -> Self;
    fn powf(self, p: Self) -> Self;
}

macro_rules! float {
    ($t:ty, $erf:path $(, $exp_in_place:path)?) => {
        impl Num for $t {
            #[inline(always)]
            fn zero() -> Self {
                0.0
            }
            #[inline(always)]
            fn one() -> Self {
                1.0
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                self != self
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
        }
        impl Float for $t {
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn powf(self, p: Self) -> Self {
                <$t>::powf(self, p)
            }
            $(
                fn exp_in_place(v: &mut [Self]) {
                    $exp_in_place(v)
                }
            )?
        }
    };
}
float!(f32, libm::erff, vmath::exp_in_place);
float!(f64, libm::erf);

/// Half types compute through f32 per element (as PyTorch's CPU kernels do); ops that
/// accumulate (sums, GEMM, softmax, col2im) run in f32 end to end, see the backend.
macro_rules! half_float {
    ($t:ty) => {
        impl Num for $t {
            #[inline(always)]
            fn zero() -> Self {
                <$t>::ZERO
            }
            #[inline(always)]
            fn one() -> Self {
                <$t>::ONE
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                // Both half formats keep the sign in the top bit.
                <$t>::from_bits(self.to_bits() & 0x7fff)
            }
        }
        impl Float for $t {
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::from_f32(self.to_f32().exp())
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::from_f32(self.to_f32().ln())
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                <$t>::from_f32(self.to_f32().ln_1p())
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::from_f32(self.to_f32().sqrt())
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::from_f32(self.to_f32().tanh())
            }
            #[inline(always)]
            fn erf(self) -> Self {
                <$t>::from_f32(libm::erff(self.to_f32()))
            }
            #[inline(always)]
            fn powf(self, p: Self) -> Self {
                <$t>::from_f32(self.to_f32().powf(p.to_f32()))
            }
        }
    };
}
half_float!(half::f16);
half_float!(half::bf16);

impl Num for i64 {
    #[inline(always)]
    fn zero() -> Self {
        0
    }
    #[inline(always)]
    fn one() -> Self {
        1
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        false
    }
    #[inline(always)]
    fn abs(self) -> Self {
        i64::wrapping_abs(self)
    }
}

/// Buffer offset of row `row` of a layout whose outer dims are `shape`/`strides`.
#[inline]
pub(crate) fn unravel(mut row: usize, shape: &[usize], strides: &[usize]) -> usize {
    let mut off = 0;
    for i in (0..shape.len()).rev() {
        let d = shape[i];
        off += (row % d) * strides[i];
        row /= d;
    }
    off
}

/// The coalesced view of `n` layouts of one shape: outer dims, their strides per layout, and
/// the inner dim's length and stride per layout.
pub(crate) struct Rows {
    pub outer: Vec<usize>,
    pub outer_strides: Vec<Vec<usize>>,
    pub inner: usize,
    pub inner_strides: Vec<usize>,
    pub offsets: Vec<usize>,
}

impl Rows {
    pub fn new(layouts: &[&Layout]) -> Rows {
        let shape = layouts[0].shape();
        let strides: Vec<&[usize]> = layouts.iter().map(|l| l.strides()).collect();
        let (cs, st) = coalesce(shape, &strides);
        let offsets = layouts.iter().map(|l| l.offset()).collect();
        if cs.is_empty() {
            return Rows {
                outer: vec![],
                outer_strides: vec![vec![]; layouts.len()],
                inner: 1,
                inner_strides: vec![0; layouts.len()],
                offsets,
            };
        }
        let r = cs.len();
        Rows {
            outer: cs[..r - 1].to_vec(),
            outer_strides: st.iter().map(|s| s[..r - 1].to_vec()).collect(),
            inner: cs[r - 1],
            inner_strides: st.iter().map(|s| s[r - 1]).collect(),
            offsets,
        }
    }

    /// Buffer offset of position `col` of row `row` in layout `k`.
    #[inline]
    pub fn at(&self, k: usize, row: usize, col: usize) -> usize {
        self.offsets[k]
            + unravel(row, &self.outer, &self.outer_strides[k])
            + col * self.inner_strides[k]
    }
}

/// Fills `out` (row-major over the rows' shape) by calling `seg(out_segment, row, col)` for
/// runs that stay within one row; parallel over chunks when large.
pub(crate) fn for_segments<U: Send>(
    out: &mut [U],
    inner: usize,
    seg: impl Fn(&mut [U], usize, usize) + Sync,
) {
    let run = |start: usize, chunk: &mut [U]| {
        let mut done = 0;
        while done < chunk.len() {
            let pos = start + done;
            let (row, col) = (pos / inner, pos % inner);
            let len = (inner - col).min(chunk.len() - done);
            seg(&mut chunk[done..done + len], row, col);
            done += len;
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, c)| run(i * CHUNK, c));
    } else {
        run(0, out);
    }
}

/// `f` of every element of `x` (any layout), into a new contiguous vector.
pub(crate) fn map1<T: CpuElem, U: CpuElem>(
    x: &[T],
    lx: &Layout,
    f: impl Fn(T) -> U + Sync,
) -> Vec<U> {
    let mut out = alloc::<U>(lx.numel());
    if lx.is_contiguous() {
        let x = &x[lx.offset()..lx.offset() + lx.numel()];
        let body = |o: &mut [U], x: &[T]| {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = f(v);
            }
        };
        if out.len() >= PAR_MIN {
            out.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(o, x)| body(o, x));
        } else {
            body(&mut out, x);
        }
        return out;
    }
    let rows = Rows::new(&[lx]);
    if map1_transposed(x, &rows, &mut out, &f) {
        return out;
    }
    let s = rows.inner_strides[0];
    for_segments(&mut out, rows.inner, |o, row, col| {
        let p = rows.at(0, row, col);
        let n = o.len();
        if s == 1 {
            for (o, &v) in o.iter_mut().zip(&x[p..p + n]) {
                *o = f(v);
            }
        } else if s == 0 {
            // A broadcast run (the seed of a sum's gradient): one value, filled. The strided
            // loop below cost W2a 5% copying its all-ones output gradient.
            o.fill(f(x[p]));
        } else {
            for (k, o) in o.iter_mut().enumerate() {
                *o = f(x[p + k * s]);
            }
        }
    });
    out
}

/// `f` of pairs of elements of `a` and `b` (one shape, any layouts), into a new vector.
pub(crate) fn map2<T: CpuElem, U: CpuElem>(
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    f: impl Fn(T, T) -> U + Sync,
) -> Vec<U> {
    let mut out = alloc::<U>(la.numel());
    let rows = Rows::new(&[la, lb]);
    let (sa, sb) = (rows.inner_strides[0], rows.inner_strides[1]);
    for_segments(&mut out, rows.inner, |o, row, col| {
        let (pa, pb) = (rows.at(0, row, col), rows.at(1, row, col));
        let n = o.len();
        match (sa, sb) {
            (1, 1) => {
                for (o, (&x, &y)) in o.iter_mut().zip(a[pa..pa + n].iter().zip(&b[pb..pb + n])) {
                    *o = f(x, y);
                }
            }
            (1, 0) => {
                let y = b[pb];
                for (o, &x) in o.iter_mut().zip(&a[pa..pa + n]) {
                    *o = f(x, y);
                }
            }
            (0, 1) => {
                let x = a[pa];
                for (o, &y) in o.iter_mut().zip(&b[pb..pb + n]) {
                    *o = f(x, y);
                }
            }
            _ => {
                for (k, o) in o.iter_mut().enumerate() {
                    *o = f(a[pa + k * sa], b[pb + k * sb]);
                }
            }
        }
    });
    out
}

/// `dst[i] = f(dst[i], b[i])` in place (`dst` contiguous over `lb`'s shape, `b` any layout).
pub(crate) fn update2<T: CpuElem>(
    dst: &mut [T],
    b: &[T],
    lb: &Layout,
    f: impl Fn(T, T) -> T + Sync,
) {
    let ld = Layout::contiguous(lb.shape());
    let rows = Rows::new(&[&ld, lb]);
    let sb = rows.inner_strides[1];
    for_segments(dst, rows.inner, |o, row, col| {
        let pb = rows.at(1, row, col);
        let n = o.len();
        match sb {
            1 => {
                for (o, &y) in o.iter_mut().zip(&b[pb..pb + n]) {
                    *o = f(*o, y);
                }
            }
            _ => {
                for (k, o) in o.iter_mut().enumerate() {
                    *o = f(*o, b[pb + k * sb]);
                }
            }
        }
    });
}

/// `f` of triples of elements (one shape, any layouts), into a new vector.
pub(crate) fn map3<C: CpuElem, T: CpuElem>(
    c: &[C],
    lc: &Layout,
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    f: impl Fn(C, T, T) -> T + Sync,
) -> Vec<T> {
    let mut out = alloc::<T>(la.numel());
    let rows = Rows::new(&[lc, la, lb]);
    let s = rows.inner_strides.clone();
    for_segments(&mut out, rows.inner, |o, row, col| {
        let (pc, pa, pb) = (
            rows.at(0, row, col),
            rows.at(1, row, col),
            rows.at(2, row, col),
        );
        for (k, o) in o.iter_mut().enumerate() {
            *o = f(c[pc + k * s[0]], a[pa + k * s[1]], b[pb + k * s[2]]);
        }
    });
    out
}

/// The tiles [`map1_transposed`] walks: `TILE_ROWS` output rows (a contiguous run of the
/// source) by `TILE_COLS` output columns (runs `s` apart in the source). Eight runs stay in L1
/// even when `s` is a multiple of 4 KiB (all in one cache set of 12 ways); 16 or 32 did not.
/// Measured (f32, one thread, best of 200; µs for 32 × 32 / 32 × 8 tiles, the plain loop):
/// `[1024, 256]ᵀ` 106 / 125 / 254, `[1120, 1024]ᵀ` 2436 / 626 / 3714, `[256, 1024]ᵀ`
/// 549 / 136 / 734.
const TILE_ROWS: usize = 32;
const TILE_COLS: usize = 8;

/// [`map1`] of a transposed matrix (or a batch of them): the output's inner dim is strided in
/// `x` and the next dim out is contiguous there. The plain loop reads one element per source
/// cache line per output row; this one copies tile by tile, so each line is read from L1
/// after its first miss. `false` (nothing written) for any other layout, or a small one.
fn map1_transposed<T: CpuElem, U: CpuElem>(
    x: &[T],
    rows: &Rows,
    out: &mut [U],
    f: &(impl Fn(T) -> U + Sync),
) -> bool {
    let r = rows.outer.len();
    let s = rows.inner_strides[0];
    if r == 0 || s <= 1 || rows.outer_strides[0][r - 1] != 1 {
        return false;
    }
    // Each of the batch's planes is `[m, n]` with out[i][j] = x[base + i + j·s].
    let (m, n) = (rows.outer[r - 1], rows.inner);
    if m < TILE_ROWS || n < TILE_COLS {
        return false;
    }
    let (batch, batch_strides) = (&rows.outer[..r - 1], &rows.outer_strides[0][..r - 1]);
    // `TILE_ROWS` output rows of plane `bi` from row block `rb`.
    let block = |bi: usize, rb: usize, o: &mut [U]| {
        let base = rows.offsets[0] + unravel(bi, batch, batch_strides) + rb * TILE_ROWS;
        let rows_here = o.len() / n;
        for j0 in (0..n).step_by(TILE_COLS) {
            let jn = TILE_COLS.min(n - j0);
            for i in 0..rows_here {
                for (jj, o) in o[i * n + j0..i * n + j0 + jn].iter_mut().enumerate() {
                    *o = f(x[base + i + (j0 + jj) * s]);
                }
            }
        }
    };
    let plane = |(bi, p): (usize, &mut [U])| {
        p.chunks_mut(TILE_ROWS * n)
            .enumerate()
            .for_each(|(rb, o)| block(bi, rb, o))
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(m * n).enumerate().for_each(|(bi, p)| {
            p.par_chunks_mut(TILE_ROWS * n)
                .enumerate()
                .for_each(|(rb, o)| block(bi, rb, o))
        });
    } else {
        out.chunks_mut(m * n).enumerate().for_each(plane);
    }
    true
}

/// Copies `src` (any layout) into the region `ld` of `dst`.
pub(crate) fn copy_into<T: CpuElem>(src: &[T], ls: &Layout, dst: &mut [T], ld: &Layout) {
    // An empty part copies nothing (its strides and offset may point anywhere).
    if ls.numel() == 0 {
        return;
    }
    let rows = Rows::new(&[ls, ld]);
    let (ss, sd) = (rows.inner_strides[0], rows.inner_strides[1]);
    let n_rows: usize = rows.outer.iter().product();
    for row in 0..n_rows {
        let (ps, pd) = (rows.at(0, row, 0), rows.at(1, row, 0));
        if ss == 1 && sd == 1 {
            dst[pd..pd + rows.inner].copy_from_slice(&src[ps..ps + rows.inner]);
        } else if ss == 0 && sd == 1 {
            // A broadcast run (a sum's gradient padded into a larger tensor): one value.
            dst[pd..pd + rows.inner].fill(src[ps]);
        } else {
            for k in 0..rows.inner {
                dst[pd + k * sd] = src[ps + k * ss];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element of `l`'s view, in row-major order of its shape.
    fn gather(x: &[f32], l: &Layout) -> Vec<f64> {
        let shape = l.shape();
        let n: usize = shape.iter().product();
        (0..n)
            .map(|mut k| {
                let mut idx = vec![0; shape.len()];
                for d in (0..shape.len()).rev() {
                    idx[d] = k % shape[d];
                    k /= shape[d];
                }
                x[l.offset_of(&idx)] as f64
            })
            .collect()
    }

    /// Copies into a region of a larger buffer (`assemble`): broadcast runs (the all-ones
    /// gradient of a sum, padded into a larger tensor) and strided ones land where the plain
    /// element order puts them.
    #[test]
    fn copies_into_a_region_broadcast_or_strided() {
        let src: Vec<f32> = (1..=12).map(|v| v as f32).collect();
        let region = Layout::new(vec![3, 4], vec![5, 1], 6);
        for ls in [
            Layout::new(vec![3, 4], vec![0, 0], 2),
            Layout::new(vec![3, 4], vec![1, 0], 1),
            Layout::new(vec![3, 4], vec![0, 1], 0),
            Layout::new(vec![3, 4], vec![1, 2], 0),
        ] {
            let mut dst = vec![0.0f32; 22];
            copy_into(&src, &ls, &mut dst, &region);
            let mut want = vec![0.0f32; 22];
            for (k, v) in gather(&src, &ls).into_iter().enumerate() {
                want[6 + (k / 4) * 5 + k % 4] = v as f32;
            }
            assert_eq!(dst, want, "{:?}", ls.strides());
        }
    }

    /// The tiled copy of transposed matrices gives what the plain strided loop gives: planes
    /// that are not whole tiles, a batch of them (parallel above `PAR_MIN`), an offset, a
    /// permutation whose batch dim is strided, a cast on the way, and layouts it declines.
    #[test]
    fn transposed_copies_match_the_element_order() {
        let x: Vec<f32> = (0..400_000)
            .map(|i| (i % 9973) as f32 * 0.5 - 7.0)
            .collect();
        let cases = [
            Layout::contiguous(&[70, 33]).permute(&[1, 0]),
            Layout::contiguous(&[1024, 256]).permute(&[1, 0]),
            Layout::new(vec![40, 50], vec![1, 41], 17),
            Layout::contiguous(&[3, 40, 50]).permute(&[0, 2, 1]),
            Layout::contiguous(&[40, 3, 50]).permute(&[1, 2, 0]),
            Layout::contiguous(&[7, 100, 120]).permute(&[0, 2, 1]),
            Layout::contiguous(&[20, 33]).permute(&[1, 0]),
            Layout::contiguous(&[40, 20]).permute(&[1, 0]),
            Layout::contiguous(&[40, 50]),
        ];
        for l in cases {
            let got: Vec<f64> = map1(&x, &l, |v| v as f64);
            assert_eq!(got, gather(&x, &l), "{:?} {:?}", l.shape(), l.strides());
        }
    }
}
