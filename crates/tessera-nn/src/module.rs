//! Parameters and the `Module` trait.

use crate::summary::Trace;
use crate::{Activation, Conv2d, Linear};
use std::any::Any;
use std::sync::{Arc, RwLock};
use tessera_core::{Error, Result, Tensor};

#[derive(Debug)]
struct ParamState {
    value: Tensor,
    trainable: bool,
}

/// A named slot holding a tensor that layers read in `forward` and optimizers replace after
/// each step. Clones share the slot.
#[derive(Clone, Debug)]
pub struct Parameter(Arc<RwLock<ParamState>>);

impl Parameter {
    /// A trainable parameter (a variable on the tape).
    pub fn new(value: Tensor) -> Result<Parameter> {
        let value = value.detach().requires_grad_()?;
        Ok(Parameter(Arc::new(RwLock::new(ParamState {
            value,
            trainable: true,
        }))))
    }

    /// A buffer: state saved with the model but not trained (running statistics).
    pub fn buffer(value: Tensor) -> Parameter {
        Parameter(Arc::new(RwLock::new(ParamState {
            value: value.detach(),
            trainable: false,
        })))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ParamState> {
        // A poisoned lock only means a panic elsewhere; the tensor inside is still whole.
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ParamState> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The current value (the handle whose gradient backward returns).
    pub fn tensor(&self) -> Tensor {
        self.read().value.clone()
    }

    /// Dimension sizes.
    pub fn dims(&self) -> Vec<usize> {
        self.read().value.dims().to_vec()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.read().value.numel()
    }

    /// Whether optimizers update it (false for buffers and frozen parameters).
    pub fn is_trainable(&self) -> bool {
        self.read().trainable
    }

    /// Stops (or resumes) training this parameter: it no longer takes gradients.
    pub fn set_trainable(&self, trainable: bool) -> Result<()> {
        let mut s = self.write();
        s.value = if trainable {
            s.value.detach().requires_grad_()?
        } else {
            s.value.detach()
        };
        s.trainable = trainable;
        Ok(())
    }

    /// Replaces the value; the shape and dtype must stay the same.
    pub fn set(&self, value: Tensor) -> Result<()> {
        let mut s = self.write();
        if value.dims() != s.value.dims() || value.dtype() != s.value.dtype() {
            return Err(Error::shape(
                "Parameter::set",
                format!(
                    "new value must keep dtype {} (got {})",
                    s.value.dtype(),
                    value.dtype()
                ),
                value.dims(),
                s.value.dims(),
            ));
        }
        let value = value.to_device(s.value.device())?.detach();
        s.value = if s.trainable {
            value.requires_grad_()?
        } else {
            value
        };
        Ok(())
    }
}

impl Parameter {
    /// `value ← beta·value + alpha·rhs` (the optimizers' updates), in the value's own buffer
    /// when no other handle reaches it (see [`Tensor::scale_add_`]); the value keeps its shape,
    /// dtype and whether it trains. Run it under `no_grad`.
    pub fn scale_add_(&self, beta: f64, rhs: &Tensor, alpha: f64) -> Result<()> {
        self.write().value.scale_add_(beta, rhs, alpha)
    }
}

/// Named parameters, in a stable order.
pub type Named = Vec<(String, Parameter)>;

/// Prefixes a child's names: `conv1` + `weight` → `conv1.weight`.
pub fn prefixed(prefix: &str, named: Named) -> Named {
    named
        .into_iter()
        .map(|(n, p)| (format!("{prefix}.{n}"), p))
        .collect()
}

/// A building block's structure: its parameters with PyTorch's names, and its training mode.
/// Usually derived: `#[derive(Module)]` names every field's parameters after the field
/// (`block.conv1.weight`, `layers.0.weight`) and passes train/eval on to them. The forward pass
/// is a method of the block's own, with whatever inputs it takes (query, key, value and a mask
/// are as good as one tensor); a block with one tensor in and one out also implements
/// [`Forward`], which is what [`Sequential`], summaries and the training loop call.
///
/// ```
/// use tessera_core::{Result, Tensor};
/// use tessera_nn::{Forward, Linear, Module};
///
/// /// A custom architecture: a residual MLP block.
/// #[derive(Module)]
/// struct Residual {
///     fc1: Linear,
///     fc2: Linear,
/// }
///
/// impl Forward for Residual {
///     fn forward(&self, x: &Tensor) -> Result<Tensor> {
///         let h = self.fc1.forward(x)?.relu()?;
///         self.fc2.forward(&h)?.add(x)
///     }
/// }
/// ```
pub trait Module {
    /// Parameters and buffers with PyTorch's `state_dict` names, in a stable order.
    fn named_parameters(&self) -> Named;

    /// Switches training behaviour (dropout, batch statistics) on or off.
    fn set_training(&mut self, _training: bool) {}

    /// Training mode.
    fn train(&mut self) {
        self.set_training(true)
    }

    /// Evaluation mode.
    fn eval(&mut self) {
        self.set_training(false)
    }

    /// The layer's kind, shown in summaries.
    fn kind(&self) -> String {
        "Module".into()
    }

    /// Parameters that count in a summary (a masked layer counts only its live connections).
    fn summary_params(&self) -> usize {
        self.num_parameters()
    }

    /// The trainable parameters.
    fn parameters(&self) -> Vec<Parameter> {
        self.named_parameters()
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| p.is_trainable())
            .collect()
    }

    /// Number of trainable parameter elements.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|p| p.numel()).sum()
    }
}

/// A module with one tensor in and one tensor out (layers, whole classifiers): what
/// [`Sequential`], [`crate::summary()`] and the training loop run.
pub trait Forward: Module {
    /// The output for input `x`.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Connections (multiply-adds, bias included) of one forward pass per example, for
    /// summaries; 0 for layers that only move data.
    fn connections(&self, _x: &Tensor, _y: &Tensor) -> u64 {
        0
    }

    /// Whether summaries list this module's children instead of the module itself.
    fn is_container(&self) -> bool {
        false
    }

    /// Runs the forward pass through `trace`, so each child gets a summary row. Containers
    /// implement it (and `forward` as `self.trace(x, &mut Trace::off())`); leaves keep this.
    fn trace(&self, x: &Tensor, _trace: &mut Trace) -> Result<Tensor> {
        self.forward(x)
    }
}

/// A field of a module that `#[derive(Module)]` visits: a child module, a [`Parameter`], or a
/// `Vec` / `Option` / `Box` of those. Its parameters are named under the field's name.
pub trait ModuleField {
    /// Appends this field's parameters to `out`, named under `name` (`name.weight`,
    /// `name.0.weight`; a parameter field is named `name` itself).
    fn collect_named(&self, name: &str, out: &mut Named);
    /// Passes the training mode on.
    fn set_field_training(&mut self, training: bool);
}

impl<M: Module + ?Sized> ModuleField for M {
    fn collect_named(&self, name: &str, out: &mut Named) {
        out.extend(prefixed(name, self.named_parameters()));
    }
    fn set_field_training(&mut self, training: bool) {
        self.set_training(training)
    }
}

impl ModuleField for Parameter {
    fn collect_named(&self, name: &str, out: &mut Named) {
        out.push((name.to_string(), self.clone()));
    }
    fn set_field_training(&mut self, _training: bool) {}
}

impl<T: ModuleField> ModuleField for Vec<T> {
    fn collect_named(&self, name: &str, out: &mut Named) {
        for (i, t) in self.iter().enumerate() {
            t.collect_named(&format!("{name}.{i}"), out);
        }
    }
    fn set_field_training(&mut self, training: bool) {
        self.iter_mut().for_each(|t| t.set_field_training(training));
    }
}

impl<T: ModuleField> ModuleField for Option<T> {
    fn collect_named(&self, name: &str, out: &mut Named) {
        if let Some(t) = self {
            t.collect_named(name, out);
        }
    }
    fn set_field_training(&mut self, training: bool) {
        if let Some(t) = self {
            t.set_field_training(training);
        }
    }
}

impl<M: Module + ?Sized> Module for Box<M> {
    fn named_parameters(&self) -> Named {
        (**self).named_parameters()
    }
    fn set_training(&mut self, training: bool) {
        (**self).set_training(training)
    }
    fn kind(&self) -> String {
        (**self).kind()
    }
    fn summary_params(&self) -> usize {
        (**self).summary_params()
    }
}

impl<M: Forward + ?Sized> Forward for Box<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (**self).forward(x)
    }
    fn connections(&self, x: &Tensor, y: &Tensor) -> u64 {
        (**self).connections(x, y)
    }
    fn is_container(&self) -> bool {
        (**self).is_container()
    }
    fn trace(&self, x: &Tensor, t: &mut Trace) -> Result<Tensor> {
        (**self).trace(x, t)
    }
}

/// Layers applied one after another; children are named `0`, `1`, ... as in PyTorch.
///
/// A [`Linear`] or [`Conv2d`] followed by [`Activation::Relu`] runs as one fused layer (the
/// bias or the convolution's last pass applies the ReLU), with the same parameters, names and
/// results; summaries still list both layers.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Forward>>,
    /// Per layer: the same layer with its ReLU fused (sharing its parameters), where it is a
    /// `Linear` or `Conv2d`.
    with_relu: Vec<Option<Box<dyn Forward>>>,
    /// Per layer: whether it is exactly a ReLU.
    is_relu: Vec<bool>,
}

impl Sequential {
    /// An empty stack.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a layer.
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: impl Forward + 'static) -> Self {
        let any: &dyn Any = &layer;
        let fused: Option<Box<dyn Forward>> = if let Some(l) = any.downcast_ref::<Linear>() {
            Some(Box::new(l.clone().with_relu()))
        } else if let Some(c) = any.downcast_ref::<Conv2d>() {
            Some(Box::new(c.clone().with_relu()))
        } else {
            None
        };
        let relu = any.downcast_ref::<Activation>() == Some(&Activation::Relu);
        self.with_relu.push(fused);
        self.is_relu.push(relu);
        self.layers.push(Box::new(layer));
        self
    }
    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }
    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Module for Sequential {
    fn named_parameters(&self) -> Named {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| prefixed(&i.to_string(), l.named_parameters()))
            .collect()
    }
    fn set_training(&mut self, training: bool) {
        for l in &mut self.layers {
            l.set_training(training);
        }
    }
}

impl Forward for Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.trace(x, &mut Trace::off())
    }
    /// Runs the layers in order; a `Linear` or `Conv2d` followed by a ReLU runs as its fused
    /// twin, except when recording a summary, which lists every layer.
    fn trace(&self, x: &Tensor, t: &mut Trace) -> Result<Tensor> {
        let mut h = x.clone();
        let mut i = 0;
        while let Some(l) = self.layers.get(i) {
            let fused = self.with_relu[i].as_ref();
            match fused {
                Some(f) if self.is_relu.get(i + 1) == Some(&true) && !t.is_recording() => {
                    h = f.forward(&h)?;
                    i += 2;
                }
                _ => {
                    h = t.call(&i.to_string(), l.as_ref(), &h)?;
                    i += 1;
                }
            }
        }
        Ok(h)
    }
    fn is_container(&self) -> bool {
        true
    }
}
