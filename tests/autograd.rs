//! The tape: accumulation, no_grad, detach, freeing, and gradients of gradients checked
//! against finite differences.

use tessera::prelude::*;
use tessera::testing::{gradcheck, gradgradcheck, GradcheckOptions};

fn cpu() -> Device {
    Device::parse("cpu").unwrap()
}

fn t(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &cpu()).unwrap()
}

#[test]
fn a_tensor_used_twice_accumulates_both_gradients() -> Result<()> {
    let x = t(&[1.0, 2.0, 3.0], &[3]).requires_grad_()?;
    // y = x·x + x → dy/dx = 2x + 1
    let y = x.mul(&x)?.add(&x)?.sum_all()?;
    let g = y.backward()?;
    assert_eq!(g.get(&x).unwrap().to_vec::<f64>()?, vec![3.0, 5.0, 7.0]);
    Ok(())
}

#[test]
fn backward_with_gives_the_vector_jacobian_product() -> Result<()> {
    let x = t(&[1.0, -2.0], &[2]).requires_grad_()?;
    let y = x.mul_scalar(3.0)?;
    let g = y.backward_with(&t(&[10.0, 100.0], &[2]))?;
    assert_eq!(g.get(&x).unwrap().to_vec::<f64>()?, vec![30.0, 300.0]);
    Ok(())
}

#[test]
fn no_grad_and_detach_stop_recording() -> Result<()> {
    let x = t(&[1.0, 2.0], &[2]).requires_grad_()?;
    let y = no_grad(|| x.exp())?;
    assert!(!y.requires_grad());
    let z = x.detach().exp()?;
    assert!(!z.requires_grad());
    let e = z.sum_all()?.backward().unwrap_err().to_string();
    assert!(e.contains("does not require grad"), "{e}");
    Ok(())
}

#[test]
fn backward_frees_the_tape_and_a_second_backward_says_so() -> Result<()> {
    tessera::clear_tape();
    let x = t(&[0.5, 1.5], &[2]).requires_grad_()?;
    let h = x.tanh()?;
    let a = h.sum_all()?;
    let b = h.mul_scalar(2.0)?.sum_all()?;
    assert!(tessera::tape_len() >= 3);
    a.backward()?;
    // `a`'s nodes are consumed; `b` still has its own node but not `h`'s.
    let e = b.backward().unwrap_err().to_string();
    assert!(e.contains("already freed"), "{e}");
    assert_eq!(tessera::tape_len(), 0);
    Ok(())
}

#[test]
fn second_derivative_of_tanh_matches_the_formula_and_finite_differences() -> Result<()> {
    let xs = [-2.0, -0.3, 0.0, 0.7, 1.9];
    let x = t(&xs, &[5]).requires_grad_()?;
    let y = x.tanh()?;
    let g1 = y.backward_create_graph(&x.ones_like()?)?;
    let d1 = g1.get(&x).unwrap().clone();
    let g2 = d1.sum_all()?.backward()?;
    let d2 = g2.get(&x).unwrap().to_vec::<f64>()?;
    for (i, &v) in xs.iter().enumerate() {
        let th = v.tanh();
        let want = -2.0 * th * (1.0 - th * th);
        assert!((d2[i] - want).abs() < 1e-12, "x = {v}: {} vs {want}", d2[i]);
    }
    // And third order, through the same machinery.
    gradgradcheck(
        |v| v[0].tanh(),
        &[t(&xs, &[5])],
        GradcheckOptions::default(),
    )?;
    Ok(())
}

/// f(w1, w2) = sum(tanh(x·w1ᵀ + b)·w2ᵀ)², a two-layer MLP's squared output.
fn mlp_loss(p: &[Tensor], x: &Tensor) -> Result<Tensor> {
    let h = x.linear(&p[0], Some(&p[1]))?.tanh()?;
    h.linear(&p[2], None)?.square()?.mean_all()
}

#[test]
fn hessian_vector_product_of_an_mlp_matches_finite_differences() -> Result<()> {
    let dev = cpu();
    let mut gen = Generator::new(3);
    let x = Tensor::randn_with(&[4, 3], 0.0, 1.0, DType::F64, &mut gen, &dev)?;
    let params = [
        Tensor::randn_with(&[5, 3], 0.0, 0.5, DType::F64, &mut gen, &dev)?,
        Tensor::randn_with(&[5], 0.0, 0.5, DType::F64, &mut gen, &dev)?,
        Tensor::randn_with(&[2, 5], 0.0, 0.5, DType::F64, &mut gen, &dev)?,
    ];
    let vs: Vec<Tensor> = params
        .iter()
        .map(|p| Tensor::randn_with(p.dims(), 0.0, 1.0, DType::F64, &mut gen, &dev))
        .collect::<Result<_>>()?;

    // Hv by double backward.
    let vars: Vec<Tensor> = params
        .iter()
        .map(|p| p.clone().requires_grad_())
        .collect::<Result<_>>()?;
    let loss = mlp_loss(&vars, &x)?;
    let g = loss.backward_create_graph(&loss.ones_like()?)?;
    let mut gv = Tensor::scalar(0.0, DType::F64, &dev)?;
    for (p, v) in vars.iter().zip(&vs) {
        gv = gv.add(&g.get(p).unwrap().mul(v)?.sum_all()?)?;
    }
    let hv = gv.backward()?;

    // Hv by central differences of the gradient: (∇f(p + εv) - ∇f(p - εv)) / 2ε.
    let eps = 1e-5;
    let grad_at = |sign: f64| -> Result<Vec<Vec<f64>>> {
        let shifted: Vec<Tensor> = params
            .iter()
            .zip(&vs)
            .map(|(p, v)| p.add(&v.mul_scalar(sign * eps)?)?.requires_grad_())
            .collect::<Result<_>>()?;
        let g = mlp_loss(&shifted, &x)?.backward()?;
        shifted
            .iter()
            .map(|p| g.get(p).unwrap().to_vec::<f64>())
            .collect()
    };
    let (plus, minus) = (grad_at(1.0)?, grad_at(-1.0)?);
    for (i, p) in vars.iter().enumerate() {
        let got = hv.get(p).unwrap().to_vec::<f64>()?;
        for j in 0..got.len() {
            let want = (plus[i][j] - minus[i][j]) / (2.0 * eps);
            assert!(
                (got[j] - want).abs() < 1e-7 * (1.0 + want.abs()),
                "param {i}[{j}]: {} vs {want}",
                got[j]
            );
        }
    }
    Ok(())
}

#[test]
fn gradcheck_reports_a_wrong_backward_rule() -> Result<()> {
    // A user op whose backward is deliberately wrong (2x instead of 3x²): gradcheck must fail.
    let cube = |v: &[Tensor]| -> Result<Tensor> {
        let x = v[0].clone();
        let out = no_grad(|| x.powf(3.0))?;
        let xs = x.clone();
        Ok(out.record_op("bad_cube", &[&x], move |g, _| {
            Ok(vec![Some(g.mul(&xs.mul_scalar(2.0)?)?)])
        }))
    };
    let x = t(&[0.5, 1.5, -1.0], &[3]);
    let e = gradcheck(cube, std::slice::from_ref(&x), GradcheckOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("finite differences"), "{e}");
    // The same op with the right rule passes.
    let good = |v: &[Tensor]| -> Result<Tensor> {
        let x = v[0].clone();
        let out = no_grad(|| x.powf(3.0))?;
        let xs = x.clone();
        Ok(out.record_op("cube", &[&x], move |g, _| {
            Ok(vec![Some(g.mul(&xs.square()?.mul_scalar(3.0)?)?)])
        }))
    };
    gradcheck(good, &[x], GradcheckOptions::default())?;
    Ok(())
}

fn rss_kib() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

#[test]
fn memory_stays_flat_over_2000_training_steps() -> Result<()> {
    let dev = cpu();
    let mut gen = Generator::new(11);
    let x = Tensor::randn_with(&[32, 16], 0.0, 1.0, DType::F32, &mut gen, &dev)?;
    let target = Tensor::randn_with(&[32, 4], 0.0, 1.0, DType::F32, &mut gen, &dev)?;
    let mut w1 =
        Tensor::randn_with(&[32, 16], 0.0, 0.2, DType::F32, &mut gen, &dev)?.requires_grad_()?;
    let mut w2 =
        Tensor::randn_with(&[4, 32], 0.0, 0.2, DType::F32, &mut gen, &dev)?.requires_grad_()?;
    let mut rss_at_100 = 0;
    let mut first_loss = 0.0;
    let mut last_loss = 0.0;
    for step in 0..2000 {
        let h = x.linear(&w1, None)?.relu()?;
        let loss = h.linear(&w2, None)?.sub(&target)?.square()?.mean_all()?;
        let g = loss.backward()?;
        assert_eq!(tessera::tape_len(), 0, "step {step}: the tape keeps nodes");
        let update = |w: &Tensor| -> Result<Tensor> {
            no_grad(|| w.sub(&g.get(w).unwrap().mul_scalar(0.05)?))?.requires_grad_()
        };
        (w1, w2) = (update(&w1)?, update(&w2)?);
        last_loss = loss.to_scalar()?;
        if step == 0 {
            first_loss = last_loss;
        }
        if step == 100 {
            rss_at_100 = rss_kib().unwrap_or(0);
        }
    }
    assert!(
        last_loss < first_loss * 0.5,
        "training did not progress: {first_loss} -> {last_loss}"
    );
    if let Some(end) = rss_kib() {
        assert!(
            end < rss_at_100 + 8 * 1024,
            "resident memory grew from {rss_at_100} KiB to {end} KiB"
        );
    }
    Ok(())
}

#[test]
fn unreachable_nodes_are_collected_when_outputs_are_dropped() -> Result<()> {
    tessera::clear_tape();
    let x = t(&[1.0, 2.0], &[2]).requires_grad_()?;
    // 20,000 forward passes thrown away without backward: the tape must not keep them.
    for _ in 0..20_000 {
        let _ = x.exp()?.sum_all()?;
    }
    assert!(
        tessera::tape_len() < 20_000,
        "tape holds {} nodes",
        tessera::tape_len()
    );
    Ok(())
}
