//! File input and output: images and atomic writes.

mod atomic;
mod image;

pub use self::image::{load_image, rgb_to_tensor, save_image, save_image_grid, tensor_to_rgb};
pub use atomic::write_atomic;
