//! The one error type of tessera. Every variant names the op that failed, so a message read
//! out of context still says where it came from.

use crate::dtype::DType;
use crate::layout::Shape;

/// Everything that can go wrong in tessera.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes that do not fit together; names both shapes.
    #[error("{op}: {msg} (lhs {lhs}, rhs {rhs})")]
    Shape {
        op: &'static str,
        msg: String,
        lhs: Shape,
        rhs: Shape,
    },
    /// A dtype the op does not accept, or operands of different dtypes.
    #[error("{op}: {msg}")]
    DType { op: &'static str, msg: String },
    /// Operands living on different devices.
    #[error("{op}: tensors on different devices ({lhs} and {rhs}); move one with to_device")]
    DeviceMismatch {
        op: &'static str,
        lhs: String,
        rhs: String,
    },
    /// An attribute out of range (a dim, a step, a size).
    #[error("{op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },
    /// An index tensor holding a value outside the indexed dimension.
    #[error("{op}: index {index} is out of range for dimension {dim} of size {size}")]
    IndexOutOfRange {
        op: &'static str,
        index: i64,
        dim: usize,
        size: usize,
    },
    /// Misuse of autodiff: backward on a tensor that does not require grad, a graph already freed.
    #[error("{op}: {msg}")]
    Autograd { op: &'static str, msg: String },
    /// A device that cannot be used (unknown name, no driver, out of memory).
    #[error("{device}: {msg}")]
    Device { device: String, msg: String },
    /// An allocation the device could not make (the request, not a crash).
    #[error("{device}: out of memory: {op} asked for {bytes} bytes")]
    OutOfMemory {
        op: &'static str,
        device: String,
        bytes: usize,
    },
    /// An error reported by a backend's own library (cuBLAS, NVRTC, ...).
    #[error("{device}: {source}")]
    Backend {
        device: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file whose contents are not what they claim to be.
    #[error("{path}: {msg}")]
    BadFile { path: String, msg: String },
    /// A NaN or infinity where a finite value is required (e.g. a training loss).
    #[error("{op}: non-finite value {value} at step {step}")]
    NonFinite {
        op: &'static str,
        step: usize,
        value: f64,
    },
}

/// `Result` with tessera's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Shape`] for `op`, naming both shapes.
    pub fn shape(op: &'static str, msg: impl Into<String>, lhs: &[usize], rhs: &[usize]) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
            lhs: Shape::from(lhs),
            rhs: Shape::from(rhs),
        }
    }

    /// An [`Error::InvalidArgument`] for `op`.
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }

    pub(crate) fn dtype(op: &'static str, msg: impl Into<String>) -> Self {
        Error::DType {
            op,
            msg: msg.into(),
        }
    }

    /// Checks that `got` is `want`, naming the op otherwise.
    pub fn expect_dtype(op: &'static str, got: DType, want: DType) -> Result<()> {
        if got == want {
            Ok(())
        } else {
            Err(Error::dtype(
                op,
                format!("expected dtype {want}, got {got}"),
            ))
        }
    }
}
