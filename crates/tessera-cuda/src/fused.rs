//! The CUDA backend's fused kernels ([`FusedKernels`]): row softmax, im2col/col2im,
//! cross-entropy and the LSTM cell, each declining (`Ok(None)`) the operands its kernels do not
//! take, which core then composes from the primitives.

use crate::{kernels, ok, CudaBackend};
use std::sync::Arc;
use tessera_core::backend::LstmCell;
use tessera_core::{Buffer, DType, FusedKernels, Result, View, Window};

/// A new buffer, or `None` to decline.
type Fused = Result<Option<Arc<dyn Buffer>>>;

impl FusedKernels for CudaBackend {
    fn softmax(&self, x: View<'_>, dim: usize, log: bool) -> Fused {
        let l = x.layout;
        if dim + 1 != l.rank() || l.numel() == 0 || !x.buf.dtype().is_float() {
            return Ok(None);
        }
        self.bind()?;
        if x.buf.dtype().is_half() {
            return self
                .via_f32(x, |v| kernels::reduce::softmax(self, v, log))
                .map(Some);
        }
        ok(kernels::reduce::softmax(self, x, log)?).map(Some)
    }

    fn cross_entropy(
        &self,
        x: View<'_>,
        target: View<'_>,
        label_smoothing: f64,
        ignore_index: i64,
    ) -> Result<Option<[Arc<dyn Buffer>; 3]>> {
        // Core checked the shapes (`cross_entropy_fits`); the kernels take f32 and f64.
        if !matches!(x.buf.dtype(), DType::F32 | DType::F64) {
            return Ok(None);
        }
        self.bind()?;
        let out = kernels::reduce::cross_entropy(self, x, target, label_smoothing, ignore_index)?;
        Ok(Some(out.map(|b| Arc::new(b) as Arc<dyn Buffer>)))
    }

    fn cross_entropy_backward(
        &self,
        lp: View<'_>,
        target: View<'_>,
        w: View<'_>,
        g: View<'_>,
        label_smoothing: f64,
        _ignore_index: i64,
    ) -> Fused {
        // Core checked the shapes (`cross_entropy_backward_fits`); the kernel takes f32 and f64.
        if !matches!(lp.buf.dtype(), DType::F32 | DType::F64) {
            return Ok(None);
        }
        self.bind()?;
        ok(kernels::reduce::cross_entropy_backward(
            self,
            [lp, target, w, g],
            label_smoothing,
        )?)
        .map(Some)
    }

    fn lstm_cell(&self, x: View<'_>, r: View<'_>, c: View<'_>) -> Result<Option<LstmCell>> {
        let s = c.layout.shape();
        let gates = [
            s.first().copied().unwrap_or(0),
            4 * s.get(1).copied().unwrap_or(0),
        ];
        let d = x.buf.dtype();
        let fits = s.len() == 2
            && s[0] * s[1] > 0
            && matches!(d, DType::F32 | DType::F64)
            && x.layout.shape() == gates
            && r.layout.shape() == gates
            && [r, c].iter().all(|v| v.buf.dtype() == d);
        if !fits {
            return Ok(None);
        }
        self.bind()?;
        Ok(Some(
            kernels::rnn::lstm_cell(self, x, r, c)?.map(|b| Arc::new(b) as Arc<dyn Buffer>),
        ))
    }

    fn lstm_cell_backward(
        &self,
        act: View<'_>,
        c_prev: View<'_>,
        tanh_c: View<'_>,
        dh: View<'_>,
        dc: View<'_>,
    ) -> Result<Option<[Arc<dyn Buffer>; 2]>> {
        let s = c_prev.layout.shape();
        let d = act.buf.dtype();
        let v = [act, c_prev, tanh_c, dh, dc];
        let fits = s.len() == 2
            && s[0] * s[1] > 0
            && matches!(d, DType::F32 | DType::F64)
            && act.layout.shape() == [s[0], 4 * s[1]]
            && v[1..].iter().all(|v| v.layout.shape() == s)
            && v.iter().all(|v| v.buf.dtype() == d);
        if !fits {
            return Ok(None);
        }
        self.bind()?;
        Ok(Some(
            kernels::rnn::lstm_cell_backward(self, v)?.map(|b| Arc::new(b) as Arc<dyn Buffer>),
        ))
    }

    fn unfold2d(&self, x: View<'_>, w: &Window, fill: f64) -> Fused {
        if !x.buf.dtype().is_float() {
            return Ok(None);
        }
        self.bind()?;
        ok(kernels::conv::unfold(self, x, w, fill)?).map(Some)
    }

    fn fold2d(&self, cols: View<'_>, w: &Window, hw: [usize; 2]) -> Fused {
        if !cols.buf.dtype().is_float() {
            return Ok(None);
        }
        self.bind()?;
        if cols.buf.dtype().is_half() {
            return self
                .via_f32(cols, |c| kernels::conv::fold(self, c, w, hw))
                .map(Some);
        }
        ok(kernels::conv::fold(self, cols, w, hw)?).map(Some)
    }
}
