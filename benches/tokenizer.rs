//! CPU (ndarray) throughput of the VQGAN tokenizer at LVM's full width (open-MUSE
//! `vqgan-f16-8192-laion` structure: 256×256 → 16×16 tokens, ~146 M parameters with random
//! weights): encode (image → ids) and decode (ids → image) of one image and of a batch of 4, so
//! that per-image cost and batching are compared in the same run.
//!
//! `cargo bench --bench tokenizer` (slow: seconds per iteration on 2 cores)

use ar_refine::tokenizer::{Vqgan, VqganConfig};
use ar_refine::Tokenizer;
use burn::backend::NdArray;
use burn::tensor::{Distribution, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

type B = NdArray;

fn bench(c: &mut Criterion) {
    let device = Default::default();
    let vq = Vqgan::<B>::new(VqganConfig::lvm(), &device).unwrap();
    for batch in [1usize, 4] {
        let images = Tensor::<B, 4>::random([batch, 3, 256, 256], Distribution::Uniform(0.0, 1.0), &device);
        let ids = vq.encode(images.clone()).unwrap();
        let mut g = c.benchmark_group(format!("vqgan_lvm_cpu_batch{batch}"));
        g.sample_size(10);
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function("encode", |b| {
            b.iter(|| vq.encode(images.clone()).unwrap().into_data())
        });
        g.bench_function("decode", |b| {
            b.iter(|| vq.decode(ids.clone()).unwrap().into_data())
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
