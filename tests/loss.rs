//! `cosine_loss` and `RefinementLoss`: values by hand, masks, gradients.

mod common;

use ar_refine::{cosine_loss, Codebook, Error, Metric, RefineOutput, RefinementLoss};
use ar_refine::{ArAutodiffBackend, ArBackend};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::{tensor, to_vec};

fn scalar<B: ArBackend>(t: Tensor<B, 1>) -> f32 {
    to_vec(t)[0]
}

fn matches_hand_computed_values<B: ArBackend>(device: &B::Device) {
    // Token 1: cos((1,0),(1,1)) = 1/√2. Token 2: parallel, cos 1. Token 3: opposite, cos −1.
    let pred = tensor::<B, 3>(vec![1.0, 0.0, 0.0, 2.0, 3.0, 1.0], [1, 3, 2], device);
    let target = tensor::<B, 3>(vec![1.0, 1.0, 0.0, 5.0, -6.0, -2.0], [1, 3, 2], device);
    let per = [1.0 - 0.5f32.sqrt(), 0.0, 2.0];
    let loss = scalar(cosine_loss(pred.clone(), target.clone(), None).unwrap());
    assert!((loss - per.iter().sum::<f32>() / 3.0).abs() < 1e-6, "{loss}");

    let mask = Tensor::<B, 2, Bool>::from_bool([[true, false, true]].into(), device);
    let masked = scalar(cosine_loss(pred.clone(), target.clone(), Some(mask)).unwrap());
    assert!((masked - (per[0] + per[2]) / 2.0).abs() < 1e-6, "{masked}");

    let none = Tensor::<B, 2, Bool>::from_bool([[false, false, false]].into(), device);
    assert_eq!(
        scalar(cosine_loss(pred.clone(), target.clone(), Some(none)).unwrap()),
        0.0
    );

    // MSE term: squared distances per token / D: (0+1)/2, (0+9)/2, (81+9)/2.
    let mse = [0.5f32, 4.5, 45.0];
    let with_mse = scalar(
        RefinementLoss {
            mse_weight: 0.1,
            ..RefinementLoss::default()
        }
        .forward(pred, target, None)
        .unwrap(),
    );
    let expected = (per.iter().sum::<f32>() + 0.1 * mse.iter().sum::<f32>()) / 3.0;
    assert!((with_mse - expected).abs() < 1e-5, "{with_mse} vs {expected}");
}

fn zero_vectors_give_loss_one<B: ArBackend>(device: &B::Device) {
    let zero = tensor::<B, 3>(vec![0.0; 4], [1, 2, 2], device);
    let other = tensor::<B, 3>(vec![1.0, 2.0, 0.0, 0.0], [1, 2, 2], device);
    let loss = scalar(cosine_loss(zero, other, None).unwrap());
    assert!((loss - 1.0).abs() < 1e-6, "{loss}");
}

fn bad_input_is_an_error<B: ArBackend>(device: &B::Device) {
    let a = tensor::<B, 3>(vec![0.0; 6], [1, 3, 2], device);
    let b = tensor::<B, 3>(vec![0.0; 6], [1, 2, 3], device);
    assert!(matches!(
        cosine_loss(a.clone(), b, None),
        Err(Error::Shape { .. })
    ));
    let mask = Tensor::<B, 2, Bool>::from_bool([[true, true]].into(), device);
    assert!(matches!(
        cosine_loss(a.clone(), a.clone(), Some(mask)),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        RefinementLoss {
            mse_weight: -1.0,
            ..RefinementLoss::default()
        }
        .forward(a.clone(), a, None),
        Err(Error::Config(_))
    ));
}

fn gradients_are_right_and_finite<B: ArAutodiffBackend>(device: &B::Device) {
    // d/dp (1 − cos(p, t)) at p = (1, 0), t = (0, 1): −(t/(|p||t|) − cos · p/|p|²) = (0, −1).
    let p = tensor::<B, 3>(vec![1.0, 0.0], [1, 1, 2], device).require_grad();
    let t = tensor::<B, 3>(vec![0.0, 1.0], [1, 1, 2], device);
    let grads = cosine_loss(p.clone(), t, None).unwrap().backward();
    let g = to_vec(p.grad(&grads).unwrap());
    assert!((g[0] - 0.0).abs() < 1e-6 && (g[1] + 1.0).abs() < 1e-6, "{g:?}");

    // Zero prediction: gradient finite.
    let p = tensor::<B, 3>(vec![0.0, 0.0, 0.3, -0.2], [1, 2, 2], device).require_grad();
    let t = tensor::<B, 3>(vec![1.0, 1.0, 0.0, 0.0], [1, 2, 2], device);
    let grads = cosine_loss(p.clone(), t, None).unwrap().backward();
    let g = to_vec(p.grad(&grads).unwrap());
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
}

fn categorical_terms_match_hand_computed_values<B: ArBackend>(device: &B::Device) {
    // 3 codes in 2-D; one token whose truth is code 2 and whose backbone chose code 0.
    let book = Codebook::new(
        tensor::<B, 2>(vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [3, 2], device),
        Metric::SquaredL2,
    )
    .unwrap();
    let logits = [0.5f32, -1.0, 2.0];
    let out = RefineOutput {
        embeddings: tensor::<B, 3>(vec![1.0, 1.0], [1, 1, 2], device),
        logits: Some(tensor::<B, 3>(logits.to_vec(), [1, 1, 3], device)),
        wrong_logit: Some(tensor::<B, 2>(vec![0.3], [1, 1], device)),
    };
    let ids = |v: i64| Tensor::<B, 2, Int>::from_data(TensorData::new(vec![v], [1, 1]), device);
    let (own, truth) = (ids(0), ids(2));
    let lse = logits.iter().map(|l| l.exp()).sum::<f32>().ln();
    let ce = lse - logits[2];
    let loss = |l: RefinementLoss| scalar(l.prepare(&book).unwrap().forward(&out, &own, &truth).unwrap());
    let only_ce = RefinementLoss {
        cross_entropy: 1.0,
        ..RefinementLoss::none()
    };
    assert!((loss(only_ce) - ce).abs() < 1e-5);
    // BCE("wrong" = 1, z = 0.3) = ln(1 + e^-0.3)
    let bce = (1.0 + (-0.3f32).exp()).ln();
    let only_critic = RefinementLoss {
        critic: 2.0,
        ..RefinementLoss::none()
    };
    assert!((loss(only_critic) - 2.0 * bce).abs() < 1e-5);
    // the embedding (1, 1) equals code 2: the cosine term is 0; the sum adds the terms
    let all = RefinementLoss {
        cross_entropy: 1.0,
        critic: 2.0,
        ..RefinementLoss::default()
    };
    assert!((loss(all) - (ce + 2.0 * bce)).abs() < 1e-5);
    // soft targets over the truth's 2 nearest codes by cosine: code 2 itself and a tie of 0 and 1
    // (cos 1/√2 each; top-k keeps one of them): weights softmax(cos / T)
    let soft = RefinementLoss {
        cross_entropy: 1.0,
        soft_neighbours: 2,
        soft_temperature: 0.5,
        ..RefinementLoss::none()
    };
    let (w_self, w_other) = {
        let (a, b) = ((1.0f32 / 0.5).exp(), (0.5f32.sqrt() / 0.5).exp());
        (a / (a + b), b / (a + b))
    };
    let lp = |i: usize| logits[i] - lse;
    let v = loss(soft);
    let expect_0 = -(w_self * lp(2) + w_other * lp(0));
    let expect_1 = -(w_self * lp(2) + w_other * lp(1));
    assert!(
        (v - expect_0).abs() < 1e-4 || (v - expect_1).abs() < 1e-4,
        "{v} vs {expect_0} / {expect_1}"
    );
    // a term whose head the output lacks is a typed error; so are all-zero weights
    let no_logits = RefineOutput::embeddings(out.embeddings.clone());
    assert!(matches!(
        only_ce.prepare(&book).unwrap().forward(&no_logits, &own, &truth),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        RefinementLoss::none().prepare(&book),
        Err(Error::Config(_))
    ));
}

backend_tests!(
    categorical_terms_match_hand_computed_values,
    matches_hand_computed_values,
    zero_vectors_give_loss_one,
    bad_input_is_an_error
);
autodiff_tests!(gradients_are_right_and_finite);
