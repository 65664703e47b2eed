//! # tessera-cuda
//!
//! The CUDA backend of tessera, on `cudarc` with dynamic loading: it builds on machines with no
//! CUDA toolkit and, at run time, [`device`] returns a clear error (never a panic) when there is
//! no driver, no GPU, or no NVRTC/cuBLAS library.
//!
//! - floating-point matmul through cuBLAS (strided-batched, f32 and f64, operands read in place
//!   when their layout allows, transposed views included);
//! - every other primitive as NVRTC-compiled CUDA C kernels over strided layouts, compiled once
//!   per process per family (`src/kernels/<family>.cu` beside its launcher `<family>.rs`);
//! - fast paths for im2col/col2im (convolution, pooling) and row softmax;
//! - a caching allocator ([`buffer::Allocator`]) so training steps stop calling the driver's
//!   allocator after warm-up.
//!
//! Everything runs on the device's default stream, so kernels, copies and block reuse are
//! ordered without events.

pub mod buffer;
mod fused;
pub mod kernels;

pub use buffer::{CudaBuffer, PoolStats};

use buffer::Allocator;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{result, CudaContext, CudaStream};
use kernels::{dev_err, Kernels, Strided};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tessera_core::{
    Backend, BinaryOp, Buffer, DType, Device, Distribution, Error, FusedKernels, HostData, Layout,
    ReduceOp, Result, UnaryOp, View,
};

/// Launches kernel `$name` of `$family` with the given locals as arguments (in order).
/// Arguments must be locals (not temporaries): the launch reads them through pointers.
macro_rules! launch {
    ($be:expr, $family:expr, $name:expr, $cfg:expr, $($arg:ident),+ $(,)?) => {{
        let name: &str = &$name;
        let f = $be.kernels.get($family, name)?;
        let mut b = $be.stream.launch_builder(&f);
        $( cudarc::driver::PushKernelArg::arg(&mut b, &$arg); )+
        // SAFETY: argument types and order match the kernel's signature in `$family`.cu.
        unsafe { b.launch($cfg) }
            .map(drop)
            .map_err(|e| $crate::kernels::dev_err(name, e))
    }};
}
pub(crate) use launch;

/// Why CUDA cannot be used here, found without panicking: no driver library, no device, a
/// driver that lacks a symbol (cudarc panics then; the panic is caught).
pub fn try_context(ordinal: usize) -> std::result::Result<Arc<CudaContext>, String> {
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("libcuda.so not found (no NVIDIA driver on this machine)".into());
    }
    catch(|| CudaContext::new(ordinal).map_err(|e| format!("cannot open GPU {ordinal}: {e:?}")))
}

/// Runs `f`, turning a cudarc panic (missing library or symbol) into an error message.
fn catch<T>(f: impl FnOnce() -> std::result::Result<T, String>) -> std::result::Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(format!(
            "cudarc panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

/// Whether a CUDA device can be opened (driver, GPU, NVRTC and cuBLAS all present).
pub fn is_available() -> bool {
    backend(0).is_ok()
}

/// The backend of GPU `ordinal`, created once per process.
pub fn backend(ordinal: usize) -> Result<Arc<CudaBackend>> {
    static BACKENDS: OnceLock<Mutex<HashMap<usize, Arc<CudaBackend>>>> = OnceLock::new();
    let mut all = BACKENDS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(b) = all.get(&ordinal) {
        return Ok(b.clone());
    }
    let b = Arc::new(CudaBackend::new(ordinal).map_err(|msg| Error::Device {
        device: format!("cuda:{ordinal}"),
        msg,
    })?);
    all.insert(ordinal, b.clone());
    Ok(b)
}

/// The device for GPU `ordinal` (`cuda:N`).
pub fn device(ordinal: usize) -> Result<Device> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let mut all = DEVICES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(d) = all.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Device::new(backend(ordinal)?);
    all.insert(ordinal, d.clone());
    Ok(d)
}

/// One GPU: its context, the stream everything runs on, cuBLAS, the kernels and the memory pool.
pub struct CudaBackend {
    name: String,
    gpu: String,
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: CudaBlas,
    pub(crate) kernels: Kernels,
    pub(crate) alloc: Arc<Allocator>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBackend({}, {})", self.name, self.gpu)
    }
}

impl CudaBackend {
    fn new(ordinal: usize) -> std::result::Result<CudaBackend, String> {
        let ctx = try_context(ordinal)?;
        // SAFETY: only try to dlopen the libraries.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(
                "libnvrtc.so not found: add the CUDA toolkit's lib64 (or the \
                        nvidia-cuda-nvrtc wheel's lib folder) to LD_LIBRARY_PATH"
                    .into(),
            );
        }
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(
                "libcublas.so not found: add the CUDA toolkit's lib64 to LD_LIBRARY_PATH".into(),
            );
        }
        catch(|| {
            let gpu = ctx.name().map_err(|e| format!("{e:?}"))?;
            let (major, minor) = ctx.compute_capability().map_err(|e| format!("{e:?}"))?;
            let stream = ctx.default_stream();
            let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("cuBLAS: {e:?}"))?;
            let kernels = Kernels::new(ctx.clone(), kernels::arch_for(major, minor));
            Ok(CudaBackend {
                name: format!("cuda:{ordinal}"),
                gpu: format!("{gpu} (sm_{major}{minor})"),
                ctx: ctx.clone(),
                stream,
                blas,
                kernels,
                alloc: Arc::new(Allocator::default()),
            })
        })
    }

    /// The GPU's name and compute capability.
    pub fn gpu_name(&self) -> &str {
        &self.gpu
    }

    /// Counters of the caching allocator.
    pub fn pool_stats(&self) -> PoolStats {
        self.alloc.stats()
    }

    /// Waits for every queued kernel (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.stream
            .synchronize()
            .map_err(|e| dev_err("synchronize", e))
    }

    /// Makes this device's context current on the calling thread.
    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("bind context", e))
    }

    /// A new uninitialised buffer.
    pub(crate) fn empty(&self, len: usize, dtype: DType) -> Result<CudaBuffer> {
        CudaBuffer::new(&self.alloc, len, dtype).map_err(|e| dev_err("alloc", e))
    }

    /// A new buffer of zero bits (0 for every dtype).
    pub(crate) fn zeros(&self, len: usize, dtype: DType) -> Result<CudaBuffer> {
        let b = self.empty(len, dtype)?;
        if len > 0 {
            // SAFETY: the block holds at least len * size bytes.
            unsafe {
                result::memset_d8_async(
                    b.ptr(),
                    0,
                    len * dtype.size_in_bytes(),
                    self.stream.cu_stream(),
                )
            }
            .map_err(|e| dev_err("memset", e))?;
        }
        Ok(b)
    }

    /// A new buffer of `len` copies of `value`.
    pub(crate) fn filled(&self, len: usize, dtype: DType, value: f64) -> Result<CudaBuffer> {
        if value == 0.0 && value.is_sign_positive() {
            self.zeros(len, dtype)
        } else {
            kernels::elementwise::fill(self, len, dtype, value)
        }
    }

    /// Runs `f` on an f32 copy of the half tensor `x` and converts its result back: f16/bf16
    /// ops that accumulate (sums, softmax, col2im, scatter-add) do so in f32.
    pub(crate) fn via_f32(
        &self,
        x: View<'_>,
        f: impl FnOnce(View<'_>) -> Result<CudaBuffer>,
    ) -> Result<Arc<dyn Buffer>> {
        let x32 = kernels::elementwise::cast(self, x, DType::F32)?;
        let l = Layout::contiguous(x.layout.shape());
        let y = f(View {
            buf: &x32,
            layout: &l,
        })?;
        let ly = Layout::contiguous(&[y.len()]);
        ok(kernels::elementwise::cast(
            self,
            View {
                buf: &y,
                layout: &ly,
            },
            x.buf.dtype(),
        )?)
    }

    /// `v`'s elements in row-major order as a new contiguous buffer, or `None` when `v` already
    /// is one contiguous run (read it at `v.layout.offset()`).
    pub(crate) fn contiguous(&self, op: &'static str, v: View<'_>) -> Result<Option<CudaBuffer>> {
        if v.layout.is_contiguous() {
            return Ok(None);
        }
        let x = cuda_buf(op, v)?;
        let n = v.layout.numel();
        let out = self.empty(n, x.dtype())?;
        kernels::shape::copy(
            self,
            x,
            v.layout,
            &out,
            &Layout::contiguous(v.layout.shape()),
        )?;
        Ok(Some(out))
    }
}

/// The CUDA buffer behind `v`, checked against its layout.
pub(crate) fn cuda_buf<'a>(op: &'static str, v: View<'a>) -> Result<&'a CudaBuffer> {
    let b = v
        .buf
        .as_any()
        .downcast_ref::<CudaBuffer>()
        .ok_or_else(|| Error::DeviceMismatch {
            op,
            lhs: "cuda".into(),
            rhs: format!("a {} buffer of another backend", v.buf.dtype()),
        })?;
    if v.layout.numel() > 0 && v.layout.max_extent() > b.len() {
        return Err(Error::invalid(
            op,
            format!(
                "layout reaches element {} of a buffer of {}",
                v.layout.max_extent(),
                b.len()
            ),
        ));
    }
    Ok(b)
}

fn same_dtype(op: &'static str, a: DType, b: DType) -> Result<()> {
    if a != b {
        return Err(Error::DType {
            op,
            msg: format!("operands have different dtypes ({a} and {b})"),
        });
    }
    Ok(())
}

/// Primitives that do arithmetic take no bool tensors (as on the CPU): masks are cast first.
fn no_bool(op: &'static str, d: DType) -> Result<()> {
    if d == DType::Bool {
        return Err(Error::DType {
            op,
            msg: "does not take bool tensors; cast with to_dtype first".into(),
        });
    }
    Ok(())
}

fn float_only(op: &'static str, d: DType) -> Result<()> {
    if !d.is_float() {
        return Err(Error::DType {
            op,
            msg: format!("needs a floating-point tensor, got {d}"),
        });
    }
    Ok(())
}

pub(crate) fn ok(b: CudaBuffer) -> Result<Arc<dyn Buffer>> {
    Ok(Arc::new(b))
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn upload(&self, data: HostData) -> Result<Arc<dyn Buffer>> {
        self.bind()?;
        let out = self.empty(data.len(), data.dtype())?;
        if !data.is_empty() {
            let s = self.stream.cu_stream();
            // SAFETY: `out` holds data.len() elements; a copy from pageable memory returns once
            // the host data is staged, so `data` may be dropped afterwards.
            unsafe {
                match &data {
                    HostData::F32(v) => result::memcpy_htod_async(out.ptr(), v, s),
                    HostData::F64(v) => result::memcpy_htod_async(out.ptr(), v, s),
                    HostData::I64(v) => result::memcpy_htod_async(out.ptr(), v, s),
                    HostData::F16(v) => result::memcpy_htod_async(out.ptr(), v, s),
                    HostData::BF16(v) => result::memcpy_htod_async(out.ptr(), v, s),
                    HostData::Bool(v) => {
                        let bytes: Vec<u8> = v.iter().map(|&b| b as u8).collect();
                        result::memcpy_htod_async(out.ptr(), &bytes, s)
                    }
                }
            }
            .map_err(|e| dev_err("upload", e))?;
        }
        ok(out)
    }

    fn download(&self, x: View<'_>) -> Result<HostData> {
        self.bind()?;
        let b = cuda_buf("download", x)?;
        let n = x.layout.numel();
        let copy = self.contiguous("download", x)?;
        let src = match &copy {
            Some(c) => c.ptr(),
            None => b.ptr_at(x.layout.offset()),
        };
        fn read<T: Default + Clone>(n: usize, src: u64) -> Result<Vec<T>> {
            let mut v = vec![T::default(); n];
            if n > 0 {
                // SAFETY: src holds n elements of T; the synchronous copy waits for the stream.
                unsafe { result::memcpy_dtoh_sync(&mut v, src) }
                    .map_err(|e| dev_err("download", e))?;
            }
            Ok(v)
        }
        Ok(match b.dtype() {
            DType::F32 => HostData::F32(read(n, src)?),
            DType::F64 => HostData::F64(read(n, src)?),
            DType::I64 => HostData::I64(read(n, src)?),
            DType::F16 => HostData::F16(read(n, src)?),
            DType::BF16 => HostData::BF16(read(n, src)?),
            DType::Bool => {
                HostData::Bool(read::<u8>(n, src)?.into_iter().map(|b| b != 0).collect())
            }
        })
    }

    fn fill(&self, len: usize, dtype: DType, value: f64) -> Result<Arc<dyn Buffer>> {
        self.bind()?;
        ok(self.filled(len, dtype, value)?)
    }

    fn random(
        &self,
        len: usize,
        dtype: DType,
        dist: Distribution,
        seed: u64,
        offset: u64,
    ) -> Result<Arc<dyn Buffer>> {
        self.bind()?;
        float_only("random", dtype)?;
        ok(kernels::elementwise::random(
            self, len, dtype, dist, seed, offset,
        )?)
    }

    fn cast(&self, x: View<'_>, dtype: DType) -> Result<Arc<dyn Buffer>> {
        self.bind()?;
        let from = x.buf.dtype();
        if (from.is_half() && dtype == DType::Bool) || (from == DType::Bool && dtype.is_half()) {
            // No half<->bool kernels: through f32, exact for 0 and 1.
            let x32 = kernels::elementwise::cast(self, x, DType::F32)?;
            let l = Layout::contiguous(x.layout.shape());
            return self.cast(
                View {
                    buf: &x32,
                    layout: &l,
                },
                dtype,
            );
        }
        if from == dtype && dtype.is_half() {
            let out = self.empty(x.layout.numel(), dtype)?;
            let l = Layout::contiguous(x.layout.shape());
            kernels::shape::copy(self, cuda_buf("cast", x)?, x.layout, &out, &l)?;
            return ok(out);
        }
        ok(kernels::elementwise::cast(self, x, dtype)?)
    }

    fn unary(&self, op: UnaryOp, x: View<'_>) -> Result<Arc<dyn Buffer>> {
        self.bind()?;
        no_bool("unary", x.buf.dtype())?;
        ok(kernels::elementwise::unary(self, op, x)?)
    }

    fn binary(&self, op: BinaryOp, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        self.bind()?;
        same_dtype("binary", a.buf.dtype(), b.buf.dtype())?;
        no_bool("binary", a.buf.dtype())?;
        ok(kernels::elementwise::binary(self, op, a, b)?)
    }

    fn where_cond(&self, cond: View<'_>, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        self.bind()?;
        same_dtype("where", a.buf.dtype(), b.buf.dtype())?;
        if cond.buf.dtype().is_half()
            || (cond.buf.dtype() == DType::Bool && a.buf.dtype().is_half())
        {
            // Conditions are read as f32 (exact for 0 and non-0).
            let c = kernels::elementwise::cast(self, cond, DType::F32)?;
            let l = Layout::contiguous(cond.layout.shape());
            let c = View {
                buf: &c,
                layout: &l,
            };
            return self.where_cond(c, a, b);
        }
        ok(kernels::elementwise::where_cond(self, cond, a, b)?)
    }

    fn reduce(&self, op: ReduceOp, x: View<'_>, axes: &[usize]) -> Result<Arc<dyn Buffer>> {
        self.bind()?;
        no_bool("reduce", x.buf.dtype())?;
        if x.buf.dtype().is_half() {
            let x32 = kernels::elementwise::cast(self, x, DType::F32)?;
            let l = Layout::contiguous(x.layout.shape());
            let r = kernels::reduce::reduce(
                self,
                op,
                View {
                    buf: &x32,
                    layout: &l,
                },
                axes,
            )?;
            if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) {
                return ok(r);
            }
            let lr = Layout::contiguous(&[r.len()]);
            return ok(kernels::elementwise::cast(
                self,
                View {
                    buf: &r,
                    layout: &lr,
                },
                x.buf.dtype(),
            )?);
        }
        ok(kernels::reduce::reduce(self, op, x, axes)?)
    }

    fn matmul(&self, a: View<'_>, b: View<'_>) -> Result<Arc<dyn Buffer>> {
        self.bind()?;
        same_dtype("matmul", a.buf.dtype(), b.buf.dtype())?;
        no_bool("matmul", a.buf.dtype())?;
        ok(kernels::matmul::matmul(self, a, b)?)
    }

    fn gather(&self, x: View<'_>, dim: usize, index: View<'_>) -> Result<Arc<dyn Buffer>> {
        self.bind()?;
        ok(kernels::shape::gather(self, x, dim, index)?)
    }

    fn scatter_add(
        &self,
        shape: &[usize],
        dim: usize,
        index: View<'_>,
        src: View<'_>,
    ) -> Result<Arc<dyn Buffer>> {
        self.bind()?;
        no_bool("scatter_add", src.buf.dtype())?;
        if src.buf.dtype().is_half() {
            return self.via_f32(src, |s| {
                kernels::shape::scatter_add(self, shape, dim, index, s)
            });
        }
        ok(kernels::shape::scatter_add(self, shape, dim, index, src)?)
    }

    fn assemble(
        &self,
        len: usize,
        dtype: DType,
        fill: f64,
        parts: &[(Layout, View<'_>)],
    ) -> Result<Arc<dyn Buffer>> {
        self.bind()?;
        ok(kernels::shape::assemble(self, len, dtype, fill, parts)?)
    }

    fn fused(&self) -> Option<&dyn FusedKernels> {
        Some(self)
    }
}

/// Strided descriptor of one operand on its own.
pub(crate) fn strided(op: &'static str, l: &Layout) -> Result<Strided> {
    Ok(Strided::joint(op, &[l])?.remove(0))
}
