use crate::module::{Forward, Module, Named};
use tessera_core::ops::pool::{
    adaptive_avg_pool2d, avg_pool2d, global_avg_pool2d, max_pool1d, max_pool2d, PoolOptions,
};
use tessera_core::{Result, Tensor};

macro_rules! pool_layer {
    ($(#[$doc:meta])* $name:ident, $f:ident) => {
        $(#[$doc])*
        pub struct $name(pub PoolOptions);
        impl Module for $name {
            fn kind(&self) -> String {
                stringify!($name).into()
            }
            fn named_parameters(&self) -> Named {
                vec![]
            }
        }
        impl Forward for $name {
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                $f(x, &self.0)
            }
        }
    };
}
pool_layer!(
    /// Max pooling over `[N, C, H, W]` (dilation, ceil mode).
    MaxPool2d, max_pool2d
);
pool_layer!(
    /// Max pooling over `[N, C, L]`.
    MaxPool1d, max_pool1d
);
pool_layer!(
    /// Average pooling over `[N, C, H, W]`.
    AvgPool2d, avg_pool2d
);

/// Adaptive average pooling to a fixed `[oh, ow]`.
pub struct AdaptiveAvgPool2d(pub [usize; 2]);

impl Module for AdaptiveAvgPool2d {
    fn kind(&self) -> String {
        "AdaptiveAvgPool2d".into()
    }
    fn named_parameters(&self) -> Named {
        vec![]
    }
}

impl Forward for AdaptiveAvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        adaptive_avg_pool2d(x, self.0)
    }
}

/// Global average pooling `[N, C, H, W]` → `[N, C]`.
pub struct GlobalAvgPool2d;

impl Module for GlobalAvgPool2d {
    fn kind(&self) -> String {
        "GlobalAvgPool2d".into()
    }
    fn named_parameters(&self) -> Named {
        vec![]
    }
}

impl Forward for GlobalAvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        global_avg_pool2d(x, false)
    }
}
