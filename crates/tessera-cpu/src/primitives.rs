//! The CPU's required primitives ([`Backend`]): every op of tessera runs on these alone.

use crate::dispatch::{binary_typed, ensure_memory, int_binary, out, pow_f, typed, unary_typed};
use crate::kernels::{self, elementwise as ew, matmul as mm, reduce as rd, shape as sh};
use crate::{CpuBackend, CpuBuffer, CpuStorage};
use std::sync::Arc;
use tessera_core::{
    Backend, BinaryOp, Buffer, DType, Distribution, Error, FusedKernels, HostData, Layout,
    ReduceOp, Result, UnaryOp, View,
};

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn upload(&self, data: HostData) -> Result<Arc<dyn Buffer>> {
        Ok(Arc::new(CpuBuffer::new(match data {
            HostData::F32(v) => CpuStorage::F32(v),
            HostData::F64(v) => CpuStorage::F64(v),
            HostData::I64(v) => CpuStorage::I64(v),
            HostData::F16(v) => CpuStorage::F16(v),
            HostData::BF16(v) => CpuStorage::BF16(v),
            HostData::Bool(v) => CpuStorage::Bool(v),
        })))
    }

    fn download(&self, x: View<'_>) -> Result<HostData> {
        with_dtype!(all x.buf.dtype(), "download", |T| {
            let v = kernels::map1(typed::<T>("download", x)?, x.layout, |v: T| v);
            Ok(<T as tessera_core::Element>::into_host(v))
        })
    }

    fn fill(&self, len: usize, dtype: DType, value: f64) -> Result<Arc<dyn Buffer>> {
        ensure_memory("fill", len, dtype)?;
        with_dtype!(all dtype, "fill", |T| out(ew::fill::<T>(len, value)))
    }

    fn random(
        &self,
        len: usize,
        dtype: DType,
        dist: Distribution,
        seed: u64,
        offset: u64,
    ) -> Result<Arc<dyn Buffer>> {
        ensure_memory("random", len, dtype)?;
        with_dtype!(float dtype, "random", |T| out(ew::random::<T>(len, dist, seed, offset)))
    }

    fn cast(&self, x: View<'_>, dtype: DType) -> Result<Arc<dyn Buffer>> {
        ensure_memory("copy", x.layout.numel(), dtype)?;
        with_dtype!(all x.buf.dtype(), "cast", |S| {
            let src = typed::<S>("cast", x)?;
            with_dtype!(all dtype, "cast", |D| out(ew::cast::<S, D>(src, x.layout)))
        })
    }

    fn unary(&self, op: UnaryOp, x: View<'_>) -> Result<Arc<dyn Buffer>> {
        ensure_memory("unary", x.layout.numel(), x.buf.dtype())?;
        match x.buf.dtype() {
            DType::F32 => match kernels::vmath::unary(op, typed::<f32>("unary", x)?, x.layout) {
                Some(v) => out(v),
                None => unary_typed::<f32>(op, x),
            },
            DType::F64 => unary_typed::<f64>(op, x),
            DType::F16 => unary_typed::<half::f16>(op, x),
            DType::BF16 => unary_typed::<half::bf16>(op, x),
            DType::I64 => match ew::unary_num(op, typed::<i64>("unary", x)?, x.layout) {
                Some(v) => out(v),
                None => Err(Error::DType {
                    op: "unary",
                    msg: format!("{op:?} needs a floating-point tensor, got i64"),
                }),
            },
            DType::Bool => Err(bool_unsupported("unary")),
        }
    }

    fn binary(&self, op: BinaryOp, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        ensure_memory("binary", a.layout.numel(), a.buf.dtype())?;
        match a.buf.dtype() {
            DType::F32 => binary_typed::<f32>(op, a, b, pow_f),
            DType::F64 => binary_typed::<f64>(op, a, b, pow_f),
            DType::I64 => int_binary(op, a, b),
            DType::F16 => binary_typed::<half::f16>(op, a, b, pow_f),
            DType::BF16 => binary_typed::<half::bf16>(op, a, b, pow_f),
            DType::Bool => Err(bool_unsupported("binary")),
        }
    }

    fn where_cond(&self, cond: View<'_>, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        ensure_memory("where", a.layout.numel(), a.buf.dtype())?;
        with_dtype!(all cond.buf.dtype(), "where", |C| {
            let c = typed::<C>("where", cond)?;
            with_dtype!(all a.buf.dtype(), "where", |T| {
                let (x, y) = (typed::<T>("where", a)?, typed::<T>("where", b)?);
                out(ew::where_cond(c, cond.layout, x, a.layout, y, b.layout))
            })
        })
    }

    fn reduce(&self, op: ReduceOp, x: View<'_>, axes: &[usize]) -> Result<Arc<dyn Buffer>> {
        if op == ReduceOp::Sum && x.buf.dtype().is_half() {
            return self.via_f32(x, |v| self.reduce(op, v, axes));
        }
        with_dtype!(x.buf.dtype(), "reduce", |T| {
            let v = typed::<T>("reduce", x)?;
            match op {
                ReduceOp::ArgMax | ReduceOp::ArgMin => {
                    let [axis] = axes else {
                        return Err(Error::invalid(
                            "reduce",
                            format!("{op:?} takes one axis, got {axes:?}"),
                        ));
                    };
                    out(rd::arg_reduce(op, v, x.layout, *axis))
                }
                _ => out(rd::reduce(op, v, x.layout, axes)),
            }
        })
    }

    fn matmul(&self, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        let (sa, sb) = (a.layout.shape(), b.layout.shape());
        let rows: usize = sa[..sa.len().saturating_sub(1)].iter().product();
        let out_len = rows.saturating_mul(sb.last().copied().unwrap_or(1));
        ensure_memory("matmul", out_len, a.buf.dtype())?;
        match a.buf.dtype() {
            d @ (DType::F16 | DType::BF16) => {
                let b32 = self.cast(b, DType::F32)?;
                let lb = Layout::contiguous(b.layout.shape());
                let bv = View {
                    buf: b32.as_ref(),
                    layout: &lb,
                };
                let c = self.via_f32(a, |av| self.matmul(av, bv))?;
                debug_assert_eq!(c.dtype(), d);
                Ok(c)
            }
            DType::F32 => out(mm::matmul_f32(
                typed("matmul", a)?,
                a.layout,
                typed("matmul", b)?,
                b.layout,
            )),
            DType::F64 => out(mm::matmul_f64(
                typed("matmul", a)?,
                a.layout,
                typed("matmul", b)?,
                b.layout,
            )),
            DType::I64 => out(mm::matmul_i64(
                typed("matmul", a)?,
                a.layout,
                typed("matmul", b)?,
                b.layout,
            )),
            DType::Bool => Err(bool_unsupported("matmul")),
        }
    }

    fn gather(&self, x: View<'_>, dim: usize, index: View<'_>) -> Result<Arc<dyn Buffer>> {
        ensure_memory("gather", index.layout.numel(), x.buf.dtype())?;
        let idx = typed::<i64>("gather", index)?;
        with_dtype!(all x.buf.dtype(), "gather", |T| out(sh::gather(
            typed::<T>("gather", x)?,
            x.layout,
            dim,
            idx,
            index.layout
        )?))
    }

    fn scatter_add(
        &self,
        shape: &[usize],
        dim: usize,
        index: View<'_>,
        src: View<'_>,
    ) -> Result<Arc<dyn Buffer>> {
        ensure_memory("scatter_add", shape.iter().product(), src.buf.dtype())?;
        let idx = typed::<i64>("scatter_add", index)?;
        with_dtype!(src.buf.dtype(), "scatter_add", |T| {
            out(sh::scatter_add(
                shape,
                dim,
                idx,
                index.layout,
                typed::<T>("scatter_add", src)?,
                src.layout,
            )?)
        })
    }

    fn assemble(
        &self,
        len: usize,
        dtype: DType,
        fill: f64,
        parts: &[(Layout, View<'_>)],
    ) -> Result<Arc<dyn Buffer>> {
        ensure_memory("assemble", len, dtype)?;
        with_dtype!(all dtype, "assemble", |T| {
            let typed_parts = parts
                .iter()
                .map(|(region, v)| {
                    if region.max_extent() > len {
                        return Err(Error::invalid("assemble", "region outside the output"));
                    }
                    Ok((region, typed::<T>("assemble", *v)?, v.layout))
                })
                .collect::<Result<Vec<_>>>()?;
            out(sh::assemble(len, fill, &typed_parts))
        })
    }

    fn fused(&self) -> Option<&dyn FusedKernels> {
        Some(self)
    }
}

/// The error of a primitive that takes no bool tensors (arithmetic on masks needs a cast).
fn bool_unsupported(op: &'static str) -> Error {
    Error::DType {
        op,
        msg: "does not take bool tensors; cast with to_dtype first".into(),
    }
}

#[cfg(test)]
mod tests {
    use crate::cpu;
    use tessera_core::{DType, Generator, Tensor};

    #[test]
    fn random_numbers_do_not_depend_on_the_thread_count() {
        let draw = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut g = Generator::new(9);
                Tensor::randn_with(&[70_001], 0.0, 1.0, DType::F32, &mut g, &cpu())
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap()
            })
        };
        assert_eq!(draw(1), draw(3));
    }

    #[test]
    fn products_split_across_threads_match_a_plain_loop() {
        // Above SPLIT_MIN multiply-adds: split by columns (m <= n) and by rows (m > n), with a
        // transposed operand and a batch of two.
        let dev = cpu();
        for (m, k, n, batch) in [(130, 300, 450, 1), (470, 300, 140, 1), (200, 260, 330, 2)] {
            let a = Tensor::arange(0.0, (batch * m * k) as f64, 1.0, DType::F64, &dev)
                .unwrap()
                .reshape(&[batch as isize, m as isize, k as isize])
                .unwrap()
                .remainder_for_test(7.0);
            let bt = Tensor::arange(0.0, (batch * n * k) as f64, 1.0, DType::F64, &dev)
                .unwrap()
                .reshape(&[batch as isize, n as isize, k as isize])
                .unwrap()
                .remainder_for_test(11.0);
            let b = bt.transpose(1, 2).unwrap();
            let c = a.matmul(&b).unwrap().to_vec::<f64>().unwrap();
            let (av, bv) = (a.to_vec::<f64>().unwrap(), bt.to_vec::<f64>().unwrap());
            for q in 0..batch {
                for i in (0..m).step_by(7) {
                    for j in (0..n).step_by(5) {
                        let want: f64 = (0..k)
                            .map(|p| av[(q * m + i) * k + p] * bv[(q * n + j) * k + p])
                            .sum();
                        assert_eq!(c[(q * m + i) * n + j], want, "{m}x{k}x{n} at {q},{i},{j}");
                    }
                }
            }
        }
    }

    /// Small integers keep every product exact in f64 (moduli 7 and 11 do not divide k, so
    /// rows and columns differ).
    trait RemainderForTest {
        fn remainder_for_test(self, d: f64) -> Tensor;
    }
    impl RemainderForTest for Tensor {
        fn remainder_for_test(self, d: f64) -> Tensor {
            let q = self.mul_scalar(1.0 / d).unwrap().to_vec::<f64>().unwrap();
            let v: Vec<f64> = self
                .to_vec::<f64>()
                .unwrap()
                .iter()
                .zip(q)
                .map(|(x, q)| x - d * q.floor() - 3.0)
                .collect();
            Tensor::from_vec(v, self.dims(), &cpu()).unwrap()
        }
    }

    #[test]
    fn middle_axis_reductions_match_a_plain_loop() {
        // [a, b, c] reduced over b with c contiguous: the row-accumulating path, small and big.
        for (a, b, c) in [(3, 4, 5), (40, 9, 300)] {
            let dev = cpu();
            let data: Vec<f64> = (0..a * b * c)
                .map(|i| ((i * 7919) % 1000) as f64 / 37.0 - 13.0)
                .collect();
            let x = Tensor::from_vec(data, &[a, b, c], &dev).unwrap();
            let v = x.to_vec::<f64>().unwrap();
            let sum = x.sum(&[1], false).unwrap().to_vec::<f64>().unwrap();
            let max = x.amax(&[1], false).unwrap().to_vec::<f64>().unwrap();
            for i in 0..a {
                for k in 0..c {
                    let col = (0..b).map(|j| v[(i * b + j) * c + k]);
                    let s: f64 = col.clone().sum();
                    let m = col.fold(f64::NEG_INFINITY, f64::max);
                    assert!(
                        (sum[i * c + k] - s).abs() < 1e-12,
                        "sum {a}x{b}x{c} at {i},{k}"
                    );
                    assert_eq!(max[i * c + k], m, "max {a}x{b}x{c} at {i},{k}");
                }
            }
        }
    }

    #[test]
    fn large_strided_binary_ops_match_a_plain_loop() {
        // Exercises the parallel segment driver across row boundaries.
        let dev = cpu();
        let a = Tensor::arange(0.0, 300.0 * 257.0, 1.0, DType::F64, &dev)
            .unwrap()
            .reshape(&[300, 257])
            .unwrap();
        let b = Tensor::arange(0.0, 257.0, 1.0, DType::F64, &dev).unwrap();
        let y = a
            .t()
            .unwrap()
            .add(&b.reshape(&[257, 1]).unwrap())
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
        for i in 0..257 {
            for j in 0..300 {
                assert_eq!(y[i * 300 + j], (j * 257 + i) as f64 + i as f64);
            }
        }
    }
}
