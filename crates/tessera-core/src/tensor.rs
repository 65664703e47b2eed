//! The `Tensor` handle: a buffer, a layout into it, and an identity on the tape.

use crate::backend::{Buffer, Distribution, View};
use crate::device::Device;
use crate::dtype::{DType, Element, HostData};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::random::Generator;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Identity of a tensor on the tape. Clones of a handle share it; views and op outputs get new ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn fresh() -> TensorId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// How a tensor takes part in autodiff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GradKind {
    /// Constant: no gradient flows to it.
    None,
    /// A variable the user asked gradients for; its gradient is returned by backward.
    Leaf,
    /// The output of a recorded op; its gradient flows on to the op's inputs.
    Node,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) id: TensorId,
    pub(crate) buf: Arc<dyn Buffer>,
    pub(crate) layout: Layout,
    pub(crate) device: Device,
    pub(crate) kind: GradKind,
}

/// An n-dimensional array on a device. Cheap to clone (a reference count); immutable to every
/// observer: ops return new tensors, and the one in-place update, [`Tensor::scale_add_`], writes
/// a buffer only when no other handle can see it.
///
/// Every op returns `Result<Tensor>` and, when grad mode is on and an input requires grad,
/// appends its backward rule to the tape.
#[derive(Clone, Debug)]
pub struct Tensor(pub(crate) Arc<Inner>);

impl Tensor {
    // ---- construction ----

    /// Wraps a buffer a backend produced. The buffer must live on `device` and hold at least
    /// the elements `layout` addresses.
    pub fn from_buffer(buf: Arc<dyn Buffer>, layout: Layout, device: &Device) -> Result<Tensor> {
        if layout.max_extent() > buf.len() {
            return Err(Error::invalid(
                "from_buffer",
                format!(
                    "layout reaches element {} but the buffer holds {}",
                    layout.max_extent(),
                    buf.len()
                ),
            ));
        }
        Ok(Tensor::make(buf, layout, device.clone()))
    }

    pub(crate) fn make(buf: Arc<dyn Buffer>, layout: Layout, device: Device) -> Tensor {
        Tensor(Arc::new(Inner {
            id: TensorId::fresh(),
            buf,
            layout,
            device,
            kind: GradKind::None,
        }))
    }

    /// Runs `f` on this handle's buffer when nothing else can observe it: no clone, view,
    /// tape node or other tensor holds this handle's state or its buffer, and the layout is
    /// contiguous (no element read twice). When `f` returns `true` (it wrote the buffer), the
    /// handle gets a fresh id, as any new value does, and `kind`. Returns whether `f` ran and
    /// wrote.
    pub(crate) fn write_in_place(
        &mut self,
        kind: GradKind,
        f: impl FnOnce(&Device, &mut dyn Buffer, &Layout) -> Result<bool>,
    ) -> Result<bool> {
        let Some(inner) = Arc::get_mut(&mut self.0) else {
            return Ok(false);
        };
        if !inner.layout.is_contiguous() {
            return Ok(false);
        }
        let Some(buf) = Arc::get_mut(&mut inner.buf) else {
            return Ok(false);
        };
        if !f(&inner.device, buf, &inner.layout)? {
            return Ok(false);
        }
        inner.id = TensorId::fresh();
        inner.kind = kind;
        Ok(true)
    }

    /// An op output: a new contiguous buffer of `shape` on this tensor's device.
    pub(crate) fn output(&self, buf: Arc<dyn Buffer>, shape: &[usize]) -> Tensor {
        Tensor::make(buf, Layout::contiguous(shape), self.device().clone())
    }

    /// A tensor sharing this one's buffer with another layout (not recorded; callers record).
    pub(crate) fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor::make(self.0.buf.clone(), layout, self.0.device.clone())
    }

    /// A tensor of `shape` from host data in row-major order.
    pub fn from_host(data: HostData, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n = crate::layout::checked_numel("from_vec", shape, data.dtype().size_in_bytes())?;
        if data.len() != n {
            return Err(Error::invalid(
                "from_vec",
                format!(
                    "{} values cannot fill shape {:?} ({} elements)",
                    data.len(),
                    shape,
                    n
                ),
            ));
        }
        let buf = device.backend().upload(data)?;
        Ok(Tensor::make(buf, Layout::contiguous(shape), device.clone()))
    }

    /// A tensor of `shape` from a vector in row-major order.
    ///
    /// ```
    /// # use tessera_core::*;
    /// # fn demo(dev: &Device) -> Result<()> {
    /// let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2], dev)?;
    /// assert_eq!(t.dims(), &[2, 2]);
    /// # Ok(()) }
    /// ```
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize], device: &Device) -> Result<Tensor> {
        Tensor::from_host(T::into_host(data), shape, device)
    }

    /// A 0-d tensor holding `value`.
    pub fn scalar(value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(&[], value, dtype, device)
    }

    /// A tensor of `shape` filled with `value`.
    pub fn full(shape: &[usize], value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        let n = crate::layout::checked_numel("full", shape, dtype.size_in_bytes())?;
        let buf = device.backend().fill(n, dtype, value)?;
        Ok(Tensor::make(buf, Layout::contiguous(shape), device.clone()))
    }

    /// Zeros of `shape`.
    pub fn zeros(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(shape, 0.0, dtype, device)
    }

    /// Ones of `shape`.
    pub fn ones(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(shape, 1.0, dtype, device)
    }

    /// Zeros with this tensor's shape, dtype and device.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.dims(), self.dtype(), self.device())
    }

    /// Ones with this tensor's shape, dtype and device.
    pub fn ones_like(&self) -> Result<Tensor> {
        Tensor::ones(self.dims(), self.dtype(), self.device())
    }

    /// `start, start + step, ...` while below `end` (above it for a negative step), as a 1-d tensor.
    pub fn arange(
        start: f64,
        end: f64,
        step: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(Error::invalid(
                "arange",
                format!("need finite bounds and a non-zero step, got {start}..{end} step {step}"),
            ));
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        crate::layout::checked_numel("arange", &[n], dtype.size_in_bytes())?;
        let mut v: Vec<f64> = Vec::new();
        v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
            op: "arange",
            device: "host".into(),
            bytes: n.saturating_mul(8),
        })?;
        v.extend((0..n).map(|i| start + i as f64 * step));
        Tensor::from_host(HostData::from_f64(dtype, &v), &[n], device)
    }

    fn random(
        shape: &[usize],
        dtype: DType,
        dist: Distribution,
        gen: &mut Generator,
        device: &Device,
    ) -> Result<Tensor> {
        if !dtype.is_float() {
            return Err(Error::dtype(
                "random",
                format!("random tensors are floating point, got {dtype}"),
            ));
        }
        let n = crate::layout::checked_numel("random", shape, dtype.size_in_bytes())?;
        let offset = gen.advance(n);
        let buf = device
            .backend()
            .random(n, dtype, dist, gen.seed(), offset)?;
        Ok(Tensor::make(buf, Layout::contiguous(shape), device.clone()))
    }

    /// Standard normal f32 values (mean 0, std 1) from this thread's generator, which
    /// [`crate::manual_seed`] seeds: PyTorch's `torch.randn(shape)`. For another dtype,
    /// distribution or generator, [`Tensor::randn_with`].
    pub fn randn(shape: &[usize], device: &Device) -> Result<Tensor> {
        crate::random::with_thread_generator(|gen| {
            Tensor::randn_with(shape, 0.0, 1.0, DType::F32, gen, device)
        })
    }

    /// Uniform f32 values on `[0, 1)` from this thread's generator ([`crate::manual_seed`]):
    /// PyTorch's `torch.rand(shape)`. For other bounds, dtypes or generators,
    /// [`Tensor::rand_with`].
    pub fn rand(shape: &[usize], device: &Device) -> Result<Tensor> {
        crate::random::with_thread_generator(|gen| {
            Tensor::rand_with(shape, 0.0, 1.0, DType::F32, gen, device)
        })
    }

    /// Uniform on `[low, high)`, from a counter-based generator (same values on every device).
    pub fn rand_with(
        shape: &[usize],
        low: f64,
        high: f64,
        dtype: DType,
        gen: &mut Generator,
        device: &Device,
    ) -> Result<Tensor> {
        Tensor::random(
            shape,
            dtype,
            Distribution::Uniform { low, high },
            gen,
            device,
        )
    }

    /// Normal with `mean` and `std`, from a counter-based generator (same values on every device).
    pub fn randn_with(
        shape: &[usize],
        mean: f64,
        std: f64,
        dtype: DType,
        gen: &mut Generator,
        device: &Device,
    ) -> Result<Tensor> {
        Tensor::random(
            shape,
            dtype,
            Distribution::Normal { mean, std },
            gen,
            device,
        )
    }

    // ---- accessors ----

    /// The tape identity of this handle.
    pub fn id(&self) -> TensorId {
        self.0.id
    }
    /// Dimension sizes.
    pub fn dims(&self) -> &[usize] {
        self.0.layout.shape()
    }
    /// Dimension sizes as a [`crate::Shape`] (for messages).
    pub fn shape(&self) -> crate::Shape {
        crate::Shape::from(self.dims())
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.dims().len()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.0.buf.dtype()
    }
    /// The device holding the data.
    pub fn device(&self) -> &Device {
        &self.0.device
    }
    /// Layout (shape, strides, offset) into the buffer.
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    /// The underlying buffer (shared by views).
    pub fn buffer(&self) -> &Arc<dyn Buffer> {
        &self.0.buf
    }
    /// Buffer plus layout, as backends take them.
    pub fn view(&self) -> View<'_> {
        View {
            buf: self.0.buf.as_ref(),
            layout: &self.0.layout,
        }
    }
    /// Whether gradients flow to this tensor.
    pub fn requires_grad(&self) -> bool {
        self.0.kind != GradKind::None
    }
    /// Whether this is a variable created by the user (not an op output).
    pub fn is_leaf(&self) -> bool {
        self.0.kind != GradKind::Node
    }
    pub(crate) fn kind(&self) -> GradKind {
        self.0.kind
    }

    /// A handle that backward treats as a variable: gradients with respect to it are returned
    /// by [`Tensor::backward`]. Only floating-point tensors can require grad.
    pub fn requires_grad_(self) -> Result<Tensor> {
        if !self.dtype().is_float() {
            return Err(Error::dtype(
                "requires_grad",
                format!(
                    "only floating-point tensors can require grad, got {}",
                    self.dtype()
                ),
            ));
        }
        Ok(Tensor(Arc::new(Inner {
            id: TensorId::fresh(),
            buf: self.0.buf.clone(),
            layout: self.0.layout.clone(),
            device: self.0.device.clone(),
            kind: GradKind::Leaf,
        })))
    }

    /// The same data, cut off from the tape: no gradient flows through the result.
    pub fn detach(&self) -> Tensor {
        self.with_layout(self.0.layout.clone())
    }

    // ---- moving data ----

    /// All elements in row-major order, as host data.
    pub fn to_host(&self) -> Result<HostData> {
        self.device().backend().download(self.view())
    }

    /// All elements in row-major order. The element type must match the dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::dtype(
                "to_vec",
                format!("tensor has dtype {}, asked for {}", self.dtype(), T::DTYPE),
            ));
        }
        T::from_host(self.to_host()?).map_err(|h| {
            Error::dtype(
                "to_vec",
                format!("backend returned {} for a {} tensor", h.dtype(), T::DTYPE),
            )
        })
    }

    /// All elements converted to f64.
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        Ok(self.to_host()?.to_f64())
    }

    /// The value of a one-element tensor, as f64.
    pub fn to_scalar(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::invalid(
                "to_scalar",
                format!(
                    "tensor of shape {} has {} elements, not 1",
                    self.shape(),
                    self.numel()
                ),
            ));
        }
        Ok(self.to_vec_f64()?[0])
    }

    /// A copy on `device` (the same handle when it already lives there). Gradients flow back
    /// across the move.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device() == device {
            return Ok(self.clone());
        }
        let host = self.to_host()?;
        let buf = device.backend().upload(host)?;
        let out = Tensor::make(buf, Layout::contiguous(self.dims()), device.clone());
        let src = self.device().clone();
        Ok(out.record_op("to_device", &[self], move |g, _| {
            Ok(vec![Some(g.to_device(&src)?)])
        }))
    }
}
