//! Winograd F(2×2, 3×3) convolution (Lavin & Gray, 2015): each 2×2 block of outputs of a
//! 3×3, stride-1 cross-correlation comes from one 4×4 input patch with 16 multiplies per
//! channel pair instead of 36. The multiplies of all patches are 16 independent GEMMs, one per
//! position ξ of the 4×4 transformed tile:
//!
//! - kernels: `U = G·g·Gᵀ` per (output, input) channel pair, `[O][16][C]`;
//! - inputs: `V = Bᵀ·d·B` per channel and patch, `[C][16][P]` (P patches);
//! - products: `M_ξ = U_ξ · V_ξ`, `[16][O][P]`;
//! - outputs: `Y = Aᵀ·M·A` per channel and patch, 2×2 values, plus the bias.
//!
//! The weight gradient runs the same products backwards: `dU_ξ = Σ_patches Z_ξ·V_ξᵀ` with
//! `Z = A·dY·Aᵀ` per patch, then `dg = Gᵀ·dU·G`.
//!
//! Every transform matrix holds only 0, ±1 and ±½, so the transforms add little rounding: f32
//! results stay within a few ulp of the direct sum's error.
//!
//! The input gradient of such a convolution is one too: `dy` correlated with the kernels
//! flipped and their channel roles swapped, the window starting `2 - pad` rows and columns
//! before `dy`.

use super::Num;
use crate::buffer::{alloc, recycle};
use rayon::prelude::*;
use tessera_core::Layout;

/// Patches per output plane: 2×2 outputs each (the last row or column of patches is cut off
/// where an output size is odd).
pub fn tiles(out: [usize; 2]) -> [usize; 2] {
    [out[0].div_ceil(2), out[1].div_ceil(2)]
}

/// The transformed kernels `[rows][16][cols]` of `weight` `[o, c, 3, 3]` (contiguous): for the
/// forward, rows are the `o` output channels and cols the `c` inputs; `flipped` gives those of
/// the input gradient, rows `c`, cols `o`, each kernel turned by 180°.
pub fn kernels<T: Num>(weight: &[T], [o, c]: [usize; 2], flipped: bool) -> Vec<T> {
    let (rows, cols) = if flipped { (c, o) } else { (o, c) };
    let mut u = alloc::<T>(rows * 16 * cols);
    let half = T::from_f64(0.5);
    // Row `[r0, r1, r2]` times Gᵀ, G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]].
    let g_row = |[r0, r1, r2]: [T; 3]| [r0, (r0 + r1 + r2) * half, (r0 - r1 + r2) * half, r2];
    u.par_chunks_mut(16 * cols).enumerate().for_each(|(r, ur)| {
        for q in 0..cols {
            let (oi, ci) = if flipped { (q, r) } else { (r, q) };
            let k = &weight[(oi * c + ci) * 9..][..9];
            let g = |a: usize, b: usize| {
                if flipped {
                    k[(2 - a) * 3 + 2 - b]
                } else {
                    k[a * 3 + b]
                }
            };
            // G·g column by column, then each row of that times Gᵀ.
            let cols_t = [0, 1, 2].map(|b| g_row([g(0, b), g(1, b), g(2, b)]));
            for a in 0..4 {
                let row = g_row([cols_t[0][a], cols_t[1][a], cols_t[2][a]]);
                for (b, &v) in row.iter().enumerate() {
                    ur[(a * 4 + b) * cols + q] = v;
                }
            }
        }
    });
    u
}

/// Shapes of one Winograd convolution.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Images, input channels, output channels.
    pub n: usize,
    pub c: usize,
    pub o: usize,
    /// Input plane.
    pub hw: [usize; 2],
    /// Output plane.
    pub out: [usize; 2],
    /// Output row (column) `i` reads input rows (columns) `i - pad ..= i - pad + 2`; outside
    /// the input they are zero.
    pub pad: [isize; 2],
}

/// Bytes of transformed inputs and products one chunk of images may hold; the batch runs in
/// chunks of whole images under it.
const BUDGET: usize = 8 << 20;

/// Images per chunk: as many as fit 8 MiB of transformed data (at least one), in chunks of
/// equal size.
pub fn chunk_images<T>(p: &Plan) -> usize {
    let tl = tiles(p.out);
    let per_image = (p.c + p.o) * 16 * tl[0] * tl[1] * std::mem::size_of::<T>();
    let most = (BUDGET / per_image.max(1)).clamp(1, p.n.max(1));
    p.n.div_ceil(p.n.div_ceil(most)).max(1)
}

/// `y` `[n, o, out0, out1]` from `x` `[n, c, h, w]` (contiguous), the transformed kernels
/// `u` ([`kernels`]) and the bias: images in chunks ([`chunk_images`]), each chunk's 16
/// products one batched `mm`.
pub fn conv<T: Num>(
    x: &[T],
    u: &[T],
    bias: Option<&[T]>,
    p: &Plan,
    mm: impl Fn(&[T], &Layout, &[T], &Layout) -> Vec<T>,
) -> Vec<T> {
    let (size, tl) = (chunk_images::<T>(p), tiles(p.out));
    let (image, plane) = (p.c * p.hw[0] * p.hw[1], p.out[0] * p.out[1]);
    let mut y = alloc::<T>(p.n * p.o * plane);
    let lu = Layout::new(vec![16, p.o, p.c], vec![p.c, 16 * p.c, 1], 0);
    for start in (0..p.n).step_by(size) {
        let nc = size.min(p.n - start);
        let patches = nc * tl[0] * tl[1];
        let v = inputs(&x[start * image..(start + nc) * image], nc, p);
        let lv = Layout::new(vec![16, p.c, patches], vec![patches, 16 * patches, 1], 0);
        let m = mm(u, &lu, &v, &lv);
        outputs(
            &m,
            bias,
            nc,
            p,
            &mut y[start * p.o * plane..(start + nc) * p.o * plane],
        );
        recycle(v);
        recycle(m);
    }
    y
}

/// `Bᵀ·d·B` of every patch of `nc` images `[nc, c, h, w]`: `[c][16][nc·tiles]`, patch index
/// `(image·th + ty)·tw + tx`. Per row of patches, `Bᵀ` combines four zero-padded input rows
/// (vectorised along the row), then `B` combines each patch's four columns.
fn inputs<T: Num>(x: &[T], nc: usize, p: &Plan) -> Vec<T> {
    let tl = tiles(p.out);
    let patches = nc * tl[0] * tl[1];
    let mut v = alloc::<T>(p.c * 16 * patches);
    v.par_chunks_mut(16 * patches)
        .enumerate()
        .for_each(|(ci, vc)| input_channel(x, nc, p, ci, vc));
    v
}

/// [`inputs`] of channel `ci`: its `[16][nc·tiles]` block `vc`.
fn input_channel<T: Num>(x: &[T], nc: usize, p: &Plan, ci: usize, vc: &mut [T]) {
    let ([h, w], tl) = (p.hw, tiles(p.out));
    let patches = nc * tl[0] * tl[1];
    // The padded rows hold input columns -pad .. -pad + 2·tw + 2.
    let len = 2 * tl[1] + 2;
    let mut rows = vec![T::zero(); 4 * len];
    let mut t = vec![T::zero(); 4 * len];
    for img in 0..nc {
        let plane = &x[(img * p.c + ci) * h * w..][..h * w];
        for ty in 0..tl[0] {
            for (r, row) in rows.chunks_exact_mut(len).enumerate() {
                padded_row(
                    plane,
                    [h, w],
                    2 * ty as isize - p.pad[0] + r as isize,
                    p.pad[1],
                    row,
                );
            }
            // t = Bᵀ·d over whole rows: Bᵀ = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]].
            let (d0, rest) = rows.split_at(len);
            let (d1, rest) = rest.split_at(len);
            let (d2, d3) = rest.split_at(len);
            let (t0, rest) = t.split_at_mut(len);
            let (t1, rest) = rest.split_at_mut(len);
            let (t2, t3) = rest.split_at_mut(len);
            for j in 0..len {
                t0[j] = d0[j] - d2[j];
                t1[j] = d1[j] + d2[j];
                t2[j] = d2[j] - d1[j];
                t3[j] = d1[j] - d3[j];
            }
            let base = (img * tl[0] + ty) * tl[1];
            for (a, ta) in t.chunks_exact(len).enumerate() {
                // Each patch's row [r0, r1, r2, r3] times B: the same combination.
                let block = &mut vc[a * 4 * patches..(a + 1) * 4 * patches];
                let (p0, rest) = block.split_at_mut(patches);
                let (p1, rest) = rest.split_at_mut(patches);
                let (p2, p3) = rest.split_at_mut(patches);
                let r = base..base + tl[1];
                let (v0, v1) = (&mut p0[r.clone()], &mut p1[r.clone()]);
                let (v2, v3) = (&mut p2[r.clone()], &mut p3[r]);
                combine_b(ta, [v0, v1, v2, v3]);
            }
        }
    }
}

/// Input row `y` of `plane` as columns `-pad .. -pad + row.len()`, zero outside the image.
fn padded_row<T: Num>(plane: &[T], [h, w]: [usize; 2], y: isize, pad: isize, row: &mut [T]) {
    row.fill(T::zero());
    if y < 0 || y >= h as isize {
        return;
    }
    let src = &plane[y as usize * w..][..w];
    // Row index j holds column j - pad: the image's columns land at j = pad .. pad + w.
    let lo = pad.max(0) as usize;
    let first = (-pad).max(0) as usize;
    let n = (row.len().saturating_sub(lo)).min(w.saturating_sub(first));
    row[lo..lo + n].copy_from_slice(&src[first..first + n]);
}

/// For each patch `k` (columns `2k .. 2k + 4` of `t`): `[r0 - r2, r1 + r2, r2 - r1, r1 - r3]`.
#[inline(always)]
fn combine_b<T: Num>(t: &[T], [v0, v1, v2, v3]: [&mut [T]; 4]) {
    let n = v0.len();
    let (v1, v2, v3) = (&mut v1[..n], &mut v2[..n], &mut v3[..n]);
    let t = &t[..2 * n + 2];
    for k in 0..n {
        let (r0, r1, r2, r3) = (t[2 * k], t[2 * k + 1], t[2 * k + 2], t[2 * k + 3]);
        v0[k] = r0 - r2;
        v1[k] = r1 + r2;
        v2[k] = r2 - r1;
        v3[k] = r1 - r3;
    }
}

/// `Aᵀ·M·A` of every patch (`m` `[16][o][nc·tiles]`) into `y` `[nc, o, out0, out1]`, plus the
/// bias: `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`, along a row of patches at a time (each `M_ξ`
/// is contiguous along it).
fn outputs<T: Num>(m: &[T], bias: Option<&[T]>, nc: usize, p: &Plan, y: &mut [T]) {
    y.par_chunks_mut(p.out[0] * p.out[1])
        .enumerate()
        .for_each(|(io, yp)| output_plane(m, bias, nc, p, io, yp));
}

/// The weight gradient `[o, c, 3, 3]` of the convolution of `x` `[n, c, h, w]` whose output
/// gradient is `dy` `[n, o, out0, out1]` (both contiguous): with `Z = A·dY·Aᵀ` per patch
/// (zero beyond the output), `dU_ξ = Σ_patches Z_ξ · V_ξ`, 16 GEMMs accumulated over the
/// chunks of images, then `dg = Gᵀ·dU·G` per channel pair.
pub fn weight_grad<T: Num>(
    x: &[T],
    dy: &[T],
    p: &Plan,
    mm_into: impl Fn(&[T], &Layout, &[T], &Layout, &mut [T], T),
) -> Vec<T> {
    let (size, tl) = (chunk_images::<T>(p), tiles(p.out));
    let (image, plane) = (p.c * p.hw[0] * p.hw[1], p.o * p.out[0] * p.out[1]);
    let mut du = alloc::<T>(16 * p.o * p.c);
    for (k, start) in (0..p.n).step_by(size).enumerate() {
        let nc = size.min(p.n - start);
        let patches = nc * tl[0] * tl[1];
        let v = inputs(&x[start * image..(start + nc) * image], nc, p);
        let z = output_grads(&dy[start * plane..(start + nc) * plane], nc, p);
        let lz = Layout::new(vec![16, p.o, patches], vec![patches, 16 * patches, 1], 0);
        let lv = Layout::new(vec![16, patches, p.c], vec![patches, 1, 16 * patches], 0);
        let beta = if k == 0 { T::zero() } else { T::one() };
        mm_into(&z, &lz, &v, &lv, &mut du, beta);
        recycle(v);
        recycle(z);
    }
    let dw = kernel_grads(&du, [p.o, p.c]);
    recycle(du);
    dw
}

/// `A·dY·Aᵀ` of every 2×2 block of `dy` `[nc, o, out0, out1]`: `[o][16][nc·tiles]`, laid out
/// as [`inputs`]' patches. `A = [[1, 0], [1, 1], [1, -1], [0, -1]]`.
fn output_grads<T: Num>(dy: &[T], nc: usize, p: &Plan) -> Vec<T> {
    let tl = tiles(p.out);
    let patches = nc * tl[0] * tl[1];
    let mut z = alloc::<T>(p.o * 16 * patches);
    z.par_chunks_mut(16 * patches)
        .enumerate()
        .for_each(|(oc, zc)| output_grad_channel(dy, nc, p, oc, zc));
    z
}

/// [`output_grads`] of channel `oc`: its `[16][nc·tiles]` block `zc`.
fn output_grad_channel<T: Num>(dy: &[T], nc: usize, p: &Plan, oc: usize, zc: &mut [T]) {
    let ([th, tw], [oh, ow]) = (tiles(p.out), p.out);
    let patches = nc * th * tw;
    for img in 0..nc {
        let plane = &dy[(img * p.o + oc) * oh * ow..][..oh * ow];
        for ty in 0..th {
            for tx in 0..tw {
                let at = |r: usize, s: usize| {
                    let (y, x) = (2 * ty + r, 2 * tx + s);
                    if y < oh && x < ow {
                        plane[y * ow + x]
                    } else {
                        T::zero()
                    }
                };
                let (y00, y01, y10, y11) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
                // A·dY, then each row (u, v) times Aᵀ: [u, u + v, u - v, -v].
                let rows = [
                    (y00, y01),
                    (y00 + y10, y01 + y11),
                    (y00 - y10, y01 - y11),
                    (-y10, -y11),
                ];
                let q = (img * th + ty) * tw + tx;
                for (a, &(u, v)) in rows.iter().enumerate() {
                    for (b, z) in [u, u + v, u - v, -v].into_iter().enumerate() {
                        zc[(a * 4 + b) * patches + q] = z;
                    }
                }
            }
        }
    }
}

/// `Gᵀ·dU·G` per channel pair of `du` `[16][o][c]`: the kernel gradients `[o, c, 3, 3]`.
fn kernel_grads<T: Num>(du: &[T], [o, c]: [usize; 2]) -> Vec<T> {
    let half = T::from_f64(0.5);
    // Row `[p0, p1, p2, p3]` times G: Gᵀ = [[1, ½, ½, 0], [0, ½, -½, 0], [0, ½, ½, 1]].
    let gt = |[p0, p1, p2, p3]: [T; 4]| {
        let s = (p1 + p2) * half;
        [p0 + s, (p1 - p2) * half, s + p3]
    };
    let mut dw = alloc::<T>(o * c * 9);
    dw.par_chunks_mut(c * 9).enumerate().for_each(|(oi, dwo)| {
        for ci in 0..c {
            let x = |xi: usize| du[(xi * o + oi) * c + ci];
            // Gᵀ·X column by column, then each row of that times G.
            let cols = [0, 1, 2, 3].map(|b| gt([x(b), x(4 + b), x(8 + b), x(12 + b)]));
            for a in 0..3 {
                let row = gt([cols[0][a], cols[1][a], cols[2][a], cols[3][a]]);
                dwo[ci * 9 + a * 3..][..3].copy_from_slice(&row);
            }
        }
    });
    dw
}

/// Whether a convolution with these channel counts should take the Winograd path (smaller ones
/// take the direct kernels in f32): the transforms cost O(c + o) per patch, the products
/// O(c·o). Measured against im2col (f32, 2 threads, padding 1, best of 8, GFLOP/s forward /
/// input grad / weight grad): 32×34→34 28×28 167/188/94 against 116/126/41; 8×64→64 56×56
/// 269/268/201 against 165/169/128; 16×512→512 7×7 203/187/180 against 172/165/158; only
/// 64×64→64 8×8 (4×4 patches per plane) loses on the weight gradient, 70 against 81.
pub fn worthwhile(c: usize, o: usize) -> bool {
    c.min(o) > 32
}

/// [`outputs`] of plane `io` (image · o + channel).
fn output_plane<T: Num>(m: &[T], bias: Option<&[T]>, nc: usize, p: &Plan, io: usize, yp: &mut [T]) {
    let ([th, tw], [oh, ow]) = (tiles(p.out), p.out);
    let patches = nc * th * tw;
    let (img, oc) = (io / p.o, io % p.o);
    let b = bias.map_or(T::zero(), |b| b[oc]);
    // q[r][col]: row r of Aᵀ·M for column `col` of the patch, along the row of patches.
    let mut q = vec![T::zero(); 8 * tw];
    for ty in 0..th {
        let base = (img * th + ty) * tw;
        let at = |xi: usize| &m[(xi * p.o + oc) * patches + base..][..tw];
        for (col, qc) in q.chunks_exact_mut(2 * tw).enumerate() {
            let (m0, m1, m2, m3) = (at(col), at(4 + col), at(8 + col), at(12 + col));
            let (q0, q1) = qc.split_at_mut(tw);
            for k in 0..tw {
                q0[k] = m0[k] + m1[k] + m2[k];
                q1[k] = m1[k] - m2[k] - m3[k];
            }
        }
        for r in 0..2 {
            let row = 2 * ty + r;
            if row >= oh {
                break;
            }
            let qr = |col: usize| &q[(col * 2 + r) * tw..][..tw];
            let (q0, q1, q2, q3) = (qr(0), qr(1), qr(2), qr(3));
            let yr = &mut yp[row * ow..][..ow];
            for (k, pair) in yr.chunks_mut(2).enumerate() {
                pair[0] = q0[k] + q1[k] + q2[k] + b;
                if let Some(v) = pair.get_mut(1) {
                    *v = q1[k] - q2[k] - q3[k] + b;
                }
            }
        }
    }
}
