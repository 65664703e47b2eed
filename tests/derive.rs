//! `#[derive(Module)]` against PyTorch: the derived parameter names of a nested model with a
//! `Vec` of blocks (PyTorch's `ModuleList`), a bias-less layer, an LSTM, an absent `Option` and
//! a skipped plain field are exactly the `state_dict` keys, in PyTorch's order; the state_dict
//! loads and the forward pass gives PyTorch's output. Train/eval reach every child.

use std::path::Path;
use tessera::nn::checkpoint::{load, load_model};
use tessera::nn::{Conv1d, Ctx, Dropout, Embedding, Linear, Lstm, Parameter};
use tessera::ops::conv::ConvOptions;
use tessera::ops::rnn::RnnOptions;
use tessera::prelude::*;

#[derive(Module)]
struct Block {
    conv1: Conv1d,
    proj: Linear,
}

impl Forward for Block {
    /// `x` `[N, L, 4]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&x.transpose(1, 2)?)?.relu()?;
        x.add(&self.proj.forward(&h.transpose(1, 2)?)?)
    }
}

#[derive(Module)]
struct Derived {
    embed: Embedding,
    blocks: Vec<Block>,
    rnn: Lstm,
    head: Linear,
    /// Absent: contributes no names.
    extra: Option<Linear>,
    #[module(skip)]
    scale: f64,
}

impl Derived {
    fn new(ctx: &mut Ctx) -> Result<Derived> {
        let block = |ctx: &mut Ctx| -> Result<Block> {
            Ok(Block {
                conv1: Conv1d::new(ctx, 4, 4, 3, ConvOptions::new().padding(1))?,
                proj: Linear::with_bias(ctx, 4, 4, false)?,
            })
        };
        let rnn = RnnOptions {
            hidden_size: 5,
            num_layers: 1,
            bidirectional: false,
            batch_first: true,
            bias: true,
        };
        Ok(Derived {
            embed: Embedding::new(ctx, 10, 4, None)?,
            blocks: vec![block(ctx)?, block(ctx)?],
            rnn: Lstm::new(ctx, 4, rnn)?,
            head: Linear::new(ctx, 5, 3)?,
            extra: None,
            scale: 0.5,
        })
    }

    /// A forward pass of the model's own (here one input, token ids `[N, L]`).
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut h = self.embed.forward(ids)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        self.head
            .forward(&self.rnn.forward(&h)?)?
            .mul_scalar(self.scale)
    }
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn derived_names_are_pytorchs_state_dict_keys_in_order() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let model = Derived::new(&mut Ctx::new(&dev, 0))?;
    let torch = load(&fixture("derived_names.safetensors"), &dev)?;
    let order = torch
        .metadata
        .get("order")
        .ok_or_else(|| Error::invalid("test", "fixture without its key order"))?;
    let want: Vec<&str> = order.split(',').collect();
    let named = model.named_parameters();
    let got: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(got, want);
    assert!(got.contains(&"blocks.1.conv1.bias") && !got.contains(&"blocks.0.proj.bias"));
    for (name, p) in &named {
        assert_eq!(p.dims(), torch.tensors[name].dims(), "{name}");
    }
    assert_eq!(model.kind(), "Derived");

    // The state_dict loads, and the model then computes what PyTorch computed.
    load_model(&fixture("derived_names.safetensors"), &model, None, &dev)?;
    let io = load(&fixture("derived_io.safetensors"), &dev)?;
    let y = no_grad(|| model.forward(&io.tensors["x"]))?;
    let want = &io.tensors["y"];
    assert_eq!(y.dims(), want.dims());
    let diff = y
        .sub(want)?
        .abs()?
        .amax(&[0, 1, 2], false)?
        .to_vec::<f32>()?[0];
    assert!(diff < 1e-5, "max difference from PyTorch: {diff}");
    Ok(())
}

#[derive(Module)]
struct Modes {
    drops: Vec<Dropout>,
    maybe: Option<Dropout>,
    boxed: Box<dyn Forward>,
    w: Parameter,
    #[module(skip)]
    _note: &'static str,
}

/// A tuple struct names its children `0`, `1`, ... as PyTorch's `Sequential` does.
#[derive(Module)]
struct Pair(Linear, Linear);

#[test]
fn train_and_eval_reach_every_child_and_parameters_are_named_by_field() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let mut m = Modes {
        drops: vec![Dropout::new(0.5, 1)?, Dropout::new(0.5, 2)?],
        maybe: Some(Dropout::new(0.5, 3)?),
        boxed: Box::new(Dropout::new(0.5, 4)?),
        w: Parameter::new(Tensor::zeros(&[2], DType::F32, &dev)?)?,
        _note: "not a child",
    };
    let names: Vec<String> = m.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["w"]);
    let x = Tensor::ones(&[64], DType::F32, &dev)?;
    let all = |m: &Modes| -> Result<Vec<Vec<f32>>> {
        let mut outs: Vec<&dyn Forward> = m.drops.iter().map(|d| d as &dyn Forward).collect();
        outs.extend(m.maybe.as_ref().map(|d| d as &dyn Forward));
        outs.push(m.boxed.as_ref());
        outs.iter()
            .map(|d| d.forward(&x)?.to_vec::<f32>())
            .collect()
    };
    m.eval();
    assert!(all(&m)?.iter().all(|v| v.iter().all(|&e| e == 1.0)));
    m.train();
    // Dropout at p = 0.5 zeroes some of 64 elements in every child (each has its own seed).
    assert!(all(&m)?.iter().all(|v| v.contains(&0.0)));

    let mut ctx = Ctx::new(&dev, 0);
    let pair = Pair(Linear::new(&mut ctx, 2, 3)?, Linear::new(&mut ctx, 3, 1)?);
    let names: Vec<String> = pair
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["0.weight", "0.bias", "1.weight", "1.bias"]);
    Ok(())
}
