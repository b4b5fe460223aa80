//! The LLaMA decoder's CubeCL kernels: fused decode-step kernels ([`fused`]), the matrix-unit
//! skinny projection ([`mma`]), chunked causal attention for prefill ([`causal`]) and the
//! training kernels with their backward passes ([`training`]).

pub(crate) mod causal;
pub(crate) mod fused;
mod mma;
pub(crate) mod training;

pub(crate) use causal::{
    default_chunks as causal_chunks, kernels as causal_attention_kernels, CausalAttention, CausalSaved,
};
pub(crate) use fused::{decoder_kernels, DecoderKernels};
pub(crate) use training::{kernels as training_kernels, TrainKernels, TrainOp, TrainSaved};

/// RoPE tables `[n, hd]` (cos, sin) for positions `start..start + n`, computed on the host in
/// f64: angle `pos · theta^(−2 (d mod hd/2) / hd)`, the two halves alike (the rotate-half
/// layout of HF's LLaMA). The kernels' tests use them as their reference.
#[cfg(all(test, feature = "wgpu"))]
pub(crate) fn host_rope_tables<B: burn::tensor::backend::Backend>(
    start: usize,
    n: usize,
    hd: usize,
    theta: f64,
    device: &B::Device,
) -> (burn::tensor::Tensor<B, 2>, burn::tensor::Tensor<B, 2>) {
    let half = hd / 2;
    let angle = |i: usize, d: usize| (start + i) as f64 / theta.powf((2 * (d % half)) as f64 / hd as f64);
    let table = |f: fn(f64) -> f64| {
        let v: Vec<f32> = (0..n * hd).map(|j| f(angle(j / hd, j % hd)) as f32).collect();
        burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(v, [n, hd]), device)
    };
    (table(f64::cos), table(f64::sin))
}
