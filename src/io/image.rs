//! Images ↔ tensors, and atomic image writes.

use crate::backend::ArBackend;
use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use image::{imageops::FilterType, RgbImage};

use crate::checks::{expect_dims, read_f32};
use crate::error::{Error, Result};
use crate::io::atomic::write_atomic;

/// Converts an RGB image to a tensor `[3, H, W]` with values in `[0, 1]`.
pub fn rgb_to_tensor<B: ArBackend>(img: &RgbImage, device: &B::Device) -> Tensor<B, 3> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let mut v = vec![0f32; 3 * h * w];
    for (i, px) in raw.chunks_exact(3).enumerate() {
        for c in 0..3 {
            v[c * h * w + i] = px[c] as f32 / 255.0;
        }
    }
    Tensor::from_data(TensorData::new(v, [3, h, w]), device)
}

/// Converts a tensor `[3, H, W]` (values clamped to `[0, 1]`) to an RGB image.
pub fn tensor_to_rgb<B: ArBackend>(t: Tensor<B, 3>) -> Result<RgbImage> {
    let dims = t.dims();
    expect_dims("image tensor", "[3, H, W]", &dims, &[Some(3), None, None])?;
    let [_, h, w] = dims;
    let v = read_f32(t)?;
    let mut out = RgbImage::new(w as u32, h as u32);
    for (i, px) in out.pixels_mut().enumerate() {
        for c in 0..3 {
            let x = v[c * h * w + i];
            // NaN maps to 0 (black) rather than failing a save.
            px.0[c] = (x.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    Ok(out)
}

/// Loads an image file (PNG or JPEG), converts it to RGB, resizes it to `size = (H, W)` when it
/// differs (bilinear), and returns `[3, H, W]` in `[0, 1]`.
///
/// ```no_run
/// use burn::backend::NdArray;
/// let img = ar_refine::io::load_image::<NdArray>("cat.png", (64, 64), &Default::default()).unwrap();
/// assert_eq!(img.dims(), [3, 64, 64]);
/// ```
pub fn load_image<B: ArBackend>(
    path: impl AsRef<Path>,
    size: (usize, usize),
    device: &B::Device,
) -> Result<Tensor<B, 3>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let img = image::load_from_memory(&bytes)
        .map_err(|source| Error::Image {
            path: path.into(),
            source,
        })?
        .to_rgb8();
    let (h, w) = size;
    let img = if (img.height() as usize, img.width() as usize) == size {
        img
    } else {
        image::imageops::resize(&img, w as u32, h as u32, FilterType::Triangle)
    };
    Ok(rgb_to_tensor(&img, device))
}

/// Saves `[3, H, W]` (values in `[0, 1]`) as an image whose format follows the extension
/// (`.png` or `.jpg`). The file is written to a temporary sibling and renamed into place, so an
/// existing file is never left half-written.
pub fn save_image<B: ArBackend>(t: Tensor<B, 3>, path: impl AsRef<Path>) -> Result<()> {
    save_rgb(&tensor_to_rgb(t)?, path.as_ref())
}

/// Saves images `[3, H, W]` (all the same size) as one grid image with `cols` columns,
/// separated by a 2-pixel white border; written atomically like [`save_image`].
pub fn save_image_grid<B: ArBackend>(
    images: Vec<Tensor<B, 3>>,
    cols: usize,
    path: impl AsRef<Path>,
) -> Result<()> {
    let first = images
        .first()
        .ok_or_else(|| Error::Config("save_image_grid needs at least one image".into()))?
        .dims();
    let cols = cols.clamp(1, images.len());
    let rows = images.len().div_ceil(cols);
    let (h, w, gap) = (first[1] as u32, first[2] as u32, 2u32);
    let mut out = RgbImage::from_pixel(
        cols as u32 * (w + gap) + gap,
        rows as u32 * (h + gap) + gap,
        image::Rgb([255; 3]),
    );
    for (i, t) in images.into_iter().enumerate() {
        expect_dims("grid image", &format!("{first:?}"), &t.dims(), &first.map(Some))?;
        let img = tensor_to_rgb(t)?;
        let (x0, y0) = (
            (i % cols) as u32 * (w + gap) + gap,
            (i / cols) as u32 * (h + gap) + gap,
        );
        image::imageops::replace(&mut out, &img, x0 as i64, y0 as i64);
    }
    save_rgb(&out, path.as_ref())
}

fn save_rgb(img: &RgbImage, path: &Path) -> Result<()> {
    let format = image::ImageFormat::from_path(path).map_err(|source| Error::Image {
        path: path.into(),
        source,
    })?;
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, format).map_err(|source| Error::Image {
        path: path.into(),
        source,
    })?;
    write_atomic(path, buf.get_ref())
}
