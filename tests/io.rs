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

#[test]
fn ndarray_interop_round_trips_images_batches_and_token_grids() {
    use ar_refine::interop::ndarray::{s, Array3, Array4, Axis};
    use ar_refine::interop::{
        array_to_image, array_to_images, array_to_tokens, image_to_array, images_to_array, tokens_to_array,
    };
    use ar_refine::io::{rgb_to_tensor, tensor_to_rgb};
    use ar_refine::TokenGrid;
    use burn::tensor::{Int, Tensor, TensorData};

    let device = Default::default();
    let img = image::RgbImage::from_fn(5, 3, |x, y| {
        image::Rgb([(x * 50) as u8, (y * 80) as u8, (x + y) as u8])
    });
    // Image <-> [H, W, 3], and the batch layout agrees with the crate's own conversion.
    let a = image_to_array(&img);
    assert_eq!(a.shape(), &[3, 5, 3]);
    assert_eq!(a[[2, 4, 0]], 200);
    assert_eq!(array_to_image(a.view()).unwrap(), img);
    let chw = a
        .permuted_axes([2, 0, 1])
        .mapv(|v| v as f32 / 255.0)
        .insert_axis(Axis(0));
    let t = array_to_images::<B>(chw.view(), &device).unwrap();
    let ours: Tensor<B, 4> = rgb_to_tensor::<B>(&img, &device).unsqueeze();
    assert_eq!(to_vec(t.clone()), to_vec(ours));
    assert_eq!(tensor_to_rgb(t.clone().squeeze_dim::<3>(0)).unwrap(), img);
    assert_eq!(images_to_array(t).unwrap(), chw.as_standard_layout().to_owned());
    // A strided view (every other column) converts like its copy.
    let strided = Array3::from_shape_fn((2, 6, 3), |(y, x, c)| (y * 100 + x * 10 + c) as u8);
    let half = strided.slice(s![.., ..;2, ..]);
    assert_eq!(
        array_to_image(half).unwrap(),
        array_to_image(half.to_owned().view()).unwrap()
    );

    // Token ids [b, rows·cols] <-> [b, rows, cols].
    let ids: Vec<i64> = (0..12).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [2, 6]), &device);
    let grid = TokenGrid::new(2, 3);
    let arr = tokens_to_array(tokens.clone(), grid).unwrap();
    assert_eq!(arr[[1, 0, 2]], 8);
    let (back, g) = array_to_tokens::<B>(arr.view(), &device).unwrap();
    assert_eq!(g, grid);
    assert_eq!(back.into_data().iter::<i64>().collect::<Vec<_>>(), ids);

    // Wrong shapes and values are typed errors.
    assert!(matches!(
        tokens_to_array(tokens, TokenGrid::new(2, 2)),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        array_to_image(Array3::<u8>::zeros((2, 2, 4)).view()),
        Err(Error::Shape { .. })
    ));
    let mut bad = Array4::<f32>::zeros((1, 3, 2, 2));
    assert!(matches!(
        array_to_images::<B>(Array4::<f32>::zeros((1, 1, 2, 2)).view(), &device),
        Err(Error::Shape { .. })
    ));
    bad[[0, 1, 1, 0]] = f32::NAN;
    assert!(matches!(
        array_to_images::<B>(bad.view(), &device),
        Err(Error::NonFinite { .. })
    ));
}

#[test]
fn tasks_take_any_rand_core_generator() {
    use ar_refine::rng::{Rng, SeedableRng, SplitMix64 as Mix, TryRng};
    use ar_refine::tasks::{Inpainting, Task};

    /// xorshift64*: a generator that is not the crate's.
    struct XorShift(u64);
    impl TryRng for XorShift {
        type Error = std::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok((self.try_next_u64()? >> 32) as u32)
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            Ok(self.0.wrapping_mul(0x2545_F491_4F6C_DD1D))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            for c in dst.chunks_mut(8) {
                let w = self.try_next_u64()?.to_le_bytes();
                c.copy_from_slice(&w[..c.len()]);
            }
            Ok(())
        }
    }
    let img = image::RgbImage::from_pixel(32, 32, image::Rgb([10, 200, 30]));
    let task = Inpainting {
        hole_prob: 0.0,
        patch_prob: 0.5,
        ..Default::default()
    };
    let masked = |x: &image::RgbImage| x.pixels().filter(|p| p.0 == [127; 3]).count();
    // Other generators drive the masks, and different seeds give different masks.
    let (a, _) = task.pair(&img, &mut XorShift(1)).unwrap();
    let (b, _) = task.pair(&img, &mut XorShift(99)).unwrap();
    assert!(masked(&a) > 0 && masked(&b) > 0);
    assert_ne!(a, b);
    // The crate's generator through rand_core gives the stream of its own methods.
    let mut own = Mix::new(5);
    let mut seeded = Mix::from_seed(5u64.to_le_bytes());
    let dynamic: &mut dyn Rng = &mut seeded;
    assert_eq!(own.next_u64(), dynamic.next_u64());
    let (c, _) = task.pair(&img, &mut Mix::new(5)).unwrap();
    let (d, _) = task.pair(&img, &mut Mix::from_seed(5u64.to_le_bytes())).unwrap();
    assert_eq!(c, d);
}

#[test]
fn safetensors_tensors_come_back_in_their_stored_type_one_at_a_time() {
    use ar_refine::io::{save_safetensors, KeyReport, SafetensorsFile, StoreDtype, TensorSource};
    use burn::tensor::{DType, Tensor};

    let dir = temp_dir("stored_type");
    let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    for (store, dtype) in [
        (StoreDtype::F16, DType::F16),
        (StoreDtype::BF16, DType::BF16),
        (StoreDtype::F32, DType::F32),
    ] {
        let path = dir.join(format!("{dtype:?}.safetensors"));
        save_safetensors(&path, &[("w".into(), vec![3, 4], values.clone())], store).unwrap();
        let file = SafetensorsFile::open(&path).unwrap();
        let data = file.read_data("w").unwrap();
        // the stored type, not an f32 copy; 2 bytes per value for the half types
        assert_eq!(data.dtype, dtype);
        assert_eq!(data.bytes.len(), 12 * dtype.size());
        // values exact (all of them are representable in every type)
        assert_eq!(data.clone().convert::<f32>().to_vec::<f32>().unwrap(), values);
        assert_eq!(file.read_f32("w").unwrap(), values);
        let t: Tensor<B, 2> = file.tensor("w", &Default::default()).unwrap();
        assert_eq!(to_vec(t), values);
        // a loader checks shapes without reading, then takes tensors in their stored type
        let mut report = KeyReport::new(&file);
        assert!(!report.expect("w", &[4, 3]));
        assert!(report.take_data("w", &[3, 4]).is_some_and(|d| d.dtype == dtype));
        assert!(report
            .finish()
            .unwrap_err()
            .to_string()
            .contains("w: checkpoint [3, 4], model [4, 3]"));
    }
    std::fs::remove_dir_all(dir).ok();
}
