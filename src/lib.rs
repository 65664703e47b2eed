//! # tessera
//!
//! A deep-learning framework in Rust: tensors with tape-based reverse-mode autodiff
//! (higher-order gradients included), backends chosen at run time, and PyTorch-checked ops.
//!
//! ```
//! use tessera::prelude::*;
//!
//! # fn main() -> Result<()> {
//! let dev = Device::parse("cpu")?;
//! tessera::manual_seed(0);
//! let w = Tensor::randn(&[3, 2], &dev)?.requires_grad_()?;
//! let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[1, 3], &dev)?;
//! let loss = x.matmul(&w)?.relu()?.sum_all()?;
//! let grads = loss.backward()?;
//! assert_eq!(grads.of(&w)?.dims(), &[3, 2]);
//! # Ok(()) }
//! ```

// So `#[derive(Module)]`'s default path, `::tessera::nn`, resolves inside this crate too.
extern crate self as tessera;

pub mod conformance;
pub mod data;
#[cfg(feature = "cli")]
pub mod plot;
#[cfg(feature = "cli")]
pub mod text;
#[cfg(feature = "cli")]
pub mod train;

pub use tessera_core as core;
pub use tessera_core::{
    backend, clear_tape, manual_seed, no_grad, ops, random, tape_len, Backend, Composed, DType,
    Device, Error, FusedKernels, Generator, Gradients, HostData, Layout, Result, Shape, Tensor,
};
pub use tessera_cpu as cpu;
#[cfg(feature = "cuda")]
pub use tessera_cuda as cuda;
pub use tessera_nn as nn;
pub use tessera_nn::optim;

/// Gradient checking against finite differences in f64, for tessera's ops and your own.
pub mod testing {
    pub use tessera_core::gradcheck::{gradcheck, gradgradcheck, GradcheckOptions};
}

/// Picking a device by name, as command lines do.
pub trait DeviceExt: Sized {
    /// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`. Without a usable GPU (no driver, no device, no
    /// NVRTC or cuBLAS library) `cuda` is an error that says which piece is missing.
    fn parse(name: &str) -> Result<Self>;
}

impl DeviceExt for Device {
    fn parse(name: &str) -> Result<Device> {
        let ordinal = match name {
            "cpu" => return Ok(tessera_cpu::cpu()),
            "cuda" => Some(0),
            n => n
                .strip_prefix("cuda:")
                .and_then(|i| i.parse::<usize>().ok()),
        };
        match ordinal {
            #[cfg(feature = "cuda")]
            Some(i) => tessera_cuda::device(i),
            #[cfg(not(feature = "cuda"))]
            Some(_) => Err(Error::Device {
                device: name.to_string(),
                msg: "tessera was built without its `cuda` feature".into(),
            }),
            None => Err(Error::Device {
                device: name.to_string(),
                msg: "unknown device; expected cpu, cuda or cuda:N".into(),
            }),
        }
    }
}

/// A zoo model by name with a one-example input of its usual shape (for `tessera summary`).
pub fn zoo_model(name: &str, device: &Device) -> Result<(Box<dyn tessera_nn::Forward>, Tensor)> {
    use tessera_nn::zoo::*;
    let mut ctx = tessera_nn::Ctx::new(device, 0);
    let image = |c: usize, hw: usize| Tensor::zeros(&[1, c, hw, hw], DType::F32, device);
    let tokens = |n: usize| Tensor::zeros(&[1, n], DType::I64, device);
    Ok(match name {
        "lenet5" => (Box::new(LeNet5::new(&mut ctx)?), image(1, 28)?),
        "lenet1998" => (Box::new(LeNet1998::new(&mut ctx, true)?), image(1, 32)?),
        "lenet1998-softmax" => (Box::new(LeNet1998::new(&mut ctx, false)?), image(1, 32)?),
        "alexnet" => (Box::new(AlexNet::new(&mut ctx, 1000)?), image(3, 227)?),
        "googlenet" => (Box::new(GoogLeNetSmall::new(&mut ctx, 1, 10)?), image(1, 28)?),
        "mlp" => (Box::new(Mlp::new(&mut ctx, &[784, 512, 256, 10])?), image(1, 28)?),
        "textcnn" => (Box::new(TextCnn::new(&mut ctx, 10_000, 128, &[3, 4, 5], 100, 2)?), tokens(50)?),
        "charlstm" => (Box::new(CharLstm::new(&mut ctx, 96, 64, 256, 2)?), tokens(100)?),
        other => {
            return Err(Error::invalid(
                "zoo",
                format!("unknown model {other:?}: lenet5, lenet1998, lenet1998-softmax, alexnet, googlenet, mlp, textcnn, charlstm"),
            ))
        }
    })
}

/// What most programs need: `use tessera::prelude::*;`.
pub mod prelude {
    pub use crate::DeviceExt;
    pub use tessera_core::{no_grad, DType, Device, Error, Generator, Gradients, Result, Tensor};
    pub use tessera_nn::optim::{self, Optimizer};
    pub use tessera_nn::{self as nn, Forward, Module};
}
