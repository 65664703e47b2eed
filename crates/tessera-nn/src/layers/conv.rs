use crate::init::{default_uniform, Ctx};
use crate::module::{Forward, Module, Named, Parameter};
use tessera_core::ops::conv::{
    conv1d, conv2d, conv2d_relu, conv_transpose2d, ConvOptions, ConvTransposeOptions,
};
use tessera_core::{Result, Tensor};

/// 2-d convolution, weight OIHW `[out, in/groups, kh, kw]`; with [`Conv2d::with_relu`]
/// followed by a ReLU in the convolution's last pass. Clones share the parameters.
#[derive(Clone)]
pub struct Conv2d {
    pub weight: Parameter,
    pub bias: Option<Parameter>,
    pub options: ConvOptions,
    /// Whether a ReLU follows (fused into the convolution; no parameters of its own).
    pub relu: bool,
}

impl Conv2d {
    /// A `k×k` convolution with bias and PyTorch's default initialisation.
    pub fn new(
        ctx: &mut Ctx,
        in_channels: usize,
        out_channels: usize,
        k: usize,
        options: ConvOptions,
    ) -> Result<Conv2d> {
        Self::rect(ctx, in_channels, out_channels, [k, k], true, options)
    }
    /// Any kernel shape, with or without bias.
    pub fn rect(
        ctx: &mut Ctx,
        in_channels: usize,
        out_channels: usize,
        k: [usize; 2],
        bias: bool,
        options: ConvOptions,
    ) -> Result<Conv2d> {
        let g = options.groups.max(1);
        let fan_in = in_channels / g * k[0] * k[1];
        let weight = Parameter::new(default_uniform(
            ctx,
            &[out_channels, in_channels / g, k[0], k[1]],
            fan_in,
        )?)?;
        let bias = if bias {
            Some(Parameter::new(default_uniform(
                ctx,
                &[out_channels],
                fan_in,
            )?)?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            options,
            relu: false,
        })
    }
    /// This layer followed by a ReLU, which the backend applies in the convolution's last pass
    /// where it can ([`conv2d_relu`]); the parameters and their names stay the same.
    pub fn with_relu(mut self) -> Conv2d {
        self.relu = true;
        self
    }
}

impl Module for Conv2d {
    fn kind(&self) -> String {
        "Conv2d".into()
    }
    fn named_parameters(&self) -> Named {
        super::weight_and_bias(&self.weight, &self.bias)
    }
}

impl Forward for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b = self.bias.as_ref().map(|b| b.tensor());
        match self.relu {
            true => conv2d_relu(x, &self.weight.tensor(), b.as_ref(), &self.options),
            false => conv2d(x, &self.weight.tensor(), b.as_ref(), &self.options),
        }
    }
    fn connections(&self, _x: &Tensor, y: &Tensor) -> u64 {
        super::dense_connections(&self.weight, self.bias.is_some(), y)
    }
}

/// 1-d convolution, weight `[out, in/groups, k]`.
pub struct Conv1d {
    pub weight: Parameter,
    pub bias: Option<Parameter>,
    pub options: ConvOptions,
}

impl Conv1d {
    /// A width-`k` convolution with bias and PyTorch's default initialisation.
    pub fn new(
        ctx: &mut Ctx,
        in_channels: usize,
        out_channels: usize,
        k: usize,
        options: ConvOptions,
    ) -> Result<Conv1d> {
        let g = options.groups.max(1);
        let fan_in = in_channels / g * k;
        let weight = Parameter::new(default_uniform(
            ctx,
            &[out_channels, in_channels / g, k],
            fan_in,
        )?)?;
        let bias = Some(Parameter::new(default_uniform(
            ctx,
            &[out_channels],
            fan_in,
        )?)?);
        Ok(Conv1d {
            weight,
            bias,
            options,
        })
    }
}

impl Module for Conv1d {
    fn kind(&self) -> String {
        "Conv1d".into()
    }
    fn named_parameters(&self) -> Named {
        super::weight_and_bias(&self.weight, &self.bias)
    }
}

impl Forward for Conv1d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b = self.bias.as_ref().map(|b| b.tensor());
        conv1d(x, &self.weight.tensor(), b.as_ref(), &self.options)
    }
    fn connections(&self, _x: &Tensor, y: &Tensor) -> u64 {
        super::dense_connections(&self.weight, self.bias.is_some(), y)
    }
}

/// Transposed 2-d convolution, weight `[in, out/groups, kh, kw]`.
pub struct ConvTranspose2d {
    pub weight: Parameter,
    pub bias: Option<Parameter>,
    pub options: ConvTransposeOptions,
}

impl ConvTranspose2d {
    /// A `k×k` transposed convolution with bias and PyTorch's default initialisation.
    pub fn new(
        ctx: &mut Ctx,
        in_channels: usize,
        out_channels: usize,
        k: usize,
        options: ConvTransposeOptions,
    ) -> Result<Self> {
        let g = options.groups.max(1);
        // PyTorch computes fan_in from weight dim 1 (out/groups) for transposed convolutions.
        let fan_in = out_channels / g * k * k;
        let weight = Parameter::new(default_uniform(
            ctx,
            &[in_channels, out_channels / g, k, k],
            fan_in,
        )?)?;
        let bias = Some(Parameter::new(default_uniform(
            ctx,
            &[out_channels],
            fan_in,
        )?)?);
        Ok(ConvTranspose2d {
            weight,
            bias,
            options,
        })
    }
}

impl Module for ConvTranspose2d {
    fn kind(&self) -> String {
        "ConvTranspose2d".into()
    }
    fn named_parameters(&self) -> Named {
        super::weight_and_bias(&self.weight, &self.bias)
    }
}

impl Forward for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let b = self.bias.as_ref().map(|b| b.tensor());
        conv_transpose2d(x, &self.weight.tensor(), b.as_ref(), &self.options)
    }
    fn connections(&self, x: &Tensor, y: &Tensor) -> u64 {
        // Every input unit feeds out/groups · kh · kw outputs; every output adds a bias.
        let per_in: usize = self.weight.dims()[1..].iter().product();
        let b = x.dims().first().copied().unwrap_or(1).max(1);
        ((x.numel() / b) * per_in
            + if self.bias.is_some() {
                y.numel() / b
            } else {
                0
            }) as u64
    }
}
