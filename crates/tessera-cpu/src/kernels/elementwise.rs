//! Unary and binary maps, `where`, casts, fills and random numbers.

use super::{map1, map2, map3, Float, Num, CHUNK, PAR_MIN};
use crate::buffer::{alloc, CpuElem};
use rayon::prelude::*;
use tessera_core::{BinaryOp, Distribution, Layout, UnaryOp};

/// Unary ops defined for every numeric type (`None` for float-only ones).
pub fn unary_num<T: Num>(op: UnaryOp, x: &[T], l: &Layout) -> Option<Vec<T>> {
    let z = T::zero();
    Some(match op {
        UnaryOp::Neg => map1(x, l, |v: T| -v),
        UnaryOp::Abs => map1(x, l, |v: T| v.abs()),
        UnaryOp::Sign => map1(x, l, move |v: T| {
            if v > z {
                T::one()
            } else if v < z {
                -T::one()
            } else {
                v
            }
        }),
        UnaryOp::Relu => map1(x, l, relu),
        UnaryOp::Square => map1(x, l, |v: T| v * v),
        UnaryOp::AddScalar(c) => {
            let c = T::from_f64(c);
            map1(x, l, move |v: T| v + c)
        }
        UnaryOp::MulScalar(c) => {
            let c = T::from_f64(c);
            map1(x, l, move |v: T| v * c)
        }
        UnaryOp::Clamp { min, max } => {
            let (lo, hi) = (T::from_f64(min), T::from_f64(max));
            map1(x, l, move |v: T| {
                if v < lo {
                    lo
                } else if v > hi {
                    hi
                } else {
                    v
                }
            })
        }
        _ => return None,
    })
}

/// Every unary op, for floating-point types.
pub fn unary_float<T: Float>(op: UnaryOp, x: &[T], l: &Layout) -> Vec<T> {
    if let Some(v) = unary_num(op, x, l) {
        return v;
    }
    let one = T::one();
    match op {
        UnaryOp::Exp => map1(x, l, |v: T| v.exp()),
        UnaryOp::Log => map1(x, l, |v: T| v.ln()),
        UnaryOp::Sqrt => map1(x, l, |v: T| v.sqrt()),
        UnaryOp::Tanh => map1(x, l, |v: T| v.tanh()),
        // Both branches keep exp's argument non-positive, so nothing overflows.
        UnaryOp::Sigmoid => map1(x, l, move |v: T| {
            if v >= T::zero() {
                one / (one + (-v).exp())
            } else {
                let e = v.exp();
                e / (one + e)
            }
        }),
        UnaryOp::Erf => map1(x, l, |v: T| v.erf()),
        UnaryOp::Recip => map1(x, l, move |v: T| one / v),
        UnaryOp::LeakyRelu(s) => {
            let s = T::from_f64(s);
            map1(x, l, move |v: T| if v > T::zero() { v } else { v * s })
        }
        UnaryOp::Softplus { beta, threshold } => {
            let (b, t) = (T::from_f64(beta), T::from_f64(threshold));
            // log(1 + e^z) = max(z, 0) + log1p(e^-|z|): exact and overflow-free.
            map1(x, l, move |v: T| {
                let z = v * b;
                if z > t {
                    v
                } else {
                    let m = if z > T::zero() { z } else { T::zero() };
                    (m + (-z.abs()).exp().ln_1p()) / b
                }
            })
        }
        UnaryOp::PowScalar(p) => {
            let p = T::from_f64(p);
            map1(x, l, move |v: T| v.powf(p))
        }
        _ => unreachable!("unary_num handles {op:?}"),
    }
}

#[inline(always)]
fn flag<T: Num>(b: bool) -> T {
    if b {
        T::one()
    } else {
        T::zero()
    }
}

/// Binary ops; `pow` is float-only and handled by the caller.
pub fn binary<T: Num>(
    op: BinaryOp,
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    pow: impl Fn(T, T) -> T + Sync,
) -> Vec<T> {
    match op {
        BinaryOp::Add => map2(a, la, b, lb, |x: T, y: T| x + y),
        BinaryOp::Sub => map2(a, la, b, lb, |x: T, y: T| x - y),
        BinaryOp::Mul => map2(a, la, b, lb, |x: T, y: T| x * y),
        BinaryOp::Div => map2(a, la, b, lb, |x: T, y: T| x / y),
        BinaryOp::Pow => map2(a, la, b, lb, pow),
        // NaN wins, as in PyTorch.
        BinaryOp::Maximum => map2(
            a,
            la,
            b,
            lb,
            |x: T, y: T| if x > y || x.is_nan() { x } else { y },
        ),
        BinaryOp::Minimum => map2(
            a,
            la,
            b,
            lb,
            |x: T, y: T| if x < y || x.is_nan() { x } else { y },
        ),
        BinaryOp::Eq => map2(a, la, b, lb, |x: T, y: T| flag::<T>(x == y)),
        BinaryOp::Ne => map2(a, la, b, lb, |x: T, y: T| flag::<T>(x != y)),
        BinaryOp::Lt => map2(a, la, b, lb, |x: T, y: T| flag::<T>(x < y)),
        BinaryOp::Le => map2(a, la, b, lb, |x: T, y: T| flag::<T>(x <= y)),
        BinaryOp::Gt => map2(a, la, b, lb, |x: T, y: T| flag::<T>(x > y)),
        BinaryOp::Ge => map2(a, la, b, lb, |x: T, y: T| flag::<T>(x >= y)),
    }
}

/// `c != 0 ? a : b`.
pub fn where_cond<C: CpuElem, T: CpuElem>(
    c: &[C],
    lc: &Layout,
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
) -> Vec<T> {
    map3(
        c,
        lc,
        a,
        la,
        b,
        lb,
        |c: C, x: T, y: T| if c.to_f64() != 0.0 { x } else { y },
    )
}

/// Conversion between element types.
pub fn cast<T: CpuElem, U: CpuElem>(x: &[T], l: &Layout) -> Vec<U> {
    map1(x, l, |v: T| U::from_f64(v.to_f64()))
}

/// `len` copies of `value`.
pub fn fill<T: CpuElem>(len: usize, value: f64) -> Vec<T> {
    let v = T::from_f64(value);
    let mut out = alloc::<T>(len);
    if len >= PAR_MIN {
        out.par_chunks_mut(CHUNK).for_each(|c| c.fill(v));
    } else {
        out.fill(v);
    }
    out
}

/// Random numbers: element `i` from Philox at counter `offset + i`.
pub fn random<T: Num>(len: usize, dist: Distribution, seed: u64, offset: u64) -> Vec<T> {
    use tessera_core::random::{normal, uniform};
    let mut out = alloc::<T>(len);
    let gen = |i: usize| -> T {
        let idx = offset + i as u64;
        T::from_f64(match dist {
            Distribution::Uniform { low, high } => low + (high - low) * uniform(seed, idx),
            Distribution::Normal { mean, std } => mean + std * normal(seed, idx),
        })
    };
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        for (k, v) in o.iter_mut().enumerate() {
            *v = gen(c * CHUNK + k);
        }
    });
    out
}

/// `max(x, 0)`, the one ReLU rule of the CPU kernels: `x <= 0` rather than `x > 0`, so a NaN
/// stays NaN (PyTorch's rule).
#[inline(always)]
pub fn relu<T: Num>(x: T) -> T {
    if x <= T::zero() {
        T::zero()
    } else {
        x
    }
}

/// ReLU's gradient from its output: 0 where `y <= 0`, else `g` (also at a NaN, as PyTorch).
#[inline(always)]
pub fn relu_grad<T: Num>(g: T, y: T) -> T {
    if y <= T::zero() {
        T::zero()
    } else {
        g
    }
}

/// GELU, `0.5·x·(1 + erf(x/√2))`, or with `tanh_form` `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))`
/// (the scalar form; f32 runs [`super::vmath::gelu`]).
#[inline(always)]
pub fn gelu<T: Float>(x: T, tanh_form: bool) -> T {
    let half = T::from_f64(0.5);
    let inner = if tanh_form {
        let cube = T::from_f64(0.044_715) * x * x * x;
        (T::from_f64((2.0 / std::f64::consts::PI).sqrt()) * (x + cube)).tanh()
    } else {
        (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf()
    };
    half * x * (T::one() + inner)
}

/// GELU's gradient `g·gelu'(x)` (PyTorch's rules; see [`super::vmath::gelu_backward`]).
#[inline(always)]
pub fn gelu_grad<T: Float>(g: T, x: T, tanh_form: bool) -> T {
    let (half, one) = (T::from_f64(0.5), T::one());
    let d = if tanh_form {
        let (beta, kappa) = (
            T::from_f64((2.0 / std::f64::consts::PI).sqrt()),
            T::from_f64(0.044_715),
        );
        let t = (beta * (x + kappa * x * x * x)).tanh();
        let inner_d = beta * (one + T::from_f64(3.0) * kappa * x * x);
        half * (one + t) + half * x * (one - t * t) * inner_d
    } else {
        let cdf = half * (one + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf());
        let pdf = (-half * x * x).exp()
            * T::from_f64(0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
        cdf + x * pdf
    };
    g * d
}
