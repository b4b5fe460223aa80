//! [`ndarray`] interop: images, image batches and token grids to and from `ndarray` arrays, for
//! pipelines that already hold their data that way (numpy-style layouts).
//!
//! | crate value | array | layout |
//! |---|---|---|
//! | [`RgbImage`] | `Array3<u8>` | `[H, W, 3]` (PIL / numpy `HWC`) |
//! | image batch `Tensor<B, 4>` in `[0, 1]` | `Array4<f32>` | `[b, 3, H, W]` (PyTorch `NCHW`) |
//! | token ids `Tensor<B, 2, Int>` + [`TokenGrid`] | `Array3<i64>` | `[b, rows, cols]` |
//!
//! ```
//! use ar_refine::interop::{array_to_image, image_to_array};
//! let img = image::RgbImage::from_fn(4, 2, |x, y| image::Rgb([x as u8, y as u8, 7]));
//! let a = image_to_array(&img);
//! assert_eq!(a.shape(), &[2, 4, 3]);
//! assert_eq!(a[[1, 3, 0]], 3);
//! assert_eq!(array_to_image(a.view()).unwrap(), img);
//! ```

pub use ndarray;

use burn::tensor::{Int, Tensor, TensorData};
use image::RgbImage;
use ndarray::{Array3, Array4, ArrayView3, ArrayView4};

use crate::backend::ArBackend;
use crate::checks::{read_f32, read_i64};
use crate::error::{Error, Result};
use crate::traits::TokenGrid;

/// An RGB image as an array `[H, W, 3]` (row-major, channels last).
pub fn image_to_array(img: &RgbImage) -> Array3<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    // `as_raw` is exactly `[H, W, 3]` in row-major order, so the shape always fits.
    Array3::from_shape_vec((h, w, 3), img.as_raw().clone()).unwrap_or_else(|_| Array3::zeros((h, w, 3)))
}

/// An array `[H, W, 3]` (any strides) as an RGB image. A last axis other than 3 or a side
/// over `u32::MAX` is an [`Error::Shape`].
pub fn array_to_image(a: ArrayView3<u8>) -> Result<RgbImage> {
    let &[h, w, c] = a.shape() else {
        return Err(Error::shape("image array", "[H, W, 3]", a.shape()));
    };
    if c != 3 || u32::try_from(h).is_err() || u32::try_from(w).is_err() {
        return Err(Error::shape("image array", "[H, W, 3]", a.shape()));
    }
    let raw: Vec<u8> = a.iter().copied().collect();
    RgbImage::from_raw(w as u32, h as u32, raw)
        .ok_or_else(|| Error::shape("image array", "[H, W, 3]", a.shape()))
}

/// An image batch `[b, 3, H, W]` (values as stored, normally `[0, 1]`) read back to the host as
/// an array of the same shape.
pub fn images_to_array<B: ArBackend>(images: Tensor<B, 4>) -> Result<Array4<f32>> {
    let [b, c, h, w] = images.dims();
    let v = read_f32(images)?;
    Array4::from_shape_vec((b, c, h, w), v).map_err(|e| Error::Backend(format!("image batch read-back: {e}")))
}

/// An array `[b, 3, H, W]` of finite values (any strides) as an image batch tensor on `device`.
/// Another channel count is an [`Error::Shape`]; NaN or infinity an [`Error::NonFinite`].
pub fn array_to_images<B: ArBackend>(a: ArrayView4<f32>, device: &B::Device) -> Result<Tensor<B, 4>> {
    let &[b, c, h, w] = a.shape() else {
        return Err(Error::shape("image batch array", "[b, 3, H, W]", a.shape()));
    };
    if c != 3 {
        return Err(Error::shape("image batch array", "[b, 3, H, W]", a.shape()));
    }
    if a.iter().any(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            what: "image batch array".into(),
        });
    }
    let v: Vec<f32> = a.iter().copied().collect();
    Ok(Tensor::from_data(TensorData::new(v, [b, c, h, w]), device))
}

/// Token ids `[b, rows·cols]` (raster order) as an array `[b, rows, cols]`. A sequence length
/// other than `grid.len()` is an [`Error::Shape`].
pub fn tokens_to_array<B: ArBackend>(tokens: Tensor<B, 2, Int>, grid: TokenGrid) -> Result<Array3<i64>> {
    let [b, n] = tokens.dims();
    if n != grid.len() {
        return Err(Error::shape(
            "token ids",
            format!("[b, {}] ({}×{} grid)", grid.len(), grid.rows, grid.cols),
            &[b, n],
        ));
    }
    let v = read_i64(tokens)?;
    Array3::from_shape_vec((b, grid.rows, grid.cols), v)
        .map_err(|e| Error::Backend(format!("token read-back: {e}")))
}

/// An array `[b, rows, cols]` of ids (any strides) as token ids `[b, rows·cols]` on `device`,
/// with the grid it describes. Ids are not range-checked here: the tokenizer or backbone that
/// takes them checks them against its codebook or vocabulary.
pub fn array_to_tokens<B: ArBackend>(
    a: ArrayView3<i64>,
    device: &B::Device,
) -> Result<(Tensor<B, 2, Int>, TokenGrid)> {
    let &[b, rows, cols] = a.shape() else {
        return Err(Error::shape("token array", "[b, rows, cols]", a.shape()));
    };
    let v: Vec<i64> = a.iter().copied().collect();
    let t = Tensor::from_data(TensorData::new(v, [b, rows * cols]), device);
    Ok((t, TokenGrid::new(rows, cols)))
}
