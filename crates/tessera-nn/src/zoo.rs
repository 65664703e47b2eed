//! Ready-made models with PyTorch-style parameter names, derived from their fields
//! (`#[derive(Module)]`). Each runs its layers through a [`Trace`], so `summary()` lists them.

use crate::init::Ctx;
use crate::layers::{
    Conv1d, Conv2d, Dropout, Embedding, Inception, Linear, LocalResponseNorm, Lstm, MaxPool2d,
    PartialConv2d, Rbf, Squash, Subsampling, C3_TABLE,
};
use crate::module::{Forward, Named};
use crate::summary::Trace;
use crate::Module;
use tessera_core::ops::conv::ConvOptions;
use tessera_core::ops::pool::PoolOptions;
use tessera_core::ops::rnn::{RnnOptions, RnnOutput};
use tessera_core::{Error, Result, Tensor};

macro_rules! container {
    () => {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            self.trace(x, &mut Trace::off())
        }
        fn is_container(&self) -> bool {
            true
        }
    };
}

/// A multilayer perceptron: Linear layers with ReLU between them; parameters `layers.{i}.*`.
#[derive(Module)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Mlp {
    /// Widths from input to output, e.g. `[784, 512, 256, 10]`.
    pub fn new(ctx: &mut Ctx, widths: &[usize]) -> Result<Mlp> {
        if widths.len() < 2 {
            return Err(Error::invalid(
                "Mlp",
                "needs at least an input and an output width",
            ));
        }
        let last = widths.len() - 2;
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let l = Linear::new(ctx, w[0], w[1])?;
                Ok(if i < last { l.with_relu() } else { l })
            })
            .collect::<Result<_>>()?;
        Ok(Mlp { layers })
    }
}

impl Forward for Mlp {
    container!();
    fn trace(&self, x: &Tensor, t: &mut Trace) -> Result<Tensor> {
        let mut h = x.flatten(1, -1)?;
        for (i, l) in self.layers.iter().enumerate() {
            h = t.call(&format!("layers.{i}"), l, &h)?;
        }
        Ok(h)
    }
}

/// LeNet-5 as commonly used today (ReLU, max pooling), for 1×28×28 inputs: conv 1→6 5×5
/// padding 2 → pool → conv 6→16 5×5 → pool → 400 → 120 → 84 → 10. Parameter names `conv1`,
/// `conv2`, `fc1`, `fc2`, `fc3`, as in the usual PyTorch definition.
#[derive(Module)]
pub struct LeNet5 {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub fc1: Linear,
    pub fc2: Linear,
    pub fc3: Linear,
}

impl LeNet5 {
    /// PyTorch's default initialisation from `ctx`'s generator.
    pub fn new(ctx: &mut Ctx) -> Result<LeNet5> {
        Ok(LeNet5 {
            conv1: Conv2d::new(ctx, 1, 6, 5, ConvOptions::new().padding(2))?.with_relu(),
            conv2: Conv2d::new(ctx, 6, 16, 5, ConvOptions::new())?.with_relu(),
            fc1: Linear::new(ctx, 400, 120)?.with_relu(),
            fc2: Linear::new(ctx, 120, 84)?.with_relu(),
            fc3: Linear::new(ctx, 84, 10)?,
        })
    }
}

impl Forward for LeNet5 {
    container!();
    fn trace(&self, x: &Tensor, t: &mut Trace) -> Result<Tensor> {
        let pool = MaxPool2d(PoolOptions::new(2));
        let h = t.call("conv1", &self.conv1, x)?;
        let h = t.call("pool1", &pool, &h)?;
        let h = t.call("conv2", &self.conv2, &h)?;
        let h = t.call("pool2", &pool, &h)?.flatten(1, -1)?;
        let h = t.call("fc1", &self.fc1, &h)?;
        let h = t.call("fc2", &self.fc2, &h)?;
        t.call("fc3", &self.fc3, &h)
    }
}

/// The output layer of [`LeNet1998`].
pub enum LeNetOutput {
    /// Euclidean RBF units (the paper's), 840 parameters.
    Rbf(Rbf),
    /// A linear layer for softmax cross-entropy, 850 parameters.
    Softmax(Linear),
}

impl Module for LeNetOutput {
    fn named_parameters(&self) -> Named {
        match self {
            LeNetOutput::Rbf(r) => r.named_parameters(),
            LeNetOutput::Softmax(l) => l.named_parameters(),
        }
    }
}

/// LeNet-5 as published (LeCun et al., 1998): 32×32 input, scaled-tanh squashing, trainable
/// subsampling S2/S4, C3's partial connection table, C5, F6, and an RBF or softmax output
/// (counted apart in the summary, as the paper's 60,000 parameters do not include it).
#[derive(Module)]
pub struct LeNet1998 {
    pub c1: Conv2d,
    pub s2: Subsampling,
    pub c3: PartialConv2d,
    pub s4: Subsampling,
    pub c5: Conv2d,
    pub f6: Linear,
    pub output: LeNetOutput,
}

impl LeNet1998 {
    /// With an RBF (`rbf = true`) or softmax output layer.
    pub fn new(ctx: &mut Ctx, rbf: bool) -> Result<LeNet1998> {
        Ok(LeNet1998 {
            c1: Conv2d::new(ctx, 1, 6, 5, ConvOptions::new())?,
            s2: Subsampling::new(ctx, 6)?,
            c3: PartialConv2d::new(ctx, 6, &C3_TABLE, 5)?,
            s4: Subsampling::new(ctx, 16)?,
            c5: Conv2d::new(ctx, 16, 120, 5, ConvOptions::new())?,
            f6: Linear::new(ctx, 120, 84)?,
            output: if rbf {
                LeNetOutput::Rbf(Rbf::new(ctx, 84, 10)?)
            } else {
                LeNetOutput::Softmax(Linear::new(ctx, 84, 10)?)
            },
        })
    }
    fn output(&self) -> &dyn Forward {
        match &self.output {
            LeNetOutput::Rbf(r) => r,
            LeNetOutput::Softmax(l) => l,
        }
    }
}

impl Forward for LeNet1998 {
    container!();
    /// `x` is `[N, 1, 32, 32]`, or `[N, 1, 28, 28]` (padded by 2, as the paper did for MNIST).
    fn trace(&self, x: &Tensor, t: &mut Trace) -> Result<Tensor> {
        let x = if x.dims().get(2) == Some(&28) {
            x.pad(&[2, 2, 2, 2], 0.0)?
        } else {
            x.clone()
        };
        let h = Squash.forward(&t.call("c1", &self.c1, &x)?)?;
        let h = t.call("s2", &self.s2, &h)?;
        let h = Squash.forward(&t.call("c3", &self.c3, &h)?)?;
        let h = t.call("s4", &self.s4, &h)?;
        let h = Squash
            .forward(&t.call("c5", &self.c5, &h)?)?
            .flatten(1, -1)?;
        let h = Squash.forward(&t.call("f6", &self.f6, &h)?)?;
        t.call_separate("output", self.output(), &h)
    }
}

/// AlexNet as published (Krizhevsky et al., 2012): two towers (grouped convolutions 2, 4 and 5),
/// local response normalisation, overlapping max pooling, dropout; 227×227×3 input, 1000 classes.
#[derive(Module)]
pub struct AlexNet {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub conv3: Conv2d,
    pub conv4: Conv2d,
    pub conv5: Conv2d,
    pub fc6: Linear,
    pub fc7: Linear,
    pub fc8: Linear,
    pub drop6: Dropout,
    pub drop7: Dropout,
}

impl AlexNet {
    /// `classes` outputs (1000 in the paper).
    pub fn new(ctx: &mut Ctx, classes: usize) -> Result<AlexNet> {
        let o = ConvOptions::new;
        let seed = ctx.gen.seed();
        Ok(AlexNet {
            conv1: Conv2d::new(ctx, 3, 96, 11, o().stride(4))?.with_relu(),
            conv2: Conv2d::new(ctx, 96, 256, 5, o().padding(2).groups(2))?.with_relu(),
            conv3: Conv2d::new(ctx, 256, 384, 3, o().padding(1))?.with_relu(),
            conv4: Conv2d::new(ctx, 384, 384, 3, o().padding(1).groups(2))?.with_relu(),
            conv5: Conv2d::new(ctx, 384, 256, 3, o().padding(1).groups(2))?.with_relu(),
            fc6: Linear::new(ctx, 256 * 6 * 6, 4096)?.with_relu(),
            fc7: Linear::new(ctx, 4096, 4096)?.with_relu(),
            fc8: Linear::new(ctx, 4096, classes)?,
            drop6: Dropout::new(0.5, seed ^ 6)?,
            drop7: Dropout::new(0.5, seed ^ 7)?,
        })
    }
}

impl Forward for AlexNet {
    container!();
    fn trace(&self, x: &Tensor, t: &mut Trace) -> Result<Tensor> {
        let pool = MaxPool2d(PoolOptions::new(3).stride(2));
        let lrn = LocalResponseNorm::alexnet();
        let h = t.call("conv1", &self.conv1, x)?;
        let h = t.call("norm1", &lrn, &h)?;
        let h = t.call("pool1", &pool, &h)?;
        let h = t.call("conv2", &self.conv2, &h)?;
        let h = t.call("norm2", &lrn, &h)?;
        let h = t.call("pool2", &pool, &h)?;
        let h = t.call("conv3", &self.conv3, &h)?;
        let h = t.call("conv4", &self.conv4, &h)?;
        let h = t.call("conv5", &self.conv5, &h)?;
        let h = t.call("pool5", &pool, &h)?.flatten(1, -1)?;
        let h = t.call("fc6", &self.fc6, &self.drop6.forward(&h)?)?;
        let h = t.call("fc7", &self.fc7, &self.drop7.forward(&h)?)?;
        t.call("fc8", &self.fc8, &h)
    }
}

/// A small GoogLeNet-style network for small images: a 3×3 stem, two Inception modules,
/// global average pooling, dropout and a linear classifier.
#[derive(Module)]
pub struct GoogLeNetSmall {
    pub stem: Conv2d,
    pub inception3a: Inception,
    pub inception3b: Inception,
    pub dropout: Dropout,
    pub fc: Linear,
}

impl GoogLeNetSmall {
    /// For `in_channels`-channel images and `classes` outputs.
    pub fn new(ctx: &mut Ctx, in_channels: usize, classes: usize) -> Result<GoogLeNetSmall> {
        let stem = Conv2d::new(ctx, in_channels, 32, 3, ConvOptions::new().padding(1))?.with_relu();
        let inception3a = Inception::new(ctx, 32, [16, 16, 24, 4, 8, 8])?;
        let inception3b = Inception::new(ctx, inception3a.out_channels(), [24, 24, 32, 8, 16, 16])?;
        let fc = Linear::new(ctx, inception3b.out_channels(), classes)?;
        Ok(GoogLeNetSmall {
            stem,
            inception3a,
            inception3b,
            dropout: Dropout::new(0.2, ctx.gen.seed() ^ 11)?,
            fc,
        })
    }
}

impl Forward for GoogLeNetSmall {
    container!();
    fn trace(&self, x: &Tensor, t: &mut Trace) -> Result<Tensor> {
        let pool = MaxPool2d(PoolOptions::new(2));
        let h = t.call("stem", &self.stem, x)?;
        let h = t.call("pool1", &pool, &h)?;
        let h = t.call("inception3a", &self.inception3a, &h)?;
        let h = t.call("inception3b", &self.inception3b, &h)?;
        let h = t.call("pool2", &pool, &h)?;
        let h = tessera_core::ops::pool::global_avg_pool2d(&h, false)?;
        t.call("fc", &self.fc, &self.dropout.forward(&h)?)
    }
}

/// A text CNN (Kim, 2014): embedding → 1-D convolutions of several widths → ReLU →
/// max-over-time pooling → dropout → linear. Input: token ids `[N, L]` (i64).
#[derive(Module)]
pub struct TextCnn {
    pub embedding: Embedding,
    pub convs: Vec<Conv1d>,
    pub dropout: Dropout,
    pub fc: Linear,
}

impl TextCnn {
    /// `vocab` tokens embedded in `dim`, `filters` maps for each of `widths`, `classes` outputs.
    pub fn new(
        ctx: &mut Ctx,
        vocab: usize,
        dim: usize,
        widths: &[usize],
        filters: usize,
        classes: usize,
    ) -> Result<TextCnn> {
        let embedding = Embedding::new(ctx, vocab, dim, None)?;
        let convs = widths
            .iter()
            .map(|&w| Conv1d::new(ctx, dim, filters, w, ConvOptions::new()))
            .collect::<Result<_>>()?;
        let fc = Linear::new(ctx, filters * widths.len(), classes)?;
        Ok(TextCnn {
            embedding,
            convs,
            dropout: Dropout::new(0.5, ctx.gen.seed() ^ 13)?,
            fc,
        })
    }
}

impl Forward for TextCnn {
    container!();
    fn trace(&self, tokens: &Tensor, t: &mut Trace) -> Result<Tensor> {
        let e = t
            .call("embedding", &self.embedding, tokens)?
            .transpose(1, 2)?;
        let pooled = self
            .convs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                t.call(&format!("convs.{i}"), c, &e)?
                    .relu()?
                    .amax(&[-1], false)
            })
            .collect::<Result<Vec<_>>>()?;
        let h = Tensor::concat(&pooled.iter().collect::<Vec<_>>(), 1)?;
        t.call("fc", &self.fc, &self.dropout.forward(&h)?)
    }
}

/// A character-level LSTM language model: embedding → LSTM (batch first) → linear to the
/// vocabulary. Input: ids `[N, T]`; output: logits `[N, T, vocab]`.
#[derive(Module)]
pub struct CharLstm {
    pub embedding: Embedding,
    pub lstm: Lstm,
    pub head: Linear,
}

impl CharLstm {
    /// `vocab` symbols, `embed` embedding width, `hidden` LSTM width, `layers` layers.
    pub fn new(
        ctx: &mut Ctx,
        vocab: usize,
        embed: usize,
        hidden: usize,
        layers: usize,
    ) -> Result<CharLstm> {
        let opts = RnnOptions {
            hidden_size: hidden,
            num_layers: layers,
            bidirectional: false,
            batch_first: true,
            bias: true,
        };
        Ok(CharLstm {
            embedding: Embedding::new(ctx, vocab, embed, None)?,
            lstm: Lstm::new(ctx, embed, opts)?,
            head: Linear::new(ctx, hidden, vocab)?,
        })
    }

    /// Logits and the final LSTM state from an initial state (zeros when `None`); detach the
    /// state before the next chunk for truncated backpropagation through time.
    pub fn forward_with_state(
        &self,
        ids: &Tensor,
        state: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, RnnOutput)> {
        let e = self.embedding.forward(ids)?;
        let out = self
            .lstm
            .forward_with_state(&e, state.map(|s| s.0), state.map(|s| s.1))?;
        Ok((self.head.forward(&out.output)?, out))
    }
}

impl Forward for CharLstm {
    container!();
    fn trace(&self, ids: &Tensor, t: &mut Trace) -> Result<Tensor> {
        let e = t.call("embedding", &self.embedding, ids)?;
        let h = t.call("lstm", &self.lstm, &e)?;
        t.call("head", &self.head, &h)
    }
}

/// Sizes of a [`CharTransformer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CharTransformerConfig {
    pub vocab: usize,
    /// Longest window (rows of the position table).
    pub context: usize,
    pub d_model: usize,
    pub heads: usize,
    pub dim_feedforward: usize,
    pub layers: usize,
}

/// A character transformer laid out as this PyTorch module, so its `state_dict` loads
/// unchanged: `tok` = Embedding(vocab, d), `pos` = Embedding(context, d), `blocks` =
/// TransformerEncoder of pre-norm `TransformerEncoderLayer(d, heads, ff, dropout=0,
/// activation="gelu", batch_first=True, norm_first=True)` run with the causal mask, `norm` =
/// LayerNorm(d), `head` = Linear(d, vocab); logits = head(norm(blocks(tok(x) + pos(0..t)))).
#[derive(Module)]
pub struct CharTransformer {
    pub tok: Embedding,
    pub pos: Embedding,
    pub blocks: crate::layers::TransformerEncoder,
    pub norm: crate::layers::LayerNorm,
    pub head: Linear,
    #[module(skip)]
    pub config: CharTransformerConfig,
}

impl CharTransformer {
    /// A new model with PyTorch's initialisation.
    pub fn new(ctx: &mut Ctx, c: CharTransformerConfig) -> Result<CharTransformer> {
        use crate::layers::{FfActivation, TransformerEncoder, TransformerEncoderLayer};
        let mut o = crate::layers::TransformerOptions::new(c.heads);
        o.dim_feedforward = c.dim_feedforward;
        o.dropout = 0.0;
        o.activation = FfActivation::Gelu;
        o.batch_first = true;
        o.norm_first = true;
        Ok(CharTransformer {
            tok: Embedding::new(ctx, c.vocab, c.d_model, None)?,
            pos: Embedding::new(ctx, c.context, c.d_model, None)?,
            blocks: TransformerEncoder::new(
                ctx,
                c.layers,
                |ctx| TransformerEncoderLayer::new(ctx, c.d_model, o),
                None,
            )?,
            norm: crate::layers::LayerNorm::new(ctx, &[c.d_model])?,
            head: Linear::new(ctx, c.d_model, c.vocab)?,
            config: c,
        })
    }

    /// The sizes a `state_dict` implies (`tok.weight` `[vocab, d]`, `pos.weight`
    /// `[context, d]`, `blocks.layers.{i}.linear1.weight` `[ff, d]`), with `heads` heads.
    pub fn config_from(
        tensors: &[(String, Tensor)],
        heads: usize,
    ) -> Result<CharTransformerConfig> {
        let dims = |name: &str| -> Result<Vec<usize>> {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.dims().to_vec())
                .ok_or_else(|| Error::invalid("CharTransformer", format!("no tensor {name}")))
        };
        let (tok, pos, ff) = (
            dims("tok.weight")?,
            dims("pos.weight")?,
            dims("blocks.layers.0.linear1.weight")?,
        );
        let layers = (0..)
            .take_while(|i| {
                tensors
                    .iter()
                    .any(|(n, _)| n == &format!("blocks.layers.{i}.linear1.weight"))
            })
            .count();
        match (&tok[..], &pos[..], &ff[..]) {
            ([vocab, d], [context, d2], [f, d3]) if d == d2 && d == d3 => {
                Ok(CharTransformerConfig {
                    vocab: *vocab,
                    context: *context,
                    d_model: *d,
                    heads,
                    dim_feedforward: *f,
                    layers,
                })
            }
            _ => Err(Error::invalid(
                "CharTransformer",
                format!("inconsistent shapes: tok {tok:?}, pos {pos:?}, linear1 {ff:?}"),
            )),
        }
    }

    /// Logits `[N, T, vocab]` for character ids `[N, T]` (T at most the context), each
    /// position seeing only itself and earlier ones.
    pub fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        let t = match ids.dims() {
            [_, t] if *t <= self.config.context => *t,
            _ => {
                return Err(Error::invalid(
                    "CharTransformer",
                    format!(
                        "needs ids [N, T] with T <= context {}, got {}",
                        self.config.context,
                        ids.shape()
                    ),
                ))
            }
        };
        let positions = Tensor::arange(0.0, t as f64, 1.0, tessera_core::DType::I64, ids.device())?;
        let x = self.tok.forward(ids)?.add(&self.pos.forward(&positions)?)?;
        let masks = crate::layers::AttentionMasks {
            is_causal: true,
            ..Default::default()
        };
        let h = self.blocks.forward_masked(&x, &masks)?;
        self.head.forward(&self.norm.forward(&h)?)
    }
}

impl Forward for CharTransformer {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.logits(ids)
    }
}
