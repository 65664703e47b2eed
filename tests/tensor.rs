//! Tensors: views without copies, creation, random numbers, display, and errors on bad input.

use tessera::prelude::*;

fn cpu() -> Device {
    Device::parse("cpu").unwrap()
}

fn arange(n: usize, shape: &[usize]) -> Tensor {
    Tensor::arange(0.0, n as f64, 1.0, DType::F32, &cpu())
        .unwrap()
        .reshape_usize(shape)
        .unwrap()
}

#[test]
fn views_share_the_buffer_and_read_correctly() -> Result<()> {
    let x = arange(12, &[3, 4]);
    let t = x.t()?;
    assert!(std::sync::Arc::ptr_eq(x.buffer(), t.buffer()));
    assert_eq!(t.strides(), &[1, 4]);
    assert_eq!(
        t.to_vec::<f32>()?,
        vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
    );
    let s = x.slice(1, 0, 4, 2)?; // every other column
    assert!(std::sync::Arc::ptr_eq(x.buffer(), s.buffer()));
    assert_eq!(s.to_vec::<f32>()?, vec![0., 2., 4., 6., 8., 10.]);
    let e = Tensor::arange(0.0, 3.0, 1.0, DType::F32, &cpu())?
        .reshape(&[3, 1])?
        .expand(&[3, 2])?;
    assert_eq!(e.strides(), &[1, 0]);
    assert_eq!(e.to_vec::<f32>()?, vec![0., 0., 1., 1., 2., 2.]);
    // A broadcast large enough to be copied in parallel chunks, a chunk ending mid-run.
    let big = Tensor::arange(0.0, 3.0, 1.0, DType::F32, &cpu())?
        .reshape(&[3, 1, 1])?
        .expand(&[3, 301, 97])?
        .contiguous()?
        .to_vec::<f32>()?;
    let want: Vec<f32> = (0..3 * 301 * 97).map(|i| (i / (301 * 97)) as f32).collect();
    assert_eq!(big, want);
    // reshape of a non-contiguous view copies, and is still right.
    assert_eq!(
        t.reshape(&[-1])?.to_vec::<f32>()?,
        t.contiguous()?.to_vec::<f32>()?
    );
    assert!(t.contiguous()?.is_contiguous());
    Ok(())
}

#[test]
fn random_numbers_depend_only_on_the_seed() -> Result<()> {
    let mut g1 = Generator::new(42);
    let a = Tensor::randn_with(&[100_000], 0.0, 1.0, DType::F32, &mut g1, &cpu())?;
    let b = Tensor::randn_with(&[7], 0.0, 1.0, DType::F32, &mut g1, &cpu())?;
    // Drawing in another split gives the same stream: element i is a function of (seed, i).
    let mut g2 = Generator::new(42);
    let c = Tensor::randn_with(&[100_007], 0.0, 1.0, DType::F32, &mut g2, &cpu())?;
    let (a, b, c) = (a.to_vec::<f32>()?, b.to_vec::<f32>()?, c.to_vec::<f32>()?);
    assert_eq!(&c[..100_000], &a[..]);
    assert_eq!(&c[100_000..], &b[..]);
    let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64;
    assert!(mean.abs() < 0.02);
    let u = Tensor::rand_with(
        &[1000],
        2.0,
        3.0,
        DType::F64,
        &mut Generator::new(1),
        &cpu(),
    )?
    .to_vec::<f64>()?;
    assert!(u.iter().all(|&v| (2.0..3.0).contains(&v)));
    Ok(())
}

#[test]
fn display_prints_like_pytorch() -> Result<()> {
    let x = Tensor::from_vec(vec![1.5f32, -2.0, 3.25, 4.0], &[2, 2], &cpu())?;
    assert_eq!(
        x.to_string(),
        "tensor([[ 1.5000, -2.0000],\n        [ 3.2500,  4.0000]], shape=[2, 2], dtype=f32)"
    );
    let i = Tensor::from_vec(vec![3i64, 1, 2], &[3], &cpu())?;
    assert_eq!(i.to_string(), "tensor([3, 1, 2], shape=[3], dtype=i64)");
    let big = arange(2000, &[2000]).to_string();
    assert!(
        big.starts_with("tensor([   0.,    1.,    2., ..., 1997., 1998., 1999.]"),
        "{big}"
    );
    let s = Tensor::scalar(0.5, DType::F64, &cpu())?.to_string();
    assert_eq!(s, "tensor(0.5000, shape=[], dtype=f64)");
    Ok(())
}

#[test]
fn comparisons_where_argmax_clamp_and_casts() -> Result<()> {
    let x = Tensor::from_vec(vec![1.0f64, 5.0, -2.0, 5.0, 0.0, 3.0], &[2, 3], &cpu())?;
    let zero = x.scalar_like(0.0)?;
    let pos = x.gt(&zero)?;
    assert_eq!(pos.dtype(), DType::Bool);
    assert_eq!(
        pos.to_vec::<bool>()?,
        vec![true, true, false, true, false, true]
    );
    // Casts both ways; bool sums count (i64), as in PyTorch.
    assert_eq!(
        pos.to_dtype(DType::F64)?.to_vec::<f64>()?,
        vec![1., 1., 0., 1., 0., 1.]
    );
    assert_eq!(
        x.to_dtype(DType::Bool)?.to_vec::<bool>()?,
        vec![true, true, true, true, false, true]
    );
    assert_eq!(pos.sum_all()?.to_vec::<i64>()?, vec![4]);
    assert_eq!(
        pos.all(&[0], false)?.to_vec::<bool>()?,
        vec![true, false, false]
    );
    assert_eq!(
        pos.logical_not()?.any(&[1], false)?.to_vec::<bool>()?,
        vec![true, true]
    );
    assert!(pos.add(&pos).is_err(), "arithmetic on bool needs a cast");
    // Shifts of any size wrap without overflow: i64::MIN ≡ 1 (mod 3), one place forward.
    let r = Tensor::from_vec(vec![0.0f64, 1.0, 2.0], &[3], &cpu())?;
    assert_eq!(
        r.roll(&[i64::MIN], &[0])?.to_vec::<f64>()?,
        vec![2.0, 0.0, 1.0]
    );
    assert_eq!(
        x.gt(&zero)?.where_(&x, &zero)?.to_vec::<f64>()?,
        x.relu()?.to_vec::<f64>()?
    );
    assert_eq!(x.argmax(1, false)?.to_vec::<i64>()?, vec![1, 0]);
    assert_eq!(x.argmin(0, true)?.dims(), &[1, 3]);
    assert_eq!(
        x.clamp(0.0, 4.0)?.to_vec::<f64>()?,
        vec![1., 4., 0., 4., 0., 3.]
    );
    assert_eq!(
        x.to_dtype(DType::I64)?.to_vec::<i64>()?,
        vec![1, 5, -2, 5, 0, 3]
    );
    assert_eq!(x.to_dtype(DType::F32)?.dtype(), DType::F32);
    let sum = (&(&x + &x)? * 0.5)?;
    assert_eq!(sum.to_vec::<f64>()?, x.to_vec::<f64>()?);
    Ok(())
}

fn err(r: Result<Tensor>) -> String {
    r.expect_err("bad input must be an error").to_string()
}

#[test]
fn bad_input_is_an_error_naming_the_op_and_shapes() -> Result<()> {
    let a = arange(6, &[2, 3]);
    let b = arange(8, &[2, 4]);
    let e = err(a.add(&b));
    assert!(
        e.contains("add") && e.contains("[2, 3]") && e.contains("[2, 4]"),
        "{e}"
    );
    let e = err(a.matmul(&b));
    assert!(
        e.contains("matmul") && e.contains("[2, 3]") && e.contains("[2, 4]"),
        "{e}"
    );
    let e = err(a.add_relu(&b));
    assert!(
        e.contains("add_relu") && e.contains("[2, 3]") && e.contains("[2, 4]"),
        "{e}"
    );
    let e = err(a.linear_relu(&b, None));
    assert!(
        e.contains("linear_relu") && e.contains("[2, 3]") && e.contains("[2, 4]"),
        "{e}"
    );
    let e = err(a.reshape(&[4, 2]));
    assert!(e.contains("reshape") && e.contains("[4, 2]"), "{e}");
    let e = err(a.reshape(&[-1, -1]));
    assert!(e.contains("reshape"), "{e}");
    let e = err(a.sum(&[2], false));
    assert!(e.contains("sum") && e.contains("dim 2"), "{e}");
    let e = err(a.permute(&[0, 0]));
    assert!(e.contains("permute"), "{e}");
    let e = err(a.to_dtype(DType::F64).and_then(|d| d.add(&a)));
    assert!(
        e.contains("add") && e.contains("f64") && e.contains("f32"),
        "{e}"
    );
    let idx = Tensor::from_vec(vec![0i64, 3], &[2], &cpu())?;
    let e = err(a.index_select(0, &idx));
    assert!(
        e.contains("index 3 is out of range for dimension 0 of size 2"),
        "{e}"
    );
    let neg = Tensor::from_vec(vec![-1i64], &[1], &cpu())?;
    assert!(err(a.index_select(1, &neg)).contains("index -1"));
    let e = err(a.index_select(0, &a));
    assert!(e.contains("index_select") && e.contains("i64"), "{e}");
    let e = err(Tensor::from_vec(vec![1.0f32; 5], &[2, 3], &cpu()));
    assert!(e.contains("5 values"), "{e}");
    let e = err(Tensor::concat(&[&a, &b], 0));
    assert!(
        e.contains("concat") && e.contains("[2, 3]") && e.contains("[2, 4]"),
        "{e}"
    );
    let e = err(a.exp().and_then(|_| a.to_dtype(DType::I64)?.exp()));
    assert!(e.contains("exp") && e.contains("i64"), "{e}");
    assert!(err(a.clamp(2.0, 1.0)).contains("clamp"));
    assert!(err(a.slice(0, 0, 2, 0)).contains("step"));
    assert!(err(a.narrow(1, 2, 5)).contains("narrow"));
    assert!(err(a.broadcast_to(&[3])).contains("expand"));
    assert!(a
        .to_vec::<f64>()
        .unwrap_err()
        .to_string()
        .contains("to_vec"));
    assert!(a.backward().unwrap_err().to_string().contains("backward"));
    match Device::parse("cuda") {
        Ok(d) => assert_eq!(d.name(), "cuda:0"),
        Err(e) => assert!(e.to_string().contains("cuda"), "{e}"),
    }
    assert!(Device::parse("cuda:x")
        .unwrap_err()
        .to_string()
        .contains("unknown device"));
    assert!(Device::parse("tpu")
        .unwrap_err()
        .to_string()
        .contains("unknown device"));
    let e = err(Tensor::arange(0.0, 1.0, 0.0, DType::F32, &cpu()));
    assert!(e.contains("arange"), "{e}");
    Ok(())
}

#[test]
fn matmul_follows_torch_semantics_for_every_rank() -> Result<()> {
    let v = arange(3, &[3]);
    let m = arange(6, &[3, 2]);
    let bm = arange(24, &[2, 2, 3, 2]);
    assert_eq!(v.matmul(&v)?.dims(), &[] as &[usize]);
    assert_eq!(v.matmul(&v)?.to_scalar()?, 5.0);
    assert_eq!(v.matmul(&m)?.dims(), &[2]);
    assert_eq!(m.t()?.matmul(&v)?.dims(), &[2]);
    assert_eq!(
        arange(8, &[4, 2]).matmul(&bm.transpose(-1, -2)?)?.dims(),
        &[2, 2, 4, 3]
    );
    assert_eq!(bm.matmul(&arange(4, &[2, 2]))?.dims(), &[2, 2, 3, 2]);
    // An N-d lhs against a 2-d or 1-d rhs folds the batch into rows: same values as item by
    // item, from a non-contiguous lhs too, and the rhs gradient sums over every row.
    let lhs = bm.transpose(0, 1)?.requires_grad_()?;
    let w = arange(6, &[2, 3]).requires_grad_()?;
    let y = lhs.matmul(&w)?;
    assert_eq!(y.dims(), &[2, 2, 3, 3]);
    for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let item = lhs
            .narrow(0, i, 1)?
            .narrow(1, j, 1)?
            .reshape_usize(&[3, 2])?;
        let want = item.matmul(&w)?.to_vec_f64()?;
        let got = y.narrow(0, i, 1)?.narrow(1, j, 1)?.to_vec_f64()?;
        assert_eq!(got, want);
    }
    let g = y.sum_all()?.backward()?;
    let gw = g.get(&w).expect("w has a gradient").to_vec_f64()?;
    let rows = bm.reshape_usize(&[12, 2])?.sum(&[0], false)?.to_vec_f64()?;
    assert_eq!(gw, [rows[0], rows[0], rows[0], rows[1], rows[1], rows[1]]);
    assert_eq!(
        g.get(&lhs).expect("lhs has a gradient").dims(),
        &[2, 2, 3, 2]
    );
    assert_eq!(lhs.matmul(&arange(2, &[2]))?.dims(), &[2, 2, 3]);
    Ok(())
}

/// f16 and bf16: storage rounds to nearest even, elementwise ops compute per element in f32,
/// and sums, matmul and softmax accumulate in f32, so results stay within half precision of
/// the f32 computation. Checkpoints keep the bits.
#[test]
fn half_precision_tensors_compute_in_f32_and_round_once() -> Result<()> {
    use tessera::core::half::{bf16, f16};
    let mut gen = Generator::new(4);
    let a = Tensor::randn_with(&[8, 300], 0.0, 1.0, DType::F32, &mut gen, &cpu())?;
    let b = Tensor::randn_with(&[300, 5], 0.0, 1.0, DType::F32, &mut gen, &cpu())?;
    for (dtype, eps) in [(DType::F16, 2f64.powi(-11)), (DType::BF16, 2f64.powi(-8))] {
        let (ah, bh) = (a.to_dtype(dtype)?, b.to_dtype(dtype)?);
        assert_eq!(ah.dtype(), dtype);
        // Round trips are exact for values the type can hold.
        let (a16, b16) = (ah.to_dtype(DType::F32)?, bh.to_dtype(DType::F32)?);
        assert_eq!(a16.to_dtype(dtype)?.to_vec_f64()?, ah.to_vec_f64()?);
        let close = |got: &Tensor, want: &Tensor, ulps: f64| -> Result<()> {
            assert_eq!(got.dtype(), dtype);
            let want = want.to_vec_f64()?;
            let scale = want.iter().fold(1.0f64, |m, w| m.max(w.abs()));
            for (g, w) in got.to_vec_f64()?.iter().zip(want) {
                assert!((g - w).abs() <= ulps * eps * scale, "{dtype}: {g} vs {w}");
            }
            Ok(())
        };
        // Each result is the f32 result of the half inputs, rounded once.
        close(&ah.mul(&ah)?.add(&ah)?, &a16.mul(&a16)?.add(&a16)?, 2.0)?;
        close(&ah.tanh()?, &a16.tanh()?, 1.0)?;
        close(&ah.matmul(&bh)?, &a16.matmul(&b16)?, 1.0)?;
        close(&ah.sum(&[1], false)?, &a16.sum(&[1], false)?, 1.0)?;
        close(&ah.softmax(-1)?, &a16.softmax(-1)?, 1.0)?;
        assert_eq!(
            ah.argmax(1, false)?.to_vec::<i64>()?,
            a16.argmax(1, false)?.to_vec::<i64>()?
        );
        // Gradients flow through half tensors too.
        let x = ah.requires_grad_()?;
        let g = x.square()?.sum_all()?.backward()?;
        close(g.get(&x).unwrap(), &a16.mul_scalar(2.0)?, 1.0)?;
    }
    assert_eq!(
        f16::from_f32(1.0 + 2f32.powi(-11)),
        f16::ONE,
        "ties round to even"
    );
    let t = Tensor::from_vec(
        vec![bf16::from_f32(1.5), bf16::from_f32(-2.0)],
        &[2],
        &cpu(),
    )?;
    assert_eq!(
        t.to_vec::<bf16>()?,
        vec![bf16::from_f32(1.5), bf16::from_f32(-2.0)]
    );
    assert_eq!(format!("{}", t.dtype()), "bf16");
    Ok(())
}
