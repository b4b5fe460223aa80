//! Validation and host read-back helpers shared by every module.
//!
//! Burn's tensor API panics on shape errors; public functions of this crate call these
//! helpers first so that user input yields an [`Error`] instead.

use crate::backend::ArBackend;
use std::ops::Range;

use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{Error, Result};

/// Reads a tensor's data back to the host, mapping backend failures to [`Error::Backend`].
pub(crate) fn read_data<B: ArBackend, const D: usize, K>(t: Tensor<B, D, K>) -> Result<TensorData>
where
    K: burn::tensor::TensorKind<B> + burn::tensor::BasicOps<B>,
{
    t.try_into_data().map_err(|e| Error::Backend(format!("{e:?}")))
}

/// Reads a float tensor as `Vec<f32>` (row-major).
pub(crate) fn read_f32<B: ArBackend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    Ok(read_data(t)?.iter::<f32>().collect())
}

/// Reads an int tensor as `Vec<i64>` (row-major).
pub(crate) fn read_i64<B: ArBackend, const D: usize>(t: Tensor<B, D, Int>) -> Result<Vec<i64>> {
    Ok(read_data(t)?.iter::<i64>().collect())
}

/// Builds an int tensor `[rows, cols]` from host ids.
pub(crate) fn int_tensor<B: ArBackend>(
    ids: Vec<i64>,
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(ids, [rows, cols]), device)
}

/// Fails with [`Error::Shape`] unless `got` matches `expected`, where `None` entries match
/// any size. `pattern` is the human-readable form, e.g. `[b, n, 64]`.
pub(crate) fn expect_dims(
    what: &str,
    pattern: &str,
    got: &[usize],
    expected: &[Option<usize>],
) -> Result<()> {
    let ok = got.len() == expected.len() && got.iter().zip(expected).all(|(g, e)| e.is_none_or(|e| e == *g));
    if ok {
        Ok(())
    } else {
        Err(Error::shape(what, pattern, got))
    }
}

/// Fails with [`Error::Shape`] when any dimension is zero (empty tensors have no meaning here).
pub(crate) fn expect_non_empty(what: &str, pattern: &str, got: &[usize]) -> Result<()> {
    if got.contains(&0) {
        Err(Error::shape(
            what,
            format!("{pattern} with no zero-sized dimension"),
            got,
        ))
    } else {
        Ok(())
    }
}

/// Fails with [`Error::NonFinite`] when `t` holds NaN or ±infinity. One device read-back.
pub(crate) fn ensure_finite<B: ArBackend, const D: usize>(t: &Tensor<B, D>, what: &str) -> Result<()> {
    // x - x is 0 for finite x and NaN for NaN and ±inf: a single elementwise op and reduction.
    let bad = t.clone().sub(t.clone()).is_nan().any();
    let bad = read_data(bad)?.iter::<bool>().next().unwrap_or(false);
    if bad {
        Err(Error::NonFinite { what: what.into() })
    } else {
        Ok(())
    }
}

/// Fails with [`Error::TokenOutOfRange`] when an id of `tokens` lies outside `valid`.
/// One device read-back (the minimum and maximum together).
pub(crate) fn ensure_ids_in<B: ArBackend, const D: usize>(
    tokens: &Tensor<B, D, Int>,
    valid: Range<i64>,
    what: &str,
) -> Result<()> {
    let lo_hi = Tensor::cat(vec![tokens.clone().min(), tokens.clone().max()], 0);
    let v = read_i64(lo_hi)?;
    for id in v {
        if !valid.contains(&id) {
            return Err(Error::TokenOutOfRange {
                what: what.into(),
                id,
                valid: format!("{}..{}", valid.start, valid.end),
            });
        }
    }
    Ok(())
}
