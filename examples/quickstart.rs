//! The README's example: one step of softmax regression.

use tessera::prelude::*;

fn main() -> Result<()> {
    let dev = Device::parse("cpu")?; // chosen at run time
    let mut gen = Generator::new(0); // counter-based: same numbers on every device
    let x = Tensor::randn_with(&[64, 784], 0.0, 1.0, DType::F32, &mut gen, &dev)?;
    let labels = Tensor::from_vec(
        (0..64).map(|i| (i * 7 + 3) % 10).collect::<Vec<i64>>(),
        &[64, 1],
        &dev,
    )?;
    let w =
        Tensor::randn_with(&[10, 784], 0.0, 0.01, DType::F32, &mut gen, &dev)?.requires_grad_()?;
    let b = Tensor::zeros(&[10], DType::F32, &dev)?.requires_grad_()?;

    let logp = x.linear(&w, Some(&b))?.log_softmax(-1)?; // every op returns Result
    let loss = logp.gather(1, &labels)?.mean_all()?.neg()?;
    let grads = loss.backward()?; // walks the tape in reverse
    let w = no_grad(|| w.sub(&grads.get(&w).unwrap().mul_scalar(0.1)?))?;
    println!("loss {:.4}, w {}", loss.to_scalar()?, w.shape());
    Ok(())
}
