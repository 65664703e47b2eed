use crate::init::{normal, Ctx};
use crate::module::{Forward, Module, Named, Parameter};
use std::cell::Cell;
use std::sync::Mutex;
use tessera_core::ops::norm::{batch_norm, dropout, embedding, layer_norm};
use tessera_core::{no_grad, DType, Error, Generator, Result, Tensor};

/// Batch normalisation over channel axis 1 (`BatchNorm1d`/`2d` alike), with running statistics.
pub struct BatchNorm {
    pub weight: Option<Parameter>,
    pub bias: Option<Parameter>,
    pub running_mean: Parameter,
    pub running_var: Parameter,
    pub num_batches_tracked: Parameter,
    pub momentum: f64,
    pub eps: f64,
    training: bool,
}

impl BatchNorm {
    /// Affine, momentum 0.1, eps 1e-5, as PyTorch.
    pub fn new(ctx: &mut Ctx, num_features: usize) -> Result<BatchNorm> {
        let (d, t) = (&ctx.device, ctx.dtype);
        Ok(BatchNorm {
            weight: Some(Parameter::new(Tensor::ones(&[num_features], t, d)?)?),
            bias: Some(Parameter::new(Tensor::zeros(&[num_features], t, d)?)?),
            running_mean: Parameter::buffer(Tensor::zeros(&[num_features], t, d)?),
            running_var: Parameter::buffer(Tensor::ones(&[num_features], t, d)?),
            num_batches_tracked: Parameter::buffer(Tensor::zeros(&[], DType::I64, d)?),
            momentum: 0.1,
            eps: 1e-5,
            training: true,
        })
    }
}

impl Module for BatchNorm {
    fn kind(&self) -> String {
        "BatchNorm".into()
    }
    fn named_parameters(&self) -> Named {
        let mut p = Vec::new();
        p.extend(
            self.weight
                .iter()
                .map(|w| ("weight".to_string(), w.clone())),
        );
        p.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        p.push(("running_mean".into(), self.running_mean.clone()));
        p.push(("running_var".into(), self.running_var.clone()));
        p.push((
            "num_batches_tracked".into(),
            self.num_batches_tracked.clone(),
        ));
        p
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
}

impl Forward for BatchNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (
            self.weight.as_ref().map(|p| p.tensor()),
            self.bias.as_ref().map(|p| p.tensor()),
        );
        let (y, stats) = batch_norm(
            x,
            &self.running_mean.tensor(),
            &self.running_var.tensor(),
            w.as_ref(),
            b.as_ref(),
            self.training,
            self.momentum,
            self.eps,
        )?;
        if let Some((m, v)) = stats {
            self.running_mean.set(m)?;
            self.running_var.set(v)?;
            let n = no_grad(|| self.num_batches_tracked.tensor().add_scalar(1.0))?;
            self.num_batches_tracked.set(n)?;
        }
        Ok(y)
    }
}

/// Layer normalisation over the trailing `normalized_shape`.
pub struct LayerNorm {
    pub weight: Parameter,
    pub bias: Parameter,
    pub normalized_shape: Vec<usize>,
    pub eps: f64,
}

impl LayerNorm {
    /// Affine, eps 1e-5.
    pub fn new(ctx: &mut Ctx, normalized_shape: &[usize]) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: Parameter::new(Tensor::ones(normalized_shape, ctx.dtype, &ctx.device)?)?,
            bias: Parameter::new(Tensor::zeros(normalized_shape, ctx.dtype, &ctx.device)?)?,
            normalized_shape: normalized_shape.to_vec(),
            eps: 1e-5,
        })
    }
}

impl Module for LayerNorm {
    fn kind(&self) -> String {
        "LayerNorm".into()
    }
    fn named_parameters(&self) -> Named {
        vec![
            ("weight".into(), self.weight.clone()),
            ("bias".into(), self.bias.clone()),
        ]
    }
}

impl Forward for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(
            x,
            &self.normalized_shape,
            Some(&self.weight.tensor()),
            Some(&self.bias.tensor()),
            self.eps,
        )
    }
}

thread_local! {
    static MC_DROPOUT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every [`Dropout`] sampling masks even in eval mode (Monte Carlo dropout),
/// leaving batch norm and everything else in their current mode.
pub fn with_mc_dropout<T>(f: impl FnOnce() -> T) -> T {
    let prev = MC_DROPOUT.with(|c| c.replace(true));
    let out = f();
    MC_DROPOUT.with(|c| c.set(prev));
    out
}

/// Dropout: in training mode each element is zeroed with probability `p` and the rest scaled
/// by `1/(1 - p)`; identity in eval mode.
pub struct Dropout {
    pub p: f64,
    training: bool,
    gen: Mutex<Generator>,
}

impl Dropout {
    /// Dropout with probability `p`, masks drawn from a generator seeded with `seed`.
    pub fn new(p: f64, seed: u64) -> Result<Dropout> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid(
                "Dropout",
                format!("p must be in [0, 1), got {p}"),
            ));
        }
        Ok(Dropout {
            p,
            training: true,
            gen: Mutex::new(Generator::new(seed)),
        })
    }

    /// Whether masks are drawn (training mode).
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// The mask generator, for ops that draw their own masks (attention weights).
    pub(crate) fn generator(&self) -> &Mutex<Generator> {
        &self.gen
    }
}

impl Module for Dropout {
    fn kind(&self) -> String {
        format!("Dropout({})", self.p)
    }
    fn named_parameters(&self) -> Named {
        vec![]
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
}

impl Forward for Dropout {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !(self.training || MC_DROPOUT.with(|c| c.get())) {
            return Ok(x.clone());
        }
        let mut gen = self.gen.lock().unwrap_or_else(|e| e.into_inner());
        dropout(x, self.p, &mut gen)
    }
}

/// Monte Carlo dropout ("bagging over dropout masks"): the mean and the variance (over the
/// `t` passes, divided by `t`) of `t` stochastic forward passes of `model`.
pub fn mc_forward(model: &dyn Forward, x: &Tensor, t: usize) -> Result<(Tensor, Tensor)> {
    if t == 0 {
        return Err(Error::invalid("mc_forward", "needs at least one pass"));
    }
    let passes = with_mc_dropout(|| (0..t).map(|_| model.forward(x)).collect::<Result<Vec<_>>>())?;
    let stacked = Tensor::stack(&passes.iter().collect::<Vec<_>>(), 0)?;
    let mean = stacked.mean(&[0], false)?;
    let var = if t > 1 {
        stacked.var(&[0], 0, false)?
    } else {
        mean.zeros_like()?
    };
    Ok((mean, var))
}

/// A lookup table `[num_embeddings, dim]`, initialised `N(0, 1)` with the `padding_idx` row
/// zero; that row takes no gradient.
pub struct Embedding {
    pub weight: Parameter,
    pub padding_idx: Option<isize>,
}

impl Embedding {
    /// A table of `num_embeddings` rows of `dim`.
    pub fn new(
        ctx: &mut Ctx,
        num_embeddings: usize,
        dim: usize,
        padding_idx: Option<isize>,
    ) -> Result<Embedding> {
        let mut w = normal(ctx, &[num_embeddings, dim], 1.0)?;
        if let Some(p) = padding_idx {
            let row = tessera_core::normalize_dim("Embedding", p, num_embeddings)?;
            let mut mask = vec![1.0; num_embeddings];
            mask[row] = 0.0;
            let mask = Tensor::from_host(
                tessera_core::HostData::from_f64(ctx.dtype, &mask),
                &[num_embeddings, 1],
                &ctx.device,
            )?;
            w = w.mul(&mask)?;
        }
        Ok(Embedding {
            weight: Parameter::new(w)?,
            padding_idx,
        })
    }
}

impl Module for Embedding {
    fn kind(&self) -> String {
        "Embedding".into()
    }
    fn named_parameters(&self) -> Named {
        vec![("weight".into(), self.weight.clone())]
    }
}

impl Forward for Embedding {
    fn forward(&self, indices: &Tensor) -> Result<Tensor> {
        embedding(indices, &self.weight.tensor(), self.padding_idx)
    }
}
