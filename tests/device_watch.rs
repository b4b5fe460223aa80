//! No silent GPU failure (issue [reliability]): an allocation the device cannot make panics
//! CubeCL's worker thread; before the watch, the read-back then returned 0.0 with `Ok` and the
//! process went on. Now `check_device` reports it and `write_atomic` (every file the crate
//! writes) refuses to write. On lavapipe (CI); the same on CUDA, where the same worker-thread
//! panic is what cubecl-cuda 0.10 does on a failed allocation.
#![cfg(feature = "wgpu")]

use burn::tensor::Tensor;

#[test]
fn an_impossible_gpu_allocation_is_an_error_not_zeros_wgpu() {
    type B = burn::backend::Wgpu;
    ar_refine::watch_device_panics();
    let device = Default::default();
    assert!(ar_refine::check_device().is_ok());
    let dir = std::env::temp_dir().join(format!("ar-refine-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    ar_refine::io::write_atomic(dir.join("before.txt"), b"ok").unwrap();
    // 12 GB: past lavapipe's largest buffer (< 2 GiB).
    let big = Tensor::<B, 1>::ones([3_000_000_000usize], &device);
    let _ = big.sum().into_scalar();
    assert!(
        ar_refine::device_panics() >= 1,
        "the failed allocation went unnoticed"
    );
    let err = ar_refine::check_device().unwrap_err().to_string();
    assert!(err.contains("allocate"), "{err}");
    let after = dir.join("after.txt");
    assert!(ar_refine::io::write_atomic(&after, b"garbage").is_err());
    assert!(
        !after.exists(),
        "a result computed after the failure reached disk"
    );
}
