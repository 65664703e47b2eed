//! # tessera-cpu
//!
//! The CPU backend of tessera: GEMM through the `gemm` crate, elementwise and reduction kernels
//! with contiguous fast paths that LLVM vectorises, `rayon` above a size threshold, and general
//! strided paths for views.
//!
//! Threads: everything, GEMMs included, runs on rayon's pool, which follows
//! `RAYON_NUM_THREADS` or [`set_num_threads`].
//!
//! Layout: `primitives` implements the required [`Backend`](tessera_core::Backend)
//! methods, `fused` the optional [`FusedKernels`](tessera_core::FusedKernels), `conv` plans
//! which convolution algorithm runs, `dispatch` holds the plumbing they share, and `kernels`
//! the loops themselves (crate-private: their safety rests on checks made in the modules above).

#[macro_use]
mod dispatch;
mod buffer;
mod conv;
mod fused;
mod kernels;
mod primitives;

pub use buffer::{CpuBuffer, CpuStorage};

use std::sync::{Arc, OnceLock};
use tessera_core::{Device, Error, Result};

/// The CPU backend.
#[derive(Debug, Default)]
pub struct CpuBackend;

/// The shared CPU device.
pub fn cpu() -> Device {
    static DEV: OnceLock<Device> = OnceLock::new();
    DEV.get_or_init(|| Device::new(Arc::new(CpuBackend)))
        .clone()
}

/// Uses `n` threads (rayon's pool, which GEMMs share; `0`: `RAYON_NUM_THREADS`, else one per
/// core), **counting the calling thread**: call it from the thread that runs the model, before
/// the first kernel (the pool reads its setting once). That thread becomes the pool's worker 0,
/// so a parallel kernel it starts keeps one share of the work and leaves the rest to be stolen
/// by the other workers, instead of handing the whole kernel to the pool and sleeping until it
/// is done (a futex round trip per kernel). Measured on the 2-core machine, 3 alternating
/// rounds, together with the `x · Wᵀ` kernel that landed with it: W5 22.1 → 32.2 steps/s, W3
/// 348 → 406; on top of that kernel alone, W5's forward + backward 40–52 → 30–36 ms (3 runs).
/// Without this call the pool starts on first
/// use with rayon's defaults, and every parallel kernel is handed over that way. Returns an
/// error if rayon's pool already started with another size.
pub fn set_num_threads(n: usize) -> Result<()> {
    let n = match n {
        0 => std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v: &usize| v > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |p| p.get())),
        n => n,
    };
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    match rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .use_current_thread()
        .build_global()
    {
        Ok(()) => Ok(()),
        Err(_) if rayon::current_num_threads() == n => Ok(()),
        Err(e) => Err(Error::Device {
            device: "cpu".into(),
            msg: format!("cannot set {n} threads: {e}"),
        }),
    }
}

/// Number of threads rayon uses.
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}
