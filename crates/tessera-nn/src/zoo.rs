//! Ready-made models with PyTorch's parameter names.

use crate::init::Ctx;
use crate::layers::{Conv2d, Linear};
use crate::module::{prefixed, Module, Named};
use tessera_core::ops::conv::ConvOptions;
use tessera_core::ops::pool::{max_pool2d, PoolOptions};
use tessera_core::{Error, Result, Tensor};

/// A multilayer perceptron: Linear layers with ReLU between them; parameters `layers.{i}.*`.
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Mlp {
    /// Widths from input to output, e.g. `[784, 512, 256, 10]`.
    pub fn new(ctx: &mut Ctx, widths: &[usize]) -> Result<Mlp> {
        if widths.len() < 2 {
            return Err(Error::invalid(
                "Mlp",
                "needs at least an input and an output width",
            ));
        }
        let layers = widths
            .windows(2)
            .map(|w| Linear::new(ctx, w[0], w[1]))
            .collect::<Result<_>>()?;
        Ok(Mlp { layers })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.flatten(1, -1)?;
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
    fn named_parameters(&self) -> Named {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| prefixed(&format!("layers.{i}"), l.named_parameters()))
            .collect()
    }
}

/// LeNet-5 as commonly used today (ReLU, max pooling), for 1×28×28 inputs: conv 1→6 5×5
/// padding 2 → pool → conv 6→16 5×5 → pool → 400 → 120 → 84 → 10. Parameter names `conv1`,
/// `conv2`, `fc1`, `fc2`, `fc3`, as in the usual PyTorch definition.
pub struct LeNet5 {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub fc1: Linear,
    pub fc2: Linear,
    pub fc3: Linear,
}

impl LeNet5 {
    /// PyTorch's default initialisation from `ctx`'s generator.
    pub fn new(ctx: &mut Ctx) -> Result<LeNet5> {
        Ok(LeNet5 {
            conv1: Conv2d::new(ctx, 1, 6, 5, ConvOptions::new().padding(2))?,
            conv2: Conv2d::new(ctx, 6, 16, 5, ConvOptions::new())?,
            fc1: Linear::new(ctx, 400, 120)?,
            fc2: Linear::new(ctx, 120, 84)?,
            fc3: Linear::new(ctx, 84, 10)?,
        })
    }
}

impl Module for LeNet5 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let pool = PoolOptions::new(2);
        let h = max_pool2d(&self.conv1.forward(x)?.relu()?, &pool)?;
        let h = max_pool2d(&self.conv2.forward(&h)?.relu()?, &pool)?.flatten(1, -1)?;
        let h = self.fc1.forward(&h)?.relu()?;
        let h = self.fc2.forward(&h)?.relu()?;
        self.fc3.forward(&h)
    }
    fn named_parameters(&self) -> Named {
        let mut p = prefixed("conv1", self.conv1.named_parameters());
        p.extend(prefixed("conv2", self.conv2.named_parameters()));
        p.extend(prefixed("fc1", self.fc1.named_parameters()));
        p.extend(prefixed("fc2", self.fc2.named_parameters()));
        p.extend(prefixed("fc3", self.fc3.named_parameters()));
        p
    }
}
