//! File input and output: images, checkpoints (safetensors, PyTorch pickles) and atomic writes.

mod atomic;
mod checksum;
mod image;
mod module;
mod pickle_scan;
mod pytorch;
mod safetensors;
mod source;
mod tokens;

pub use self::image::{load_image, rgb_to_tensor, save_image, save_image_grid, tensor_to_rgb};
pub use self::module::{load_module_tensors, module_tensors, NamedTensor};
pub use self::pytorch::PytorchFile;
pub(crate) use self::safetensors::{read_raw, safetensors_bytes, serialize_raw, RawTensor};
pub use self::safetensors::{
    save_safetensors, save_safetensors_with_metadata, KeyReport, SafetensorsFile, StoreDtype,
};
pub use atomic::write_atomic;
pub(crate) use checksum::fnv1a64;
pub(crate) use source::check_param_budget;
pub use source::{open_checkpoint, TensorSource};
pub use tokens::{read_token_rows, write_token_rows};
