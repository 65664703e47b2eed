//! # tessera-nn
//!
//! The Lego blocks: layers with PyTorch's parameter names and layouts, the `Module` trait
//! (derived from a struct's fields) and `Forward` for custom architectures, optimizers,
//! initialisers, safetensors checkpoints and a model zoo.
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
pub use module::{prefixed, Forward, Module, ModuleField, Named, Parameter, Sequential};
/// `#[derive(Module)]`: see [`tessera_derive`].
pub use tessera_derive::Module;

// So the derive's `::tessera_nn::...` paths resolve inside this crate too (the zoo).
extern crate self as tessera_nn;
pub use summary::{summary, Summary, SummaryRow, Trace};
pub use tessera_core::ops::loss;
