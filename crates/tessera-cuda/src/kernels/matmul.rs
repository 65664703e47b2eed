//! Batched matrix products: cuBLAS strided-batched GEMM for f32/f64 (and f16/bf16 with f32
//! accumulation), reading operands in place
//! when they are row-major or transposed matrices with one batch stride; matmul.cu for i64.

use super::{dev_err, grid};
use crate::{cuda_buf, launch, CudaBackend, CudaBuffer};
use cudarc::cublas::result as blas;
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t as Op, cudaDataType,
};
use std::ffi::c_void;
use tessera_core::{coalesce, Buffer, DType, Error, Layout, Result, View};

/// One GEMM operand as cuBLAS reads it (column-major view of row-major data).
struct Operand {
    ptr: u64,
    ld: i32,
    trans: bool,
    batch_stride: i64,
    _copy: Option<CudaBuffer>,
}

/// How cuBLAS reads a `[..batch, rows, cols]` layout in place: (leading dimension, transposed,
/// batch stride), all in elements; `None` when it needs a contiguous copy first (rows and columns
/// both strided, or batch dims that do not merge into one stride).
pub fn in_place(l: &Layout, rows: usize, cols: usize) -> Option<(usize, bool, usize)> {
    let r = l.rank();
    let (rs, cs) = (l.strides()[r - 2], l.strides()[r - 1]);
    let (bshape, bstrides) = coalesce(&l.shape()[..r - 2], &[&l.strides()[..r - 2]]);
    let batch_stride = match bshape.len() {
        0 => 0,
        1 => bstrides[0][0],
        _ => return None,
    };
    let fits = |ld: usize, need: usize| ld >= need.max(1) && ld <= i32::MAX as usize;
    let normal = (cs == 1 || cols == 1)
        .then(|| if rows == 1 { cols.max(1) } else { rs })
        .filter(|&ld| fits(ld, cols))
        .map(|ld| (ld, false));
    normal
        .or_else(|| {
            (rs == 1 || rows == 1)
                .then(|| if cols == 1 { rows.max(1) } else { cs })
                .filter(|&ld| fits(ld, rows))
                .map(|ld| (ld, true))
        })
        .map(|(ld, t)| (ld, t, batch_stride))
}

/// The arguments of one `gemm_strided_batched` call (column-major, as cuBLAS takes them) for
/// row-major `C = A·B` of `[m, k]·[k, n]`: cuBLAS computes `Cᵀ = Bᵀ·Aᵀ`, so our `b` goes first
/// and each operand's row-major data already is the column-major transpose it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmArgs {
    /// `CUBLAS_OP_T` for the first operand (our `b`).
    pub trans_first: bool,
    /// `CUBLAS_OP_T` for the second operand (our `a`).
    pub trans_second: bool,
    /// Rows of the column-major result (our `n`).
    pub m: usize,
    /// Columns of the column-major result (our `m`).
    pub n: usize,
    /// The shared dimension.
    pub k: usize,
    /// Leading dimension of the first operand.
    pub ld_first: usize,
    /// Batch stride of the first operand (0 when broadcast).
    pub stride_first: usize,
    /// Leading dimension of the second operand.
    pub ld_second: usize,
    /// Batch stride of the second operand.
    pub stride_second: usize,
    /// Leading dimension of the result.
    pub ldc: usize,
    /// Batch stride of the result.
    pub stride_c: usize,
    /// Number of products.
    pub batch: usize,
}

/// [`GemmArgs`] from the in-place descriptions of `a` (`[m, k]`) and `b` (`[k, n]`).
pub fn gemm_args(
    a: (usize, bool, usize),
    b: (usize, bool, usize),
    [m, k, n, batch]: [usize; 4],
) -> GemmArgs {
    GemmArgs {
        trans_first: b.1,
        trans_second: a.1,
        m: n,
        n: m,
        k,
        ld_first: b.0,
        stride_first: b.2,
        ld_second: a.0,
        stride_second: a.2,
        ldc: n,
        stride_c: m * n,
        batch,
    }
}

/// Reads `v` (`[..batch, rows, cols]`) in place when possible, else from a contiguous copy.
fn operand(be: &CudaBackend, v: View<'_>, rows: usize, cols: usize) -> Result<Operand> {
    let b = cuda_buf("matmul", v)?;
    let l = v.layout;
    if let Some((ld, trans, bs)) = in_place(l, rows, cols) {
        return Ok(Operand {
            ptr: b.ptr_at(l.offset()),
            ld: ld as i32,
            trans,
            batch_stride: bs as i64,
            _copy: None,
        });
    }
    let copy = be.empty(l.numel(), b.dtype())?;
    super::shape::copy(
        be,
        b,
        l,
        &copy,
        &tessera_core::Layout::contiguous(l.shape()),
    )?;
    Ok(Operand {
        ptr: copy.ptr(),
        ld: cols.max(1) as i32,
        trans: false,
        batch_stride: (rows * cols) as i64,
        _copy: Some(copy),
    })
}

/// Batched `[..., m, k]·[..., k, n]` (`Backend::matmul`).
pub fn matmul(be: &CudaBackend, a: View<'_>, b: View<'_>) -> Result<CudaBuffer> {
    let (sa, sb) = (a.layout.shape(), b.layout.shape());
    let r = sa.len();
    if r < 2 || sb.len() != r || sa[..r - 2] != sb[..r - 2] || sa[r - 1] != sb[r - 2] {
        return Err(Error::Shape {
            op: "matmul",
            msg: "expected [..., m, k] and [..., k, n] with equal batch dims".into(),
            lhs: sa.to_vec().into(),
            rhs: sb.to_vec().into(),
        });
    }
    let (m, k, n) = (sa[r - 2], sa[r - 1], sb[r - 1]);
    let batch: usize = sa[..r - 2].iter().product();
    let dtype = cuda_buf("matmul", a)?.dtype();
    if batch * m * n == 0 || k == 0 {
        return be.zeros(batch * m * n, dtype);
    }
    if [m, n, k, batch].iter().any(|&d| d > i32::MAX as usize) {
        return Err(Error::invalid(
            "matmul",
            "a dimension exceeds cuBLAS's 32-bit sizes",
        ));
    }
    if dtype == DType::I64 {
        return matmul_i64(be, a, b, [batch, m, n, k]);
    }
    let (oa, ob) = (operand(be, a, m, k)?, operand(be, b, k, n)?);
    let out = be.empty(batch * m * n, dtype)?;
    let op = |t: bool| if t { Op::CUBLAS_OP_T } else { Op::CUBLAS_OP_N };
    let g = gemm_args(
        (oa.ld as usize, oa.trans, oa.batch_stride as usize),
        (ob.ld as usize, ob.trans, ob.batch_stride as usize),
        [m, k, n, batch],
    );
    let h = *be.blas.handle();
    let (mi, ni, ki, bi) = (g.m as i32, g.n as i32, g.k as i32, g.batch as i32);
    let stride_c = g.stride_c as i64;
    let (lf, sf, ls, ss) = (
        g.ld_first as i32,
        g.stride_first as i64,
        g.ld_second as i32,
        g.stride_second as i64,
    );
    let (tf, ts) = (op(g.trans_first), op(g.trans_second));
    // SAFETY: pointers address live buffers of the right sizes; leading dimensions were checked.
    let res = unsafe {
        match dtype {
            // f16/bf16 in and out, f32 accumulation and scalars.
            DType::F16 | DType::BF16 => {
                let t = if dtype == DType::F16 {
                    cudaDataType::CUDA_R_16F
                } else {
                    cudaDataType::CUDA_R_16BF
                };
                let (one, zero) = (1.0f32, 0.0f32);
                blas::gemm_strided_batched_ex(
                    h,
                    tf,
                    ts,
                    mi,
                    ni,
                    ki,
                    &one as *const f32 as *const c_void,
                    ob.ptr as *const c_void,
                    t,
                    lf,
                    sf,
                    oa.ptr as *const c_void,
                    t,
                    ls,
                    ss,
                    &zero as *const f32 as *const c_void,
                    out.ptr() as *mut c_void,
                    t,
                    g.ldc as i32,
                    stride_c,
                    bi,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                )
            }
            DType::F32 => blas::sgemm_strided_batched(
                h,
                tf,
                ts,
                mi,
                ni,
                ki,
                &1.0f32,
                ob.ptr as *const f32,
                lf,
                sf,
                oa.ptr as *const f32,
                ls,
                ss,
                &0.0f32,
                out.ptr() as *mut f32,
                g.ldc as i32,
                stride_c,
                bi,
            ),
            _ => blas::dgemm_strided_batched(
                h,
                tf,
                ts,
                mi,
                ni,
                ki,
                &1.0f64,
                ob.ptr as *const f64,
                lf,
                sf,
                oa.ptr as *const f64,
                ls,
                ss,
                &0.0f64,
                out.ptr() as *mut f64,
                g.ldc as i32,
                stride_c,
                bi,
            ),
        }
    };
    res.map_err(|e| dev_err("cublas gemm", e))?;
    Ok(out)
}

fn matmul_i64(be: &CudaBackend, a: View<'_>, b: View<'_>, dims: [usize; 4]) -> Result<CudaBuffer> {
    let [batch, m, n, k] = dims;
    let (ab, bb) = (cuda_buf("matmul", a)?, cuda_buf("matmul", b)?);
    let (ca, cb) = (be.contiguous("matmul", a)?, be.contiguous("matmul", b)?);
    let ap = ca
        .as_ref()
        .map_or(ab.ptr_at(a.layout.offset()), |c| c.ptr());
    let bp = cb
        .as_ref()
        .map_or(bb.ptr_at(b.layout.offset()), |c| c.ptr());
    let out = be.empty(batch * m * n, DType::I64)?;
    let (bt, mm, nn, kk, op_) = (batch as i64, m as i64, n as i64, k as i64, out.ptr());
    launch!(
        be,
        "matmul",
        "matmul_i64",
        grid(batch * m * n),
        bt,
        mm,
        nn,
        kk,
        ap,
        bp,
        op_
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::{Generator, Tensor};

    /// cuBLAS `gemm_strided_batched` semantics (column-major; `op` transposes), on the host.
    fn cublas_on_host(g: &GemmArgs, first: &[f64], second: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; g.batch * g.stride_c];
        let at = |x: &[f64], ld: usize, t: bool, i: usize, p: usize| {
            if t {
                x[p + i * ld]
            } else {
                x[i + p * ld]
            }
        };
        for q in 0..g.batch {
            let (f, s) = (&first[q * g.stride_first..], &second[q * g.stride_second..]);
            for i in 0..g.m {
                for j in 0..g.n {
                    c[q * g.stride_c + i + j * g.ldc] = (0..g.k)
                        .map(|p| {
                            at(f, g.ld_first, g.trans_first, i, p)
                                * at(s, g.ld_second, g.trans_second, p, j)
                        })
                        .sum();
                }
            }
        }
        c
    }

    /// The elements of `t`'s buffer from its offset on (what the device pointer addresses), or a
    /// contiguous copy with its description when cuBLAS cannot read `t` in place.
    fn operand_on_host(t: &Tensor, rows: usize, cols: usize) -> (Vec<f64>, (usize, bool, usize)) {
        match in_place(t.layout(), rows, cols) {
            Some(d) => {
                let buf = t.buffer();
                let whole =
                    Tensor::from_buffer(buf.clone(), Layout::contiguous(&[buf.len()]), t.device())
                        .unwrap()
                        .to_vec::<f64>()
                        .unwrap();
                (whole[t.layout().offset()..].to_vec(), d)
            }
            None => (
                t.contiguous().unwrap().to_vec::<f64>().unwrap(),
                (cols.max(1), false, rows * cols),
            ),
        }
    }

    #[test]
    fn cublas_arguments_reproduce_row_major_products_for_every_layout() {
        let cpu = tessera_cpu::cpu();
        let mut gen = Generator::new(5);
        let mut r =
            |s: &[usize]| Tensor::randn_with(s, 0.0, 1.0, DType::F64, &mut gen, &cpu).unwrap();
        let cases: Vec<(&str, Tensor, Tensor)> = vec![
            ("plain", r(&[3, 4]), r(&[4, 5])),
            ("a transposed", r(&[4, 3]).t().unwrap(), r(&[4, 5])),
            ("b transposed", r(&[3, 4]), r(&[5, 4]).t().unwrap()),
            (
                "both transposed",
                r(&[4, 3]).t().unwrap(),
                r(&[5, 4]).t().unwrap(),
            ),
            (
                "sliced rows (ld > cols)",
                r(&[3, 9]).narrow(1, 2, 4).unwrap(),
                r(&[4, 7]).narrow(1, 1, 5).unwrap(),
            ),
            ("m = 1", r(&[1, 4]), r(&[4, 5])),
            ("n = 1", r(&[3, 4]), r(&[4, 1])),
            ("k = 1", r(&[3, 1]), r(&[1, 5])),
            (
                "row vector view",
                r(&[4, 6]).narrow(0, 1, 1).unwrap(),
                r(&[6, 2]),
            ),
            ("batched", r(&[2, 3, 4]), r(&[2, 4, 5])),
            (
                "broadcast batch",
                r(&[2, 3, 4]),
                r(&[4, 5]).broadcast_to(&[2, 4, 5]).unwrap(),
            ),
            (
                "batched transposed",
                r(&[2, 4, 3]).transpose(1, 2).unwrap(),
                r(&[2, 5, 4]).transpose(1, 2).unwrap(),
            ),
            ("two batch dims (merge)", r(&[2, 3, 3, 4]), r(&[2, 3, 4, 2])),
            (
                "two batch dims (copy)",
                r(&[3, 2, 3, 4]).transpose(0, 1).unwrap(),
                r(&[2, 3, 4, 2]),
            ),
            (
                "strided both ways (copy)",
                r(&[6, 8])
                    .slice(0, 0, 6, 2)
                    .unwrap()
                    .slice(1, 0, 8, 2)
                    .unwrap(),
                r(&[4, 3]),
            ),
        ];
        for (name, a, b) in cases {
            let (sa, sb) = (a.dims().to_vec(), b.dims().to_vec());
            let rk = sa.len();
            let (m, k, n) = (sa[rk - 2], sa[rk - 1], sb[rk - 1]);
            let batch: usize = sa[..rk - 2].iter().product();
            let (ha, da) = operand_on_host(&a, m, k);
            let (hb, db) = operand_on_host(&b, k, n);
            let g = gemm_args(da, db, [m, k, n, batch]);
            let got = cublas_on_host(&g, &hb, &ha);
            let want = a.matmul(&b).unwrap().to_vec::<f64>().unwrap();
            assert_eq!(got.len(), want.len(), "{name}");
            for (x, y) in got.iter().zip(&want) {
                assert!((x - y).abs() < 1e-12, "{name}: {got:?} vs {want:?}");
            }
        }
    }
}
