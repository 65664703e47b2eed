//! A custom architecture is an ordinary struct holding layers: here a convolution, an Inception
//! module and dropout, trained for a few epochs on the embedded MNIST digits.
//! `#[derive(Module)]` names its parameters after the fields (`stem.weight`,
//! `inception.b3.bias`, `head.weight`, as PyTorch's `state_dict` would) and passes train/eval
//! on to the dropout; the forward pass is the only code to write.
//!
//! `cargo run --release --example custom_architecture`

use std::sync::Arc;
use tessera::data::{DataLoader, LoaderOptions};
use tessera::nn::loss::cross_entropy;
use tessera::nn::{summary, Conv2d, Ctx, Dropout, Inception, Linear, MaxPool2d, Trace};
use tessera::ops::conv::ConvOptions;
use tessera::ops::pool::PoolOptions;
use tessera::optim::Schedule;
use tessera::prelude::*;

#[derive(Module)]
struct TinyInceptionNet {
    stem: Conv2d,
    inception: Inception,
    dropout: Dropout,
    head: Linear,
}

impl TinyInceptionNet {
    fn new(ctx: &mut Ctx) -> Result<Self> {
        let stem = Conv2d::new(ctx, 1, 16, 3, ConvOptions::new().padding(1))?;
        let inception = Inception::new(ctx, 16, [8, 8, 12, 2, 4, 4])?;
        let head = Linear::new(ctx, inception.out_channels() * 7 * 7, 10)?;
        Ok(TinyInceptionNet {
            stem,
            inception,
            dropout: Dropout::new(0.3, 9)?,
            head,
        })
    }
}

impl Forward for TinyInceptionNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.trace(x, &mut Trace::off())
    }
    // Written once against `Trace`, so `summary()` can list the layers too.
    fn trace(&self, x: &Tensor, t: &mut Trace) -> Result<Tensor> {
        let pool = MaxPool2d(PoolOptions::new(2));
        let h = t.call("stem", &self.stem, x)?.relu()?; // [N, 16, 28, 28]
        let h = t.call("pool1", &pool, &h)?; // 14×14
        let h = t.call("inception", &self.inception, &h)?; // [N, 28, 14, 14]
        let h = t.call("pool2", &pool, &h)?.flatten(1, -1)?; // 28·7·7
        t.call("head", &self.head, &self.dropout.forward(&h)?)
    }
    fn is_container(&self) -> bool {
        true
    }
}

fn main() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let split = tessera::data::load("mnist-10k")?;
    let (train, test) = (Arc::new(split.train), Arc::new(split.test));
    let mut model = TinyInceptionNet::new(&mut Ctx::new(&dev, 0))?;
    println!(
        "{}",
        summary(&model, &Tensor::zeros(&[1, 1, 28, 28], DType::F32, &dev)?)?
    );
    let loader = DataLoader::new(train, LoaderOptions::new(64, 0))?;
    let epochs = 3;
    let (base, steps) = (0.05, epochs * loader.batches_per_epoch());
    let schedule = Schedule::Cosine {
        t_max: steps,
        eta_min: 0.0,
    };
    let mut opt = tessera::optim::Sgd::new(model.parameters(), base).momentum(0.9);
    let mut step = 0;
    for epoch in 0..epochs {
        model.train();
        for b in loader.epoch(epoch, &dev) {
            let b = b?;
            opt.set_lr(schedule.lr(base, step));
            let loss = cross_entropy(&model.forward(&b.inputs)?, &b.labels)?;
            opt.step(&loss.backward()?)?;
            step += 1;
        }
        model.eval();
        let (loss, acc, _) = tessera::train::evaluate(&model, &test, &dev, None)?;
        println!(
            "epoch {}: test loss {loss:.4}, test accuracy {acc:.4}",
            epoch + 1
        );
    }
    Ok(())
}
