//! `cosine_loss` and `RefinementLoss`: values by hand, masks, gradients.

mod common;

use ar_refine::{cosine_loss, Error, RefinementLoss};
use burn::tensor::{backend::AutodiffBackend, backend::Backend, Bool, Tensor};
use common::{tensor, to_vec};

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f32 {
    to_vec(t)[0]
}

fn matches_hand_computed_values<B: Backend>(device: &B::Device) {
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
        RefinementLoss { mse_weight: 0.1 }
            .forward(pred, target, None)
            .unwrap(),
    );
    let expected = (per.iter().sum::<f32>() + 0.1 * mse.iter().sum::<f32>()) / 3.0;
    assert!((with_mse - expected).abs() < 1e-5, "{with_mse} vs {expected}");
}

fn zero_vectors_give_loss_one<B: Backend>(device: &B::Device) {
    let zero = tensor::<B, 3>(vec![0.0; 4], [1, 2, 2], device);
    let other = tensor::<B, 3>(vec![1.0, 2.0, 0.0, 0.0], [1, 2, 2], device);
    let loss = scalar(cosine_loss(zero, other, None).unwrap());
    assert!((loss - 1.0).abs() < 1e-6, "{loss}");
}

fn bad_input_is_an_error<B: Backend>(device: &B::Device) {
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
        RefinementLoss { mse_weight: -1.0 }.forward(a.clone(), a, None),
        Err(Error::Config(_))
    ));
}

fn gradients_are_right_and_finite<B: AutodiffBackend>(device: &B::Device) {
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

backend_tests!(
    matches_hand_computed_values,
    zero_vectors_give_loss_one,
    bad_input_is_an_error
);
autodiff_tests!(gradients_are_right_and_finite);
