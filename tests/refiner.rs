//! The built-in `TransformerRefiner`: identity at init, learns, validates its input.

mod common;

use ar_refine::{cosine_loss, Error, PositionEncoding, Refiner, TokenGrid, TransformerRefinerConfig};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use common::{tensor, to_vec, uniform_vec, SplitMix64};

fn config(d: usize, position: PositionEncoding) -> TransformerRefinerConfig {
    TransformerRefinerConfig::new(d)
        .with_d_model(32)
        .with_n_heads(4)
        .with_n_layers(2)
        .with_position(position)
        .with_max_grid(8)
}

fn identity_at_init<B: Backend>(device: &B::Device) {
    let mut rng = SplitMix64::new(4);
    for position in [PositionEncoding::Learned, PositionEncoding::Sinusoidal] {
        let refiner = config(6, position).init::<B>(device).unwrap();
        let e = uniform_vec(&mut rng, 2 * 12 * 6);
        let out = refiner
            .refine(
                tensor::<B, 3>(e.clone(), [2, 12, 6], device),
                TokenGrid::new(3, 4),
            )
            .unwrap();
        assert_eq!(out.dims(), [2, 12, 6]);
        assert_eq!(to_vec(out), e, "{position:?}");
    }
}

fn changes_after_one_step<B: AutodiffBackend>(device: &B::Device) {
    let mut rng = SplitMix64::new(5);
    let grid = TokenGrid::new(4, 4);
    for position in [PositionEncoding::Learned, PositionEncoding::Sinusoidal] {
        let mut refiner = config(8, position).init::<B>(device).unwrap();
        let e = tensor::<B, 3>(uniform_vec(&mut rng, 2 * 16 * 8), [2, 16, 8], device);
        let target = tensor::<B, 3>(uniform_vec(&mut rng, 2 * 16 * 8), [2, 16, 8], device);
        let before = cosine_loss(refiner.refine(e.clone(), grid).unwrap(), target.clone(), None).unwrap();
        let before_val = to_vec(before.clone())[0];
        let grads = GradientsParams::from_grads(before.backward(), &refiner);
        let mut opt = AdamWConfig::new().init();
        refiner = opt.step(1e-2, refiner, grads);
        let after = refiner.valid().refine(e.clone().inner(), grid).unwrap();
        let moved: f32 = to_vec(after.clone() - e.clone().inner())
            .iter()
            .map(|v| v.abs())
            .sum();
        assert!(moved > 1e-3, "{position:?}: refiner did not move ({moved})");
        let after_loss = to_vec(cosine_loss(after, target.inner(), None).unwrap())[0];
        assert!(
            after_loss < before_val,
            "{position:?}: loss {before_val} -> {after_loss}"
        );
    }
}

fn rejects_bad_input<B: Backend>(device: &B::Device) {
    let refiner = config(4, PositionEncoding::Learned).init::<B>(device).unwrap();
    let e = tensor::<B, 3>(vec![0.0; 16 * 4], [1, 16, 4], device);
    // n does not match the grid.
    let err = refiner.refine(e.clone(), TokenGrid::new(3, 5)).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    // Grid larger than the learned tables.
    let big = tensor::<B, 3>(vec![0.0; 9 * 4 * 4], [1, 36, 4], device);
    let err = refiner.refine(big, TokenGrid::new(9, 4)).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    // Wrong code dimension.
    let wrong = tensor::<B, 3>(vec![0.0; 16 * 5], [1, 16, 5], device);
    assert!(matches!(
        refiner.refine(wrong, TokenGrid::new(4, 4)),
        Err(Error::Shape { .. })
    ));
    // Invalid configurations.
    for cfg in [
        TransformerRefinerConfig::new(4).with_d_model(30).with_n_heads(4),
        TransformerRefinerConfig::new(0),
        TransformerRefinerConfig::new(4).with_dropout(1.0),
        TransformerRefinerConfig::new(4)
            .with_d_model(6)
            .with_n_heads(2)
            .with_position(PositionEncoding::Sinusoidal),
    ] {
        assert!(matches!(cfg.init::<B>(device), Err(Error::Config(_))));
    }
}

fn config_round_trips_through_json<B: Backend>(_device: &B::Device) {
    let cfg = config(64, PositionEncoding::Sinusoidal).with_dropout(0.1);
    let json = serde_json::to_string(&cfg).unwrap();
    let back: TransformerRefinerConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
}

backend_tests!(
    identity_at_init,
    rejects_bad_input,
    config_round_trips_through_json
);
autodiff_tests!(changes_after_one_step);
