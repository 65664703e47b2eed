use crate::init::{default_uniform, Ctx};
use crate::module::{Forward, Module, Named, Parameter};
use tessera_core::ops::rnn::{rnn, Cell, RnnOptions, RnnOutput, RnnWeights};
use tessera_core::{Result, Tensor};

/// Shared body of LSTM and GRU: parameters `weight_ih_l{k}[_reverse]` etc. in PyTorch's order.
struct Recurrent {
    cell: Cell,
    input_size: usize,
    options: RnnOptions,
    params: Vec<(String, Parameter)>,
}

impl Recurrent {
    fn new(ctx: &mut Ctx, cell: Cell, input_size: usize, options: RnnOptions) -> Result<Recurrent> {
        let g = match cell {
            Cell::Lstm => 4,
            Cell::Gru => 3,
        };
        let (h, dirs) = (
            options.hidden_size,
            if options.bidirectional { 2 } else { 1 },
        );
        let mut params = Vec::new();
        for l in 0..options.num_layers {
            let in_l = if l == 0 { input_size } else { dirs * h };
            for d in 0..dirs {
                let sfx = format!("_l{l}{}", if d == 1 { "_reverse" } else { "" });
                // PyTorch: every RNN parameter U(±1/√hidden).
                params.push((
                    format!("weight_ih{sfx}"),
                    Parameter::new(default_uniform(ctx, &[g * h, in_l], h)?)?,
                ));
                params.push((
                    format!("weight_hh{sfx}"),
                    Parameter::new(default_uniform(ctx, &[g * h, h], h)?)?,
                ));
                if options.bias {
                    params.push((
                        format!("bias_ih{sfx}"),
                        Parameter::new(default_uniform(ctx, &[g * h], h)?)?,
                    ));
                    params.push((
                        format!("bias_hh{sfx}"),
                        Parameter::new(default_uniform(ctx, &[g * h], h)?)?,
                    ));
                }
            }
        }
        Ok(Recurrent {
            cell,
            input_size,
            options,
            params,
        })
    }

    fn run(&self, x: &Tensor, h0: Option<&Tensor>, c0: Option<&Tensor>) -> Result<RnnOutput> {
        let o = &self.options;
        let dirs = if o.bidirectional { 2 } else { 1 };
        let b = x
            .dims()
            .get(if o.batch_first { 0 } else { 1 })
            .copied()
            .unwrap_or(0);
        let zeros = || {
            Tensor::zeros(
                &[o.num_layers * dirs, b, o.hidden_size],
                x.dtype(),
                x.device(),
            )
        };
        let h0 = match h0 {
            Some(h) => h.clone(),
            None => zeros()?,
        };
        let c0 = match (self.cell, c0) {
            (Cell::Lstm, Some(c)) => Some(c.clone()),
            (Cell::Lstm, None) => Some(zeros()?),
            (Cell::Gru, _) => None,
        };
        let values: Vec<Tensor> = self.params.iter().map(|(_, p)| p.tensor()).collect();
        let per = if o.bias { 4 } else { 2 };
        let weights: Vec<RnnWeights<'_>> = values
            .chunks(per)
            .map(|c| RnnWeights {
                w_ih: &c[0],
                w_hh: &c[1],
                b_ih: c.get(2),
                b_hh: c.get(3),
            })
            .collect();
        rnn(self.cell, x, &h0, c0.as_ref(), &weights, o)
    }
}

macro_rules! recurrent_layer {
    ($(#[$doc:meta])* $name:ident, $cell:expr) => {
        $(#[$doc])*
        pub struct $name(Recurrent);

        impl $name {
            /// PyTorch's initialisation: every parameter `U(±1/√hidden)`.
            pub fn new(ctx: &mut Ctx, input_size: usize, options: RnnOptions) -> Result<$name> {
                Ok($name(Recurrent::new(ctx, $cell, input_size, options)?))
            }
            /// The input feature size.
            pub fn input_size(&self) -> usize {
                self.0.input_size
            }
            /// The options (hidden size, layers, directions, batch_first, bias).
            pub fn options(&self) -> &RnnOptions {
                &self.0.options
            }
        }

        impl Module for $name {
            fn kind(&self) -> String {
                stringify!($name).into()
            }
            fn named_parameters(&self) -> Named {
                self.0.params.clone()
            }
        }

        impl Forward for $name {
            fn connections(&self, x: &Tensor, _y: &Tensor) -> u64 {
                // Each weight and bias is used once per time step and direction.
                let steps = x.dims().get(if self.0.options.batch_first { 1 } else { 0 }).copied().unwrap_or(0);
                (steps * self.num_parameters()) as u64
            }
            /// The per-step outputs from zero initial states.
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                Ok(self.0.run(x, None, None)?.output)
            }
        }
    };
}

recurrent_layer!(
    /// LSTM (gates i, f, g, o), multi-layer and optionally bidirectional.
    Lstm, Cell::Lstm
);
recurrent_layer!(
    /// GRU (gates r, z, n), multi-layer and optionally bidirectional.
    Gru, Cell::Gru
);

impl Lstm {
    /// Outputs and final states from given initial states (zeros where `None`). Detach the
    /// returned states before feeding them back for truncated BPTT.
    pub fn forward_with_state(
        &self,
        x: &Tensor,
        h0: Option<&Tensor>,
        c0: Option<&Tensor>,
    ) -> Result<RnnOutput> {
        self.0.run(x, h0, c0)
    }
}

impl Gru {
    /// Outputs and final state from a given initial state (zeros when `None`).
    pub fn forward_with_state(&self, x: &Tensor, h0: Option<&Tensor>) -> Result<RnnOutput> {
        self.0.run(x, h0, None)
    }
}
