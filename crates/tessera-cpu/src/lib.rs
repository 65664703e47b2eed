//! # tessera-cpu
//!
//! The CPU backend of tessera: GEMM through `matrixmultiply`, elementwise and reduction kernels
//! with contiguous fast paths that LLVM vectorises, `rayon` above a size threshold, and general
//! strided paths for views.
//!
//! Threads: everything, GEMMs included, runs on rayon's pool, which follows
//! `RAYON_NUM_THREADS` or [`set_num_threads`]; matrixmultiply is kept single-threaded
//! (`MATMUL_NUM_THREADS=1`, set when the device is created) and called on blocks of the output.

mod buffer;
pub mod kernels;

pub use buffer::{CpuBuffer, CpuStorage};

use buffer::CpuElem;
#[cfg(target_arch = "x86_64")]
use kernels::conv_direct as cd;
use kernels::elementwise::{relu, relu_grad};
use kernels::{
    conv as cv, elementwise as ew, matmul as mm, reduce as rd, rnn, shape as sh, winograd as wg,
    Float, Num,
};
use std::sync::{Arc, OnceLock};
use tessera_core::backend::fallback;
use tessera_core::{
    backend::{LstmCell, LstmSequence, LstmSequenceGrads},
    Backend, BinaryOp, Buffer, DType, Device, Distribution, Error, HostData, Layout, ReduceOp,
    Result, UnaryOp, View, Window,
};

/// The CPU backend.
#[derive(Debug, Default)]
pub struct CpuBackend;

/// The shared CPU device.
pub fn cpu() -> Device {
    static DEV: OnceLock<Device> = OnceLock::new();
    DEV.get_or_init(|| {
        // GEMMs run on rayon's threads (kernels/matmul.rs); matrixmultiply's own pool, sized
        // when its first GEMM runs, must stay at one thread or the two would nest.
        std::env::set_var("MATMUL_NUM_THREADS", "1");
        Device::new(Arc::new(CpuBackend))
    })
    .clone()
}

/// Uses `n` threads (rayon's pool, which GEMMs share; `0`: `RAYON_NUM_THREADS`, else one per
/// core), **counting the calling thread**: call it from the thread that runs the model, before
/// the first kernel (the pool reads its setting once). That thread becomes the pool's worker 0,
/// so a parallel kernel it starts keeps one share of the work and leaves the rest to be stolen
/// by the other workers, instead of handing the whole kernel to the pool and sleeping until it
/// is done (a futex round trip per kernel). Measured on the 2-core machine, 3 alternating
/// rounds, together with the `x · Wᵀ` kernel that landed with it: W5 22.1 → 32.2 steps/s, W3
/// 348 → 406; on top of that kernel alone, W5's forward + backward 40–52 → 30–36 ms (3 runs).
/// Without this call the pool starts on first
/// use with rayon's defaults, and every parallel kernel is handed over that way. Returns an
/// error if rayon's pool already started with another size.
pub fn set_num_threads(n: usize) -> Result<()> {
    // GEMMs are split across rayon's threads (kernels/matmul.rs); matrixmultiply's own pool
    // stays at one thread.
    std::env::set_var("MATMUL_NUM_THREADS", "1");
    let n = match n {
        0 => std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v: &usize| v > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |p| p.get())),
        n => n,
    };
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    match rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .use_current_thread()
        .build_global()
    {
        Ok(()) => Ok(()),
        Err(_) if rayon::current_num_threads() == n => Ok(()),
        Err(e) => Err(Error::Device {
            device: "cpu".into(),
            msg: format!("cannot set {n} threads: {e}"),
        }),
    }
}

/// Number of threads rayon uses.
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}

fn cpu_buf<'a>(op: &'static str, b: &'a dyn Buffer) -> Result<&'a CpuStorage> {
    b.as_any()
        .downcast_ref::<CpuBuffer>()
        .map(|c| &c.data)
        .ok_or_else(|| Error::DeviceMismatch {
            op,
            lhs: "cpu".into(),
            rhs: format!("a {:?} buffer of another backend", b.dtype()),
        })
}

fn typed<'a, T: CpuElem>(op: &'static str, v: View<'a>) -> Result<&'a [T]> {
    let s = cpu_buf(op, v.buf)?;
    let data = T::slice(s).ok_or_else(|| Error::DType {
        op,
        msg: format!("expected {}, got {}", T::DTYPE, v.buf.dtype()),
    })?;
    if v.layout.max_extent() > data.len() {
        return Err(Error::invalid(
            op,
            format!(
                "layout reaches element {} of a buffer of {}",
                v.layout.max_extent(),
                data.len()
            ),
        ));
    }
    Ok(data)
}

fn out<T: CpuElem>(v: Vec<T>) -> Result<Arc<dyn Buffer>> {
    Ok(Arc::new(CpuBuffer::new(T::wrap(v))))
}

/// Runs `$body` with `$T` bound to the element type of `$dtype` (float types only when
/// `float`), so each kernel is written once and monomorphised per dtype.
macro_rules! with_dtype {
    ($dtype:expr, $op:expr, |$T:ident| $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            DType::I64 => {
                type $T = i64;
                $body
            }
            DType::F16 => {
                type $T = half::f16;
                $body
            }
            DType::BF16 => {
                type $T = half::bf16;
                $body
            }
        }
    };
    (float $dtype:expr, $op:expr, |$T:ident| $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            DType::F16 => {
                type $T = half::f16;
                $body
            }
            DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            d => Err(Error::DType {
                op: $op,
                msg: format!("needs a floating-point tensor, got {d}"),
            }),
        }
    };
}

fn unary_typed<T: Float>(op: UnaryOp, x: View<'_>) -> Result<Arc<dyn Buffer>> {
    out(ew::unary_float(op, typed::<T>("unary", x)?, x.layout))
}

fn pow_f<T: Float>(a: T, b: T) -> T {
    a.powf(b)
}

fn binary_typed<T: Num>(
    op: BinaryOp,
    a: View<'_>,
    b: View<'_>,
    pow: fn(T, T) -> T,
) -> Result<Arc<dyn Buffer>> {
    let (x, y) = (typed::<T>("binary", a)?, typed::<T>("binary", b)?);
    out(ew::binary(op, x, a.layout, y, b.layout, pow))
}

fn int_pow(a: i64, b: i64) -> i64 {
    if b < 0 {
        0
    } else {
        a.wrapping_pow(b as u32)
    }
}

/// [`relu`] over a kernel's fresh output, in place (parallel from [`kernels::PAR_MIN`]).
fn relu_in_place<T: kernels::Num>(v: &mut [T]) {
    use rayon::prelude::*;
    let pass = |c: &mut [T]| c.iter_mut().for_each(|x| *x = relu(*x));
    if v.len() < kernels::PAR_MIN {
        pass(v)
    } else {
        v.par_chunks_mut(kernels::CHUNK).for_each(pass)
    }
}

impl CpuBackend {
    /// `f` over two operands of one shape (any layouts) into a new contiguous buffer.
    fn map2_typed<T: kernels::Num>(
        &self,
        op: &'static str,
        a: View<'_>,
        b: View<'_>,
        f: impl Fn(T, T) -> T + Sync + Send + Copy,
    ) -> Result<Arc<dyn Buffer>> {
        let (x, y) = (typed::<T>(op, a)?, typed::<T>(op, b)?);
        out(kernels::map2(x, a.layout, y, b.layout, f))
    }

    /// Runs `f` on `x` converted to f32 and converts the result back to `x`'s dtype: half types
    /// accumulate (sums, GEMM, softmax, col2im) in f32, as PyTorch's CPU kernels do.
    fn via_f32(
        &self,
        x: View<'_>,
        f: impl FnOnce(View<'_>) -> Result<Arc<dyn Buffer>>,
    ) -> Result<Arc<dyn Buffer>> {
        let x32 = self.cast(x, DType::F32)?;
        let l = Layout::contiguous(x.layout.shape());
        let y = f(View {
            buf: x32.as_ref(),
            layout: &l,
        })?;
        let ly = Layout::contiguous(&[y.len()]);
        self.cast(
            View {
                buf: y.as_ref(),
                layout: &ly,
            },
            x.buf.dtype(),
        )
    }
}

impl CpuBackend {
    /// `v`'s elements in row-major order as one slice of `T`: the buffer itself when the layout
    /// is contiguous, else a copy kept alive in `hold`.
    fn rows<'a, T: CpuElem>(
        &self,
        op: &'static str,
        v: View<'a>,
        hold: &'a mut Option<Arc<dyn Buffer>>,
    ) -> Result<&'a [T]> {
        let r = v.layout.offset()..v.layout.offset() + v.layout.numel();
        if v.layout.is_contiguous() {
            return Ok(&typed::<T>(op, v)?[r]);
        }
        let copy: &'a Arc<dyn Buffer> = hold.insert(self.cast(v, T::DTYPE)?);
        let data = T::slice(cpu_buf(op, copy.as_ref())?).ok_or_else(|| Error::DType {
            op,
            msg: format!("expected {}, got {}", T::DTYPE, copy.dtype()),
        })?;
        Ok(&data[..v.layout.numel()])
    }

    fn lstm_cell_typed<T: rnn::CellMath>(
        &self,
        x: View<'_>,
        r: View<'_>,
        c: View<'_>,
    ) -> Result<LstmCell> {
        let s = c.layout.shape();
        let (mut hx, mut hr, mut hc) = (None, None, None);
        let [a, cn, tc, hn] = rnn::lstm_cell(
            self.rows::<T>("lstm_cell", x, &mut hx)?,
            self.rows::<T>("lstm_cell", r, &mut hr)?,
            self.rows::<T>("lstm_cell", c, &mut hc)?,
            s[0],
            s[1],
        );
        Ok([out(a)?, out(cn)?, out(tc)?, out(hn)?])
    }

    /// `v` = [act, c_prev, tanh_c, dh, dc].
    fn lstm_backward_typed<T: Float>(&self, v: [View<'_>; 5]) -> Result<[Arc<dyn Buffer>; 2]> {
        let s = v[1].layout.shape();
        let mut hold: [Option<Arc<dyn Buffer>>; 5] = Default::default();
        let [h0, h1, h2, h3, h4] = &mut hold;
        let [dz, dcp] = rnn::lstm_cell_backward(
            self.rows::<T>("lstm_cell_backward", v[0], h0)?,
            self.rows::<T>("lstm_cell_backward", v[1], h1)?,
            self.rows::<T>("lstm_cell_backward", v[2], h2)?,
            self.rows::<T>("lstm_cell_backward", v[3], h3)?,
            self.rows::<T>("lstm_cell_backward", v[4], h4)?,
            s[0],
            s[1],
        );
        Ok([out(dz)?, out(dcp)?])
    }

    /// `v` = [x, target].
    fn cross_entropy_typed<T: kernels::Float>(
        &self,
        v: [View<'_>; 2],
        label_smoothing: f64,
        ignore_index: i64,
    ) -> Result<[Arc<dyn Buffer>; 3]> {
        let op = "cross_entropy";
        let c = v[0].layout.shape()[1];
        let (mut h0, mut h1) = (None, None);
        let (x, t) = (
            self.rows::<T>(op, v[0], &mut h0)?,
            self.rows::<i64>(op, v[1], &mut h1)?,
        );
        match rd::cross_entropy(x, t, c, label_smoothing, ignore_index) {
            Ok([loss, lp, w]) => Ok([out(loss)?, out(lp)?, out(w)?]),
            Err(index) => Err(Error::IndexOutOfRange {
                op,
                index,
                dim: 1,
                size: c,
            }),
        }
    }

    /// `v` = [lp, target, w, g].
    fn cross_entropy_backward_typed<T: kernels::Float>(
        &self,
        v: [View<'_>; 4],
        label_smoothing: f64,
    ) -> Result<Arc<dyn Buffer>> {
        let op = "cross_entropy_backward";
        let c = v[0].layout.shape()[1];
        let mut hold: [Option<Arc<dyn Buffer>>; 4] = Default::default();
        let [h0, h1, h2, h3] = &mut hold;
        out(rd::cross_entropy_backward(
            self.rows::<T>(op, v[0], h0)?,
            self.rows::<i64>(op, v[1], h1)?,
            self.rows::<T>(op, v[2], h2)?,
            self.rows::<T>(op, v[3], h3)?,
            c,
            label_smoothing,
        ))
    }

    /// `v` = [xp, w_t, h0, c0].
    fn lstm_sequence_typed<T: rnn::SeqFloat>(
        &self,
        v: [View<'_>; 4],
        bias: Option<View<'_>>,
        reverse: bool,
    ) -> Result<LstmSequence> {
        let (xs, hs) = (v[0].layout.shape(), v[2].layout.shape());
        let mut hold: [Option<Arc<dyn Buffer>>; 5] = Default::default();
        let [h0, h1, h2, h3, h4] = &mut hold;
        let op = "lstm_sequence";
        let f = rnn::lstm_sequence(
            self.rows::<T>(op, v[0], h0)?,
            bias.map(|b| self.rows::<T>(op, b, h4)).transpose()?,
            self.rows::<T>(op, v[1], h1)?,
            self.rows::<T>(op, v[2], h2)?,
            self.rows::<T>(op, v[3], h3)?,
            [xs[0], hs[0], hs[1]],
            reverse,
            rnn::seq_threads(hs[0], hs[1]),
        );
        Ok(LstmSequence {
            out: out(f.out)?,
            h_prev: out(f.h_prev)?,
            c_prev: out(f.c_prev)?,
            act: out(f.act)?,
            tanh_c: out(f.tanh_c)?,
        })
    }

    /// `v` = [w_hh, act, c_prev, tanh_c, grad].
    fn lstm_sequence_backward_typed<T: rnn::SeqFloat>(
        &self,
        v: [View<'_>; 5],
        reverse: bool,
        [need_h0, need_bias]: [bool; 2],
    ) -> Result<LstmSequenceGrads> {
        let s = v[2].layout.shape();
        let mut hold: [Option<Arc<dyn Buffer>>; 5] = Default::default();
        let [h0, h1, h2, h3, h4] = &mut hold;
        let op = "lstm_sequence_backward";
        let g = rnn::lstm_sequence_backward(
            self.rows::<T>(op, v[0], h0)?,
            self.rows::<T>(op, v[1], h1)?,
            self.rows::<T>(op, v[2], h2)?,
            self.rows::<T>(op, v[3], h3)?,
            self.rows::<T>(op, v[4], h4)?,
            [s[0], s[1], s[2]],
            reverse,
            [need_h0, need_bias],
            rnn::seq_threads(s[1], s[2]),
        );
        Ok(LstmSequenceGrads {
            dz: out(g.dz)?,
            dh0: g.dh0.map(out).transpose()?,
            dc0: out(g.dc0)?,
            db: g.db.map(out).transpose()?,
        })
    }

    /// Images `r` of `dy` `[N, O, OH, OW]` as a contiguous `[O, n·positions]`.
    fn channel_major_chunk(
        &self,
        dy: View<'_>,
        r: &std::ops::Range<usize>,
    ) -> Result<Arc<dyn Buffer>> {
        let ld = dy.layout.slice(0, r.start, r.len(), 1);
        self.channel_major(View {
            buf: dy.buf,
            layout: &ld,
        })
    }

    /// `dy` `[N, O, OH, OW]` as a contiguous `[O, N·positions]`.
    fn channel_major(&self, dy: View<'_>) -> Result<Arc<dyn Buffer>> {
        let d = dy.layout.shape();
        let (n, o, l) = (d[0], d[1], d[2] * d[3]);
        let perm = |lay: &Layout| lay.reshape(&[n, o, l]).map(|r| r.permute(&[1, 0, 2]));
        match perm(dy.layout) {
            Some(p) => self.cast(
                View {
                    buf: dy.buf,
                    layout: &p,
                },
                dy.buf.dtype(),
            ),
            None => {
                let copy = self.cast(dy, dy.buf.dtype())?;
                let p = Layout::contiguous(&[n, o, l]).permute(&[1, 0, 2]);
                self.cast(
                    View {
                        buf: copy.as_ref(),
                        layout: &p,
                    },
                    dy.buf.dtype(),
                )
            }
        }
    }

    /// Whether the one-GEMM (channel-major im2col) convolution applies: f32 or f64, and no
    /// empty dimension (`dims` = batch, input channels, output channels).
    fn gemm_conv(dtype: DType, dims: [usize; 3]) -> bool {
        matches!(dtype, DType::F32 | DType::F64) && !dims.contains(&0)
    }
}

/// `x` `[N, C, ...]` as `[outer, C, inner]` for the batch-norm kernels, when they take it
/// (rank ≥ 2, f32 or f64; the hooks decline anything else).
fn norm_dims(x: View<'_>) -> Option<kernels::norm::Dims> {
    let shape = x.layout.shape();
    let typed = matches!(x.buf.dtype(), DType::F32 | DType::F64);
    (typed && shape.len() >= 2).then(|| [shape[0], shape[1], shape[2..].iter().product()])
}

/// The direct-kernel plan of a convolution over input `[n, c, h, w]` into `o` channels, when it
/// qualifies: f32, stride 1, dilation 1, small channel counts, padding below the kernel size on
/// every side (so the input gradient is a direct convolution too), AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
fn direct_plan(dtype: DType, x: &[usize], o: usize, w: &Window) -> Option<cd::Plan> {
    let (n, c, h, wd) = (x[0], x[1], x[2], x[3]);
    let pads_fit = (0..2).all(|i| {
        let after = (w.out[i] + w.k[i] - 1).checked_sub([h, wd][i] + w.p[i]);
        w.p[i] < w.k[i] && matches!(after, Some(a) if a < w.k[i])
    });
    let ok = dtype == DType::F32
        && w.s == [1, 1]
        && w.d == [1, 1]
        && pads_fit
        && n > 0
        && c > 0
        && o > 0
        && cd::worthwhile(c, o)
        && cd::available();
    ok.then_some(cd::Plan {
        n,
        c,
        h,
        w: wd,
        o,
        k: w.k,
        pad: w.p,
        out: w.out,
    })
}

/// The Winograd plan ([`wg`]) of a convolution over input `[n, c, h, w]` into `o` channels,
/// when it qualifies: f32 or f64, 3×3 kernels, stride 1, dilation 1, and channel counts at
/// which the GEMMs dominate the transforms ([`wg::worthwhile`]).
fn winograd_plan(dtype: DType, x: &[usize], o: usize, w: &Window) -> Option<wg::Plan> {
    let ok = matches!(dtype, DType::F32 | DType::F64)
        && w.k == [3, 3]
        && w.s == [1, 1]
        && w.d == [1, 1]
        && !x.contains(&0)
        && o > 0
        && w.positions() > 0
        && wg::worthwhile(x[1], o);
    ok.then_some(wg::Plan {
        n: x[0],
        c: x[1],
        o,
        hw: [x[2], x[3]],
        out: w.out,
        pad: w.p.map(|p| p as isize),
    })
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }

    fn upload(&self, data: HostData) -> Result<Arc<dyn Buffer>> {
        Ok(Arc::new(CpuBuffer::new(match data {
            HostData::F32(v) => CpuStorage::F32(v),
            HostData::F64(v) => CpuStorage::F64(v),
            HostData::I64(v) => CpuStorage::I64(v),
            HostData::F16(v) => CpuStorage::F16(v),
            HostData::BF16(v) => CpuStorage::BF16(v),
        })))
    }

    fn download(&self, x: View<'_>) -> Result<HostData> {
        with_dtype!(x.buf.dtype(), "download", |T| {
            let v = kernels::map1(typed::<T>("download", x)?, x.layout, |v: T| v);
            Ok(<T as tessera_core::Element>::into_host(v))
        })
    }

    fn fill(&self, len: usize, dtype: DType, value: f64) -> Result<Arc<dyn Buffer>> {
        with_dtype!(dtype, "fill", |T| out(ew::fill::<T>(len, value)))
    }

    fn random(
        &self,
        len: usize,
        dtype: DType,
        dist: Distribution,
        seed: u64,
        offset: u64,
    ) -> Result<Arc<dyn Buffer>> {
        with_dtype!(float dtype, "random", |T| out(ew::random::<T>(len, dist, seed, offset)))
    }

    fn cast(&self, x: View<'_>, dtype: DType) -> Result<Arc<dyn Buffer>> {
        with_dtype!(x.buf.dtype(), "cast", |S| {
            let src = typed::<S>("cast", x)?;
            with_dtype!(dtype, "cast", |D| out(ew::cast::<S, D>(src, x.layout)))
        })
    }

    fn unary(&self, op: UnaryOp, x: View<'_>) -> Result<Arc<dyn Buffer>> {
        match x.buf.dtype() {
            DType::F32 => match kernels::vmath::unary(op, typed::<f32>("unary", x)?, x.layout) {
                Some(v) => out(v),
                None => unary_typed::<f32>(op, x),
            },
            DType::F64 => unary_typed::<f64>(op, x),
            DType::F16 => unary_typed::<half::f16>(op, x),
            DType::BF16 => unary_typed::<half::bf16>(op, x),
            DType::I64 => match ew::unary_num(op, typed::<i64>("unary", x)?, x.layout) {
                Some(v) => out(v),
                None => Err(Error::DType {
                    op: "unary",
                    msg: format!("{op:?} needs a floating-point tensor, got i64"),
                }),
            },
        }
    }

    fn binary(&self, op: BinaryOp, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        match a.buf.dtype() {
            DType::F32 => binary_typed::<f32>(op, a, b, pow_f),
            DType::F64 => binary_typed::<f64>(op, a, b, pow_f),
            DType::I64 => binary_typed::<i64>(op, a, b, int_pow),
            DType::F16 => binary_typed::<half::f16>(op, a, b, pow_f),
            DType::BF16 => binary_typed::<half::bf16>(op, a, b, pow_f),
        }
    }

    fn where_cond(&self, cond: View<'_>, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        with_dtype!(cond.buf.dtype(), "where", |C| {
            let c = typed::<C>("where", cond)?;
            with_dtype!(a.buf.dtype(), "where", |T| {
                let (x, y) = (typed::<T>("where", a)?, typed::<T>("where", b)?);
                out(ew::where_cond(c, cond.layout, x, a.layout, y, b.layout))
            })
        })
    }

    fn reduce(&self, op: ReduceOp, x: View<'_>, axes: &[usize]) -> Result<Arc<dyn Buffer>> {
        if op == ReduceOp::Sum && x.buf.dtype().is_half() {
            return self.via_f32(x, |v| self.reduce(op, v, axes));
        }
        with_dtype!(x.buf.dtype(), "reduce", |T| {
            let v = typed::<T>("reduce", x)?;
            match op {
                ReduceOp::ArgMax | ReduceOp::ArgMin => {
                    let [axis] = axes else {
                        return Err(Error::invalid(
                            "reduce",
                            format!("{op:?} takes one axis, got {axes:?}"),
                        ));
                    };
                    out(rd::arg_reduce(op, v, x.layout, *axis))
                }
                _ => out(rd::reduce(op, v, x.layout, axes)),
            }
        })
    }

    fn matmul(&self, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        match a.buf.dtype() {
            d @ (DType::F16 | DType::BF16) => {
                let b32 = self.cast(b, DType::F32)?;
                let lb = Layout::contiguous(b.layout.shape());
                let bv = View {
                    buf: b32.as_ref(),
                    layout: &lb,
                };
                let c = self.via_f32(a, |av| self.matmul(av, bv))?;
                debug_assert_eq!(c.dtype(), d);
                Ok(c)
            }
            DType::F32 => out(mm::matmul_f32(
                typed("matmul", a)?,
                a.layout,
                typed("matmul", b)?,
                b.layout,
            )),
            DType::F64 => out(mm::matmul_f64(
                typed("matmul", a)?,
                a.layout,
                typed("matmul", b)?,
                b.layout,
            )),
            DType::I64 => out(mm::matmul_i64(
                typed("matmul", a)?,
                a.layout,
                typed("matmul", b)?,
                b.layout,
            )),
        }
    }

    fn gather(&self, x: View<'_>, dim: usize, index: View<'_>) -> Result<Arc<dyn Buffer>> {
        let idx = typed::<i64>("gather", index)?;
        with_dtype!(x.buf.dtype(), "gather", |T| out(sh::gather(
            typed::<T>("gather", x)?,
            x.layout,
            dim,
            idx,
            index.layout
        )?))
    }

    fn scatter_add(
        &self,
        shape: &[usize],
        dim: usize,
        index: View<'_>,
        src: View<'_>,
    ) -> Result<Arc<dyn Buffer>> {
        let idx = typed::<i64>("scatter_add", index)?;
        with_dtype!(src.buf.dtype(), "scatter_add", |T| {
            out(sh::scatter_add(
                shape,
                dim,
                idx,
                index.layout,
                typed::<T>("scatter_add", src)?,
                src.layout,
            )?)
        })
    }

    fn assemble(
        &self,
        len: usize,
        dtype: DType,
        fill: f64,
        parts: &[(Layout, View<'_>)],
    ) -> Result<Arc<dyn Buffer>> {
        with_dtype!(dtype, "assemble", |T| {
            let typed_parts = parts
                .iter()
                .map(|(region, v)| {
                    if region.max_extent() > len {
                        return Err(Error::invalid("assemble", "region outside the output"));
                    }
                    Ok((region, typed::<T>("assemble", *v)?, v.layout))
                })
                .collect::<Result<Vec<_>>>()?;
            out(sh::assemble(len, fill, &typed_parts))
        })
    }

    fn unfold2d(&self, x: View<'_>, w: &Window, fill: f64) -> Result<Arc<dyn Buffer>> {
        let s = x.layout.shape();
        // (An empty layout need not pass is_contiguous, and its copy would not either.)
        if !x.layout.is_contiguous() && x.layout.numel() > 0 {
            let copy = self.cast(x, x.buf.dtype())?;
            return self.unfold2d(
                View {
                    buf: copy.as_ref(),
                    layout: &Layout::contiguous(s),
                },
                w,
                fill,
            );
        }
        let r = x.layout.offset()..x.layout.offset() + x.layout.numel();
        with_dtype!(float x.buf.dtype(), "unfold2d", |T| {
            out(cv::unfold(&typed::<T>("unfold2d", x)?[r], s[0] * s[1], [s[2], s[3]], w, <T as Num>::from_f64(fill)))
        })
    }

    fn fold2d(&self, cols: View<'_>, w: &Window, hw: [usize; 2]) -> Result<Arc<dyn Buffer>> {
        let s = cols.layout.shape();
        if !cols.layout.is_contiguous() && cols.layout.numel() > 0 {
            let copy = self.cast(cols, cols.buf.dtype())?;
            return self.fold2d(
                View {
                    buf: copy.as_ref(),
                    layout: &Layout::contiguous(s),
                },
                w,
                hw,
            );
        }
        if cols.buf.dtype().is_half() {
            return self.via_f32(cols, |c| self.fold2d(c, w, hw));
        }
        let r = cols.layout.offset()..cols.layout.offset() + cols.layout.numel();
        with_dtype!(float cols.buf.dtype(), "fold2d", |T| out(cv::fold(&typed::<T>("fold2d", cols)?[r], s[0] * s[1], hw, w)))
    }

    fn add_scaled(&self, a: View<'_>, alpha: f64, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        match a.buf.dtype() {
            DType::F32 => {
                let al = alpha as f32;
                out(kernels::map2(
                    typed::<f32>("add_scaled", a)?,
                    a.layout,
                    typed::<f32>("add_scaled", b)?,
                    b.layout,
                    move |x, y| x + al * y,
                ))
            }
            DType::F64 => out(kernels::map2(
                typed::<f64>("add_scaled", a)?,
                a.layout,
                typed::<f64>("add_scaled", b)?,
                b.layout,
                move |x, y| x + alpha * y,
            )),
            _ => fallback::add_scaled(self, a, alpha, b),
        }
    }

    fn add_relu(&self, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        match a.buf.dtype() {
            DType::F32 => self.map2_typed::<f32>("add_relu", a, b, |x, y| relu(x + y)),
            DType::F64 => self.map2_typed::<f64>("add_relu", a, b, |x, y| relu(x + y)),
            _ => fallback::add_relu(self, a, b),
        }
    }

    fn relu_backward(&self, dy: View<'_>, y: View<'_>) -> Result<Arc<dyn Buffer>> {
        match dy.buf.dtype() {
            DType::F32 => self.map2_typed::<f32>("relu_backward", dy, y, relu_grad),
            DType::F64 => self.map2_typed::<f64>("relu_backward", dy, y, relu_grad),
            _ => fallback::relu_backward(self, dy, y),
        }
    }

    fn batch_norm_train(
        &self,
        x: View<'_>,
        weight: Option<View<'_>>,
        bias: Option<View<'_>>,
        eps: f64,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        let Some(d) = norm_dims(x) else {
            return Ok(None);
        };
        let (mut hx, mut hw, mut hb) = (None, None, None);
        with_dtype!(float x.buf.dtype(), "batch_norm", |T| {
            let xs = self.rows::<T>("batch_norm", x, &mut hx)?;
            let ws = weight.map(|w| self.rows::<T>("batch_norm", w, &mut hw)).transpose()?;
            let bs = bias.map(|b| self.rows::<T>("batch_norm", b, &mut hb)).transpose()?;
            let (y, mean, var) = kernels::norm::train(xs, d, ws, bs, eps);
            Ok(Some([out(y)?, out(mean)?, out(var)?]))
        })
    }

    fn batch_norm_eval(
        &self,
        x: View<'_>,
        mean: View<'_>,
        var: View<'_>,
        weight: Option<View<'_>>,
        bias: Option<View<'_>>,
        eps: f64,
    ) -> Result<Option<Arc<dyn Buffer>>> {
        let Some(d) = norm_dims(x) else {
            return Ok(None);
        };
        let (mut hx, mut hm, mut hv, mut hw, mut hb) = (None, None, None, None, None);
        with_dtype!(float x.buf.dtype(), "batch_norm", |T| {
            let op = "batch_norm";
            let xs = self.rows::<T>(op, x, &mut hx)?;
            let ms = self.rows::<T>(op, mean, &mut hm)?;
            let vs = self.rows::<T>(op, var, &mut hv)?;
            let ws = weight.map(|w| self.rows::<T>(op, w, &mut hw)).transpose()?;
            let bs = bias.map(|b| self.rows::<T>(op, b, &mut hb)).transpose()?;
            Ok(Some(out(kernels::norm::eval(xs, d, ms, vs, ws, bs, eps))?))
        })
    }

    fn batch_norm_backward(
        &self,
        x: View<'_>,
        dy: View<'_>,
        mean: View<'_>,
        var: View<'_>,
        weight: Option<View<'_>>,
        eps: f64,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        let Some(d) = norm_dims(x) else {
            return Ok(None);
        };
        let (mut hx, mut hd, mut hm, mut hv, mut hw) = (None, None, None, None, None);
        with_dtype!(float x.buf.dtype(), "batch_norm_backward", |T| {
            let op = "batch_norm_backward";
            let xs = self.rows::<T>(op, x, &mut hx)?;
            let ds = self.rows::<T>(op, dy, &mut hd)?;
            let ms = self.rows::<T>(op, mean, &mut hm)?;
            let vs = self.rows::<T>(op, var, &mut hv)?;
            let ws = weight.map(|w| self.rows::<T>(op, w, &mut hw)).transpose()?;
            let (dx, dw, db) = kernels::norm::backward(xs, ds, d, ms, vs, ws, eps);
            Ok(Some([out(dx)?, out(dw)?, out(db)?]))
        })
    }

    fn scale_add_in_place(
        &self,
        dst: &mut dyn Buffer,
        layout: &Layout,
        beta: f64,
        alpha: f64,
        src: View<'_>,
    ) -> Result<bool> {
        if !layout.is_contiguous() || src.layout.shape() != layout.shape() {
            return Ok(false);
        }
        let Some(dst) = dst.as_any_mut().and_then(|a| a.downcast_mut::<CpuBuffer>()) else {
            return Ok(false);
        };
        let r = layout.offset()..layout.offset() + layout.numel();
        match (&mut dst.data, src.buf.dtype()) {
            (CpuStorage::F32(d), DType::F32) => {
                let (b, a) = (beta as f32, alpha as f32);
                let s = typed::<f32>("scale_add_", src)?;
                kernels::update2(&mut d[r], s, src.layout, move |x, y| b * x + a * y);
            }
            (CpuStorage::F64(d), DType::F64) => {
                let s = typed::<f64>("scale_add_", src)?;
                kernels::update2(&mut d[r], s, src.layout, move |x, y| beta * x + alpha * y);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn lstm_cell(&self, x: View<'_>, r: View<'_>, c: View<'_>) -> Result<LstmCell> {
        if c.layout.numel() == 0 {
            return fallback::lstm_cell(self, x, r, c);
        }
        match x.buf.dtype() {
            DType::F32 => self.lstm_cell_typed::<f32>(x, r, c),
            DType::F64 => self.lstm_cell_typed::<f64>(x, r, c),
            _ => fallback::lstm_cell(self, x, r, c),
        }
    }

    fn lstm_cell_backward(
        &self,
        act: View<'_>,
        c_prev: View<'_>,
        tanh_c: View<'_>,
        dh: View<'_>,
        dc: View<'_>,
    ) -> Result<[Arc<dyn Buffer>; 2]> {
        if c_prev.layout.numel() == 0 {
            return fallback::lstm_cell_backward(self, act, c_prev, tanh_c, dh, dc);
        }
        match act.buf.dtype() {
            DType::F32 => self.lstm_backward_typed::<f32>([act, c_prev, tanh_c, dh, dc]),
            DType::F64 => self.lstm_backward_typed::<f64>([act, c_prev, tanh_c, dh, dc]),
            _ => fallback::lstm_cell_backward(self, act, c_prev, tanh_c, dh, dc),
        }
    }

    fn cross_entropy(
        &self,
        x: View<'_>,
        target: View<'_>,
        label_smoothing: f64,
        ignore_index: i64,
    ) -> Result<[Arc<dyn Buffer>; 3]> {
        let fits = tessera_core::backend::cross_entropy_fits(x, target);
        let v = [x, target];
        match x.buf.dtype() {
            DType::F32 if fits => self.cross_entropy_typed::<f32>(v, label_smoothing, ignore_index),
            DType::F64 if fits => self.cross_entropy_typed::<f64>(v, label_smoothing, ignore_index),
            _ => fallback::cross_entropy(self, x, target, label_smoothing, ignore_index),
        }
    }

    fn cross_entropy_backward(
        &self,
        lp: View<'_>,
        target: View<'_>,
        w: View<'_>,
        g: View<'_>,
        label_smoothing: f64,
        ignore_index: i64,
    ) -> Result<Arc<dyn Buffer>> {
        let fits = tessera_core::backend::cross_entropy_backward_fits(lp, target, w, g);
        let v = [lp, target, w, g];
        match lp.buf.dtype() {
            DType::F32 if fits => self.cross_entropy_backward_typed::<f32>(v, label_smoothing),
            DType::F64 if fits => self.cross_entropy_backward_typed::<f64>(v, label_smoothing),
            _ => fallback::cross_entropy_backward(
                self,
                lp,
                target,
                w,
                g,
                label_smoothing,
                ignore_index,
            ),
        }
    }

    fn lstm_sequence(
        &self,
        xp: View<'_>,
        bias: Option<View<'_>>,
        w_t: View<'_>,
        h0: View<'_>,
        c0: View<'_>,
        reverse: bool,
    ) -> Result<Option<LstmSequence>> {
        let (x, h) = (xp.layout.shape(), h0.layout.shape());
        // The shapes core's LSTM passes; anything else (or an empty sequence) takes the steps.
        let fits = x.len() == 3
            && h.len() == 2
            && x[0] * h[0] * h[1] > 0
            && x[1..] == [h[0], 4 * h[1]]
            && w_t.layout.shape() == [h[1], 4 * h[1]]
            && c0.layout.shape() == h
            && bias
                .is_none_or(|b| b.layout.shape() == [4 * h[1]] && b.buf.dtype() == xp.buf.dtype());
        let v = [xp, w_t, h0, c0];
        match xp.buf.dtype() {
            _ if !fits || v.iter().any(|v| v.buf.dtype() != xp.buf.dtype()) => Ok(None),
            DType::F32 => self.lstm_sequence_typed::<f32>(v, bias, reverse).map(Some),
            DType::F64 => self.lstm_sequence_typed::<f64>(v, bias, reverse).map(Some),
            _ => Ok(None),
        }
    }

    fn lstm_sequence_backward(
        &self,
        w_hh: View<'_>,
        act: View<'_>,
        c_prev: View<'_>,
        tanh_c: View<'_>,
        grad: View<'_>,
        reverse: bool,
        need_h0: bool,
        need_bias: bool,
    ) -> Result<Option<LstmSequenceGrads>> {
        let s = c_prev.layout.shape();
        let fits = s.len() == 3
            && s.iter().product::<usize>() > 0
            && w_hh.layout.shape() == [4 * s[2], s[2]]
            && act.layout.shape() == [s[0], s[1], 4 * s[2]]
            && tanh_c.layout.shape() == s
            && grad.layout.shape() == [s[0] + 1, s[1], s[2]];
        let v = [w_hh, act, c_prev, tanh_c, grad];
        match act.buf.dtype() {
            _ if !fits || v.iter().any(|v| v.buf.dtype() != act.buf.dtype()) => Ok(None),
            DType::F32 => self
                .lstm_sequence_backward_typed::<f32>(v, reverse, [need_h0, need_bias])
                .map(Some),
            DType::F64 => self
                .lstm_sequence_backward_typed::<f64>(v, reverse, [need_h0, need_bias])
                .map(Some),
            _ => Ok(None),
        }
    }

    fn max_pool2d(
        &self,
        x: View<'_>,
        w: &Window,
        index: bool,
    ) -> Result<tessera_core::backend::Pooled> {
        let s = x.layout.shape();
        if x.buf.dtype().is_half() || !x.layout.is_contiguous() {
            return fallback::max_pool2d(self, x, w, index);
        }
        let r = x.layout.offset()..x.layout.offset() + x.layout.numel();
        with_dtype!(float x.buf.dtype(), "max_pool2d", |T| {
            let (v, i) =
                cv::max_pool(&typed::<T>("max_pool2d", x)?[r], s[0] * s[1], [s[2], s[3]], w, index);
            Ok((out(v)?, i.map(out).transpose()?))
        })
    }

    fn conv2d(
        &self,
        x: View<'_>,
        weight: View<'_>,
        bias: Option<View<'_>>,
        w: &Window,
    ) -> Result<Arc<dyn Buffer>> {
        self.conv2d_with(x, weight, bias, w, false)
    }

    fn conv2d_relu(
        &self,
        x: View<'_>,
        weight: View<'_>,
        bias: Option<View<'_>>,
        w: &Window,
    ) -> Result<Arc<dyn Buffer>> {
        self.conv2d_with(x, weight, bias, w, true)
    }

    fn conv2d_input_grad(
        &self,
        dy: View<'_>,
        weight: View<'_>,
        w: &Window,
        hw: [usize; 2],
    ) -> Result<Arc<dyn Buffer>> {
        #[cfg(target_arch = "x86_64")]
        {
            let (d, ws) = (dy.layout.shape(), weight.layout.shape());
            if let Some(p) = direct_plan(dy.buf.dtype(), &[d[0], ws[1], hw[0], hw[1]], d[1], w) {
                let (mut hd, mut hwt) = (None, None);
                let dys = self.rows::<f32>("conv2d_input_grad", dy, &mut hd)?;
                let wts = self.rows::<f32>("conv2d_input_grad", weight, &mut hwt)?;
                return out(cd::input_grad(dys, wts, &p));
            }
        }
        let (ds, ws) = (dy.layout.shape(), weight.layout.shape());
        // The input gradient is the convolution of `dy` with the flipped kernels.
        let (pad, out) = (w.p.map(|p| 2 - p as isize), Window { out: hw, ..*w });
        if let Some(mut p) = winograd_plan(dy.buf.dtype(), ds, ws[1], &out) {
            p.pad = pad;
            let op = "conv2d_input_grad";
            return match dy.buf.dtype() {
                DType::F32 => self.conv2d_winograd::<f32>(op, dy, weight, None, &p, [true, false]),
                _ => self.conv2d_winograd::<f64>(op, dy, weight, None, &p, [true, false]),
            };
        }
        if !Self::gemm_conv(dy.buf.dtype(), [ds[0], ws[1], ws[0]]) {
            return fallback::conv2d_input_grad(self, dy, weight, w, hw);
        }
        match dy.buf.dtype() {
            DType::F32 => self.conv2d_input_grad_gemm::<f32>(dy, weight, w, hw),
            _ => self.conv2d_input_grad_gemm::<f64>(dy, weight, w, hw),
        }
    }

    fn conv2d_weight_grad(&self, x: View<'_>, dy: View<'_>, w: &Window) -> Result<Arc<dyn Buffer>> {
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = direct_plan(x.buf.dtype(), x.layout.shape(), dy.layout.shape()[1], w) {
            let (mut hx, mut hd) = (None, None);
            let xs = self.rows::<f32>("conv2d_weight_grad", x, &mut hx)?;
            let dys = self.rows::<f32>("conv2d_weight_grad", dy, &mut hd)?;
            return out(cd::weight_grad(xs, dys, &p));
        }
        let (xs, ds) = (x.layout.shape(), dy.layout.shape());
        if let Some(p) = winograd_plan(x.buf.dtype(), xs, ds[1], w) {
            return match x.buf.dtype() {
                DType::F32 => self.conv2d_weight_grad_winograd::<f32>(x, dy, &p),
                _ => self.conv2d_weight_grad_winograd::<f64>(x, dy, &p),
            };
        }
        if !Self::gemm_conv(x.buf.dtype(), [xs[0], xs[1], ds[1]]) {
            return fallback::conv2d_weight_grad(self, x, dy, w);
        }
        match x.buf.dtype() {
            DType::F32 => self.conv2d_weight_grad_gemm::<f32>(x, dy, w),
            _ => self.conv2d_weight_grad_gemm::<f64>(x, dy, w),
        }
    }

    fn softmax(&self, x: View<'_>, dim: usize, log: bool) -> Result<Arc<dyn Buffer>> {
        let l = x.layout;
        if dim + 1 != l.rank() || !l.is_contiguous() || l.numel() == 0 {
            return fallback::softmax(self, x, dim, log);
        }
        if x.buf.dtype().is_half() {
            return self.via_f32(x, |v| self.softmax(v, dim, log));
        }
        let n = l.shape()[dim];
        let r = l.offset()..l.offset() + l.numel();
        with_dtype!(float x.buf.dtype(), "softmax", |T| out(rd::softmax_rows(&typed::<T>("softmax", x)?[r], n, log)))
    }
}

/// Bytes of im2col columns one GEMM convolution materialises at most (unless one image needs
/// more): the batch runs in chunks of whole images under it, so memory stays bounded for any
/// batch. Chunks of 4-6 W2b images (676-1014 GEMM columns) kept the GEMM's rate (190 GFLOP/s
/// on 2 threads, as the whole batch); 2 images (338 columns) fell to 166.
const COLS_BUDGET: usize = 8 << 20;

/// Image ranges of equal size (the last may be shorter) whose columns (`per_image` bytes
/// each) fit [`COLS_BUDGET`].
fn conv_chunks(n: usize, per_image: usize) -> Vec<std::ops::Range<usize>> {
    let most = (COLS_BUDGET / per_image.max(1)).max(1);
    let size = n.div_ceil(n.div_ceil(most).max(1)).max(1);
    (0..n).step_by(size).map(|s| s..(s + size).min(n)).collect()
}

/// All of `buf`'s elements as `T`.
fn whole<'a, T: CpuElem>(op: &'static str, buf: &'a Arc<dyn Buffer>) -> Result<&'a [T]> {
    T::slice(cpu_buf(op, buf.as_ref())?).ok_or_else(|| Error::DType {
        op,
        msg: format!("expected {}, got {}", T::DTYPE, buf.dtype()),
    })
}

/// The products of the im2col convolutions, per dtype.
trait ConvFloat: kernels::Num {
    fn mm(a: &[Self], la: &Layout, b: &[Self], lb: &Layout) -> Vec<Self>;
    fn mm_into(a: &[Self], la: &Layout, b: &[Self], lb: &Layout, out: &mut [Self], beta: Self);
}

impl ConvFloat for f32 {
    fn mm(a: &[f32], la: &Layout, b: &[f32], lb: &Layout) -> Vec<f32> {
        mm::matmul_f32(a, la, b, lb)
    }
    fn mm_into(a: &[f32], la: &Layout, b: &[f32], lb: &Layout, out: &mut [f32], beta: f32) {
        mm::matmul_f32_into(a, la, b, lb, out, beta)
    }
}

impl ConvFloat for f64 {
    fn mm(a: &[f64], la: &Layout, b: &[f64], lb: &Layout) -> Vec<f64> {
        mm::matmul_f64(a, la, b, lb)
    }
    fn mm_into(a: &[f64], la: &Layout, b: &[f64], lb: &Layout, out: &mut [f64], beta: f64) {
        mm::matmul_f64_into(a, la, b, lb, out, beta)
    }
}

impl CpuBackend {
    /// [`Backend::conv2d`] on the im2col path, per chunk of images ([`conv_chunks`]): weight
    /// `[O, C·taps]` · columns `[C·taps, n·L]` (channel-major, so one GEMM covers the chunk and
    /// the weight is packed once per chunk, not per image), permuted into `[N, O, L]` in the
    /// pass that adds the bias.
    fn conv2d_gemm<T: ConvFloat>(
        &self,
        x: View<'_>,
        weight: View<'_>,
        bias: Option<View<'_>>,
        w: &Window,
        relu: bool,
    ) -> Result<Arc<dyn Buffer>> {
        let op = "conv2d";
        let (xs, ws) = (x.layout.shape(), weight.layout.shape());
        let (n, c, o, l, ct) = (xs[0], xs[1], ws[0], w.positions(), xs[1] * w.taps());
        let image = c * xs[2] * xs[3];
        let mut hold: [Option<Arc<dyn Buffer>>; 3] = Default::default();
        let [h0, h1, h2] = &mut hold;
        let xd = self.rows::<T>(op, x, h0)?;
        let wd = self.rows::<T>(op, weight, h1)?;
        let bd = bias.map(|b| self.rows::<T>(op, b, h2)).transpose()?;
        let wl = Layout::contiguous(&[o, ct]);
        let mut y = buffer::alloc::<T>(n * o * l);
        for r in conv_chunks(n, ct * l * T::DTYPE.size_in_bytes()) {
            let nc = r.len();
            let xc = &xd[r.start * image..r.end * image];
            let cols = cv::unfold_channel_major(xc, [nc, c], [xs[2], xs[3]], w);
            let ycm = T::mm(wd, &wl, &cols, &Layout::contiguous(&[ct, nc * l]));
            let yc = &mut y[r.start * o * l..r.end * o * l];
            cv::from_channel_major(&ycm, [nc, o, l], bd, yc);
            // Back to the pool: freed, these would page-fault in again for the next chunk.
            buffer::recycle(cols);
            buffer::recycle(ycm);
        }
        if relu {
            relu_in_place(&mut y);
        }
        out(y)
    }

    /// [`Backend::conv2d`], and with `relu` [`Backend::conv2d_relu`]: the direct kernels take
    /// the ReLU in their last pass, the GEMM paths over their fresh output in place.
    fn conv2d_with(
        &self,
        x: View<'_>,
        weight: View<'_>,
        bias: Option<View<'_>>,
        w: &Window,
        relu: bool,
    ) -> Result<Arc<dyn Buffer>> {
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = direct_plan(x.buf.dtype(), x.layout.shape(), weight.layout.shape()[0], w) {
            let (mut hx, mut hw, mut hb) = (None, None, None);
            let xs = self.rows::<f32>("conv2d", x, &mut hx)?;
            let ws = self.rows::<f32>("conv2d", weight, &mut hw)?;
            let bs = bias
                .map(|b| self.rows::<f32>("conv2d", b, &mut hb))
                .transpose()?;
            return out(cd::forward(xs, ws, bs, &p, relu));
        }
        let (xs, ws) = (x.layout.shape(), weight.layout.shape());
        if let Some(p) = winograd_plan(x.buf.dtype(), xs, ws[0], w) {
            return match x.buf.dtype() {
                DType::F32 => {
                    self.conv2d_winograd::<f32>("conv2d", x, weight, bias, &p, [false, relu])
                }
                _ => self.conv2d_winograd::<f64>("conv2d", x, weight, bias, &p, [false, relu]),
            };
        }
        if !Self::gemm_conv(x.buf.dtype(), [xs[0], xs[1], ws[0]]) {
            return match relu {
                true => fallback::conv2d_relu(self, x, weight, bias, w),
                false => fallback::conv2d(self, x, weight, bias, w),
            };
        }
        match x.buf.dtype() {
            DType::F32 => self.conv2d_gemm::<f32>(x, weight, bias, w, relu),
            _ => self.conv2d_gemm::<f64>(x, weight, bias, w, relu),
        }
    }

    /// A Winograd convolution of `src` by `weight` `[O, C, 3, 3]` (`flipped`: the input
    /// gradient, `src` being `dy`), followed by a ReLU with `relu`.
    fn conv2d_winograd<T: ConvFloat>(
        &self,
        op: &'static str,
        src: View<'_>,
        weight: View<'_>,
        bias: Option<View<'_>>,
        p: &wg::Plan,
        [flipped, relu]: [bool; 2],
    ) -> Result<Arc<dyn Buffer>> {
        let mut hold: [Option<Arc<dyn Buffer>>; 3] = Default::default();
        let [h0, h1, h2] = &mut hold;
        let sd = self.rows::<T>(op, src, h0)?;
        let wd = self.rows::<T>(op, weight, h1)?;
        let bd = bias.map(|b| self.rows::<T>(op, b, h2)).transpose()?;
        let ws = weight.layout.shape();
        let u = wg::kernels(wd, [ws[0], ws[1]], flipped);
        let mut y = wg::conv(sd, &u, bd, p, T::mm);
        buffer::recycle(u);
        if relu {
            relu_in_place(&mut y);
        }
        out(y)
    }

    /// [`Backend::conv2d_weight_grad`] on the Winograd path ([`wg::weight_grad`]).
    fn conv2d_weight_grad_winograd<T: ConvFloat>(
        &self,
        x: View<'_>,
        dy: View<'_>,
        p: &wg::Plan,
    ) -> Result<Arc<dyn Buffer>> {
        let op = "conv2d_weight_grad";
        let (mut hx, mut hd) = (None, None);
        let xd = self.rows::<T>(op, x, &mut hx)?;
        let dyd = self.rows::<T>(op, dy, &mut hd)?;
        out(wg::weight_grad(xd, dyd, p, T::mm_into))
    }

    /// [`Backend::conv2d_input_grad`] on the im2col path, per chunk of images: weightᵀ
    /// `[C·taps, O]` · dy `[O, n·L]`, then col2im into the chunk's images.
    fn conv2d_input_grad_gemm<T: ConvFloat>(
        &self,
        dy: View<'_>,
        weight: View<'_>,
        w: &Window,
        hw: [usize; 2],
    ) -> Result<Arc<dyn Buffer>> {
        let op = "conv2d_input_grad";
        let (ds, ws) = (dy.layout.shape(), weight.layout.shape());
        let (n, o, c, l, ct) = (ds[0], ds[1], ws[1], w.positions(), ws[1] * w.taps());
        let image = c * hw[0] * hw[1];
        let mut hold = None;
        let wd = self.rows::<T>(op, weight, &mut hold)?;
        let wt = Layout::contiguous(&[o, ct]).permute(&[1, 0]);
        let mut dx = buffer::alloc::<T>(n * image);
        for r in conv_chunks(n, ct * l * T::DTYPE.size_in_bytes()) {
            let nc = r.len();
            let dycm = self.channel_major_chunk(dy, &r)?;
            let dycm = whole::<T>(op, &dycm)?;
            let cols = T::mm(wd, &wt, dycm, &Layout::contiguous(&[o, nc * l]));
            let dxc = &mut dx[r.start * image..r.end * image];
            cv::fold_channel_major_into(&cols, [nc, c], hw, w, dxc);
            buffer::recycle(cols);
        }
        out(dx)
    }

    /// [`Backend::conv2d_weight_grad`] on the im2col path: dy `[O, n·L]` · columnsᵀ
    /// `[n·L, C·taps]` per chunk of images, accumulated in place (the batch sum inside the
    /// GEMMs).
    fn conv2d_weight_grad_gemm<T: ConvFloat>(
        &self,
        x: View<'_>,
        dy: View<'_>,
        w: &Window,
    ) -> Result<Arc<dyn Buffer>> {
        let op = "conv2d_weight_grad";
        let (xs, ds) = (x.layout.shape(), dy.layout.shape());
        let (n, c, o, l, ct) = (xs[0], xs[1], ds[1], w.positions(), xs[1] * w.taps());
        let image = c * xs[2] * xs[3];
        let mut hold = None;
        let xd = self.rows::<T>(op, x, &mut hold)?;
        let mut dw = buffer::alloc::<T>(o * ct);
        let chunks = conv_chunks(n, ct * l * T::DTYPE.size_in_bytes());
        for (k, r) in chunks.into_iter().enumerate() {
            let nc = r.len();
            let xc = &xd[r.start * image..r.end * image];
            let cols = cv::unfold_channel_major(xc, [nc, c], [xs[2], xs[3]], w);
            let dycm = self.channel_major_chunk(dy, &r)?;
            let dycm = whole::<T>(op, &dycm)?;
            let (ld, lc) = (
                Layout::contiguous(&[o, nc * l]),
                Layout::contiguous(&[ct, nc * l]).permute(&[1, 0]),
            );
            let beta = if k == 0 { T::zero() } else { T::one() };
            T::mm_into(dycm, &ld, &cols, &lc, &mut dw, beta);
            buffer::recycle(cols);
        }
        out(dw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::{Generator, Tensor};

    #[test]
    fn random_numbers_do_not_depend_on_the_thread_count() {
        let draw = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut g = Generator::new(9);
                Tensor::randn(&[70_001], 0.0, 1.0, DType::F32, &mut g, &cpu())
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap()
            })
        };
        assert_eq!(draw(1), draw(3));
    }

    #[test]
    fn products_split_across_threads_match_a_plain_loop() {
        // Above SPLIT_MIN multiply-adds: split by columns (m <= n) and by rows (m > n), with a
        // transposed operand and a batch of two.
        let dev = cpu();
        for (m, k, n, batch) in [(130, 300, 450, 1), (470, 300, 140, 1), (200, 260, 330, 2)] {
            let a = Tensor::arange(0.0, (batch * m * k) as f64, 1.0, DType::F64, &dev)
                .unwrap()
                .reshape(&[batch as isize, m as isize, k as isize])
                .unwrap()
                .remainder_for_test(7.0);
            let bt = Tensor::arange(0.0, (batch * n * k) as f64, 1.0, DType::F64, &dev)
                .unwrap()
                .reshape(&[batch as isize, n as isize, k as isize])
                .unwrap()
                .remainder_for_test(11.0);
            let b = bt.transpose(1, 2).unwrap();
            let c = a.matmul(&b).unwrap().to_vec::<f64>().unwrap();
            let (av, bv) = (a.to_vec::<f64>().unwrap(), bt.to_vec::<f64>().unwrap());
            for q in 0..batch {
                for i in (0..m).step_by(7) {
                    for j in (0..n).step_by(5) {
                        let want: f64 = (0..k)
                            .map(|p| av[(q * m + i) * k + p] * bv[(q * n + j) * k + p])
                            .sum();
                        assert_eq!(c[(q * m + i) * n + j], want, "{m}x{k}x{n} at {q},{i},{j}");
                    }
                }
            }
        }
    }

    /// Small integers keep every product exact in f64 (moduli 7 and 11 do not divide k, so
    /// rows and columns differ).
    trait RemainderForTest {
        fn remainder_for_test(self, d: f64) -> Tensor;
    }
    impl RemainderForTest for Tensor {
        fn remainder_for_test(self, d: f64) -> Tensor {
            let q = self.mul_scalar(1.0 / d).unwrap().to_vec::<f64>().unwrap();
            let v: Vec<f64> = self
                .to_vec::<f64>()
                .unwrap()
                .iter()
                .zip(q)
                .map(|(x, q)| x - d * q.floor() - 3.0)
                .collect();
            Tensor::from_vec(v, self.dims(), &cpu()).unwrap()
        }
    }

    /// The GEMM convolutions run a batch whose columns exceed `COLS_BUDGET` in image chunks
    /// (concatenated forward and input gradients, summed weight gradients): against core's
    /// primitive default (one unfold of the whole batch), f64 at stride 1 (one image per
    /// chunk) and f32 at stride 2 (chunks of 2, 2 and 1).
    #[test]
    fn gemm_convolutions_in_image_chunks_match_the_primitive_default() {
        let (n, c, o) = (5, 64, 7);
        for (dtype, hw, s) in [(DType::F64, 40, 1), (DType::F32, 80, 2)] {
            let out_hw = (hw + 2 - 3) / s + 1;
            let win = Window {
                k: [3, 3],
                s: [s, s],
                d: [1, 1],
                p: [1, 1],
                out: [out_hw, out_hw],
            };
            let per_image = c * win.taps() * win.positions() * dtype.size_in_bytes();
            assert!(conv_chunks(n, per_image).len() > 1, "{dtype}: one chunk");
            assert!(direct_plan(dtype, &[n, c, hw, hw], o, &win).is_none());
            assert!(winograd_plan(dtype, &[n, c, hw, hw], o, &win).is_none());
            conv_hooks_match_the_default(dtype, [n, c, o], [hw, hw], &win);
        }
    }

    /// The Winograd path (forward, input and weight gradients) against core's primitive default: same and valid padding, padding beyond the kernel
    /// (the input gradient's window then starts inside `dy`), uneven padding after, odd and
    /// even planes, and a batch in several chunks.
    #[test]
    fn winograd_convolutions_match_the_primitive_default() {
        let cases = [
            (DType::F64, [3, 40, 36], [9, 7], [1, 1], [9, 7]),
            (DType::F64, [2, 33, 40], [8, 6], [0, 2], [6, 8]),
            (DType::F64, [2, 36, 34], [5, 6], [3, 1], [9, 5]),
            (DType::F32, [3, 48, 48], [64, 63], [1, 1], [64, 63]),
            (DType::F32, [4, 40, 64], [13, 13], [1, 1], [13, 13]),
        ];
        for (dtype, [n, c, o], hw, p, out) in cases {
            let win = Window {
                k: [3, 3],
                s: [1, 1],
                d: [1, 1],
                p,
                out,
            };
            let x = [n, c, hw[0], hw[1]];
            let plan = winograd_plan(dtype, &x, o, &win).unwrap();
            if dtype == DType::F32 && c == 48 {
                assert!(wg::chunk_images::<f32>(&plan) < n, "one chunk");
            }
            let dy = [n, o, out[0], out[1]];
            assert!(winograd_plan(dtype, &dy, c, &Window { out: hw, ..win }).is_some());
            conv_hooks_match_the_default(dtype, [n, c, o], hw, &win);
        }
    }

    /// The CPU's three convolution hooks in `dtype` against core's primitive default (`unfold2d`,
    /// one `matmul`, `fold2d`) run in f64 on the same values, within the conformance vectors'
    /// tolerance: `rtol` 1e-4 (f32) or 1e-8 (f64), `atol` 1e-5 or 1e-10 times the largest
    /// magnitude of the result (at least 1).
    fn conv_hooks_match_the_default(
        dtype: DType,
        [n, c, o]: [usize; 3],
        [h, wd]: [usize; 2],
        win: &Window,
    ) {
        let b = CpuBackend;
        let [oh, ow] = win.out;
        // Short decimals, rounded to `dtype` first so both runs see the same values.
        let data = |len: usize, seed: usize| -> Vec<f64> {
            (0..len)
                .map(|i| (((i + seed) * 7919 + seed * 31) % 2001) as f64 / 1000.0 - 1.0)
                .map(|v| {
                    if dtype == DType::F32 {
                        v as f32 as f64
                    } else {
                        v
                    }
                })
                .collect()
        };
        let dims = [
            vec![n, c, h, wd],
            vec![o, c, win.k[0], win.k[1]],
            vec![o],
            vec![n, o, oh, ow],
        ];
        let layouts = dims.clone().map(|d| Layout::contiguous(&d));
        let upload = |t: DType| -> Vec<Arc<dyn Buffer>> {
            let seeds = 1..;
            dims.iter()
                .zip(seeds)
                .map(|(d, seed)| {
                    let len = d.iter().product();
                    b.upload(HostData::from_f64(t, &data(len, seed))).unwrap()
                })
                .collect()
        };
        fn v<'a>(buf: &'a Arc<dyn Buffer>, l: &'a Layout) -> View<'a> {
            View {
                buf: buf.as_ref(),
                layout: l,
            }
        }
        let read = |buf: Arc<dyn Buffer>| -> Vec<f64> {
            let l = Layout::contiguous(&[buf.len()]);
            b.download(v(&buf, &l)).unwrap().to_f64()
        };
        let (got, want) = (upload(dtype), upload(DType::F64));
        fn views<'a>(bufs: &'a [Arc<dyn Buffer>], layouts: &'a [Layout]) -> Vec<View<'a>> {
            bufs.iter().zip(layouts).map(|(buf, l)| v(buf, l)).collect()
        }
        let (g, e) = (views(&got, &layouts), views(&want, &layouts));
        let pairs = [
            (
                "forward",
                b.conv2d(g[0], g[1], Some(g[2]), win).unwrap(),
                fallback::conv2d(&b, e[0], e[1], Some(e[2]), win).unwrap(),
            ),
            (
                "input grad",
                b.conv2d_input_grad(g[3], g[1], win, [h, wd]).unwrap(),
                fallback::conv2d_input_grad(&b, e[3], e[1], win, [h, wd]).unwrap(),
            ),
            (
                "weight grad",
                b.conv2d_weight_grad(g[0], g[3], win).unwrap(),
                fallback::conv2d_weight_grad(&b, e[0], e[3], win).unwrap(),
            ),
        ];
        let (rtol, atol) = if dtype == DType::F32 {
            (1e-4, 1e-5)
        } else {
            (1e-8, 1e-10)
        };
        for (what, got, want) in pairs {
            let (got, want) = (read(got), read(want));
            assert_eq!(got.len(), want.len(), "{what}");
            let scale = want.iter().fold(1f64, |m, w| m.max(w.abs()));
            for (i, (a, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - e).abs() <= atol * scale + rtol * e.abs(),
                    "{dtype} {what} at {i}: {a} vs {e} (scale {scale})"
                );
            }
        }
    }

    /// The fused LSTM cell (forward and backward, f32 and f64) against the primitive-built
    /// default, on strided inputs (gate blocks of a wider product).
    #[test]
    fn fused_lstm_cell_matches_the_primitive_default() {
        let b = CpuBackend;
        let (rows, h) = (3, 5);
        let data = |len: usize, seed: usize| -> Vec<f64> {
            (0..len)
                .map(|i| (((i + seed) * 7919 + seed * 131) % 2001) as f64 / 500.0 - 2.0)
                .collect()
        };
        for dtype in [DType::F32, DType::F64] {
            let up = |v: Vec<f64>| b.upload(HostData::from_f64(dtype, &v)).unwrap();
            // x is read through a layout with a row stride wider than 4h.
            let x = up(data(rows * 6 * h, 1));
            let xl = Layout::new(vec![rows, 4 * h], vec![6 * h, 1], h);
            let (r, c) = (up(data(rows * 4 * h, 2)), up(data(rows * h, 3)));
            let (rl, cl) = (
                Layout::contiguous(&[rows, 4 * h]),
                Layout::contiguous(&[rows, h]),
            );
            let v = |buf: &Arc<dyn Buffer>, l: &Layout| -> Vec<f64> {
                b.download(View {
                    buf: buf.as_ref(),
                    layout: l,
                })
                .unwrap()
                .to_f64()
            };
            let (xv, rv, cv) = (
                View {
                    buf: x.as_ref(),
                    layout: &xl,
                },
                View {
                    buf: r.as_ref(),
                    layout: &rl,
                },
                View {
                    buf: c.as_ref(),
                    layout: &cl,
                },
            );
            let fused = b.lstm_cell(xv, rv, cv).unwrap();
            let plain = fallback::lstm_cell(&b, xv, rv, cv).unwrap();
            let (dh, dc) = (up(data(rows * h, 4)), up(data(rows * h, 5)));
            let (a, tc) = (fused[0].clone(), fused[2].clone());
            fn view<'a>(buf: &'a Arc<dyn Buffer>, l: &'a Layout) -> View<'a> {
                View {
                    buf: buf.as_ref(),
                    layout: l,
                }
            }
            let (av, tv, dhv, dcv) = (
                view(&a, &rl),
                view(&tc, &cl),
                view(&dh, &cl),
                view(&dc, &cl),
            );
            let fb = b.lstm_cell_backward(av, cv, tv, dhv, dcv).unwrap();
            let pb = fallback::lstm_cell_backward(&b, av, cv, tv, dhv, dcv).unwrap();
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            for (k, l) in [&rl, &cl, &cl, &cl].iter().enumerate() {
                for (p, q) in v(&fused[k], l).iter().zip(v(&plain[k], l)) {
                    assert!(
                        (p - q).abs() <= tol * (1.0 + q.abs()),
                        "{dtype:?} output {k}"
                    );
                }
            }
            for (k, l) in [&rl, &cl].iter().enumerate() {
                for (p, q) in v(&fb[k], l).iter().zip(v(&pb[k], l)) {
                    assert!((p - q).abs() <= tol * (1.0 + q.abs()), "{dtype:?} grad {k}");
                }
            }
        }
    }

    /// Empty batches and channel counts reach the kernels' guards, not a zero chunk size.
    #[test]
    fn empty_convolutions_pooling_and_cells_give_empty_results() {
        use tessera_core::ops::conv::{conv2d, ConvOptions};
        use tessera_core::ops::pool::{max_pool2d, PoolOptions};
        let dev = cpu();
        for (x, w) in [([0, 3, 8, 8], [4, 3, 3, 3]), ([2, 3, 8, 8], [0, 3, 3, 3])] {
            for dtype in [DType::F32, DType::F64] {
                let xt = Tensor::zeros(&x, dtype, &dev)
                    .unwrap()
                    .requires_grad_()
                    .unwrap();
                let wt = Tensor::zeros(&w, dtype, &dev)
                    .unwrap()
                    .requires_grad_()
                    .unwrap();
                let y = conv2d(&xt, &wt, None, &ConvOptions::new().padding(1)).unwrap();
                assert_eq!(y.dims(), &[x[0], w[0], 8, 8]);
                let p = max_pool2d(&y, &PoolOptions::new(2)).unwrap();
                let g = p.sum_all().unwrap().backward().unwrap();
                assert_eq!(g.get(&wt).unwrap().dims(), &w);
            }
        }
        let b = CpuBackend;
        let e = b.upload(HostData::F32(vec![])).unwrap();
        let (l4, l1) = (Layout::contiguous(&[0, 8]), Layout::contiguous(&[0, 2]));
        let v = |l| View {
            buf: e.as_ref(),
            layout: l,
        };
        let out = b.lstm_cell(v(&l4), v(&l4), v(&l1)).unwrap();
        assert!(out.iter().all(|o| o.is_empty()));
    }

    #[test]
    fn middle_axis_reductions_match_a_plain_loop() {
        // [a, b, c] reduced over b with c contiguous: the row-accumulating path, small and big.
        for (a, b, c) in [(3, 4, 5), (40, 9, 300)] {
            let dev = cpu();
            let data: Vec<f64> = (0..a * b * c)
                .map(|i| ((i * 7919) % 1000) as f64 / 37.0 - 13.0)
                .collect();
            let x = Tensor::from_vec(data, &[a, b, c], &dev).unwrap();
            let v = x.to_vec::<f64>().unwrap();
            let sum = x.sum(&[1], false).unwrap().to_vec::<f64>().unwrap();
            let max = x.amax(&[1], false).unwrap().to_vec::<f64>().unwrap();
            for i in 0..a {
                for k in 0..c {
                    let col = (0..b).map(|j| v[(i * b + j) * c + k]);
                    let s: f64 = col.clone().sum();
                    let m = col.fold(f64::NEG_INFINITY, f64::max);
                    assert!(
                        (sum[i * c + k] - s).abs() < 1e-12,
                        "sum {a}x{b}x{c} at {i},{k}"
                    );
                    assert_eq!(max[i * c + k], m, "max {a}x{b}x{c} at {i},{k}");
                }
            }
        }
    }

    #[test]
    fn large_strided_binary_ops_match_a_plain_loop() {
        // Exercises the parallel segment driver across row boundaries.
        let dev = cpu();
        let a = Tensor::arange(0.0, 300.0 * 257.0, 1.0, DType::F64, &dev)
            .unwrap()
            .reshape(&[300, 257])
            .unwrap();
        let b = Tensor::arange(0.0, 257.0, 1.0, DType::F64, &dev).unwrap();
        let y = a
            .t()
            .unwrap()
            .add(&b.reshape(&[257, 1]).unwrap())
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
        for i in 0..257 {
            for j in 0..300 {
                assert_eq!(y[i * 300 + j], (j * 257 + i) as f64 + i as f64);
            }
        }
    }
}
