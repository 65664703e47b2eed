//! A device is a shared handle to a backend, chosen at run time.

use crate::backend::{Backend, FusedKernels};
use std::fmt;
use std::sync::Arc;

/// Where a tensor lives: a handle to one [`Backend`].
#[derive(Clone)]
pub struct Device {
    backend: Arc<dyn Backend>,
    name: Arc<str>,
}

impl Device {
    /// Wraps a backend. Any crate can do this, which is how third-party backends plug in.
    pub fn new(backend: Arc<dyn Backend>) -> Device {
        let name: Arc<str> = backend.name().into();
        Device { backend, name }
    }
    /// The backend that runs this device's kernels.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }
    /// The backend as a shared handle (to wrap it, as [`crate::backend::Composed`] does).
    pub fn backend_arc(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }
    /// The backend's fused kernels, if it has any ([`Backend::fused`]).
    pub fn fused(&self) -> Option<&dyn FusedKernels> {
        self.backend.fused()
    }
    /// The device's name, e.g. `cpu`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Devices are the same when their names are: two handles to `cuda:0` share memory even if
/// they were created separately.
impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Device({})", self.name)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}
