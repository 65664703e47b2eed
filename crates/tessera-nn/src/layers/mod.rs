//! Layers: each a struct holding its parameters and options, with PyTorch's parameter names
//! and layouts. The math lives in `tessera_core::ops`; a layer only owns state.

mod activation;
mod attention;
mod classic;
mod conv;
mod inception;
mod linear;
mod norm;
mod pool;
mod rnn;

pub use activation::{Activation, Flatten};
pub use attention::{
    rotary_embedding, AttentionMasks, MultiheadAttention, SinusoidalPositionalEncoding,
    TransformerDecoder, TransformerDecoderLayer, TransformerEncoder, TransformerEncoderLayer,
    TransformerOptions,
};
pub use classic::{LocalResponseNorm, PartialConv2d, Rbf, Squash, Subsampling, C3_TABLE};
pub use conv::{Conv1d, Conv2d, ConvTranspose2d};
pub use inception::Inception;
pub use linear::Linear;
pub use norm::{mc_forward, with_mc_dropout, BatchNorm, Dropout, Embedding, LayerNorm};
pub use pool::{AdaptiveAvgPool2d, AvgPool2d, GlobalAvgPool2d, MaxPool1d, MaxPool2d};
pub use rnn::{Gru, Lstm};
pub use tessera_core::ops::attention::FfActivation;

use crate::module::{Named, Parameter};
use tessera_core::Tensor;

/// `weight` and (if any) `bias`, PyTorch's names.
fn weight_and_bias(weight: &Parameter, bias: &Option<Parameter>) -> Named {
    let mut p = vec![("weight".to_string(), weight.clone())];
    p.extend(bias.iter().map(|b| ("bias".to_string(), b.clone())));
    p
}

/// Connections of a layer whose every output unit sums `weight`'s fan-in (dims after the
/// first) plus a bias: output units per example × (fan-in + bias).
fn dense_connections(weight: &Parameter, bias: bool, y: &Tensor) -> u64 {
    let fan_in: usize = weight.dims()[1..].iter().product();
    let per_example = y.numel() / y.dims().first().copied().unwrap_or(1).max(1);
    (per_example * (fan_in + bias as usize)) as u64
}
