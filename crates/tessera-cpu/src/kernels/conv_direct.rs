//! Direct 2-d convolution for stride 1 and dilation 1 (f32, AVX2 + FMA): an implicit GEMM that
//! reads each tap straight from a zero-padded copy of the image instead of building im2col
//! columns and packing them for a GEMM. With LeNet-sized layers (6 or 16 output channels) the
//! packing of an im2col GEMM costs more than the multiply-adds it feeds; here every loaded
//! vector of input feeds 4 or 6 output channels.
//!
//! Layout trick: each image is copied once into `U[c][kw][r][ow] = xpad[c][r][ow + kw]`
//! (`r < Hp`, `ow < OW`; `xpad` the zero-padded image): an im2col over the kernel's columns only,
//! K1 times the image instead of K0·K1 times. Output position `p = oh·OW + ow` then reads tap
//! `(c, kh, kw)` at `U` offset `((c·K1 + kw)·Hp + kh)·OW + p`, so a run of consecutive output
//! positions reads a contiguous run of `U`, and no position is computed only to be dropped (the
//! padded-image form, `p = oh·Wp + ow`, spent (K1 - 1)/Wp of its work on such positions:
//! 29-44% for LeNet's layers).
//!
//! The input gradient of a stride-1 convolution is itself one: `dy` padded by `K - 1 - p`
//! against the weights flipped in both spatial dims with input and output channels swapped.

use rayon::prelude::*;

/// The geometry of one direct convolution: input `[n, c, h, w]`, weight `[o, c, k0, k1]`,
/// `pad` = (top, left) zeros before the image, output `[n, o, out0, out1]`.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub k: [usize; 2],
    pub pad: [usize; 2],
    pub out: [usize; 2],
}

/// Extra zeros after `U`: the last block of positions reads up to one block past the end.
const SLACK: usize = 32;

impl Plan {
    /// Padded height (stride 1: `out0 + k0 - 1`).
    fn padded_rows(&self) -> usize {
        self.out[0] + self.k[0] - 1
    }
    /// Output positions per channel.
    fn positions(&self) -> usize {
        self.out[0] * self.out[1]
    }
    /// Elements of `U` (see the module comment), slack included.
    fn unfolded_len(&self) -> usize {
        self.c * self.k[1] * self.padded_rows() * self.out[1] + SLACK
    }
    /// Taps per output channel: `c·k0·k1`.
    fn taps(&self) -> usize {
        self.c * self.k[0] * self.k[1]
    }
    /// Offset in `U` of each tap `(c, kh, kw)`, in weight order.
    fn offsets(&self) -> Vec<usize> {
        let (hp, ow) = (self.padded_rows(), self.out[1]);
        let mut offs = Vec::with_capacity(self.taps());
        for c in 0..self.c {
            for kh in 0..self.k[0] {
                for kw in 0..self.k[1] {
                    offs.push(((c * self.k[1] + kw) * hp + kh) * ow);
                }
            }
        }
        offs
    }
    /// The taps in kernel-row-major order `(kh, c, kw)`: for each, its index in weight order
    /// and its offset in `U`. The taps of one kernel row are then adjacent, so a block of
    /// output rows can skip the kernel rows that only read padding.
    fn taps_by_kernel_row(&self) -> (Vec<usize>, Vec<usize>) {
        let (hp, ow) = (self.padded_rows(), self.out[1]);
        let kk = self.k[0] * self.k[1];
        let mut order = Vec::with_capacity(self.taps());
        let mut offs = Vec::with_capacity(self.taps());
        for kh in 0..self.k[0] {
            for c in 0..self.c {
                for kw in 0..self.k[1] {
                    order.push(c * kk + kh * self.k[1] + kw);
                    offs.push(((c * self.k[1] + kw) * hp + kh) * ow);
                }
            }
        }
        (order, offs)
    }
    /// The kernel rows `kh` that read some image row for output rows `rows` (inclusive): the
    /// others read only the zero padding above or below the image.
    fn live_kernel_rows(&self, rows: [usize; 2]) -> std::ops::Range<usize> {
        let lo = self.pad[0].saturating_sub(rows[1]);
        let hi = (self.pad[0] + self.h)
            .saturating_sub(rows[0])
            .min(self.k[0]);
        lo..hi.max(lo)
    }
    /// Builds `U` of one image `[c, h, w]` in `dst` (`unfolded_len` elements). Only the places
    /// the image lands are written: the zeros around them are the same for every image, so
    /// `dst` must start zeroed and serve only this plan (per-image zero fills of the many short
    /// border runs cost W2a 7%).
    fn unfold_image(&self, img: &[f32], dst: &mut [f32]) {
        let (hp, ow_n) = (self.padded_rows(), self.out[1]);
        let rows = self.h.min(hp.saturating_sub(self.pad[0]));
        for c in 0..self.c {
            for kw in 0..self.k[1] {
                // Output column ow reads input column ow + kw - pad; the ones inside the image:
                let lo = self.pad[1].saturating_sub(kw).min(ow_n);
                let hi = (self.w + self.pad[1]).saturating_sub(kw).clamp(lo, ow_n);
                if lo == hi {
                    continue;
                }
                let first = lo + kw - self.pad[1];
                let d = ((c * self.k[1] + kw) * hp + self.pad[0]) * ow_n + lo;
                let s = c * self.h * self.w + first;
                assert!(
                    rows == 0
                        || (d + (rows - 1) * ow_n + (hi - lo) <= dst.len()
                            && s + (rows - 1) * self.w + (hi - lo) <= img.len())
                );
                // SAFETY: AVX2 is checked by every caller (`available()`); the rows written
                // and read are in bounds (asserted above). Rows of 5-28 elements: a libc
                // memmove per row cost W2a a tenth of its time.
                unsafe {
                    avx::copy_rows(
                        dst.as_mut_ptr().add(d),
                        ow_n,
                        img.as_ptr().add(s),
                        self.w,
                        rows,
                        hi - lo,
                    )
                }
            }
        }
    }
}

/// Whether this CPU runs the direct kernels (AVX2 and FMA, detected at run time: the build
/// does not assume them).
pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Whether a stride-1, dilation-1 convolution with these channel counts should take the direct
/// kernels. Measured with W2a (6→16, the direct kernels) against W2b (192→384, where im2col
/// feeding the GEMM, whose packing is then amortised, stays faster).
pub fn worthwhile(c: usize, o: usize) -> bool {
    c.min(o) <= 32
}

/// Weight-gradient tiles: 6 rows of `dy` × 2 taps where 4 do not divide `o` but 6 do (LeNet's
/// first layer), else 4 × 3 (one vector of `dy` at a time, no spill); rows past `o` are zero.
fn six_block(o: usize) -> bool {
    !o.is_multiple_of(4) && o.is_multiple_of(6)
}

/// Images per parallel task: every thread gets a share, and each task reuses its scratch.
fn chunk(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

/// `y` `[n, o, out0, out1]` = the cross-correlation of `x` `[n, c, h, w]` with `weight`
/// `[o, c, k0, k1]` (both contiguous). Call only when [`available`].
/// The input gradient `[n, c, h, w]` of the convolution `p` (with `p.pad[i] < p.k[i]` and
/// every output row and column reached) from `dy` `[n, o, out0, out1]`: a direct convolution
/// of `dy`, padded by `k - 1 - pad`, with the flipped, channel-swapped weights.
pub fn input_grad(dy: &[f32], weight: &[f32], p: &Plan) -> Vec<f32> {
    let (kk, taps) = (p.k[0] * p.k[1], p.taps());
    let mut flipped = vec![0.0f32; weight.len()];
    for o in 0..p.o {
        for c in 0..p.c {
            for t in 0..kk {
                flipped[(c * p.o + o) * kk + (kk - 1 - t)] = weight[o * taps + c * kk + t];
            }
        }
    }
    let q = Plan {
        n: p.n,
        c: p.o,
        h: p.out[0],
        w: p.out[1],
        o: p.c,
        k: p.k,
        pad: [p.k[0] - 1 - p.pad[0], p.k[1] - 1 - p.pad[1]],
        out: [p.h, p.w],
    };
    forward(dy, &flipped, None, &q, false)
}

/// The weight gradient `[o, c, k0, k1]` of the convolution `p` from `x` and `dy`.
pub fn weight_grad(x: &[f32], dy: &[f32], p: &Plan) -> Vec<f32> {
    if six_block(p.o) {
        weight_grad_blocked::<6, 2>(x, dy, p)
    } else {
        weight_grad_blocked::<4, 3>(x, dy, p)
    }
}

/// Output-channel blocks of the forward: 6 wide (6 × 2 vectors = 12 independent accumulators,
/// enough to keep both FMA pipes busy), then one block of 4 for a remainder of 1-4, or of 6 for
/// a remainder of 5 (zero weights past `o`). A 4 × 2 tile alone has only 8 accumulators in
/// flight and ran W2a's 16 channels at 60% of the 6-wide speed; a 4 × 3 tile needs 17 vector
/// registers and spilled.
fn forward_blocks(o: usize) -> Vec<(usize, usize)> {
    let mut blocks = Vec::new();
    let mut start = 0;
    while start < o {
        let width = if o - start <= 4 { 4 } else { 6 };
        blocks.push((start, width));
        start += width;
    }
    blocks
}

/// `y` `[n, o, out0, out1]` = `bias` + the cross-correlation of `x` `[n, c, h, w]` with
/// `weight` `[o, c, k0, k1]` (all contiguous). Call only when [`available`].
/// With `relu`, the outputs leave through a ReLU (a layer's activation, in the same pass).
pub fn forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, p: &Plan, relu: bool) -> Vec<f32> {
    const PB: usize = 2;
    let taps = p.taps();
    let blocks = forward_blocks(p.o);
    let rows: usize = blocks.iter().map(|b| b.1).sum();
    // Weights packed per block as [tap][width] (zeros past o, taps in kernel-row order), so a
    // tap's weights are adjacent; the bias per block likewise (it seeds the accumulators).
    let (order, offs) = p.taps_by_kernel_row();
    let mut packed = vec![0.0f32; rows * taps];
    let mut pbias = vec![0.0f32; rows];
    for &(start, width) in &blocks {
        for i in 0..width.min(p.o - start) {
            let o = start + i;
            for (t, &src) in order.iter().enumerate() {
                packed[(start * taps) + t * width + i] = weight[o * taps + src];
            }
            pbias[start + i] = bias.map_or(0.0, |b| b[o]);
        }
    }
    let span = 8 * PB;
    // Positions rounded up to whole tiles (the rows of `acc`).
    let wide = p.positions().div_ceil(span) * span;
    let row_taps = p.c * p.k[1];
    // Per tile of positions, the taps that read some image row; padded convolutions skip the
    // rest. W2a's input gradient (a convolution padded by k - 1) skips a quarter of its taps.
    let live: Vec<std::ops::Range<usize>> = (0..wide)
        .step_by(span)
        .map(|p0| {
            let last = ((p0 + span - 1) / p.out[1]).min(p.out[0] - 1);
            let kh = p.live_kernel_rows([p0 / p.out[1], last]);
            kh.start * row_taps..kh.end * row_taps
        })
        .collect();
    let (in_len, out_len) = (p.c * p.h * p.w, p.o * p.positions());
    let mut y = crate::buffer::alloc::<f32>(p.n * out_len);
    let per = chunk(p.n);
    y.par_chunks_mut(per * out_len)
        .enumerate()
        .for_each(|(ci, ys)| {
            let mut img = vec![0.0f32; p.unfolded_len()];
            let mut acc = vec![0.0f32; rows * wide];
            for (j, y_img) in ys.chunks_mut(out_len).enumerate() {
                let n = ci * per + j;
                p.unfold_image(&x[n * in_len..(n + 1) * in_len], &mut img);
                for &(start, width) in &blocks {
                    let wb = &packed[start * taps..(start + width) * taps];
                    let bb = pbias[start..start + width].as_ptr();
                    for (p0, taps) in (0..wide).step_by(span).zip(&live) {
                        let (src, dst) = (img.as_ptr(), acc.as_mut_ptr());
                        let (offs, wb) = (&offs[taps.clone()], wb[taps.start * width..].as_ptr());
                        // SAFETY: `available()` was checked by the caller (AVX2 + FMA); reads
                        // stay inside `img` (`offs[t] + p0 + span ≤ unfolded_len`, see SLACK),
                        // `wb` holds `width` weights for each of `offs`, `bb` `width` biases,
                        // and writes stay inside `acc` (`width` rows of `wide` from `start`).
                        unsafe {
                            let (src, dst) = (src.add(p0), dst.add(start * wide + p0));
                            if width == 6 {
                                avx::fwd_tile::<6, PB>(src, offs, wb, bb, dst, wide)
                            } else {
                                avx::fwd_tile::<4, PB>(src, offs, wb, bb, dst, wide)
                            }
                        }
                    }
                }
                // Drop the rounding past the last position (and apply the ReLU, while the
                // image's outputs are in cache).
                let l = p.positions();
                for (o, y_o) in y_img.chunks_mut(l).enumerate() {
                    let src = &acc[o * wide..o * wide + l];
                    if relu {
                        for (d, &s) in y_o.iter_mut().zip(src) {
                            *d = super::elementwise::relu(s);
                        }
                    } else {
                        y_o.copy_from_slice(src);
                    }
                }
            }
        });
    y
}

fn weight_grad_blocked<const OB: usize, const TB: usize>(
    x: &[f32],
    dy: &[f32],
    p: &Plan,
) -> Vec<f32> {
    let taps = p.taps();
    let blocks = p.o.div_ceil(OB);
    let offs = p.offsets();
    let l = p.positions();
    // Positions rounded up to whole vectors (the rows of `dw`).
    let wide = l.div_ceil(8) * 8;
    let (in_len, out_len) = (p.c * p.h * p.w, p.o * l);
    let per = chunk(p.n);
    // One partial gradient [blocks·OB, taps] per task, summed at the end.
    let partials: Vec<Vec<f32>> = (0..p.n.div_ceil(per))
        .into_par_iter()
        .map(|ci| {
            let mut part = vec![0.0f32; blocks * OB * taps];
            let mut img = vec![0.0f32; p.unfolded_len()];
            // dy rows padded with zeros to a multiple of 8 positions, so the tail adds nothing.
            let mut dw = vec![0.0f32; blocks * OB * wide];
            for n in ci * per..((ci + 1) * per).min(p.n) {
                p.unfold_image(&x[n * in_len..(n + 1) * in_len], &mut img);
                let d_img = &dy[n * out_len..(n + 1) * out_len];
                for (o, d_o) in d_img.chunks(l).enumerate() {
                    dw[o * wide..o * wide + l].copy_from_slice(d_o);
                }
                for b in 0..blocks {
                    let rows = dw[b * OB * wide..].as_ptr();
                    let out = &mut part[b * OB * taps..(b + 1) * OB * taps];
                    let mut t0 = 0;
                    // SAFETY: AVX2 + FMA checked by the caller; `rows` has OB rows of `wide`,
                    // and each tap reads `img[offs[t]..offs[t] + wide]`, inside `img` (SLACK).
                    unsafe {
                        while t0 + TB <= taps {
                            avx::wgrad_tile::<OB, TB>(
                                rows,
                                wide,
                                img.as_ptr(),
                                &offs[t0..t0 + TB],
                                out,
                                taps,
                                t0,
                            );
                            t0 += TB;
                        }
                        while t0 < taps {
                            avx::wgrad_tile::<OB, 1>(
                                rows,
                                wide,
                                img.as_ptr(),
                                &offs[t0..t0 + 1],
                                out,
                                taps,
                                t0,
                            );
                            t0 += 1;
                        }
                    }
                }
            }
            part
        })
        .collect();
    let mut g = vec![0.0f32; p.o * taps];
    for part in &partials {
        for (d, s) in g.iter_mut().zip(part) {
            *d += s;
        }
    }
    g
}

mod avx {
    use std::arch::x86_64::*;

    /// `acc[i][p0 + 0..8·PB] = bias[i] + Σ_t w[t][i] · img[offs[t] + 0..8·PB]` for the OB output channels
    /// of one block; `out` row i is at `out + i·stride`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fwd_tile<const OB: usize, const PB: usize>(
        img: *const f32,
        offs: &[usize],
        w: *const f32,
        bias: *const f32,
        out: *mut f32,
        stride: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); PB]; OB];
        for (i, row) in acc.iter_mut().enumerate() {
            *row = [_mm256_broadcast_ss(&*bias.add(i)); PB];
        }
        for (t, &off) in offs.iter().enumerate() {
            let src = img.add(off);
            let mut xv = [_mm256_setzero_ps(); PB];
            for (j, v) in xv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(src.add(8 * j));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let wv = _mm256_broadcast_ss(&*w.add(t * OB + i));
                for (a, &v) in row.iter_mut().zip(&xv) {
                    *a = _mm256_fmadd_ps(wv, v, *a);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, a) in row.iter().enumerate() {
                _mm256_storeu_ps(out.add(i * stride + 8 * j), *a);
            }
        }
    }

    /// `out[i·taps + t0 + j] += Σ_p rows[i][p] · img[offs[j] + p]` over `p < wide` (a multiple
    /// of 8) for OB rows of `dy` and TB taps.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn wgrad_tile<const OB: usize, const TB: usize>(
        rows: *const f32,
        wide: usize,
        img: *const f32,
        offs: &[usize],
        out: &mut [f32],
        taps: usize,
        t0: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); TB]; OB];
        let mut src = [img; TB];
        for (s, &o) in src.iter_mut().zip(offs) {
            *s = img.add(o);
        }
        for p in (0..wide).step_by(8) {
            let mut xv = [_mm256_setzero_ps(); TB];
            for (v, s) in xv.iter_mut().zip(&src) {
                *v = _mm256_loadu_ps(s.add(p));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let d = _mm256_loadu_ps(rows.add(i * wide + p));
                for (a, &v) in row.iter_mut().zip(&xv) {
                    *a = _mm256_fmadd_ps(d, v, *a);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, a) in row.iter().enumerate() {
                out[i * taps + t0 + j] += hsum(*a);
            }
        }
    }

    /// Copies `rows` rows of `n` elements, `src` rows `ss` apart to `dst` rows `ds` apart:
    /// 8 lanes at a time, the tail as one more 8-lane copy ending at `n` (overlapping the last
    /// one: AMD's masked stores are microcoded and cost more than the row), scalar below 8.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn copy_rows(
        dst: *mut f32,
        ds: usize,
        src: *const f32,
        ss: usize,
        rows: usize,
        n: usize,
    ) {
        for r in 0..rows {
            let (d, s) = (dst.add(r * ds), src.add(r * ss));
            if n < 8 {
                for j in 0..n {
                    *d.add(j) = *s.add(j);
                }
                continue;
            }
            let mut j = 0;
            while j + 8 <= n {
                _mm256_storeu_ps(d.add(j), _mm256_loadu_ps(s.add(j)));
                j += 8;
            }
            if j < n {
                _mm256_storeu_ps(d.add(n - 8), _mm256_loadu_ps(s.add(n - 8)));
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}
