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
use tessera_core::{coalesce, Buffer, DType, Error, Result, View};

/// One GEMM operand as cuBLAS reads it (column-major view of row-major data).
struct Operand {
    ptr: u64,
    ld: i32,
    trans: bool,
    batch_stride: i64,
    _copy: Option<CudaBuffer>,
}

/// Reads `v` (`[..batch, rows, cols]`) in place when possible, else from a contiguous copy.
fn operand(be: &CudaBackend, v: View<'_>, rows: usize, cols: usize) -> Result<Operand> {
    let b = cuda_buf("matmul", v)?;
    let l = v.layout;
    let r = l.rank();
    let (rs, cs) = (l.strides()[r - 2], l.strides()[r - 1]);
    let (bshape, bstrides) = coalesce(&l.shape()[..r - 2], &[&l.strides()[..r - 2]]);
    let batch_stride = match bshape.len() {
        0 => Some(0),
        1 => Some(bstrides[0][0]),
        _ => None,
    };
    let fits = |ld: usize, need: usize| ld >= need.max(1) && ld <= i32::MAX as usize;
    let layout = if cs == 1 || cols == 1 {
        let ld = if rows == 1 { cols.max(1) } else { rs };
        fits(ld, cols).then_some((ld, false))
    } else {
        None
    }
    .or_else(|| {
        if rs == 1 || rows == 1 {
            let ld = if cols == 1 { rows.max(1) } else { cs };
            fits(ld, rows).then_some((ld, true))
        } else {
            None
        }
    });
    if let (Some((ld, trans)), Some(bs)) = (layout, batch_stride) {
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
    // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: B goes first, and the row-major data of each
    // operand already is the column-major transpose cuBLAS needs.
    let h = *be.blas.handle();
    let (mi, ni, ki, bi) = (n as i32, m as i32, k as i32, batch as i32);
    let stride_c = (m * n) as i64;
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
                    op(ob.trans),
                    op(oa.trans),
                    mi,
                    ni,
                    ki,
                    &one as *const f32 as *const c_void,
                    ob.ptr as *const c_void,
                    t,
                    ob.ld,
                    ob.batch_stride,
                    oa.ptr as *const c_void,
                    t,
                    oa.ld,
                    oa.batch_stride,
                    &zero as *const f32 as *const c_void,
                    out.ptr() as *mut c_void,
                    t,
                    mi,
                    stride_c,
                    bi,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                )
            }
            DType::F32 => blas::sgemm_strided_batched(
                h,
                op(ob.trans),
                op(oa.trans),
                mi,
                ni,
                ki,
                &1.0f32,
                ob.ptr as *const f32,
                ob.ld,
                ob.batch_stride,
                oa.ptr as *const f32,
                oa.ld,
                oa.batch_stride,
                &0.0f32,
                out.ptr() as *mut f32,
                mi,
                stride_c,
                bi,
            ),
            _ => blas::dgemm_strided_batched(
                h,
                op(ob.trans),
                op(oa.trans),
                mi,
                ni,
                ki,
                &1.0f64,
                ob.ptr as *const f64,
                ob.ld,
                ob.batch_stride,
                oa.ptr as *const f64,
                oa.ld,
                oa.batch_stride,
                &0.0f64,
                out.ptr() as *mut f64,
                mi,
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
