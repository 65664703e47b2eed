//! Datasets and loaders: IDX files (MNIST, Fashion-MNIST; gzipped or not), safetensors
//! datasets (MNIST-1D), the embedded data, and a `DataLoader` with seeded shuffling, batching,
//! scaling, normalisation, augmentation and a background thread preparing the next batch.

use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use tessera_core::random::uniform;
use tessera_core::{Device, Error, Result, Tensor};

/// Examples in host memory: inputs as f32 (images already scaled to [0, 1]) and class labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub inputs: Vec<f32>,
    /// Shape of one example, e.g. `[1, 28, 28]` or `[40]`.
    pub example_shape: Vec<usize>,
    pub labels: Vec<i64>,
    pub classes: usize,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }
}

/// A train/test pair.
#[derive(Clone, Debug)]
pub struct Split {
    pub name: String,
    pub train: Dataset,
    pub test: Dataset,
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// Reads an IDX file of unsigned bytes (gzipped or not): its dims and its data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = tessera_nn::checkpoint::read_bounded(path, IDX_MAX_BYTES as u64 + 4096)?;
    parse_idx(path, &raw)
}

/// The most data bytes one IDX file may declare (16 GiB; MNIST's largest is 47 MB).
const IDX_MAX_BYTES: usize = 1 << 34;

/// An IDX file's dims and data. The header is read first and the data (inflated, for gzip)
/// only up to the size it declares, so a header that lies or a gzip bomb is an error, never an
/// unbounded read or allocation.
fn parse_idx(path: &Path, raw: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    let gz = raw.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read + '_> = if gz {
        Box::new(GzDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    let read_err = |e: std::io::Error| bad(path, format!("corrupt gzip data: {e}"));
    let mut magic = [0u8; 4];
    match reader.read_exact(&mut magic) {
        Err(e) if gz => return Err(read_err(e)),
        Ok(()) if magic[0] == 0 && magic[1] == 0 => {}
        _ => return Err(bad(path, "not an IDX file (wrong magic number)")),
    }
    if magic[2] != 0x08 {
        return Err(bad(
            path,
            format!(
                "IDX element type 0x{:02x} is not unsigned bytes (0x08)",
                magic[2]
            ),
        ));
    }
    let nd = magic[3] as usize;
    let mut head = vec![0u8; 4 * nd];
    if nd == 0 || reader.read_exact(&mut head).is_err() {
        return Err(bad(path, "IDX header is truncated"));
    }
    let dims: Vec<usize> = head
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= IDX_MAX_BYTES)
        .ok_or_else(|| {
            bad(
                path,
                format!("IDX dims {dims:?} declare more data than tessera reads ({IDX_MAX_BYTES} bytes)"),
            )
        })?;
    // One byte more than declared, to tell "exactly n" from "more".
    let mut data = Vec::new();
    reader
        .take(n as u64 + 1)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    if data.len() != n {
        let has = if data.len() > n {
            "more".to_string()
        } else {
            data.len().to_string()
        };
        return Err(bad(
            path,
            format!("IDX dims {dims:?} need {n} bytes of data, the file has {has}"),
        ));
    }
    Ok((dims, data))
}

fn idx_dataset(images: (PathBuf, Vec<u8>), labels: (PathBuf, Vec<u8>)) -> Result<Dataset> {
    let (idims, pixels) = parse_idx(&images.0, &images.1)?;
    let (ldims, labs) = parse_idx(&labels.0, &labels.1)?;
    if idims.len() != 3 {
        return Err(bad(
            &images.0,
            format!("expected images [count, rows, cols], got dims {idims:?}"),
        ));
    }
    if ldims.len() != 1 || ldims[0] != idims[0] {
        return Err(bad(
            &labels.0,
            format!(
                "{} labels for {} images in {}",
                ldims.first().copied().unwrap_or(0),
                idims[0],
                images.0.display()
            ),
        ));
    }
    let classes = labs
        .iter()
        .copied()
        .max()
        .map(|m| m as usize + 1)
        .unwrap_or(0)
        .max(10);
    Ok(Dataset {
        inputs: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        example_shape: vec![1, idims[1], idims[2]],
        labels: labs.iter().map(|&l| l as i64).collect(),
        classes,
    })
}

/// Reads `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]` and the `t10k-` pair
/// from a directory (MNIST's own names, which Fashion-MNIST uses too).
pub fn load_idx_dir(dir: &Path) -> Result<Split> {
    let find = |stem: &str| -> Result<(PathBuf, Vec<u8>)> {
        for name in [format!("{stem}.gz"), stem.to_string()] {
            let p = dir.join(&name);
            if p.exists() {
                let raw = tessera_nn::checkpoint::read_bounded(&p, IDX_MAX_BYTES as u64 + 4096)?;
                return Ok((p, raw));
            }
        }
        Err(bad(&dir.join(stem), "not found (also tried .gz)"))
    };
    Ok(Split {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        train: idx_dataset(
            find("train-images-idx3-ubyte")?,
            find("train-labels-idx1-ubyte")?,
        )?,
        test: idx_dataset(
            find("t10k-images-idx3-ubyte")?,
            find("t10k-labels-idx1-ubyte")?,
        )?,
    })
}

/// Reads a safetensors dataset with `x_train`, `y_train`, `x_test`, `y_test` (f32 inputs, i64
/// labels), as MNIST-1D is shipped.
pub fn load_safetensors_split(path: &Path, raw: &[u8]) -> Result<Split> {
    let st = safetensors::SafeTensors::deserialize(raw)
        .map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
    let get = |name: &str| {
        st.tensor(name)
            .map_err(|_| bad(path, format!("missing tensor {name}")))
    };
    let part = |x: &str, y: &str| -> Result<Dataset> {
        let (xv, yv) = (get(x)?, get(y)?);
        if xv.dtype() != safetensors::Dtype::F32 || yv.dtype() != safetensors::Dtype::I64 {
            return Err(bad(path, format!("{x} must be F32 and {y} I64")));
        }
        let n = yv.shape().first().copied().unwrap_or(0);
        if xv.shape().first() != Some(&n) {
            return Err(bad(
                path,
                format!("{x} has {:?} rows for {n} labels", xv.shape().first()),
            ));
        }
        let labels: Vec<i64> = yv
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        if labels.iter().any(|&l| l < 0) {
            return Err(bad(path, format!("{y} holds a negative label")));
        }
        Ok(Dataset {
            inputs: xv
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            example_shape: xv.shape()[1..].to_vec(),
            classes: labels
                .iter()
                .copied()
                .max()
                .map(|m| m as usize + 1)
                .unwrap_or(0),
            labels,
        })
    };
    Ok(Split {
        name: path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        train: part("x_train", "y_train")?,
        test: part("x_test", "y_test")?,
    })
}

/// The datasets compiled into tessera (see data/ and its licence files).
mod embedded {
    pub const MNIST_10K: [(&str, &[u8]); 4] = [
        (
            "train-images-idx3-ubyte.gz",
            include_bytes!("../data/mnist-10k/train-images-idx3-ubyte.gz"),
        ),
        (
            "train-labels-idx1-ubyte.gz",
            include_bytes!("../data/mnist-10k/train-labels-idx1-ubyte.gz"),
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            include_bytes!("../data/mnist-10k/t10k-images-idx3-ubyte.gz"),
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            include_bytes!("../data/mnist-10k/t10k-labels-idx1-ubyte.gz"),
        ),
    ];
    pub const MNIST1D: &[u8] = include_bytes!("../data/mnist1d/mnist1d.safetensors");
    /// *Pride and Prejudice* (public domain), the default corpus of the char-LSTM example.
    pub const TEXT: &str = include_str!("../data/text/pride_and_prejudice.txt");
}

/// The embedded novel, for language-model examples.
pub fn embedded_text() -> &'static str {
    embedded::TEXT
}

/// Where Debian's `dataset-fashion-mnist` package puts its files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// A dataset by name: `mnist-10k` and `mnist1d` (embedded), `fashion-mnist` (Debian's
/// package), or a directory of IDX files / a `.safetensors` file.
pub fn load(name: &str) -> Result<Split> {
    match name {
        "mnist-10k" => {
            let f = |i: usize| {
                (
                    PathBuf::from(format!("mnist-10k/{}", embedded::MNIST_10K[i].0)),
                    embedded::MNIST_10K[i].1.to_vec(),
                )
            };
            Ok(Split {
                name: name.into(),
                train: idx_dataset(f(0), f(1))?,
                test: idx_dataset(f(2), f(3))?,
            })
        }
        "mnist1d" => {
            let mut s =
                load_safetensors_split(Path::new("mnist1d.safetensors"), embedded::MNIST1D)?;
            s.name = name.into();
            Ok(s)
        }
        "fashion-mnist" => {
            let dir = Path::new(FASHION_MNIST_DIR);
            if !dir.exists() {
                return Err(bad(
                    dir,
                    "Fashion-MNIST is not installed: run `apt-get install -y dataset-fashion-mnist` \
                     (Debian) or pass --data DIR with its IDX files",
                ));
            }
            let mut s = load_idx_dir(dir)?;
            s.name = name.into();
            Ok(s)
        }
        path => {
            let p = Path::new(path);
            if p.is_dir() {
                load_idx_dir(p)
            } else if p.extension().is_some_and(|e| e == "safetensors") {
                let raw = tessera_nn::checkpoint::read_bounded(
                    p,
                    tessera_nn::checkpoint::MAX_CHECKPOINT_BYTES,
                )?;
                load_safetensors_split(p, &raw)
            } else {
                Err(bad(p, "unknown dataset: use mnist-10k, mnist1d, fashion-mnist, a directory of IDX files or a .safetensors file"))
            }
        }
    }
}

/// Image augmentations applied to training batches.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Augment {
    /// Random crop after zero padding by this many pixels (0 = off).
    pub crop_padding: usize,
    /// Random horizontal flips.
    pub hflip: bool,
}

/// How a [`DataLoader`] forms batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
    /// `(x - mean) / std` after scaling to [0, 1].
    pub normalize: Option<(f32, f32)>,
    pub augment: Augment,
}

impl LoaderOptions {
    /// Shuffled batches of `batch_size`, keeping the last partial batch.
    pub fn new(batch_size: usize, seed: u64) -> Self {
        LoaderOptions {
            batch_size,
            shuffle: true,
            drop_last: false,
            seed,
            normalize: None,
            augment: Augment::default(),
        }
    }
}

/// A batch on a device: inputs `[B, ...]` and labels `[B]`.
pub struct Batch {
    pub inputs: Tensor,
    pub labels: Tensor,
}

/// Batches of a dataset for one epoch after another, prepared on a background thread.
pub struct DataLoader {
    data: Arc<Dataset>,
    opts: LoaderOptions,
}

fn mix(seed: u64, epoch: usize, stream: u64) -> u64 {
    seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03)
}

impl DataLoader {
    /// A loader over `data`.
    pub fn new(data: Arc<Dataset>, opts: LoaderOptions) -> Result<DataLoader> {
        if opts.batch_size == 0 {
            return Err(Error::invalid(
                "DataLoader",
                "batch_size must be at least 1",
            ));
        }
        if opts
            .normalize
            .is_some_and(|(_, s)| s <= 0.0 || !s.is_finite())
        {
            return Err(Error::invalid(
                "DataLoader",
                "normalize needs a positive, finite std",
            ));
        }
        Ok(DataLoader { data, opts })
    }

    /// Number of batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.data.len();
        if self.opts.drop_last {
            n / self.opts.batch_size
        } else {
            n.div_ceil(self.opts.batch_size)
        }
    }

    /// The order of examples in `epoch`: a seeded Fisher-Yates shuffle, the same on every run.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.data.len()).collect();
        if self.opts.shuffle {
            let s = mix(self.opts.seed, epoch, 1);
            for i in (1..idx.len()).rev() {
                let j = (uniform(s, i as u64) * (i + 1) as f64) as usize;
                idx.swap(i, j.min(i));
            }
        }
        idx
    }

    /// The batches of `epoch` on `device`; the next batch is prepared while the caller works.
    pub fn epoch(&self, epoch: usize, device: &Device) -> Batches {
        let (tx, rx) = sync_channel(2);
        let (data, opts) = (self.data.clone(), self.opts);
        let order = self.order(epoch);
        let nb = self.batches_per_epoch();
        std::thread::spawn(move || {
            for b in 0..nb {
                let ids = &order[b * opts.batch_size..((b + 1) * opts.batch_size).min(order.len())];
                if tx.send(host_batch(&data, &opts, epoch, ids)).is_err() {
                    return; // the consumer stopped early
                }
            }
        });
        Batches {
            rx,
            device: device.clone(),
            shape: self.data.example_shape.clone(),
        }
    }
}

fn host_batch(
    data: &Dataset,
    opts: &LoaderOptions,
    epoch: usize,
    ids: &[usize],
) -> (Vec<f32>, Vec<i64>) {
    let len = data.example_len();
    let mut x = Vec::with_capacity(ids.len() * len);
    let aug = opts.augment;
    let image = data.example_shape.len() == 3;
    for &i in ids {
        let ex = &data.inputs[i * len..(i + 1) * len];
        if image && (aug.crop_padding > 0 || aug.hflip) {
            let (c, h, w) = (
                data.example_shape[0],
                data.example_shape[1],
                data.example_shape[2],
            );
            let s = mix(opts.seed, epoch, 2);
            let (u1, u2, u3) = (
                uniform(s, 3 * i as u64),
                uniform(s, 3 * i as u64 + 1),
                uniform(s, 3 * i as u64 + 2),
            );
            let p = aug.crop_padding as isize;
            let (dy, dx) = (
                (u1 * (2 * p + 1) as f64) as isize - p,
                (u2 * (2 * p + 1) as f64) as isize - p,
            );
            let flip = aug.hflip && u3 < 0.5;
            for ch in 0..c {
                for y in 0..h as isize {
                    for xx in 0..w as isize {
                        let sx = if flip { w as isize - 1 - xx } else { xx } + dx;
                        let sy = y + dy;
                        let inside = sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize;
                        x.push(if inside {
                            ex[ch * h * w + sy as usize * w + sx as usize]
                        } else {
                            0.0
                        });
                    }
                }
            }
        } else {
            x.extend_from_slice(ex);
        }
    }
    if let Some((m, s)) = opts.normalize {
        x.iter_mut().for_each(|v| *v = (*v - m) / s);
    }
    (x, ids.iter().map(|&i| data.labels[i]).collect())
}

/// The batches of one epoch.
pub struct Batches {
    rx: Receiver<(Vec<f32>, Vec<i64>)>,
    device: Device,
    shape: Vec<usize>,
}

impl Iterator for Batches {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        let (x, y) = self.rx.recv().ok()?;
        let mut shape = vec![y.len()];
        shape.extend_from_slice(&self.shape);
        let n = y.len();
        Some(
            Tensor::from_vec(x, &shape, &self.device).and_then(|inputs| {
                Ok(Batch {
                    inputs,
                    labels: Tensor::from_vec(y, &[n], &self.device)?,
                })
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_mnist_has_its_documented_counts() {
        let s = load("mnist-10k").unwrap();
        assert_eq!((s.train.len(), s.test.len()), (8000, 2000));
        assert_eq!(s.train.example_shape, vec![1, 28, 28]);
        let mean =
            s.train.inputs.iter().map(|&v| v as f64).sum::<f64>() / s.train.inputs.len() as f64;
        assert!((mean - 0.1311).abs() < 1e-3, "{mean}");
        let ones = s.test.labels.iter().filter(|&&l| l == 1).count();
        assert_eq!(ones, 225);
        let m = load("mnist1d").unwrap();
        assert_eq!(
            (m.train.len(), m.test.len(), m.train.example_shape.clone()),
            (4000, 1000, vec![40])
        );
    }

    #[test]
    fn bad_idx_files_are_errors_naming_the_file() {
        let p = Path::new("x.idx");
        assert!(parse_idx(p, &[1, 2, 3, 4])
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut hdr = vec![0, 0, 8, 1, 0, 0, 0, 5, 1, 2];
        assert!(parse_idx(p, &hdr)
            .unwrap_err()
            .to_string()
            .contains("need 5 bytes"));
        hdr.extend([3, 4, 5]);
        assert_eq!(parse_idx(p, &hdr).unwrap().0, vec![5]);
        let e = idx_dataset(
            (
                PathBuf::from("img"),
                vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1, 7, 9],
            ),
            (PathBuf::from("lab"), vec![0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("lab") && e.contains("3 labels for 2 images"),
            "{e}"
        );
        assert!(parse_idx(p, &[0x1f, 0x8b, 0, 0])
            .unwrap_err()
            .to_string()
            .contains("gzip"));
    }

    #[test]
    fn flips_mirror_rows_and_crops_shift_with_zero_fill() {
        let img: Vec<f32> = (1..=6).map(|v| v as f32).collect(); // 1×2×3
        let data = Arc::new(Dataset {
            inputs: img.clone(),
            example_shape: vec![1, 2, 3],
            labels: vec![0],
            classes: 1,
        });
        let dev = tessera_cpu::cpu();
        let flip = LoaderOptions {
            augment: Augment {
                crop_padding: 0,
                hflip: true,
            },
            ..LoaderOptions::new(1, 3)
        };
        let l = DataLoader::new(data.clone(), flip).unwrap();
        let seen: std::collections::BTreeSet<Vec<i64>> = (0..20)
            .map(|e| {
                l.epoch(e, &dev)
                    .next()
                    .unwrap()
                    .unwrap()
                    .inputs
                    .to_vec::<f32>()
                    .unwrap()
                    .iter()
                    .map(|&v| v as i64)
                    .collect()
            })
            .collect();
        let want: std::collections::BTreeSet<Vec<i64>> =
            [vec![1, 2, 3, 4, 5, 6], vec![3, 2, 1, 6, 5, 4]]
                .into_iter()
                .collect();
        assert_eq!(seen, want);
        let crop = LoaderOptions {
            augment: Augment {
                crop_padding: 1,
                hflip: false,
            },
            ..LoaderOptions::new(1, 3)
        };
        let l = DataLoader::new(data, crop).unwrap();
        for e in 0..20 {
            let v = l
                .epoch(e, &dev)
                .next()
                .unwrap()
                .unwrap()
                .inputs
                .to_vec::<f32>()
                .unwrap();
            // A shift by at most one pixel: every value is 0 (padding) or an original pixel.
            assert!(v.iter().all(|x| *x == 0.0 || img.contains(x)), "{v:?}");
            assert!(v.iter().filter(|x| **x != 0.0).count() >= 2);
        }
    }

    #[test]
    fn loader_shuffles_reproducibly_and_batches_everything() {
        let data = Arc::new(Dataset {
            inputs: (0..10).map(|v| v as f32).collect(),
            example_shape: vec![1],
            labels: (0..10).collect(),
            classes: 10,
        });
        let l = DataLoader::new(data.clone(), LoaderOptions::new(4, 7)).unwrap();
        assert_eq!(l.order(0), l.order(0));
        assert_ne!(l.order(0), l.order(1));
        let mut sorted = l.order(3);
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let dev = tessera_cpu::cpu();
        let batches: Vec<Batch> = l.epoch(0, &dev).collect::<Result<_>>().unwrap();
        assert_eq!(
            batches.iter().map(|b| b.labels.numel()).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let drop = DataLoader::new(
            data,
            LoaderOptions {
                drop_last: true,
                ..LoaderOptions::new(4, 7)
            },
        )
        .unwrap();
        assert_eq!(drop.epoch(0, &dev).count(), 2);
    }
}
