//! The kernel sources compiled as plain C++ for this machine (tests/host_shim.h: one block of
//! one thread) and run against the CPU backend on the same views, with the descriptors the
//! launchers build. This checks the kernels' arithmetic and indexing without a GPU; their
//! parallel behaviour (block reductions, atomics) needs one. Skipped when no C++ compiler.

use libloading::{Library, Symbol};
use std::io::Write;
use std::sync::Arc;
use tessera_core::{
    BinaryOp, Buffer, DType, Distribution, Element, Generator, HostData, Layout, ReduceOp, Tensor,
    UnaryOp, View, Window,
};
use tessera_cuda::kernels::{conv::Win, family_source, reduce::split, shape, Strided};

/// The family compiled to a shared library, or `None` (with a `skipped:` line) without g++.
fn build(family: &str) -> Option<Library> {
    // One folder per call: tests run in parallel and two of them may build the same family
    // (sharing a folder, one test's g++ read or removed the other's files).
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tessera-host-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{family}.cpp"));
    let shim = include_str!("host_shim.h");
    std::fs::write(&src, format!("{shim}\n{}", family_source(family).unwrap())).unwrap();
    let lib = dir.join(format!("lib{family}.so"));
    let out = match std::process::Command::new("g++")
        .args(["-O1", "-shared", "-fPIC", "-std=c++17", "-w", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "skipped: host emulation of {family}.cu: no g++ ({e})"
            );
            return None;
        }
    };
    assert!(
        out.status.success(),
        "g++ {family}.cu: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: the library is our own kernels with no initialisers.
    let loaded = unsafe { Library::new(&lib) }.unwrap();
    // A loaded library stays mapped after its file is removed.
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&lib);
    let _ = std::fs::remove_dir(&dir);
    Some(loaded)
}

fn cpu() -> tessera_core::Device {
    tessera_cpu::cpu()
}

/// The whole buffer behind `t` (offsets in its layout index into this).
fn base<T: Element>(t: &Tensor) -> Vec<T> {
    let b = t.buffer();
    let all = Layout::contiguous(&[b.len()]);
    let h = cpu()
        .backend()
        .download(View {
            buf: b.as_ref(),
            layout: &all,
        })
        .unwrap();
    T::from_host(h).unwrap()
}

/// All of a CPU buffer's elements.
fn download(b: Arc<dyn Buffer>) -> HostData {
    let l = Layout::contiguous(&[b.len()]);
    cpu()
        .backend()
        .download(View {
            buf: b.as_ref(),
            layout: &l,
        })
        .unwrap()
}

fn host<T: Element>(b: Arc<dyn Buffer>) -> Vec<T> {
    T::from_host(download(b)).unwrap()
}

fn same(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= tol * (1.0 + w.abs());
        assert!(ok, "{what}: element {i}: kernel {g} vs cpu {w}");
    }
}

fn f64s<T: Element>(v: Vec<T>) -> Vec<f64> {
    T::into_host(v).to_f64()
}

/// A permuted, sliced view of a random [4, 6, 5] tensor: strided, with an offset.
fn strided_view(dtype: DType, seed: u64) -> Tensor {
    let t = Tensor::randn_with(
        &[4, 6, 5],
        0.0,
        1.5,
        dtype,
        &mut Generator::new(seed),
        &cpu(),
    )
    .unwrap();
    t.permute(&[2, 0, 1]).unwrap().slice(2, 1, 6, 2).unwrap()
}

const UNARY: &[UnaryOp] = &[
    UnaryOp::Neg,
    UnaryOp::Abs,
    UnaryOp::Sign,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::Erf,
    UnaryOp::Recip,
    UnaryOp::Square,
    UnaryOp::LeakyRelu(0.1),
    UnaryOp::Softplus {
        beta: 2.0,
        threshold: 1.5,
    },
    UnaryOp::AddScalar(0.5),
    UnaryOp::MulScalar(-3.0),
    UnaryOp::PowScalar(1.7),
    UnaryOp::Clamp {
        min: -0.5,
        max: 0.7,
    },
];

const BINARY: &[BinaryOp] = &[
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Pow,
    BinaryOp::Maximum,
    BinaryOp::Minimum,
    BinaryOp::Eq,
    BinaryOp::Ne,
    BinaryOp::Lt,
    BinaryOp::Le,
    BinaryOp::Gt,
    BinaryOp::Ge,
];

macro_rules! elementwise_for {
    ($lib:expr, $T:ty, $s:literal, $dtype:expr, $tol:expr) => {{
        let lib = $lib;
        let x = strided_view($dtype, 1);
        let xb = base::<$T>(&x);
        let lx = Strided::joint("t", &[x.layout()]).unwrap()[0];
        let n = x.numel();
        type U = unsafe extern "C" fn(i32, f64, f64, i64, *const $T, Strided, *mut $T);
        let f: Symbol<U> = unsafe { lib.get(concat!("unary_", $s).as_bytes()) }.unwrap();
        for (code, op) in UNARY.iter().enumerate() {
            let (p0, p1) = match *op {
                UnaryOp::LeakyRelu(a)
                | UnaryOp::AddScalar(a)
                | UnaryOp::MulScalar(a)
                | UnaryOp::PowScalar(a) => (a, 0.0),
                UnaryOp::Softplus { beta, threshold } => (beta, threshold),
                UnaryOp::Clamp { min, max } => (min, max),
                _ => (0.0, 0.0),
            };
            let mut out = vec![<$T>::default(); n];
            unsafe {
                f(
                    code as i32,
                    p0,
                    p1,
                    n as i64,
                    xb.as_ptr(),
                    lx,
                    out.as_mut_ptr(),
                )
            };
            let want = host::<$T>(cpu().backend().unary(*op, x.view()).unwrap());
            same(
                &format!("unary {op:?} {}", $s),
                &f64s(out),
                &f64s(want),
                $tol,
            );
        }
        // Binary: a strided view against a broadcast row.
        let y = Tensor::rand_with(&[3], 0.5, 2.0, $dtype, &mut Generator::new(2), &cpu()).unwrap();
        let yb = y.broadcast_to(x.dims()).unwrap();
        let s = Strided::joint("t", &[x.layout(), yb.layout()]).unwrap();
        let ybase = base::<$T>(&y);
        type B = unsafe extern "C" fn(i32, i64, *const $T, Strided, *const $T, Strided, *mut $T);
        let f: Symbol<B> = unsafe { lib.get(concat!("binary_", $s).as_bytes()) }.unwrap();
        for (code, op) in BINARY.iter().enumerate() {
            let mut out = vec![<$T>::default(); n];
            unsafe {
                f(
                    code as i32,
                    n as i64,
                    xb.as_ptr(),
                    s[0],
                    ybase.as_ptr(),
                    s[1],
                    out.as_mut_ptr(),
                )
            };
            let want = host::<$T>(cpu().backend().binary(*op, x.view(), yb.view()).unwrap());
            same(
                &format!("binary {op:?} {}", $s),
                &f64s(out),
                &f64s(want),
                $tol,
            );
        }
        // where(x > 0, x, y) with a bool condition (one byte per element).
        let c = x.gt(&x.mul_scalar(0.0).unwrap()).unwrap();
        let cb = base::<bool>(&c);
        let s = Strided::joint("t", &[c.layout(), x.layout(), yb.layout()]).unwrap();
        type W = unsafe extern "C" fn(
            i64,
            *const bool,
            Strided,
            *const $T,
            Strided,
            *const $T,
            Strided,
            *mut $T,
        );
        let f: Symbol<W> = unsafe { lib.get(concat!("where_bool_", $s).as_bytes()) }.unwrap();
        let mut out = vec![<$T>::default(); n];
        unsafe {
            f(
                n as i64,
                cb.as_ptr(),
                s[0],
                xb.as_ptr(),
                s[1],
                ybase.as_ptr(),
                s[2],
                out.as_mut_ptr(),
            )
        };
        let want = host::<$T>(
            cpu()
                .backend()
                .where_cond(c.view(), x.view(), yb.view())
                .unwrap(),
        );
        same("where", &f64s(out), &f64s(want), 0.0);
        // Casts to bool (non-zero and NaN are true) and back to 0/1.
        let mixed = Tensor::from_vec(
            vec![0.0 as $T, -0.0 as $T, <$T>::NAN, 2.5 as $T],
            &[4],
            &cpu(),
        )
        .unwrap();
        let mb = base::<$T>(&mixed);
        type ToB = unsafe extern "C" fn(i64, *const $T, Strided, *mut bool);
        let f: Symbol<ToB> = unsafe { lib.get(concat!("cast_", $s, "_bool").as_bytes()) }.unwrap();
        let mut flags = vec![false; 4];
        unsafe { f(4, mb.as_ptr(), Strided::flat(4, 0), flags.as_mut_ptr()) };
        let want = cpu().backend().cast(mixed.view(), DType::Bool).unwrap();
        assert_eq!(
            HostData::Bool(flags.clone()),
            download(want),
            "cast {} -> bool",
            $s
        );
        type FromB = unsafe extern "C" fn(i64, *const bool, Strided, *mut $T);
        let f: Symbol<FromB> = unsafe { lib.get(concat!("cast_bool_", $s).as_bytes()) }.unwrap();
        let mut back = vec![<$T>::default(); 4];
        unsafe { f(4, flags.as_ptr(), Strided::flat(4, 0), back.as_mut_ptr()) };
        assert_eq!(f64s(back), vec![0.0, 0.0, 1.0, 1.0], "cast bool -> {}", $s);
        // Cast to i64 (saturating, NaN -> 0) and back.
        let big = Tensor::from_vec(
            vec![1e30 as $T, -1e30 as $T, <$T>::NAN, -2.7 as $T, 3.9 as $T],
            &[5],
            &cpu(),
        )
        .unwrap();
        let bb = base::<$T>(&big);
        type C = unsafe extern "C" fn(i64, *const $T, Strided, *mut i64);
        let f: Symbol<C> = unsafe { lib.get(concat!("cast_", $s, "_i64").as_bytes()) }.unwrap();
        let mut out = vec![0i64; 5];
        unsafe { f(5, bb.as_ptr(), Strided::flat(5, 0), out.as_mut_ptr()) };
        let want = host::<i64>(cpu().backend().cast(big.view(), DType::I64).unwrap());
        assert_eq!(out, want, "cast {} -> i64", $s);
        // Random numbers: the same Philox stream as the CPU backend.
        type R = unsafe extern "C" fn(i64, i32, f64, f64, u64, u64, *mut $T);
        let f: Symbol<R> = unsafe { lib.get(concat!("random_", $s).as_bytes()) }.unwrap();
        for (kind, dist) in [
            (
                0,
                Distribution::Uniform {
                    low: -1.0,
                    high: 3.0,
                },
            ),
            (
                1,
                Distribution::Normal {
                    mean: 0.5,
                    std: 2.0,
                },
            ),
        ] {
            let (a, b) = match dist {
                Distribution::Uniform { low, high } => (low, high),
                Distribution::Normal { mean, std } => (mean, std),
            };
            let mut out = vec![<$T>::default(); 1000];
            unsafe { f(1000, kind, a, b, 0x1234_5678_9abc, 77, out.as_mut_ptr()) };
            let want = host::<$T>(
                cpu()
                    .backend()
                    .random(1000, $dtype, dist, 0x1234_5678_9abc, 77)
                    .unwrap(),
            );
            same(&format!("random {dist:?}"), &f64s(out), &f64s(want), 1e-14);
        }
    }};
}

#[test]
fn elementwise_kernels_match_the_cpu_backend() {
    let Some(lib) = build("elementwise") else {
        return;
    };
    elementwise_for!(&lib, f64, "f64", DType::F64, 1e-14);
    elementwise_for!(&lib, f32, "f32", DType::F32, 1e-6);
    // Integer ops: wrapping pow, sign, clamp.
    let x = Tensor::from_vec(vec![3i64, -2, 0, 7, -9, 5], &[2, 3], &cpu())
        .unwrap()
        .t()
        .unwrap();
    let xb = base::<i64>(&x);
    let lx = Strided::joint("t", &[x.layout()]).unwrap()[0];
    type U = unsafe extern "C" fn(i32, f64, f64, i64, *const i64, Strided, *mut i64);
    let f: Symbol<U> = unsafe { lib.get(b"unary_i64") }.unwrap();
    for (code, op) in [
        (2, UnaryOp::Sign),
        (1, UnaryOp::Abs),
        (
            17,
            UnaryOp::Clamp {
                min: -1.0,
                max: 4.0,
            },
        ),
    ] {
        let (p0, p1) = if code == 17 { (-1.0, 4.0) } else { (0.0, 0.0) };
        let mut out = vec![0i64; 6];
        unsafe { f(code, p0, p1, 6, xb.as_ptr(), lx, out.as_mut_ptr()) };
        assert_eq!(
            out,
            host::<i64>(cpu().backend().unary(op, x.view()).unwrap()),
            "{op:?}"
        );
    }
}

#[test]
fn reduction_and_softmax_kernels_match_the_cpu_backend() {
    let Some(lib) = build("reduce") else { return };
    let x = strided_view(DType::F64, 3);
    let xb = base::<f64>(&x);
    type K = unsafe extern "C" fn(i32, i64, i64, *const f64, Strided, Strided, *mut f64);
    for name in ["reduce_block_f64", "reduce_thread_f64"] {
        let f: Symbol<K> = unsafe { lib.get(name.as_bytes()) }.unwrap();
        for axes in [&[0usize][..], &[1], &[0, 2], &[0, 1, 2]] {
            for (code, op) in [(0, ReduceOp::Sum), (1, ReduceOp::Max), (2, ReduceOp::Min)] {
                let (kept, red) = split(x.layout(), axes);
                let lo = Strided::joint("t", &[&kept]).unwrap()[0];
                let li = Strided::joint("t", &[&red]).unwrap()[0];
                let mut out = vec![0.0; kept.numel()];
                unsafe {
                    f(
                        code,
                        kept.numel() as i64,
                        red.numel() as i64,
                        xb.as_ptr(),
                        lo,
                        li,
                        out.as_mut_ptr(),
                    )
                };
                let want = host::<f64>(cpu().backend().reduce(op, x.view(), axes).unwrap());
                same(&format!("{name} {op:?} {axes:?}"), &out, &want, 1e-14);
            }
        }
    }
    type A = unsafe extern "C" fn(i32, i64, i64, i64, *const f64, Strided, *mut i64);
    let f: Symbol<A> = unsafe { lib.get(b"arg_reduce_f64") }.unwrap();
    for axis in 0..3 {
        for (code, op) in [(1, ReduceOp::ArgMax), (2, ReduceOp::ArgMin)] {
            let (kept, _) = split(x.layout(), &[axis]);
            let lo = Strided::joint("t", &[&kept]).unwrap()[0];
            let mut out = vec![0i64; kept.numel()];
            let (n, st) = (x.dims()[axis] as i64, x.layout().strides()[axis] as i64);
            unsafe {
                f(
                    code,
                    kept.numel() as i64,
                    n,
                    st,
                    xb.as_ptr(),
                    lo,
                    out.as_mut_ptr(),
                )
            };
            assert_eq!(
                out,
                host::<i64>(cpu().backend().reduce(op, x.view(), &[axis]).unwrap()),
                "{op:?} {axis}"
            );
        }
    }
    let c = x.contiguous().unwrap();
    let cb = base::<f64>(&c);
    type S = unsafe extern "C" fn(i64, i64, *const f64, *mut f64, i32);
    let f: Symbol<S> = unsafe { lib.get(b"softmax_f64") }.unwrap();
    let n = c.dims()[2];
    for log in [false, true] {
        let mut out = vec![0.0; c.numel()];
        unsafe {
            f(
                (c.numel() / n) as i64,
                n as i64,
                cb.as_ptr(),
                out.as_mut_ptr(),
                log as i32,
            )
        };
        let want = host::<f64>(
            cpu()
                .fused()
                .unwrap()
                .softmax(c.view(), 2, log)
                .unwrap()
                .unwrap(),
        );
        same("softmax", &out, &want, 1e-14);
    }
}

#[test]
fn gather_scatter_and_copy_kernels_match_the_cpu_backend() {
    let Some(lib) = build("shape") else { return };
    let x = strided_view(DType::F64, 4); // [5, 4, 3]
    let xb = base::<f64>(&x);
    let idx_t = Tensor::from_vec(
        vec![3i64, 0, 1, 1, 2, 0, 3, 3, 2, 0, 1, 2],
        &[2, 2, 3],
        &cpu(),
    )
    .unwrap();
    let ib = base::<i64>(&idx_t);
    // gather along dim 1 of x with a [2, 2, 3] index.
    let (lx, sd) = shape::gather_view(x.layout(), 1, idx_t.dims());
    let s = Strided::joint("t", &[&lx, idx_t.layout()]).unwrap();
    type G = unsafe extern "C" fn(
        i64,
        *const f64,
        Strided,
        i64,
        i64,
        *const i64,
        Strided,
        *mut f64,
        *mut i64,
    );
    let f: Symbol<G> = unsafe { lib.get(b"gather_f64") }.unwrap();
    let (mut out, mut err) = (vec![0.0; 12], [0i64; 2]);
    unsafe {
        f(
            12,
            xb.as_ptr(),
            s[0],
            sd,
            4,
            ib.as_ptr(),
            s[1],
            out.as_mut_ptr(),
            err.as_mut_ptr(),
        )
    };
    assert_eq!(err, [0, 0]);
    let want = host::<f64>(cpu().backend().gather(x.view(), 1, idx_t.view()).unwrap());
    same("gather", &out, &want, 0.0);
    // An index past the end sets the flag with the offending value.
    unsafe {
        f(
            12,
            xb.as_ptr(),
            s[0],
            sd,
            3,
            ib.as_ptr(),
            s[1],
            out.as_mut_ptr(),
            err.as_mut_ptr(),
        )
    };
    assert_eq!(err, [1, 3]);
    // scatter_add of a strided src into a [3, 4, 3] output along dim 1.
    let src = strided_view(DType::F64, 5)
        .narrow(0, 0, 2)
        .unwrap()
        .narrow(1, 0, 2)
        .unwrap();
    let sb = base::<f64>(&src);
    let (lo, sd) = shape::scatter_view(&[3, 4, 3], 1, idx_t.dims());
    let s = Strided::joint("t", &[src.layout(), idx_t.layout(), &lo]).unwrap();
    type SA = unsafe extern "C" fn(
        i64,
        *const f64,
        Strided,
        *const i64,
        Strided,
        Strided,
        i64,
        i64,
        *mut f64,
        *mut i64,
    );
    let f: Symbol<SA> = unsafe { lib.get(b"scatter_add_f64") }.unwrap();
    let (mut out, mut err) = (vec![0.0; 36], [0i64; 2]);
    unsafe {
        f(
            12,
            sb.as_ptr(),
            s[0],
            ib.as_ptr(),
            s[1],
            s[2],
            sd,
            4,
            out.as_mut_ptr(),
            err.as_mut_ptr(),
        )
    };
    assert_eq!(err, [0, 0]);
    let want = host::<f64>(
        cpu()
            .backend()
            .scatter_add(&[3, 4, 3], 1, idx_t.view(), src.view())
            .unwrap(),
    );
    same("scatter_add", &out, &want, 1e-15);
    // copy into a region (the assemble primitive): columns 1..13 of a [5, 13] output.
    let region = Layout::new(x.dims().to_vec(), vec![13, 3, 1], 1);
    let s = Strided::joint("t", &[x.layout(), &region]).unwrap();
    type CP = unsafe extern "C" fn(i64, *const f64, Strided, *mut f64, Strided);
    let f: Symbol<CP> = unsafe { lib.get(b"copy_f64") }.unwrap();
    let mut out = vec![-1.0; 65];
    unsafe { f(x.numel() as i64, xb.as_ptr(), s[0], out.as_mut_ptr(), s[1]) };
    let want = host::<f64>(
        cpu()
            .backend()
            .assemble(65, DType::F64, -1.0, &[(region.clone(), x.view())])
            .unwrap(),
    );
    same("copy", &out, &want, 0.0);
}

#[test]
fn im2col_col2im_and_integer_matmul_kernels_match_the_cpu_backend() {
    let Some(lib) = build("conv") else { return };
    let x = Tensor::randn_with(
        &[2, 3, 7, 6],
        0.0,
        1.0,
        DType::F64,
        &mut Generator::new(6),
        &cpu(),
    )
    .unwrap();
    let xb = base::<f64>(&x);
    for w in [
        Window {
            k: [3, 2],
            s: [2, 1],
            d: [2, 1],
            p: [1, 0],
            out: [3, 5],
        },
        Window {
            k: [2, 2],
            s: [2, 2],
            d: [1, 1],
            p: [0, 1],
            out: [3, 3],
        },
    ] {
        let n = 6 * w.taps() * w.positions();
        type UF = unsafe extern "C" fn(i64, *const f64, i64, i64, Win, f64, *mut f64);
        let f: Symbol<UF> = unsafe { lib.get(b"unfold_f64") }.unwrap();
        let mut cols = vec![0.0; n];
        unsafe {
            f(
                n as i64,
                xb.as_ptr(),
                7,
                6,
                Win::from(&w),
                -2.0,
                cols.as_mut_ptr(),
            )
        };
        let want = host::<f64>(
            cpu()
                .fused()
                .unwrap()
                .unfold2d(x.view(), &w, -2.0)
                .unwrap()
                .unwrap(),
        );
        same("unfold", &cols, &want, 0.0);
        let ct = Tensor::from_vec(cols.clone(), &[2, 3, w.taps(), w.positions()], &cpu()).unwrap();
        type FO = unsafe extern "C" fn(i64, *const f64, i64, i64, Win, *mut f64);
        let f: Symbol<FO> = unsafe { lib.get(b"fold_f64") }.unwrap();
        let mut img = vec![0.0; 2 * 3 * 7 * 6];
        unsafe {
            f(
                img.len() as i64,
                cols.as_ptr(),
                7,
                6,
                Win::from(&w),
                img.as_mut_ptr(),
            )
        };
        let want = host::<f64>(
            cpu()
                .fused()
                .unwrap()
                .fold2d(ct.view(), &w, [7, 6])
                .unwrap()
                .unwrap(),
        );
        same("fold", &img, &want, 1e-15);
    }
    let lib = build("matmul").unwrap();
    let a = Tensor::from_vec(
        (0..24).map(|i| i * 7 % 11 - 5).collect::<Vec<i64>>(),
        &[2, 3, 4],
        &cpu(),
    )
    .unwrap();
    let b = Tensor::from_vec(
        (0..16).map(|i| i * 5 % 7 - 3).collect::<Vec<i64>>(),
        &[2, 4, 2],
        &cpu(),
    )
    .unwrap();
    type MM = unsafe extern "C" fn(i64, i64, i64, i64, *const i64, *const i64, *mut i64);
    let f: Symbol<MM> = unsafe { lib.get(b"matmul_i64") }.unwrap();
    let mut out = vec![0i64; 12];
    unsafe {
        f(
            2,
            3,
            2,
            4,
            base::<i64>(&a).as_ptr(),
            base::<i64>(&b).as_ptr(),
            out.as_mut_ptr(),
        )
    };
    assert_eq!(out, a.matmul(&b).unwrap().to_vec::<i64>().unwrap());
    let _ = HostData::I64(out);
}

#[test]
fn half_kernels_match_the_half_crate_and_the_cpu_backend() {
    use tessera_core::half::{bf16, f16};
    let Some(lib) = build("half") else { return };
    // Casts from f32: every rounding case the half crate handles (ties, subnormals, overflow, NaN).
    let xs: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -2.5,
        65504.0,
        65520.0,
        1e6,
        -1e6,
        6e-8,
        3e-8,
        1e-40,
        0.1,
        1.0 + 2f32.powi(-10),
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        3.3895314e38,
        1.0039062,
        1.0117188,
        -7.0e-39,
    ];
    let n = xs.len();
    type C<S, D> = unsafe extern "C" fn(i64, *const S, Strided, *mut D);
    let to16: Symbol<C<f32, u16>> = unsafe { lib.get(b"cast_f32_f16") }.unwrap();
    let to_b16: Symbol<C<f32, u16>> = unsafe { lib.get(b"cast_f32_bf16") }.unwrap();
    let (mut h, mut b) = (vec![0u16; n], vec![0u16; n]);
    unsafe { to16(n as i64, xs.as_ptr(), Strided::flat(n, 0), h.as_mut_ptr()) };
    unsafe { to_b16(n as i64, xs.as_ptr(), Strided::flat(n, 0), b.as_mut_ptr()) };
    for (i, x) in xs.iter().enumerate() {
        let (wh, wb) = (f16::from_f32(*x), bf16::from_f32(*x));
        if x.is_nan() {
            assert!(f16::from_bits(h[i]).is_nan() && bf16::from_bits(b[i]).is_nan());
        } else {
            assert_eq!(h[i], wh.to_bits(), "f16 of {x:e}");
            assert_eq!(b[i], wb.to_bits(), "bf16 of {x:e}");
        }
    }
    // And back to f32 exactly.
    let from16: Symbol<C<u16, f32>> = unsafe { lib.get(b"cast_f16_f32") }.unwrap();
    let from_b16: Symbol<C<u16, f32>> = unsafe { lib.get(b"cast_bf16_f32") }.unwrap();
    let (mut y, mut z) = (vec![0f32; n], vec![0f32; n]);
    unsafe { from16(n as i64, h.as_ptr(), Strided::flat(n, 0), y.as_mut_ptr()) };
    unsafe { from_b16(n as i64, b.as_ptr(), Strided::flat(n, 0), z.as_mut_ptr()) };
    for i in 0..n {
        let (wy, wz) = (
            f16::from_bits(h[i]).to_f32(),
            bf16::from_bits(b[i]).to_f32(),
        );
        assert!(
            y[i] == wy || (y[i].is_nan() && wy.is_nan()),
            "f16 -> f32 {i}"
        );
        assert!(
            z[i] == wz || (z[i].is_nan() && wz.is_nan()),
            "bf16 -> f32 {i}"
        );
    }
    // Unary and binary ops on a strided f16 view against the CPU backend (which rounds after
    // each step of a composite formula, so allow a few half ulps).
    for (dtype, s) in [(DType::F16, "f16"), (DType::BF16, "bf16")] {
        let x = strided_view(DType::F32, 8).to_dtype(dtype).unwrap();
        let xb: Vec<u16> = match dtype {
            DType::F16 => base::<f16>(&x).iter().map(|v| v.to_bits()).collect(),
            _ => base::<bf16>(&x).iter().map(|v| v.to_bits()).collect(),
        };
        let lx = Strided::joint("t", &[x.layout()]).unwrap()[0];
        let n = x.numel();
        let as_f64 = |v: &[u16]| -> Vec<f64> {
            v.iter()
                .map(|&b| match dtype {
                    DType::F16 => f16::from_bits(b).to_f64(),
                    _ => bf16::from_bits(b).to_f64(),
                })
                .collect()
        };
        let tol = if dtype == DType::F16 { 4e-3 } else { 3e-2 };
        type U = unsafe extern "C" fn(i32, f64, f64, i64, *const u16, Strided, *mut u16);
        let f: Symbol<U> = unsafe { lib.get(format!("unary_{s}").as_bytes()) }.unwrap();
        for (code, op) in [
            (3, UnaryOp::Exp),
            (6, UnaryOp::Tanh),
            (7, UnaryOp::Sigmoid),
            (8, UnaryOp::Relu),
            (0, UnaryOp::Neg),
        ] {
            let mut out = vec![0u16; n];
            unsafe { f(code, 0.0, 0.0, n as i64, xb.as_ptr(), lx, out.as_mut_ptr()) };
            let want = cpu().backend().unary(op, x.view()).unwrap();
            let want = Tensor::from_buffer(want, Layout::contiguous(&[n]), &cpu())
                .unwrap()
                .to_vec_f64()
                .unwrap();
            same(&format!("unary {op:?} {s}"), &as_f64(&out), &want, tol);
        }
        type B = unsafe extern "C" fn(i32, i64, *const u16, Strided, *const u16, Strided, *mut u16);
        let f: Symbol<B> = unsafe { lib.get(format!("binary_{s}").as_bytes()) }.unwrap();
        for (code, op) in [
            (0, BinaryOp::Add),
            (2, BinaryOp::Mul),
            (5, BinaryOp::Maximum),
            (11, BinaryOp::Gt),
        ] {
            let mut out = vec![0u16; n];
            unsafe {
                f(
                    code,
                    n as i64,
                    xb.as_ptr(),
                    lx,
                    xb.as_ptr(),
                    lx,
                    out.as_mut_ptr(),
                )
            };
            let want = cpu().backend().binary(op, x.view(), x.view()).unwrap();
            let want = Tensor::from_buffer(want, Layout::contiguous(&[n]), &cpu())
                .unwrap()
                .to_vec_f64()
                .unwrap();
            same(&format!("binary {op:?} {s}"), &as_f64(&out), &want, tol);
        }
    }
}

/// The LSTM cell and its backward (rnn.cu) give the CPU backend's `lstm_cell` /
/// `lstm_cell_backward` on the same rows, in f64 and f32 (the CPU's f32 sigmoid and tanh are
/// its own polynomials, hence the looser f32 tolerance).
#[test]
fn lstm_cell_kernels_match_the_cpu_backend() {
    let Some(lib) = build("rnn") else { return };
    let (b, h) = (3usize, 5usize);
    for (dtype, tol) in [(DType::F64, 1e-14), (DType::F32, 1e-6)] {
        let draw = |shape: &[usize], seed: u64| {
            Tensor::randn_with(shape, 0.0, 1.5, dtype, &mut Generator::new(seed), &cpu()).unwrap()
        };
        let (x, r, c) = (draw(&[b, 4 * h], 1), draw(&[b, 4 * h], 2), draw(&[b, h], 3));
        let (dh, dc) = (draw(&[b, h], 4), draw(&[b, h], 5));
        let dev = cpu();
        let be = dev.fused().expect("the CPU has fused kernels");
        let want = be.lstm_cell(x.view(), r.view(), c.view()).unwrap().unwrap();
        let want: Vec<Vec<f64>> = want.into_iter().map(to_f64s).collect();
        let cell = |k: usize| {
            Tensor::from_vec(
                want[k].clone(),
                &[b, if k == 0 { 4 * h } else { h }],
                &cpu(),
            )
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
        };
        let (act, tc) = (cell(0), cell(2));
        let want_back = be
            .lstm_cell_backward(act.view(), c.view(), tc.view(), dh.view(), dc.view())
            .unwrap()
            .unwrap();
        let want_back: Vec<Vec<f64>> = want_back.into_iter().map(to_f64s).collect();
        macro_rules! run {
            ($t:ty, $s:literal) => {{
                let v = |t: &Tensor| base::<$t>(t);
                let (xs, rs, cs) = (v(&x), v(&r), v(&c));
                let mut out = [
                    vec![0 as $t; b * 4 * h],
                    vec![0 as $t; b * h],
                    vec![0 as $t; b * h],
                    vec![0 as $t; b * h],
                ];
                type F = unsafe extern "C" fn(
                    i64,
                    i64,
                    *const $t,
                    *const $t,
                    *const $t,
                    *mut $t,
                    *mut $t,
                    *mut $t,
                    *mut $t,
                );
                let f: Symbol<F> =
                    unsafe { lib.get(concat!("lstm_cell_", $s).as_bytes()) }.unwrap();
                let [o0, o1, o2, o3] = &mut out;
                unsafe {
                    f(
                        b as i64,
                        h as i64,
                        xs.as_ptr(),
                        rs.as_ptr(),
                        cs.as_ptr(),
                        o0.as_mut_ptr(),
                        o1.as_mut_ptr(),
                        o2.as_mut_ptr(),
                        o3.as_mut_ptr(),
                    )
                };
                for (k, (got, want)) in out.iter().zip(&want).enumerate() {
                    let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
                    same(&format!("lstm_cell {} output {k}", $s), &got, want, tol);
                }
                let (a, cp, t, dhs, dcs) = (v(&act), v(&c), v(&tc), v(&dh), v(&dc));
                let mut back = [vec![0 as $t; b * 4 * h], vec![0 as $t; b * h]];
                type G = unsafe extern "C" fn(
                    i64,
                    i64,
                    *const $t,
                    *const $t,
                    *const $t,
                    *const $t,
                    *const $t,
                    *mut $t,
                    *mut $t,
                );
                let g: Symbol<G> =
                    unsafe { lib.get(concat!("lstm_cell_backward_", $s).as_bytes()) }.unwrap();
                let [d0, d1] = &mut back;
                unsafe {
                    g(
                        b as i64,
                        h as i64,
                        a.as_ptr(),
                        cp.as_ptr(),
                        t.as_ptr(),
                        dhs.as_ptr(),
                        dcs.as_ptr(),
                        d0.as_mut_ptr(),
                        d1.as_mut_ptr(),
                    )
                };
                for (k, (got, want)) in back.iter().zip(&want_back).enumerate() {
                    let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
                    same(
                        &format!("lstm_cell_backward {} output {k}", $s),
                        &got,
                        want,
                        tol,
                    );
                }
            }};
        }
        match dtype {
            DType::F64 => run!(f64, "f64"),
            _ => run!(f32, "f32"),
        }
    }
}

/// A CPU buffer's elements as f64.
fn to_f64s(b: Arc<dyn Buffer>) -> Vec<f64> {
    download(b).to_f64()
}

/// Contiguous, 16-byte aligned operands take the kernels' vector path (4 floats or 2 doubles
/// per access, then a scalar tail), and give what the CPU backend gives; an operand one
/// element off the alignment takes the strided path and agrees too.
#[test]
fn elementwise_vector_path_matches_the_cpu_backend() {
    let Some(lib) = build("elementwise") else {
        return;
    };
    let n = 4 * 5 + 3;
    let draw = |seed: u64| {
        Tensor::randn_with(
            &[n],
            0.0,
            2.0,
            DType::F32,
            &mut Generator::new(seed),
            &cpu(),
        )
        .unwrap()
    };
    let (a, b) = (draw(21), draw(22));
    let (av, bv) = (base::<f32>(&a), base::<f32>(&b));
    // u128 storage: 16-byte aligned, as the device's allocations are.
    let aligned = |v: &[f32], shift: usize| {
        let mut store = vec![0u128; (v.len() + shift).div_ceil(4)];
        let p = store.as_mut_ptr() as *mut f32;
        for (i, &x) in v.iter().enumerate() {
            // SAFETY: the store holds at least len + shift floats.
            unsafe { *p.add(i + shift) = x };
        }
        store
    };
    type B = unsafe extern "C" fn(i32, i64, *const f32, Strided, *const f32, Strided, *mut f32);
    type U = unsafe extern "C" fn(i32, f64, f64, i64, *const f32, Strided, *mut f32);
    let fb: Symbol<B> = unsafe { lib.get(b"binary_f32") }.unwrap();
    let fu: Symbol<U> = unsafe { lib.get(b"unary_f32") }.unwrap();
    for shift in [0usize, 1] {
        let (sa, sb) = (aligned(&av, shift), aligned(&bv, shift));
        let mut out = vec![0u128; n.div_ceil(4)];
        let o = out.as_mut_ptr() as *mut f32;
        let l = Strided::flat(n, shift);
        let got =
            |o: *mut f32| -> Vec<f64> { (0..n).map(|i| unsafe { *o.add(i) } as f64).collect() };
        for (code, op) in [
            (0, BinaryOp::Add),
            (2, BinaryOp::Mul),
            (5, BinaryOp::Maximum),
        ] {
            let (pa, pb) = (sa.as_ptr() as *const f32, sb.as_ptr() as *const f32);
            unsafe { fb(code, n as i64, pa, l, pb, l, o) };
            let want = f64s(host::<f32>(
                cpu().backend().binary(op, a.view(), b.view()).unwrap(),
            ));
            same(
                &format!("binary {op:?}, shift {shift}"),
                &got(o),
                &want,
                0.0,
            );
        }
        for (code, op) in [(8, UnaryOp::Relu), (0, UnaryOp::Neg), (11, UnaryOp::Square)] {
            unsafe { fu(code, 0.0, 0.0, n as i64, sa.as_ptr() as *const f32, l, o) };
            let want = f64s(host::<f32>(cpu().backend().unary(op, a.view()).unwrap()));
            same(&format!("unary {op:?}, shift {shift}"), &got(o), &want, 0.0);
        }
    }
}

/// The cross-entropy row kernel and its backward (reduce.cu) give the CPU backend's
/// `cross_entropy` / `cross_entropy_backward` (f64; with and without label smoothing, an
/// ignored row, the gradient one broadcast value or one per row), and a target out of range
/// raises the error flag with that index.
#[test]
fn cross_entropy_kernels_match_the_cpu_backend() {
    let Some(lib) = build("reduce") else { return };
    let (m, c) = (6usize, 5usize);
    let x = Tensor::randn_with(
        &[m, c],
        0.0,
        2.0,
        DType::F64,
        &mut Generator::new(31),
        &cpu(),
    )
    .unwrap();
    let targets: Vec<i64> = vec![0, 4, 2, -100, 1, 3];
    let t = Tensor::from_vec(targets.clone(), &[m], &cpu()).unwrap();
    type F = unsafe extern "C" fn(
        i64,
        i64,
        *const f64,
        *const i64,
        f64,
        f64,
        i64,
        *mut f64,
        *mut f64,
        *mut i64,
    );
    type G = unsafe extern "C" fn(
        i64,
        i64,
        *const f64,
        *const i64,
        *const f64,
        *const f64,
        i64,
        f64,
        f64,
        *mut f64,
    );
    let f: Symbol<F> = unsafe { lib.get(b"cross_entropy_f64") }.unwrap();
    let g: Symbol<G> = unsafe { lib.get(b"cross_entropy_backward_f64") }.unwrap();
    let dev = cpu();
    let be = dev.fused().expect("the CPU has fused kernels");
    for eps in [0.0, 0.1] {
        let [loss, lp, w] = be
            .cross_entropy(x.view(), t.view(), eps, -100)
            .unwrap()
            .unwrap();
        let (lp, want_loss, want_w) = (host::<f64>(lp), host::<f64>(loss), host::<f64>(w));
        let (keep, spread) = (1.0 - eps, eps / c as f64);
        let (mut got_loss, mut got_w, mut err) = (vec![0.0; m], vec![0.0; m], [0i64; 2]);
        unsafe {
            f(
                m as i64,
                c as i64,
                lp.as_ptr(),
                targets.as_ptr(),
                keep,
                spread,
                -100,
                got_loss.as_mut_ptr(),
                got_w.as_mut_ptr(),
                err.as_mut_ptr(),
            )
        };
        assert_eq!(err, [0, 0], "no bad target");
        same(&format!("loss, ε {eps}"), &got_loss, &want_loss, 1e-14);
        same(&format!("weights, ε {eps}"), &got_w, &want_w, 0.0);
        let per_row: Vec<f64> = (0..m).map(|r| 0.5 + r as f64).collect();
        for (gv, gs) in [(vec![0.25], 0i64), (per_row, 1)] {
            let lpt = Tensor::from_vec(lp.clone(), &[m, c], &cpu()).unwrap();
            let wt = Tensor::from_vec(want_w.clone(), &[m], &cpu()).unwrap();
            let gt = Tensor::from_vec(gv.clone(), &[gv.len()], &cpu())
                .unwrap()
                .expand(&[m as isize])
                .unwrap();
            let want = host::<f64>(
                be.cross_entropy_backward(lpt.view(), t.view(), wt.view(), gt.view(), eps, -100)
                    .unwrap()
                    .unwrap(),
            );
            let mut dx = vec![0.0; m * c];
            unsafe {
                g(
                    m as i64,
                    c as i64,
                    lp.as_ptr(),
                    targets.as_ptr(),
                    want_w.as_ptr(),
                    gv.as_ptr(),
                    gs,
                    keep,
                    spread,
                    dx.as_mut_ptr(),
                )
            };
            same(&format!("dx, ε {eps}, g stride {gs}"), &dx, &want, 1e-14);
        }
    }
    let bad = [0i64, 7, 2, 1, 1, 3];
    let (mut l, mut w, mut err) = (vec![0.0; m], vec![0.0; m], [0i64; 2]);
    let lp = vec![0.0; m * c];
    unsafe {
        f(
            m as i64,
            c as i64,
            lp.as_ptr(),
            bad.as_ptr(),
            1.0,
            0.0,
            -100,
            l.as_mut_ptr(),
            w.as_mut_ptr(),
            err.as_mut_ptr(),
        )
    };
    assert_eq!(err, [1, 7]);
}
