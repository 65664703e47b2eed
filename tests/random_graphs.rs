//! Random op graphs over random shapes, size-0 and size-1 dims included (issue 15): no op may
//! panic — bad combinations are errors — and where a graph runs, its backward runs too and its
//! gradients match finite differences wherever the graph is smooth.
//!
//! `TESSERA_RANDOM_GRAPHS` sets how many graphs (default 5,000; a graph is a few ops on small
//! tensors, so the run takes seconds).

use std::panic::{catch_unwind, AssertUnwindSafe};
use tessera::prelude::*;
use tessera::testing::{gradcheck, GradcheckOptions};

/// xorshift64*: a fixed seed per graph, so a failure names a graph that can be rerun.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as usize) as i64
    }
}

/// A random shape of rank 0–4 with sizes 0–4 (zero sizes rarer).
fn shape(rng: &mut Rng) -> Vec<usize> {
    let rank = rng.below(5);
    (0..rank)
        .map(|_| match rng.below(10) {
            0 => 0,
            1 | 2 => 1,
            _ => 2 + rng.below(3),
        })
        .collect()
}

/// One step of a graph: the op's name, whether it is smooth (finite differences apply), and
/// the op itself applied to `x` with arguments drawn from the graph's seed.
type Step = (&'static str, bool, Box<dyn Fn(&Tensor) -> Result<Tensor>>);

fn random_step(rng: &mut Rng) -> Step {
    let dim = rng.int(-4, 3) as isize;
    let other = shape(rng);
    let keep = rng.below(2) == 0;
    let k = 1 + rng.below(3);
    let (start, len) = (rng.below(3), rng.below(3));
    let pads: Vec<usize> = (0..2 * (1 + rng.below(2))).map(|_| rng.below(2)).collect();
    let seed = rng.next();
    let pick = rng.below(27);
    let fill = move |s: &[usize], x: &Tensor| {
        let mut g = Generator::new(seed);
        Tensor::randn_with(s, 0.0, 1.0, x.dtype(), &mut g, x.device())
    };
    match pick {
        0 => ("neg", true, Box::new(|x: &Tensor| x.neg())),
        1 => ("tanh", true, Box::new(|x: &Tensor| x.tanh())),
        2 => ("sigmoid", true, Box::new(|x: &Tensor| x.sigmoid())),
        3 => ("relu", false, Box::new(|x: &Tensor| x.relu())),
        4 => ("exp", true, Box::new(|x: &Tensor| x.tanh()?.exp())),
        5 => ("square", true, Box::new(|x: &Tensor| x.square())),
        6 => (
            "add",
            true,
            Box::new(move |x: &Tensor| x.add(&fill(&other, x)?)),
        ),
        7 => (
            "mul",
            true,
            Box::new(move |x: &Tensor| x.mul(&fill(&other, x)?)),
        ),
        8 => (
            "div",
            true,
            Box::new(move |x: &Tensor| x.div(&fill(&other, x)?.square()?.add_scalar(1.0)?)),
        ),
        9 => ("sum", true, Box::new(move |x: &Tensor| x.sum(&[dim], keep))),
        10 => (
            "mean",
            true,
            Box::new(move |x: &Tensor| x.mean(&[dim], keep)),
        ),
        11 => (
            "amax",
            false,
            Box::new(move |x: &Tensor| x.amax(&[dim], keep)),
        ),
        12 => ("softmax", true, Box::new(move |x: &Tensor| x.softmax(dim))),
        13 => (
            "log_softmax",
            true,
            Box::new(move |x: &Tensor| x.log_softmax(dim)),
        ),
        14 => ("reshape", true, Box::new(|x: &Tensor| x.reshape(&[-1]))),
        15 => (
            "transpose",
            true,
            Box::new(move |x: &Tensor| x.transpose(dim, 0)),
        ),
        16 => (
            "narrow",
            true,
            Box::new(move |x: &Tensor| x.narrow(dim, start, len)),
        ),
        17 => (
            "unsqueeze",
            true,
            Box::new(move |x: &Tensor| x.unsqueeze(dim)),
        ),
        18 => (
            "concat",
            true,
            Box::new(move |x: &Tensor| Tensor::concat(&[x, &x.mul_scalar(2.0)?], dim)),
        ),
        19 => ("pad", true, Box::new(move |x: &Tensor| x.pad(&pads, 0.5))),
        20 => (
            "matmul",
            true,
            Box::new(move |x: &Tensor| {
                let last = x.dims().last().copied().unwrap_or(1);
                x.matmul(&fill(&[last, k], x)?)
            }),
        ),
        21 => (
            "logsumexp",
            true,
            Box::new(move |x: &Tensor| x.logsumexp(&[dim], keep)),
        ),
        22 => (
            "stack",
            true,
            Box::new(move |x: &Tensor| Tensor::stack(&[x, &x.neg()?], dim)),
        ),
        23 => (
            "flatten",
            true,
            Box::new(move |x: &Tensor| x.flatten(dim, -1)),
        ),
        24 => (
            "expand",
            true,
            Box::new(move |x: &Tensor| {
                let mut s: Vec<isize> = x.dims().iter().map(|&d| d as isize).collect();
                s.insert(0, k as isize);
                x.expand(&s)
            }),
        ),
        25 => (
            "max_pool2d",
            false,
            Box::new(move |x: &Tensor| {
                let opts = tessera::ops::pool::PoolOptions::new(k);
                tessera::ops::pool::max_pool2d(x, &opts)
            }),
        ),
        _ => (
            "conv2d",
            true,
            Box::new(move |x: &Tensor| {
                let c = x.dims().get(1).copied().unwrap_or(1);
                let w = fill(&[2, c, k, k], x)?;
                let opts = tessera::ops::conv::ConvOptions::new().padding(start);
                tessera::ops::conv::conv2d(x, &w, None, &opts)
            }),
        ),
    }
}

#[test]
fn random_graphs_never_panic_and_their_gradients_match_finite_differences() {
    let graphs: u64 = std::env::var("TESSERA_RANDOM_GRAPHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let cpu = Device::parse("cpu").unwrap();
    // Every other graph on the CPU's primitives alone: the composites must not panic either.
    let composed = tessera::Composed::device(&cpu);
    let (mut ran, mut errors, mut checked) = (0, 0, 0);
    for g in 0..graphs {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (g + 1).wrapping_mul(0x1000_0000_01b3));
        let in_shape = shape(&mut rng);
        let dtype = if rng.below(4) == 0 {
            DType::F32
        } else {
            DType::F64
        };
        let steps: Vec<Step> = (0..1 + rng.below(4))
            .map(|_| random_step(&mut rng))
            .collect();
        let names: Vec<&str> = steps.iter().map(|s| s.0).collect();
        let what = format!(
            "graph {g}: {in_shape:?} {dtype} {names:?} on {}",
            if g % 2 == 0 { "cpu" } else { "cpu (composed)" }
        );
        let dev = if g % 2 == 0 { &cpu } else { &composed };
        let run = |x: &Tensor| -> Result<Tensor> {
            let mut h = x.clone();
            for (_, _, f) in &steps {
                h = f(&h)?;
            }
            Ok(h)
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<Option<bool>> {
            let mut gen = Generator::new(g);
            let x =
                Tensor::randn_with(&in_shape, 0.0, 1.0, dtype, &mut gen, dev)?.requires_grad_()?;
            let y = match run(&x) {
                Ok(y) => y,
                Err(_) => return Ok(None),
            };
            // Backward of whatever ran: never a panic, and a gradient of x's shape.
            let grads = y.sum_all()?.backward()?;
            if let Some(gx) = grads.get(&x) {
                assert_eq!(gx.dims(), x.dims(), "{what}: gradient shape");
            }
            let smooth = steps.iter().all(|s| s.1);
            let small = x.numel() <= 48 && y.numel() <= 96;
            // Finite differences need finite values (a mean over nothing is NaN).
            let finite = y
                .to_dtype(DType::F64)?
                .to_vec::<f64>()?
                .iter()
                .all(|v| v.is_finite());
            if dtype != DType::F64 || !smooth || !small || !finite || g % 5 != 0 {
                return Ok(Some(false));
            }
            let opts = GradcheckOptions {
                atol: 1e-5,
                rtol: 1e-4,
                ..GradcheckOptions::default()
            };
            gradcheck(|t| run(&t[0]), &[x.detach()], opts)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            Ok(Some(true))
        }));
        match outcome {
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{what}: panicked: {msg}");
            }
            Ok(Err(e)) => panic!("{what}: the graph ran but its backward failed: {e}"),
            Ok(Ok(None)) => errors += 1,
            Ok(Ok(Some(c))) => {
                ran += 1;
                checked += c as usize;
            }
        }
    }
    eprintln!("{graphs} graphs: {ran} ran ({checked} gradient-checked), {errors} were errors");
    assert!(ran > graphs as usize / 4, "too few graphs ran: {ran}");
    assert!(checked > 50, "too few gradient checks: {checked}");
}
