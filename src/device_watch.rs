//! No silent GPU failure (issue [reliability]). CubeCL 0.10 runs each device's work on a
//! worker thread of its own; when that thread panics (a failed allocation: `can't allocate
//! buffer of size …`, a kernel the driver rejects), the panic message goes to stderr, the
//! caller's thread carries on, and every result read back afterwards is zeros or stale memory —
//! with `Ok` everywhere. This module records such panics (a process-wide panic hook, chained to
//! the hook that was there before, counting panics raised inside a `cubecl` crate on any
//! thread) and turns them into an [`Error::Backend`]:
//! - [`crate::io::write_atomic`] — the way every file of the crate is written (checkpoints,
//!   caches, refiners, images) — refuses to write after one, so no result computed after a
//!   device failure reaches disk;
//! - model loading and [`crate::backbone::Llama::generate_with`] install the watch, and
//!   generation reports a failure that happened while it ran;
//! - [`check_device`] lets a caller ask at any point.
//!
//! A `std::panic::set_hook` of the application after the watch replaces it: set yours first,
//! then call [`watch_device_panics`], which chains it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// Panics recorded inside the GPU runtime since the watch was installed.
static PANICS: AtomicUsize = AtomicUsize::new(0);
/// The first one's message and place.
static FIRST: OnceLock<String> = OnceLock::new();
/// Whether the hook of this module is the current one (set when installed).
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Serialises installation.
static LOCK: Mutex<()> = Mutex::new(());

/// Installs the panic watch, once per process (later calls return at once). Install it after
/// any `std::panic::set_hook` of your own: it chains the hook it finds.
pub fn watch_device_panics() {
    if INSTALLED.load(Ordering::Acquire) {
        return;
    }
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if INSTALLED.load(Ordering::Acquire) {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let place = info.location().map(|l| l.file()).unwrap_or("");
        if place.contains("cubecl") {
            PANICS.fetch_add(1, Ordering::SeqCst);
            let thread = std::thread::current();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            let _ = FIRST.set(format!(
                "{message} (thread {:?}, {})",
                thread.name().unwrap_or("unnamed"),
                info.location().map(|l| l.to_string()).unwrap_or_default()
            ));
        }
        previous(info);
    }));
    INSTALLED.store(true, Ordering::Release);
}

/// How many panics the GPU runtime has raised since [`watch_device_panics`] was installed.
pub fn device_panics() -> usize {
    PANICS.load(Ordering::SeqCst)
}

/// `Err(Error::Backend)` naming the first failure if the GPU runtime has panicked since the
/// watch was installed: results computed on the device after it are not trustworthy.
pub fn check_device() -> Result<()> {
    match device_panics() {
        0 => Ok(()),
        n => Err(Error::Backend(format!(
            "the GPU runtime failed {n} time(s) in this process, first: {}; results computed \
             on the device since then are not trustworthy (nothing more is written)",
            FIRST.get().map(String::as_str).unwrap_or("(no message)")
        ))),
    }
}
