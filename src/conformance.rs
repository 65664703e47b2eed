//! Runs the PyTorch-generated conformance vectors (`tessera-conformance/1`, see
//! `tests/conformance/FORMAT.md`): every case's outputs and input gradients are compared with
//! `|got - want| <= atol + rtol·|want|`.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use tessera_core::{ops, DType, Device, Error, HostData, Result, Tensor};

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
    // A regular file of at most 1 GiB (a FIFO named *.json would be read forever).
    let bytes = tessera_nn::checkpoint::read_bounded(path, 1 << 30)?;
    let text = String::from_utf8(bytes).map_err(|e| bad(&p, format!("not UTF-8: {e}")))?;
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
    // serde_json keeps the decimal text (arbitrary_precision), so f32 values parse exactly;
    // infinities are the strings "inf" and "-inf" (FORMAT.md, section 3).
    let text = |x: &Value| -> Result<String> {
        match x {
            Value::Number(n) => Ok(n.to_string()),
            Value::String(s) if s == "inf" || s == "-inf" => Ok(s.clone()),
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
        // Half values: parsed as f64, rounded once to the half type.
        DType::F16 | DType::BF16 => HostData::from_f64(
            dtype,
            &data
                .iter()
                .map(|x| {
                    text(x)?
                        .parse::<f64>()
                        .map_err(|e| bad("case", e.to_string()))
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        DType::Bool => HostData::Bool(
            data.iter()
                .map(|x| x.as_bool().ok_or_else(|| bad("case", "non-boolean data")))
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
    match &attrs[key] {
        Value::String(s) if s == "inf" => Ok(f64::INFINITY),
        Value::String(s) if s == "-inf" => Ok(f64::NEG_INFINITY),
        v => v
            .as_f64()
            .ok_or_else(|| Error::invalid("conformance", format!("attr {key} missing"))),
    }
}

fn boolean(attrs: &Value, key: &str) -> Result<bool> {
    attrs[key]
        .as_bool()
        .ok_or_else(|| Error::invalid("conformance", format!("attr {key} missing")))
}

/// What an op produced: its outputs in order, and extra outputs by name (running statistics).
pub struct Produced {
    pub outputs: Vec<Tensor>,
    pub extra: Vec<(String, Tensor)>,
}

impl From<Tensor> for Produced {
    fn from(t: Tensor) -> Self {
        Produced {
            outputs: vec![t],
            extra: vec![],
        }
    }
}

/// A case's inputs: positional, and by name for optional ones.
pub struct Inputs<'a>(pub &'a [(String, Tensor)]);

impl Inputs<'_> {
    fn pos(&self, i: usize) -> Result<&Tensor> {
        self.0
            .get(i)
            .map(|(_, t)| t)
            .ok_or_else(|| Error::invalid("conformance", format!("missing input {i}")))
    }
    fn named(&self, name: &str) -> Option<&Tensor> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
    fn req(&self, name: &str) -> Result<&Tensor> {
        self.named(name)
            .ok_or_else(|| Error::invalid("conformance", format!("missing input {name}")))
    }
    fn all(&self) -> Vec<&Tensor> {
        self.0.iter().map(|(_, t)| t).collect()
    }
}

/// An int or a list of ints.
fn int_or_list(attrs: &Value, key: &str) -> Result<Vec<usize>> {
    match &attrs[key] {
        Value::Number(n) => n.as_u64().map(|v| vec![v as usize]),
        Value::Array(a) => a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect(),
        _ => None,
    }
    .ok_or_else(|| {
        Error::invalid(
            "conformance",
            format!("attr {key}: expected an int or a list of ints"),
        )
    })
}

fn conv_padding(attrs: &Value) -> Result<ops::conv::Padding> {
    use ops::conv::Padding;
    let bad = || Error::invalid("conformance", "bad conv padding");
    Ok(match &attrs["padding"] {
        Value::String(s) if s == "same" => Padding::Same,
        Value::String(s) if s == "valid" => Padding::Valid,
        Value::Number(n) => Padding::symmetric(n.as_u64().ok_or_else(bad)? as usize),
        Value::Array(a) if a.iter().all(Value::is_array) => Padding::Explicit(
            a.iter()
                .map(|p| match p.as_array().map(Vec::as_slice) {
                    Some([b, e]) => Ok((
                        b.as_u64().ok_or_else(bad)? as usize,
                        e.as_u64().ok_or_else(bad)? as usize,
                    )),
                    _ => Err(bad()),
                })
                .collect::<Result<_>>()?,
        ),
        Value::Array(a) => Padding::Explicit(
            a.iter()
                .map(|p| p.as_u64().map(|v| (v as usize, v as usize)).ok_or_else(bad))
                .collect::<Result<_>>()?,
        ),
        _ => return Err(bad()),
    })
}

fn conv_options(attrs: &Value) -> Result<ops::conv::ConvOptions> {
    Ok(ops::conv::ConvOptions {
        stride: int_or_list(attrs, "stride")?,
        padding: conv_padding(attrs)?,
        dilation: int_or_list(attrs, "dilation")?,
        groups: int(attrs, "groups")?.max(0) as usize,
    })
}

fn pool_options(attrs: &Value) -> Result<ops::pool::PoolOptions> {
    Ok(ops::pool::PoolOptions {
        kernel_size: int_or_list(attrs, "kernel_size")?,
        stride: Some(int_or_list(attrs, "stride")?),
        padding: int_or_list(attrs, "padding")?,
        dilation: if attrs["dilation"].is_null() {
            vec![1]
        } else {
            int_or_list(attrs, "dilation")?
        },
        ceil_mode: boolean(attrs, "ceil_mode")?,
        count_include_pad: attrs["count_include_pad"].as_bool().unwrap_or(true),
    })
}

fn reduction(attrs: &Value) -> Result<ops::loss::Reduction> {
    ops::loss::Reduction::parse(attrs["reduction"].as_str().unwrap_or(""))
}

fn recurrent(cell: ops::rnn::Cell, attrs: &Value, inp: &Inputs<'_>) -> Result<Produced> {
    let opts = ops::rnn::RnnOptions {
        hidden_size: int(attrs, "hidden_size")? as usize,
        num_layers: int(attrs, "num_layers")? as usize,
        bidirectional: boolean(attrs, "bidirectional")?,
        batch_first: boolean(attrs, "batch_first")?,
        bias: boolean(attrs, "bias")?,
    };
    let dirs = if opts.bidirectional { 2 } else { 1 };
    let mut suffixes = Vec::new();
    for l in 0..opts.num_layers {
        for d in 0..dirs {
            suffixes.push(format!("_l{l}{}", if d == 1 { "_reverse" } else { "" }));
        }
    }
    let weights = suffixes
        .iter()
        .map(|sfx| {
            Ok(ops::rnn::RnnWeights {
                w_ih: inp.req(&format!("weight_ih{sfx}"))?,
                w_hh: inp.req(&format!("weight_hh{sfx}"))?,
                b_ih: inp.named(&format!("bias_ih{sfx}")),
                b_hh: inp.named(&format!("bias_hh{sfx}")),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let out = ops::rnn::rnn(
        cell,
        inp.req("x")?,
        inp.req("h0")?,
        inp.named("c0"),
        &weights,
        &opts,
    )?;
    let mut outputs = vec![out.output, out.h_n];
    outputs.extend(out.c_n);
    Ok(Produced {
        outputs,
        extra: vec![],
    })
}

fn inception(inp: &Inputs<'_>) -> Result<Tensor> {
    use ops::conv::{conv2d, ConvOptions};
    let conv = |x: &Tensor, name: &str, pad: usize| -> Result<Tensor> {
        conv2d(
            x,
            inp.req(&format!("{name}.weight"))?,
            inp.named(&format!("{name}.bias")),
            &ConvOptions::new().padding(pad),
        )?
        .relu()
    };
    let x = inp.req("x")?;
    let b1 = conv(x, "b1", 0)?;
    let b3 = conv(&conv(x, "b3r", 0)?, "b3", 1)?;
    let b5 = conv(&conv(x, "b5r", 0)?, "b5", 2)?;
    let pooled = ops::pool::max_pool2d(x, &ops::pool::PoolOptions::new(3).stride(1).padding(1))?;
    let bp = conv(&pooled, "bp", 0)?;
    Tensor::concat(&[&b1, &b3, &b5, &bp], 1)
}

fn lenet5_loss(inp: &Inputs<'_>) -> Result<Produced> {
    use ops::conv::{conv2d, ConvOptions};
    use ops::pool::{max_pool2d, PoolOptions};
    let p = |n: &str| inp.req(n);
    let h = conv2d(
        inp.req("x")?,
        p("conv1.weight")?,
        Some(p("conv1.bias")?),
        &ConvOptions::new().padding(2),
    )?
    .relu()?;
    let h = max_pool2d(&h, &PoolOptions::new(2))?;
    let h = conv2d(
        &h,
        p("conv2.weight")?,
        Some(p("conv2.bias")?),
        &ConvOptions::new(),
    )?
    .relu()?;
    let h = max_pool2d(&h, &PoolOptions::new(2))?.flatten(1, -1)?;
    let h = h.linear(p("fc1.weight")?, Some(p("fc1.bias")?))?.relu()?;
    let h = h.linear(p("fc2.weight")?, Some(p("fc2.bias")?))?.relu()?;
    let logits = h.linear(p("fc3.weight")?, Some(p("fc3.bias")?))?;
    let loss = ops::loss::cross_entropy(&logits, inp.req("target")?)?;
    Ok(Produced {
        outputs: vec![logits, loss],
        extra: vec![],
    })
}

fn mha_weights<'a>(inp: &'a Inputs<'_>, prefix: &str) -> Result<ops::attention::MhaWeights<'a>> {
    let n = |k: &str| inp.named(&format!("{prefix}{k}"));
    Ok(ops::attention::MhaWeights {
        in_proj_weight: n("in_proj_weight"),
        q_proj_weight: n("q_proj_weight"),
        k_proj_weight: n("k_proj_weight"),
        v_proj_weight: n("v_proj_weight"),
        in_proj_bias: n("in_proj_bias"),
        out_proj_weight: inp.req(&format!("{prefix}out_proj.weight"))?,
        out_proj_bias: n("out_proj.bias"),
    })
}

fn multi_head_attention(attrs: &Value, inp: &Inputs<'_>) -> Result<Produced> {
    let query = inp.req("query")?;
    let (key, value) = if boolean(attrs, "self_attention")? {
        (query, query)
    } else {
        (inp.req("key")?, inp.req("value")?)
    };
    let o = ops::attention::MhaOptions {
        num_heads: int(attrs, "num_heads")?.max(0) as usize,
        batch_first: boolean(attrs, "batch_first")?,
        key_padding_mask: inp.named("key_padding_mask"),
        attn_mask: inp.named("attn_mask"),
        need_weights: boolean(attrs, "need_weights")?,
        average_attn_weights: boolean(attrs, "average_attn_weights")?,
        is_causal: boolean(attrs, "is_causal")?,
        dropout: None,
    };
    let (y, w) =
        ops::attention::multi_head_attention(query, key, value, &mha_weights(inp, "")?, &o)?;
    let mut outputs = vec![y];
    outputs.extend(w);
    Ok(Produced {
        outputs,
        extra: vec![],
    })
}

fn encoder_layer(attrs: &Value, inp: &Inputs<'_>) -> Result<Tensor> {
    use ops::attention::{EncoderLayerOptions, EncoderLayerWeights, FfActivation};
    let w = EncoderLayerWeights {
        self_attn: mha_weights(inp, "self_attn.")?,
        linear1_weight: inp.req("linear1.weight")?,
        linear1_bias: inp.named("linear1.bias"),
        linear2_weight: inp.req("linear2.weight")?,
        linear2_bias: inp.named("linear2.bias"),
        norm1_weight: inp.named("norm1.weight"),
        norm1_bias: inp.named("norm1.bias"),
        norm2_weight: inp.named("norm2.weight"),
        norm2_bias: inp.named("norm2.bias"),
    };
    let o = EncoderLayerOptions {
        nhead: int(attrs, "nhead")?.max(0) as usize,
        activation: match attrs["activation"].as_str() {
            Some("relu") => FfActivation::Relu,
            Some("gelu") => FfActivation::Gelu,
            a => {
                return Err(Error::invalid(
                    "transformer_encoder_layer",
                    format!("unknown activation {a:?}"),
                ))
            }
        },
        layer_norm_eps: float(attrs, "layer_norm_eps")?,
        batch_first: boolean(attrs, "batch_first")?,
        norm_first: boolean(attrs, "norm_first")?,
        src_mask: inp.named("src_mask"),
        src_key_padding_mask: inp.named("src_key_padding_mask"),
        is_causal: false,
    };
    ops::attention::transformer_encoder_layer(inp.req("src")?, &w, &o)
}

/// Applies one op of the vocabulary. `Ok(None)`: not implemented yet.
pub fn apply(op: &str, attrs: &Value, inp: &Inputs<'_>) -> Result<Option<Produced>> {
    let x = || inp.pos(0);
    let y = || inp.pos(1);
    let dims = || ints(attrs, "dims");
    let keep = || boolean(attrs, "keepdim");
    let out: Tensor = match op {
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
        "linear" => x()?.linear(y()?, inp.0.get(2).map(|(_, t)| t))?,
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
        "concat" => Tensor::concat(&inp.all(), int(attrs, "dim")?)?,
        "stack" => Tensor::stack(&inp.all(), int(attrs, "dim")?)?,
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
        "conv1d" => ops::conv::conv1d(x()?, y()?, inp.named("bias"), &conv_options(attrs)?)?,
        "conv2d" => ops::conv::conv2d(x()?, y()?, inp.named("bias"), &conv_options(attrs)?)?,
        "conv_transpose2d" => {
            let o = ops::conv::ConvTransposeOptions {
                stride: int_or_list(attrs, "stride")?,
                padding: int_or_list(attrs, "padding")?,
                output_padding: int_or_list(attrs, "output_padding")?,
                dilation: int_or_list(attrs, "dilation")?,
                groups: int(attrs, "groups")?.max(0) as usize,
            };
            ops::conv::conv_transpose2d(x()?, y()?, inp.named("bias"), &o)?
        }
        "max_pool1d" => ops::pool::max_pool1d(x()?, &pool_options(attrs)?)?,
        "max_pool2d" => ops::pool::max_pool2d(x()?, &pool_options(attrs)?)?,
        "avg_pool2d" => ops::pool::avg_pool2d(x()?, &pool_options(attrs)?)?,
        "adaptive_avg_pool2d" => {
            let o = int_or_list(attrs, "output_size")?;
            let [oh, ow] = o[..] else {
                return Err(Error::invalid(
                    "conformance",
                    "output_size needs two values",
                ));
            };
            ops::pool::adaptive_avg_pool2d(x()?, [oh, ow])?
        }
        "global_avg_pool2d" => ops::pool::global_avg_pool2d(x()?, keep()?)?,
        "batch_norm" => {
            let (y, stats) = ops::norm::batch_norm(
                x()?,
                inp.req("running_mean")?,
                inp.req("running_var")?,
                inp.named("weight"),
                inp.named("bias"),
                boolean(attrs, "training")?,
                float(attrs, "momentum")?,
                float(attrs, "eps")?,
            )?;
            let extra = stats
                .map(|(m, v)| {
                    vec![
                        ("running_mean".to_string(), m),
                        ("running_var".to_string(), v),
                    ]
                })
                .unwrap_or_default();
            return Ok(Some(Produced {
                outputs: vec![y],
                extra,
            }));
        }
        "layer_norm" => {
            let shape = int_or_list(attrs, "normalized_shape")?;
            ops::norm::layer_norm(
                x()?,
                &shape,
                inp.named("weight"),
                inp.named("bias"),
                float(attrs, "eps")?,
            )?
        }
        "dropout" => ops::norm::dropout_with_mask(x()?, inp.req("mask")?, float(attrs, "p")?)?,
        "embedding" => {
            let pad = attrs["padding_idx"].as_i64().map(|v| v as isize);
            ops::norm::embedding(inp.req("indices")?, inp.req("weight")?, pad)?
        }
        "lstm" => return recurrent(ops::rnn::Cell::Lstm, attrs, inp).map(Some),
        "gru" => return recurrent(ops::rnn::Cell::Gru, attrs, inp).map(Some),
        "cross_entropy" => ops::loss::CrossEntropy::new()
            .reduction(reduction(attrs)?)
            .label_smoothing(float(attrs, "label_smoothing")?)
            .ignore_index(int(attrs, "ignore_index")? as i64)
            .forward(inp.req("input")?, inp.req("target")?)?,
        "nll_loss" => ops::loss::NllLoss::new()
            .reduction(reduction(attrs)?)
            .ignore_index(int(attrs, "ignore_index")? as i64)
            .forward(inp.req("input")?, inp.req("target")?)?,
        "mse_loss" => ops::loss::MseLoss::new()
            .reduction(reduction(attrs)?)
            .forward(inp.req("input")?, inp.req("target")?)?,
        "binary_cross_entropy_with_logits" => ops::loss::BceWithLogits::new()
            .reduction(reduction(attrs)?)
            .forward(inp.req("input")?, inp.req("target")?)?,
        "inception_block" => inception(inp)?,
        "lenet5_loss" => return lenet5_loss(inp).map(Some),
        "eq" => x()?.eq(y()?)?,
        "ne" => x()?.ne(y()?)?,
        "lt" => x()?.lt(y()?)?,
        "le" => x()?.le(y()?)?,
        "gt" => x()?.gt(y()?)?,
        "ge" => x()?.ge(y()?)?,
        "logical_and" => x()?.logical_and(y()?)?,
        "logical_or" => x()?.logical_or(y()?)?,
        "logical_xor" => x()?.logical_xor(y()?)?,
        "logical_not" => x()?.logical_not()?,
        "where" => inp.req("cond")?.where_(inp.req("a")?, inp.req("b")?)?,
        "masked_fill" => inp
            .req("x")?
            .masked_fill(inp.req("mask")?, float(attrs, "value")?)?,
        "tril" => x()?.tril(int(attrs, "diagonal")? as i64)?,
        "triu" => x()?.triu(int(attrs, "diagonal")? as i64)?,
        "cumsum" => x()?.cumsum(int(attrs, "dim")?)?,
        "cumprod" => x()?.cumprod(int(attrs, "dim")?)?,
        "sort" => {
            let (v, i) = x()?.sort(int(attrs, "dim")?, boolean(attrs, "descending")?)?;
            return Ok(Some(Produced {
                outputs: vec![v, i],
                extra: vec![],
            }));
        }
        "argsort" => x()?.argsort(int(attrs, "dim")?, boolean(attrs, "descending")?)?,
        "topk" => {
            let k = int(attrs, "k")?;
            let k = usize::try_from(k).map_err(|_| Error::invalid("topk", "negative k"))?;
            let (v, i) = x()?.topk(k, int(attrs, "dim")?, boolean(attrs, "largest")?)?;
            return Ok(Some(Produced {
                outputs: vec![v, i],
                extra: vec![],
            }));
        }
        "any" => x()?.any(&dims()?, keep()?)?,
        "all" => x()?.all(&dims()?, keep()?)?,
        "flip" => x()?.flip(&dims()?)?,
        "roll" => {
            let shifts: Vec<i64> = ints(attrs, "shifts")?.iter().map(|&v| v as i64).collect();
            x()?.roll(&shifts, &dims()?)?
        }
        "repeat" => {
            let r = ints(attrs, "repeats")?;
            let r = r
                .iter()
                .map(|&v| {
                    usize::try_from(v).map_err(|_| Error::invalid("repeat", "negative count"))
                })
                .collect::<Result<Vec<_>>>()?;
            x()?.repeat(&r)?
        }
        "einsum" => ops::einsum::einsum(
            attrs["equation"]
                .as_str()
                .ok_or_else(|| Error::invalid("einsum", "no equation"))?,
            &inp.all(),
        )?,
        "scaled_dot_product_attention" => ops::attention::scaled_dot_product_attention(
            inp.req("q")?,
            inp.req("k")?,
            inp.req("v")?,
            inp.named("attn_mask"),
            boolean(attrs, "is_causal")?,
            attrs["scale"].as_f64(),
        )?,
        "multi_head_attention" => return multi_head_attention(attrs, inp).map(Some),
        "transformer_encoder_layer" => encoder_layer(attrs, inp)?,
        _ => return Ok(None),
    };
    Ok(Some(out.into()))
}

fn run_chain(attrs: &Value, inputs: &[(String, Tensor)]) -> Result<Option<Produced>> {
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
        let named: Vec<(String, Tensor)> = args
            .into_iter()
            .enumerate()
            .map(|(i, t)| (format!("arg{i}"), t))
            .collect();
        match apply(op, &step["attrs"], &Inputs(&named))? {
            Some(mut p) => prev = Some(p.outputs.remove(0)),
            None => return Ok(None),
        }
    }
    Ok(prev.map(Produced::from))
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
        // An expected infinity passes only as the same infinity.
        let err = if b.is_infinite() {
            if a == b {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (a - b).abs()
        };
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
    let produced = if op == "chain" {
        run_chain(attrs, &inputs)?
    } else {
        apply(op, attrs, &Inputs(&inputs))?
    };
    let Some(Produced {
        outputs: outs,
        extra,
    }) = produced
    else {
        return Ok(None);
    };
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
    for want in case["extra_outputs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let n = want["name"].as_str().unwrap_or("?");
        match extra.iter().find(|(k, _)| k == n) {
            Some((_, got)) => failures.extend(compare(n, got, want, rtol, atol, device)?),
            None => {
                return Err(Error::invalid(
                    "conformance",
                    format!("op did not produce extra output {n}"),
                ))
            }
        }
    }
    // s = Σ_k <out_k, grad_out_k>, then backward.
    let grad_outs = case["grad_outputs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut s: Option<Tensor> = None;
    for g in grad_outs {
        // Matched by name: integer and bool outputs have no grad_output.
        let n = g["name"].as_str().unwrap_or("y");
        let Some(got) = want_outs
            .iter()
            .position(|w| w["name"].as_str().unwrap_or("y") == n)
            .map(|i| &outs[i])
        else {
            return Err(bad("case", format!("grad_output for unknown output {n}")));
        };
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
