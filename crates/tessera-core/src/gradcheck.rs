//! Gradient checking against central finite differences in f64, for tessera's ops and for
//! users' own.

use crate::dtype::{DType, HostData};
use crate::error::{Error, Result};
use crate::random::Generator;
use crate::tensor::Tensor;

/// Tolerances of [`gradcheck`]: an analytic value `a` passes against the numeric `n` when
/// `|a - n| <= atol + rtol·|n|`.
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step.
    pub eps: f64,
    pub atol: f64,
    pub rtol: f64,
    /// Seed of the random upstream gradient.
    pub seed: u64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-6,
            atol: 1e-5,
            rtol: 1e-4,
            seed: 0,
        }
    }
}

fn variables(inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    inputs
        .iter()
        .map(|x| {
            if x.dtype().is_float() {
                x.detach().requires_grad_()
            } else {
                Ok(x.clone())
            }
        })
        .collect()
}

/// Checks the backward of `f` at `inputs` (f64; integer inputs are held constant) against
/// central differences of `sum(f(x) · v)` for a random `v`. Returns the worst absolute error,
/// or an error naming the input and element that disagree.
pub fn gradcheck(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    opts: GradcheckOptions,
) -> Result<f64> {
    for x in inputs {
        if x.dtype() == DType::F32 {
            return Err(Error::dtype(
                "gradcheck",
                "inputs must be f64: f32 differences are too coarse",
            ));
        }
    }
    let vars = variables(inputs)?;
    let y = f(&vars)?;
    let mut gen = Generator::new(opts.seed);
    let v = Tensor::randn_with(y.dims(), 0.0, 1.0, y.dtype(), &mut gen, y.device())?;
    let grads = if y.requires_grad() {
        Some(y.backward_with(&v)?)
    } else {
        None
    };
    let objective = |xs: &[Tensor]| -> Result<f64> { f(xs)?.mul(&v)?.sum_all()?.to_scalar() };
    let mut worst: f64 = 0.0;
    for (i, x) in inputs.iter().enumerate() {
        if !x.dtype().is_float() {
            continue;
        }
        let analytic = match grads.as_ref().and_then(|g| g.get(&vars[i])) {
            Some(g) => {
                if g.dims() != x.dims() {
                    return Err(Error::shape(
                        "gradcheck",
                        format!("gradient of input {i} has the wrong shape"),
                        g.dims(),
                        x.dims(),
                    ));
                }
                g.to_vec_f64()?
            }
            None => vec![0.0; x.numel()],
        };
        let base = x.to_vec_f64()?;
        for j in 0..base.len() {
            let probe = |delta: f64| -> Result<f64> {
                let mut p = base.clone();
                p[j] += delta;
                let mut xs = vars.clone();
                xs[i] =
                    Tensor::from_host(HostData::F64(p), x.dims(), x.device())?.requires_grad_()?;
                objective(&xs)
            };
            let numeric = (probe(opts.eps)? - probe(-opts.eps)?) / (2.0 * opts.eps);
            let err = (analytic[j] - numeric).abs();
            worst = worst.max(err);
            // Written so that a NaN error fails too.
            if err.is_nan() || err > opts.atol + opts.rtol * numeric.abs() {
                return Err(Error::Autograd {
                    op: "gradcheck",
                    msg: format!(
                        "input {i} element {j}: backward gives {}, finite differences {numeric}",
                        analytic[j]
                    ),
                });
            }
        }
    }
    Ok(worst)
}

/// Checks second derivatives: [`gradcheck`] of `x ↦ Σᵢ <∂(f(x)·v)/∂xᵢ, uᵢ>` with the first
/// gradient taken with `create_graph`, i.e. Hessian-vector products against finite
/// differences of first derivatives.
pub fn gradgradcheck(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    opts: GradcheckOptions,
) -> Result<f64> {
    let mut gen = Generator::new(opts.seed ^ 0x9e37_79b9);
    let probe = f(&variables(inputs)?)?;
    let v = Tensor::randn_with(probe.dims(), 0.0, 1.0, DType::F64, &mut gen, probe.device())?;
    let us = inputs
        .iter()
        .map(|x| Tensor::randn_with(x.dims(), 0.0, 1.0, DType::F64, &mut gen, x.device()))
        .collect::<Result<Vec<_>>>()?;
    let first_order = move |xs: &[Tensor]| -> Result<Tensor> {
        let y = f(xs)?;
        let grads = y.backward_create_graph(&v)?;
        let mut total = Tensor::scalar(0.0, DType::F64, y.device())?;
        for (x, u) in xs.iter().zip(&us) {
            if let Some(g) = grads.get(x) {
                total = total.add(&g.mul(u)?.sum_all()?)?;
            }
        }
        Ok(total)
    };
    gradcheck(first_order, inputs, opts)
}
