//! Initialisers, all drawn from a seeded counter-based generator (the same numbers on every
//! device). `default_uniform` is PyTorch's default for Linear, Conv and RNN layers.

use tessera_core::{DType, Device, Generator, Result, Tensor};

/// Where and how new parameters are made: device, dtype and the seeded generator.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub device: Device,
    pub dtype: DType,
    pub gen: Generator,
}

impl Ctx {
    /// f32 parameters on `device`, seeded with `seed`.
    pub fn new(device: &Device, seed: u64) -> Ctx {
        Ctx {
            device: device.clone(),
            dtype: DType::F32,
            gen: Generator::new(seed),
        }
    }
    /// Parameters of another dtype.
    pub fn with_dtype(mut self, dtype: DType) -> Ctx {
        self.dtype = dtype;
        self
    }
}

/// Uniform on `[-bound, bound)`.
pub fn uniform(ctx: &mut Ctx, shape: &[usize], bound: f64) -> Result<Tensor> {
    Tensor::rand_with(shape, -bound, bound, ctx.dtype, &mut ctx.gen, &ctx.device)
}

/// Normal with mean 0 and standard deviation `std`.
pub fn normal(ctx: &mut Ctx, shape: &[usize], std: f64) -> Result<Tensor> {
    Tensor::randn_with(shape, 0.0, std, ctx.dtype, &mut ctx.gen, &ctx.device)
}

/// PyTorch's default for Linear/Conv weights and biases: `U(±1/√fan_in)` (what
/// `kaiming_uniform_(a=√5)` works out to).
pub fn default_uniform(ctx: &mut Ctx, shape: &[usize], fan_in: usize) -> Result<Tensor> {
    uniform(ctx, shape, 1.0 / (fan_in.max(1) as f64).sqrt())
}

/// Kaiming (He) uniform for ReLU networks: `U(±√(6/fan_in))`.
pub fn kaiming_uniform(ctx: &mut Ctx, shape: &[usize], fan_in: usize) -> Result<Tensor> {
    uniform(ctx, shape, (6.0 / fan_in.max(1) as f64).sqrt())
}

/// Kaiming (He) normal for ReLU networks: `N(0, 2/fan_in)`.
pub fn kaiming_normal(ctx: &mut Ctx, shape: &[usize], fan_in: usize) -> Result<Tensor> {
    normal(ctx, shape, (2.0 / fan_in.max(1) as f64).sqrt())
}

/// Xavier (Glorot) uniform: `U(±gain·√(6/(fan_in + fan_out)))`.
pub fn xavier_uniform(
    ctx: &mut Ctx,
    shape: &[usize],
    fan_in: usize,
    fan_out: usize,
    gain: f64,
) -> Result<Tensor> {
    uniform(
        ctx,
        shape,
        gain * (6.0 / (fan_in + fan_out).max(1) as f64).sqrt(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialisers_have_their_bounds_and_spread() -> Result<()> {
        let dev = Device::new(std::sync::Arc::new(tessera_cpu::CpuBackend));
        let mut ctx = Ctx::new(&dev, 0).with_dtype(DType::F64);
        let x = xavier_uniform(&mut ctx, &[200, 300], 300, 200, 1.0)?.to_vec::<f64>()?;
        let bound = (6.0f64 / 500.0).sqrt();
        assert!(x.iter().all(|v| v.abs() < bound));
        let k = kaiming_normal(&mut ctx, &[100, 500], 500)?.to_vec::<f64>()?;
        let var = k.iter().map(|v| v * v).sum::<f64>() / k.len() as f64;
        assert!((var - 2.0 / 500.0).abs() < 2e-4, "{var}");
        // The same seed gives the same weights.
        let a = default_uniform(&mut Ctx::new(&dev, 5), &[10], 4)?.to_vec::<f32>()?;
        let b = default_uniform(&mut Ctx::new(&dev, 5), &[10], 4)?.to_vec::<f32>()?;
        assert_eq!(a, b);
        Ok(())
    }
}
