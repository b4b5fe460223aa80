//! Image files: round trips, atomic writes, typed errors.

mod common;

use ar_refine::io::{load_image, save_image, save_image_grid, write_atomic};
use ar_refine::Error;
use burn::backend::NdArray;
use common::{tensor, to_vec, uniform_vec, SplitMix64};

type B = NdArray;

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ar_refine_io_{name}_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn png_round_trip_is_exact_to_8_bits() {
    let device = Default::default();
    let mut rng = SplitMix64::new(11);
    let v: Vec<f32> = uniform_vec(&mut rng, 3 * 5 * 7)
        .iter()
        .map(|x| ((x + 1.0) * 127.5).round() / 255.0)
        .collect();
    let dir = temp_dir("png");
    let path = dir.join("img.png");
    save_image(tensor::<B, 3>(v.clone(), [3, 5, 7], &device), &path).unwrap();
    let back = to_vec(load_image::<B>(&path, (5, 7), &device).unwrap());
    assert!(v.iter().zip(&back).all(|(a, b)| (a - b).abs() < 1e-6));
    // Loading at another size resizes.
    assert_eq!(
        load_image::<B>(&path, (10, 14), &device).unwrap().dims(),
        [3, 10, 14]
    );
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn grid_has_the_expected_size() {
    let device = Default::default();
    let dir = temp_dir("grid");
    let imgs = (0..5)
        .map(|_| tensor::<B, 3>(vec![0.5; 3 * 4 * 6], [3, 4, 6], &device))
        .collect();
    save_image_grid(imgs, 2, dir.join("g.png")).unwrap();
    let img = image::open(dir.join("g.png")).unwrap();
    assert_eq!((img.width(), img.height()), (2 * (6 + 2) + 2, 3 * (4 + 2) + 2));
}

#[test]
fn bad_files_give_typed_errors() {
    let device = Default::default();
    let dir = temp_dir("bad");
    let missing = load_image::<B>(dir.join("nope.png"), (4, 4), &device).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing}");
    write_atomic(dir.join("corrupt.png"), b"\x89PNG not really").unwrap();
    let corrupt = load_image::<B>(dir.join("corrupt.png"), (4, 4), &device).unwrap_err();
    assert!(matches!(corrupt, Error::Image { .. }), "{corrupt}");
    let t = tensor::<B, 3>(vec![0.0; 12], [3, 2, 2], &device);
    assert!(matches!(
        save_image(t.clone(), dir.join("x.unknownext")),
        Err(Error::Image { .. })
    ));
    let wrong = tensor::<B, 3>(vec![0.0; 8], [2, 2, 2], &device);
    assert!(matches!(
        save_image(wrong, dir.join("x.png")),
        Err(Error::Shape { .. })
    ));
    // A failed write keeps the existing file intact.
    std::fs::write(dir.join("keep.png"), b"old").unwrap();
    assert!(write_atomic(dir.join("no_such_dir/keep.png"), b"new").is_err());
    assert_eq!(std::fs::read(dir.join("keep.png")).unwrap(), b"old");
}

/// Threads of one process writing the same target: every write succeeds, the file ends as one
/// complete write (never a mix or a truncation), and no temporary file is left behind.
#[test]
fn concurrent_atomic_writes_to_one_target() {
    let dir = temp_dir("concurrent");
    let target = dir.join("shared.bin");
    let writers: Vec<Vec<u8>> = (0..8u8).map(|t| vec![t; 64 * 1024 + t as usize]).collect();
    std::thread::scope(|s| {
        for bytes in &writers {
            let target = &target;
            s.spawn(move || {
                for _ in 0..20 {
                    write_atomic(target, bytes).unwrap();
                }
            });
        }
    });
    let end = std::fs::read(&target).unwrap();
    assert!(
        writers.contains(&end),
        "the target is not one complete write ({} bytes)",
        end.len()
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "shared.bin")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn token_files_round_trip_and_bad_ones_name_the_line() {
    let dir = temp_dir("tokens");
    let path = dir.join("tokens.txt");
    let rows = vec![vec![0, 17, 16383], vec![5, 4, 3]];
    ar_refine::io::write_token_rows(&path, &rows).unwrap();
    assert_eq!(ar_refine::io::read_token_rows(&path).unwrap(), rows);
    for (text, needle) in [
        ("1 2 3\n\n4 5\n", "line 3 has 2 ids, the first row 3"),
        ("1 2\n3 x\n", "line 2: \"x\" is not a token id"),
        ("1 -2\n", "line 1: \"-2\" is not a token id"),
        ("\n \n", "no token ids"),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = ar_refine::io::read_token_rows(&path).unwrap_err().to_string();
        assert!(
            err.contains(needle) && err.contains("tokens.txt"),
            "{text:?}: {err}"
        );
    }
    std::fs::write(&path, [0xff, 0xfe, b'1']).unwrap();
    let err = ar_refine::io::read_token_rows(&path).unwrap_err().to_string();
    assert!(err.contains("not UTF-8"), "{err}");
}
