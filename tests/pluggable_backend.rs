//! Proof that backends plug in from outside core: a deliberately naive backend written here,
//! with only the required primitives (everything in f64 on the host, plain loops over
//! multi-indices), runs composite ops and a backward pass, and agrees with the CPU backend.

use std::any::Any;
use std::sync::Arc;
use tessera::backend::{BinaryOp, Distribution, ReduceOp, UnaryOp, View};
use tessera::prelude::*;
use tessera::{Backend, HostData, Layout};

#[derive(Debug)]
struct ToyBuffer {
    dtype: DType,
    data: Vec<f64>,
}

impl tessera::backend::Buffer for ToyBuffer {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `seq`: also run whole LSTM sequences forward through [`tessera::FusedKernels`] (and decline
/// their backward), so core's step-by-step backward reads views of the sequence's tensors.
#[derive(Debug)]
struct ToyBackend {
    seq: bool,
}

fn data<'a>(v: &View<'a>) -> Result<&'a [f64]> {
    v.buf
        .as_any()
        .downcast_ref::<ToyBuffer>()
        .map(|b| b.data.as_slice())
        .ok_or_else(|| Error::DeviceMismatch {
            op: "toy",
            lhs: "toy".into(),
            rhs: "another backend".into(),
        })
}

/// Every multi-index of `shape`, row-major.
fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|mut k| {
            let mut idx = vec![0; shape.len()];
            for d in (0..shape.len()).rev() {
                idx[d] = k % shape[d];
                k /= shape[d];
            }
            idx
        })
        .collect()
}

fn read(v: &View<'_>) -> Result<Vec<f64>> {
    let d = data(v)?;
    Ok(indices(v.layout.shape())
        .iter()
        .map(|i| d[v.layout.offset_of(i)])
        .collect())
}

fn buf(dtype: DType, data: Vec<f64>) -> Result<Arc<dyn tessera::backend::Buffer>> {
    let data = if dtype == DType::F32 {
        data.into_iter().map(|x| x as f32 as f64).collect()
    } else {
        data
    };
    Ok(Arc::new(ToyBuffer { dtype, data }))
}

impl Backend for ToyBackend {
    fn name(&self) -> String {
        if self.seq { "toy-seq" } else { "toy" }.into()
    }
    /// Only the `seq` variant has fused kernels (its sequence kernel).
    fn fused(&self) -> Option<&dyn tessera::FusedKernels> {
        self.seq.then_some(self as &dyn tessera::FusedKernels)
    }
    fn upload(&self, h: HostData) -> Result<Arc<dyn tessera::backend::Buffer>> {
        buf(h.dtype(), h.to_f64())
    }
    fn download(&self, x: View<'_>) -> Result<HostData> {
        Ok(HostData::from_f64(x.buf.dtype(), &read(&x)?))
    }
    fn fill(
        &self,
        len: usize,
        dtype: DType,
        value: f64,
    ) -> Result<Arc<dyn tessera::backend::Buffer>> {
        buf(dtype, vec![value; len])
    }
    fn random(
        &self,
        len: usize,
        dtype: DType,
        dist: Distribution,
        seed: u64,
        offset: u64,
    ) -> Result<Arc<dyn tessera::backend::Buffer>> {
        let v = (0..len as u64)
            .map(|i| match dist {
                Distribution::Uniform { low, high } => {
                    low + (high - low) * tessera::random::uniform(seed, offset + i)
                }
                Distribution::Normal { mean, std } => {
                    mean + std * tessera::random::normal(seed, offset + i)
                }
            })
            .collect();
        buf(dtype, v)
    }
    fn cast(&self, x: View<'_>, dtype: DType) -> Result<Arc<dyn tessera::backend::Buffer>> {
        let v = read(&x)?;
        buf(
            dtype,
            match dtype {
                DType::I64 => v.into_iter().map(|x| x.trunc()).collect(),
                // The contract: non-zero (NaN too) is true, stored as 1.
                DType::Bool => v.into_iter().map(|x| (x != 0.0) as u8 as f64).collect(),
                _ => v,
            },
        )
    }
    fn unary(&self, op: UnaryOp, x: View<'_>) -> Result<Arc<dyn tessera::backend::Buffer>> {
        let f = |v: f64| match op {
            UnaryOp::Neg => -v,
            UnaryOp::Abs => v.abs(),
            UnaryOp::Sign => {
                if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
            UnaryOp::Exp => v.exp(),
            UnaryOp::Log => v.ln(),
            UnaryOp::Sqrt => v.sqrt(),
            UnaryOp::Tanh => v.tanh(),
            UnaryOp::Sigmoid => 1.0 / (1.0 + (-v).exp()),
            // Not `v.max(0.0)`, which turns a NaN into 0 (the contract keeps it).
            UnaryOp::Relu => {
                if v <= 0.0 {
                    0.0
                } else {
                    v
                }
            }
            UnaryOp::Erf => libm_free_erf(v),
            UnaryOp::Recip => 1.0 / v,
            UnaryOp::Square => v * v,
            UnaryOp::LeakyRelu(s) => {
                if v > 0.0 {
                    v
                } else {
                    s * v
                }
            }
            UnaryOp::Softplus { beta, threshold } => {
                if beta * v > threshold {
                    v
                } else {
                    (1.0 + (beta * v).exp()).ln() / beta
                }
            }
            UnaryOp::AddScalar(c) => v + c,
            UnaryOp::MulScalar(c) => v * c,
            UnaryOp::PowScalar(p) => v.powf(p),
            UnaryOp::Clamp { min, max } => v.clamp(min, max),
        };
        buf(x.buf.dtype(), read(&x)?.into_iter().map(f).collect())
    }
    fn binary(
        &self,
        op: BinaryOp,
        a: View<'_>,
        b: View<'_>,
    ) -> Result<Arc<dyn tessera::backend::Buffer>> {
        let f = |x: f64, y: f64| match op {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            BinaryOp::Div => x / y,
            BinaryOp::Pow => x.powf(y),
            BinaryOp::Maximum => x.max(y),
            BinaryOp::Minimum => x.min(y),
            BinaryOp::Eq => (x == y) as u8 as f64,
            BinaryOp::Ne => (x != y) as u8 as f64,
            BinaryOp::Lt => (x < y) as u8 as f64,
            BinaryOp::Le => (x <= y) as u8 as f64,
            BinaryOp::Gt => (x > y) as u8 as f64,
            BinaryOp::Ge => (x >= y) as u8 as f64,
        };
        let (x, y) = (read(&a)?, read(&b)?);
        buf(
            a.buf.dtype(),
            x.iter().zip(&y).map(|(&x, &y)| f(x, y)).collect(),
        )
    }
    fn where_cond(
        &self,
        c: View<'_>,
        a: View<'_>,
        b: View<'_>,
    ) -> Result<Arc<dyn tessera::backend::Buffer>> {
        let (c, x, y) = (read(&c)?, read(&a)?, read(&b)?);
        buf(
            a.buf.dtype(),
            (0..x.len())
                .map(|i| if c[i] != 0.0 { x[i] } else { y[i] })
                .collect(),
        )
    }
    fn reduce(
        &self,
        op: ReduceOp,
        x: View<'_>,
        axes: &[usize],
    ) -> Result<Arc<dyn tessera::backend::Buffer>> {
        let d = data(&x)?;
        let mut kept = x.layout.shape().to_vec();
        for &a in axes {
            kept[a] = 1;
        }
        let groups: Vec<Vec<(usize, f64)>> = indices(&kept)
            .iter()
            .map(|k| {
                indices(x.layout.shape())
                    .into_iter()
                    .filter(|i| (0..i.len()).all(|dd| axes.contains(&dd) || i[dd] == k[dd]))
                    .map(|i| {
                        (
                            if axes.is_empty() { 0 } else { i[axes[0]] },
                            d[x.layout.offset_of(&i)],
                        )
                    })
                    .collect()
            })
            .collect();
        let pick = |g: &Vec<(usize, f64)>, better: fn(f64, f64) -> bool| {
            g.iter()
                .skip(1)
                .fold(g[0], |m, &v| if better(v.1, m.1) { v } else { m })
        };
        let (dtype, out) = match op {
            ReduceOp::Sum => (
                x.buf.dtype(),
                groups.iter().map(|g| g.iter().map(|v| v.1).sum()).collect(),
            ),
            ReduceOp::Max => (
                x.buf.dtype(),
                groups.iter().map(|g| pick(g, |a, b| a > b).1).collect(),
            ),
            ReduceOp::Min => (
                x.buf.dtype(),
                groups.iter().map(|g| pick(g, |a, b| a < b).1).collect(),
            ),
            ReduceOp::ArgMax => (
                DType::I64,
                groups
                    .iter()
                    .map(|g| pick(g, |a, b| a > b).0 as f64)
                    .collect(),
            ),
            ReduceOp::ArgMin => (
                DType::I64,
                groups
                    .iter()
                    .map(|g| pick(g, |a, b| a < b).0 as f64)
                    .collect(),
            ),
        };
        buf(dtype, out)
    }
    fn matmul(&self, a: View<'_>, b: View<'_>) -> Result<Arc<dyn tessera::backend::Buffer>> {
        let (la, lb) = (a.layout, b.layout);
        let r = la.rank();
        let (m, k, n) = (la.shape()[r - 2], la.shape()[r - 1], lb.shape()[r - 1]);
        let (da, db) = (data(&a)?, data(&b)?);
        let mut out = Vec::new();
        for bi in indices(&la.shape()[..r - 2]) {
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0.0;
                    for p in 0..k {
                        let ia: Vec<usize> = bi.iter().copied().chain([i, p]).collect();
                        let ib: Vec<usize> = bi.iter().copied().chain([p, j]).collect();
                        acc += da[la.offset_of(&ia)] * db[lb.offset_of(&ib)];
                    }
                    out.push(acc);
                }
            }
        }
        buf(a.buf.dtype(), out)
    }
    fn gather(
        &self,
        x: View<'_>,
        dim: usize,
        index: View<'_>,
    ) -> Result<Arc<dyn tessera::backend::Buffer>> {
        let (dx, di) = (data(&x)?, data(&index)?);
        let mut out = Vec::new();
        for i in indices(index.layout.shape()) {
            let j = di[index.layout.offset_of(&i)] as i64;
            if j < 0 || j as usize >= x.layout.shape()[dim] {
                return Err(Error::IndexOutOfRange {
                    op: "gather",
                    index: j,
                    dim,
                    size: x.layout.shape()[dim],
                });
            }
            let mut src = i.clone();
            src[dim] = j as usize;
            out.push(dx[x.layout.offset_of(&src)]);
        }
        buf(x.buf.dtype(), out)
    }
    fn scatter_add(
        &self,
        shape: &[usize],
        dim: usize,
        index: View<'_>,
        src: View<'_>,
    ) -> Result<Arc<dyn tessera::backend::Buffer>> {
        let (di, ds) = (data(&index)?, data(&src)?);
        let l = Layout::contiguous(shape);
        let mut out = vec![0.0; l.numel()];
        for i in indices(index.layout.shape()) {
            let j = di[index.layout.offset_of(&i)] as i64;
            if j < 0 || j as usize >= shape[dim] {
                return Err(Error::IndexOutOfRange {
                    op: "scatter_add",
                    index: j,
                    dim,
                    size: shape[dim],
                });
            }
            let mut dst = i.clone();
            dst[dim] = j as usize;
            out[l.offset_of(&dst)] += ds[src.layout.offset_of(&i)];
        }
        buf(src.buf.dtype(), out)
    }
    fn assemble(
        &self,
        len: usize,
        dtype: DType,
        fill: f64,
        parts: &[(Layout, View<'_>)],
    ) -> Result<Arc<dyn tessera::backend::Buffer>> {
        let mut out = vec![fill; len];
        for (region, v) in parts {
            let d = data(v)?;
            for i in indices(region.shape()) {
                out[region.offset_of(&i)] = d[v.layout.offset_of(&i)];
            }
        }
        buf(dtype, out)
    }
}

/// erf by its series (a toy backend has no libm); accurate to ~1e-15 for |x| < 3.
/// The toy backend's one fused kernel: a whole LSTM sequence forward (its backward declines,
/// so core's step-by-step backward reads views of the sequence's tensors).
impl tessera::FusedKernels for ToyBackend {
    fn lstm_sequence(
        &self,
        xp: View<'_>,
        bias: Option<View<'_>>,
        w_t: View<'_>,
        h0: View<'_>,
        c0: View<'_>,
        reverse: bool,
    ) -> Result<Option<tessera::backend::LstmSequence>> {
        let (x, wt) = (read(&xp)?, read(&w_t)?);
        let s = xp.layout.shape();
        let (t_len, b, g4) = (s[0], s[1], s[2]);
        let bias = match bias {
            Some(v) => read(&v)?,
            None => vec![0.0; g4],
        };
        let h = g4 / 4;
        let (mut hs, mut cs) = (read(&h0)?, read(&c0)?);
        let state = || vec![0.0; t_len * b * h];
        let (mut out, mut hp, mut cp, mut tc) =
            (vec![0.0; (t_len + 1) * b * h], state(), state(), state());
        let mut act = vec![0.0; t_len * b * g4];
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        for step in 0..t_len {
            let t = if reverse { t_len - 1 - step } else { step };
            let (mut h_new, mut c_new) = (vec![0.0; b * h], vec![0.0; b * h]);
            for j in 0..b {
                for u in 0..h {
                    let z = |gate: usize| {
                        let q = gate * h + u;
                        x[(t * b + j) * g4 + q]
                            + bias[q]
                            + (0..h).map(|p| hs[j * h + p] * wt[p * g4 + q]).sum::<f64>()
                    };
                    let a = [sig(z(0)), sig(z(1)), z(2).tanh(), sig(z(3))];
                    for (gate, v) in a.iter().enumerate() {
                        act[(t * b + j) * g4 + gate * h + u] = *v;
                    }
                    let k = (t * b + j) * h + u;
                    (hp[k], cp[k]) = (hs[j * h + u], cs[j * h + u]);
                    c_new[j * h + u] = a[1] * cs[j * h + u] + a[0] * a[2];
                    tc[k] = c_new[j * h + u].tanh();
                    h_new[j * h + u] = a[3] * tc[k];
                    out[k] = h_new[j * h + u];
                }
            }
            (hs, cs) = (h_new, c_new);
        }
        out[t_len * b * h..].copy_from_slice(&cs);
        let d = xp.buf.dtype();
        Ok(Some(tessera::backend::LstmSequence {
            out: buf(d, out)?,
            h_prev: buf(d, hp)?,
            c_prev: buf(d, cp)?,
            act: buf(d, act)?,
            tanh_c: buf(d, tc)?,
        }))
    }
}

fn libm_free_erf(x: f64) -> f64 {
    let mut sum = 0.0;
    let mut term = x;
    for n in 0..80 {
        sum += term / (2 * n + 1) as f64;
        term *= -x * x / (n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn toy() -> Device {
    Device::new(Arc::new(ToyBackend { seq: false }))
}

/// A small model: softmax cross-entropy of a two-layer net, written with composite ops.
fn model(x: &Tensor, w1: &Tensor, w2: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let h = x.matmul(w1)?.gelu(false)?;
    let logits = h.matmul(w2)?;
    let logp = logits.log_softmax(-1)?;
    let picked = logp.gather(1, labels)?;
    picked.mean_all()?.neg()
}

#[test]
fn a_backend_defined_outside_core_runs_composite_ops_and_backward() -> Result<()> {
    let (toy, cpu) = (toy(), Device::parse("cpu")?);
    let mut gen = Generator::new(5);
    let x = Tensor::randn_with(&[4, 3], 0.0, 1.0, DType::F64, &mut gen, &toy)?;
    let w1 = Tensor::randn_with(&[3, 5], 0.0, 1.0, DType::F64, &mut gen, &toy)?.requires_grad_()?;
    let w2 = Tensor::randn_with(&[5, 2], 0.0, 1.0, DType::F64, &mut gen, &toy)?.requires_grad_()?;
    let labels = Tensor::from_vec(vec![0i64, 1, 1, 0], &[4, 1], &toy)?;

    assert_eq!(x.device().name(), "toy");
    let loss = model(&x, &w1, &w2, &labels)?;
    let grads = loss.backward()?;

    // The same computation on the CPU backend, from the same counter-based random numbers.
    let to_cpu = |t: &Tensor| t.detach().to_device(&cpu);
    let (xc, lc) = (to_cpu(&x)?, to_cpu(&labels)?);
    let (w1c, w2c) = (
        to_cpu(&w1)?.requires_grad_()?,
        to_cpu(&w2)?.requires_grad_()?,
    );
    let loss_c = model(&xc, &w1c, &w2c, &lc)?;
    let grads_c = loss_c.backward()?;

    assert!((loss.to_scalar()? - loss_c.to_scalar()?).abs() < 1e-12);
    for (a, b) in [(&w1, &w1c), (&w2, &w2c)] {
        let (ga, gb) = (
            grads.get(a).unwrap().to_vec::<f64>()?,
            grads_c.get(b).unwrap().to_vec::<f64>()?,
        );
        for (p, q) in ga.iter().zip(&gb) {
            assert!((p - q).abs() < 1e-12, "{p} vs {q}");
        }
    }
    // Composite ops on the primitives alone (the toy backend has no FusedKernels): softmax,
    // logsumexp, var, concat.
    let s = x.softmax(0)?.sum(&[0], false)?.to_vec::<f64>()?;
    assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-12));
    let lse = x.logsumexp(&[1], false)?.to_vec::<f64>()?;
    let lse_c = xc.logsumexp(&[1], false)?.to_vec::<f64>()?;
    assert!(lse.iter().zip(&lse_c).all(|(a, b)| (a - b).abs() < 1e-12));
    let v = Tensor::concat(&[&x, &x.mul_scalar(2.0)?], 0)?.var(&[0], 1, false)?;
    assert_eq!(v.dims(), &[3]);
    Ok(())
}

/// Bool masks, sorting, einsum and attention reach a backend that has only the primitives:
/// the same results and gradients as the CPU (whose fused attention and argsort kernels are
/// thus checked against the composites too).
#[test]
fn masks_sorting_einsum_and_attention_compose_from_primitives() -> Result<()> {
    use tessera::ops::attention::scaled_dot_product_attention as sdpa;
    let (toy, cpu) = (toy(), Device::parse("cpu")?);
    let run = |dev: &Device| -> Result<Vec<Vec<f64>>> {
        let mut gen = Generator::new(11);
        let q = Tensor::randn_with(&[2, 5, 4], 0.0, 1.0, DType::F64, &mut gen, dev)?
            .requires_grad_()?;
        let k = Tensor::randn_with(&[2, 6, 4], 0.0, 1.0, DType::F64, &mut gen, dev)?
            .requires_grad_()?;
        let v = Tensor::randn_with(&[2, 6, 3], 0.0, 1.0, DType::F64, &mut gen, dev)?
            .requires_grad_()?;
        let keep = k
            .sum(&[2], false)?
            .gt(&k.scalar_like(-1.0)?)?
            .unsqueeze(1)?; // [2, 1, 6]
        let keep = keep.logical_or(&tessera::ops::attention::causal_mask(5, 6, dev)?)?;
        let y = sdpa(&q, &k, &v, Some(&keep), false, None)?;
        let (sorted, idx) = y.sort(1, true)?;
        let e = tessera::ops::einsum::einsum("bij,bkj->bik", &[&sorted, &v])?;
        let loss = e
            .masked_fill(&e.lt(&e.scalar_like(0.0)?)?, 0.0)?
            .sum_all()?;
        let g = loss.backward()?;
        let mut out = vec![loss.to_vec_f64()?, idx.to_vec_f64()?];
        for t in [&q, &k, &v] {
            out.push(g.of(t)?.to_vec_f64()?);
        }
        Ok(out)
    };
    let (a, b) = (run(&toy)?, run(&cpu)?);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() < 1e-10, "{p} vs {q}");
        }
    }
    Ok(())
}

#[test]
fn convolution_and_pooling_fall_back_to_primitives() -> Result<()> {
    use tessera::ops::conv::{conv2d, ConvOptions};
    use tessera::ops::pool::{max_pool2d, PoolOptions};
    let (toy, cpu) = (toy(), Device::parse("cpu")?);
    let mut gen = Generator::new(9);
    let x = Tensor::randn_with(&[2, 2, 6, 5], 0.0, 1.0, DType::F64, &mut gen, &toy)?
        .requires_grad_()?;
    let w = Tensor::randn_with(&[3, 2, 3, 3], 0.0, 1.0, DType::F64, &mut gen, &toy)?
        .requires_grad_()?;
    // Pooling with padding (the CPU kernel's bounds-checked path), without (its tap-by-tap
    // path), and dilated.
    for (conv, pool) in [
        (
            ConvOptions::new().stride(2).padding(1),
            PoolOptions::new(2).stride(1).padding(1),
        ),
        (ConvOptions::new().padding(1), PoolOptions::new(2)),
        (
            ConvOptions::new(),
            PoolOptions::new(2).stride(1).dilation(2),
        ),
    ] {
        let run = |x: &Tensor, w: &Tensor| -> Result<(Tensor, Tensor)> {
            let y = max_pool2d(&conv2d(x, w, None, &conv)?, &pool)?;
            Ok((y.clone(), y.square()?.sum_all()?))
        };
        let (y, loss) = run(&x, &w)?;
        let g = loss.backward()?;
        let (xc, wc) = (
            x.detach().to_device(&cpu)?.requires_grad_()?,
            w.detach().to_device(&cpu)?.requires_grad_()?,
        );
        let (yc, loss_c) = run(&xc, &wc)?;
        let gc = loss_c.backward()?;
        for (a, b) in [
            (&y, &yc),
            (g.get(&x).unwrap(), gc.get(&xc).unwrap()),
            (g.get(&w).unwrap(), gc.get(&wc).unwrap()),
        ] {
            let (a, b) = (a.to_vec::<f64>()?, b.to_vec::<f64>()?);
            assert_eq!(a.len(), b.len());
            assert!(
                a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-10),
                "{conv:?} {pool:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn batch_norm_composes_from_primitives_where_the_backend_has_no_fused_kernel() -> Result<()> {
    use tessera::ops::norm::batch_norm;
    let (toy, cpu) = (toy(), Device::parse("cpu")?);
    let mut gen = Generator::new(4);
    let x =
        Tensor::randn_with(&[3, 4, 5], 1.0, 2.0, DType::F64, &mut gen, &toy)?.requires_grad_()?;
    let w = Tensor::randn_with(&[4], 1.0, 0.5, DType::F64, &mut gen, &toy)?.requires_grad_()?;
    let b = Tensor::randn_with(&[4], 0.0, 0.5, DType::F64, &mut gen, &toy)?.requires_grad_()?;
    let r = Tensor::randn_with(&[3, 4, 5], 0.0, 1.0, DType::F64, &mut gen, &toy)?;
    let (rm, rv) = (
        Tensor::zeros(&[4], DType::F64, &toy)?,
        Tensor::ones(&[4], DType::F64, &toy)?,
    );
    // The toy backend composes the op; the CPU backend runs its fused kernels. Both must agree,
    // in values, running statistics and gradients, in training and in eval mode.
    for training in [true, false] {
        let run = |x: &Tensor, w: &Tensor, b: &Tensor, r: &Tensor, rm: &Tensor, rv: &Tensor| {
            let (y, stats) = batch_norm(x, rm, rv, Some(w), Some(b), training, 0.1, 1e-5)?;
            let g = y.mul(r)?.sum_all()?.backward()?;
            let mut out = vec![y.clone()];
            out.extend(stats.map(|(m, v)| [m, v]).into_iter().flatten());
            for t in [x, w, b] {
                out.push(
                    g.get(t)
                        .cloned()
                        .ok_or_else(|| tessera::core::Error::invalid("test", "no gradient"))?,
                );
            }
            Ok::<_, tessera::core::Error>(out)
        };
        let on_cpu = |t: &Tensor| t.detach().to_device(&cpu);
        let (xc, wc, bc) = (
            on_cpu(&x)?.requires_grad_()?,
            on_cpu(&w)?.requires_grad_()?,
            on_cpu(&b)?.requires_grad_()?,
        );
        let toy_out = run(&x, &w, &b, &r, &rm, &rv)?;
        let cpu_out = run(&xc, &wc, &bc, &on_cpu(&r)?, &on_cpu(&rm)?, &on_cpu(&rv)?)?;
        assert_eq!(toy_out.len(), cpu_out.len());
        for (i, (a, c)) in toy_out.iter().zip(&cpu_out).enumerate() {
            let (a, c) = (a.to_vec::<f64>()?, c.to_vec::<f64>()?);
            assert_eq!(a.len(), c.len());
            assert!(
                a.iter().zip(&c).all(|(p, q)| (p - q).abs() < 1e-10),
                "training {training}, output {i}: {a:?} vs {c:?}"
            );
        }
    }
    // Inference (no gradient recorded): the CPU's one-pass eval kernel, with and without the
    // affine parameters, against the toy backend's composition.
    let stats = |t: &Tensor, k: f64| t.detach().mul_scalar(0.5)?.add_scalar(k);
    let (rm2, rv2) = (stats(&w, -0.3)?, stats(&w, 0.9)?.square()?);
    for affine in [true, false] {
        let run = |x: &Tensor, w: &Tensor, b: &Tensor, rm: &Tensor, rv: &Tensor| {
            let (w, b) = if affine {
                (Some(w), Some(b))
            } else {
                (None, None)
            };
            no_grad(|| batch_norm(x, rm, rv, w, b, false, 0.1, 1e-3)).map(|(y, _)| y)
        };
        let y_toy = run(&x, &w, &b, &rm2, &rv2)?.to_vec::<f64>()?;
        let on_cpu = |t: &Tensor| t.detach().to_device(&cpu);
        let y_cpu = run(
            &on_cpu(&x)?,
            &on_cpu(&w)?,
            &on_cpu(&b)?,
            &on_cpu(&rm2)?,
            &on_cpu(&rv2)?,
        )?
        .to_vec::<f64>()?;
        assert!(
            y_toy.iter().zip(&y_cpu).all(|(p, q)| (p - q).abs() < 1e-10),
            "eval, affine {affine}: {y_toy:?} vs {y_cpu:?}"
        );
    }
    Ok(())
}

#[test]
fn bias_and_relu_compose_from_primitives_where_the_backend_has_no_fused_kernel() -> Result<()> {
    let (toy, cpu) = (toy(), Device::parse("cpu")?);
    let mut gen = Generator::new(6);
    let x = Tensor::randn_with(&[4, 7], 0.0, 1.0, DType::F64, &mut gen, &toy)?;
    let w = Tensor::randn_with(&[5, 7], 0.0, 0.5, DType::F64, &mut gen, &toy)?;
    let b = Tensor::randn_with(&[5], 0.0, 0.5, DType::F64, &mut gen, &toy)?;
    let r = Tensor::randn_with(&[4, 5], 0.0, 1.0, DType::F64, &mut gen, &toy)?;
    // The toy backend composes add + relu and gt + mul; the CPU runs one pass each. Both
    // must agree with the unfused ops, in values and gradients, for a weighted loss and for a
    // plain sum (whose gradient reaches the ReLU as a broadcast).
    for weighted in [true, false] {
        let run = |dev: &Device, fused: bool| -> Result<Vec<Vec<f64>>> {
            let on = |t: &Tensor| t.detach().to_device(dev)?.requires_grad_();
            let (x, w, b) = (on(&x)?, on(&w)?, on(&b)?);
            let y = if fused {
                x.linear_relu(&w, Some(&b))?
            } else {
                x.linear(&w, Some(&b))?.relu()?
            };
            let z = y.add_relu(&b.neg()?)?;
            let loss = if weighted {
                z.mul(&r.to_device(dev)?)?.sum_all()?
            } else {
                z.sum_all()?
            };
            let g = loss.backward()?;
            let mut out = vec![z.to_vec::<f64>()?];
            for t in [&x, &w, &b] {
                let grad = g.get(t).cloned();
                let grad = grad.ok_or_else(|| Error::invalid("test", "no gradient"))?;
                out.push(grad.to_vec::<f64>()?);
            }
            Ok(out)
        };
        let want = run(&toy, false)?;
        for (dev, fused) in [(&toy, true), (&cpu, true), (&cpu, false)] {
            let got = run(dev, fused)?;
            for (k, (a, c)) in want.iter().zip(&got).enumerate() {
                assert!(
                    a.iter().zip(c).all(|(p, q)| (p - q).abs() < 1e-12),
                    "{dev:?} fused {fused} weighted {weighted}, output {k}: {a:?} vs {c:?}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn lstm_runs_step_by_step_where_the_backend_has_no_sequence_kernel() -> Result<()> {
    use tessera::ops::rnn::{rnn, Cell, RnnOptions, RnnWeights};
    let (toy, cpu) = (toy(), Device::parse("cpu")?);
    let mut gen = Generator::new(5);
    let (t_len, b, i, h) = (4, 3, 5, 6);
    let opts = RnnOptions {
        hidden_size: h,
        num_layers: 2,
        bidirectional: true,
        batch_first: false,
        bias: true,
    };
    let mut randn =
        |shape: &[usize]| Tensor::randn_with(shape, 0.0, 0.5, DType::F64, &mut gen, &toy);
    let x = randn(&[t_len, b, i])?;
    let params: Vec<Tensor> = (0..4)
        .flat_map(|k| {
            let input = if k < 2 { i } else { 2 * h };
            [vec![4 * h, input], vec![4 * h, h], vec![4 * h], vec![4 * h]]
        })
        .map(|shape| randn(&shape))
        .collect::<Result<_>>()?;
    let (h0, c0, r) = (
        randn(&[4, b, h])?,
        randn(&[4, b, h])?,
        randn(&[t_len, b, 2 * h])?,
    );
    // The toy backend walks the steps (core's default); the CPU backend runs each direction
    // with its sequence kernels. Values and every gradient must agree, with the initial states
    // differentiated or not (then the CPU skips the last product of each backward).
    for states_need_grad in [true, false] {
        let run = |dev: &Device| -> Result<Vec<Tensor>> {
            let on = |t: &Tensor, grad: bool| -> Result<Tensor> {
                let t = t.detach().to_device(dev)?;
                if grad {
                    t.requires_grad_()
                } else {
                    Ok(t)
                }
            };
            let ps = params
                .iter()
                .map(|p| on(p, true))
                .collect::<Result<Vec<_>>>()?;
            let (x, h0, c0) = (
                on(&x, true)?,
                on(&h0, states_need_grad)?,
                on(&c0, states_need_grad)?,
            );
            let weights: Vec<RnnWeights<'_>> = ps
                .chunks(4)
                .map(|w| RnnWeights {
                    w_ih: &w[0],
                    w_hh: &w[1],
                    b_ih: Some(&w[2]),
                    b_hh: Some(&w[3]),
                })
                .collect();
            let y = rnn(Cell::Lstm, &x, &h0, Some(&c0), &weights, &opts)?;
            let c_n = y.c_n.ok_or_else(|| Error::invalid("test", "no c_n"))?;
            let loss = y
                .output
                .mul(&on(&r, false)?)?
                .sum_all()?
                .add(&y.h_n.sum_all()?)?
                .add(&c_n.mul_scalar(0.5)?.sum_all()?)?;
            let g = loss.backward()?;
            let mut out = vec![y.output.clone(), y.h_n.clone(), c_n.clone()];
            let mut wrt = vec![&x];
            wrt.extend(&ps);
            if states_need_grad {
                wrt.extend([&h0, &c0]);
            }
            for t in wrt {
                let grad = g.get(t).cloned();
                out.push(grad.ok_or_else(|| Error::invalid("test", "no gradient"))?);
            }
            Ok(out)
        };
        // A backend that runs the sequence forward but not its backward: core walks the
        // steps backward over views of the sequence's tensors.
        let toy_seq = Device::new(Arc::new(ToyBackend { seq: true }));
        let toy_out = run(&toy)?;
        for (dev, other) in [(&cpu, run(&cpu)?), (&toy_seq, run(&toy_seq)?)] {
            assert_eq!(toy_out.len(), other.len());
            for (k, (a, c)) in toy_out.iter().zip(&other).enumerate() {
                let (a, c) = (a.to_vec::<f64>()?, c.to_vec::<f64>()?);
                assert_eq!(a.len(), c.len());
                assert!(
                    a.iter().zip(&c).all(|(p, q)| (p - q).abs() < 1e-10),
                    "{dev:?}, states need grad {states_need_grad}, output {k}: {a:?} vs {c:?}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn mixing_devices_is_an_error_naming_both() -> Result<()> {
    let a = Tensor::ones(&[2], DType::F64, &toy())?;
    let b = Tensor::ones(&[2], DType::F64, &Device::parse("cpu")?)?;
    let e = a.add(&b).unwrap_err().to_string();
    assert!(
        e.contains("add") && e.contains("toy") && e.contains("cpu"),
        "{e}"
    );
    Ok(())
}

/// PyTorch's ReLU keeps a NaN (`relu(NaN) = NaN`) and passes the gradient at it on
/// (`threshold_backward`: 0 only where `y <= 0`), so a NaN is not hidden from the loss. Checked
/// on the CPU's one-pass kernels, the toy backend's composites (core's defaults) and the
/// recorded ops of `backward_create_graph`, for `relu` and `add_relu`, in f32 and f64.
#[test]
fn relu_keeps_nan_and_passes_its_gradient_like_pytorch() -> Result<()> {
    let (toy, cpu) = (toy(), Device::parse("cpu")?);
    for dev in [&toy, &cpu] {
        for dtype in [DType::F32, DType::F64] {
            for (fused, graph) in [(false, false), (true, false), (false, true), (true, true)] {
                let x = Tensor::from_vec(vec![f64::NAN, -1.0, 0.0, 2.0], &[4], dev)?
                    .to_dtype(dtype)?
                    .requires_grad_()?;
                let zero = x.zeros_like()?.detach().requires_grad_()?;
                let y = if fused { x.add_relu(&zero)? } else { x.relu()? };
                let ones = y.ones_like()?;
                let g = if graph {
                    y.backward_create_graph(&ones)?
                } else {
                    y.mul(&ones)?.sum_all()?.backward()?
                };
                let what = format!("{dev:?} {dtype} fused {fused} create_graph {graph}");
                let v = y.to_dtype(DType::F64)?.to_vec::<f64>()?;
                assert!(v[0].is_nan() && v[1..] == [0.0, 0.0, 2.0], "{what}: {v:?}");
                let dx = g
                    .get(&x)
                    .ok_or_else(|| Error::invalid("test", "no gradient"))?;
                let dx = dx.to_dtype(DType::F64)?.to_vec::<f64>()?;
                assert_eq!(dx, [1.0, 0.0, 0.0, 1.0], "{what}");
            }
        }
    }
    Ok(())
}

/// `conv2d_relu` (one op; the CPU applies the ReLU in the convolution's last pass) against
/// the unfused ops and (but on the largest case) the toy backend's composite (core's default:
/// `conv2d`, then `relu`), in values and in the gradients of input, weight and bias: on the
/// im2col path (f64, stride 2), the Winograd path (f64, 3×3 with 40 → 36 channels), the direct
/// kernels (f32, LeNet-sized) and two groups (core's composite path).
#[test]
fn conv_relu_matches_conv_then_relu_on_every_path() -> Result<()> {
    use tessera::ops::conv::{conv2d, conv2d_relu, ConvOptions};
    let (toy, cpu) = (toy(), Device::parse("cpu")?);
    let cases = [
        (
            DType::F64,
            [2, 5, 7],
            3,
            ConvOptions::new().padding(1).stride(2),
        ),
        (DType::F64, [2, 40, 36], 3, ConvOptions::new().padding(1)),
        (DType::F32, [3, 6, 16], 5, ConvOptions::new()),
        (
            DType::F64,
            [2, 4, 6],
            3,
            ConvOptions::new().padding(1).groups(2),
        ),
    ];
    for (dtype, [n, c, o], k, opts) in cases {
        let mut gen = Generator::new(11);
        let g = opts.groups;
        let x = Tensor::randn_with(&[n, c, 9, 8], 0.0, 1.0, dtype, &mut gen, &cpu)?;
        let w = Tensor::randn_with(&[o, c / g, k, k], 0.0, 0.3, dtype, &mut gen, &cpu)?;
        let b = Tensor::randn_with(&[o], 0.0, 0.3, dtype, &mut gen, &cpu)?;
        let run = |dev: &Device, fused: bool| -> Result<Vec<Vec<f64>>> {
            let on = |t: &Tensor| t.detach().to_device(dev)?.requires_grad_();
            let (x, w, b) = (on(&x)?, on(&w)?, on(&b)?);
            let y = if fused {
                conv2d_relu(&x, &w, Some(&b), &opts)?
            } else {
                conv2d(&x, &w, Some(&b), &opts)?.relu()?
            };
            // A weighted loss, so each output's gradient differs.
            let mut rg = Generator::new(5);
            let r = Tensor::randn_with(y.dims(), 0.0, 1.0, dtype, &mut rg, &cpu)?.to_device(dev)?;
            let grads = y.mul(&r)?.sum_all()?.backward()?;
            let mut out = vec![y.to_dtype(DType::F64)?.to_vec::<f64>()?];
            for t in [&x, &w, &b] {
                let grad = grads.get(t).cloned();
                let grad = grad.ok_or_else(|| Error::invalid("test", "no gradient"))?;
                out.push(grad.to_dtype(DType::F64)?.to_vec::<f64>()?);
            }
            Ok(out)
        };
        let want = run(&cpu, false)?;
        let zeros = want[0].iter().filter(|v| **v == 0.0).count();
        assert!(
            zeros > 0 && zeros < want[0].len(),
            "{dtype} {c}->{o}: no kink crossed"
        );
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        // The toy backend's naive loops would take ~20 s on the Winograd case: CPU only there.
        let runs = if c * o > 1000 {
            vec![(&cpu, true)]
        } else {
            vec![(&cpu, true), (&toy, true), (&toy, false)]
        };
        for (dev, fused) in runs {
            let got = run(dev, fused)?;
            for (k, (a, e)) in got.iter().zip(&want).enumerate() {
                let scale = e.iter().fold(1f64, |m, v| m.max(v.abs()));
                assert!(
                    a.iter().zip(e).all(|(p, q)| (p - q).abs() <= tol * scale),
                    "{dev:?} {dtype} {c}->{o} fused {fused}, output {k}"
                );
            }
        }
    }
    Ok(())
}

/// The CPU's one-pass cross-entropy kernels (`FusedKernels::cross_entropy` and its backward)
/// give what core's composite, built from primitives, gives on the toy backend: values and input
/// gradients, in f32 and f64, for every reduction, with label smoothing, an ignored class
/// (in range, and PyTorch's default -100), extra dims, large logits, and under
/// `backward_create_graph`. A target out of range is an error on both.
#[test]
fn cross_entropy_kernels_match_the_composed_default() -> Result<()> {
    use tessera::ops::loss::{cross_entropy, CrossEntropy, Reduction};
    let (toy, cpu) = (toy(), Device::parse("cpu")?);
    let cases: [(&[usize], Reduction, f64, i64, f64); 6] = [
        (&[7, 5], Reduction::Mean, 0.0, -100, 1.0),
        (&[7, 5], Reduction::Sum, 0.1, 2, 1.0),
        (&[7, 5], Reduction::None, 0.2, -100, 1.0),
        (&[3, 4, 2, 3], Reduction::Mean, 0.1, 1, 1.0),
        (&[6, 9], Reduction::Mean, 0.0, 3, 80.0),
        (&[40, 700], Reduction::Mean, 0.05, -100, 3.0),
    ];
    for dtype in [DType::F32, DType::F64] {
        for (k, &(shape, reduction, smoothing, ignore, scale)) in cases.iter().enumerate() {
            let mut gen = Generator::new(k as u64);
            let x = Tensor::randn_with(shape, 0.0, scale, DType::F64, &mut gen, &cpu)?;
            let c = shape[1];
            let mut tshape = vec![shape[0]];
            tshape.extend(&shape[2..]);
            let n: usize = tshape.iter().product();
            let t: Vec<i64> = (0..n).map(|i| ((i * 7 + k) % c) as i64).collect();
            let run = |dev: &Device, graph: bool| -> Result<[Vec<f64>; 2]> {
                let x = x.to_device(dev)?.to_dtype(dtype)?.requires_grad_()?;
                let t = Tensor::from_vec(t.clone(), &tshape, dev)?;
                let loss = CrossEntropy::new()
                    .reduction(reduction)
                    .label_smoothing(smoothing)
                    .ignore_index(ignore)
                    .forward(&x, &t)?;
                // A weighted sum, so each row's gradient differs.
                let wts = Tensor::arange(0.5, 0.5 + loss.numel() as f64, 1.0, dtype, dev)?
                    .reshape_usize(loss.dims())?;
                let obj = loss.mul(&wts)?.sum_all()?;
                let g = if graph {
                    obj.backward_create_graph(&obj.ones_like()?)?
                } else {
                    obj.backward()?
                };
                let dx = g
                    .get(&x)
                    .ok_or_else(|| Error::invalid("test", "no gradient"))?;
                let host = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec::<f64>();
                Ok([host(&loss)?, host(dx)?])
            };
            // The toy backend's defaults against the CPU's kernels, and both against the
            // recorded ops of create_graph.
            let want = run(&toy, false)?;
            for (dev, graph) in [(&cpu, false), (&cpu, true), (&toy, true)] {
                let got = run(dev, graph)?;
                let tol = if dtype == DType::F32 { 2e-5 } else { 1e-12 };
                for (what, w, g) in [("loss", &want[0], &got[0]), ("dx", &want[1], &got[1])] {
                    assert_eq!(w.len(), g.len());
                    let scale = w.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                    for (i, (p, q)) in w.iter().zip(g).enumerate() {
                        assert!(
                            (p - q).abs() <= tol * scale,
                            "case {k} {dtype:?} {dev:?} graph {graph} {what}[{i}]: {q} vs {p}"
                        );
                    }
                }
            }
        }
    }
    for dev in [&toy, &cpu] {
        let x = Tensor::zeros(&[2, 3], DType::F32, dev)?;
        let t = Tensor::from_vec(vec![1i64, 3], &[2], dev)?;
        let e = cross_entropy(&x, &t).unwrap_err();
        assert!(
            matches!(e, Error::IndexOutOfRange { index: 3, .. }),
            "{dev:?}: {e}"
        );
    }
    Ok(())
}
