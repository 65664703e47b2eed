//! Runs the PyTorch-generated conformance vectors (`tessera-conformance/1`, see
//! `tests/conformance/FORMAT.md`): every case's outputs and input gradients are compared with
//! `|got - want| <= atol + rtol·|want|`.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use tessera_core::{DType, Device, Error, HostData, Result, Tensor};

/// The worst disagreement found in one compared tensor.
#[derive(Debug, Clone)]
pub struct Failure {
    pub case: String,
    /// Output name, or `grad:<input>`.
    pub tensor: String,
    pub max_abs: f64,
    pub max_rel: f64,
    /// Set when the case could not be compared at all (an error, a shape mismatch).
    pub message: Option<String>,
}

/// Totals over a directory of case files.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub failures: Vec<Failure>,
    /// Ops without an implementation yet (their cases are skipped).
    pub skipped_ops: Vec<String>,
    /// Per op: (passed, failed, skipped).
    pub by_op: std::collections::BTreeMap<String, (usize, usize, usize)>,
}

impl Report {
    /// `N passed, M failed, K skipped`.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }

    /// One line per failing tensor.
    pub fn failure_lines(&self) -> Vec<String> {
        self.failures
            .iter()
            .map(|f| match &f.message {
                Some(m) => format!("FAIL {} {}: {}", f.case, f.tensor, m),
                None => format!(
                    "FAIL {} {}: max abs err {:.3e}, max rel err {:.3e}",
                    f.case, f.tensor, f.max_abs, f.max_rel
                ),
            })
            .collect()
    }
}

fn bad(path: &str, msg: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.to_string(),
        msg: msg.into(),
    }
}

/// Runs every case of every `*.json` file in `dir` (sorted by name) on `device`.
pub fn run_dir(dir: &Path, device: &Device) -> Result<Report> {
    let io = |e| Error::Io {
        path: dir.display().to_string(),
        source: e,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(bad(&dir.display().to_string(), "no *.json case files"));
    }
    let mut report = Report::default();
    let mut skipped = BTreeSet::new();
    for f in files {
        run_file(&f, device, &mut report, &mut skipped)?;
    }
    report.skipped_ops = skipped.into_iter().collect();
    Ok(report)
}

/// Runs every case of one file, adding to `report`.
pub fn run_file(
    path: &Path,
    device: &Device,
    report: &mut Report,
    skipped: &mut BTreeSet<String>,
) -> Result<()> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: p.clone(),
        source: e,
    })?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| bad(&p, format!("invalid JSON: {e}")))?;
    if doc["format"] != "tessera-conformance/1" {
        return Err(bad(&p, "not a tessera-conformance/1 file"));
    }
    let cases = doc["cases"]
        .as_array()
        .ok_or_else(|| bad(&p, "no cases list"))?;
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?").to_string();
        let op = case["op"].as_str().unwrap_or("?").to_string();
        let entry = report.by_op.entry(op.clone()).or_default();
        match run_case(case, device) {
            Ok(None) => {
                report.skipped += 1;
                entry.2 += 1;
                skipped.insert(op);
            }
            Ok(Some(fails)) if fails.is_empty() => {
                report.passed += 1;
                entry.0 += 1;
            }
            Ok(Some(fails)) => {
                report.failed += 1;
                entry.1 += 1;
                report.failures.extend(fails.into_iter().map(|mut f| {
                    f.case = name.clone();
                    f
                }));
            }
            Err(e) => {
                report.failed += 1;
                entry.1 += 1;
                report.failures.push(Failure {
                    case: name.clone(),
                    tensor: "run".into(),
                    max_abs: f64::NAN,
                    max_rel: f64::NAN,
                    message: Some(e.to_string()),
                });
            }
        }
    }
    Ok(())
}

/// A tensor from its JSON form, parsing numbers straight into the tensor's dtype.
pub fn parse_tensor(v: &Value, device: &Device) -> Result<Tensor> {
    let dtype = v["dtype"]
        .as_str()
        .and_then(DType::parse)
        .ok_or_else(|| bad("case", "bad dtype"))?;
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .ok_or_else(|| bad("case", "bad shape"))?
        .iter()
        .map(|d| {
            d.as_u64()
                .map(|d| d as usize)
                .ok_or_else(|| bad("case", "bad dim"))
        })
        .collect::<Result<_>>()?;
    let data = v["data"]
        .as_array()
        .ok_or_else(|| bad("case", "bad data"))?;
    // serde_json keeps the decimal text (arbitrary_precision), so f32 values parse exactly.
    let text = |x: &Value| -> Result<String> {
        match x {
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(bad("case", "non-numeric data")),
        }
    };
    let host = match dtype {
        DType::F32 => HostData::F32(
            data.iter()
                .map(|x| {
                    text(x)?
                        .parse::<f32>()
                        .map_err(|e| bad("case", e.to_string()))
                })
                .collect::<Result<_>>()?,
        ),
        DType::F64 => HostData::F64(
            data.iter()
                .map(|x| {
                    text(x)?
                        .parse::<f64>()
                        .map_err(|e| bad("case", e.to_string()))
                })
                .collect::<Result<_>>()?,
        ),
        DType::I64 => HostData::I64(
            data.iter()
                .map(|x| {
                    text(x)?
                        .parse::<i64>()
                        .map_err(|e| bad("case", e.to_string()))
                })
                .collect::<Result<_>>()?,
        ),
    };
    Tensor::from_host(host, &shape, device)
}

fn int(attrs: &Value, key: &str) -> Result<isize> {
    attrs[key]
        .as_i64()
        .map(|v| v as isize)
        .ok_or_else(|| Error::invalid("conformance", format!("attr {key} missing")))
}

fn ints(attrs: &Value, key: &str) -> Result<Vec<isize>> {
    attrs[key]
        .as_array()
        .ok_or_else(|| Error::invalid("conformance", format!("attr {key} missing")))?
        .iter()
        .map(|v| {
            v.as_i64()
                .map(|v| v as isize)
                .ok_or_else(|| Error::invalid("conformance", format!("attr {key}: not an int")))
        })
        .collect()
}

fn float(attrs: &Value, key: &str) -> Result<f64> {
    attrs[key]
        .as_f64()
        .ok_or_else(|| Error::invalid("conformance", format!("attr {key} missing")))
}

fn boolean(attrs: &Value, key: &str) -> Result<bool> {
    attrs[key]
        .as_bool()
        .ok_or_else(|| Error::invalid("conformance", format!("attr {key} missing")))
}

fn arg(args: &[Tensor], i: usize) -> Result<&Tensor> {
    args.get(i)
        .ok_or_else(|| Error::invalid("conformance", format!("missing input {i}")))
}

/// Applies one op of the vocabulary to positional `args`. `Ok(None)`: not implemented yet.
pub fn apply(op: &str, attrs: &Value, args: &[Tensor]) -> Result<Option<Vec<Tensor>>> {
    let x = || arg(args, 0);
    let y = || arg(args, 1);
    let dims = || ints(attrs, "dims");
    let keep = || boolean(attrs, "keepdim");
    let out = match op {
        "neg" => x()?.neg()?,
        "abs" => x()?.abs()?,
        "exp" => x()?.exp()?,
        "log" => x()?.log()?,
        "sqrt" => x()?.sqrt()?,
        "tanh" => x()?.tanh()?,
        "sigmoid" => x()?.sigmoid()?,
        "relu" => x()?.relu()?,
        "leaky_relu" => x()?.leaky_relu(float(attrs, "negative_slope")?)?,
        "gelu" => x()?.gelu(attrs["approximate"] == "tanh")?,
        "softplus" => x()?.softplus(float(attrs, "beta")?, float(attrs, "threshold")?)?,
        "add" => x()?.add(y()?)?,
        "sub" => x()?.sub(y()?)?,
        "mul" => x()?.mul(y()?)?,
        "div" => x()?.div(y()?)?,
        "pow" => x()?.pow(y()?)?,
        "maximum" => x()?.maximum(y()?)?,
        "minimum" => x()?.minimum(y()?)?,
        "sum" => x()?.sum(&dims()?, keep()?)?,
        "mean" => x()?.mean(&dims()?, keep()?)?,
        "max" => x()?.amax(&dims()?, keep()?)?,
        "min" => x()?.amin(&dims()?, keep()?)?,
        "logsumexp" => x()?.logsumexp(&dims()?, keep()?)?,
        "var" => x()?.var(&dims()?, int(attrs, "correction")?.max(0) as usize, keep()?)?,
        "softmax" => x()?.softmax(int(attrs, "dim")?)?,
        "log_softmax" => x()?.log_softmax(int(attrs, "dim")?)?,
        "matmul" => x()?.matmul(y()?)?,
        "linear" => x()?.linear(y()?, args.get(2))?,
        "reshape" => x()?.reshape(&ints(attrs, "shape")?)?,
        "permute" => x()?.permute(&dims()?)?,
        "transpose" => x()?.transpose(int(attrs, "dim0")?, int(attrs, "dim1")?)?,
        "slice" => {
            let step = int(attrs, "step")?;
            if step < 1 {
                return Err(Error::invalid("slice", "step must be at least 1"));
            }
            x()?.slice(
                int(attrs, "dim")?,
                int(attrs, "start")?,
                int(attrs, "end")?,
                step as usize,
            )?
        }
        "concat" => Tensor::concat(&args.iter().collect::<Vec<_>>(), int(attrs, "dim")?)?,
        "stack" => Tensor::stack(&args.iter().collect::<Vec<_>>(), int(attrs, "dim")?)?,
        "pad" => {
            let pads = ints(attrs, "pads")?;
            if pads.iter().any(|&p| p < 0) {
                return Err(Error::invalid("pad", "negative padding is not supported"));
            }
            x()?.pad(
                &pads.iter().map(|&p| p as usize).collect::<Vec<_>>(),
                float(attrs, "value")?,
            )?
        }
        "expand" => x()?.expand(&ints(attrs, "shape")?)?,
        "index_select" => x()?.index_select(int(attrs, "dim")?, y()?)?,
        "gather" => x()?.gather(int(attrs, "dim")?, y()?)?,
        _ => return Ok(None),
    };
    Ok(Some(vec![out]))
}

fn run_chain(attrs: &Value, inputs: &[(String, Tensor)]) -> Result<Option<Vec<Tensor>>> {
    let steps = attrs["steps"]
        .as_array()
        .ok_or_else(|| Error::invalid("chain", "no steps"))?;
    let mut prev: Option<Tensor> = None;
    for step in steps {
        let op = step["op"]
            .as_str()
            .ok_or_else(|| Error::invalid("chain", "step without op"))?;
        let args = step["args"]
            .as_array()
            .ok_or_else(|| Error::invalid("chain", "step without args"))?
            .iter()
            .map(|a| match a.as_str() {
                Some("$") => prev
                    .clone()
                    .ok_or_else(|| Error::invalid("chain", "$ in the first step")),
                Some(n) => inputs
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, t)| t.clone())
                    .ok_or_else(|| Error::invalid("chain", format!("no input named {n}"))),
                None => Err(Error::invalid("chain", "non-string arg")),
            })
            .collect::<Result<Vec<_>>>()?;
        match apply(op, &step["attrs"], &args)? {
            Some(mut outs) => prev = Some(outs.remove(0)),
            None => return Ok(None),
        }
    }
    Ok(prev.map(|p| vec![p]))
}

fn compare(
    tensor: &str,
    got: &Tensor,
    want: &Value,
    rtol: f64,
    atol: f64,
    device: &Device,
) -> Result<Option<Failure>> {
    let want = parse_tensor(want, device)?;
    let fail = |msg: String| Failure {
        case: String::new(),
        tensor: tensor.to_string(),
        max_abs: f64::NAN,
        max_rel: f64::NAN,
        message: Some(msg),
    };
    if got.dims() != want.dims() {
        return Ok(Some(fail(format!(
            "shape {} but PyTorch gives {}",
            got.shape(),
            want.shape()
        ))));
    }
    if got.dtype() != want.dtype() {
        return Ok(Some(fail(format!(
            "dtype {} but PyTorch gives {}",
            got.dtype(),
            want.dtype()
        ))));
    }
    let (g, w) = (got.to_vec_f64()?, want.to_vec_f64()?);
    let (mut max_abs, mut max_rel, mut ok) = (0.0f64, 0.0f64, true);
    for (&a, &b) in g.iter().zip(&w) {
        let err = (a - b).abs();
        if err.is_nan() || err > atol + rtol * b.abs() {
            ok = false;
        }
        let err = if err.is_nan() { f64::INFINITY } else { err };
        max_abs = max_abs.max(err);
        if b != 0.0 {
            max_rel = max_rel.max(err / b.abs());
        }
    }
    Ok((!ok).then(|| Failure {
        case: String::new(),
        tensor: tensor.to_string(),
        max_abs,
        max_rel,
        message: None,
    }))
}

/// Runs one case: `Ok(None)` when its op is not implemented, else the failures (empty = pass).
pub fn run_case(case: &Value, device: &Device) -> Result<Option<Vec<Failure>>> {
    let op = case["op"].as_str().ok_or_else(|| bad("case", "no op"))?;
    let attrs = &case["attrs"];
    let (rtol, atol) = (
        case["rtol"].as_f64().unwrap_or(1e-8),
        case["atol"].as_f64().unwrap_or(0.0),
    );
    let mut inputs = Vec::new();
    for inp in case["inputs"]
        .as_array()
        .ok_or_else(|| bad("case", "no inputs"))?
    {
        let t = parse_tensor(inp, device)?;
        let t = if t.dtype().is_float() {
            t.requires_grad_()?
        } else {
            t
        };
        inputs.push((inp["name"].as_str().unwrap_or("?").to_string(), t));
    }
    let args: Vec<Tensor> = inputs.iter().map(|(_, t)| t.clone()).collect();
    let outs = if op == "chain" {
        run_chain(attrs, &inputs)?
    } else {
        apply(op, attrs, &args)?
    };
    let Some(outs) = outs else { return Ok(None) };
    let want_outs = case["outputs"]
        .as_array()
        .ok_or_else(|| bad("case", "no outputs"))?;
    let mut failures = Vec::new();
    if want_outs.len() != outs.len() {
        return Err(Error::invalid(
            "conformance",
            format!("{} outputs, expected {}", outs.len(), want_outs.len()),
        ));
    }
    for (got, want) in outs.iter().zip(want_outs) {
        let n = want["name"].as_str().unwrap_or("y");
        failures.extend(compare(n, got, want, rtol, atol, device)?);
    }
    // s = Σ_k <out_k, grad_out_k>, then backward.
    let grad_outs = case["grad_outputs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut s: Option<Tensor> = None;
    for (got, g) in outs.iter().zip(grad_outs) {
        if !got.requires_grad() {
            continue;
        }
        let term = got.mul(&parse_tensor(g, device)?)?.sum_all()?;
        s = Some(match s {
            Some(acc) => acc.add(&term)?,
            None => term,
        });
    }
    let grads = match &s {
        Some(s) => Some(s.backward()?),
        None => None,
    };
    for want in case["grads"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let name = want["input"].as_str().unwrap_or("?");
        let (_, x) = inputs
            .iter()
            .find(|(k, _)| k == name)
            .ok_or_else(|| bad("case", format!("grad for unknown input {name}")))?;
        let g = match grads.as_ref().and_then(|g| g.get(x)) {
            Some(g) => g.clone(),
            None => x.detach().zeros_like()?,
        };
        failures.extend(compare(
            &format!("grad:{name}"),
            &g,
            want,
            rtol,
            atol,
            device,
        )?);
    }
    Ok(Some(failures))
}
