//! The convolution planner: for each convolution (and its two gradients) the first algorithm
//! whose plan fits — direct AVX2 kernels for small channel counts, Winograd F(2×2, 3×3) for
//! 3×3 stride-1 layers with many channels, im2col + GEMM in image chunks otherwise — or a
//! decline (`None`) that core composes. The kernels themselves are in [`crate::kernels`].

use crate::buffer;
use crate::dispatch::{out, relu_in_place, whole};
#[cfg(target_arch = "x86_64")]
use crate::kernels::conv_direct as cd;
use crate::kernels::{self, conv as cv, matmul as mm, winograd as wg};
use crate::CpuBackend;
use std::sync::Arc;
use tessera_core::{Backend, Buffer, DType, Layout, Result, View, Window};

/// A new buffer, or `None` to decline.
type Fused = Result<Option<Arc<dyn Buffer>>>;

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
    /// [`tessera_core::FusedKernels::conv2d`] on the im2col path, per chunk of images ([`conv_chunks`]): weight
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

    /// [`tessera_core::FusedKernels::conv2d`]: the direct kernels (which take the ReLU in their last pass),
    /// Winograd or im2col + GEMM (ReLU over their fresh output in place), whichever plan fits
    /// first; `None` otherwise (half types, empty operands).
    pub(crate) fn conv2d_planned(
        &self,
        x: View<'_>,
        weight: View<'_>,
        bias: Option<View<'_>>,
        w: &Window,
        relu: bool,
    ) -> Fused {
        // Empty operands: the composite's empty result (no kernel has a zero-size plan).
        if w.positions() == 0 || x.layout.numel() == 0 || weight.layout.numel() == 0 {
            return Ok(None);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = direct_plan(x.buf.dtype(), x.layout.shape(), weight.layout.shape()[0], w) {
            let (mut hx, mut hw, mut hb) = (None, None, None);
            let xs = self.rows::<f32>("conv2d", x, &mut hx)?;
            let ws = self.rows::<f32>("conv2d", weight, &mut hw)?;
            let bs = bias
                .map(|b| self.rows::<f32>("conv2d", b, &mut hb))
                .transpose()?;
            return out(cd::forward(xs, ws, bs, &p, relu)).map(Some);
        }
        let (xs, ws) = (x.layout.shape(), weight.layout.shape());
        if let Some(p) = winograd_plan(x.buf.dtype(), xs, ws[0], w) {
            return match x.buf.dtype() {
                DType::F32 => {
                    self.conv2d_winograd::<f32>("conv2d", x, weight, bias, &p, [false, relu])
                }
                _ => self.conv2d_winograd::<f64>("conv2d", x, weight, bias, &p, [false, relu]),
            }
            .map(Some);
        }
        if !Self::gemm_conv(x.buf.dtype(), [xs[0], xs[1], ws[0]]) {
            return Ok(None);
        }
        match x.buf.dtype() {
            DType::F32 => self.conv2d_gemm::<f32>(x, weight, bias, w, relu),
            _ => self.conv2d_gemm::<f64>(x, weight, bias, w, relu),
        }
        .map(Some)
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

    /// [`tessera_core::FusedKernels::conv2d_weight_grad`] on the Winograd path ([`wg::weight_grad`]).
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

    /// [`tessera_core::FusedKernels::conv2d_input_grad`] on the im2col path, per chunk of images: weightᵀ
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

    /// [`tessera_core::FusedKernels::conv2d_weight_grad`] on the im2col path: dy `[O, n·L]` · columnsᵀ
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

impl CpuBackend {
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
    pub(crate) fn gemm_conv(dtype: DType, dims: [usize; 3]) -> bool {
        matches!(dtype, DType::F32 | DType::F64) && !dims.contains(&0)
    }

    /// [`tessera_core::FusedKernels::conv2d_input_grad`]: the direct kernel, Winograd (the convolution of
    /// `dy` with the flipped kernels) or im2col + GEMM, whichever plan fits; `None` otherwise.
    pub(crate) fn conv2d_input_grad_planned(
        &self,
        dy: View<'_>,
        weight: View<'_>,
        w: &Window,
        hw: [usize; 2],
    ) -> Fused {
        // Empty operands: the composite's empty result (no kernel has a zero-size plan).
        if w.positions() == 0 || dy.layout.numel() == 0 || hw.contains(&0) {
            return Ok(None);
        }
        #[cfg(target_arch = "x86_64")]
        {
            let (d, ws) = (dy.layout.shape(), weight.layout.shape());
            if let Some(p) = direct_plan(dy.buf.dtype(), &[d[0], ws[1], hw[0], hw[1]], d[1], w) {
                let (mut hd, mut hwt) = (None, None);
                let dys = self.rows::<f32>("conv2d_input_grad", dy, &mut hd)?;
                let wts = self.rows::<f32>("conv2d_input_grad", weight, &mut hwt)?;
                return out(cd::input_grad(dys, wts, &p)).map(Some);
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
            }
            .map(Some);
        }
        if !Self::gemm_conv(dy.buf.dtype(), [ds[0], ws[1], ws[0]]) {
            return Ok(None);
        }
        match dy.buf.dtype() {
            DType::F32 => self.conv2d_input_grad_gemm::<f32>(dy, weight, w, hw),
            _ => self.conv2d_input_grad_gemm::<f64>(dy, weight, w, hw),
        }
        .map(Some)
    }

    /// [`tessera_core::FusedKernels::conv2d_weight_grad`], planned like the input gradient.
    pub(crate) fn conv2d_weight_grad_planned(
        &self,
        x: View<'_>,
        dy: View<'_>,
        w: &Window,
    ) -> Fused {
        // Empty operands: the composite's empty result (no kernel has a zero-size plan).
        if w.positions() == 0 || x.layout.numel() == 0 || dy.layout.numel() == 0 {
            return Ok(None);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = direct_plan(x.buf.dtype(), x.layout.shape(), dy.layout.shape()[1], w) {
            let (mut hx, mut hd) = (None, None);
            let xs = self.rows::<f32>("conv2d_weight_grad", x, &mut hx)?;
            let dys = self.rows::<f32>("conv2d_weight_grad", dy, &mut hd)?;
            return out(cd::weight_grad(xs, dys, &p)).map(Some);
        }
        let (xs, ds) = (x.layout.shape(), dy.layout.shape());
        if let Some(p) = winograd_plan(x.buf.dtype(), xs, ds[1], w) {
            return match x.buf.dtype() {
                DType::F32 => self.conv2d_weight_grad_winograd::<f32>(x, dy, &p),
                _ => self.conv2d_weight_grad_winograd::<f64>(x, dy, &p),
            }
            .map(Some);
        }
        if !Self::gemm_conv(x.buf.dtype(), [xs[0], xs[1], ds[1]]) {
            return Ok(None);
        }
        match x.buf.dtype() {
            DType::F32 => self.conv2d_weight_grad_gemm::<f32>(x, dy, w),
            _ => self.conv2d_weight_grad_gemm::<f64>(x, dy, w),
        }
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use tessera_core::ops::conv::{conv2d, ConvOptions, Padding};
    use tessera_core::{Composed, FusedKernels, HostData, Tensor};

    /// The GEMM convolutions run a batch whose columns exceed `COLS_BUDGET` in image chunks
    /// (concatenated forward and input gradients, summed weight gradients): against core's
    /// composite (one unfold of the whole batch), f64 at stride 1 (one image per
    /// chunk) and f32 at stride 2 (chunks of 2, 2 and 1).
    #[test]
    fn gemm_convolutions_in_image_chunks_match_the_composite() {
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
            conv_kernels_match_the_composite(dtype, [n, c, o], [hw, hw], &win);
        }
    }

    /// The Winograd path (forward, input and weight gradients) against core's composite: same
    /// and valid padding, padding beyond the kernel
    /// (the input gradient's window then starts inside `dy`), uneven padding after, odd and
    /// even planes, and a batch in several chunks.
    #[test]
    fn winograd_convolutions_match_the_composite() {
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
            conv_kernels_match_the_composite(dtype, [n, c, o], hw, &win);
        }
    }

    /// The CPU's three convolution kernels in `dtype` against core's composite (unfold, one
    /// matmul, fold, and autodiff for the gradients) run in f64 on the same values on the CPU's
    /// primitives alone ([`Composed`]), within the conformance vectors' tolerance: `rtol` 1e-4
    /// (f32) or 1e-8 (f64), `atol` 1e-5 or 1e-10 times the largest magnitude of the result (at
    /// least 1).
    fn conv_kernels_match_the_composite(
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
        let values: Vec<Vec<f64>> = dims
            .iter()
            .zip(1..)
            .map(|(d, seed)| data(d.iter().product(), seed))
            .collect();
        // The CPU's kernels, called directly (each must take these operands).
        let layouts = dims.clone().map(|d| Layout::contiguous(&d));
        let bufs: Vec<Arc<dyn Buffer>> = values
            .iter()
            .map(|v| b.upload(HostData::from_f64(dtype, v)).unwrap())
            .collect();
        let g: Vec<View<'_>> = bufs
            .iter()
            .zip(&layouts)
            .map(|(buf, layout)| View {
                buf: buf.as_ref(),
                layout,
            })
            .collect();
        let read = |buf: Option<Arc<dyn Buffer>>| -> Vec<f64> {
            let buf = buf.expect("the CPU plans this convolution");
            let l = Layout::contiguous(&[buf.len()]);
            b.download(View {
                buf: buf.as_ref(),
                layout: &l,
            })
            .unwrap()
            .to_f64()
        };
        let got = [
            read(b.conv2d(g[0], g[1], Some(g[2]), win, false).unwrap()),
            read(b.conv2d_input_grad(g[3], g[1], win, [h, wd]).unwrap()),
            read(b.conv2d_weight_grad(g[0], g[3], win).unwrap()),
        ];
        // The composite in f64: the forward, and both gradients of sum(y · dy).
        let dev = Composed::device(&cpu());
        let t = |k: usize| Tensor::from_vec(values[k].clone(), &dims[k], &dev).unwrap();
        let (x, w) = (
            t(0).requires_grad_().unwrap(),
            t(1).requires_grad_().unwrap(),
        );
        let after = |i: usize| {
            let n_in = [h, wd][i];
            (win.out[i] - 1) * win.s[i] + (win.k[i] - 1) * win.d[i] + 1 - n_in - win.p[i]
        };
        let opts = ConvOptions::new()
            .stride(win.s[0])
            .padding_mode(Padding::Explicit(vec![
                (win.p[0], after(0)),
                (win.p[1], after(1)),
            ]));
        let y = conv2d(&x, &w, Some(&t(2)), &opts).unwrap();
        let grads = y.mul(&t(3)).unwrap().sum_all().unwrap().backward().unwrap();
        let want = [
            y.to_vec::<f64>().unwrap(),
            grads.get(&x).unwrap().to_vec::<f64>().unwrap(),
            grads.get(&w).unwrap().to_vec::<f64>().unwrap(),
        ];
        let (rtol, atol) = if dtype == DType::F32 {
            (1e-4, 1e-5)
        } else {
            (1e-8, 1e-10)
        };
        for ((what, got), want) in ["forward", "input grad", "weight grad"]
            .iter()
            .zip(got)
            .zip(want)
        {
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

    /// Empty batches and channel counts reach the kernels' guards, not a zero chunk size.
    #[test]
    fn empty_convolutions_pooling_and_cells_give_empty_results() {
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
        // An empty cell is declined (core composes it), never a panic.
        let (l4, l1) = (Layout::contiguous(&[0, 8]), Layout::contiguous(&[0, 2]));
        let v = |l| View {
            buf: e.as_ref(),
            layout: l,
        };
        assert!(b.lstm_cell(v(&l4), v(&l4), v(&l1)).unwrap().is_none());
    }
}
