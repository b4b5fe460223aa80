//! CPU (ndarray) costs of the refinement step for one LVM-sized image (256 tokens, D = 64,
//! K = 8192): the refiner forward pass and nearest-code decoding, the latter at two memory
//! budgets so that the chunked search is compared with a single full `[256, 8192]` block in the
//! same run.
//!
//! `cargo bench --bench refine`

use ar_refine::{Codebook, Metric, Refiner, TokenGrid, TransformerRefinerConfig};
use burn::backend::NdArray;
use burn::tensor::{Distribution, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};

type B = NdArray;

fn bench(c: &mut Criterion) {
    let device = Default::default();
    let grid = TokenGrid::new(16, 16);
    let e = Tensor::<B, 3>::random([1, 256, 64], Distribution::Normal(0.0, 1.0), &device);
    let codes = Tensor::<B, 2>::random([8192, 64], Distribution::Normal(0.0, 1.0), &device);

    let mut g = c.benchmark_group("nearest_codes_256x8192x64");
    g.sample_size(20);
    for (label, budget) in [
        ("one_block", usize::MAX / 2),
        ("chunks_of_32_rows", 32 * 8192 * 12),
    ] {
        let book = Codebook::new(codes.clone(), Metric::SquaredL2)
            .unwrap()
            .with_memory_budget(budget);
        g.bench_function(label, |b| b.iter(|| book.nearest(e.clone()).unwrap().into_data()));
    }
    g.finish();

    let refiner = TransformerRefinerConfig::new(64).init::<B>(&device).unwrap();
    let mut g = c.benchmark_group("refiner_forward_1x256x64");
    g.sample_size(20);
    g.bench_function("d256_l4", |b| {
        b.iter(|| refiner.refine_embeddings(e.clone(), grid).unwrap().into_data())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
