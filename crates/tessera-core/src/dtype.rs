//! Element types. Every backend matches on `DType` at run time, so adding one does not change any
//! trait. The half types come from the `half` crate (re-exported as `tessera_core::half`).

use std::fmt;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    I64,
    /// IEEE 754 half precision (`half::f16`).
    F16,
    /// bfloat16 (`half::bf16`): f32's exponent range with 8 bits of mantissa.
    BF16,
    /// Booleans (one byte each): results of comparisons, masks, conditions. Never
    /// differentiated; arithmetic on them needs a cast (`to_dtype`), as in PyTorch.
    Bool,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::F16 | DType::BF16 => 2,
            DType::Bool => 1,
        }
    }

    /// Whether the dtype is a floating-point type (and so can carry gradients).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }

    /// Whether the dtype is f16 or bf16.
    pub fn is_half(self) -> bool {
        matches!(self, DType::F16 | DType::BF16)
    }

    /// The short name used in files and messages: `f32`, `f64`, `i64`, `f16`, `bf16`, `bool`.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Bool => "bool",
        }
    }

    /// Parses `f32`, `f64`, `i64`, `f16`, `bf16` or `bool`.
    pub fn parse(s: &str) -> Option<DType> {
        match s {
            "f32" => Some(DType::F32),
            "f64" => Some(DType::F64),
            "i64" => Some(DType::I64),
            "f16" => Some(DType::F16),
            "bf16" => Some(DType::BF16),
            "bool" => Some(DType::Bool),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Host-side data of one dtype, the currency of `upload` and `download`.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    F16(Vec<half::f16>),
    BF16(Vec<half::bf16>),
    Bool(Vec<bool>),
}

impl HostData {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            HostData::F32(_) => DType::F32,
            HostData::F64(_) => DType::F64,
            HostData::I64(_) => DType::I64,
            HostData::F16(_) => DType::F16,
            HostData::BF16(_) => DType::BF16,
            HostData::Bool(_) => DType::Bool,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F64(v) => v.len(),
            HostData::I64(v) => v.len(),
            HostData::F16(v) => v.len(),
            HostData::BF16(v) => v.len(),
            HostData::Bool(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements converted to f64 (i64 values beyond 2^53 lose precision).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            HostData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::F64(v) => v.clone(),
            HostData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            HostData::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            HostData::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        }
    }

    /// Builds host data of `dtype` from f64 values (rounded to nearest for the float types,
    /// truncated for i64, non-zero (NaN included) for bool, as PyTorch casts).
    pub fn from_f64(dtype: DType, v: &[f64]) -> HostData {
        match dtype {
            DType::F32 => HostData::F32(v.iter().map(|&x| x as f32).collect()),
            DType::F64 => HostData::F64(v.to_vec()),
            DType::I64 => HostData::I64(v.iter().map(|&x| x as i64).collect()),
            DType::F16 => HostData::F16(v.iter().map(|&x| half::f16::from_f64(x)).collect()),
            DType::BF16 => HostData::BF16(v.iter().map(|&x| half::bf16::from_f64(x)).collect()),
            DType::Bool => HostData::Bool(v.iter().map(|&x| x != 0.0).collect()),
        }
    }
}

/// A Rust element type that a tensor can hold.
pub trait Element: Copy + Send + Sync + fmt::Debug + 'static {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Wraps a vector as host data.
    fn into_host(v: Vec<Self>) -> HostData;
    /// Unwraps host data of this type, or gives it back.
    fn from_host(h: HostData) -> std::result::Result<Vec<Self>, HostData>;
}

macro_rules! element {
    ($t:ty, $d:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            fn into_host(v: Vec<Self>) -> HostData {
                HostData::$d(v)
            }
            fn from_host(h: HostData) -> std::result::Result<Vec<Self>, HostData> {
                match h {
                    HostData::$d(v) => Ok(v),
                    other => Err(other),
                }
            }
        }
    };
}
element!(f32, F32);
element!(f64, F64);
element!(i64, I64);
element!(half::f16, F16);
element!(half::bf16, BF16);
element!(bool, Bool);
