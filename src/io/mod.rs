//! File input and output: images, safetensors checkpoints and atomic writes.

mod atomic;
mod checksum;
mod image;
mod safetensors;

pub use self::image::{load_image, rgb_to_tensor, save_image, save_image_grid, tensor_to_rgb};
pub use atomic::write_atomic;
pub use checksum::fnv1a64;
pub use self::safetensors::{
    save_safetensors, save_safetensors_with_metadata, KeyReport, SafetensorsFile, StoreDtype,
};
