use crate::module::{Forward, Module, Named};
use tessera_core::{Result, Tensor};

/// Parameter-free elementwise layers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Relu,
    LeakyRelu(f64),
    Sigmoid,
    Tanh,
    /// GELU; `true` for the tanh approximation.
    Gelu(bool),
    Softplus {
        beta: f64,
        threshold: f64,
    },
    Softmax(isize),
    LogSoftmax(isize),
}

impl Module for Activation {
    fn kind(&self) -> String {
        format!("{self:?}")
    }
    fn named_parameters(&self) -> Named {
        vec![]
    }
}

impl Forward for Activation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match *self {
            Activation::Relu => x.relu(),
            Activation::LeakyRelu(s) => x.leaky_relu(s),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Tanh => x.tanh(),
            Activation::Gelu(t) => x.gelu(t),
            Activation::Softplus { beta, threshold } => x.softplus(beta, threshold),
            Activation::Softmax(d) => x.softmax(d),
            Activation::LogSoftmax(d) => x.log_softmax(d),
        }
    }
}

/// Flattens every dim after the first (C, H, W order).
pub struct Flatten;

impl Module for Flatten {
    fn kind(&self) -> String {
        "Flatten".into()
    }
    fn named_parameters(&self) -> Named {
        vec![]
    }
}

impl Forward for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.flatten(1, -1)
    }
}
