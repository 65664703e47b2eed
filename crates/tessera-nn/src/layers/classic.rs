//! Layers of the classic papers: LeNet-5 (1998)'s scaled-tanh squashing, trainable
//! subsampling, partially connected convolution and RBF output, and AlexNet (2012)'s local
//! response normalisation.

use super::Conv2d;
use crate::init::{default_uniform, Ctx};
use crate::module::{Forward, Module, Named, Parameter};
use tessera_core::ops::conv::ConvOptions;
use tessera_core::ops::pool::{avg_pool2d, PoolOptions};
use tessera_core::{Error, HostData, Result, Tensor};

/// LeCun's squashing function `1.7159 · tanh(2a/3)`.
pub struct Squash;

impl Module for Squash {
    fn named_parameters(&self) -> Named {
        vec![]
    }
    fn kind(&self) -> String {
        "Squash".into()
    }
}

impl Forward for Squash {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.mul_scalar(2.0 / 3.0)?.tanh()?.mul_scalar(1.7159)
    }
}

/// LeNet's trainable subsampling: each map's 2×2 sums times a trainable coefficient plus a
/// trainable bias (then squashed), one coefficient and one bias per map.
pub struct Subsampling {
    pub weight: Parameter,
    pub bias: Parameter,
}

impl Subsampling {
    /// For `maps` feature maps; coefficients `U(±1/2)` (fan-in 4), biases likewise.
    pub fn new(ctx: &mut Ctx, maps: usize) -> Result<Subsampling> {
        Ok(Subsampling {
            weight: Parameter::new(default_uniform(ctx, &[maps], 4)?)?,
            bias: Parameter::new(default_uniform(ctx, &[maps], 4)?)?,
        })
    }
}

impl Module for Subsampling {
    fn named_parameters(&self) -> Named {
        vec![
            ("weight".into(), self.weight.clone()),
            ("bias".into(), self.bias.clone()),
        ]
    }
    fn kind(&self) -> String {
        "Subsampling".into()
    }
}

impl Forward for Subsampling {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.weight.dims()[0];
        let sums = avg_pool2d(x, &PoolOptions::new(2))?.mul_scalar(4.0)?;
        let y = sums.mul(&self.weight.tensor().reshape_usize(&[1, c, 1, 1])?)?;
        Squash.forward(&y.add(&self.bias.tensor().reshape_usize(&[1, c, 1, 1])?)?)
    }
    fn connections(&self, _x: &Tensor, y: &Tensor) -> u64 {
        // Four inputs and a bias per output unit.
        (y.numel() / y.dims()[0].max(1) * 5) as u64
    }
}

/// Which S2 maps feed each of C3's 16 maps (LeCun et al. 1998, Table I): six maps see three
/// contiguous S2 maps, six see four contiguous, three see four discontinuous, one sees all.
pub const C3_TABLE: [&[usize]; 16] = [
    &[0, 1, 2],
    &[1, 2, 3],
    &[2, 3, 4],
    &[3, 4, 5],
    &[4, 5, 0],
    &[5, 0, 1],
    &[0, 1, 2, 3],
    &[1, 2, 3, 4],
    &[2, 3, 4, 5],
    &[3, 4, 5, 0],
    &[4, 5, 0, 1],
    &[5, 0, 1, 2],
    &[0, 1, 3, 4],
    &[1, 2, 4, 5],
    &[0, 2, 3, 5],
    &[0, 1, 2, 3, 4, 5],
];

/// A convolution whose output map `o` sees only the input maps `table[o]`: a full weight
/// multiplied by a fixed 0/1 mask, so cut connections never carry signal or gradient.
pub struct PartialConv2d {
    pub conv: Conv2d,
    mask: Tensor,
    live: usize,
}

impl PartialConv2d {
    /// `k×k` kernels from `in_maps` to `table.len()` maps.
    pub fn new(
        ctx: &mut Ctx,
        in_maps: usize,
        table: &[&[usize]],
        k: usize,
    ) -> Result<PartialConv2d> {
        let out = table.len();
        let mut mask = vec![0.0; out * in_maps];
        for (o, ins) in table.iter().enumerate() {
            for &i in ins.iter() {
                if i >= in_maps {
                    return Err(Error::invalid(
                        "PartialConv2d",
                        format!("map {o} reads input {i} of {in_maps}"),
                    ));
                }
                mask[o * in_maps + i] = 1.0;
            }
        }
        let live = table.iter().map(|t| t.len()).sum::<usize>() * k * k + out;
        let mask = Tensor::from_host(
            HostData::from_f64(ctx.dtype, &mask),
            &[out, in_maps, 1, 1],
            &ctx.device,
        )?;
        let conv = Conv2d::new(ctx, in_maps, out, k, ConvOptions::new())?;
        Ok(PartialConv2d { conv, mask, live })
    }
}

impl Module for PartialConv2d {
    fn named_parameters(&self) -> Named {
        self.conv.named_parameters()
    }
    fn kind(&self) -> String {
        "PartialConv2d".into()
    }
    fn summary_params(&self) -> usize {
        self.live
    }
}

impl Forward for PartialConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.conv.weight.tensor().mul(&self.mask)?;
        let b = self.conv.bias.as_ref().map(|b| b.tensor());
        tessera_core::ops::conv::conv2d(x, &w, b.as_ref(), &self.conv.options)
    }
    fn connections(&self, _x: &Tensor, y: &Tensor) -> u64 {
        // Per output position, every live weight and each map's bias once.
        let positions = y.dims()[2] * y.dims()[3];
        (positions * self.live) as u64
    }
}

/// Euclidean RBF output units: `y_i = -Σ_j (x_j - w_ij)²`, negated so the largest value is the
/// closest prototype (and cross-entropy on it works).
pub struct Rbf {
    pub weight: Parameter,
}

impl Rbf {
    /// `classes` prototypes of `dim` values in {-1, +1} drawn at random (the paper used
    /// hand-drawn 7×12 bitmaps).
    pub fn new(ctx: &mut Ctx, dim: usize, classes: usize) -> Result<Rbf> {
        let u = default_uniform(ctx, &[classes, dim], 1)?;
        let w = u.sign()?;
        Ok(Rbf {
            weight: Parameter::new(w)?,
        })
    }
}

impl Module for Rbf {
    fn named_parameters(&self) -> Named {
        vec![("weight".into(), self.weight.clone())]
    }
    fn kind(&self) -> String {
        "Rbf".into()
    }
}

impl Forward for Rbf {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() != 2 {
            return Err(Error::invalid(
                "Rbf",
                format!("needs [N, features], got {}", x.shape()),
            ));
        }
        // Σ (x - w)² = |x|² - 2 x·w + |w|²
        let w = self.weight.tensor();
        let xx = x.square()?.sum(&[1], true)?;
        let ww = w.square()?.sum(&[1], false)?;
        let d = xx.sub(&x.matmul(&w.t()?)?.mul_scalar(2.0)?)?.add(&ww)?;
        d.neg()
    }
    fn connections(&self, _x: &Tensor, _y: &Tensor) -> u64 {
        self.weight.numel() as u64
    }
}

/// Local response normalisation across channels (AlexNet): `b = a / (k + α·mean(a²))^β` over
/// `size` neighbouring channels, PyTorch's `LocalResponseNorm`.
pub struct LocalResponseNorm {
    pub size: usize,
    pub alpha: f64,
    pub beta: f64,
    pub k: f64,
}

impl LocalResponseNorm {
    /// AlexNet's constants: size 5, α = 1e-4, β = 0.75, k = 2.
    pub fn alexnet() -> Self {
        LocalResponseNorm {
            size: 5,
            alpha: 1e-4,
            beta: 0.75,
            k: 2.0,
        }
    }
}

impl Module for LocalResponseNorm {
    fn named_parameters(&self) -> Named {
        vec![]
    }
    fn kind(&self) -> String {
        "LocalResponseNorm".into()
    }
}

impl Forward for LocalResponseNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() != 4 || self.size == 0 {
            return Err(Error::invalid(
                "LocalResponseNorm",
                format!("needs [N, C, H, W] and size >= 1, got {}", x.shape()),
            ));
        }
        let (n, c, h, w) = (x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]);
        // Average of squares over a window of channels: pool over the channel axis.
        let sq = x.square()?.reshape_usize(&[n, 1, c, h * w])?;
        let s = self.size;
        let padded = sq.pad(&[0, 0, s / 2, (s - 1) / 2], 0.0)?;
        let pool = PoolOptions {
            kernel_size: vec![s, 1],
            stride: Some(vec![1]),
            padding: vec![0],
            dilation: vec![1],
            ceil_mode: false,
            count_include_pad: true,
        };
        let avg = avg_pool2d(&padded, &pool)?.reshape_usize(&[n, c, h, w])?;
        x.div(
            &avg.mul_scalar(self.alpha)?
                .add_scalar(self.k)?
                .powf(self.beta)?,
        )
    }
}
