//! Host buffers, and a pool that recycles large ones: a training step or a big elementwise op
//! then reuses warm pages instead of asking the OS for fresh ones (glibc returns allocations
//! above 32 MiB to the OS on free, so each would page-fault again).

use std::any::Any;
use std::sync::Mutex;
use tessera_core::{Buffer, DType};

/// The elements of a CPU buffer.
#[derive(Debug)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    F16(Vec<half::f16>),
    BF16(Vec<half::bf16>),
    Bool(Vec<bool>),
}

impl CpuStorage {
    fn bytes(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len() * 4,
            CpuStorage::F64(v) => v.len() * 8,
            CpuStorage::I64(v) => v.len() * 8,
            CpuStorage::F16(v) => v.len() * 2,
            CpuStorage::BF16(v) => v.len() * 2,
            CpuStorage::Bool(v) => v.len(),
        }
    }
    fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::I64(_) => DType::I64,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::Bool(_) => DType::Bool,
        }
    }
    fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            CpuStorage::I64(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::Bool(v) => v.len(),
        }
    }
}

/// A CPU buffer; its memory goes back to the pool when dropped.
#[derive(Debug)]
pub struct CpuBuffer {
    pub(crate) data: CpuStorage,
}

impl CpuBuffer {
    /// Wraps storage.
    pub fn new(data: CpuStorage) -> Self {
        CpuBuffer { data }
    }
    /// The elements.
    pub fn storage(&self) -> &CpuStorage {
        &self.data
    }
}

impl Buffer for CpuBuffer {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn dtype(&self) -> DType {
        self.data.dtype()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}

impl Drop for CpuBuffer {
    fn drop(&mut self) {
        let data = std::mem::replace(&mut self.data, CpuStorage::F32(Vec::new()));
        pool_put(data);
    }
}

/// Buffers smaller than this come from malloc, which is fast for them. From 128 KiB up glibc
/// maps fresh zeroed pages (or regrows a trimmed heap) per allocation: W5's `[32, 1024]` f32
/// gate buffers spent ~11% of a step in page faults and memset at 256 KiB. 64 KiB against 256
/// KiB, 3 alternating rounds, best repetition: W5 33.4 -> 41.5 steps/s, W4 371 -> 440, W3
/// 452 -> 524, W7 unchanged.
const POOL_MIN_BYTES: usize = 64 << 10;
/// Most bytes the pool keeps idle (`TESSERA_CPU_POOL_MB` overrides).
fn pool_cap() -> usize {
    static CAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        std::env::var("TESSERA_CPU_POOL_MB")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(512)
            << 20
    })
}

struct Pool {
    free: Vec<CpuStorage>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

fn pool_put(data: CpuStorage) {
    let b = data.bytes();
    if b < POOL_MIN_BYTES {
        return;
    }
    // A poisoned lock only means another thread panicked mid-push; the list is still valid.
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    while pool.bytes + b > pool_cap() && !pool.free.is_empty() {
        let old = pool.free.remove(0);
        pool.bytes -= old.bytes();
    }
    if pool.bytes + b <= pool_cap() {
        pool.bytes += b;
        pool.free.push(data);
    }
}

fn pool_take(dtype: DType, len: usize) -> Option<CpuStorage> {
    if len * dtype.size_in_bytes() < POOL_MIN_BYTES {
        return None;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let i = pool
        .free
        .iter()
        .rposition(|s| s.dtype() == dtype && s.len() == len)?;
    let s = pool.free.swap_remove(i);
    pool.bytes -= s.bytes();
    Some(s)
}

/// An element type the CPU kernels handle.
pub trait CpuElem: Copy + Send + Sync + Default + PartialOrd + std::fmt::Debug + 'static {
    /// The dtype.
    const DTYPE: DType;
    /// The typed elements of a storage, if it holds this type.
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    /// Wraps a vector.
    fn wrap(v: Vec<Self>) -> CpuStorage;
    /// A vector from a storage of this type.
    fn unwrap(s: CpuStorage) -> Option<Vec<Self>>;
    /// `v` converted as `Backend::cast` defines it (rounded for floats, truncated and
    /// saturated for i64, `v != 0` for bool).
    fn from_f64(v: f64) -> Self;
    /// The element as f64 (bool: 0 or 1).
    fn to_f64(self) -> f64;
}

macro_rules! elem {
    ($t:ty, $d:ident, |$v:ident| $from:expr, |$s:ident| $to:expr) => {
        impl CpuElem for $t {
            const DTYPE: DType = DType::$d;
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$d(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$d(v)
            }
            fn unwrap(s: CpuStorage) -> Option<Vec<Self>> {
                match s {
                    CpuStorage::$d(v) => Some(v),
                    _ => None,
                }
            }
            #[inline(always)]
            fn from_f64($v: f64) -> Self {
                $from
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                let $s = self;
                $to
            }
        }
    };
}
elem!(f32, F32, |v| v as f32, |s| s as f64);
elem!(f64, F64, |v| v, |s| s);
elem!(i64, I64, |v| v as i64, |s| s as f64);
elem!(half::f16, F16, |v| half::f16::from_f64(v), |s| s.to_f64());
elem!(half::bf16, BF16, |v| half::bf16::from_f64(v), |s| s
    .to_f64());
elem!(bool, Bool, |v| v != 0.0, |s| s as u8 as f64);

/// Hands a kernel's scratch vector back to the pool (a plain drop would free it, and the next
/// call would page-fault in fresh memory).
pub fn recycle<T: CpuElem>(v: Vec<T>) {
    pool_put(T::wrap(v));
}

/// A vector of `len` elements whose contents the caller overwrites: a pooled one when
/// available, else a zeroed one (calloc'd, so the zeroing is the OS's lazy zero pages).
pub fn alloc<T: CpuElem>(len: usize) -> Vec<T> {
    pool_take(T::DTYPE, len)
        .and_then(T::unwrap)
        .unwrap_or_else(|| vec![T::default(); len])
}
