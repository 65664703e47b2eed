use crate::init::{default_uniform, Ctx};
use crate::module::{Forward, Module, Named, Parameter};
use tessera_core::{Result, Tensor};

/// `y = x·Wᵀ + b`, weight `[out, in]`; with [`Linear::with_relu`], `relu(x·Wᵀ + b)` with the
/// bias and the ReLU in one pass. Clones share the parameters.
#[derive(Clone)]
pub struct Linear {
    pub weight: Parameter,
    pub bias: Option<Parameter>,
    /// Whether a ReLU follows (fused with the bias; no parameters of its own).
    pub relu: bool,
}

impl Linear {
    /// PyTorch's default initialisation, with a bias.
    pub fn new(ctx: &mut Ctx, in_features: usize, out_features: usize) -> Result<Linear> {
        Self::with_bias(ctx, in_features, out_features, true)
    }
    /// With or without a bias.
    pub fn with_bias(
        ctx: &mut Ctx,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Linear> {
        let weight = Parameter::new(default_uniform(
            ctx,
            &[out_features, in_features],
            in_features,
        )?)?;
        let bias = if bias {
            Some(Parameter::new(default_uniform(
                ctx,
                &[out_features],
                in_features,
            )?)?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            relu: false,
        })
    }
    /// This layer followed by a ReLU, applied in the same pass as the bias (PyTorch's fused
    /// `LinearReLU`); the parameters and their names stay the same.
    pub fn with_relu(mut self) -> Linear {
        self.relu = true;
        self
    }
}

impl Module for Linear {
    fn kind(&self) -> String {
        "Linear".into()
    }
    fn named_parameters(&self) -> Named {
        super::weight_and_bias(&self.weight, &self.bias)
    }
}

impl Forward for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b = self.bias.as_ref().map(|b| b.tensor());
        match self.relu {
            true => x.linear_relu(&self.weight.tensor(), b.as_ref()),
            false => x.linear(&self.weight.tensor(), b.as_ref()),
        }
    }
    fn connections(&self, _x: &Tensor, y: &Tensor) -> u64 {
        super::dense_connections(&self.weight, self.bias.is_some(), y)
    }
}
