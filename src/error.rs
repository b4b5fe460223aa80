//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in `ar-refine` on user input.
///
/// Each variant names what is wrong, so a message such as
/// `shape mismatch in nearest_codes embeddings: expected [b, n, 64], got [2, 256, 32]`
/// tells the user which argument to fix.
///
/// ```
/// use ar_refine::Error;
/// let e = Error::shape("refiner input", "[b, 256, 64]", &[1, 255, 64]);
/// assert!(e.to_string().contains("refiner input"));
/// ```
///
/// The enum is `#[non_exhaustive]`: match it with a wildcard arm, as new failure kinds may be
/// added in minor releases.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor or buffer does not have the shape an operation needs.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    Shape {
        /// Which argument or tensor.
        what: String,
        /// The expected shape, e.g. `[b, n, 64]`.
        expected: String,
        /// The shape that was given.
        got: String,
    },
    /// A token id lies outside the range the model or codebook accepts.
    #[error("token id {id} out of range in {what}: valid ids are {valid}")]
    TokenOutOfRange {
        /// Which input held the id.
        what: String,
        /// The offending id.
        id: i64,
        /// The valid range, e.g. `0..8192`.
        valid: String,
    },
    /// NaN or infinity where finite numbers are required.
    #[error("non-finite value (NaN or infinity) in {what}")]
    NonFinite {
        /// Which input held it.
        what: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A JSON document (a config, a report, a cache's metadata) could not be read or written.
    #[error("JSON error in {what}: {source}")]
    Json {
        /// The document: a file path, or what was being serialised.
        what: String,
        /// The underlying error (line and column for parse errors).
        #[source]
        source: serde_json::Error,
    },
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An image could not be decoded or encoded.
    #[error("image error on {path}: {source}")]
    Image {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: image::ImageError,
    },
    /// A checkpoint is corrupt, incomplete or does not match the model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// What is wrong (missing keys, unexpected keys, shape mismatches, ...).
        reason: String,
    },
    /// The backend failed while executing or reading back a tensor.
    #[error("backend execution failed: {0}")]
    Backend(String),
    /// A multi-device run failed on one device (the worker of device `rank` in the list), or
    /// Burn's collective operations (gradient all-reduce) failed.
    #[error("device {rank} of the data-parallel run: {reason}")]
    Parallel {
        /// Position of the device in the device list.
        rank: usize,
        /// What went wrong there.
        reason: String,
    },
}

impl Error {
    /// A [`Error::Shape`] from an expected pattern and the dims that were given.
    pub fn shape(what: impl Into<String>, expected: impl Into<String>, got: &[usize]) -> Self {
        Error::Shape {
            what: what.into(),
            expected: expected.into(),
            got: format!("{got:?}"),
        }
    }

    /// An [`Error::Json`] for the document `what` (a path or a description).
    pub fn json(what: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            what: what.into(),
            source,
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
