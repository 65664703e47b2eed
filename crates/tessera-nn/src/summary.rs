//! Model summaries: the per-layer table of the classic LeNet/AlexNet comparison — output
//! shape, units (output activations of layers with parameters), parameters and connections
//! (multiply-adds, bias included) per example — with totals.

use crate::module::Forward;
use std::fmt;
use tessera_core::{no_grad, Result, Tensor};

/// One layer's line.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryRow {
    pub name: String,
    pub kind: String,
    /// Output shape without the batch dim.
    pub output: Vec<usize>,
    pub units: usize,
    pub params: usize,
    pub connections: u64,
    /// Shown apart and left out of the totals (e.g. LeNet-5's output layer, which the paper's
    /// 60,000 parameters do not include).
    pub separate: bool,
}

/// Records summary rows while a model runs; [`Trace::off`] just runs it.
pub struct Trace {
    rows: Option<Vec<SummaryRow>>,
    prefix: Vec<String>,
}

impl Trace {
    /// Records nothing: plain forward passes.
    pub fn off() -> Trace {
        Trace {
            rows: None,
            prefix: vec![],
        }
    }

    /// Whether this trace records summary rows (else it only runs the forward pass).
    pub fn is_recording(&self) -> bool {
        self.rows.is_some()
    }

    /// Runs child `m` (named `name`) on `x`, recording its row (or its children's rows).
    pub fn call(&mut self, name: &str, m: &dyn Forward, x: &Tensor) -> Result<Tensor> {
        self.record(name, m, x, false)
    }

    /// Like [`Trace::call`], with the row shown apart from the totals.
    pub fn call_separate(&mut self, name: &str, m: &dyn Forward, x: &Tensor) -> Result<Tensor> {
        self.record(name, m, x, true)
    }

    fn record(
        &mut self,
        name: &str,
        m: &dyn Forward,
        x: &Tensor,
        separate: bool,
    ) -> Result<Tensor> {
        if !self.is_recording() {
            return m.forward(x);
        }
        self.prefix.push(name.to_string());
        let y = if m.is_container() {
            m.trace(x, self)
        } else {
            m.forward(x)
        };
        let full = self.prefix.join(".");
        self.prefix.pop();
        let y = y?;
        if !m.is_container() {
            let batch = y.dims().first().copied().unwrap_or(1).max(1);
            let params = m.summary_params();
            let row = SummaryRow {
                name: full,
                kind: m.kind(),
                output: y.dims().get(1..).unwrap_or(&[]).to_vec(),
                units: if params > 0 { y.numel() / batch } else { 0 },
                params,
                connections: m.connections(x, &y),
                separate,
            };
            if let Some(rows) = self.rows.as_mut() {
                rows.push(row);
            }
        }
        Ok(y)
    }
}

/// A model's table.
#[derive(Clone, Debug)]
pub struct Summary {
    pub rows: Vec<SummaryRow>,
}

impl Summary {
    fn counted(&self) -> impl Iterator<Item = &SummaryRow> {
        self.rows.iter().filter(|r| !r.separate)
    }
    /// Total units (rows shown apart excluded).
    pub fn units(&self) -> usize {
        self.counted().map(|r| r.units).sum()
    }
    /// Total parameters (rows shown apart excluded).
    pub fn params(&self) -> usize {
        self.counted().map(|r| r.params).sum()
    }
    /// Total connections (rows shown apart excluded).
    pub fn connections(&self) -> u64 {
        self.counted().map(|r| r.connections).sum()
    }
    /// The row named `name`.
    pub fn row(&self, name: &str) -> Option<&SummaryRow> {
        self.rows.iter().find(|r| r.name == name)
    }
}

/// Runs `model` once on `input` (no gradients) and returns its per-layer table.
pub fn summary(model: &dyn Forward, input: &Tensor) -> Result<Summary> {
    let mut t = Trace {
        rows: Some(vec![]),
        prefix: vec![],
    };
    no_grad(|| t.call("", model, input))?;
    let rows = t.rows.unwrap_or_default().into_iter().map(|mut r| {
        r.name = r.name.trim_start_matches('.').to_string();
        r
    });
    Ok(Summary {
        rows: rows.collect(),
    })
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |f: &mut fmt::Formatter<'_>, r: &SummaryRow| {
            writeln!(
                f,
                "{:<16} {:<18} {:<16} {:>10} {:>12} {:>15}",
                r.name,
                r.kind,
                format!("{:?}", r.output),
                thousands(r.units as u64),
                thousands(r.params as u64),
                thousands(r.connections)
            )
        };
        writeln!(
            f,
            "{:<16} {:<18} {:<16} {:>10} {:>12} {:>15}",
            "layer", "kind", "output", "units", "params", "connections"
        )?;
        for r in self.counted() {
            line(f, r)?;
        }
        if self.rows.iter().any(|r| r.separate) {
            writeln!(f, "counted separately:")?;
            for r in self.rows.iter().filter(|r| r.separate) {
                line(f, r)?;
            }
        }
        write!(
            f,
            "total: units={} params={} connections={}",
            self.units(),
            self.params(),
            self.connections()
        )
    }
}
