//! Gradient all-reduce for data-parallel training, through Burn's collective operations
//! (`burn-collective`: one peer per device, tree all-reduce between the devices of a host).
//!
//! Every replica flattens its gradients (in the module's parameter order, the same on every
//! replica) into one vector `[P + E]` with `E` extra values appended (the scaled loss, a failure
//! flag), sums it across the peers, and splits it back. One collective call per step instead of
//! one per parameter tensor.

//!
//! Without the `multi-device` feature, [`Peer`] has no values: joining a collective is a
//! configuration error that names the feature.

use std::sync::{Mutex, MutexGuard};

#[cfg(not(feature = "multi-device"))]
pub(crate) use disabled::Peer;
#[cfg(feature = "multi-device")]
pub(crate) use enabled::Peer;

/// One data-parallel run per process at a time: Burn's collective server is global per backend
/// type, so two runs (e.g. two tests) must not register peers at once.
static RUN: Mutex<()> = Mutex::new(());

/// Holds the process-wide data-parallel lock for the duration of a run.
pub(crate) fn exclusive_run() -> MutexGuard<'static, ()> {
    RUN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(feature = "multi-device")]
mod enabled {
    use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
    use burn::optim::GradientsParams;
    use burn::tensor::{Shape, Tensor, TensorPrimitive};

    use crate::backend::{ArAutodiffBackend, ArBackend};
    use burn_collective::{
        all_reduce, finish_collective, register, CollectiveConfig, PeerId, ReduceOperation,
    };

    use crate::checks::read_f32;
    use crate::error::{Error, Result};

    /// This replica's membership in the collective of `peers` devices; dropping it leaves the
    /// collective.
    pub(crate) struct Peer {
        rank: usize,
        peers: usize,
        leave: fn(PeerId),
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            (self.leave)(PeerId::from(self.rank));
        }
    }

    impl Peer {
        /// Registers replica `rank` of `peers` on `device` (blocks until every peer registered).
        pub(crate) fn join<B: ArBackend>(rank: usize, peers: usize, device: &B::Device) -> Result<Self> {
            let config = CollectiveConfig::default().with_num_devices(peers);
            register::<B>(PeerId::from(rank), device.clone(), config).map_err(|e| Error::Parallel {
                rank,
                reason: format!("registering with Burn's collective: {e:?}"),
            })?;
            Ok(Self {
                rank,
                peers,
                // the run's result is decided by then; a failure here cannot lose anything
                leave: |id| drop(finish_collective::<B>(id)),
            })
        }

        /// Number of replicas.
        pub(crate) fn peers(&self) -> usize {
            self.peers
        }

        /// The element-wise sum of `flat` `[n]` over all replicas (every replica gets the same sum).
        fn sum<B: ArBackend>(&self, flat: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
            let out = all_reduce::<B>(
                PeerId::from(self.rank),
                flat.into_primitive().tensor(),
                ReduceOperation::Sum,
            )
            .map_err(|e| Error::Parallel {
                rank: self.rank,
                reason: format!("gradient all-reduce: {e:?}"),
            })?;
            Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
        }

        /// [`Peer::sum`] read back to the host.
        pub(crate) fn sum_values<B: ArBackend>(&self, values: Tensor<B, 1>) -> Result<Vec<f32>> {
            read_f32(self.sum(values)?)
        }

        /// Sums this replica's gradients of `model` with every other replica's, together with
        /// `extras` `[E]` (per-replica values such as the scaled loss and a failure flag). Returns the
        /// summed gradients (for the same parameters) and the summed extras.
        ///
        /// A parameter without a gradient here contributes zeros, so that every replica sends a
        /// vector of the same length; it stays without a gradient afterwards.
        pub(crate) fn sum_gradients<B: ArAutodiffBackend, M: AutodiffModule<B>>(
            &self,
            model: &M,
            grads: GradientsParams,
            extras: Tensor<B::InnerBackend, 1>,
        ) -> Result<(GradientsParams, Vec<f32>)> {
            let mut flatten = Flatten::<B> {
                grads,
                parts: Vec::new(),
                layout: Vec::new(),
            };
            model.visit(&mut flatten);
            let Flatten {
                mut grads,
                mut parts,
                layout,
            } = flatten;
            let e = extras.dims()[0];
            parts.push(extras);
            let summed = self.sum(Tensor::cat(parts, 0))?;
            let total: usize = layout.iter().map(|l| l.shape.num_elements()).sum();
            let extras = read_f32(summed.clone().slice(total..total + e))?;
            let mut offset = 0;
            let mut restore = Restore::<B> {
                grads: &mut grads,
                flat: summed,
                layout: layout.into_iter(),
                offset: &mut offset,
            };
            model.visit(&mut restore);
            Ok((grads, extras))
        }
    }

    /// Where one parameter's gradient lies in the flat vector.
    struct Slot {
        id: ParamId,
        shape: Shape,
        present: bool,
    }

    struct Flatten<B: ArAutodiffBackend> {
        grads: GradientsParams,
        parts: Vec<Tensor<B::InnerBackend, 1>>,
        layout: Vec<Slot>,
    }

    impl<B: ArAutodiffBackend> ModuleVisitor<B> for Flatten<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            let shape = value.shape();
            let (flat, present) = match self.grads.remove::<B::InnerBackend, D>(param.id) {
                Some(g) => (g.reshape([shape.num_elements()]), true),
                None => (Tensor::zeros([shape.num_elements()], &value.device()), false),
            };
            self.parts.push(flat);
            self.layout.push(Slot {
                id: param.id,
                shape,
                present,
            });
        }
    }

    struct Restore<'a, B: ArAutodiffBackend> {
        grads: &'a mut GradientsParams,
        flat: Tensor<B::InnerBackend, 1>,
        layout: std::vec::IntoIter<Slot>,
        offset: &'a mut usize,
    }

    impl<B: ArAutodiffBackend> ModuleVisitor<B> for Restore<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let Some(slot) = self.layout.next() else { return };
            let n = slot.shape.num_elements();
            let start = *self.offset;
            *self.offset += n;
            if slot.present && slot.id == param.id {
                let dims: [usize; D] = slot.shape.dims();
                let g = self.flat.clone().slice(start..start + n).reshape(dims);
                self.grads.register(param.id, g);
            }
        }
    }
}

#[cfg(not(feature = "multi-device"))]
mod disabled {
    use burn::module::AutodiffModule;
    use burn::optim::GradientsParams;
    use burn::tensor::Tensor;

    use crate::backend::{ArAutodiffBackend, ArBackend};

    use crate::error::{Error, Result};

    /// Uninhabited: this build cannot join a collective.
    pub(crate) enum Peer {}

    impl Peer {
        pub(crate) fn join<B: ArBackend>(_rank: usize, _peers: usize, _device: &B::Device) -> Result<Self> {
            Err(Error::Config(
                "training on several devices needs ar-refine's `multi-device` feature".into(),
            ))
        }

        pub(crate) fn peers(&self) -> usize {
            match *self {}
        }

        pub(crate) fn sum_values<B: ArBackend>(&self, _values: Tensor<B, 1>) -> Result<Vec<f32>> {
            match *self {}
        }

        pub(crate) fn sum_gradients<B: ArAutodiffBackend, M: AutodiffModule<B>>(
            &self,
            _model: &M,
            _grads: GradientsParams,
            _extras: Tensor<B::InnerBackend, 1>,
        ) -> Result<(GradientsParams, Vec<f32>)> {
            match *self {}
        }
    }
}
