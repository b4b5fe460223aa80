//! In-context vision tasks: each turns an image into an (input, output) pair, as LVM's data
//! scripts do. Users add their own by implementing [`Task`].

use image::{GrayImage, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::{below, uniform_f32, unit_f64, Rng};

/// A task: `pair(image)` → `(input x, output y)`, both the image's size.
///
/// The random choices come from any [`rand_core::Rng`] (`rand`'s generators, or the crate's
/// [`SplitMix64`](crate::rng::SplitMix64), which the crate's own data pipeline uses so a seed
/// gives the same masks in every version).
///
/// ```
/// use ar_refine::tasks::{Colorization, Task};
/// use ar_refine::rng::SplitMix64;
/// let img = image::RgbImage::from_pixel(4, 4, image::Rgb([200, 100, 50]));
/// let (x, y) = Colorization.pair(&img, &mut SplitMix64::new(0)).unwrap();
/// assert_eq!(y, img);
/// assert_eq!(x.get_pixel(0, 0)[0], x.get_pixel(0, 0)[2]); // gray
/// ```
pub trait Task: Send + Sync {
    /// A short name (`colorization`, ...), used in reports and caches.
    fn name(&self) -> String;
    /// The (input, output) pair of `image`; random choices (masks) come from `rng`.
    fn pair(&self, image: &RgbImage, rng: &mut dyn Rng) -> Result<(RgbImage, RgbImage)>;
}

/// Colorization: input is the luma `0.2989 R + 0.5870 G + 0.1140 B` replicated to three
/// channels (LVM's data scripts), output the colour image.
#[derive(Clone, Copy, Debug, Default)]
pub struct Colorization;

/// The gray (luma) version of `image`, replicated to RGB.
pub fn gray(image: &RgbImage) -> RgbImage {
    let mut out = image.clone();
    for p in out.pixels_mut() {
        let l = 0.2989 * p[0] as f32 + 0.5870 * p[1] as f32 + 0.1140 * p[2] as f32;
        let l = l.round().clamp(0.0, 255.0) as u8;
        *p = Rgb([l, l, l]);
    }
    out
}

impl Task for Colorization {
    fn name(&self) -> String {
        "colorization".into()
    }

    fn pair(&self, image: &RgbImage, _rng: &mut dyn Rng) -> Result<(RgbImage, RgbImage)> {
        Ok((gray(image), image.clone()))
    }
}

/// Inpainting: with probability `hole_prob` (0.3) one square hole whose side is 0.1–0.5 × the
/// image side, otherwise random patch masking (each `patch`×`patch` cell masked with
/// probability `patch_prob`). Masked pixels are set to `fill` (mid-gray 127 by default). The
/// output is the original image.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inpainting {
    /// Probability of the single-hole mode.
    pub hole_prob: f64,
    /// Cell side of patch masking, in pixels.
    pub patch: u32,
    /// Probability that a cell is masked in patch mode.
    pub patch_prob: f64,
    /// Value written into masked pixels (all three channels).
    pub fill: u8,
}

impl Default for Inpainting {
    fn default() -> Self {
        Self {
            hole_prob: 0.3,
            patch: 8,
            patch_prob: 0.25,
            fill: 127,
        }
    }
}

impl Task for Inpainting {
    fn name(&self) -> String {
        "inpainting".into()
    }

    fn pair(&self, image: &RgbImage, rng: &mut dyn Rng) -> Result<(RgbImage, RgbImage)> {
        if self.patch == 0
            || !(0.0..=1.0).contains(&self.hole_prob)
            || !(0.0..=1.0).contains(&self.patch_prob)
        {
            return Err(Error::Config(format!("bad inpainting settings {self:?}")));
        }
        let (w, h) = image.dimensions();
        let mut x = image.clone();
        let fill = Rgb([self.fill; 3]);
        if unit_f64(rng) < self.hole_prob {
            let side = (uniform_f32(rng, 0.1, 0.5) * w.min(h) as f32).round().max(1.0) as u32;
            let x0 = below(rng, (w - side + 1) as usize) as u32;
            let y0 = below(rng, (h - side + 1) as usize) as u32;
            for y in y0..y0 + side {
                for xx in x0..x0 + side {
                    x.put_pixel(xx, y, fill);
                }
            }
        } else {
            for cy in (0..h).step_by(self.patch as usize) {
                for cx in (0..w).step_by(self.patch as usize) {
                    if unit_f64(rng) < self.patch_prob {
                        for y in cy..(cy + self.patch).min(h) {
                            for xx in cx..(cx + self.patch).min(w) {
                                x.put_pixel(xx, y, fill);
                            }
                        }
                    }
                }
            }
        }
        Ok((x, image.clone()))
    }
}

/// Edge detection: input the image, output its Canny edges (`imageproc`, Gaussian σ = 1.4)
/// as white on black, replicated to RGB.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeDetection {
    /// Canny low threshold (gradient magnitude).
    pub low: f32,
    /// Canny high threshold.
    pub high: f32,
}

impl Default for EdgeDetection {
    fn default() -> Self {
        Self {
            low: 50.0,
            high: 100.0,
        }
    }
}

impl Task for EdgeDetection {
    fn name(&self) -> String {
        "edges".into()
    }

    fn pair(&self, image: &RgbImage, _rng: &mut dyn Rng) -> Result<(RgbImage, RgbImage)> {
        if !(self.low >= 0.0 && self.high >= self.low && self.high.is_finite()) {
            return Err(Error::Config(format!(
                "Canny thresholds need 0 <= low <= high, got {} and {}",
                self.low, self.high
            )));
        }
        let luma = gray(image);
        let g = GrayImage::from_fn(image.width(), image.height(), |x, y| {
            image::Luma([luma.get_pixel(x, y)[0]])
        });
        let edges = imageproc::edges::canny(&g, self.low, self.high);
        let y = RgbImage::from_fn(image.width(), image.height(), |x, y| {
            let v = edges.get_pixel(x, y)[0];
            Rgb([v, v, v])
        });
        Ok((image.clone(), y))
    }
}

/// The built-in task for a name: `colorization`, `inpainting` or `edges`.
pub fn task_by_name(name: &str) -> Result<Box<dyn Task>> {
    match name {
        "colorization" => Ok(Box::new(Colorization)),
        "inpainting" => Ok(Box::new(Inpainting::default())),
        "edges" | "edge" | "edge_detection" => Ok(Box::new(EdgeDetection::default())),
        other => Err(Error::Config(format!(
            "unknown task {other:?}; built-ins are colorization, inpainting, edges"
        ))),
    }
}
