//! The CUDA backend against the CPU backend, op by op, on contiguous and strided views (f32 and
//! f64). Every test prints a `skipped:` line and passes when no GPU is usable here.

use std::io::Write;
use tessera_core::ops::conv::{conv2d, ConvOptions};
use tessera_core::ops::pool::{max_pool2d, PoolOptions};
use tessera_core::{DType, Device, Generator, Result, Tensor};

fn gpu(test: &str) -> Option<Device> {
    match tessera_cuda::device(0) {
        Ok(d) => Some(d),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "skipped: {test}: {e}");
            None
        }
    }
}

fn cpu() -> Device {
    tessera_cpu::cpu()
}

/// Asserts `a` (CUDA) and `b` (CPU) agree elementwise within `tol` (relative to magnitude).
fn close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (x, y) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    for (i, (p, q)) in x.iter().zip(&y).enumerate() {
        let ok = (p.is_nan() && q.is_nan()) || (p - q).abs() <= tol * (1.0 + q.abs());
        assert!(ok, "{what}: element {i}: cuda {p} vs cpu {q}");
    }
}

/// Runs `f` on both devices with the same inputs (drawn on the CPU, copied to the GPU).
fn both(
    what: &str,
    gpu: &Device,
    inputs: &[Tensor],
    tol: f64,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let on_gpu: Vec<Tensor> = inputs.iter().map(|t| t.to_device(gpu).unwrap()).collect();
    let want = f(inputs).unwrap_or_else(|e| panic!("{what} on cpu: {e}"));
    let got = f(&on_gpu).unwrap_or_else(|e| panic!("{what} on cuda: {e}"));
    assert_eq!(got.device().name(), "cuda:0");
    close(what, &got, &want, tol);
}

#[test]
fn opening_cuda_never_panics() {
    match tessera_cuda::device(0) {
        Ok(d) => assert_eq!(d.name(), "cuda:0"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("cuda:0"), "{msg}");
            let _ = writeln!(std::io::stderr(), "skipped: no GPU: {msg}");
        }
    }
}

#[test]
fn elementwise_reductions_and_shapes_match_the_cpu() {
    let Some(g) = gpu("elementwise_reductions_and_shapes_match_the_cpu") else {
        return;
    };
    let mut gen = Generator::new(3);
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
        let a = Tensor::randn_with(&[4, 5, 6], 0.0, 1.0, dtype, &mut gen, &cpu()).unwrap();
        let b = Tensor::rand_with(&[6, 5], 0.5, 2.0, dtype, &mut gen, &cpu()).unwrap();
        let x = &[a.clone(), b.clone()];
        // Strided and broadcast operands: a permuted view against a transposed one.
        both("add (views)", &g, x, tol, |t| {
            t[0].permute(&[0, 2, 1])?.add(&t[1].t()?.t()?)
        });
        both("mul broadcast", &g, x, tol, |t| t[0].mul(&t[1].t()?));
        both("div", &g, x, tol, |t| t[0].permute(&[0, 2, 1])?.div(&t[1]));
        both("pow", &g, x, tol, |t| t[1].pow(&t[1].t()?.t()?));
        both("maximum", &g, x, tol, |t| {
            t[0].maximum(&t[0].mul_scalar(-1.0)?)
        });
        both("gt", &g, x, tol, |t| t[0].gt(&t[0].mul_scalar(0.5)?));
        for (name, f) in [
            ("exp", Tensor::exp as fn(&Tensor) -> Result<Tensor>),
            ("tanh", Tensor::tanh),
            ("sigmoid", Tensor::sigmoid),
            ("relu", Tensor::relu),
            ("erf", Tensor::erf),
            ("abs", Tensor::abs),
            ("sign", Tensor::sign),
            ("square", Tensor::square),
        ] {
            both(name, &g, x, tol, |t| f(&t[0].slice(2, 1, 6, 2)?));
        }
        both("log", &g, x, tol, |t| t[1].log());
        both("sqrt", &g, x, tol, |t| t[1].t()?.sqrt());
        both("softplus", &g, x, tol, |t| t[0].softplus(2.0, 1.0));
        both("clamp", &g, x, tol, |t| t[0].clamp(-0.5, 0.25));
        both("where", &g, x, tol, |t| {
            t[0].gt(&t[0].mul_scalar(0.0)?)?.where_(&t[0], &t[0].neg()?)
        });
        both("sum all axes", &g, x, tol * 10.0, |t| {
            t[0].sum(&[0, 1, 2], false)
        });
        both("sum middle", &g, x, tol * 10.0, |t| {
            t[0].permute(&[2, 0, 1])?.sum(&[1], true)
        });
        both("sum long", &g, x, tol * 100.0, |t| {
            t[0].reshape(&[1, 120])?
                .expand(&[50, 120])?
                .sum(&[0], false)
        });
        both("amax", &g, x, tol, |t| t[0].amax(&[1, 2], false));
        both("argmax", &g, x, 0.0, |t| {
            t[0].transpose(1, 2)?.argmax(1, false)
        });
        both("argmin", &g, x, 0.0, |t| t[0].argmin(0, false));
        both("softmax", &g, x, tol, |t| t[0].softmax(-1));
        both("log_softmax strided", &g, x, tol, |t| {
            t[0].permute(&[2, 1, 0])?.log_softmax(-1)
        });
        both("softmax middle", &g, x, tol, |t| t[0].softmax(1));
        both("concat", &g, x, tol, |t| {
            Tensor::concat(&[&t[0], &t[0].mul_scalar(2.0)?], 1)
        });
        both("pad", &g, x, tol, |t| t[0].pad(&[1, 2, 0, 1], -3.0));
        both("cast", &g, x, tol, |t| {
            t[0].to_dtype(DType::I64)?.to_dtype(dtype)
        });
        both("matmul", &g, x, tol * 10.0, |t| {
            t[0].matmul(&t[1].t()?.t()?.narrow(0, 0, 6)?)
        });
        both("matmul transposed", &g, x, tol * 10.0, |t| {
            t[0].permute(&[0, 2, 1])?.matmul(&t[0])
        });
        both("matmul broadcast", &g, x, tol * 10.0, |t| {
            t[0].matmul(&t[1])
        });
    }
    let idx = Tensor::from_vec(vec![2i64, 0, 1, 1, 2, 0], &[2, 3], &cpu()).unwrap();
    let x = Tensor::randn_with(&[2, 3], 0.0, 1.0, DType::F64, &mut gen, &cpu()).unwrap();
    let ins = &[x, idx];
    both("gather", &g, ins, 0.0, |t| t[0].gather(1, &t[1]));
    both("scatter_add", &g, ins, 1e-12, |t| {
        t[0].scatter_add(1, &t[1], &t[0])
    });
    both("index_select", &g, ins, 0.0, |t| {
        t[0].index_select(1, &t[1].narrow(0, 0, 1)?.reshape(&[3])?)
    });
    let ints = Tensor::from_vec(vec![3i64, -2, 7, 5, 0, -9], &[2, 3], &cpu()).unwrap();
    both("i64 matmul", &g, std::slice::from_ref(&ints), 0.0, |t| {
        t[0].matmul(&t[0].t()?)
    });
    both("i64 arithmetic", &g, &[ints], 0.0, |t| {
        t[0].mul(&t[0])?.add_scalar(4.0)?.abs()
    });
}

#[test]
fn bad_indices_are_errors_on_the_gpu() {
    let Some(g) = gpu("bad_indices_are_errors_on_the_gpu") else {
        return;
    };
    let x = Tensor::zeros(&[2, 3], DType::F32, &g).unwrap();
    let idx = Tensor::from_vec(vec![0i64, 7], &[2, 1], &g).unwrap();
    let e = x.gather(1, &idx).unwrap_err().to_string();
    assert!(e.contains("index 7") && e.contains("size 3"), "{e}");
    // The cross-entropy kernel's targets, through the same flag.
    use tessera_core::ops::loss::cross_entropy;
    let t = Tensor::from_vec(vec![1i64, 7], &[2], &g).unwrap();
    let e = cross_entropy(&x, &t).unwrap_err().to_string();
    assert!(e.contains("cross_entropy") && e.contains("index 7"), "{e}");
}

#[test]
fn random_numbers_match_the_cpu() {
    let Some(g) = gpu("random_numbers_match_the_cpu") else {
        return;
    };
    for dtype in [DType::F32, DType::F64] {
        let a = Tensor::randn_with(&[1000], 0.5, 2.0, dtype, &mut Generator::new(11), &g).unwrap();
        let b =
            Tensor::randn_with(&[1000], 0.5, 2.0, dtype, &mut Generator::new(11), &cpu()).unwrap();
        close("randn", &a, &b, 1e-6);
        let a = Tensor::rand_with(&[1000], -1.0, 3.0, dtype, &mut Generator::new(5), &g).unwrap();
        let b =
            Tensor::rand_with(&[1000], -1.0, 3.0, dtype, &mut Generator::new(5), &cpu()).unwrap();
        close("rand", &a, &b, 1e-12);
    }
}

#[test]
fn convolution_pooling_and_their_gradients_match_the_cpu() {
    let Some(g) = gpu("convolution_pooling_and_their_gradients_match_the_cpu") else {
        return;
    };
    let mut gen = Generator::new(7);
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-4)] {
        let x = Tensor::randn_with(&[2, 3, 9, 8], 0.0, 1.0, dtype, &mut gen, &cpu()).unwrap();
        let w = Tensor::randn_with(&[4, 3, 3, 2], 0.0, 1.0, dtype, &mut gen, &cpu()).unwrap();
        let ins = &[x, w];
        let opts = ConvOptions::new().stride(2).padding(1).dilation(2);
        both("conv2d", &g, ins, tol, |t| {
            conv2d(&t[0], &t[1], None, &opts)
        });
        both("max_pool2d", &g, ins, tol, |t| {
            max_pool2d(&t[0], &PoolOptions::new(2))
        });
        for which in 0..2 {
            both("conv2d grads", &g, ins, tol, |t| {
                let (x, w) = (
                    t[0].clone().requires_grad_()?,
                    t[1].clone().requires_grad_()?,
                );
                let y = conv2d(&x, &w, None, &opts)?;
                let p = max_pool2d(&y, &PoolOptions::new(2))?;
                let grads = p.square()?.sum_all()?.backward()?;
                Ok(grads.get(if which == 0 { &x } else { &w }).unwrap().clone())
            });
        }
    }
}

#[test]
fn the_allocator_stops_calling_the_driver_after_warm_up() {
    let Some(g) = gpu("the_allocator_stops_calling_the_driver_after_warm_up") else {
        return;
    };
    let be = tessera_cuda::backend(0).unwrap();
    let mut gen = Generator::new(1);
    let w = Tensor::randn_with(&[256, 256], 0.0, 0.05, DType::F32, &mut gen, &g)
        .unwrap()
        .requires_grad_()
        .unwrap();
    let step = |gen: &mut Generator| {
        let x = Tensor::randn_with(&[64, 256], 0.0, 1.0, DType::F32, gen, &g).unwrap();
        let loss = x
            .matmul(&w)
            .unwrap()
            .relu()
            .unwrap()
            .square()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        grads.get(&w).unwrap().to_vec_f64().unwrap();
    };
    for _ in 0..3 {
        step(&mut gen);
    }
    let before = be.pool_stats();
    for _ in 0..20 {
        step(&mut gen);
    }
    let after = be.pool_stats();
    assert_eq!(
        after.driver_allocs, before.driver_allocs,
        "{before:?} -> {after:?}"
    );
    assert!(after.reuses > before.reuses);
}

#[test]
fn half_precision_matches_the_cpu() {
    let Some(g) = gpu("half_precision_matches_the_cpu") else {
        return;
    };
    let mut gen = Generator::new(12);
    for (dtype, tol) in [(DType::F16, 2e-3), (DType::BF16, 1.6e-2)] {
        let a = Tensor::randn_with(&[6, 40], 0.0, 1.0, DType::F32, &mut gen, &cpu()).unwrap();
        let b = Tensor::randn_with(&[40, 7], 0.0, 1.0, DType::F32, &mut gen, &cpu()).unwrap();
        let x = &[a.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap()];
        both("half add", &g, x, tol, |t| t[0].add(&t[0].mul_scalar(0.5)?));
        both("half exp", &g, x, tol, |t| t[0].t()?.exp());
        both("half matmul", &g, x, tol * 4.0, |t| t[0].matmul(&t[1]));
        both("half matmul transposed", &g, x, tol * 4.0, |t| {
            t[1].t()?.matmul(&t[0].t()?)
        });
        both("half sum", &g, x, tol * 4.0, |t| t[0].sum(&[1], false));
        both("half softmax", &g, x, tol, |t| t[0].softmax(-1));
        both("half argmax", &g, x, 0.0, |t| t[0].argmax(1, false));
        both("half cast", &g, x, 0.0, |t| {
            t[0].to_dtype(DType::F32)?.to_dtype(dtype)
        });
        both("half where", &g, x, 0.0, |t| {
            t[0].gt(&t[0].mul_scalar(0.0)?)?.where_(&t[0], &t[0].neg()?)
        });
        both("half pad", &g, x, 0.0, |t| t[0].pad(&[1, 1], 2.5));
        both(
            "half conv",
            &g,
            &[x[0].reshape(&[1, 1, 6, 40]).unwrap()],
            tol * 4.0,
            |t| {
                let w = Tensor::ones(&[2, 1, 3, 3], dtype, t[0].device())?;
                conv2d(&t[0], &w, None, &ConvOptions::new().padding(1))
            },
        );
    }
}

/// A bidirectional, batch-first LSTM (the cell and its backward as one kernel each on the GPU)
/// and the gradients of its input, initial states and every parameter, against the CPU's
/// sequence kernels, in f32 and f64.
#[test]
fn lstm_and_its_gradients_match_the_cpu() {
    use tessera_core::ops::rnn::{rnn, Cell, RnnOptions, RnnWeights};
    let Some(gpu) = gpu("lstm_and_its_gradients_match_the_cpu") else {
        return;
    };
    let (t, b, i, h) = (5, 3, 4, 6);
    let opts = RnnOptions {
        hidden_size: h,
        num_layers: 1,
        bidirectional: true,
        batch_first: true,
        bias: true,
    };
    for (dtype, tol) in [(DType::F32, 2e-4), (DType::F64, 1e-10)] {
        let mut gen = Generator::new(11);
        let mut shapes = vec![
            vec![b, t, i],
            vec![2, b, h],
            vec![2, b, h],
            vec![b, t, 2 * h],
        ];
        for _ in 0..2 {
            shapes.extend([vec![4 * h, i], vec![4 * h, h], vec![4 * h], vec![4 * h]]);
        }
        let inputs: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::randn_with(s, 0.0, 0.5, dtype, &mut gen, &cpu()).unwrap())
            .collect();
        let run = |dev: &Device| -> Vec<Tensor> {
            let v: Vec<Tensor> = inputs
                .iter()
                .map(|x| x.to_device(dev).unwrap().requires_grad_().unwrap())
                .collect();
            let weights: Vec<RnnWeights<'_>> = v[4..]
                .chunks(4)
                .map(|w| RnnWeights {
                    w_ih: &w[0],
                    w_hh: &w[1],
                    b_ih: Some(&w[2]),
                    b_hh: Some(&w[3]),
                })
                .collect();
            let y = rnn(Cell::Lstm, &v[0], &v[1], Some(&v[2]), &weights, &opts).unwrap();
            let c_n = y.c_n.clone().unwrap();
            let loss = y
                .output
                .mul(&v[3].detach())
                .unwrap()
                .sum_all()
                .unwrap()
                .add(&c_n.sum_all().unwrap())
                .unwrap();
            let g = loss.backward().unwrap();
            let mut out = vec![y.output.clone(), y.h_n.clone(), c_n];
            for (k, x) in v.iter().enumerate() {
                if k != 3 {
                    out.push(g.get(x).cloned().expect("a gradient"));
                }
            }
            out
        };
        let (got, want) = (run(&gpu), run(&cpu()));
        for (k, (a, c)) in got.iter().zip(&want).enumerate() {
            close(&format!("lstm {dtype:?} output {k}"), a, c, tol);
        }
    }
}
