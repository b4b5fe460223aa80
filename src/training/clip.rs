//! Global gradient-norm clipping (PyTorch's `clip_grad_norm_`).
//!
//! Burn's `GradientClippingConfig::Norm` clips every parameter tensor by its own norm; users of
//! PyTorch expect one norm over all parameters, which keeps the update direction.

use crate::backend::ArAutodiffBackend;
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::checks::read_f32;
use crate::error::{Error, Result};

struct SumSquares<'a, B: ArAutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: ArAutodiffBackend> ModuleVisitor<B> for SumSquares<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.powi_scalar(2).sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

struct Scale<'a, B: ArAutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: ArAutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Scales all gradients of `module` in `grads` so that their global L2 norm is at most
/// `max_norm`; returns the norm before clipping. A non-finite norm is [`Error::NonFinite`]
/// (the step should be skipped: the loss diverged).
pub fn clip_grad_norm<B: ArAutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> Result<f64> {
    let mut v = SumSquares::<B> { grads, total: None };
    module.visit(&mut v);
    let Some(total) = v.total else { return Ok(0.0) };
    let norm = (read_f32(total)?[0] as f64).sqrt();
    if !norm.is_finite() {
        return Err(Error::NonFinite {
            what: "gradient norm".into(),
        });
    }
    if norm > max_norm {
        let mut s = Scale::<B> {
            grads,
            factor: max_norm / (norm + 1e-6),
            _b: std::marker::PhantomData,
        };
        module.visit(&mut s);
    }
    Ok(norm)
}
