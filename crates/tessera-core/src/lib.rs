//! # tessera-core
//!
//! Tensors (shape, strides, dtype), tape-based reverse-mode autodiff, every op with its
//! backward rule and composite, and the contract every device implements: [`Backend`]'s
//! required primitives and the optional [`FusedKernels`]. Nothing here is device-specific:
//! backends live in their own crates (`tessera-cpu`, `tessera-cuda`, or yours) and plug in
//! through [`Device::new`].
//!
//! ```
//! use tessera_core::*;
//! # fn demo(dev: &Device) -> Result<()> {
//! let x = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], &[3], dev)?.requires_grad_()?;
//! let y = x.tanh()?.sum_all()?;            // recorded on the tape
//! let grads = y.backward()?;               // walks it in reverse
//! let dx = grads.of(&x)?;                 // 1 - tanh(x)^2
//! # Ok(()) }
//! ```

pub mod backend;
mod device;
mod display;
mod dtype;
mod error;
pub mod gradcheck;
mod layout;
pub mod ops;
pub mod random;
mod tape;
mod tensor;

pub use backend::{
    Backend, BinaryOp, Buffer, Composed, Distribution, FusedKernels, ReduceOp, UnaryOp, View,
    Window,
};
pub use device::Device;
pub use dtype::{DType, Element, HostData};
pub use error::{Error, Result};
pub use half;
pub use layout::{
    broadcast_shapes, checked_numel, coalesce, contiguous_strides, normalize_dim, Layout, Shape,
};
pub use random::{manual_seed, Generator};
pub use tape::{
    clear_tape, is_grad_enabled, no_grad, tape_len, BackwardFn, GradModeGuard, Gradients,
};
pub use tensor::{Tensor, TensorId};
