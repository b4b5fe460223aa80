//! The built-in refiner `g_φ`: a small bidirectional transformer over the generated
//! sequence's code embeddings, optionally with the prompt as a prefix, the backbone's confidence
//! and hidden states, and categorical and critic heads.

use crate::backend::ArBackend;
use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Int, Tensor};

use super::block::Block;
use super::config::{CodeHead, PositionEncoding, TransformerRefinerConfig};
use super::position::sinusoidal_2d;
use crate::error::{Error, Result};
use crate::traits::{RefineInput, RefineOutput, Refiner, RefinerNeeds, TokenGrid};

/// Segment ids of the prefix and answer tokens.
const SEG_ANSWER: usize = 0;
const SEG_QUERY: usize = 1;
const SEG_DEMO_OUTPUT: usize = 2;
const SEG_DEMO_INPUT: usize = 3;

/// Norms below this count as zero in the cosine head.
const NORM_EPS: f64 = 1e-8;

/// The refiner: `v = e + W_out · LN(blocks(x))` over the answer tokens `x`, where
/// `x = W_in · e + pos (+ segment) (+ W_c · confidence) (+ W_h · LN(hidden))`, optionally after a
/// prefix of prompt images; `W_out` starts at zero.
///
/// Input and output `[b, n, D]` with `n = rows * cols` of the token grid. Attention is
/// bidirectional: every token sees the whole generated image (and the prefix), which is what
/// lets the refiner correct early mistakes of left-to-right generation (Wang et al., 2025, §3).
///
/// Heads (see [`super::RefinerHeads`]): the refined embedding `v` `[b, n, D]` (always); code
/// logits `[b, n, K]`, `s · cos(v, c_k)` (cosine) or `W · h` (linear), plus a learnable *keep*
/// logit on the backbone's own code; and a critic logit `[b, n]`.
///
/// ```
/// use ar_refine::{RefineInput, Refiner, TokenGrid, TransformerRefinerConfig};
/// use burn::backend::NdArray;
/// use burn::tensor::{Distribution, Int, Tensor};
/// let device = Default::default();
/// let refiner = TransformerRefinerConfig::new(8).with_d_model(32).with_n_heads(4)
///     .init::<NdArray>(&device).unwrap();
/// let e = Tensor::<NdArray, 3>::random([2, 16, 8], Distribution::Default, &device);
/// let codes = Tensor::<NdArray, 2, Int>::zeros([2, 16], &device);
/// let out = refiner.refine(RefineInput::new(codes, e.clone(), TokenGrid::new(4, 4))).unwrap();
/// assert_eq!(out.embeddings.dims(), [2, 16, 8]);
/// out.embeddings.into_data().assert_approx_eq::<f32>(&e.into_data(), Default::default()); // identity at init
/// ```
#[derive(Module, Debug)]
pub struct TransformerRefiner<B: ArBackend> {
    input: Linear<B>,
    row_pos: Option<Param<Tensor<B, 2>>>,
    col_pos: Option<Param<Tensor<B, 2>>>,
    /// `[4, d_model]`: answer, query, demonstration output, demonstration input.
    segment: Option<Param<Tensor<B, 2>>>,
    /// `[d_model]`: replaces every answer token in the prompt-only control.
    mask_token: Option<Param<Tensor<B, 1>>>,
    confidence: Option<Linear<B>>,
    hidden_norm: Option<LayerNorm<B>>,
    hidden: Option<Linear<B>>,
    blocks: Vec<Block<B>>,
    norm: LayerNorm<B>,
    output: Linear<B>,
    /// Frozen codebook `[K, D]` of the categorical heads.
    codebook: Option<Param<Tensor<B, 2>>>,
    /// `[1]`: `ln(1/τ)` of the cosine head.
    log_scale: Option<Param<Tensor<B, 1>>>,
    code_head: Option<Linear<B>>,
    /// `d_model → 1`: the keep logit (weight starts at zero, bias at the configured value).
    keep: Option<Linear<B>>,
    critic: Option<Linear<B>>,
    config: TransformerRefinerConfig,
}

impl<B: ArBackend> TransformerRefiner<B> {
    pub(crate) fn new(
        cfg: &TransformerRefinerConfig,
        codebook: Option<Tensor<B, 2>>,
        device: &B::Device,
    ) -> Self {
        let d = cfg.d_model;
        let learned = cfg.position == PositionEncoding::Learned;
        let normal = Initializer::Normal { mean: 0.0, std: 0.02 };
        let table = || normal.init([cfg.max_grid, d], device);
        let zeros = |i: usize, o: usize| {
            LinearConfig::new(i, o)
                .with_initializer(Initializer::Zeros)
                .init(device)
        };
        let inputs = &cfg.inputs;
        let heads = &cfg.heads;
        let logits = heads.logits != CodeHead::None;
        let k = cfg.codebook_size;
        let keep = (logits && inputs.answer && heads.keep_logit > 0.0).then(|| {
            let bias = match heads.logits {
                CodeHead::Linear => heads.keep_logit + (k as f64).ln(),
                _ => heads.keep_logit,
            };
            let mut l = zeros(d, 1);
            l.bias = Some(Param::from_tensor(Tensor::full([1], bias, device)));
            l
        });
        Self {
            input: LinearConfig::new(cfg.code_dim, d).init(device),
            row_pos: learned.then(table),
            col_pos: learned.then(table),
            segment: (inputs.prompt_images > 0).then(|| normal.init([4, d], device)),
            mask_token: (!inputs.answer).then(|| normal.init([d], device)),
            confidence: inputs.confidence.then(|| LinearConfig::new(3, d).init(device)),
            hidden_norm: inputs.hidden_size.map(|h| LayerNormConfig::new(h).init(device)),
            hidden: inputs.hidden_size.map(|h| LinearConfig::new(h, d).init(device)),
            blocks: (0..cfg.n_layers)
                .map(|_| Block::new(d, cfg.n_heads, cfg.mlp_width(), cfg.dropout, device))
                .collect(),
            norm: LayerNormConfig::new(d).init(device),
            // zero: the backbone's answer passes through unchanged at step 0; without the
            // answer (prompt only) the output is all there is, and a zero vector has no direction
            output: if inputs.answer {
                zeros(d, cfg.code_dim)
            } else {
                LinearConfig::new(d, cfg.code_dim).init(device)
            },
            codebook: codebook
                .filter(|_| logits)
                .map(|c| Param::from_tensor(c).set_require_grad(false)),
            log_scale: (heads.logits == CodeHead::Cosine)
                .then(|| Param::from_tensor(Tensor::full([1], (1.0 / heads.temperature).ln(), device))),
            code_head: (heads.logits == CodeHead::Linear).then(|| {
                LinearConfig::new(d, k)
                    .with_initializer(normal.clone())
                    .init(device)
            }),
            keep,
            critic: heads.critic.then(|| LinearConfig::new(d, 1).init(device)),
            config: cfg.clone(),
        }
    }

    /// The configuration it was built with (`codebook_size` set for categorical heads).
    pub fn config(&self) -> &TransformerRefinerConfig {
        &self.config
    }

    /// Number of scalars (the frozen codebook included).
    pub fn param_count(&self) -> usize {
        self.num_params()
    }

    /// Position table `[rows * cols, d_model]` for `grid`.
    fn positions(&self, grid: TokenGrid, device: &B::Device) -> Result<Tensor<B, 2>> {
        let d = self.config.d_model;
        match (&self.row_pos, &self.col_pos) {
            (Some(rows), Some(cols)) => {
                let max = self.config.max_grid;
                if grid.rows > max || grid.cols > max {
                    return Err(Error::Config(format!(
                        "token grid {}x{} exceeds the refiner's learned position tables (max_grid {max})",
                        grid.rows, grid.cols
                    )));
                }
                let r = Tensor::<B, 1, Int>::arange(0..grid.rows as i64, device);
                let c = Tensor::<B, 1, Int>::arange(0..grid.cols as i64, device);
                let r = rows.val().select(0, r).unsqueeze_dim::<3>(1); // [rows, 1, d]
                let c = cols.val().select(0, c).unsqueeze_dim::<3>(0); // [1, cols, d]
                Ok((r + c).reshape([grid.len(), d]))
            }
            _ => Ok(sinusoidal_2d(grid, d, device)),
        }
    }

    /// Segment embedding `[1, 1, d]` of segment `s`.
    fn segment(&self, s: usize) -> Option<Tensor<B, 3>> {
        self.segment
            .as_ref()
            .map(|t| t.val().narrow(0, s, 1).unsqueeze_dim::<3>(0))
    }

    /// Checks that `input` carries what this refiner reads.
    fn check(&self, input: &RefineInput<B>) -> Result<()> {
        input.check(self.config.code_dim)?;
        let i = &self.config.inputs;
        let missing = |what: &str| {
            Err(Error::Config(format!(
                "this refiner reads {what}, which the RefineInput does not carry (see Refiner::needs)"
            )))
        };
        match &input.prompt {
            None if i.prompt_images > 0 => return missing("the prompt's images"),
            Some(p) if p.images < i.prompt_images => {
                return Err(Error::Config(format!(
                    "this refiner reads the prompt's last {} images; the RefineInput carries {}",
                    i.prompt_images, p.images
                )))
            }
            _ => {}
        }
        if i.confidence && input.confidence.is_none() {
            return missing("the backbone's confidence");
        }
        match (i.hidden_size, &input.hidden) {
            (Some(_), None) => return missing("the backbone's hidden states"),
            (Some(h), Some(t)) if t.dims()[2] != h => {
                return Err(Error::shape(
                    "refiner hidden states",
                    format!("[b, n, {h}]"),
                    &t.dims(),
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// The transformer's output at the answer positions, `[b, n, d_model]` (after the final norm).
    fn trunk(&self, input: &RefineInput<B>) -> Result<Tensor<B, 3>> {
        let cfg = &self.config;
        let [b, n, _] = input.embeddings.dims();
        let d = cfg.d_model;
        let device = input.embeddings.device();
        let pos = self.positions(input.grid, &device)?.unsqueeze_dim::<3>(0); // [1, n, d]
        let mut answer = match &self.mask_token {
            Some(mask) => mask.val().reshape([1, 1, d]).expand([b, n, d]) + pos.clone(),
            None => self.input.forward(input.embeddings.clone()) + pos.clone(),
        };
        if let Some(s) = self.segment(SEG_ANSWER) {
            answer = answer + s;
        }
        if let (Some(layer), Some(c)) = (&self.confidence, &input.confidence) {
            let ln_k = (cfg.codebook_size.max(2) as f64).ln();
            let lp = c.log_prob.clone().unsqueeze_dim::<3>(2);
            let features = Tensor::cat(
                vec![
                    lp.clone().exp(),
                    lp.div_scalar(ln_k),
                    c.entropy.clone().unsqueeze_dim::<3>(2).div_scalar(ln_k),
                ],
                2,
            );
            answer = answer + layer.forward(features);
        }
        if let (Some(norm), Some(layer), Some(h)) = (&self.hidden_norm, &self.hidden, &input.hidden) {
            answer = answer + layer.forward(norm.forward(h.clone()));
        }
        let m = cfg.inputs.prompt_images;
        let mut x = answer;
        if m > 0 {
            let p = input
                .prompt
                .as_ref()
                .ok_or_else(|| Error::Config("the prompt context is missing".into()))?;
            // the last m images of the context, in sentence order
            let skip = (p.images - m) * n;
            let pe = self.input.forward(p.embeddings.clone().narrow(1, skip, m * n));
            let mut parts = Vec::with_capacity(m + 1);
            for j in 0..m {
                let from_end = m - 1 - j;
                let seg = match from_end {
                    0 => SEG_QUERY,
                    t if t % 2 == 1 => SEG_DEMO_OUTPUT,
                    _ => SEG_DEMO_INPUT,
                };
                let mut img = pe.clone().narrow(1, j * n, n) + pos.clone();
                if let Some(s) = self.segment(seg) {
                    img = img + s;
                }
                parts.push(img);
            }
            parts.push(x);
            x = Tensor::cat(parts, 1);
        }
        for block in &self.blocks {
            x = block.forward(x);
        }
        Ok(self.norm.forward(x).narrow(1, m * n, n))
    }

    /// The refined embedding `[b, n, D]` from the trunk's output.
    fn embedding(&self, input: &RefineInput<B>, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let delta = self.output.forward(h);
        match self.mask_token {
            Some(_) => delta,
            None => input.embeddings.clone() + delta,
        }
    }
}

impl<B: ArBackend> Refiner<B> for TransformerRefiner<B> {
    fn refine(&self, input: RefineInput<B>) -> Result<RefineOutput<B>> {
        self.check(&input)?;
        let h = self.trunk(&input)?;
        let v = self.embedding(&input, h.clone());
        let [b, n, _] = v.dims();
        let logits =
            match (&self.config.heads.logits, &self.codebook) {
                (CodeHead::None, _) => None,
                (_, None) => return Err(Error::Config(
                    "this refiner has a code-logit head but no codebook (build it with init_with_codebook)"
                        .into(),
                )),
                (CodeHead::Cosine, Some(book)) => {
                    let c = book.val();
                    // sqrt(|x|² + ε²): differentiable at x = 0 too (clamping sqrt is not)
                    let eps2 = NORM_EPS * NORM_EPS;
                    let c = c.clone() / c.powi_scalar(2).sum_dim(1).add_scalar(eps2).sqrt(); // [K, D]
                    let q = v.clone() / v.clone().powi_scalar(2).sum_dim(2).add_scalar(eps2).sqrt();
                    let scale = self.log_scale.as_ref().map(|s| s.val().exp().reshape([1, 1, 1]));
                    let cos = q.matmul(c.transpose().unsqueeze_dim::<3>(0));
                    Some(match scale {
                        Some(s) => cos * s,
                        None => cos,
                    })
                }
                (CodeHead::Linear, Some(_)) => self.code_head.as_ref().map(|l| l.forward(h.clone())),
            };
        let logits = match (logits, &self.keep) {
            (Some(l), Some(keep)) => {
                let k = l.dims()[2];
                let ids = Tensor::<B, 1, Int>::arange(0..k as i64, &l.device())
                    .reshape([1, 1, k])
                    .expand([b, n, k]);
                let own = input.codes.clone().unsqueeze_dim::<3>(2).expand([b, n, k]);
                let own = own.equal(ids).float(); // [b, n, K]: one-hot of the backbone's code
                Some(l + own * keep.forward(h.clone()))
            }
            (l, _) => l,
        };
        let wrong_logit = self.critic.as_ref().map(|c| c.forward(h).reshape([b, n]));
        Ok(RefineOutput {
            embeddings: v,
            logits,
            wrong_logit,
        })
    }

    fn refine_embeddings(&self, embeddings: Tensor<B, 3>, grid: TokenGrid) -> Result<Tensor<B, 3>> {
        let [b, n, _] = embeddings.dims();
        let codes = Tensor::<B, 2, Int>::zeros([b, n], &embeddings.device());
        let input = RefineInput::new(codes, embeddings, grid);
        self.check(&input)?;
        let h = self.trunk(&input)?;
        Ok(self.embedding(&input, h))
    }

    fn needs(&self) -> RefinerNeeds {
        self.config.needs()
    }
}
