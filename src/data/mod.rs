//! Data: image sets from the shared photos, image folders or generated scenes, and visual
//! sentences (K demonstration pairs + a query) built from them.

mod images;
mod sentences;

pub use images::ImageSet;
pub(crate) use sentences::prompt_tensor;
pub use sentences::{build_sentences, tokenize_sentences, Sentence, TokenSentence};
