use super::Conv2d;
use crate::init::Ctx;
use crate::module::Forward;
use crate::summary::Trace;
use crate::Module;
use tessera_core::ops::conv::ConvOptions;
use tessera_core::ops::pool::{max_pool2d, PoolOptions};
use tessera_core::{Result, Tensor};

/// GoogLeNet v1 Inception module: 1×1, 1×1→3×3, 1×1→5×5 and 3×3 max-pool→1×1 branches, each
/// followed by ReLU, concatenated on channels. Parameter names `b1`, `b3r`, `b3`, `b5r`, `b5`,
/// `bp`.
#[derive(Module)]
pub struct Inception {
    pub b1: Conv2d,
    pub b3r: Conv2d,
    pub b3: Conv2d,
    pub b5r: Conv2d,
    pub b5: Conv2d,
    pub bp: Conv2d,
}

impl Inception {
    /// Branch widths as in the GoogLeNet paper's table: `ch1x1`, `ch3x3red`, `ch3x3`,
    /// `ch5x5red`, `ch5x5`, `pool_proj`.
    pub fn new(ctx: &mut Ctx, in_channels: usize, widths: [usize; 6]) -> Result<Inception> {
        let [c1, c3r, c3, c5r, c5, cp] = widths;
        let o = ConvOptions::new;
        Ok(Inception {
            b1: Conv2d::new(ctx, in_channels, c1, 1, o())?,
            b3r: Conv2d::new(ctx, in_channels, c3r, 1, o())?,
            b3: Conv2d::new(ctx, c3r, c3, 3, o().padding(1))?,
            b5r: Conv2d::new(ctx, in_channels, c5r, 1, o())?,
            b5: Conv2d::new(ctx, c5r, c5, 5, o().padding(2))?,
            bp: Conv2d::new(ctx, in_channels, cp, 1, o())?,
        })
    }

    /// Output channels: the sum of the branch widths.
    pub fn out_channels(&self) -> usize {
        [&self.b1, &self.b3, &self.b5, &self.bp]
            .iter()
            .map(|c| c.weight.dims()[0])
            .sum()
    }
}

impl Forward for Inception {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.trace(x, &mut Trace::off())
    }
    fn trace(&self, x: &Tensor, t: &mut Trace) -> Result<Tensor> {
        let mut relu = |name: &str, c: &Conv2d, x: &Tensor| t.call(name, c, x)?.relu();
        let y1 = relu("b1", &self.b1, x)?;
        let y3 = relu("b3r", &self.b3r, x)?;
        let y3 = relu("b3", &self.b3, &y3)?;
        let y5 = relu("b5r", &self.b5r, x)?;
        let y5 = relu("b5", &self.b5, &y5)?;
        let pooled = max_pool2d(x, &PoolOptions::new(3).stride(1).padding(1))?;
        let yp = relu("bp", &self.bp, &pooled)?;
        Tensor::concat(&[&y1, &y3, &y5, &yp], 1)
    }
    fn is_container(&self) -> bool {
        true
    }
}
