//! Optimizers (PyTorch's update rules), learning-rate schedules and gradient clipping.
//! Updates run under `no_grad`, in each parameter's own buffer where nothing else holds it
//! ([`Parameter::scale_add_`]).

use crate::module::Parameter;
use tessera_core::{no_grad, Error, Gradients, Result, Tensor};

/// A rule that updates parameters from their gradients.
pub trait Optimizer {
    /// One update from `grads`; parameters without a gradient are left alone.
    fn step(&mut self, grads: &Gradients) -> Result<()>;
    /// The learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate (schedules call this).
    fn set_lr(&mut self, lr: f64);
    /// Internal state by name (`{index}.{slot}`), for checkpoints.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores state saved by [`Optimizer::state`].
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()>;
}

fn grad_of<'g>(grads: &'g Gradients, p: &Parameter) -> Option<&'g Tensor> {
    grads.get(&p.tensor())
}

/// Per-parameter slots (`None` until first used), saved as `{index}.{name}`.
struct Slots {
    name: &'static str,
    values: Vec<Option<Tensor>>,
}

impl Slots {
    fn new(name: &'static str, n: usize) -> Slots {
        Slots {
            name,
            values: vec![None; n],
        }
    }
    fn save(&self, out: &mut Vec<(String, Tensor)>) {
        for (i, v) in self.values.iter().enumerate() {
            if let Some(v) = v {
                out.push((format!("{i}.{}", self.name), v.clone()));
            }
        }
    }
    fn load(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        for (k, v) in state {
            if let Some((i, slot)) = k.split_once('.') {
                if slot == self.name {
                    let i: usize = i
                        .parse()
                        .map_err(|_| Error::invalid("optimizer", format!("bad state key {k}")))?;
                    let cell = self.values.get_mut(i).ok_or_else(|| {
                        Error::invalid("optimizer", format!("state {k} has no parameter"))
                    })?;
                    *cell = Some(v.clone());
                }
            }
        }
        Ok(())
    }
}

/// Stochastic gradient descent with momentum, Nesterov momentum and weight decay (PyTorch's
/// rule: `buf = μ·buf + g` with `buf = g` at the first step).
pub struct Sgd {
    params: Vec<Parameter>,
    lr: f64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    bufs: Slots,
}

impl Sgd {
    /// Plain SGD.
    pub fn new(params: Vec<Parameter>, lr: f64) -> Sgd {
        let n = params.len();
        Sgd {
            params,
            lr,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            bufs: Slots::new("momentum_buffer", n),
        }
    }
    /// With momentum `m`.
    pub fn momentum(mut self, m: f64) -> Sgd {
        self.momentum = m;
        self
    }
    /// Nesterov momentum.
    pub fn nesterov(mut self, on: bool) -> Sgd {
        self.nesterov = on;
        self
    }
    /// L2 weight decay.
    pub fn weight_decay(mut self, wd: f64) -> Sgd {
        self.weight_decay = wd;
        self
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &Gradients) -> Result<()> {
        no_grad(|| {
            for (i, p) in self.params.iter().enumerate() {
                let Some(g) = grad_of(grads, p) else { continue };
                let mut d = if self.weight_decay != 0.0 {
                    g.add(&p.tensor().mul_scalar(self.weight_decay)?)?
                } else {
                    g.clone()
                };
                if self.momentum != 0.0 {
                    // One fused pass each, in place: buf = m·buf + d, p = p - lr·d.
                    let buf = match self.bufs.values[i].take() {
                        Some(mut b) => {
                            b.scale_add_(self.momentum, &d, 1.0)?;
                            b
                        }
                        None => d.clone(),
                    };
                    d = if self.nesterov {
                        d.add_scaled(&buf, self.momentum)?
                    } else {
                        buf.clone()
                    };
                    self.bufs.values[i] = Some(buf);
                }
                p.scale_add_(1.0, &d, -self.lr)?;
            }
            Ok(())
        })
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = Vec::new();
        self.bufs.save(&mut s);
        s
    }
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        self.bufs.load(state)
    }
}

/// Adam, and AdamW (decoupled weight decay) with [`Adam::adamw`].
pub struct Adam {
    params: Vec<Parameter>,
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    m: Slots,
    v: Slots,
    steps: Slots,
}

impl Adam {
    /// Adam with β = (0.9, 0.999), ε = 1e-8, no weight decay.
    pub fn new(params: Vec<Parameter>, lr: f64) -> Adam {
        let n = params.len();
        Adam {
            params,
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            m: Slots::new("exp_avg", n),
            v: Slots::new("exp_avg_sq", n),
            steps: Slots::new("step", n),
        }
    }
    /// AdamW: weight decay 0.01 applied to the weights directly (`w ← w·(1 - lr·wd)`).
    pub fn adamw(params: Vec<Parameter>, lr: f64) -> Adam {
        Adam {
            weight_decay: 0.01,
            decoupled: true,
            ..Adam::new(params, lr)
        }
    }
    /// The moment decay rates.
    pub fn betas(mut self, b1: f64, b2: f64) -> Adam {
        self.betas = (b1, b2);
        self
    }
    /// The denominator's ε.
    pub fn eps(mut self, eps: f64) -> Adam {
        self.eps = eps;
        self
    }
    /// Weight decay (L2 for Adam, decoupled for AdamW).
    pub fn weight_decay(mut self, wd: f64) -> Adam {
        self.weight_decay = wd;
        self
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &Gradients) -> Result<()> {
        let (b1, b2) = self.betas;
        no_grad(|| {
            for (i, p) in self.params.iter().enumerate() {
                let Some(g) = grad_of(grads, p) else { continue };
                let mut g = g.clone();
                // Decoupled decay scales w in the same pass as the update.
                let mut keep = 1.0;
                if self.weight_decay != 0.0 {
                    if self.decoupled {
                        keep = 1.0 - self.lr * self.weight_decay;
                    } else {
                        g = g.add(&p.tensor().mul_scalar(self.weight_decay)?)?;
                    }
                }
                let t = match &self.steps.values[i] {
                    Some(s) => s.to_scalar()? + 1.0,
                    None => 1.0,
                };
                // The moments in place: m = β1·m + (1-β1)·g, v = β2·v + (1-β2)·g².
                let m = match self.m.values[i].take() {
                    Some(mut m) => {
                        m.scale_add_(b1, &g, 1.0 - b1)?;
                        m
                    }
                    None => g.mul_scalar(1.0 - b1)?,
                };
                let g2 = g.square()?;
                let v = match self.v.values[i].take() {
                    Some(mut v) => {
                        v.scale_add_(b2, &g2, 1.0 - b2)?;
                        v
                    }
                    None => g2.mul_scalar(1.0 - b2)?,
                };
                let (c1, c2) = (1.0 - b1.powf(t), 1.0 - b2.powf(t));
                // w ← keep·w - lr/c1 · m / (√(v/c2) + ε)
                let denom = v.mul_scalar(1.0 / c2)?.sqrt()?.add_scalar(self.eps)?;
                p.scale_add_(keep, &m.div(&denom)?, -self.lr / c1)?;
                self.m.values[i] = Some(m);
                self.v.values[i] = Some(v);
                self.steps.values[i] =
                    Some(Tensor::scalar(t, tessera_core::DType::F64, g.device())?);
            }
            Ok(())
        })
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = Vec::new();
        self.m.save(&mut s);
        self.v.save(&mut s);
        self.steps.save(&mut s);
        s
    }
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        self.m.load(state)?;
        self.v.load(state)?;
        self.steps.load(state)
    }
}

/// RMSprop (PyTorch's rule, α = 0.99, ε = 1e-8): `v = α·v + (1-α)·g²`, `w -= lr·g/(√v + ε)`,
/// with optional momentum.
pub struct RmsProp {
    params: Vec<Parameter>,
    lr: f64,
    alpha: f64,
    eps: f64,
    momentum: f64,
    v: Slots,
    bufs: Slots,
}

impl RmsProp {
    /// RMSprop with α = 0.99, ε = 1e-8, no momentum.
    pub fn new(params: Vec<Parameter>, lr: f64) -> RmsProp {
        let n = params.len();
        RmsProp {
            params,
            lr,
            alpha: 0.99,
            eps: 1e-8,
            momentum: 0.0,
            v: Slots::new("square_avg", n),
            bufs: Slots::new("momentum_buffer", n),
        }
    }
    /// The smoothing constant α.
    pub fn alpha(mut self, a: f64) -> RmsProp {
        self.alpha = a;
        self
    }
    /// Momentum on the scaled step.
    pub fn momentum(mut self, m: f64) -> RmsProp {
        self.momentum = m;
        self
    }
}

impl Optimizer for RmsProp {
    fn step(&mut self, grads: &Gradients) -> Result<()> {
        no_grad(|| {
            for (i, p) in self.params.iter().enumerate() {
                let Some(g) = grad_of(grads, p) else { continue };
                // In place: v = α·v + (1-α)·g², buf = m·buf + d, w = w - lr·d.
                let g2 = g.square()?;
                let v = match self.v.values[i].take() {
                    Some(mut v) => {
                        v.scale_add_(self.alpha, &g2, 1.0 - self.alpha)?;
                        v
                    }
                    None => g2.mul_scalar(1.0 - self.alpha)?,
                };
                let mut d = g.div(&v.sqrt()?.add_scalar(self.eps)?)?;
                if self.momentum != 0.0 {
                    let buf = match self.bufs.values[i].take() {
                        Some(mut b) => {
                            b.scale_add_(self.momentum, &d, 1.0)?;
                            b
                        }
                        None => d.clone(),
                    };
                    d = buf.clone();
                    self.bufs.values[i] = Some(buf);
                }
                p.scale_add_(1.0, &d, -self.lr)?;
                self.v.values[i] = Some(v);
            }
            Ok(())
        })
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = Vec::new();
        self.v.save(&mut s);
        self.bufs.save(&mut s);
        s
    }
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        self.v.load(state)?;
        self.bufs.load(state)
    }
}

/// Learning rate as a function of the epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// Constant.
    Constant,
    /// Multiply by `gamma` every `step_size` epochs.
    Step { step_size: usize, gamma: f64 },
    /// Cosine annealing from the base rate to `eta_min` over `t_max` epochs.
    Cosine { t_max: usize, eta_min: f64 },
}

impl Schedule {
    /// The learning rate for `epoch` (from 0) given the base rate.
    pub fn lr(&self, base: f64, epoch: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => {
                base * gamma.powi((epoch / step_size.max(1)) as i32)
            }
            Schedule::Cosine { t_max, eta_min } => {
                let t = epoch.min(t_max) as f64 / t_max.max(1) as f64;
                eta_min + (base - eta_min) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
    }
}

/// Scales the gradients of `params` so their global L2 norm is at most `max_norm`; returns the
/// norm before clipping. A non-finite norm is an error (nothing is changed).
pub fn clip_grad_norm(grads: &mut Gradients, params: &[Parameter], max_norm: f64) -> Result<f64> {
    let total = no_grad(|| -> Result<f64> {
        let mut sq = 0.0;
        for p in params {
            if let Some(g) = grads.get(&p.tensor()) {
                sq += g.square()?.sum_all()?.to_scalar()?;
            }
        }
        Ok(sq.sqrt())
    })?;
    if !total.is_finite() {
        return Err(Error::NonFinite {
            op: "clip_grad_norm",
            step: 0,
            value: total,
        });
    }
    if total > max_norm {
        let scale = max_norm / (total + 1e-6);
        for p in params {
            let t = p.tensor();
            if let Some(g) = grads.get(&t) {
                let scaled = no_grad(|| g.mul_scalar(scale))?;
                grads.insert(&t, scaled);
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::{DType, Device};

    fn cpu() -> Device {
        Device::new(std::sync::Arc::new(tessera_cpu::CpuBackend))
    }

    #[test]
    fn schedules_follow_their_formulas() {
        let step = Schedule::Step {
            step_size: 2,
            gamma: 0.5,
        };
        assert_eq!(
            [0, 1, 2, 5].map(|e| step.lr(0.1, e)),
            [0.1, 0.1, 0.05, 0.025]
        );
        let cos = Schedule::Cosine {
            t_max: 10,
            eta_min: 0.0,
        };
        assert!((cos.lr(1.0, 0) - 1.0).abs() < 1e-12);
        assert!((cos.lr(1.0, 5) - 0.5).abs() < 1e-12);
        assert!(cos.lr(1.0, 10).abs() < 1e-12);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() -> Result<()> {
        let p = Parameter::new(Tensor::zeros(&[2], DType::F64, &cpu())?)?;
        let mut g = Gradients::default();
        g.insert(&p.tensor(), Tensor::from_vec(vec![3.0, 4.0], &[2], &cpu())?);
        let norm = clip_grad_norm(&mut g, std::slice::from_ref(&p), 1.0)?;
        assert!((norm - 5.0).abs() < 1e-12);
        let v = g.get(&p.tensor()).unwrap().to_vec::<f64>()?;
        assert!(
            (v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6,
            "{v:?}"
        );
        g.insert(
            &p.tensor(),
            Tensor::from_vec(vec![f64::NAN, 1.0], &[2], &cpu())?,
        );
        assert!(clip_grad_norm(&mut g, &[p], 1.0).is_err());
        Ok(())
    }
}
