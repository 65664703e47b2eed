//! Layers: each a struct holding its parameters and options, with PyTorch's parameter names
//! and layouts. The math lives in `tessera_core::ops`; a layer only owns state.

mod activation;
mod classic;
mod conv;
mod inception;
mod linear;
mod norm;
mod pool;
mod rnn;

pub use activation::{Activation, Flatten};
pub use classic::{LocalResponseNorm, PartialConv2d, Rbf, Squash, Subsampling, C3_TABLE};
pub use conv::{Conv1d, Conv2d, ConvTranspose2d};
pub use inception::Inception;
pub use linear::Linear;
pub use norm::{mc_forward, with_mc_dropout, BatchNorm, Dropout, Embedding, LayerNorm};
pub use pool::{AdaptiveAvgPool2d, AvgPool2d, GlobalAvgPool2d, MaxPool1d, MaxPool2d};
pub use rnn::{Gru, Lstm};
