//! Load a checkpoint that PyTorch wrote (`safetensors.torch.save_file(model.state_dict(), ...)`)
//! into the matching tessera model and run it: the logits agree with PyTorch's.
//!
//! `cargo run --release --example load_pytorch [CKPT]` (default: tests/fixtures/lenet5.safetensors,
//! made by tests/fixtures/make_fixtures.py together with an input batch and PyTorch's logits).

use std::path::PathBuf;
use tessera::nn::checkpoint::{load, load_model};
use tessera::nn::zoo::LeNet5;
use tessera::nn::{Ctx, Module};
use tessera::prelude::*;

fn main() -> Result<()> {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ckpt = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures.join("lenet5.safetensors"));
    let dev = Device::parse("cpu")?;
    let model = LeNet5::new(&mut Ctx::new(&dev, 0))?;
    load_model(&ckpt, &model, None, &dev)?;
    println!(
        "loaded {} ({} parameters):",
        ckpt.display(),
        model.num_parameters()
    );
    for (name, p) in model.named_parameters() {
        println!("  {name:<12} {:?}", p.dims());
    }
    let io = load(&fixtures.join("lenet5_io.safetensors"), &dev)?;
    let logits = no_grad(|| model.forward(&io.tensors["x"]))?;
    println!(
        "tessera logits of the first example: {}",
        logits.narrow(0, 0, 1)?
    );
    println!(
        "PyTorch logits of the first example: {}",
        io.tensors["logits"].narrow(0, 0, 1)?
    );
    let diff = logits
        .sub(&io.tensors["logits"])?
        .abs()?
        .amax(&[0, 1], false)?
        .to_scalar()?;
    println!("max abs difference over the batch: {diff:.2e}");
    Ok(())
}
