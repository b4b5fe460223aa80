//! [`ImageSet`]: square RGB8 images held on the host, from the shared Tiny-ImageNet files, image
//! folders or generated in code.

use crate::backend::ArBackend;
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use image::imageops::FilterType;
use image::RgbImage;

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// `n` square RGB8 images of side `size`, stored `[n, size, size, 3]` (the layout of
/// `../shared/data/val.u8`).
///
/// ```
/// use ar_refine::data::ImageSet;
/// use burn::backend::NdArray;
/// let set = ImageSet::synthetic(4, 16, 7);
/// let (train, val) = set.split(3);
/// assert_eq!((train.len(), val.len()), (3, 1));
/// let batch = train.batch::<NdArray>(&[0, 2], &Default::default()).unwrap();
/// assert_eq!(batch.dims(), [2, 3, 16, 16]);
/// ```
#[derive(Clone, Debug)]
pub struct ImageSet {
    pixels: Vec<u8>,
    size: usize,
}

impl ImageSet {
    /// Images from raw bytes `[n, size, size, 3]`.
    pub fn from_pixels(pixels: Vec<u8>, size: usize) -> Result<Self> {
        let one = size * size * 3;
        if size == 0 || pixels.is_empty() || !pixels.len().is_multiple_of(one) {
            return Err(Error::Config(format!(
                "{} bytes are not a whole number of {size}×{size} RGB images",
                pixels.len()
            )));
        }
        Ok(Self { pixels, size })
    }

    /// A header-less `uint8` file `[n, size, size, 3]` such as `val.u8`.
    pub fn from_raw_u8(path: impl AsRef<Path>, size: usize) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_pixels(bytes, size).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Images `range` (global indices) of the shared training mosaics: `dir/train-NNN.jpg`, each
    /// 2048×2048 holding 32×32 tiles of 64×64 in row-major order (layout in the data README).
    pub fn from_mosaics(dir: impl AsRef<Path>, range: std::ops::Range<usize>) -> Result<Self> {
        const TILE: usize = 64;
        const PER: usize = 1024;
        let dir = dir.as_ref();
        let mut pixels = Vec::with_capacity(range.len() * TILE * TILE * 3);
        let mut current: Option<(usize, RgbImage)> = None;
        for g in range {
            let m = g / PER;
            if current.as_ref().map(|(i, _)| *i) != Some(m) {
                let path = dir.join(format!("train-{m:03}.jpg"));
                current = Some((m, read_rgb(&path)?));
            }
            let Some((_, mosaic)) = current.as_ref() else {
                continue;
            };
            if mosaic.width() as usize != 32 * TILE || mosaic.height() as usize != 32 * TILE {
                return Err(Error::Config(format!("mosaic train-{m:03}.jpg is not 2048×2048")));
            }
            let t = g % PER;
            let (r, c) = (t / 32, t % 32);
            let raw = mosaic.as_raw();
            for y in 0..TILE {
                let start = ((TILE * r + y) * 32 * TILE + TILE * c) * 3;
                pixels.extend_from_slice(&raw[start..start + TILE * 3]);
            }
        }
        Self::from_pixels(pixels, TILE)
    }

    /// Every PNG/JPEG file in `dir` (sorted by name), resized to `size × size` as LVM does
    /// (a plain resize of the whole image).
    pub fn from_folder(dir: impl AsRef<Path>, size: usize) -> Result<Self> {
        let dir = dir.as_ref();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let ext = p
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("")
                    .to_lowercase();
                matches!(ext.as_str(), "png" | "jpg" | "jpeg")
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Config(format!(
                "{} holds no PNG or JPEG images",
                dir.display()
            )));
        }
        let mut pixels = Vec::with_capacity(files.len() * size * size * 3);
        for f in &files {
            let img = read_rgb(f)?;
            let img = image::imageops::resize(&img, size as u32, size as u32, FilterType::Triangle);
            pixels.extend_from_slice(img.as_raw());
        }
        Self::from_pixels(pixels, size)
    }

    /// `n` generated scenes (smooth colour gradients with discs and bars), for fresh clones
    /// without the shared data. Deterministic in `seed`.
    pub fn synthetic(n: usize, size: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut pixels = Vec::with_capacity(n * size * size * 3);
        let s = size as f32;
        for _ in 0..n.max(1) {
            let base: Vec<f32> = (0..6).map(|_| rng.uniform(0.0, 1.0)).collect();
            let (cx, cy, r) = (
                rng.uniform(0.0, s),
                rng.uniform(0.0, s),
                rng.uniform(0.1, 0.35) * s,
            );
            let disc: Vec<f32> = (0..3).map(|_| rng.uniform(0.0, 1.0)).collect();
            let (bar, bw) = (rng.uniform(0.0, s), rng.uniform(0.05, 0.2) * s);
            let bar_c: Vec<f32> = (0..3).map(|_| rng.uniform(0.0, 1.0)).collect();
            for y in 0..size {
                for x in 0..size {
                    let (fx, fy) = (x as f32 / s, y as f32 / s);
                    let in_disc = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) < r * r;
                    let in_bar = (x as f32 - bar).abs() < bw / 2.0;
                    for c in 0..3 {
                        let v = if in_disc {
                            disc[c]
                        } else if in_bar {
                            bar_c[c]
                        } else {
                            base[c] * (1.0 - fy) + base[3 + c] * fy * (0.7 + 0.3 * fx)
                        };
                        pixels.push((v.clamp(0.0, 1.0) * 255.0).round() as u8);
                    }
                }
            }
        }
        Self { pixels, size }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len() / (self.size * self.size * 3)
    }

    /// Whether the set is empty (never, for a constructed set).
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// Image side in pixels.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Raw bytes of image `i`, `[size, size, 3]`.
    pub fn pixels(&self, i: usize) -> Option<&[u8]> {
        let one = self.size * self.size * 3;
        self.pixels.get(i * one..(i + 1) * one)
    }

    /// The first `n` images and the rest: disjoint sets (no image in both).
    pub fn split(&self, n: usize) -> (Self, Self) {
        let one = self.size * self.size * 3;
        let cut = (n.min(self.len())) * one;
        (
            Self {
                pixels: self.pixels[..cut].to_vec(),
                size: self.size,
            },
            Self {
                pixels: self.pixels[cut..].to_vec(),
                size: self.size,
            },
        )
    }

    /// Images `indices` as a tensor `[b, 3, size, size]` in `[0, 1]`.
    pub fn batch<B: ArBackend>(&self, indices: &[usize], device: &B::Device) -> Result<Tensor<B, 4>> {
        let s = self.size;
        let mut v = vec![0f32; indices.len() * 3 * s * s];
        for (b, &i) in indices.iter().enumerate() {
            let px = self
                .pixels(i)
                .ok_or_else(|| Error::Config(format!("image index {i} out of range 0..{}", self.len())))?;
            for (p, rgb) in px.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    v[(b * 3 + c) * s * s + p] = rgb[c] as f32 / 255.0;
                }
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(v, [indices.len(), 3, s, s]),
            device,
        ))
    }

    /// The same images resized to `size × size` (bilinear).
    pub fn resized(&self, size: usize) -> Result<Self> {
        if size == self.size {
            return Ok(self.clone());
        }
        let mut pixels = Vec::with_capacity(self.len() * size * size * 3);
        for i in 0..self.len() {
            let img = RgbImage::from_raw(
                self.size as u32,
                self.size as u32,
                self.pixels(i).unwrap_or(&[]).to_vec(),
            )
            .ok_or_else(|| Error::Config("image buffer size mismatch".into()))?;
            pixels.extend_from_slice(
                image::imageops::resize(&img, size as u32, size as u32, FilterType::Triangle).as_raw(),
            );
        }
        Self::from_pixels(pixels, size)
    }
}

fn read_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(image::load_from_memory(&bytes)
        .map_err(|source| Error::Image {
            path: path.into(),
            source,
        })?
        .to_rgb8())
}
