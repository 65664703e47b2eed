//! The README's example: a few steps of softmax regression by hand.

use tessera::nn::loss::cross_entropy;
use tessera::prelude::*;

fn main() -> Result<()> {
    let dev = Device::parse("cpu")?; // chosen at run time
    tessera::manual_seed(0); // counter-based: the same numbers on every device
    let x = Tensor::randn(&[64, 784], &dev)?;
    let labels = Tensor::from_vec((0..64).map(|i| i % 10).collect::<Vec<i64>>(), &[64], &dev)?;
    let mut w = Tensor::randn(&[10, 784], &dev)?
        .mul_scalar(0.01)?
        .requires_grad_()?;
    let mut b = Tensor::zeros(&[10], DType::F32, &dev)?.requires_grad_()?;
    for step in 0..5 {
        let loss = cross_entropy(&x.linear(&w, Some(&b))?, &labels)?; // every op returns Result
        let grads = loss.backward()?; // walks the tape in reverse
        let (gw, gb) = (grads.of(&w)?.clone(), grads.of(&b)?.clone());
        // SGD in place: w and b stay variables for the next step.
        no_grad(|| -> Result<()> {
            w.scale_add_(1.0, &gw, -0.5)?;
            b.scale_add_(1.0, &gb, -0.5)
        })?;
        println!("step {step}: loss {:.4}", loss.to_scalar()?);
    }
    Ok(())
}
