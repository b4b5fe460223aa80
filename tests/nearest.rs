//! `nearest_codes` against a brute-force f64 search, tie-aware.

mod common;

use ar_refine::ArBackend;
use ar_refine::{nearest_codes, Codebook, Error, Metric};
use burn::tensor::{Int, Tensor};
use common::{tensor, uniform_vec, widen, SplitMix64};

/// Tie-aware check of every query against brute force.
fn check(queries: &[f32], codes: &[f32], d: usize, metric: Metric, got: &[i64]) -> usize {
    common::check_ids(
        &widen(queries),
        &widen(codes),
        d,
        metric,
        got,
        1,
        &format!("{metric:?}"),
    )
}

fn ids<B: ArBackend>(t: Tensor<B, 2, Int>) -> Vec<i64> {
    t.into_data().iter::<i64>().collect()
}

fn agrees_on_random_shapes<B: ArBackend>(device: &B::Device) {
    let mut rng = SplitMix64::new(1);
    let mut flips = 0;
    let shapes = [
        (1, 1, 1),
        (1, 3, 4),
        (7, 1, 3),
        (7, 3, 1),
        (7, 97, 8),
        (300, 97, 64),
        (33, 512, 3),
        (4097, 257, 4),
    ];
    for (n, k, d) in shapes {
        for metric in [Metric::SquaredL2, Metric::Cosine] {
            let q = uniform_vec(&mut rng, n * d);
            let c = uniform_vec(&mut rng, k * d);
            // Budgets that force chunks of 1, 5 and all rows (n is not a multiple of 5).
            for rows in [1usize, 5, n] {
                let budget = rows * k * 12;
                let got = nearest_codes(
                    tensor::<B, 3>(q.clone(), [1, n, d], device),
                    tensor::<B, 2>(c.clone(), [k, d], device),
                    metric,
                    Some(budget),
                )
                .unwrap();
                assert_eq!(got.dims(), [1, n]);
                flips += check(&q, &c, d, metric, &ids(got));
                if n > 1000 {
                    break; // one chunking is enough for the big case
                }
            }
        }
    }
    println!("near-tie flips accepted: {flips}");
}

fn batch_dims_are_kept<B: ArBackend>(device: &B::Device) {
    let mut rng = SplitMix64::new(2);
    let (b, n, k, d) = (3, 5, 11, 6);
    let q = uniform_vec(&mut rng, b * n * d);
    let c = uniform_vec(&mut rng, k * d);
    let book = Codebook::new(tensor::<B, 2>(c.clone(), [k, d], device), Metric::SquaredL2).unwrap();
    let got = book
        .nearest(tensor::<B, 3>(q.clone(), [b, n, d], device))
        .unwrap();
    assert_eq!(got.dims(), [b, n]);
    check(&q, &c, d, Metric::SquaredL2, &ids(got));
}

fn planted_ties_give_lowest_index<B: ArBackend>(device: &B::Device) {
    let mut rng = SplitMix64::new(3);
    for metric in [Metric::SquaredL2, Metric::Cosine] {
        let (k, d) = (40, 8);
        let mut c = uniform_vec(&mut rng, k * d);
        // Rows 30..40 duplicate rows 5..15: every duplicated code appears first at the lower id.
        for j in 0..10 {
            let (src, dst) = ((5 + j) * d, (30 + j) * d);
            let row: Vec<f32> = c[src..src + d].to_vec();
            c[dst..dst + d].copy_from_slice(&row);
        }
        // Queries exactly on the duplicated codes (and, for cosine, scaled copies of them).
        let mut q = Vec::new();
        for j in 0..10 {
            let scale = if metric == Metric::Cosine { 2.5 } else { 1.0 };
            q.extend(c[(30 + j) * d..(31 + j) * d].iter().map(|v| v * scale));
        }
        let got = ids(nearest_codes(
            tensor::<B, 3>(q, [1, 10, d], device),
            tensor::<B, 2>(c, [k, d], device),
            metric,
            None,
        )
        .unwrap());
        assert_eq!(got, (5..15).collect::<Vec<i64>>(), "{metric:?}");
    }
    // Equidistant codes (no duplicates): the query at the midpoint of codes 2 and 1.
    let c = vec![5.0, 5.0, 1.0, 0.0, -1.0, 0.0];
    let got = ids(nearest_codes(
        tensor::<B, 3>(vec![0.0, 0.0], [1, 1, 2], device),
        tensor::<B, 2>(c, [3, 2], device),
        Metric::SquaredL2,
        None,
    )
    .unwrap());
    assert_eq!(got, vec![1]);
}

fn non_finite_input_is_an_error<B: ArBackend>(device: &B::Device) {
    let c = tensor::<B, 2>(vec![0.0, 1.0, 1.0, 0.0], [2, 2], device);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let q = tensor::<B, 3>(vec![0.5, bad, 0.1, 0.2], [1, 2, 2], device);
        let err = nearest_codes(q, c.clone(), Metric::SquaredL2, None).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{err}");
        let book = tensor::<B, 2>(vec![0.0, bad, 1.0, 0.0], [2, 2], device);
        let err = Codebook::new(book, Metric::Cosine).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    }
}

fn wrong_shapes_are_errors<B: ArBackend>(device: &B::Device) {
    let c = tensor::<B, 2>(vec![0.0; 8], [2, 4], device);
    let q = tensor::<B, 3>(vec![0.0; 6], [1, 2, 3], device);
    let err = nearest_codes(q, c, Metric::SquaredL2, None).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(err.to_string().contains("[b, n, 4]"), "{err}");
    let empty = Tensor::<B, 2>::zeros([0, 4], device);
    assert!(matches!(
        Codebook::new(empty, Metric::SquaredL2),
        Err(Error::Shape { .. })
    ));
}

fn embed_checks_ids<B: ArBackend>(device: &B::Device) {
    let book = Codebook::new(
        tensor::<B, 2>(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [3, 2], device),
        Metric::SquaredL2,
    )
    .unwrap();
    let ok = book
        .embed(Tensor::<B, 2, Int>::from_ints([[2, 0]], device))
        .unwrap();
    assert_eq!(common::to_vec(ok), vec![4.0, 5.0, 0.0, 1.0]);
    for bad in [3, -1] {
        let err = book
            .embed(Tensor::<B, 2, Int>::from_ints([[0, bad]], device))
            .unwrap_err();
        assert!(
            matches!(err, Error::TokenOutOfRange { id, .. } if id == bad),
            "{err}"
        );
    }
}

backend_tests!(
    agrees_on_random_shapes,
    batch_dims_are_kept,
    planted_ties_give_lowest_index,
    non_finite_input_is_an_error,
    wrong_shapes_are_errors,
    embed_checks_ids,
);
