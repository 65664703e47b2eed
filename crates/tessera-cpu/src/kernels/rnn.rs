//! The fused LSTM cell (PyTorch's gate order i, f, g, o): one pass over each batch row instead
//! of a dozen elementwise ops, each with its own allocation and dispatch, per time step.

use super::{vmath, Float};
use crate::buffer::alloc;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Gate elements (`4h` per row) one parallel task takes at least: a cell row costs ~5-10× an
/// `add` per element (transcendentals), so it splits at 1/8 of the elementwise threshold
/// (`PAR_MIN`) — W5's 32 rows of 1024 gates become two tasks. Measured in W5 (2 threads, 3
/// alternating runs of 60 steps, best step): 19.95 -> 16.42 ms.
const CELL_ROWS_MIN: usize = 1 << 13;

/// Row-wise sigmoid and tanh: the vectorised f32 versions, libm for f64.
pub trait CellMath: Float {
    fn sigmoid_into(x: &[Self], o: &mut [Self]);
    fn tanh_into(x: &[Self], o: &mut [Self]);
}

impl CellMath for f32 {
    fn sigmoid_into(x: &[f32], o: &mut [f32]) {
        vmath::sigmoid_into(x, o)
    }
    fn tanh_into(x: &[f32], o: &mut [f32]) {
        vmath::tanh_into(x, o)
    }
}

impl CellMath for f64 {
    fn sigmoid_into(x: &[f64], o: &mut [f64]) {
        for (o, &v) in o.iter_mut().zip(x) {
            // Both branches keep exp's argument non-positive.
            *o = if v >= 0.0 {
                1.0 / (1.0 + (-v).exp())
            } else {
                let e = v.exp();
                e / (1.0 + e)
            };
        }
    }
    fn tanh_into(x: &[f64], o: &mut [f64]) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = v.tanh();
        }
    }
}

/// One step over `b` rows of hidden size `h` (all inputs contiguous): the activations
/// `[b, 4h]`, `c'`, `tanh(c')` and `h'` (`[b, h]` each).
pub fn lstm_cell<T: CellMath>(x: &[T], r: &[T], c: &[T], b: usize, h: usize) -> [Vec<T>; 4] {
    let mut act = alloc::<T>(b * 4 * h);
    let (mut c_new, mut tanh_c, mut h_new) =
        (alloc::<T>(b * h), alloc::<T>(b * h), alloc::<T>(b * h));
    let row = |j: usize, a: &mut [T], cn: &mut [T], tc: &mut [T], hn: &mut [T]| {
        let z: Vec<T> = x[j * 4 * h..(j + 1) * 4 * h]
            .iter()
            .zip(&r[j * 4 * h..(j + 1) * 4 * h])
            .map(|(&p, &q)| p + q)
            .collect();
        T::sigmoid_into(&z[..2 * h], &mut a[..2 * h]);
        T::tanh_into(&z[2 * h..3 * h], &mut a[2 * h..3 * h]);
        T::sigmoid_into(&z[3 * h..], &mut a[3 * h..]);
        let (i, rest) = a.split_at(h);
        let (f, rest) = rest.split_at(h);
        let (g, o) = rest.split_at(h);
        for k in 0..h {
            cn[k] = f[k] * c[j * h + k] + i[k] * g[k];
        }
        T::tanh_into(cn, tc);
        for k in 0..h {
            hn[k] = o[k] * tc[k];
        }
    };
    let rows = act
        .par_chunks_mut(4 * h)
        .zip(c_new.par_chunks_mut(h))
        .zip(tanh_c.par_chunks_mut(h))
        .zip(h_new.par_chunks_mut(h))
        .enumerate()
        .with_min_len(CELL_ROWS_MIN.div_ceil(4 * h));
    rows.for_each(|(j, (((a, cn), tc), hn))| row(j, a, cn, tc, hn));
    [act, c_new, tanh_c, h_new]
}

/// The step's backward: from the activations, `c_prev`, `tanh(c')`, `dh` and `dc` (all
/// contiguous), the gradient of the pre-activations `[b, 4h]` and of `c_prev` `[b, h]`.
pub fn lstm_cell_backward<T: Float>(
    act: &[T],
    c_prev: &[T],
    tanh_c: &[T],
    dh: &[T],
    dc: &[T],
    b: usize,
    h: usize,
) -> [Vec<T>; 2] {
    let mut dz = alloc::<T>(b * 4 * h);
    let mut dc_prev = alloc::<T>(b * h);
    let one = T::one();
    dz.par_chunks_mut(4 * h)
        .zip(dc_prev.par_chunks_mut(h))
        .enumerate()
        .with_min_len(CELL_ROWS_MIN.div_ceil(4 * h))
        .for_each(|(j, (d, dcp))| {
            let a = &act[j * 4 * h..(j + 1) * 4 * h];
            let s = j * h..(j + 1) * h;
            let (cp, tc, dh, dc) = (
                &c_prev[s.clone()],
                &tanh_c[s.clone()],
                &dh[s.clone()],
                &dc[s],
            );
            let (di, rest) = d.split_at_mut(h);
            let (df, rest) = rest.split_at_mut(h);
            let (dg, d_o) = rest.split_at_mut(h);
            for k in 0..h {
                let (i, f, g, o) = (a[k], a[h + k], a[2 * h + k], a[3 * h + k]);
                let dct = dc[k] + dh[k] * o * (one - tc[k] * tc[k]);
                di[k] = dct * g * i * (one - i);
                df[k] = dct * cp[k] * f * (one - f);
                dg[k] = dct * i * (one - g * g);
                d_o[k] = dh[k] * tc[k] * o * (one - o);
                dcp[k] = dct * f;
            }
        });
    [dz, dc_prev]
}

/// Multiply-adds per step (`B·4H·H`) from which a sequence runs on several threads. Measured
/// (LSTM forward + backward, T = 35, B = 32, 2 threads against 1, best of 200): H = 32
/// (131 K) 1197-1250 against 949-963 µs, H = 48 (295 K) 1614-1626 against 1685-1688, H = 64
/// (524 K) 2007-2010 against 2109-2118, H = 128 (2.1 M) 4544-4571 against 5752-5939.
const SEQ_PAR_MIN: usize = 1 << 18;

/// Spins of a barrier wait before yielding the core (a waiting thread normally waits for a
/// few microseconds: both threads run the same share of each step).
const SPIN: u32 = 1 << 14;

/// The per-step GEMM of the sequence kernels, `c = a · b` on the calling thread.
pub trait SeqFloat: CellMath {
    /// `c[i][j] = Σ_p a[i][p] · b[p][j]` (`m × k` by `k × n`, rows at `lda`, `ldb`, `ldc`).
    ///
    /// # Safety
    /// The pointers address the elements so described, `k > 0`, and nothing else reads or
    /// writes `c`'s `m × n` elements during the call.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        lda: usize,
        b: *const Self,
        ldb: usize,
        c: *mut Self,
        ldc: usize,
    );
}

impl SeqFloat for f32 {
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if super::gemm_nn::available() {
            // SAFETY: the caller's contract is `product`'s, and the kernel is available.
            return super::gemm_nn::product(m, k, n, a, lda, b, ldb, c, ldc);
        }
        let (lda, ldb, ldc) = (lda as isize, ldb as isize, ldc as isize);
        // SAFETY: as above; with beta = 0 the GEMM does not read `c`.
        super::matmul::gemm_st(m, k, n, 1.0, a, lda, 1, b, ldb, 1, 0.0, c, ldc, 1)
    }
}

impl SeqFloat for f64 {
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const f64,
        lda: usize,
        b: *const f64,
        ldb: usize,
        c: *mut f64,
        ldc: usize,
    ) {
        let (lda, ldb, ldc) = (lda as isize, ldb as isize, ldc as isize);
        // SAFETY: the caller's contract; with beta = 0 the GEMM does not read `c`.
        super::matmul::gemm_st(m, k, n, 1.0, a, lda, 1, b, ldb, 1, 0.0, c, ldc, 1)
    }
}

/// A buffer the sequence kernels' threads share: each writes only its own hidden units'
/// columns, and reads another thread's columns only after a [`StepBarrier`] wait.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);

// SAFETY: the kernels below access disjoint elements between barrier waits (see `Shared`).
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn new(v: &mut [T]) -> Self {
        Shared(v.as_mut_ptr())
    }

    /// # Safety
    /// `at..at + len` lies in the buffer and no other thread touches it while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut(&self, at: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(at), len)
    }

    /// # Safety
    /// `at..at + len` lies in the buffer and no thread writes it while the slice lives.
    unsafe fn slice(&self, at: usize, len: usize) -> &[T] {
        std::slice::from_raw_parts(self.0.add(at), len)
    }
}

/// A reusable barrier for the sequence kernels' threads: one wait per time step, spinning
/// (a futex wake-up costs more than a step's share of work) and then yielding. It is poisoned
/// when a participant panics, so the others return instead of waiting for ever.
struct StepBarrier {
    parties: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

impl StepBarrier {
    fn new(parties: usize) -> Self {
        StepBarrier {
            parties,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Waits for every party; `false` if the barrier was poisoned (the caller then returns).
    fn wait(&self) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            // The others touch `arrived` again only after they see the next generation.
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return true;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.poisoned.load(Ordering::Relaxed) {
                return false;
            }
            if spins < SPIN {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        true
    }
}

/// Poisons the barrier if its thread unwinds.
struct PoisonOnPanic<'a>(&'a StepBarrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// Threads for a sequence of `b` rows and `h` hidden units: rayon's count, or one when a step
/// is too small to share (`SEQ_PAR_MIN`).
pub fn seq_threads(b: usize, h: usize) -> usize {
    if b * 4 * h * h >= SEQ_PAR_MIN {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// The hidden units each of up to `threads` threads owns: contiguous ranges, multiples of 16
/// (full vectors) but for the last.
fn unit_ranges(h: usize, threads: usize) -> Vec<Range<usize>> {
    let parts = threads.clamp(1, h.div_ceil(16));
    let chunk = match parts {
        1 => h,
        p => h.div_ceil(p).next_multiple_of(16),
    };
    (0..h)
        .step_by(chunk)
        .map(|s| s..(s + chunk).min(h))
        .collect()
}

/// Runs `body(units, barrier)` for each range on its own thread (the first on the caller's),
/// all at once: the bodies wait for each other at every step, so they cannot queue on a pool.
/// Where the OS refuses a thread, the started ones stop at their next wait and the caller runs
/// the whole range alone (each body writes every element of its range, so nothing stale stays).
fn run_parts(parts: &[Range<usize>], body: impl Fn(Range<usize>, &StepBarrier) + Sync) {
    if parts.len() > 1 {
        let barrier = StepBarrier::new(parts.len());
        let run = |units: Range<usize>| {
            let _guard = PoisonOnPanic(&barrier);
            body(units, &barrier)
        };
        let started = std::thread::scope(|s| {
            for units in &parts[1..] {
                let units = units.clone();
                let spawned = std::thread::Builder::new().spawn_scoped(s, || run(units));
                if spawned.is_err() {
                    barrier.poisoned.store(true, Ordering::Relaxed);
                    return false;
                }
            }
            run(parts[0].clone());
            true
        });
        if started {
            return;
        }
    }
    let all = parts[0].start..parts[parts.len() - 1].end;
    body(all, &StepBarrier::new(1))
}

/// What [`lstm_sequence`] computes, in time order: `out` `[T + 1, B, H]` (each `h_t`, then
/// the last cell state), `h_prev` and `c_prev` `[T, B, H]` (the states each step started
/// from), `act` `[T, B, 4H]` and `tanh_c` `[T, B, H]`.
pub struct SeqForward<T> {
    pub out: Vec<T>,
    pub h_prev: Vec<T>,
    pub c_prev: Vec<T>,
    pub act: Vec<T>,
    pub tanh_c: Vec<T>,
}

/// Time index of the `s`-th step run.
fn time_at(s: usize, t_len: usize, reverse: bool) -> usize {
    if reverse {
        t_len - 1 - s
    } else {
        s
    }
}

/// A whole LSTM sequence (`[t_len, b, h]`): `xp` `[T, B, 4H]` (input projections), `bias`
/// `[4H]` added to every step's, `w_t` `[H, 4H]` (`W_hhᵀ`), `h0`, `c0` `[B, H]`, all
/// contiguous, `h > 0`. Each of
/// up to `threads` threads owns a range of hidden units — their four gate columns of the
/// recurrent product, and their cells — for the whole sequence, so a step costs one barrier
/// (every thread's product reads all of the previous `h`) instead of two parallel ops.
/// A zero `h0` skips the first product.
#[allow(clippy::too_many_arguments)]
pub fn lstm_sequence<T: SeqFloat>(
    xp: &[T],
    bias: Option<&[T]>,
    w_t: &[T],
    h0: &[T],
    c0: &[T],
    [t_len, b, h]: [usize; 3],
    reverse: bool,
    threads: usize,
) -> SeqForward<T> {
    let mut f = SeqForward {
        out: alloc::<T>((t_len + 1) * b * h),
        h_prev: alloc::<T>(t_len * b * h),
        c_prev: alloc::<T>(t_len * b * h),
        act: alloc::<T>(t_len * b * 4 * h),
        tanh_c: alloc::<T>(t_len * b * h),
    };
    let h0_zero = h0.iter().all(|v| *v == T::zero());
    let (out, h_prev, c_prev) = (
        Shared::new(&mut f.out),
        Shared::new(&mut f.h_prev),
        Shared::new(&mut f.c_prev),
    );
    let (act, tanh_c) = (Shared::new(&mut f.act), Shared::new(&mut f.tanh_c));
    run_parts(&unit_ranges(h, threads), |units, barrier| {
        let (u0, n) = (units.start, units.len());
        // This thread's recurrent product, the four gate blocks side by side per row.
        let mut r = vec![T::zero(); b * 4 * n];
        let mut z = vec![T::zero(); 4 * n];
        let mut c: Vec<T> = (0..b)
            .flat_map(|j| c0[j * h + u0..j * h + u0 + n].iter().copied())
            .collect();
        // This thread's bias columns, gate blocks side by side as in `z`.
        let bias: Option<Vec<T>> = bias.map(|bs| {
            (0..4)
                .flat_map(|g| bs[g * h + u0..][..n].iter().copied())
                .collect()
        });
        for s in 0..t_len {
            let t = time_at(s, t_len, reverse);
            // SAFETY (this block's `Shared` accesses): rows of step `t` in this thread's
            // columns are written by this thread only; the previous step's `h` (all
            // columns) was completed before the last barrier wait and is not written again.
            let hp = if s == 0 {
                h0.as_ptr()
            } else {
                unsafe { out.0.add(time_at(s - 1, t_len, reverse) * b * h) as *const T }
            };
            if s == 0 && h0_zero {
                r.fill(T::zero());
            } else {
                for g in 0..4 {
                    // SAFETY: `hp` holds b × h, `w_t` h × 4h; `r`'s block g is this thread's.
                    unsafe {
                        let w = w_t.as_ptr().add(g * h + u0);
                        T::gemm(b, h, n, hp, h, w, 4 * h, r.as_mut_ptr().add(g * n), 4 * n)
                    }
                }
            }
            for j in 0..b {
                let row = t * b + j;
                let x = &xp[row * 4 * h..(row + 1) * 4 * h];
                for g in 0..4 {
                    let (zg, rg) = (&mut z[g * n..(g + 1) * n], &r[(j * 4 + g) * n..][..n]);
                    let xg = &x[g * h + u0..];
                    match &bias {
                        // (x + b) + r: the order of the separate bias pass this replaces.
                        Some(bs) => {
                            let bg = &bs[g * n..(g + 1) * n];
                            for (((z, &x), &b), &r) in zg.iter_mut().zip(xg).zip(bg).zip(rg) {
                                *z = x + b + r;
                            }
                        }
                        None => {
                            for ((z, &x), &r) in zg.iter_mut().zip(xg).zip(rg) {
                                *z = x + r;
                            }
                        }
                    }
                }
                // SAFETY (the `Shared` slices): step `t`'s rows in this thread's columns.
                let [i, fg, g, o] =
                    [0, 1, 2, 3].map(|g| unsafe { act.slice_mut(row * 4 * h + g * h + u0, n) });
                T::sigmoid_into(&z[..n], i);
                T::sigmoid_into(&z[n..2 * n], fg);
                T::tanh_into(&z[2 * n..3 * n], g);
                T::sigmoid_into(&z[3 * n..], o);
                let cs = &mut c[j * n..(j + 1) * n];
                unsafe { c_prev.slice_mut(row * h + u0, n) }.copy_from_slice(cs);
                if s == 0 {
                    unsafe { h_prev.slice_mut(row * h + u0, n) }
                        .copy_from_slice(&h0[j * h + u0..j * h + u0 + n]);
                }
                for k in 0..n {
                    cs[k] = fg[k] * cs[k] + i[k] * g[k];
                }
                let tc = unsafe { tanh_c.slice_mut(row * h + u0, n) };
                T::tanh_into(cs, tc);
                let hn = unsafe { out.slice_mut(row * h + u0, n) };
                for k in 0..n {
                    hn[k] = o[k] * tc[k];
                }
                if s + 1 < t_len {
                    let next = time_at(s + 1, t_len, reverse) * b + j;
                    unsafe { h_prev.slice_mut(next * h + u0, n) }.copy_from_slice(hn);
                }
            }
            if s + 1 < t_len && !barrier.wait() {
                return;
            }
        }
        for j in 0..b {
            // SAFETY: the last cell state's rows in this thread's columns.
            unsafe { out.slice_mut((t_len * b + j) * h + u0, n) }
                .copy_from_slice(&c[j * n..(j + 1) * n]);
        }
    });
    f
}

/// What [`lstm_sequence_backward`] computes: the gradient of the pre-activations `dz`
/// `[T, B, 4H]`, of `h0` and `c0` `[B, H]`, and of the bias `[4H]` (`dz` summed over steps
/// and rows).
pub struct SeqGrads<T> {
    pub dz: Vec<T>,
    pub dh0: Option<Vec<T>>,
    pub dc0: Vec<T>,
    pub db: Option<Vec<T>>,
}

/// Backpropagation through [`lstm_sequence`] (same `[t_len, b, h]`): from `w_hh` `[4H, H]`,
/// the forward's `act`, `c_prev`, `tanh_c`, and `grad` `[T + 1, B, H]` (the gradient of its
/// `out`), the gradients [`SeqGrads`], that of `h0` with `need_h0` and that of the bias with
/// `need_bias`. The threads own the same unit ranges as in the forward; a step's `dz` row is
/// complete after one barrier, then each thread's `dz · W_hh` gives its units' `dh` for the
/// next step. Each thread sums its own gate columns of `dz` into the bias gradient while they
/// are in registers, which saves a pass over `dz`.
#[allow(clippy::too_many_arguments)]
pub fn lstm_sequence_backward<T: SeqFloat>(
    w_hh: &[T],
    act: &[T],
    c_prev: &[T],
    tanh_c: &[T],
    grad: &[T],
    [t_len, b, h]: [usize; 3],
    reverse: bool,
    [need_h0, need_bias]: [bool; 2],
    threads: usize,
) -> SeqGrads<T> {
    let mut dz = alloc::<T>(t_len * b * 4 * h);
    let mut dh0 = need_h0.then(|| alloc::<T>(b * h));
    let mut dc0 = alloc::<T>(b * h);
    let mut db = need_bias.then(|| alloc::<T>(4 * h));
    let (dz_s, dc0_s) = (Shared::new(&mut dz), Shared::new(&mut dc0));
    let dh0_s = dh0.as_deref_mut().map(Shared::new);
    let db_s = db.as_deref_mut().map(Shared::new);
    let one = T::one();
    run_parts(&unit_ranges(h, threads), |units, barrier| {
        let (u0, n) = (units.start, units.len());
        let mut dh = vec![T::zero(); b * n];
        // This thread's bias-gradient columns, gate blocks side by side.
        let mut dbl = vec![T::zero(); if need_bias { 4 * n } else { 0 }];
        let mut dc: Vec<T> = (0..b)
            .flat_map(|j| grad[(t_len * b + j) * h + u0..][..n].iter().copied())
            .collect();
        for s in (0..t_len).rev() {
            let t = time_at(s, t_len, reverse);
            for j in 0..b {
                let row = t * b + j;
                let a = &act[row * 4 * h..(row + 1) * 4 * h];
                let at = row * h + u0;
                let (gr, cp, tcs) = (&grad[at..at + n], &c_prev[at..at + n], &tanh_c[at..at + n]);
                let (dhj, dcj) = (&dh[j * n..(j + 1) * n], &mut dc[j * n..(j + 1) * n]);
                // SAFETY: step `t`'s rows in this thread's gate columns.
                let [di, df, dg, d_o] =
                    [0, 1, 2, 3].map(|g| unsafe { dz_s.slice_mut(row * 4 * h + g * h + u0, n) });
                for k in 0..n {
                    let (i, f, g, o) = (
                        a[u0 + k],
                        a[h + u0 + k],
                        a[2 * h + u0 + k],
                        a[3 * h + u0 + k],
                    );
                    let dht = gr[k] + dhj[k];
                    let dct = dcj[k] + dht * o * (one - tcs[k] * tcs[k]);
                    di[k] = dct * g * i * (one - i);
                    df[k] = dct * cp[k] * f * (one - f);
                    dg[k] = dct * i * (one - g * g);
                    d_o[k] = dht * tcs[k] * o * (one - o);
                    dcj[k] = dct * f;
                }
                if need_bias {
                    for (g, d) in [&*di, &*df, &*dg, &*d_o].into_iter().enumerate() {
                        for (acc, &v) in dbl[g * n..(g + 1) * n].iter_mut().zip(d) {
                            *acc = *acc + v;
                        }
                    }
                }
            }
            if s == 0 && !need_h0 {
                break;
            }
            if !barrier.wait() {
                return;
            }
            // SAFETY: step `t`'s dz rows are complete (barrier) and no longer written; `dh` is
            // this thread's.
            unsafe {
                let dzt = dz_s.slice(t * b * 4 * h, b * 4 * h);
                let w = w_hh.as_ptr().add(u0);
                T::gemm(b, 4 * h, n, dzt.as_ptr(), 4 * h, w, h, dh.as_mut_ptr(), n);
            }
        }
        for j in 0..b {
            // SAFETY: this thread's columns of the initial states' gradients.
            unsafe {
                dc0_s
                    .slice_mut(j * h + u0, n)
                    .copy_from_slice(&dc[j * n..(j + 1) * n]);
                if let Some(d) = &dh0_s {
                    d.slice_mut(j * h + u0, n)
                        .copy_from_slice(&dh[j * n..(j + 1) * n]);
                }
            }
        }
        if let Some(d) = &db_s {
            for g in 0..4 {
                // SAFETY: this thread's gate columns of the bias gradient.
                unsafe { d.slice_mut(g * h + u0, n) }.copy_from_slice(&dbl[g * n..(g + 1) * n]);
            }
        }
    });
    SeqGrads { dz, dh0, dc0, db }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: the step kernels (checked against core's primitive default in lib.rs)
    /// with a plain triple-loop product, one step at a time.
    #[allow(clippy::type_complexity)]
    fn reference<T: SeqFloat>(
        xp: &[T],
        w_hh: &[T],
        h0: &[T],
        c0: &[T],
        grad: &[T],
        [t_len, b, h]: [usize; 3],
        reverse: bool,
    ) -> [Vec<T>; 7] {
        let g4 = 4 * h;
        let (mut hs, mut cs) = (h0.to_vec(), c0.to_vec());
        let mut out = vec![T::zero(); (t_len + 1) * b * h];
        let mut steps = vec![[vec![], vec![], vec![], vec![]]; t_len];
        for s in 0..t_len {
            let t = time_at(s, t_len, reverse);
            let mut r = vec![T::zero(); b * g4];
            for j in 0..b {
                for q in 0..g4 {
                    r[j * g4 + q] =
                        (0..h).fold(T::zero(), |acc, p| acc + hs[j * h + p] * w_hh[q * h + p]);
                }
            }
            let x = &xp[t * b * g4..(t + 1) * b * g4];
            let [a, c_new, tc, h_new] = lstm_cell(x, &r, &cs, b, h);
            out[t * b * h..(t + 1) * b * h].copy_from_slice(&h_new);
            steps[t] = [a, hs, cs, tc];
            (hs, cs) = (h_new, c_new);
        }
        out[t_len * b * h..].copy_from_slice(&cs);
        let mut dz_all = vec![T::zero(); t_len * b * g4];
        let mut dh = vec![T::zero(); b * h];
        let mut dc = grad[t_len * b * h..].to_vec();
        for s in (0..t_len).rev() {
            let t = time_at(s, t_len, reverse);
            let dht: Vec<T> = grad[t * b * h..(t + 1) * b * h]
                .iter()
                .zip(&dh)
                .map(|(&p, &q)| p + q)
                .collect();
            let [a, _, cp, tc] = &steps[t];
            let [dz, dcp] = lstm_cell_backward(a, cp, tc, &dht, &dc, b, h);
            for j in 0..b {
                for p in 0..h {
                    dh[j * h + p] =
                        (0..g4).fold(T::zero(), |acc, q| acc + dz[j * g4 + q] * w_hh[q * h + p]);
                }
            }
            dz_all[t * b * g4..(t + 1) * b * g4].copy_from_slice(&dz);
            dc = dcp;
        }
        let field = |k: usize| steps.iter().flat_map(|s| s[k].clone()).collect::<Vec<T>>();
        [
            out,
            field(0),
            field(1),
            field(2),
            field(3),
            dz_all,
            [dh, dc].concat(),
        ]
    }

    fn check<T: SeqFloat + Into<f64>>(tol: f64) {
        let (t_len, b, h) = (3, 5, 40);
        let data = |len: usize, seed: usize| -> Vec<T> {
            (0..len)
                .map(|i| {
                    let v = (((i + seed) * 7919 + seed * 131) % 2001) as f64 / 1000.0 - 1.0;
                    T::from_f64(v * 0.5)
                })
                .collect()
        };
        let (xp, w_hh, grad) = (
            data(t_len * b * 4 * h, 1),
            data(4 * h * h, 2),
            data((t_len + 1) * b * h, 3),
        );
        let w_t: Vec<T> = (0..h * 4 * h)
            .map(|i| w_hh[(i % (4 * h)) * h + i / (4 * h)])
            .collect();
        let close = |what: &str, got: &[T], want: &[T]| {
            assert_eq!(got.len(), want.len(), "{what}");
            for (k, (&p, &q)) in got.iter().zip(want).enumerate() {
                let (p, q): (f64, f64) = (p.into(), q.into());
                assert!(
                    (p - q).abs() <= tol * (1.0 + q.abs()),
                    "{what}[{k}]: {p} vs {q}"
                );
            }
        };
        let bias = data(4 * h, 6);
        // The bias the kernels add to every step, added to `xp` for the reference.
        let xpb: Vec<T> = xp
            .iter()
            .enumerate()
            .map(|(i, &v)| v + bias[i % (4 * h)])
            .collect();
        let cases = [
            (false, true, true),
            (false, false, false),
            (true, false, true),
            (true, true, false),
        ];
        for (reverse, zero_h0, with_bias) in cases {
            let h0 = if zero_h0 {
                vec![T::zero(); b * h]
            } else {
                data(b * h, 4)
            };
            let c0 = data(b * h, 5);
            let (x_ref, bias) = if with_bias {
                (&xpb, Some(&bias[..]))
            } else {
                (&xp, None)
            };
            let [out, act, hp, cp, tc, dz, d0] =
                reference(x_ref, &w_hh, &h0, &c0, &grad, [t_len, b, h], reverse);
            // The bias gradient: dz summed over steps and rows.
            let mut db = vec![T::zero(); 4 * h];
            for (i, &v) in dz.iter().enumerate() {
                db[i % (4 * h)] = db[i % (4 * h)] + v;
            }
            // One thread, and unit ranges [0, 32) + [32, 40) and 16 + 16 + 8.
            for threads in [1, 2, 3] {
                let case = format!(
                    "reverse {reverse}, zero h0 {zero_h0}, bias {with_bias}, {threads} threads"
                );
                let f = lstm_sequence(&xp, bias, &w_t, &h0, &c0, [t_len, b, h], reverse, threads);
                close(&format!("out, {case}"), &f.out, &out);
                close(&format!("act, {case}"), &f.act, &act);
                close(&format!("tanh_c, {case}"), &f.tanh_c, &tc);
                close(&format!("h_prev, {case}"), &f.h_prev, &hp);
                close(&format!("c_prev, {case}"), &f.c_prev, &cp);
                for (need_h0, need_bias) in [(true, false), (false, true)] {
                    let g = lstm_sequence_backward(
                        &w_hh,
                        &f.act,
                        &f.c_prev,
                        &f.tanh_c,
                        &grad,
                        [t_len, b, h],
                        reverse,
                        [need_h0, need_bias],
                        threads,
                    );
                    close(&format!("dz, {case}"), &g.dz, &dz);
                    close(&format!("dc0, {case}"), &g.dc0, &d0[b * h..]);
                    assert_eq!(g.dh0.is_some(), need_h0);
                    if let Some(dh0) = g.dh0 {
                        close(&format!("dh0, {case}"), &dh0, &d0[..b * h]);
                    }
                    assert_eq!(g.db.is_some(), need_bias);
                    if let Some(dbk) = g.db {
                        close(&format!("db, {case}"), &dbk, &db);
                    }
                }
            }
        }
    }

    #[test]
    fn sequence_kernels_match_the_step_kernels_on_any_thread_count() {
        check::<f32>(2e-5);
        check::<f64>(1e-12);
    }
}
