//! Data: image sets from the shared photos, image folders or generated scenes, and visual
//! sentences (K demonstration pairs + a query) built from them.

mod images;
mod sentences;

pub use images::ImageSet;
pub use sentences::{build_sentences, prompt_tensor, tokenize_sentences, Sentence, TokenSentence};
