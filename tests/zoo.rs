//! The model zoo: published figures reproduced by the summaries, and every model trains.

use tessera::nn::zoo::*;
use tessera::nn::{summary, Ctx, Module};
use tessera::prelude::*;

fn cpu() -> Device {
    Device::parse("cpu").unwrap()
}

#[test]
fn lenet1998_summary_reproduces_the_published_figures() -> Result<()> {
    let (model, input) = tessera::zoo_model("lenet1998", &cpu())?;
    let s = summary(model.as_ref(), &input)?;
    // LeCun et al. 1998, section II.B: trainable parameters / connections per layer.
    for (layer, params, connections) in [
        ("c1", 156, 122_304),
        ("s2", 12, 5_880),
        ("c3", 1_516, 151_600),
        ("s4", 32, 2_000),
        ("c5", 48_120, 48_120),
        ("f6", 10_164, 10_164),
    ] {
        let r = s.row(layer).unwrap_or_else(|| panic!("no row {layer}"));
        assert_eq!((r.params, r.connections), (params, connections), "{layer}");
    }
    assert_eq!(s.params(), 60_000);
    let out = s.row("output").unwrap();
    assert!(out.separate && out.units == 10);
    assert!(s.to_string().ends_with(&format!(
        "total: units={} params=60000 connections={}",
        s.units(),
        s.connections()
    )));
    Ok(())
}

#[test]
fn alexnet_summary_gives_the_published_size() -> Result<()> {
    let (model, input) = tessera::zoo_model("alexnet", &cpu())?;
    let s = summary(model.as_ref(), &input)?;
    assert_eq!(s.params(), 60_965_224);
    // "650,000 neurons" (Krizhevsky et al. 2012): the conv and fc layers' outputs.
    assert!((640_000..670_000).contains(&s.units()), "{}", s.units());
    assert_eq!(s.row("conv1").unwrap().output, vec![96, 55, 55]);
    assert_eq!(s.row("pool5").unwrap().output, vec![256, 6, 6]);
    Ok(())
}

/// One SGD step must lower the loss on a fixed batch (each model runs forward and backward).
fn one_step_lowers_loss(model: &dyn Forward, x: &Tensor, target: &Tensor, lr: f64) -> Result<()> {
    let loss_of = || -> Result<Tensor> {
        let logits = model.forward(x)?;
        let c = *logits.dims().last().unwrap();
        let logits = logits.reshape(&[-1, c as isize])?;
        tessera::nn::loss::cross_entropy(&logits, &target.reshape(&[-1])?)
    };
    let before = loss_of()?;
    let mut opt = tessera::optim::Sgd::new(model.parameters(), lr);
    opt.step(&before.backward()?)?;
    let after = no_grad(loss_of)?;
    assert!(
        after.to_scalar()? < before.to_scalar()?,
        "{} -> {}",
        before.to_scalar()?,
        after.to_scalar()?
    );
    Ok(())
}

#[test]
fn every_zoo_model_trains() -> Result<()> {
    let dev = cpu();
    let mut ctx = Ctx::new(&dev, 4);
    let mut gen = Generator::new(8);
    let images = Tensor::randn_with(&[4, 1, 28, 28], 0.0, 1.0, DType::F32, &mut gen, &dev)?;
    let labels = Tensor::from_vec(vec![1i64, 7, 3, 0], &[4], &dev)?;
    one_step_lowers_loss(&Mlp::new(&mut ctx, &[784, 32, 10])?, &images, &labels, 0.1)?;
    one_step_lowers_loss(&LeNet5::new(&mut ctx)?, &images, &labels, 0.05)?;
    one_step_lowers_loss(&LeNet1998::new(&mut ctx, false)?, &images, &labels, 0.05)?;
    one_step_lowers_loss(&LeNet1998::new(&mut ctx, true)?, &images, &labels, 0.001)?;
    let mut g = GoogLeNetSmall::new(&mut ctx, 1, 10)?;
    g.eval();
    one_step_lowers_loss(&g, &images, &labels, 0.05)?;
    let tokens = Tensor::from_vec(
        (0..40).map(|i| (i * 7 % 50) as i64).collect::<Vec<_>>(),
        &[4, 10],
        &dev,
    )?;
    let mut t = TextCnn::new(&mut ctx, 50, 8, &[2, 3], 4, 10)?;
    t.eval();
    one_step_lowers_loss(&t, &tokens, &labels, 0.1)?;
    let next = Tensor::from_vec(
        (0..40)
            .map(|i| ((i * 7 + 1) % 50) as i64)
            .collect::<Vec<_>>(),
        &[4, 10],
        &dev,
    )?;
    let lm = CharLstm::new(&mut ctx, 50, 8, 16, 2)?;
    one_step_lowers_loss(&lm, &tokens, &next, 0.5)?;
    // Truncated BPTT: the carried state is detached, so backward stops at the chunk boundary.
    let (_, out) = lm.forward_with_state(&tokens, None)?;
    let (h, c) = (out.h_n.detach(), out.c_n.unwrap().detach());
    let (logits, _) = lm.forward_with_state(&next, Some((&h, &c)))?;
    assert_eq!(logits.dims(), &[4, 10, 50]);
    Ok(())
}
