//! The nn crate against PyTorch fixtures (tests/fixtures/make_fixtures.py) and its own claims.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tessera::nn::checkpoint::{load, load_model, save_model};
use tessera::nn::zoo::LeNet5;
use tessera::nn::{Ctx, Module};
use tessera::prelude::*;

fn cpu() -> Device {
    Device::parse("cpu").unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn pytorch_lenet5_checkpoint_reproduces_pytorch_logits() -> Result<()> {
    let dev = cpu();
    let model = LeNet5::new(&mut Ctx::new(&dev, 123))?;
    load_model(&fixture("lenet5.safetensors"), &model, None, &dev)?;
    let io = load(&fixture("lenet5_io.safetensors"), &dev)?;
    let logits = no_grad(|| model.forward(&io.tensors["x"]))?;
    let want = &io.tensors["logits"];
    assert_eq!(logits.dims(), want.dims());
    let err = max_abs_diff(&logits, want);
    assert!(err < 1e-5, "max abs difference from PyTorch: {err}");
    Ok(())
}

fn run_optimizer(
    make: impl Fn(Vec<tessera::nn::Parameter>) -> Box<dyn Optimizer>,
    name: &str,
) -> Result<()> {
    let dev = cpu();
    let fx = load(&fixture("optim.safetensors"), &dev)?;
    let p = tessera::nn::Parameter::new(fx.tensors["p0"].clone())?;
    let mut opt = make(vec![p.clone()]);
    let want = &fx.tensors[name];
    for step in 0..3 {
        let mut grads = Gradients::default();
        grads.insert(&p.tensor(), fx.tensors[&format!("g{step}")].clone());
        opt.step(&grads)?;
        let w = want.narrow(0, step, 1)?.squeeze(0)?;
        let err = max_abs_diff(&p.tensor(), &w);
        assert!(
            err < 1e-12,
            "{name} step {step}: differs from PyTorch by {err}"
        );
    }
    Ok(())
}

#[test]
fn optimizers_follow_pytorch_update_rules() -> Result<()> {
    use tessera::optim::{Adam, RmsProp, Sgd};
    run_optimizer(
        |p| {
            Box::new(
                Sgd::new(p, 0.1)
                    .momentum(0.9)
                    .nesterov(true)
                    .weight_decay(0.01),
            )
        },
        "sgd",
    )?;
    run_optimizer(|p| Box::new(Adam::new(p, 0.1)), "adam")?;
    run_optimizer(|p| Box::new(Adam::adamw(p, 0.1)), "adamw")?;
    run_optimizer(|p| Box::new(RmsProp::new(p, 0.01).momentum(0.5)), "rmsprop")?;
    Ok(())
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn checkpoints_round_trip_with_optimizer_state_and_metadata() -> Result<()> {
    let dev = cpu();
    let model = LeNet5::new(&mut Ctx::new(&dev, 1))?;
    let mut opt = tessera::optim::Sgd::new(model.parameters(), 0.01).momentum(0.9);
    let x = Tensor::randn_with(
        &[2, 1, 28, 28],
        0.0,
        1.0,
        DType::F32,
        &mut Generator::new(2),
        &dev,
    )?;
    let g = model.forward(&x)?.square()?.mean_all()?.backward()?;
    opt.step(&g)?;
    let path = tmp("ckpt.safetensors");
    let meta = BTreeMap::from([
        ("model".to_string(), "lenet5".to_string()),
        ("epoch".into(), "3".into()),
    ]);
    save_model(&path, &model, Some(&opt), &meta)?;

    let other = LeNet5::new(&mut Ctx::new(&dev, 99))?;
    let mut opt2 = tessera::optim::Sgd::new(other.parameters(), 0.01).momentum(0.9);
    let got = load_model(&path, &other, Some(&mut opt2), &dev)?;
    assert_eq!(got, meta);
    for ((n, a), (_, b)) in model
        .named_parameters()
        .iter()
        .zip(other.named_parameters())
    {
        assert_eq!(max_abs_diff(&a.tensor(), &b.tensor()), 0.0, "{n}");
    }
    assert_eq!(opt2.state().len(), opt.state().len());
    Ok(())
}

#[test]
fn bad_checkpoints_are_clear_errors_and_leave_the_model_alone() -> Result<()> {
    let dev = cpu();
    let model = LeNet5::new(&mut Ctx::new(&dev, 1))?;
    let before = model.fc3.bias.as_ref().unwrap().tensor().to_vec::<f32>()?;
    let good = std::fs::read(fixture("lenet5.safetensors")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "not a valid safetensors",
        ),
        ("empty", vec![], "not a valid safetensors"),
        (
            "absurd_header",
            {
                let mut b = good.clone();
                b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                b
            },
            "not a valid safetensors",
        ),
        (
            "garbage_header",
            {
                let mut b = good.clone();
                b[8..16].copy_from_slice(b"!!!!!!!!");
                b
            },
            "not a valid safetensors",
        ),
    ];
    for (name, bytes, want) in cases {
        let p = tmp(&format!("{name}.safetensors"));
        std::fs::write(&p, bytes).unwrap();
        let e = load_model(&p, &model, None, &dev).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains(name), "{name}: {e}");
    }
    // A file for another model: missing keys, then wrong shapes.
    let mlp = tessera::nn::zoo::Mlp::new(&mut Ctx::new(&dev, 0), &[4, 3])?;
    let p = tmp("mlp.safetensors");
    save_model(&p, &mlp, None, &BTreeMap::new())?;
    let e = load_model(&p, &model, None, &dev).unwrap_err().to_string();
    assert!(e.contains("missing key conv1.weight"), "{e}");
    let small = tessera::nn::zoo::Mlp::new(&mut Ctx::new(&dev, 0), &[4, 3])?;
    let wide = tessera::nn::zoo::Mlp::new(&mut Ctx::new(&dev, 0), &[5, 3])?;
    save_model(&p, &wide, None, &BTreeMap::new())?;
    let e = load_model(&p, &small, None, &dev).unwrap_err().to_string();
    assert!(
        e.contains("layers.0.weight has shape [3, 5]") && e.contains("[3, 4]"),
        "{e}"
    );
    let f64_model =
        tessera::nn::zoo::Mlp::new(&mut Ctx::new(&dev, 0).with_dtype(DType::F64), &[5, 3])?;
    let e = load_model(&p, &f64_model, None, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dtype f32") && e.contains("f64"), "{e}");
    let e = load_model(&tmp("does-not-exist.safetensors"), &model, None, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does-not-exist"), "{e}");
    assert_eq!(
        model.fc3.bias.as_ref().unwrap().tensor().to_vec::<f32>()?,
        before
    );
    Ok(())
}

#[test]
fn lenet5_learns_a_fixed_batch() -> Result<()> {
    let dev = cpu();
    let model = LeNet5::new(&mut Ctx::new(&dev, 0))?;
    let mut opt = tessera::optim::Sgd::new(model.parameters(), 0.05).momentum(0.9);
    let x = Tensor::randn_with(
        &[16, 1, 28, 28],
        0.0,
        1.0,
        DType::F32,
        &mut Generator::new(5),
        &dev,
    )?;
    let y = Tensor::from_vec(
        (0..16).map(|i| (7 * i + 3) % 10).collect::<Vec<i64>>(),
        &[16],
        &dev,
    )?;
    let mut losses = vec![];
    for _ in 0..45 {
        let loss = tessera::nn::loss::cross_entropy(&model.forward(&x)?, &y)?;
        losses.push(loss.to_scalar()?);
        opt.step(&loss.backward()?)?;
    }
    assert!(losses[44] < 0.1 * losses[0], "loss {:?}", losses);
    Ok(())
}

#[test]
fn parameter_names_follow_pytorch() -> Result<()> {
    use tessera::ops::rnn::RnnOptions;
    let dev = cpu();
    let mut ctx = Ctx::new(&dev, 0);
    let lstm = tessera::nn::Lstm::new(
        &mut ctx,
        3,
        RnnOptions {
            hidden_size: 4,
            num_layers: 2,
            bidirectional: true,
            batch_first: false,
            bias: true,
        },
    )?;
    let names: Vec<String> = lstm
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        &names[..6],
        [
            "weight_ih_l0",
            "weight_hh_l0",
            "bias_ih_l0",
            "bias_hh_l0",
            "weight_ih_l0_reverse",
            "weight_hh_l0_reverse"
        ]
    );
    assert_eq!(lstm.named_parameters()[8].1.dims(), vec![16, 8]); // layer 1 takes both directions
    let bn = tessera::nn::BatchNorm::new(&mut ctx, 3)?;
    let names: Vec<String> = bn.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "weight",
            "bias",
            "running_mean",
            "running_var",
            "num_batches_tracked"
        ]
    );
    assert_eq!(bn.parameters().len(), 2);
    let inc = tessera::nn::Inception::new(&mut ctx, 4, [3, 2, 4, 2, 3, 2])?;
    assert_eq!(inc.named_parameters()[4].0, "b3.weight");
    assert_eq!(
        inc.forward(&Tensor::zeros(&[1, 4, 5, 5], DType::F32, &dev)?)?
            .dims(),
        &[1, 12, 5, 5]
    );
    Ok(())
}

#[test]
fn dropout_batchnorm_modes_and_mc_dropout() -> Result<()> {
    let dev = cpu();
    let mut ctx = Ctx::new(&dev, 0);
    let x = Tensor::ones(&[200, 10], DType::F32, &dev)?;
    let mut drop = tessera::nn::Dropout::new(0.5, 1)?;
    let y = drop.forward(&x)?.to_vec::<f32>()?;
    let kept = y.iter().filter(|&&v| v != 0.0).count();
    assert!((800..1200).contains(&kept), "{kept} of 2000 kept");
    assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
    drop.eval();
    assert_eq!(drop.forward(&x)?.to_vec::<f32>()?, x.to_vec::<f32>()?);
    let (mean, var) = tessera::nn::mc_forward(&drop, &x, 50)?;
    let m = mean.mean_all()?.to_scalar()?;
    assert!((m - 1.0).abs() < 0.05, "mean {m}");
    assert!(var.mean_all()?.to_scalar()? > 0.5);

    let mut bn = tessera::nn::BatchNorm::new(&mut ctx, 2)?;
    let xb = Tensor::randn_with(
        &[8, 2, 3],
        5.0,
        2.0,
        DType::F32,
        &mut Generator::new(3),
        &dev,
    )?;
    bn.forward(&xb)?;
    let rm = bn.running_mean.tensor().to_vec::<f32>()?;
    assert!(rm.iter().all(|&v| (v - 0.5).abs() < 0.15), "{rm:?}"); // 0.9·0 + 0.1·~5
    assert_eq!(bn.num_batches_tracked.tensor().to_vec::<i64>()?, vec![1]);
    bn.eval();
    bn.forward(&xb)?;
    assert_eq!(bn.num_batches_tracked.tensor().to_vec::<i64>()?, vec![1]);
    Ok(())
}

#[test]
fn frozen_parameters_take_no_gradient() -> Result<()> {
    let dev = cpu();
    let model = LeNet5::new(&mut Ctx::new(&dev, 0))?;
    model.conv1.weight.set_trainable(false)?;
    assert_eq!(model.parameters().len(), 9);
    let x = Tensor::randn_with(
        &[2, 1, 28, 28],
        0.0,
        1.0,
        DType::F32,
        &mut Generator::new(2),
        &dev,
    )?;
    let g = model.forward(&x)?.sum_all()?.backward()?;
    assert!(g.get(&model.conv1.weight.tensor()).is_none());
    assert!(g.get(&model.conv2.weight.tensor()).is_some());
    Ok(())
}

/// The address of a tensor's buffer, to tell an in-place update from a new buffer.
fn buffer_addr(t: &Tensor) -> usize {
    std::sync::Arc::as_ptr(t.buffer()) as *const u8 as usize
}

#[test]
fn optimizer_updates_reuse_each_parameters_buffer_and_match_new_buffers() -> Result<()> {
    use tessera::optim::{Adam, Optimizer, RmsProp, Sgd};
    type Make = fn(Vec<tessera::nn::Parameter>) -> Box<dyn Optimizer>;
    let makers: [(&str, Make); 3] = [
        ("sgd", |p| Box::new(Sgd::new(p, 0.05).momentum(0.9))),
        ("adamw", |p| Box::new(Adam::adamw(p, 0.01))),
        ("rmsprop", |p| Box::new(RmsProp::new(p, 0.01).momentum(0.5))),
    ];
    let dev = cpu();
    let x = Tensor::randn_with(
        &[4, 1, 28, 28],
        0.0,
        1.0,
        DType::F32,
        &mut Generator::new(5),
        &dev,
    )?;
    for (name, make) in makers {
        // Two equal models: `held`'s values are also held outside, so its updates must take
        // new buffers; `free`'s updates can run in place. Both must give the same values.
        let (free, held) = (
            LeNet5::new(&mut Ctx::new(&dev, 3))?,
            LeNet5::new(&mut Ctx::new(&dev, 3))?,
        );
        let (mut of, mut oh) = (make(free.parameters()), make(held.parameters()));
        let addrs: Vec<usize> = free
            .parameters()
            .iter()
            .map(|p| buffer_addr(&p.tensor()))
            .collect();
        for step in 0..3 {
            let outside: Vec<Tensor> = held.parameters().iter().map(|p| p.tensor()).collect();
            for (m, o) in [(&free, &mut of), (&held, &mut oh)] {
                let g = m.forward(&x)?.square()?.mean_all()?.backward()?;
                o.step(&g)?;
            }
            let now: Vec<usize> = free
                .parameters()
                .iter()
                .map(|p| buffer_addr(&p.tensor()))
                .collect();
            assert_eq!(now, addrs, "{name}: step {step} took new buffers");
            for (o, p) in outside.iter().zip(held.parameters()) {
                assert_ne!(
                    buffer_addr(o),
                    buffer_addr(&p.tensor()),
                    "{name}: a held value was overwritten"
                );
            }
        }
        for (a, b) in free.parameters().iter().zip(held.parameters()) {
            assert_eq!(
                a.tensor().to_vec::<f32>()?,
                b.tensor().to_vec::<f32>()?,
                "{name}"
            );
            assert!(
                a.tensor().requires_grad(),
                "{name}: the updated value must stay a variable"
            );
        }
    }
    Ok(())
}

#[test]
fn scale_add_writes_only_what_nothing_else_sees() -> Result<()> {
    let dev = cpu();
    let mut a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2], &dev)?;
    let row = Tensor::from_vec(vec![10.0f32, 20.0], &[2], &dev)?;
    let before = buffer_addr(&a);
    a.scale_add_(0.5, &row, 2.0)?; // the row broadcast over both rows
    assert_eq!(buffer_addr(&a), before);
    assert_eq!(a.to_vec::<f32>()?, vec![20.5, 41.0, 21.5, 42.0]);
    // A clone sees the old value: the update takes a new buffer.
    let copy = a.clone();
    a.scale_add_(1.0, &row, -1.0)?;
    assert_eq!(copy.to_vec::<f32>()?, vec![20.5, 41.0, 21.5, 42.0]);
    assert_eq!(a.to_vec::<f32>()?, vec![10.5, 21.0, 11.5, 22.0]);
    // f64, and a variable stays a variable.
    let mut v = Tensor::from_vec(vec![1.0f64, -1.0], &[2], &dev)?.requires_grad_()?;
    no_grad(|| v.scale_add_(2.0, &Tensor::from_vec(vec![0.25f64, 0.5], &[2], &dev)?, 4.0))?;
    assert_eq!(v.to_vec::<f64>()?, vec![3.0, 0.0]);
    assert!(v.requires_grad());
    // Errors: a recorded operand outside no_grad, a shape that does not broadcast to the
    // target's, another dtype.
    let e = v.scale_add_(1.0, &Tensor::from_vec(vec![1.0f64, 1.0], &[2], &dev)?, 1.0);
    assert!(e.unwrap_err().to_string().contains("no_grad"));
    let e = a.scale_add_(
        1.0,
        &Tensor::from_vec(vec![1.0f32; 8], &[2, 2, 2], &dev)?,
        1.0,
    );
    assert!(e.unwrap_err().to_string().contains("scale_add_"));
    assert!(a
        .scale_add_(1.0, &Tensor::from_vec(vec![1.0f64; 4], &[2, 2], &dev)?, 1.0)
        .is_err());
    assert_eq!(a.to_vec::<f32>()?, vec![10.5, 21.0, 11.5, 22.0]);
    Ok(())
}

/// `Sequential` runs a `Linear` followed by a ReLU as the layer `with_relu` (it then
/// adds its bias and applies the ReLU in one pass): the outputs and every parameter's gradient
/// equal the layers written out by hand, and a summary still lists the ReLU layers.
#[test]
fn sequential_fuses_a_layer_and_its_relu_with_the_same_results() -> Result<()> {
    use tessera::nn::{summary, Activation, Linear, Sequential};
    let device = Device::parse("cpu")?;
    let mut ctx = Ctx::new(&device, 3);
    let net = Sequential::new()
        .add(Linear::new(&mut ctx, 6, 5)?)
        .add(Activation::Relu)
        .add(Linear::new(&mut ctx, 5, 4)?)
        .add(Activation::Relu)
        .add(Linear::new(&mut ctx, 4, 3)?)
        .add(Activation::Tanh);
    let mut gen = Generator::new(4);
    let x = Tensor::randn_with(&[7, 6], 0.0, 2.0, DType::F32, &mut gen, &device)?;
    let params: BTreeMap<String, Tensor> = net
        .named_parameters()
        .into_iter()
        .map(|(name, p)| (name, p.tensor()))
        .collect();
    let p = |name: &str| -> Result<&Tensor> {
        params
            .get(name)
            .ok_or_else(|| Error::invalid("test", format!("no parameter {name}")))
    };
    let by_hand = x
        .linear(p("0.weight")?, Some(p("0.bias")?))?
        .relu()?
        .linear(p("2.weight")?, Some(p("2.bias")?))?
        .relu()?
        .linear(p("4.weight")?, Some(p("4.bias")?))?
        .tanh()?;
    // The first ReLU clips some of its inputs, so a wrong fusion would show.
    let pre = x
        .linear(p("0.weight")?, Some(p("0.bias")?))?
        .to_vec::<f32>()?;
    assert!(pre.iter().any(|v| *v < 0.0) && pre.iter().any(|v| *v > 0.0));
    let y = net.forward(&x)?;
    assert_eq!(y.to_vec::<f32>()?, by_hand.to_vec::<f32>()?);
    let g_net = y.square()?.sum_all()?.backward()?;
    let g_hand = by_hand.square()?.sum_all()?.backward()?;
    for (name, t) in &params {
        let grad = |g: &tessera::core::Gradients| -> Result<Vec<f32>> {
            g.get(t)
                .ok_or_else(|| Error::invalid("test", format!("no gradient for {name}")))?
                .to_vec::<f32>()
        };
        assert_eq!(grad(&g_net)?, grad(&g_hand)?, "{name}");
    }
    let kinds: Vec<String> = summary(&net, &x)?
        .rows
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds.len(), 6, "{kinds:?}");
    assert_eq!(kinds[1], "Relu");
    Ok(())
}
