//! Dropout as an average over sampled masks ("bagging" over thinned networks): after training
//! an MLP with dropout on MNIST-10k, compare the deterministic eval pass (weights scaled, one
//! network) with the Monte Carlo average of T stochastic passes, and use the spread of those
//! passes as uncertainty: it is larger on the examples the model gets wrong.
//!
//! `cargo run --release --example mc_dropout`

use std::sync::Arc;
use tessera::data::{DataLoader, LoaderOptions};
use tessera::nn::loss::cross_entropy;
use tessera::nn::{mc_forward, Activation, Ctx, Dropout, Flatten, Linear, Module, Sequential};
use tessera::prelude::*;

fn main() -> Result<()> {
    let dev = Device::parse("cpu")?;
    let split = tessera::data::load("mnist-10k")?;
    let (train, test) = (Arc::new(split.train), split.test);
    let mut ctx = Ctx::new(&dev, 0);
    let mut model = Sequential::new()
        .add(Flatten)
        .add(Linear::new(&mut ctx, 784, 512)?)
        .add(Activation::Relu)
        .add(Dropout::new(0.5, 1)?)
        .add(Linear::new(&mut ctx, 512, 256)?)
        .add(Activation::Relu)
        .add(Dropout::new(0.5, 2)?)
        .add(Linear::new(&mut ctx, 256, 10)?);
    let loader = DataLoader::new(train, LoaderOptions::new(64, 0))?;
    let mut opt = tessera::optim::Sgd::new(model.parameters(), 0.05).momentum(0.9);
    for epoch in 0..5 {
        model.train();
        for b in loader.epoch(epoch, &dev) {
            let b = b?;
            let loss = cross_entropy(&model.forward(&b.inputs)?, &b.labels)?;
            opt.step(&loss.backward()?)?;
        }
        eprintln!("epoch {} done", epoch + 1);
    }
    model.eval();
    let x = Tensor::from_vec(test.inputs.clone(), &[test.len(), 1, 28, 28], &dev)?;
    let labels = &test.labels;
    let acc = |probs: &Tensor| -> Result<f64> {
        let pred = probs.argmax(1, false)?.to_vec::<i64>()?;
        Ok(pred.iter().zip(labels).filter(|(p, t)| p == t).count() as f64 / labels.len() as f64)
    };
    let det = no_grad(|| model.forward(&x)?.softmax(1))?;
    // T stochastic passes with fresh masks; mean and variance of the softmax outputs.
    let t = 30;
    let (mean, var) = no_grad(|| mc_forward(&Probabilities(&model), &x, t))?;
    println!("deterministic eval pass: test accuracy {:.4}", acc(&det)?);
    println!(
        "MC dropout, mean of {t} passes: test accuracy {:.4}",
        acc(&mean)?
    );
    // Uncertainty: the standard deviation of the predicted class's probability.
    let pred = mean.argmax(1, true)?;
    let std = var
        .gather(1, &pred)?
        .sqrt()?
        .reshape(&[-1])?
        .to_vec::<f32>()?;
    let pred = pred.reshape(&[-1])?.to_vec::<i64>()?;
    let (mut right, mut wrong) = (vec![], vec![]);
    for ((p, t), s) in pred.iter().zip(labels).zip(&std) {
        if p == t {
            right.push(*s)
        } else {
            wrong.push(*s)
        }
    }
    let avg = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    println!(
        "mean predictive std: {:.4} on {} correct, {:.4} on {} wrong predictions",
        avg(&right),
        right.len(),
        avg(&wrong),
        wrong.len()
    );
    Ok(())
}

/// The model's class probabilities (what MC dropout averages).
struct Probabilities<'a>(&'a Sequential);

impl Module for Probabilities<'_> {
    fn named_parameters(&self) -> tessera::nn::Named {
        self.0.named_parameters()
    }
}

impl Forward for Probabilities<'_> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)?.softmax(1)
    }
}
