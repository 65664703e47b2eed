//! A view of a backend without its fused kernels, so every composite op runs as tensor ops over
//! the primitives: the reference a fused kernel is tested against, on any backend.

use super::{Backend, BinaryOp, Buffer, Distribution, ReduceOp, UnaryOp, View};
use crate::device::Device;
use crate::dtype::{DType, HostData};
use crate::error::Result;
use crate::layout::Layout;
use std::sync::Arc;

/// Another backend's primitives, and no fused kernels ([`Backend::fused`] is `None`). Its
/// buffers are the inner backend's.
#[derive(Debug)]
pub struct Composed(pub Arc<dyn Backend>);

impl Composed {
    /// A device named `<inner> (composed)` running `device`'s primitives only.
    pub fn device(device: &Device) -> Device {
        Device::new(Arc::new(Composed(device.backend_arc())))
    }
}

impl Backend for Composed {
    fn name(&self) -> String {
        format!("{} (composed)", self.0.name())
    }
    fn upload(&self, data: HostData) -> Result<Arc<dyn Buffer>> {
        self.0.upload(data)
    }
    fn download(&self, x: View<'_>) -> Result<HostData> {
        self.0.download(x)
    }
    fn fill(&self, len: usize, dtype: DType, value: f64) -> Result<Arc<dyn Buffer>> {
        self.0.fill(len, dtype, value)
    }
    fn random(
        &self,
        len: usize,
        dtype: DType,
        dist: Distribution,
        seed: u64,
        offset: u64,
    ) -> Result<Arc<dyn Buffer>> {
        self.0.random(len, dtype, dist, seed, offset)
    }
    fn cast(&self, x: View<'_>, dtype: DType) -> Result<Arc<dyn Buffer>> {
        self.0.cast(x, dtype)
    }
    fn unary(&self, op: UnaryOp, x: View<'_>) -> Result<Arc<dyn Buffer>> {
        self.0.unary(op, x)
    }
    fn binary(&self, op: BinaryOp, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        self.0.binary(op, a, b)
    }
    fn where_cond(&self, cond: View<'_>, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        self.0.where_cond(cond, a, b)
    }
    fn reduce(&self, op: ReduceOp, x: View<'_>, axes: &[usize]) -> Result<Arc<dyn Buffer>> {
        self.0.reduce(op, x, axes)
    }
    fn matmul(&self, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        self.0.matmul(a, b)
    }
    fn gather(&self, x: View<'_>, dim: usize, index: View<'_>) -> Result<Arc<dyn Buffer>> {
        self.0.gather(x, dim, index)
    }
    fn scatter_add(
        &self,
        shape: &[usize],
        dim: usize,
        index: View<'_>,
        src: View<'_>,
    ) -> Result<Arc<dyn Buffer>> {
        self.0.scatter_add(shape, dim, index, src)
    }
    fn assemble(
        &self,
        len: usize,
        dtype: DType,
        fill: f64,
        parts: &[(Layout, View<'_>)],
    ) -> Result<Arc<dyn Buffer>> {
        self.0.assemble(len, dtype, fill, parts)
    }
}
