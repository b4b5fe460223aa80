//! The Burn backends the crate runs on, and how its fused kernels find them.
//!
//! Every generic item of the crate takes `B: ArBackend` (training loops
//! `B: ArAutodiffBackend`). The trait is Burn's [`Backend`] plus hidden routes to the crate's
//! CubeCL kernels; a backend without kernels implements it with an empty `impl` and then runs
//! every step on Burn's tensor operations. Which backends get which kernel is decided by these
//! impls, at compile time, not by trying type casts at run time.

#[cfg(feature = "cubecl")]
mod adamw;
#[cfg(feature = "cubecl")]
pub(crate) mod cube;
#[cfg(feature = "cubecl")]
mod group_norm;
#[cfg(feature = "cubecl")]
pub(crate) mod llama;
#[cfg(feature = "cubecl")]
#[cfg_attr(docsrs, doc(cfg(any(feature = "wgpu", feature = "cuda"))))]
pub mod nearest;

#[cfg(feature = "cubecl")]
#[doc(hidden)]
pub use adamw::AdamwScalars;
#[cfg(feature = "cubecl")]
pub(crate) use group_norm::{kernels as group_norm_silu_kernels, GroupNormSilu, GroupNormSiluSaved};
#[cfg(feature = "cubecl")]
pub(crate) use llama::{
    causal_attention_kernels, causal_chunks, decoder_kernels, training_kernels, CausalAttention, CausalSaved,
    DecoderKernels, TrainKernels, TrainOp, TrainSaved,
};

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};

/// A Burn backend the crate runs on: [`Backend`] plus the routes to the crate's fused kernels.
///
/// Implemented for
/// - `CubeBackend<R, F, I, BT>` of `burn-cubecl` (features `wgpu`, `cuda`), for every runtime
///   and element type, so for `burn::backend::Wgpu` and `burn::backend::Cuda` in f32, f16 and
///   bf16: the nearest-code kernel of [`crate::decode::cube`], the LLaMA decoder's fused decode
///   kernels, chunked causal attention for prefill and the tokenizer's fused
///   `silu(group_norm(x))`;
/// - `Autodiff<B>` of every `ArBackend` `B`: nearest-code search runs `B`'s kernel on the inner
///   tensors (token ids carry no gradient); `silu(group_norm(x))` and the LLaMA layers' training
///   kernels (causal attention, RMSNorm, `silu(gate) · up`, RoPE, split weight gradients) run
///   `B`'s kernels, recorded on the graph with their own backward passes; the decode-step kernels
///   have none, so decoding under `Autodiff` takes Burn's tensor operations;
/// - `NdArray` (feature `ndarray`): Burn's tensor operations throughout.
///
/// A backend of your own opts in with an empty impl, `impl ArBackend for MyBackend {}`, and
/// takes the tensor-op path everywhere. A backend type from another crate can only get its impl
/// here (Rust's orphan rule): Burn's `tch` and `candle` backends have none yet. Burn's `Fusion`
/// wrapper has none either: the crate builds Burn 0.21 without its `fusion` feature, whose stream
/// panics on the LLaMA decode step (BENCHMARKS.md, [gpu-speed] run 1).
pub trait ArBackend: Backend {
    /// The nearest-code kernel for `args`, or `None` for the tensor-op search (the default).
    #[cfg(feature = "cubecl")]
    #[doc(hidden)]
    fn nearest_code_kernel(
        args: &crate::backend::nearest::NearestArgs<Self>,
    ) -> Option<burn::tensor::Tensor<Self, 1, burn::tensor::Int>> {
        let _ = args;
        None
    }

    /// The LLaMA decoder's fused decode kernels, or `None` for tensor operations (the default).
    #[cfg(feature = "cubecl")]
    #[doc(hidden)]
    fn decoder_kernels() -> Option<crate::backend::DecoderKernels<Self>> {
        None
    }

    /// The fused `silu(group_norm(x))` forward and backward functions, or `None` (the default).
    #[cfg(feature = "cubecl")]
    #[doc(hidden)]
    fn group_norm_silu_kernels() -> Option<crate::backend::GroupNormSilu<Self>> {
        None
    }

    /// Causal self-attention's forward and backward functions, or `None` (the default).
    #[cfg(feature = "cubecl")]
    #[doc(hidden)]
    fn causal_attention_kernels() -> Option<crate::backend::CausalAttention<Self>> {
        None
    }

    /// `softmax(q · kᵀ / √hd, causal) · v` of `q [b, h, nq, hd]`, `k`, `v [b, h, nk, hd]`
    /// (`nk ≥ nq`) for training, or `None` for Burn's `attention`: the default. `Autodiff` of a
    /// backend with [`causal_attention_kernels`](Self::causal_attention_kernels) runs them,
    /// recorded with their own backward pass, in `chunks` query chunks of `⌈nq / chunks⌉`
    /// (`1..=nq`; `None`: one per 256 queries, at most 4), each against only the keys it sees.
    /// A CubeCL backend itself runs the forward kernels alone (inference), except when built
    /// with Burn's tuner.
    #[cfg(feature = "cubecl")]
    #[doc(hidden)]
    fn causal_attention(
        q: burn::tensor::Tensor<Self, 4>,
        k: burn::tensor::Tensor<Self, 4>,
        v: burn::tensor::Tensor<Self, 4>,
        chunks: Option<usize>,
    ) -> Option<burn::tensor::Tensor<Self, 4>> {
        let _ = (q, k, v, chunks);
        None
    }

    /// Into how many row blocks the weight gradient `dyᵀ · x` of a projection (`dy [rows, n]`,
    /// `x [rows, k]`) is split, the blocks' products summed (split-K): `1`, the default, keeps
    /// Burn's one product. A product with a small `[n, k]` output and a long `rows` gives a GPU
    /// too few output tiles to fill it.
    #[cfg(feature = "cubecl")]
    #[doc(hidden)]
    fn weight_grad_chunks(rows: usize, n: usize, k: usize) -> usize {
        let _ = (rows, n, k);
        1
    }

    /// `x [rows, k] · w_tᵀ` (`w_t [n, k]`) → `[rows, n]`, recorded with a backward pass that
    /// splits the weight gradient by [`weight_grad_chunks`](Self::weight_grad_chunks), or `None`
    /// (the default, and whenever that is 1): Burn's product. `Autodiff` implements it.
    #[cfg(feature = "cubecl")]
    #[doc(hidden)]
    fn linear_t_split(
        x: burn::tensor::Tensor<Self, 2>,
        w_t: burn::tensor::Tensor<Self, 2>,
    ) -> Option<burn::tensor::Tensor<Self, 2>> {
        let _ = (x, w_t);
        None
    }

    /// RMSNorm's, `silu(a) · u`'s and RoPE's forward and backward functions for training, or
    /// `None` (the default).
    #[cfg(feature = "cubecl")]
    #[doc(hidden)]
    fn training_kernels() -> Option<crate::backend::TrainKernels<Self>> {
        None
    }

    /// RMSNorm of `x [rows, h]` with `gain [h]` for training, or `None` for tensor operations
    /// (the default). `Autodiff` of a backend with
    /// [`training_kernels`](Self::training_kernels) runs them, recorded with their own backward
    /// pass (inference takes the decode kernels).
    #[cfg(feature = "cubecl")]
    #[doc(hidden)]
    fn rms_norm(
        x: burn::tensor::Tensor<Self, 2>,
        gain: burn::tensor::Tensor<Self, 1>,
        eps: f64,
    ) -> Option<burn::tensor::Tensor<Self, 2>> {
        let _ = (x, gain, eps);
        None
    }

    /// `silu(a) · u` of `a`, `u [rows, n]` for training, or `None` (the default); as
    /// [`rms_norm`](Self::rms_norm).
    #[cfg(feature = "cubecl")]
    #[doc(hidden)]
    fn silu_mul(
        a: burn::tensor::Tensor<Self, 2>,
        u: burn::tensor::Tensor<Self, 2>,
    ) -> Option<burn::tensor::Tensor<Self, 2>> {
        let _ = (a, u);
        None
    }

    /// RoPE (HF's rotate-half form) of `x [b·n, heads·hd]` (a projection's output, tokens
    /// `t = bi·n + i` in rows) at positions with `cos`, `sin [n, hd]`, laid out by heads:
    /// `[b·heads·n, hd]`; or `None` (the default). As [`rms_norm`](Self::rms_norm).
    #[cfg(feature = "cubecl")]
    #[doc(hidden)]
    fn rope(
        x: burn::tensor::Tensor<Self, 2>,
        cos: burn::tensor::Tensor<Self, 2>,
        sin: burn::tensor::Tensor<Self, 2>,
    ) -> Option<burn::tensor::Tensor<Self, 2>> {
        let _ = (x, cos, sin);
        None
    }

    /// One AdamW update of a flat parameter `p [n]` with gradient `g [n]` and moments `(m, v)`
    /// (`None` on the first step) in one kernel: `[p', m', v']`, or `None` (the default) for
    /// Burn's `AdamW`. `CubeBackend` has it (the optimizer runs on the inner backend).
    #[cfg(feature = "cubecl")]
    #[doc(hidden)]
    fn adamw_update(
        p: burn::tensor::Tensor<Self, 1>,
        g: burn::tensor::Tensor<Self, 1>,
        moments: Option<(burn::tensor::Tensor<Self, 1>, burn::tensor::Tensor<Self, 1>)>,
        scalars: AdamwScalars,
    ) -> Option<[burn::tensor::Tensor<Self, 1>; 3]> {
        let _ = (p, g, moments, scalars);
        None
    }

    /// `silu(group_norm(x))` of `x [n, c, h, w]` with `gamma`, `beta [c]` and `groups`
    /// dividing `c` (the caller checks the shapes) by the fused kernels, or `None` for tensor
    /// operations. By default the forward kernel of
    /// [`group_norm_silu_kernels`](Self::group_norm_silu_kernels); `Autodiff` records it with
    /// its own backward pass.
    #[cfg(feature = "cubecl")]
    #[doc(hidden)]
    fn group_norm_silu(
        x: burn::tensor::Tensor<Self, 4>,
        gamma: burn::tensor::Tensor<Self, 1>,
        beta: burn::tensor::Tensor<Self, 1>,
        groups: usize,
        eps: f64,
    ) -> Option<burn::tensor::Tensor<Self, 4>> {
        let k = Self::group_norm_silu_kernels()?;
        Some((k.forward)(x, gamma, beta, groups, eps).0)
    }
}

/// Whether the crate's fused kernels are used: yes unless the environment sets
/// `AR_REFINE_FUSED=0` (read once), which keeps every layer on Burn's tensor operations — for
/// comparing the two paths on one build or ruling the kernels out when a result looks wrong.
#[cfg(feature = "cubecl")]
pub(crate) fn fused_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("AR_REFINE_FUSED").is_none_or(|v| v != "0"))
}

/// The query chunks of causal attention over `q [b, h, nq, hd]`, `k`, `v [b, h, nk, hd]` when the
/// kernels can take these shapes (`k`, `v` alike, of `q`'s batch, heads and width, `nk ≥ nq`,
/// `1..=nq` chunks, the kernels enabled); `None` otherwise.
#[cfg(feature = "cubecl")]
fn causal_shapes<B: Backend>(
    q: &burn::tensor::Tensor<B, 4>,
    k: &burn::tensor::Tensor<B, 4>,
    v: &burn::tensor::Tensor<B, 4>,
    chunks: Option<usize>,
) -> Option<usize> {
    let ([b, h, nq, hd], [bk, hk, nk, hdk]) = (q.dims(), k.dims());
    let chunks = chunks.unwrap_or_else(|| crate::backend::causal_chunks(nq));
    let fits = [bk, hk, hdk] == [b, h, hd] && v.dims() == k.dims() && nk >= nq;
    (fused_enabled() && fits && (1..=nq).contains(&chunks)).then_some(chunks)
}

/// An [`ArBackend`] with automatic differentiation whose inner backend is an [`ArBackend`] too:
/// what the training loops take. Implemented for every such backend (e.g. `Autodiff<NdArray>`,
/// `Autodiff<Wgpu>`).
pub trait ArAutodiffBackend: AutodiffBackend<InnerBackend: ArBackend> + ArBackend {}

impl<B> ArAutodiffBackend for B where B: AutodiffBackend<InnerBackend: ArBackend> + ArBackend {}

impl<B: ArBackend, C: CheckpointStrategy> ArBackend for Autodiff<B, C> {
    #[cfg(feature = "cubecl")]
    fn nearest_code_kernel(
        args: &crate::backend::nearest::NearestArgs<Self>,
    ) -> Option<burn::tensor::Tensor<Self, 1, burn::tensor::Int>> {
        let ids = B::nearest_code_kernel(&args.inner())?;
        Some(burn::tensor::Tensor::from_inner(ids))
    }

    #[cfg(feature = "cubecl")]
    fn group_norm_silu(
        x: burn::tensor::Tensor<Self, 4>,
        gamma: burn::tensor::Tensor<Self, 1>,
        beta: burn::tensor::Tensor<Self, 1>,
        groups: usize,
        eps: f64,
    ) -> Option<burn::tensor::Tensor<Self, 4>> {
        let kernels = B::group_norm_silu_kernels()?;
        Some(recorded::group_norm_silu::<B, C>(
            kernels, x, gamma, beta, groups, eps,
        ))
    }

    #[cfg(feature = "cubecl")]
    fn causal_attention(
        q: burn::tensor::Tensor<Self, 4>,
        k: burn::tensor::Tensor<Self, 4>,
        v: burn::tensor::Tensor<Self, 4>,
        chunks: Option<usize>,
    ) -> Option<burn::tensor::Tensor<Self, 4>> {
        let chunks = causal_shapes(&q, &k, &v, chunks)?;
        let kernels = B::causal_attention_kernels()?;
        Some(recorded::causal_attention::<B, C>(kernels, q, k, v, chunks))
    }

    #[cfg(feature = "cubecl")]
    fn rms_norm(
        x: burn::tensor::Tensor<Self, 2>,
        gain: burn::tensor::Tensor<Self, 1>,
        eps: f64,
    ) -> Option<burn::tensor::Tensor<Self, 2>> {
        let h = x.dims()[1];
        if !fused_enabled() || gain.dims() != [h] {
            return None;
        }
        let op = B::training_kernels()?.rms_norm;
        Some(recorded::pair::<B, C>(op, x, gain.reshape([1, h]), eps))
    }

    #[cfg(feature = "cubecl")]
    fn silu_mul(
        a: burn::tensor::Tensor<Self, 2>,
        u: burn::tensor::Tensor<Self, 2>,
    ) -> Option<burn::tensor::Tensor<Self, 2>> {
        if !fused_enabled() || a.dims() != u.dims() {
            return None;
        }
        let op = B::training_kernels()?.silu_mul;
        Some(recorded::pair::<B, C>(op, a, u, 0.0))
    }

    #[cfg(feature = "cubecl")]
    fn rope(
        x: burn::tensor::Tensor<Self, 2>,
        cos: burn::tensor::Tensor<Self, 2>,
        sin: burn::tensor::Tensor<Self, 2>,
    ) -> Option<burn::tensor::Tensor<Self, 2>> {
        let ([rows, w], [n, hd]) = (x.dims(), cos.dims());
        let fits = hd > 0 && hd.is_multiple_of(2) && w.is_multiple_of(hd) && n > 0;
        if !fused_enabled() || !fits || !rows.is_multiple_of(n) || sin.dims() != [n, hd] {
            return None;
        }
        let op = B::training_kernels()?.rope;
        let tables = burn::tensor::Tensor::cat(vec![cos, sin], 0);
        Some(recorded::pair::<B, C>(op, x, tables, 0.0))
    }

    #[cfg(feature = "cubecl")]
    fn linear_t_split(
        x: burn::tensor::Tensor<Self, 2>,
        w_t: burn::tensor::Tensor<Self, 2>,
    ) -> Option<burn::tensor::Tensor<Self, 2>> {
        let ([rows, k], [n, kw]) = (x.dims(), w_t.dims());
        let chunks = B::weight_grad_chunks(rows, n, k);
        if !fused_enabled() || k != kw || chunks <= 1 || !rows.is_multiple_of(chunks) {
            return None;
        }
        Some(recorded::linear_t::<B, C>(x, w_t, chunks))
    }
}

/// The crate's kernels recorded on `Autodiff`'s graph with their own backward passes.
#[cfg(feature = "cubecl")]
mod recorded {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::Autodiff;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Tensor, TensorPrimitive};

    use crate::backend::{CausalAttention, CausalSaved, TrainOp, TrainSaved};
    use crate::backend::{GroupNormSilu, GroupNormSiluSaved};

    /// The backward step: `B`'s backward function.
    struct Step<B: Backend>(GroupNormSilu<B>);

    impl<B: Backend> std::fmt::Debug for Step<B> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("GroupNormSilu")
        }
    }

    impl<B: Backend> Backward<B, 3> for Step<B> {
        type State = GroupNormSiluSaved<B>;

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let dy = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
            let g = (self.0.backward)(ops.state, dy);
            let [px, pg, pb] = ops.parents;
            for (parent, grad) in [
                (px, g.x.into_primitive()),
                (pg, g.gamma.into_primitive()),
                (pb, g.beta.into_primitive()),
            ] {
                if let Some(node) = parent {
                    grads.register::<B>(node.id, grad.tensor());
                }
            }
        }
    }

    /// Runs the forward kernel on the inner tensors and records the step (with the input, the
    /// parameters and the statistics saved) when any of the three is tracked.
    pub(super) fn group_norm_silu<B: Backend, C: CheckpointStrategy>(
        kernels: GroupNormSilu<B>,
        x: Tensor<Autodiff<B, C>, 4>,
        gamma: Tensor<Autodiff<B, C>, 1>,
        beta: Tensor<Autodiff<B, C>, 1>,
        groups: usize,
        eps: f64,
    ) -> Tensor<Autodiff<B, C>, 4> {
        let forward = kernels.forward;
        let (xp, gp, bp) = (
            x.into_primitive().tensor(),
            gamma.into_primitive().tensor(),
            beta.into_primitive().tensor(),
        );
        let nodes = [xp.node.clone(), gp.node.clone(), bp.node.clone()];
        let xi = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(xp.primitive));
        let gi = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(gp.primitive));
        let bi = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(bp.primitive));
        let out = match Step(kernels).prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, stats) = forward(xi.clone(), gi.clone(), bi.clone(), groups, eps);
                let saved = GroupNormSiluSaved {
                    x: xi,
                    gamma: gi,
                    beta: bi,
                    stats,
                    groups,
                };
                prep.finish(saved, y.into_primitive().tensor())
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(forward(xi, gi, bi, groups, eps).0.into_primitive().tensor())
            }
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    /// The backward step of `x · w_tᵀ` with the weight gradient split into `chunks` row blocks.
    #[derive(Debug)]
    struct SplitLinear;

    impl<B: Backend> Backward<B, 2> for SplitLinear {
        type State = (Tensor<B, 2>, Tensor<B, 2>, usize);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let dy = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
            let (x, w_t, chunks) = ops.state;
            let [px, pw] = ops.parents;
            if let Some(node) = pw {
                let ([rows, n], k) = (dy.dims(), x.dims()[1]);
                let r = rows / chunks;
                let dw = dy
                    .clone()
                    .reshape([chunks, r, n])
                    .swap_dims(1, 2)
                    .matmul(x.reshape([chunks, r, k]))
                    .sum_dim(0)
                    .reshape([n, k]);
                grads.register::<B>(node.id, dw.into_primitive().tensor());
            }
            if let Some(node) = px {
                grads.register::<B>(node.id, dy.matmul(w_t).into_primitive().tensor());
            }
        }
    }

    /// `x [rows, k] · w_tᵀ` on the inner tensors, recorded with [`SplitLinear`]'s backward
    /// (`chunks` divides `rows`; the caller checks).
    pub(crate) fn linear_t<B: Backend, C: CheckpointStrategy>(
        x: Tensor<Autodiff<B, C>, 2>,
        w_t: Tensor<Autodiff<B, C>, 2>,
        chunks: usize,
    ) -> Tensor<Autodiff<B, C>, 2> {
        let [xp, wp] = [x, w_t].map(|t| t.into_primitive().tensor());
        let nodes = [xp.node.clone(), wp.node.clone()];
        let [xi, wi] = [xp, wp].map(|t| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t.primitive)));
        let y = xi
            .clone()
            .matmul(wi.clone().transpose())
            .into_primitive()
            .tensor();
        let out = match SplitLinear.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((xi, wi, chunks), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    /// The backward step of a two-input operation of [`TrainOp`].
    struct Pair<B: Backend>(TrainOp<B>);

    impl<B: Backend> std::fmt::Debug for Pair<B> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("TrainOp")
        }
    }

    impl<B: Backend> Backward<B, 2> for Pair<B> {
        type State = TrainSaved<B>;

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let dy = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
            let g = (self.0.backward)(ops.state, dy);
            for (parent, grad) in ops.parents.into_iter().zip(g) {
                if let (Some(node), Some(grad)) = (parent, grad) {
                    grads.register::<B>(node.id, grad.into_primitive().tensor());
                }
            }
        }
    }

    /// Runs `op`'s forward function on the inner tensors of `a`, `b` and records the step (both
    /// inputs saved) when either is tracked.
    pub(super) fn pair<B: Backend, C: CheckpointStrategy>(
        op: TrainOp<B>,
        a: Tensor<Autodiff<B, C>, 2>,
        b: Tensor<Autodiff<B, C>, 2>,
        eps: f64,
    ) -> Tensor<Autodiff<B, C>, 2> {
        let [ap, bp] = [a, b].map(|t| t.into_primitive().tensor());
        let nodes = [ap.node.clone(), bp.node.clone()];
        let [ai, bi] = [ap, bp].map(|t| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t.primitive)));
        let out = match Pair(op).prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (y, saved) = (op.forward)(ai, bi, eps);
                prep.finish(saved, y.into_primitive().tensor())
            }
            OpsKind::UnTracked(prep) => prep.finish((op.forward)(ai, bi, eps).0.into_primitive().tensor()),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    /// The backward step of causal attention: `B`'s backward function.
    struct Causal<B: Backend>(CausalAttention<B>);

    impl<B: Backend> std::fmt::Debug for Causal<B> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("CausalAttention")
        }
    }

    impl<B: Backend> Backward<B, 3> for Causal<B> {
        type State = CausalSaved<B>;

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let dout = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(grads.consume::<B>(&ops.node)));
            let g = (self.0.backward)(ops.state, dout);
            for (parent, grad) in ops.parents.into_iter().zip(g) {
                if let Some(node) = parent {
                    grads.register::<B>(node.id, grad.into_primitive().tensor());
                }
            }
        }
    }

    /// Runs the forward function on the inner tensors in `chunks` query chunks and records the
    /// step (inputs and attention weights saved) when any of `q`, `k`, `v` is tracked.
    pub(super) fn causal_attention<B: Backend, C: CheckpointStrategy>(
        kernels: CausalAttention<B>,
        q: Tensor<Autodiff<B, C>, 4>,
        k: Tensor<Autodiff<B, C>, 4>,
        v: Tensor<Autodiff<B, C>, 4>,
        chunks: usize,
    ) -> Tensor<Autodiff<B, C>, 4> {
        let [qp, kp, vp] = [q, k, v].map(|t| t.into_primitive().tensor());
        let nodes = [qp.node.clone(), kp.node.clone(), vp.node.clone()];
        let [qi, ki, vi] =
            [qp, kp, vp].map(|t| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t.primitive)));
        let out = match Causal(kernels).prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, saved) = (kernels.forward)(qi, ki, vi, chunks);
                prep.finish(saved, out.into_primitive().tensor())
            }
            OpsKind::UnTracked(prep) => {
                prep.finish((kernels.forward)(qi, ki, vi, chunks).0.into_primitive().tensor())
            }
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}

#[cfg(feature = "ndarray")]
#[cfg_attr(docsrs, doc(cfg(feature = "ndarray")))]
impl<E, I, Q> ArBackend for burn_ndarray::NdArray<E, I, Q>
where
    E: burn_ndarray::FloatNdArrayElement,
    I: burn_ndarray::IntNdArrayElement,
    Q: burn_ndarray::QuantElement,
    burn_ndarray::NdArrayTensor: From<burn_ndarray::SharedArray<E>> + From<burn_ndarray::SharedArray<I>>,
{
}

#[cfg(feature = "cubecl")]
#[cfg_attr(docsrs, doc(cfg(any(feature = "wgpu", feature = "cuda"))))]
impl<R, F, I, BT> ArBackend for burn_cubecl::CubeBackend<R, F, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::element::BoolElement,
{
    fn nearest_code_kernel(
        args: &crate::backend::nearest::NearestArgs<Self>,
    ) -> Option<burn::tensor::Tensor<Self, 1, burn::tensor::Int>> {
        Some(crate::backend::nearest::run_kernel(args))
    }

    fn decoder_kernels() -> Option<crate::backend::DecoderKernels<Self>> {
        Some(crate::backend::decoder_kernels())
    }

    fn group_norm_silu_kernels() -> Option<crate::backend::GroupNormSilu<Self>> {
        Some(crate::backend::group_norm_silu_kernels())
    }

    fn causal_attention_kernels() -> Option<crate::backend::CausalAttention<Self>> {
        Some(crate::backend::causal_attention_kernels())
    }

    fn training_kernels() -> Option<crate::backend::TrainKernels<Self>> {
        Some(crate::backend::training_kernels())
    }

    fn adamw_update(
        p: burn::tensor::Tensor<Self, 1>,
        g: burn::tensor::Tensor<Self, 1>,
        moments: Option<(burn::tensor::Tensor<Self, 1>, burn::tensor::Tensor<Self, 1>)>,
        scalars: AdamwScalars,
    ) -> Option<[burn::tensor::Tensor<Self, 1>; 3]> {
        let same = moments
            .as_ref()
            .is_none_or(|(m, v)| m.dims() == p.dims() && v.dims() == p.dims());
        (same && g.dims() == p.dims()).then(|| adamw::update(p, g, moments, scalars))
    }

    /// Inference (prefill, teacher-forced scoring): the forward kernels alone, the attention
    /// weights dropped. Built with Burn's tuner (`autotune`), `None`: Burn's tuned `attention`.
    fn causal_attention(
        q: burn::tensor::Tensor<Self, 4>,
        k: burn::tensor::Tensor<Self, 4>,
        v: burn::tensor::Tensor<Self, 4>,
        chunks: Option<usize>,
    ) -> Option<burn::tensor::Tensor<Self, 4>> {
        let chunks = causal_shapes(&q, &k, &v, chunks)?;
        if cfg!(feature = "autotune") {
            return None;
        }
        Some((crate::backend::causal_attention_kernels::<R, F, I, BT>().forward)(q, k, v, chunks).0)
    }

    /// Enough blocks for ~256 output tiles of 64 × 64 in all, each block at least 1,024 rows:
    /// the largest divisor of `rows` up to that (the blocks are equal).
    fn weight_grad_chunks(rows: usize, n: usize, k: usize) -> usize {
        let tiles = n.div_ceil(64) * k.div_ceil(64);
        let most = 256usize.div_ceil(tiles).min(rows / 1024).clamp(1, 32);
        (1..=most).rev().find(|s| rows.is_multiple_of(*s)).unwrap_or(1)
    }
}

/// The routes follow the impls: any element types of a CubeCL backend and its `Autodiff`
/// wrapper get the nearest-code kernel, `NdArray` (and its wrapper) the tensor-op search; the
/// decoder kernels only on the CubeCL backend itself.
#[cfg(all(test, feature = "wgpu", feature = "ndarray"))]
mod wgpu_routes {
    use burn::backend::{Autodiff, NdArray, Wgpu};
    use burn::tensor::Tensor;

    use super::ArBackend;
    use crate::decode::{Codebook, Metric};

    /// Wgpu with other integer and bool element types than `burn::backend::Wgpu`'s.
    type Other = burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i64, u8>;

    /// Whether `B`'s nearest-code search ran a kernel (and then that it found the right code).
    fn routed<B: ArBackend>(device: &B::Device) -> bool {
        let codes = Tensor::<B, 2>::from_floats([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]], device);
        let book = Codebook::new(codes, Metric::SquaredL2).unwrap();
        let q = Tensor::<B, 2>::from_floats([[0.9, 0.8], [2.0, 0.1]], device);
        match crate::decode::kernel_dispatch(q, &book) {
            Ok(ids) => {
                assert_eq!(ids.into_data().iter::<i64>().collect::<Vec<_>>(), vec![1, 2]);
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn kernel_routes_follow_the_backend_impls() {
        let (gpu, cpu) = (Default::default(), Default::default());
        assert!(routed::<Wgpu>(&gpu));
        assert!(routed::<Other>(&gpu));
        assert!(routed::<Autodiff<Other>>(&gpu));
        assert!(!routed::<NdArray>(&cpu));
        assert!(!routed::<Autodiff<NdArray>>(&cpu));
        assert!(<Wgpu>::decoder_kernels().is_some() && Other::decoder_kernels().is_some());
        assert!(<Autodiff<Wgpu>>::decoder_kernels().is_none());
        assert!(NdArray::<f32>::decoder_kernels().is_none());
    }
}

/// The split weight gradient against Burn's product under `Autodiff`: output and both gradients.
#[cfg(all(test, feature = "wgpu"))]
mod split_linear {
    use burn::backend::{Autodiff, Wgpu};
    use burn::tensor::{Distribution, Tensor};

    use super::ArBackend;

    type Ad = Autodiff<Wgpu>;

    fn host(t: Tensor<Wgpu, 2>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    #[test]
    fn split_weight_gradient_matches_burn_wgpu() {
        let device = Default::default();
        let dist = Distribution::Normal(0.0, 1.0);
        let (x, w) = (
            Tensor::<Wgpu, 2>::random([48, 24], dist, &device),
            Tensor::<Wgpu, 2>::random([40, 24], dist, &device),
        );
        let up = Tensor::<Ad, 2>::random([48, 40], dist, &device);
        let run = |chunks: Option<usize>| {
            let (x, w) = (
                Tensor::<Ad, 2>::from_inner(x.clone()).require_grad(),
                Tensor::<Ad, 2>::from_inner(w.clone()).require_grad(),
            );
            let y = match chunks {
                Some(c) => super::recorded::linear_t(x.clone(), w.clone(), c),
                None => x.clone().matmul(w.clone().transpose()),
            };
            let grads = (y.clone() * up.clone()).sum().backward();
            [
                host(y.inner()),
                host(x.grad(&grads).unwrap()),
                host(w.grad(&grads).unwrap()),
            ]
        };
        let plain = run(None);
        for chunks in [1, 4, 6] {
            for (what, (a, e)) in ["y", "dx", "dw"].iter().zip(run(Some(chunks)).iter().zip(&plain)) {
                let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
                let diff = a.iter().zip(e).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                assert!(
                    diff <= 1e-5 * scale,
                    "{what} with {chunks} blocks: {diff} of {scale}"
                );
            }
        }
        // the small backbone's projections split 16 ways; short or prime-length inputs not
        assert_eq!(<Wgpu>::weight_grad_chunks(24_560, 256, 256), 16);
        assert_eq!(<Wgpu>::weight_grad_chunks(1_000, 256, 256), 1);
        assert_eq!(<Wgpu>::weight_grad_chunks(4_099, 256, 256), 1);
        assert_eq!(<Ad>::weight_grad_chunks(24_560, 256, 256), 1);
    }
}
