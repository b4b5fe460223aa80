//! AdamW with each parameter tensor's update in one kernel (issue [gpu-speed] item 5).
//!
//! Burn 0.21's `AdamW` updates a parameter in ~15 tensor operations (two moments, their bias
//! corrections, square root, quotient, decay, step), each its own launch: for the small
//! backbone's 57 parameter tensors ~850 launches, ~8.8 ms of an 81 ms step on an H200, ~2.4 ms
//! with the kernel (BENCHMARKS.md run 10). [`FusedAdamW`] keeps Burn's
//! algorithm, configuration defaults and state (`AdamWState`, so checkpoints written by either
//! load in the other) and on a CubeCL backend does the whole update of one tensor in one kernel;
//! on other backends, and with `AR_REFINE_FUSED=0`, it is Burn's `AdamW`.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
#[cfg(feature = "cubecl")]
use burn::optim::AdaptiveMomentumState;
use burn::optim::{AdamW, AdamWConfig, AdamWState, LearningRate, SimpleOptimizer};
use burn::tensor::Tensor;

use crate::backend::{ArAutodiffBackend, ArBackend};

/// AdamW (decoupled weight decay; Loshchilov & Hutter, 2019) as Burn's `AdamWConfig` builds it
/// without AMSGrad or cautious decay (`ε = 1e-5`), each parameter tensor's update one kernel on
/// a CubeCL backend; what the crate's training loops use.
///
/// ```
/// use ar_refine::train::FusedAdamW;
/// use burn::backend::{Autodiff, NdArray};
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::{GradientsParams, Optimizer};
/// use burn::tensor::Tensor;
/// type A = Autodiff<NdArray>;
/// let device = Default::default();
/// let model = LinearConfig::new(4, 2).init::<A>(&device);
/// let mut optim = FusedAdamW::init::<A, Linear<A>>(0.9, 0.999, 0.01);
/// let loss = model.forward(Tensor::<A, 2>::ones([3, 4], &device)).sum();
/// let grads = GradientsParams::from_grads(loss.backward(), &model);
/// let model = optim.step(1e-3, model, grads);
/// assert_eq!(model.weight.dims(), [4, 2]);
/// ```
#[derive(Clone)]
#[cfg_attr(not(feature = "cubecl"), allow(dead_code))]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    weight_decay: f32,
    /// Burn's optimizer with the same settings: the path where the kernel does not run.
    burn: AdamW,
}

/// Burn's `AdamWConfig` default `ε`.
const EPSILON: f32 = 1e-5;

impl FusedAdamW {
    /// An optimizer over the parameters of `M` with moments `β₁`, `β₂` and decoupled weight decay.
    pub fn init<B: ArAutodiffBackend, M: AutodiffModule<B>>(
        beta_1: f32,
        beta_2: f32,
        weight_decay: f32,
    ) -> OptimizerAdaptor<Self, M, B> {
        let burn = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(EPSILON)
            .with_weight_decay(weight_decay)
            .build();
        OptimizerAdaptor::from(Self {
            beta_1,
            beta_2,
            weight_decay,
            burn,
        })
    }
}

impl<B: ArBackend> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        #[cfg(feature = "cubecl")]
        if crate::backend::fused_enabled() {
            let time = state.as_ref().map_or(1, |s| s.momentum.time + 1);
            let decay = lr * self.weight_decay as f64;
            let s = crate::backend::AdamwScalars {
                beta_1: self.beta_1,
                beta_2: self.beta_2,
                bias_1: 1f32 - self.beta_1.powi(time as i32),
                bias_2: 1f32 - self.beta_2.powi(time as i32),
                epsilon: EPSILON,
                lr: lr as f32,
                keep: if decay == 0.0 { 1.0 } else { (1.0 - decay) as f32 },
            };
            let shape = tensor.shape();
            let flat = |t: Tensor<B, D>| t.reshape([shape.num_elements()]);
            let moments = state.as_ref().map(|s| {
                let m = &s.momentum;
                (flat(m.moment_1.clone()), flat(m.moment_2.clone()))
            });
            if let Some([p, m, v]) = B::adamw_update(flat(tensor.clone()), flat(grad.clone()), moments, s) {
                let [p, m, v] = [p, m, v].map(|t| t.reshape(shape.clone()));
                let momentum = AdaptiveMomentumState::new(time, m, v);
                return (p, Some(AdamWState::new(momentum)));
            }
        }
        self.burn.step(lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <AdamW as SimpleOptimizer<B>>::to_device(state, device)
    }
}

/// Three steps of [`FusedAdamW`] (the kernel on wgpu) against Burn's `AdamW` from the same
/// weights and gradients: parameters and moments agree, with and without weight decay, and the
/// optimizer's record loads as Burn's (checkpoints stay interchangeable).
#[cfg(all(test, feature = "wgpu"))]
mod wgpu_tests {
    use burn::backend::{Autodiff, Wgpu};
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
    use burn::tensor::{Distribution, Tensor};

    use super::FusedAdamW;

    type A = Autodiff<Wgpu>;

    fn weights(m: &Linear<A>) -> Vec<f32> {
        let mut v: Vec<f32> = m.weight.val().into_data().to_vec().unwrap();
        v.extend(
            m.bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        );
        v
    }

    #[test]
    fn fused_adamw_matches_burn_wgpu() {
        let device = Default::default();
        for (beta_1, beta_2, decay) in [(0.9, 0.999, 0.1), (0.5, 0.9, 0.0)] {
            let start = LinearConfig::new(37, 5).init::<A>(&device);
            weights(&start); // Burn initialises parameters lazily: once, before the copies
            let xs: Vec<_> = (0..3)
                .map(|_| Tensor::<A, 2>::random([4, 37], Distribution::Normal(0.0, 1.0), &device))
                .collect();
            let mut ours = FusedAdamW::init::<A, Linear<A>>(beta_1, beta_2, decay);
            let mut burn = AdamWConfig::new()
                .with_beta_1(beta_1)
                .with_beta_2(beta_2)
                .with_weight_decay(decay)
                .init::<A, Linear<A>>();
            let (mut a, mut b) = (start.clone(), start);
            for (step, x) in xs.iter().enumerate() {
                let lr = 1e-2 / (step + 1) as f64;
                let ga =
                    GradientsParams::from_grads(a.forward(x.clone()).powi_scalar(2).sum().backward(), &a);
                let gb =
                    GradientsParams::from_grads(b.forward(x.clone()).powi_scalar(2).sum().backward(), &b);
                a = ours.step(lr, a, ga);
                b = burn.step(lr, b, gb);
                let (wa, wb) = (weights(&a), weights(&b));
                let scale = wb.iter().fold(0f32, |m, v| m.max(v.abs()));
                let diff = wa.iter().zip(&wb).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                assert!(
                    diff <= 1e-6 * scale,
                    "step {step}, β = ({beta_1}, {beta_2}), decay {decay}: {diff} of {scale}"
                );
            }
            // the moments, through the records: ours loads as Burn's optimizer state
            let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
            let bytes = recorder.record(ours.to_record(), ()).unwrap();
            let loaded = burn.clone().load_record(recorder.load(bytes, &device).unwrap());
            let x = Tensor::<A, 2>::random([4, 37], Distribution::Normal(0.0, 1.0), &device);
            let grads = |m: &Linear<A>| GradientsParams::from_grads(m.forward(x.clone()).sum().backward(), m);
            let (mut l, mut o) = (loaded, ours);
            let (wl, wo) = (
                weights(&l.step(1e-2, a.clone(), grads(&a))),
                weights(&o.step(1e-2, a.clone(), grads(&a))),
            );
            let diff = wl.iter().zip(&wo).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(diff <= 1e-6, "after reloading into Burn's AdamW: {diff}");
        }
    }
}
