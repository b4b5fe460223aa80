//! LLaMA building blocks: projections (with optional LoRA), RMSNorm, rotate-half RoPE,
//! grouped-query attention with a KV cache, SwiGLU MLP and the decoder layer.

use crate::backend::ArBackend;
use burn::module::{Module, Param};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Distribution, Tensor, TensorData};

use super::cache::LayerCache;
use super::config::LlamaConfig;

/// A bias-free linear map `x @ Wᵀ` with `W: [out, in]` (HF's layout), plus an optional LoRA
/// adapter.
///
/// The weight is stored `[out, in]` and used transposed because that is the layout Burn's
/// small-M (vector-matrix) matmul kernels read contiguously; inputs of any rank are flattened
/// to `[rows, in]` first, so a batch of one-token decode steps is one matmul that reads the
/// weight once, not one vector-matrix product per sequence.
#[derive(Module, Debug)]
pub struct Proj<B: ArBackend> {
    /// `[out, in]`.
    pub(crate) weight: Param<Tensor<B, 2>>,
    /// Low-rank update, when attached.
    pub(crate) lora: Option<LoraAdapter<B>>,
}

/// LoRA: `x @ Wᵀ + scale · (x @ A) @ B` with `A: [in, r]`, `B: [r, out]`, `scale = alpha / r`.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: ArBackend> {
    /// `[in, r]`.
    pub(crate) a: Param<Tensor<B, 2>>,
    /// `[r, out]`, zero at initialisation so the adapted model starts equal to the base.
    pub(crate) b: Param<Tensor<B, 2>>,
    pub(crate) scale: f64,
}

impl<B: ArBackend> Proj<B> {
    pub(crate) fn init(d_in: usize, d_out: usize, std: f64, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::random(
                [d_out, d_in],
                Distribution::Normal(0.0, std),
                device,
            )),
            lora: None,
        }
    }

    /// A projection with the weight `[out, in]`.
    pub(crate) fn from_tensor(weight: Tensor<B, 2>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            lora: None,
        }
    }

    /// `[.., in]` → `[.., out]`.
    pub(crate) fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let y = linear_t(x.clone(), self.weight.val());
        match &self.lora {
            None => y,
            Some(l) => {
                let low = flat_matmul(flat_matmul(x, l.a.val()), l.b.val());
                y + low.mul_scalar(l.scale)
            }
        }
    }
}

/// `x [.., k] @ w [k, n]` → `[.., n]`, computed as one `[rows, k] @ [k, n]` matmul.
fn flat_matmul<B: ArBackend, const D: usize>(x: Tensor<B, D>, w: Tensor<B, 2>) -> Tensor<B, D> {
    let mut dims = x.dims();
    let k = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    dims[D - 1] = w.dims()[1];
    x.reshape([rows, k]).matmul(w).reshape(dims)
}

/// `x [.., in] @ w_tᵀ` with `w_t: [out, in]` (HF's layout) → `[.., out]`: one flattened
/// `[rows, in]` matmul, or for at most 16 rows on a CubeCL backend (not `Autodiff`) the fused
/// skinny kernel that reads `w_t` in place — what the decoder's projections use at decode time.
/// Under `Autodiff` of a CubeCL backend, long inputs (≥ 2,048 rows) take
/// [`ArBackend::linear_t_split`](crate::ArBackend::linear_t_split): the weight gradient as a sum
/// of row blocks' products.
///
/// ```
/// use ar_refine::backbone::linear_t;
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// let x = Tensor::<NdArray, 3>::ones([2, 1, 4], &Default::default());
/// let w = Tensor::<NdArray, 2>::ones([3, 4], &Default::default());
/// assert_eq!(linear_t(x, w).dims(), [2, 1, 3]);
/// ```
pub fn linear_t<B: ArBackend, const D: usize>(x: Tensor<B, D>, w_t: Tensor<B, 2>) -> Tensor<B, D> {
    #[cfg(feature = "cubecl")]
    {
        let mut dims = x.dims();
        let k = dims[D - 1];
        let rows = dims[..D - 1].iter().product::<usize>();
        if rows <= crate::backend::llama::fused::SKINNY_MAX_ROWS {
            dims[D - 1] = w_t.dims()[0];
            return match crate::backend::llama::fused::skinny_linear(x.reshape([rows, k]), &w_t) {
                Ok(y) => y.reshape(dims),
                Err(x2) => flat_matmul(x2, w_t.transpose()).reshape(dims),
            };
        }
    }
    #[cfg(feature = "cubecl")]
    {
        // Training: a weight gradient split into row blocks where the backend asks for it.
        let mut dims = x.dims();
        let k = dims[D - 1];
        let rows = dims[..D - 1].iter().product::<usize>();
        dims[D - 1] = w_t.dims()[0];
        if let Some(y) = B::linear_t_split(x.clone().reshape([rows, k]), w_t.clone()) {
            return y.reshape(dims);
        }
    }
    flat_matmul(x, w_t.transpose())
}

/// Root-mean-square norm with a learned gain, computed in f32 for half-precision backends.
#[derive(Module, Debug)]
pub struct RmsNorm<B: ArBackend> {
    pub(crate) weight: Param<Tensor<B, 1>>,
    pub(crate) eps: f64,
}

impl<B: ArBackend> RmsNorm<B> {
    pub(crate) fn init(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([dim], device)),
            eps,
        }
    }

    pub(crate) fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        #[cfg(feature = "cubecl")]
        let x = {
            let [b, n, h] = x.dims();
            let gain = self.weight.val();
            let y = match crate::backend::llama::fused::rms_norm(x.reshape([b * n, h]), &gain, self.eps) {
                Ok(y) => Ok(y),
                Err(x) => B::rms_norm(x.clone(), gain, self.eps).ok_or(x),
            };
            match y {
                Ok(y) => return y.reshape([b, n, h]),
                Err(x) => x.reshape([b, n, h]),
            }
        };
        let dtype = x.dtype();
        let x = if dtype == DType::F32 {
            x
        } else {
            x.cast(DType::F32)
        };
        let rms = x.clone().powi_scalar(2).mean_dim(2).add_scalar(self.eps).sqrt();
        let normed = x.div(rms);
        let normed = if dtype == DType::F32 {
            normed
        } else {
            normed.cast(dtype)
        };
        normed * self.weight.val().unsqueeze::<3>()
    }

    /// The residual sum `s = x + delta` (when `delta` is given, else `s = x`) and its norm:
    /// `(s, norm(s))`, each `[b, n, h]`. On the fused decode path one launch does both.
    pub(crate) fn forward_add(
        &self,
        x: Tensor<B, 3>,
        delta: Option<Tensor<B, 3>>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let Some(delta) = delta else {
            return (x.clone(), self.forward(x));
        };
        #[cfg(feature = "cubecl")]
        let (x, delta) = {
            let [b, n, h] = x.dims();
            match crate::backend::llama::fused::add_rms_norm(
                x.reshape([b * n, h]),
                delta.reshape([b * n, h]),
                &self.weight.val(),
                self.eps,
            ) {
                Ok((s, y)) => return (s.reshape([b, n, h]), y.reshape([b, n, h])),
                Err((x, delta)) => (x.reshape([b, n, h]), delta.reshape([b, n, h])),
            }
        };
        let s = x + delta;
        (s.clone(), self.forward(s))
    }
}

/// The rotate-half RoPE tables for positions `start..start + n`: `(cos, sin)`, each `[n, head_dim]`,
/// laid out as HF does (`cat(freqs, freqs)`).
pub(crate) fn rope_tables<B: ArBackend>(
    start: usize,
    n: usize,
    head_dim: usize,
    theta: f64,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let half = head_dim / 2;
    // HF computes inv_freq and the angles in f32; so do we, so that long positions agree.
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(n * head_dim);
    let mut sin = Vec::with_capacity(n * head_dim);
    for p in start..start + n {
        for _ in 0..2 {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    // In `B`'s own float type: Burn 0.21's default is per device, shared by every backend type
    // on it, so an f16 backend that touched the device first would round f32 tables to f16.
    let dtype = <B::FloatElem as burn::tensor::Element>::dtype();
    (
        Tensor::from_data(TensorData::new(cos, [n, head_dim]), (device, dtype)),
        Tensor::from_data(TensorData::new(sin, [n, head_dim]), (device, dtype)),
    )
}

/// `x [b, h, n, hd]` rotated by the tables `[n, hd]`: `x·cos + rotate_half(x)·sin`.
fn apply_rope<B: ArBackend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let hd = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, hd / 2);
    let x2 = x.clone().narrow(3, hd / 2, hd / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// Multi-head attention with RoPE and grouped-query key/value heads.
#[derive(Module, Debug)]
pub struct Attention<B: ArBackend> {
    pub(crate) q_proj: Proj<B>,
    pub(crate) k_proj: Proj<B>,
    pub(crate) v_proj: Proj<B>,
    pub(crate) o_proj: Proj<B>,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
}

/// Per-forward context: position offset and the RoPE tables broadcast to `[1, 1, n, hd]`.
pub(crate) struct Step<B: ArBackend> {
    pub start: usize,
    pub cos: Tensor<B, 4>,
    pub sin: Tensor<B, 4>,
}

impl<B: ArBackend> Attention<B> {
    pub(crate) fn init(c: &LlamaConfig, device: &B::Device) -> Self {
        let (h, kv, hd, std) = (
            c.num_attention_heads,
            c.kv_heads(),
            c.head_dim(),
            c.initializer_range,
        );
        Self {
            q_proj: Proj::init(c.hidden_size, h * hd, std, device),
            k_proj: Proj::init(c.hidden_size, kv * hd, std, device),
            v_proj: Proj::init(c.hidden_size, kv * hd, std, device),
            o_proj: Proj::init(h * hd, c.hidden_size, std, device),
            heads: h,
            kv_heads: kv,
            head_dim: hd,
        }
    }

    /// The projections `q [b, n, h·hd]`, `k`, `v [b, n, kv·hd]` split into heads, `q` and `k`
    /// rotated, `k` and `v` appended to the cache: `(q [b, h, n, hd], k, v [b, kv, t, hd])` with
    /// `t` the cached positions including the new ones (`n` without a cache).
    fn rope_and_cache(
        &self,
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        step: &Step<B>,
        #[cfg_attr(not(feature = "cubecl"), allow(unused_mut))] mut cache: Option<&mut LayerCache<B>>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [b, n, _] = q.dims();
        let (h, kv, hd) = (self.heads, self.kv_heads, self.head_dim);
        #[cfg(feature = "cubecl")]
        let (q, k, v) = {
            let args = crate::backend::llama::fused::RopeKv {
                q: q.reshape([b * n, h * hd]),
                k: k.reshape([b * n, kv * hd]),
                v: v.reshape([b * n, kv * hd]),
                cos: step.cos.clone().reshape([n, hd]),
                sin: step.sin.clone().reshape([n, hd]),
                cache: cache.as_mut().map(|c| c.take()),
                start: step.start,
                batch: b,
                heads: h,
            };
            match crate::backend::llama::fused::rope_kv(args) {
                Ok((q, kb, vb)) => {
                    return match cache {
                        Some(c) => {
                            let (k, v) = c.restore(kb, vb, step.start + n);
                            (q, k, v)
                        }
                        None => (q, kb, vb),
                    }
                }
                Err(a) => {
                    if let (Some(c), Some((kb, vb))) = (cache.as_mut(), a.cache) {
                        c.restore(kb, vb, 0);
                    }
                    (
                        a.q.reshape([b, n, h * hd]),
                        a.k.reshape([b, n, kv * hd]),
                        a.v.reshape([b, n, kv * hd]),
                    )
                }
            }
        };
        let split = |t: Tensor<B, 3>, heads: usize| t.reshape([b, n, heads, hd]).swap_dims(1, 2);
        // Training: RoPE and the move to heads in one kernel each way where the backend has it.
        #[cfg(feature = "cubecl")]
        if cache.is_none() {
            let (cos, sin) = (
                step.cos.clone().reshape([n, hd]),
                step.sin.clone().reshape([n, hd]),
            );
            let rope = |t: &Tensor<B, 3>, heads: usize| {
                B::rope(t.clone().reshape([b * n, heads * hd]), cos.clone(), sin.clone())
                    .map(|r| r.reshape([b, heads, n, hd]))
            };
            if let (Some(q), Some(k)) = (rope(&q, h), rope(&k, kv)) {
                return (q, k, split(v, kv));
            }
        }
        let q = apply_rope(split(q, h), &step.cos, &step.sin);
        let k = apply_rope(split(k, kv), &step.cos, &step.sin);
        let v = split(v, kv);
        match cache {
            Some(c) => {
                let (k, v) = c.append(step.start, k, v);
                (q, k, v)
            }
            None => (q, k, v),
        }
    }

    /// `x [b, n, hidden]` at positions `step.start..step.start + n` → `[b, n, hidden]`.
    /// With a cache, the new keys/values are written into it and attention covers every cached
    /// position before them.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        step: &Step<B>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        let [b, n, _] = x.dims();
        let (h, kv, hd) = (self.heads, self.kv_heads, self.head_dim);
        let q = self.q_proj.forward(x.clone());
        let k = self.k_proj.forward(x.clone());
        let v = self.v_proj.forward(x);
        let (q, k, v) = self.rope_and_cache(q, k, v, step, cache);
        #[cfg(feature = "cubecl")]
        let (q, k, v) = match crate::backend::llama::fused::decode_attention(q, k, v) {
            Ok(out) => return self.o_proj.forward(out.swap_dims(1, 2).reshape([b, n, h * hd])),
            Err(qkv) => qkv,
        };
        let t = k.dims()[2];
        let (k, v) = if kv == h {
            (k, v)
        } else {
            let rep = h / kv;
            let widen = |t4: Tensor<B, 4>| {
                t4.unsqueeze_dim::<5>(2)
                    .expand([b, kv, rep, t, hd])
                    .reshape([b, h, t, hd])
            };
            (widen(k), widen(v))
        };
        let out = if n == 1 {
            // One new query sees every cached key: no mask.
            attention(q, k, v, None, None, AttentionModuleOptions::default())
        } else if t == n {
            // The crate's chunked causal attention where the backend has it (a CubeCL backend,
            // and its `Autodiff` with the kernels' own backward pass), else Burn's.
            #[cfg(feature = "cubecl")]
            let (q, k, v) = match B::causal_attention(q.clone(), k.clone(), v.clone(), None) {
                Some(out) => return self.o_proj.forward(out.swap_dims(1, 2).reshape([b, n, h * hd])),
                None => (q, k, v),
            };
            let options = AttentionModuleOptions {
                is_causal: true,
                ..Default::default()
            };
            attention(q, k, v, None, None, options)
        } else {
            // Several new queries after cached ones: explicit offset-causal mask.
            let offset = t - n;
            let mask: Vec<bool> = (0..n).flat_map(|i| (0..t).map(move |j| j > offset + i)).collect();
            let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [n, t]), &q.device())
                .unsqueeze::<4>()
                .expand([b, h, n, t]);
            let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((hd as f64).sqrt());
            softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3).matmul(v)
        };
        self.o_proj.forward(out.swap_dims(1, 2).reshape([b, n, h * hd]))
    }
}

/// SwiGLU: `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: ArBackend> {
    pub(crate) gate_proj: Proj<B>,
    pub(crate) up_proj: Proj<B>,
    pub(crate) down_proj: Proj<B>,
}

impl<B: ArBackend> Mlp<B> {
    pub(crate) fn init(c: &LlamaConfig, device: &B::Device) -> Self {
        let std = c.initializer_range;
        Self {
            gate_proj: Proj::init(c.hidden_size, c.intermediate_size, std, device),
            up_proj: Proj::init(c.hidden_size, c.intermediate_size, std, device),
            down_proj: Proj::init(c.intermediate_size, c.hidden_size, std, device),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        // Decode steps without adapters: gate, up and SwiGLU in one launch where it runs.
        #[cfg(feature = "cubecl")]
        let x = {
            let [b, n, h] = x.dims();
            match (&self.gate_proj.lora, &self.up_proj.lora) {
                (None, None) if b * n <= crate::backend::llama::fused::SKINNY_MAX_ROWS => {
                    let (wg, wu) = (self.gate_proj.weight.val(), self.up_proj.weight.val());
                    match crate::backend::llama::fused::swiglu(x.reshape([b * n, h]), &wg, &wu) {
                        Ok(y) => return self.down_proj.forward(y.reshape([b, n, wg.dims()[0]])),
                        Err(x) => x.reshape([b, n, h]),
                    }
                }
                _ => x,
            }
        };
        let g = self.gate_proj.forward(x.clone());
        let u = self.up_proj.forward(x);
        #[cfg(feature = "cubecl")]
        let (g, u) = {
            let [b, n, i] = g.dims();
            // decode kernel, else (training) the kernels with a backward pass
            let y = match crate::backend::llama::fused::silu_mul(g.reshape([b * n, i]), u.reshape([b * n, i]))
            {
                Ok(y) => Ok(y),
                Err((g, u)) => B::silu_mul(g.clone(), u.clone()).ok_or((g, u)),
            };
            match y {
                Ok(y) => return self.down_proj.forward(y.reshape([b, n, i])),
                Err((g, u)) => (g.reshape([b, n, i]), u.reshape([b, n, i])),
            }
        };
        self.down_proj.forward(silu(g) * u)
    }
}

/// Pre-norm decoder layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: ArBackend> {
    pub(crate) input_layernorm: RmsNorm<B>,
    pub(crate) self_attn: Attention<B>,
    pub(crate) post_attention_layernorm: RmsNorm<B>,
    pub(crate) mlp: Mlp<B>,
}

impl<B: ArBackend> DecoderLayer<B> {
    pub(crate) fn init(c: &LlamaConfig, device: &B::Device) -> Self {
        Self {
            input_layernorm: RmsNorm::init(c.hidden_size, c.rms_norm_eps, device),
            self_attn: Attention::init(c, device),
            post_attention_layernorm: RmsNorm::init(c.hidden_size, c.rms_norm_eps, device),
            mlp: Mlp::init(c, device),
        }
    }

    /// The layer on `x + pending` (`[b, n, hidden]`; `pending` is the previous layer's MLP
    /// output, not yet added): `(x', delta)` whose sum is the layer's output. Each residual add
    /// is left to the norm that follows it, which on the fused decode path does both in one
    /// launch.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        pending: Option<Tensor<B, 3>>,
        step: &Step<B>,
        cache: Option<&mut LayerCache<B>>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let (x, normed) = self.input_layernorm.forward_add(x, pending);
        let attn = self.self_attn.forward(normed, step, cache);
        let (x, normed) = self.post_attention_layernorm.forward_add(x, Some(attn));
        (x, self.mlp.forward(normed))
    }
}
