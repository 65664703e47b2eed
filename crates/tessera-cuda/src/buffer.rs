//! Device memory: buffers handed to core, and the caching allocator behind them.
//!
//! Freed blocks go back to a free list keyed by size class instead of to the driver, so a
//! training step stops calling `cuMemAlloc` once the first steps have sized the pool. All work
//! runs on one stream, so a block reused by a later kernel is ordered after every earlier kernel
//! that read it.

use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tessera_core::{Buffer, DType};

/// Bytes of the size class that serves a request of `bytes`: multiples of 512 B up to 64 KiB,
/// then four classes per power of two (at most 25% slack).
pub fn size_class(bytes: usize) -> usize {
    const SMALL: usize = 64 << 10;
    if bytes <= SMALL {
        return bytes.div_ceil(512).max(1) * 512;
    }
    let p = bytes.next_power_of_two();
    let quarter = p / 8; // classes p/2 + k·p/8, k = 1..=4
    (p / 2) + bytes.saturating_sub(p / 2).div_ceil(quarter) * quarter
}

/// Counters of the allocator, for tests and `docs/cuda.md`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Calls to the driver's allocator so far.
    pub driver_allocs: u64,
    /// Requests served from the free lists.
    pub reuses: u64,
    /// Bytes held in the free lists now.
    pub cached_bytes: usize,
    /// Bytes handed out and not yet returned.
    pub live_bytes: usize,
}

#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<sys::CUdeviceptr>>,
    stats: PoolStats,
}

/// The caching allocator of one device.
#[derive(Default)]
pub struct Allocator {
    pool: Mutex<Pool>,
}

impl std::fmt::Debug for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Allocator({:?})", self.lock().stats)
    }
}

impl Allocator {
    fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters.
    pub fn stats(&self) -> PoolStats {
        self.lock().stats
    }

    /// A block of at least `bytes` (the caller has bound the device's context to this thread).
    /// When the driver is out of memory the free lists are returned to it and the call retried.
    pub fn alloc(&self, bytes: usize) -> Result<(sys::CUdeviceptr, usize), result::DriverError> {
        let class = size_class(bytes);
        {
            let mut p = self.lock();
            if let Some(ptr) = p.free.get_mut(&class).and_then(Vec::pop) {
                p.stats.reuses += 1;
                p.stats.cached_bytes -= class;
                p.stats.live_bytes += class;
                return Ok((ptr, class));
            }
        }
        // SAFETY: the context is current; the block is released through `release`.
        let ptr = match unsafe { result::malloc_sync(class) } {
            Ok(p) => p,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                self.empty_cache()?;
                unsafe { result::malloc_sync(class) }?
            }
            Err(e) => return Err(e),
        };
        let mut p = self.lock();
        p.stats.driver_allocs += 1;
        p.stats.live_bytes += class;
        Ok((ptr, class))
    }

    /// Returns a block to its free list.
    pub fn release(&self, ptr: sys::CUdeviceptr, class: usize) {
        let mut p = self.lock();
        p.stats.live_bytes -= class;
        p.stats.cached_bytes += class;
        p.free.entry(class).or_default().push(ptr);
    }

    /// Gives every cached block back to the driver (the context must be current).
    pub fn empty_cache(&self) -> Result<(), result::DriverError> {
        let blocks: Vec<_> = {
            let mut p = self.lock();
            p.stats.cached_bytes = 0;
            p.free.drain().flat_map(|(_, v)| v).collect()
        };
        // Pending kernels may still use these blocks through earlier owners.
        result::ctx::synchronize()?;
        for ptr in blocks {
            unsafe { result::free_sync(ptr) }?;
        }
        Ok(())
    }
}

/// `len` elements of one dtype in device memory. Dropping it returns the block to the pool.
pub struct CudaBuffer {
    ptr: sys::CUdeviceptr,
    class: usize,
    len: usize,
    dtype: DType,
    alloc: Arc<Allocator>,
}

impl CudaBuffer {
    /// A new uninitialised buffer (no allocation for zero elements).
    pub(crate) fn new(
        alloc: &Arc<Allocator>,
        len: usize,
        dtype: DType,
    ) -> Result<CudaBuffer, result::DriverError> {
        let (ptr, class) = if len == 0 {
            (0, 0)
        } else {
            alloc.alloc(len * dtype.size_in_bytes())?
        };
        Ok(CudaBuffer {
            ptr,
            class,
            len,
            dtype,
            alloc: alloc.clone(),
        })
    }

    /// The device address of element `i`.
    pub fn ptr_at(&self, i: usize) -> sys::CUdeviceptr {
        self.ptr + (i * self.dtype.size_in_bytes()) as u64
    }

    /// The device address of the first element.
    pub fn ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        if self.class > 0 {
            self.alloc.release(self.ptr, self.class);
        }
    }
}

impl std::fmt::Debug for CudaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBuffer({} x {})", self.len, self.dtype)
    }
}

impl Buffer for CudaBuffer {
    fn len(&self) -> usize {
        self.len
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_the_request_with_bounded_slack() {
        for bytes in
            (1..5000)
                .chain((60_000..70_000).step_by(7))
                .chain([1 << 20, (1 << 20) + 1, 3 << 25])
        {
            let c = size_class(bytes);
            assert!(c >= bytes, "{bytes} -> {c}");
            assert!(c <= bytes + bytes / 4 + 512, "{bytes} -> {c}");
            assert_eq!(size_class(c), c, "classes are fixed points");
        }
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class((1 << 20) + 1), (1 << 20) + (1 << 18));
    }
}
