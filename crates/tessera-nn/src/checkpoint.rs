//! Checkpoints as safetensors files with PyTorch's `state_dict` names, so a file written by
//! `safetensors.torch.save_file(model.state_dict(), ...)` loads into the matching model.
//! Optimizer state sits beside the parameters under `optimizer.` keys; metadata (model name,
//! epoch, ...) in the header. Writes are atomic: a temporary file in the same folder, then a
//! rename.

use crate::module::Module;
use crate::optim::Optimizer;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use tessera_core::{half, DType, Device, Error, HostData, Result, Tensor};

const OPTIMIZER_PREFIX: &str = "optimizer.";

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source: e,
    }
}

fn to_bytes(t: &Tensor) -> Result<(Dtype, Vec<u8>)> {
    Ok(match t.to_host()? {
        HostData::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        HostData::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        HostData::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        HostData::F16(v) => (Dtype::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        HostData::BF16(v) => (
            Dtype::BF16,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        HostData::Bool(v) => (Dtype::BOOL, v.iter().map(|&b| b as u8).collect()),
    })
}

fn from_view(path: &Path, name: &str, v: &TensorView<'_>, device: &Device) -> Result<Tensor> {
    let d = v.data();
    let host = match v.dtype() {
        Dtype::F32 => HostData::F32(
            d.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F64 => HostData::F64(
            d.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        Dtype::I64 => HostData::I64(
            d.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        Dtype::F16 => HostData::F16(
            d.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        Dtype::BF16 => HostData::BF16(
            d.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        Dtype::BOOL => {
            if let Some(b) = d.iter().find(|&&b| b > 1) {
                return Err(bad(
                    path,
                    format!("tensor {name} is BOOL but holds the byte {b} (only 0 and 1 are booleans)"),
                ));
            }
            HostData::Bool(d.iter().map(|&b| b == 1).collect())
        }
        other => {
            return Err(bad(
                path,
                format!(
                    "tensor {name} has dtype {other:?}; tessera reads F32, F64, I64, F16, BF16 and BOOL"
                ),
            ))
        }
    };
    Tensor::from_host(host, v.shape(), device)
}

/// Writes named tensors and string metadata to `path` atomically.
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (dtype, bytes) = to_bytes(t)?;
        owned.push((name.clone(), dtype, t.dims().to_vec(), bytes));
    }
    let views = owned
        .iter()
        .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(path, e.to_string()))?;
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| bad(path, e.to_string()))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| bad(path, "not a file path"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(path, e)
    })
}

/// A loaded file: tensors by name (on the requested device) and the header's metadata.
pub struct Loaded {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

/// The largest checkpoint [`load`] reads (64 GiB).
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 36;

/// The bytes of a regular file of at most `cap` bytes: a device, a pipe or a folder (`/dev/zero`
/// would be read forever) or a larger file is an error naming it, before anything is read.
pub fn read_bounded(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
    if !meta.is_file() {
        return Err(bad(path, "not a regular file"));
    }
    if meta.len() > cap {
        return Err(bad(
            path,
            format!("{} bytes, more than the {cap} tessera reads", meta.len()),
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| std::io::Read::take(f, cap + 1).read_to_end(&mut bytes))
        .map_err(|e| io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(bad(path, format!("grew past {cap} bytes while being read")));
    }
    Ok(bytes)
}

/// Reads a safetensors file. A truncated or corrupted file, an absurd header size or an
/// unsupported dtype is an error naming the file.
pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    let bytes = read_bounded(path, MAX_CHECKPOINT_BYTES)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(path, e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let t = from_view(path, &name, &view, device)?;
        tensors.insert(name, t);
    }
    let metadata = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(Loaded { tensors, metadata })
}

/// Saves a model's parameters and buffers (and an optimizer's state) with `metadata`.
pub fn save_model(
    path: &Path,
    model: &dyn Module,
    optimizer: Option<&dyn Optimizer>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = model
        .named_parameters()
        .into_iter()
        .map(|(n, p)| (n, p.tensor().detach()))
        .collect();
    if let Some(o) = optimizer {
        tensors.extend(
            o.state()
                .into_iter()
                .map(|(k, t)| (format!("{OPTIMIZER_PREFIX}{k}"), t.detach())),
        );
    }
    save(path, &tensors, metadata)
}

/// Loads parameters into `model` (and optimizer state, when given and present). Every model
/// parameter must be in the file with its shape and dtype, and the file may hold nothing else
/// (besides optimizer state): a mismatch is an error naming the key, and the model is left
/// unchanged. Returns the file's metadata.
pub fn load_model(
    path: &Path,
    model: &dyn Module,
    optimizer: Option<&mut dyn Optimizer>,
    device: &Device,
) -> Result<BTreeMap<String, String>> {
    let mut loaded = load(path, device)?;
    let params = model.named_parameters();
    let mut staged = Vec::with_capacity(params.len());
    for (name, p) in &params {
        let t = loaded
            .tensors
            .remove(name)
            .ok_or_else(|| bad(path, format!("missing key {name}")))?;
        let cur = p.tensor();
        if t.dims() != cur.dims() {
            return Err(bad(
                path,
                format!(
                    "{name} has shape {} but the model expects {}",
                    t.shape(),
                    cur.shape()
                ),
            ));
        }
        if t.dtype() != cur.dtype() {
            return Err(bad(
                path,
                format!(
                    "{name} has dtype {} but the model expects {}",
                    t.dtype(),
                    cur.dtype()
                ),
            ));
        }
        staged.push((p, t));
    }
    let optim_state: Vec<(String, Tensor)> = loaded
        .tensors
        .iter()
        .filter_map(|(k, t)| {
            k.strip_prefix(OPTIMIZER_PREFIX)
                .map(|s| (s.to_string(), t.clone()))
        })
        .collect();
    if let Some(extra) = loaded
        .tensors
        .keys()
        .find(|k| !k.starts_with(OPTIMIZER_PREFIX))
    {
        return Err(bad(
            path,
            format!("unexpected key {extra} (not a parameter of this model)"),
        ));
    }
    // The optimizer's state first: if it does not fit, the model is still untouched.
    if let Some(o) = optimizer {
        o.load_state(&optim_state)?;
    }
    for (p, t) in staged {
        p.set(t)?;
    }
    Ok(loaded.metadata)
}

/// The dtype tessera uses for a safetensors dtype, if any.
pub fn dtype_of(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::F64 => Some(DType::F64),
        Dtype::I64 => Some(DType::I64),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}
