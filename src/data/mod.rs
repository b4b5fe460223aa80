//! Data: image sets from the shared photos, image folders or generated scenes.

mod images;

pub use images::ImageSet;
