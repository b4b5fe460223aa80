//! Where the shared Tiny-ImageNet photos are on this machine: a fact of the checkout, not of
//! the library, so the examples and tests (which include this file) look it up themselves.

/// The shared Tiny-ImageNet folder (the layout of `../shared/data/README.md`): `explicit`, else
/// `$AR_REFINE_DATA`, else `../shared/data` beside the checkout; `None` when none holds `val.u8`.
pub fn shared_data_dir(explicit: Option<&std::path::Path>) -> Option<std::path::PathBuf> {
    let candidates = [
        explicit.map(std::path::Path::to_path_buf),
        std::env::var_os("AR_REFINE_DATA").map(std::path::PathBuf::from),
        Some(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("val.u8").is_file())
}
