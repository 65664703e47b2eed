//! # tessera-nn
//!
//! The Lego blocks: layers with PyTorch's parameter names and layouts, a `Module` trait for
//! custom architectures, optimizers, initialisers, safetensors checkpoints and a model zoo.
//! Built on `tessera-core` only, so every block runs on every backend.

pub mod checkpoint;
pub mod init;
pub mod layers;
mod module;
pub mod optim;
pub mod summary;
pub mod zoo;

pub use init::Ctx;
pub use layers::*;
pub use module::{prefixed, Module, Named, Parameter, Sequential};
pub use summary::{summary, Summary, SummaryRow, Trace};
pub use tessera_core::ops::loss;
