//! Kernel families: CUDA C sources (`<family>.cu`, compiled by NVRTC once per process) beside
//! their Rust launchers (`<family>.rs`), plus cuBLAS for floating-point matmul.

pub mod conv;
pub mod elementwise;
pub mod matmul;
pub mod reduce;
pub mod rnn;
pub mod shape;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, DeviceRepr, LaunchConfig};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tessera_core::{coalesce, Error, Layout, Result};

/// Prepended to every family: the `Strided` descriptor and indexing helpers.
const COMMON: &str = include_str!("common.cuh");
/// The elementwise op templates, shared by `elementwise` and `half`.
const OPS: &str = include_str!("ops.cuh");

/// Every kernel family: (name, CUDA C source without the headers).
pub const FAMILIES: &[(&str, &str)] = &[
    ("elementwise", include_str!("elementwise.cu")),
    ("half", include_str!("half.cu")),
    ("reduce", include_str!("reduce.cu")),
    ("shape", include_str!("shape.cu")),
    ("conv", include_str!("conv.cu")),
    ("matmul", include_str!("matmul.cu")),
    ("rnn", include_str!("rnn.cu")),
];

/// The full source NVRTC compiles for `family`: the headers it uses, then its own source.
pub fn family_source(family: &str) -> Option<String> {
    let (_, src) = FAMILIES.iter().find(|(n, _)| *n == family)?;
    let ops = if matches!(family, "elementwise" | "half") {
        OPS
    } else {
        ""
    };
    Some(format!("{COMMON}\n{ops}\n{src}"))
}

/// Where `cuda_fp16.h` and friends live: `TESSERA_CUDA_INCLUDE`, else `$CUDA_HOME/include`,
/// else `/usr/local/cuda/include` (only if the folder has the headers).
pub fn cuda_include_dir() -> Option<String> {
    std::env::var("TESSERA_CUDA_INCLUDE")
        .ok()
        .or_else(|| {
            std::env::var("CUDA_HOME")
                .ok()
                .map(|h| format!("{h}/include"))
        })
        .or_else(|| Some("/usr/local/cuda/include".to_string()))
        .filter(|p| std::path::Path::new(p).join("cuda_fp16.h").exists())
}

/// Compiles the source of `family` to PTX for `arch` (e.g. `compute_90`) with NVRTC.
/// The caller makes sure libnvrtc is loadable (cudarc panics otherwise).
pub fn compile_family(family: &str, arch: &'static str) -> std::result::Result<Ptx, String> {
    let src = family_source(family).ok_or_else(|| format!("no kernel family {family}"))?;
    let opts = CompileOptions {
        arch: Some(arch),
        include_paths: cuda_include_dir().into_iter().collect(),
        options: vec!["--std=c++17".into()],
        name: Some(format!("{family}.cu")),
        ..Default::default()
    };
    compile_ptx_with_opts(src, opts).map_err(|e| match e {
        CompileError::CompileError { log, .. } => {
            format!("{family}.cu: {}", log.to_string_lossy())
        }
        other => format!("{family}.cu: {other:?}"),
    })
}

/// The virtual architecture to compile for on a device of compute capability `(major, minor)`:
/// the newest one NVRTC 13 knows that the device can run.
pub fn arch_for(major: i32, minor: i32) -> &'static str {
    match (major, minor) {
        (12, _) => "compute_120",
        (10, _) | (11, _) => "compute_100",
        (9, _) => "compute_90",
        (8, m) if m >= 9 => "compute_89",
        (8, m) if m >= 6 => "compute_86",
        (8, _) => "compute_80",
        _ => "compute_75",
    }
}

/// Compiled modules, one per family, loaded on first use and kept for the process.
pub struct Kernels {
    ctx: Arc<CudaContext>,
    arch: &'static str,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernels({})", self.arch)
    }
}

impl Kernels {
    /// Kernels of one context, compiled for `arch` on first use.
    pub fn new(ctx: Arc<CudaContext>, arch: &'static str) -> Kernels {
        Kernels {
            ctx,
            arch,
            modules: Mutex::default(),
            functions: Mutex::default(),
        }
    }

    /// The kernel `name` of `family`, compiling the family on first use.
    pub fn get(&self, family: &'static str, name: &str) -> Result<CudaFunction> {
        let key = format!("{family}/{name}");
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(f.clone());
        }
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            match modules.get(family) {
                Some(m) => m.clone(),
                None => {
                    let ptx = compile_family(family, self.arch).map_err(|m| dev_err("nvrtc", m))?;
                    let m = self
                        .ctx
                        .load_module(ptx)
                        .map_err(|e| dev_err("load_module", e))?;
                    modules.insert(family, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(name)
            .map_err(|e| dev_err("load_function", format!("{name}: {e:?}")))?;
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, f.clone());
        Ok(f)
    }
}

/// A CUDA failure as tessera's error.
pub fn dev_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device {
        device: "cuda".into(),
        msg: format!("{what}: {e:?}"),
    }
}

/// Most dims a strided operand may have after merging neighbours.
pub const MAX_DIMS: usize = 8;

/// A strided layout as kernels read it (`Strided` in common.cuh).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Strided {
    shape: [i64; MAX_DIMS],
    stride: [i64; MAX_DIMS],
    offset: i64,
    rank: i32,
    contiguous: i32,
}

// SAFETY: plain old data with the same layout as the C struct.
unsafe impl DeviceRepr for Strided {}

impl Strided {
    /// Whether element `i` lives at `offset + i`.
    pub fn is_contiguous(&self) -> bool {
        self.contiguous != 0
    }

    /// From a shape, strides and offset (already merged).
    pub fn new(
        op: &'static str,
        shape: &[usize],
        strides: &[usize],
        offset: usize,
    ) -> Result<Strided> {
        if shape.len() > MAX_DIMS {
            return Err(Error::invalid(
                op,
                format!(
                    "CUDA kernels take at most {MAX_DIMS} non-mergeable dims, got shape {shape:?}"
                ),
            ));
        }
        let mut s = Strided {
            offset: offset as i64,
            rank: shape.len() as i32,
            ..Default::default()
        };
        let mut expect = 1usize;
        let mut contiguous = true;
        for d in (0..shape.len()).rev() {
            s.shape[d] = shape[d] as i64;
            s.stride[d] = strides[d] as i64;
            if shape[d] != 1 && strides[d] != expect {
                contiguous = false;
            }
            expect *= shape[d];
        }
        s.contiguous = contiguous as i32;
        Ok(s)
    }

    /// Descriptors for operands that share one shape, with neighbouring dims merged where every
    /// operand allows it.
    pub fn joint(op: &'static str, layouts: &[&Layout]) -> Result<Vec<Strided>> {
        let shape = layouts[0].shape();
        let strides: Vec<&[usize]> = layouts.iter().map(|l| l.strides()).collect();
        let (merged, merged_strides) = coalesce(shape, &strides);
        layouts
            .iter()
            .zip(&merged_strides)
            .map(|(l, st)| Strided::new(op, &merged, st, l.offset()))
            .collect()
    }

    /// A contiguous descriptor of `n` elements starting at `offset`.
    pub fn flat(n: usize, offset: usize) -> Strided {
        let mut s = Strided {
            offset: offset as i64,
            rank: 1,
            contiguous: 1,
            ..Default::default()
        };
        s.shape[0] = n as i64;
        s.stride[0] = 1;
        s
    }
}

/// Device address of `v`'s elements in row-major order: in place when they are one contiguous
/// run, else in a contiguous copy kept in `hold` (which must outlive the launch).
pub(crate) fn rows_ptr(
    be: &crate::CudaBackend,
    op: &'static str,
    v: tessera_core::View<'_>,
    hold: &mut Option<crate::CudaBuffer>,
) -> Result<cudarc::driver::sys::CUdeviceptr> {
    let b = crate::cuda_buf(op, v)?;
    Ok(match be.contiguous(op, v)? {
        Some(copy) => hold.insert(copy).ptr(),
        None => b.ptr_at(v.layout.offset()),
    })
}

/// Threads per block of every elementwise-style launch.
pub const BLOCK: u32 = 256;

/// A grid-stride launch over `n` items.
pub fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The launch of an elementwise kernel over `n` items whose operands are `contiguous`: those
/// move 16 bytes per thread (up to 4 elements), so a quarter of the threads cover them; strided
/// ones take a thread per element.
pub fn grid_elementwise(n: usize, contiguous: bool) -> LaunchConfig {
    grid(if contiguous { n.div_ceil(4) } else { n })
}

/// One block per row, for `rows` rows (grid-stride beyond the cap).
pub fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The kernel-name suffix of a dtype.
pub fn suffix(d: tessera_core::DType) -> &'static str {
    d.as_str()
}

/// The kernel-name suffix for kernels that only move elements: f16 and bf16 share `u16`,
/// bool is `u8`.
pub fn bits_suffix(d: tessera_core::DType) -> &'static str {
    match d {
        tessera_core::DType::F16 | tessera_core::DType::BF16 => "u16",
        tessera_core::DType::Bool => "u8",
        _ => d.as_str(),
    }
}
