//! The tape: reverse-mode autodiff by recording ops in execution order.
//!
//! Each op whose input requires grad appends a [`Node`]: the output's id, the inputs' ids and a
//! backward rule. Entries are in execution order, so walking them in reverse visits every
//! output before the ops that produced its inputs; no topological sort is needed.
//!
//! Backward rules are closures over the op's *inputs* written with ordinary tensor ops. Without
//! `create_graph` they run under `no_grad` and each node is dropped (freeing what it saved) as
//! soon as it has run. With `create_graph` their ops are recorded again, which is how gradients
//! of gradients work, and the nodes are kept for the next backward.

use crate::error::{Error, Result};
use crate::tensor::{GradKind, Inner, Tensor, TensorId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// A backward rule: given the gradient of the output and which inputs need one, the gradient
/// of each input (`None` where not needed).
pub type BackwardFn = dyn Fn(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>>;

struct Node {
    op: &'static str,
    output: TensorId,
    /// Lets garbage collection see that nobody holds the output any more.
    output_handle: Weak<Inner>,
    inputs: Vec<(TensorId, GradKind)>,
    backward: Box<BackwardFn>,
}

struct Tape {
    nodes: Vec<Node>,
    /// Length above which the next record collects nodes nobody can reach.
    gc_at: usize,
}

const GC_MIN: usize = 1 << 14;

thread_local! {
    static TAPE: RefCell<Tape> = const { RefCell::new(Tape { nodes: Vec::new(), gc_at: GC_MIN }) };
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops are being recorded on this thread.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Restores the previous grad mode when dropped.
pub struct GradModeGuard(bool);

impl GradModeGuard {
    /// Sets grad mode until the guard is dropped.
    pub fn set(enabled: bool) -> GradModeGuard {
        GradModeGuard(GRAD_ENABLED.with(|g| g.replace(enabled)))
    }
}

impl Drop for GradModeGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.0));
    }
}

/// Runs `f` without recording anything on the tape (inference, optimizer updates).
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    let _guard = GradModeGuard::set(false);
    f()
}

/// Number of nodes on this thread's tape (for tests and debugging).
pub fn tape_len() -> usize {
    TAPE.with(|t| t.borrow().nodes.len())
}

/// Drops every node of this thread's tape.
pub fn clear_tape() {
    TAPE.with(|t| t.borrow_mut().nodes.clear());
}

/// Drops the nodes no live tensor can reach: a forward pass whose result was thrown away
/// without backward (say, evaluation without `no_grad`) must not grow the tape forever.
fn collect_garbage(nodes: &mut Vec<Node>) {
    let mut needed = std::collections::HashSet::new();
    let mut keep = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate().rev() {
        if n.output_handle.strong_count() > 0 || needed.contains(&n.output) {
            keep[i] = true;
            needed.extend(n.inputs.iter().map(|(id, _)| *id));
        }
    }
    let mut i = 0;
    nodes.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

impl Tensor {
    /// Records this op output on the tape with its backward rule, if grad mode is on and some
    /// input requires grad; returns the output (now tracked). This is how every op in tessera
    /// gets its gradient, and how users add ops of their own.
    ///
    /// `backward(g, needs)` returns one entry per input: the gradient with the input's shape,
    /// or `None` where `needs` is false (or the input is not differentiable).
    pub fn record_op(
        self,
        op: &'static str,
        inputs: &[&Tensor],
        backward: impl Fn(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Tensor {
        if !is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
            return self;
        }
        let mut out = self;
        match Arc::get_mut(&mut out.0) {
            Some(inner) => inner.kind = GradKind::Node,
            // Shared handle (an op returned an existing tensor): track a fresh alias instead.
            None => {
                out = Tensor(Arc::new(Inner {
                    kind: GradKind::Node,
                    ..clone_inner(&out)
                }))
            }
        }
        let node = Node {
            op,
            output: out.id(),
            output_handle: Arc::downgrade(&out.0),
            inputs: inputs.iter().map(|t| (t.id(), t.kind())).collect(),
            backward: Box::new(backward),
        };
        TAPE.with(|t| {
            let mut tape = t.borrow_mut();
            tape.nodes.push(node);
            if tape.nodes.len() >= tape.gc_at {
                collect_garbage(&mut tape.nodes);
                tape.gc_at = (tape.nodes.len() * 2).max(GC_MIN);
            }
        });
        out
    }

    /// Gradients of this one-element tensor with respect to every variable it depends on.
    pub fn backward(&self) -> Result<Gradients> {
        if self.numel() != 1 {
            return Err(Error::Autograd {
                op: "backward",
                msg: format!(
                    "backward() needs a one-element output, got shape {}; use backward_with(grad_output)",
                    self.shape()
                ),
            });
        }
        let seed = crate::no_grad(|| self.ones_like())?;
        self.backward_opts(&seed, false)
    }

    /// The vector-Jacobian product: gradients of `sum(self * grad_output)`.
    pub fn backward_with(&self, grad_output: &Tensor) -> Result<Gradients> {
        self.backward_opts(grad_output, false)
    }

    /// Backward with `create_graph`: the backward pass is itself recorded, so the returned
    /// gradients can be differentiated again (Hessian-vector products, gradient penalties).
    pub fn backward_create_graph(&self, grad_output: &Tensor) -> Result<Gradients> {
        self.backward_opts(grad_output, true)
    }

    /// Backward from `grad_output`; see [`Tensor::backward_with`] and
    /// [`Tensor::backward_create_graph`].
    pub fn backward_opts(&self, grad_output: &Tensor, create_graph: bool) -> Result<Gradients> {
        if !self.requires_grad() {
            return Err(Error::Autograd {
                op: "backward",
                msg: "the tensor does not require grad: no input of the ops that made it is a \
                      variable (requires_grad_), or it was computed under no_grad"
                    .into(),
            });
        }
        if grad_output.dims() != self.dims() || grad_output.dtype() != self.dtype() {
            return Err(Error::shape(
                "backward",
                format!(
                    "grad_output must match the output's shape and dtype ({} vs {})",
                    grad_output.dtype(),
                    self.dtype()
                ),
                grad_output.dims(),
                self.dims(),
            ));
        }
        let mut result = Gradients::default();
        if self.kind() == GradKind::Leaf {
            result.map.insert(self.id(), grad_output.clone());
            return Ok(result);
        }
        let nodes = TAPE.with(|t| std::mem::take(&mut t.borrow_mut().nodes));
        let _mode = crate::tape::GradModeGuard::set(create_graph);
        let mut pending: HashMap<TensorId, Tensor> = HashMap::new();
        pending.insert(self.id(), grad_output.clone());
        let mut kept: Vec<Node> = Vec::new();
        let mut failure = None;
        let mut iter = nodes.into_iter().rev();
        for node in iter.by_ref() {
            let Some(g) = pending.remove(&node.output) else {
                kept.push(node);
                continue;
            };
            if let Err(e) = run_node(&node, &g, &mut pending, &mut result) {
                failure = Some(e);
                kept.push(node);
                break;
            }
            if create_graph {
                kept.push(node);
            }
        }
        kept.extend(iter);
        kept.reverse();
        TAPE.with(|t| {
            let mut tape = t.borrow_mut();
            // Nodes recorded during this backward come after the ones they depend on.
            let recorded = std::mem::replace(&mut tape.nodes, kept);
            tape.nodes.extend(recorded);
        });
        if let Some(e) = failure {
            return Err(e);
        }
        if !pending.is_empty() {
            return Err(Error::Autograd {
                op: "backward",
                msg: "part of the graph was already freed by an earlier backward (or recorded \
                      on another thread); use backward_create_graph to keep it"
                    .into(),
            });
        }
        Ok(result)
    }
}

fn clone_inner(t: &Tensor) -> Inner {
    Inner {
        id: t.0.id,
        buf: t.0.buf.clone(),
        layout: t.0.layout.clone(),
        device: t.0.device.clone(),
        kind: t.0.kind,
    }
}

fn run_node(
    node: &Node,
    g: &Tensor,
    pending: &mut HashMap<TensorId, Tensor>,
    result: &mut Gradients,
) -> Result<()> {
    let needs: Vec<bool> = node
        .inputs
        .iter()
        .map(|(_, k)| *k != GradKind::None)
        .collect();
    let grads = (node.backward)(g, &needs)?;
    if grads.len() != node.inputs.len() {
        return Err(Error::Autograd {
            op: node.op,
            msg: format!(
                "backward rule returned {} gradients for {} inputs",
                grads.len(),
                node.inputs.len()
            ),
        });
    }
    for ((id, kind), gi) in node.inputs.iter().zip(grads) {
        let Some(gi) = gi else { continue };
        let map = match kind {
            GradKind::None => continue,
            GradKind::Leaf => &mut result.map,
            GradKind::Node => &mut *pending,
        };
        let acc = match map.remove(id) {
            Some(prev) => prev.add(&gi)?,
            None => gi,
        };
        map.insert(*id, acc);
    }
    Ok(())
}

/// Gradients returned by backward, keyed by variable.
#[derive(Default, Debug, Clone)]
pub struct Gradients {
    map: HashMap<TensorId, Tensor>,
}

impl Gradients {
    /// The gradient with respect to `t` (a variable), if `t` took part in the graph.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }
    /// The gradient of `t`, or an error saying that `t` (its shape) got none: it does not
    /// require grad, or the loss does not depend on it.
    pub fn of(&self, t: &Tensor) -> Result<&Tensor> {
        self.get(t).ok_or_else(|| {
            Error::invalid(
                "gradient",
                format!(
                    "the tensor of shape {} got no gradient: it does not require grad \
                     (requires_grad_), or the loss does not depend on it",
                    t.shape()
                ),
            )
        })
    }

    /// The gradient with respect to `t`, or zeros of its shape if it did not take part.
    pub fn get_or_zeros(&self, t: &Tensor) -> Result<Tensor> {
        match self.get(t) {
            Some(g) => Ok(g.clone()),
            None => t.detach().zeros_like(),
        }
    }
    /// Sets the gradient with respect to `t` (e.g. after clipping).
    pub fn insert(&mut self, t: &Tensor, grad: Tensor) {
        self.map.insert(t.id(), grad);
    }
    /// Removes and returns the gradient with respect to `t`.
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id())
    }
    /// Number of variables with a gradient.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Whether no variable got a gradient.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
