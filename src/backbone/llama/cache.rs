//! A preallocated key/value cache for incremental decoding.

use crate::backend::ArBackend;
use burn::tensor::Tensor;

use super::config::LlamaConfig;

/// One layer's keys and values, `[b, kv_heads, capacity, head_dim]` each, filled up to the
/// model's current length.
#[derive(Debug)]
pub(crate) struct LayerCache<B: ArBackend> {
    k: Option<Tensor<B, 4>>,
    v: Option<Tensor<B, 4>>,
}

impl<B: ArBackend> LayerCache<B> {
    /// Writes `k`, `v` (`[b, kv, n, hd]`) at positions `start..start + n` and returns views of
    /// positions `0..start + n`. The buffers are taken out and put back so that the write can
    /// happen in place.
    pub(crate) fn append(
        &mut self,
        start: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, kv, n, hd] = k.dims();
        let end = start + n;
        let write = |slot: &mut Option<Tensor<B, 4>>, new: Tensor<B, 4>| {
            let buf = slot.take().expect("cache buffer present between calls");
            let buf = buf.slice_assign([0..b, 0..kv, start..end, 0..hd], new);
            let view = buf.clone().slice([0..b, 0..kv, 0..end, 0..hd]);
            *slot = Some(buf);
            view
        };
        (write(&mut self.k, k), write(&mut self.v, v))
    }

    /// Takes the key and value buffers `[b, kv, capacity, hd]` out, for a kernel that writes
    /// them in place; [`LayerCache::restore`] puts them back.
    #[cfg(feature = "cubecl")]
    pub(crate) fn take(&mut self) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let k = self.k.take().expect("cache buffer present between calls");
        let v = self.v.take().expect("cache buffer present between calls");
        (k, v)
    }

    /// Puts the buffers back and returns views of positions `0..end`.
    #[cfg(feature = "cubecl")]
    pub(crate) fn restore(
        &mut self,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        end: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let view = |t: &Tensor<B, 4>| {
            let [b, kv, _, hd] = t.dims();
            t.clone().slice([0..b, 0..kv, 0..end, 0..hd])
        };
        let views = (view(&k), view(&v));
        self.k = Some(k);
        self.v = Some(v);
        views
    }
}

/// Keys and values of every layer for a batch of `b` sequences of up to `capacity` tokens.
///
/// Made by [`crate::backbone::Llama::new_cache`]; [`crate::backbone::Llama::forward_hidden`]
/// appends to it.
#[derive(Debug)]
pub struct KvCache<B: ArBackend> {
    pub(crate) layers: Vec<LayerCache<B>>,
    pub(crate) batch: usize,
    pub(crate) len: usize,
    pub(crate) capacity: usize,
}

impl<B: ArBackend> KvCache<B> {
    pub(crate) fn new(c: &LlamaConfig, batch: usize, capacity: usize, device: &B::Device) -> Self {
        let shape = [batch, c.kv_heads(), capacity, c.head_dim()];
        let layers = (0..c.num_hidden_layers)
            .map(|_| LayerCache {
                k: Some(Tensor::zeros(shape, device)),
                v: Some(Tensor::zeros(shape, device)),
            })
            .collect();
        Self {
            layers,
            batch,
            len: 0,
            capacity,
        }
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most tokens this cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every cached token (the buffers stay allocated).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}
