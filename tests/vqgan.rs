//! VQGAN tokenizer parity with the PyTorch references (fixtures from
//! tests/fixtures/make_vqgan_fixtures.py) in the open-MUSE, diffusers and taming layouts, plus
//! checkpoint errors and save/load round trips.

mod common;

use ar_refine::ArBackend;
use std::path::PathBuf;

use ar_refine::data::ImageSet;
use ar_refine::io::{SafetensorsFile, StoreDtype, TensorSource};
use ar_refine::tokenizer::{reconstruction_psnr, ConvPath, Layout, PixelRange, Vqgan, VqganConfig};
use ar_refine::{Error, Tokenizer};
use burn::tensor::{Int, Tensor, TensorData};
use common::to_vec;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vqgan")
}

fn reference() -> SafetensorsFile {
    SafetensorsFile::open(fixtures().join("reference.safetensors")).unwrap()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// (name in reference file, checkpoint, reference key prefix)
const MODELS: [(&str, &str, &str); 4] = [
    ("open-MUSE", "open_muse/pytorch_model.bin", "lvm"),
    ("diffusers", "diffusers", "lvm"),
    ("diffusers+attention", "diffusers_attn", "diffusers_attn"),
    ("taming", "taming/model.ckpt", "taming"),
];

fn matches_pytorch_reference<B: ArBackend>(device: &B::Device) {
    let r = reference();
    for (label, ckpt, key) in MODELS {
        let vq = Vqgan::<B>::load(fixtures().join(ckpt), None, device).unwrap();
        let images = r.tensor::<B, 4>(&format!("{key}.images"), device).unwrap();
        // The fixtures store model-native pixels; the tokenizer takes [0, 1].
        let images01 = match vq.config().pixel_range {
            PixelRange::ZeroOne => images,
            PixelRange::MinusOneOne => images.add_scalar(1.0).mul_scalar(0.5),
        };
        // Pre-quantisation latents: relative error <= 1e-4.
        let want = r.read_f32(&format!("{key}.latents")).unwrap();
        let got = to_vec(vq.encode_latents(images01.clone()).unwrap());
        let rel = max_diff(&got, &want) / max_abs(&want);
        assert!(rel <= 1e-4, "{label}: latent relative error {rel}");

        // Token ids: identical except where the reference's two best distances are < 1e-6 apart.
        let ids: Vec<i64> = vq.encode(images01).unwrap().into_data().iter::<i64>().collect();
        let want_ids = r.read_f32(&format!("{key}.ids")).unwrap();
        let gaps = r.read_f32(&format!("{key}.gap")).unwrap();
        for ((g, w), gap) in ids.iter().zip(&want_ids).zip(&gaps) {
            assert!(
                *g == *w as i64 || *gap < 1e-6,
                "{label}: id {g} vs {w} (gap {gap})"
            );
        }

        // Decoding the reference ids: max abs error <= 1e-4 in the model's own range.
        let shape = r.shape(&format!("{key}.ids")).unwrap();
        let ref_ids: Vec<i64> = want_ids.iter().map(|x| *x as i64).collect();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ref_ids, [shape[0], shape[1]]), device);
        let g = vq.grid().rows;
        let z = vq
            .codebook()
            .embed(tokens.clone())
            .unwrap()
            .swap_dims(1, 2)
            .reshape([shape[0], vq.code_dim(), g, g]);
        let decoded = to_vec(vq.decode_latents(z).unwrap());
        let err = max_diff(&decoded, &r.read_f32(&format!("{key}.decoded")).unwrap());
        assert!(err <= 1e-4, "{label}: decoded max abs error {err}");
        // The Tokenizer path returns [0, 1] images of the right size.
        let img = vq.decode(tokens).unwrap();
        let v = to_vec(img.clone());
        assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
        assert_eq!(img.dims()[2], vq.image_size().0);
        println!("{label}: latent rel err {rel:.2e}, decoded max err {err:.2e}");
    }
}

fn layouts_round_trip<B: ArBackend>(device: &B::Device) {
    let vq = Vqgan::<B>::load(fixtures().join("diffusers_attn"), None, device).unwrap();
    let r = reference();
    let images = r.tensor::<B, 4>("diffusers_attn.images", device).unwrap();
    let want = to_vec(vq.encode_latents(images.clone()).unwrap());
    for layout in [Layout::Taming, Layout::Diffusers] {
        let dir = std::env::temp_dir().join(format!("ar_refine_vq_rt_{layout:?}_{}", std::process::id()));
        vq.save(&dir, layout, StoreDtype::F32).unwrap();
        let again = Vqgan::<B>::load(dir.join("model.safetensors"), None, device).unwrap();
        assert_eq!(
            to_vec(again.encode_latents(images.clone()).unwrap()),
            want,
            "{layout:?}"
        );
        std::fs::remove_dir_all(dir).ok();
    }
    // stored as f16 (read in its stored type, converted once by the backend): the latents move
    // by about f16's rounding of the weights, far less than a wrong tensor would
    let dir = std::env::temp_dir().join(format!("ar_refine_vq_f16_{}", std::process::id()));
    vq.save(&dir, Layout::Diffusers, StoreDtype::F16).unwrap();
    let file = SafetensorsFile::open(dir.join("model.safetensors")).unwrap();
    assert_eq!(file.dtype("encoder.conv_in.weight").as_deref(), Some("F16"));
    let half = Vqgan::<B>::load(dir.join("model.safetensors"), None, device).unwrap();
    let got = to_vec(half.encode_latents(images).unwrap());
    let rel = max_diff(&got, &want) / max_abs(&want);
    assert!(rel > 0.0 && rel < 1e-2, "f16 weights: latent rel err {rel:.2e}");
    std::fs::remove_dir_all(dir).ok();
}

fn bad_inputs_are_typed_errors<B: ArBackend>(device: &B::Device) {
    // A config that does not match the weights: every problem is listed.
    let mut cfg = VqganConfig::from_file(fixtures().join("open_muse")).unwrap();
    cfg.num_res_blocks = 3;
    let src = ar_refine::io::open_checkpoint(fixtures().join("open_muse/pytorch_model.bin")).unwrap();
    let msg = Vqgan::<B>::from_checkpoint(cfg, src.as_ref(), device)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("missing keys:") && msg.contains("encoder.down.0.block.2.conv1.weight"),
        "{msg}"
    );
    let mut cfg = VqganConfig::from_file(fixtures().join("open_muse")).unwrap();
    cfg.mid_attention = true;
    let msg = Vqgan::<B>::from_checkpoint(cfg, src.as_ref(), device)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("encoder.mid.attn_1.q.weight"), "{msg}");
    // Weights of a bigger model: the extra tensors are unexpected keys.
    let mut cfg = VqganConfig::from_file(fixtures().join("open_muse")).unwrap();
    cfg.num_res_blocks = 1;
    let msg = Vqgan::<B>::from_checkpoint(cfg, src.as_ref(), device)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unexpected keys:") && msg.contains("decoder.up.0.block.2.conv1.bias"),
        "{msg}"
    );
    let mut cfg = VqganConfig::from_file(fixtures().join("open_muse")).unwrap();
    cfg.embed_dim = 4;
    let msg = Vqgan::<B>::from_checkpoint(cfg, src.as_ref(), device)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("shape mismatches: ") && msg.contains("quant_conv.weight"),
        "{msg}"
    );

    // Corrupt files are checkpoint errors.
    let dir = std::env::temp_dir().join(format!("ar_refine_vq_bad_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join("open_muse/config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(fixtures().join("open_muse/pytorch_model.bin")).unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), &bytes[..bytes.len() / 3]).unwrap();
    assert!(matches!(
        Vqgan::<B>::load(dir.join("pytorch_model.bin"), None, device),
        Err(Error::Checkpoint { .. })
    ));
    std::fs::write(dir.join("x.safetensors"), b"garbage").unwrap();
    assert!(matches!(
        Vqgan::<B>::load(dir.join("x.safetensors"), None, device),
        Err(Error::Checkpoint { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();

    // Wrong image shapes, NaN pixels, out-of-range and mis-shaped ids.
    let vq = Vqgan::<B>::load(fixtures().join("diffusers"), None, device).unwrap();
    assert!(matches!(
        vq.encode(Tensor::zeros([1, 3, 32, 64], device)),
        Err(Error::Shape { .. })
    ));
    let nan = Tensor::<B, 4>::zeros([1, 3, 64, 64], device).div_scalar(0.0);
    assert!(matches!(vq.encode(nan), Err(Error::NonFinite { .. })));
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![64i64; 16], [1, 16]), device);
    assert!(matches!(
        vq.decode(ids),
        Err(Error::TokenOutOfRange { id: 64, .. })
    ));
    assert!(matches!(
        vq.decode(Tensor::zeros([1, 15], device)),
        Err(Error::Shape { .. })
    ));
    // Unsupported or broken configs.
    assert!(VqganConfig::from_json(&serde_json::json!({"hidden_channels": 8})).is_err());
    let mut c = VqganConfig::lvm();
    c.num_groups = 5;
    assert!(c.validate().is_err());
}

fn chunked_batches_equal_one_pass<B: ArBackend>(device: &B::Device) {
    let vq = Vqgan::<B>::load(fixtures().join("open_muse/pytorch_model.bin"), None, device).unwrap();
    let images = Tensor::<B, 4>::random(
        [5, 3, 64, 64],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        device,
    );
    let whole: Vec<i64> = vq
        .encode(images.clone())
        .unwrap()
        .into_data()
        .iter::<i64>()
        .collect();
    let small = vq.clone().with_batch_chunk(2);
    let parts: Vec<i64> = small.encode(images).unwrap().into_data().iter::<i64>().collect();
    assert_eq!(whole, parts);
}

/// The convolution path is a setting of each tokenizer (no process-wide switch): two copies of
/// one model, one per path, encode alike and each keeps its own path.
fn conv_paths_agree_per_tokenizer<B: ArBackend>(device: &B::Device) {
    let gemm = Vqgan::<B>::load(fixtures().join("diffusers_attn"), None, device).unwrap();
    let backend = gemm.clone().with_conv_path(ConvPath::Backend);
    assert_eq!(
        (gemm.conv_path(), backend.conv_path()),
        (ConvPath::Gemm, ConvPath::Backend)
    );
    let side = gemm.image_size().0;
    let images = Tensor::<B, 4>::random(
        [2, 3, side, side],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        device,
    );
    let a = to_vec(gemm.encode_latents(images.clone()).unwrap());
    let b = to_vec(backend.encode_latents(images).unwrap());
    let rel = max_diff(&a, &b) / max_abs(&a);
    assert!(
        rel <= 1e-4,
        "latents differ between the paths: relative error {rel}"
    );
}

backend_tests!(
    matches_pytorch_reference,
    layouts_round_trip,
    bad_inputs_are_typed_errors,
    chunked_batches_equal_one_pass,
    conv_paths_agree_per_tokenizer,
);

/// The demo v2 tokenizer (`models/tiny-lvm-v2/tokenizer`, written by
/// `scripts/demo/v2/tokenizer.py` in PyTorch) loads as the crate's VQGAN and reconstructs the
/// bundled photos, which no tokenizer was trained on, well above what the photos' own 8×8 block
/// means give (192 numbers per photo against 256 ten-bit codes), measured in the same run: a wrong
/// layout, a misread l2-normalised codebook or a transposed tensor would bring it down to noise.
#[test]
fn demo_v2_tokenizer_reconstructs_unseen_photos() {
    type B = burn::backend::NdArray;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let device = Default::default();
    let v2 = Vqgan::<B>::load(root.join("models/tiny-lvm-v2/tokenizer"), None, &device).unwrap();
    assert_eq!((v2.config().num_embeddings, v2.config().embed_dim), (1024, 8));
    let photos = ImageSet::from_folder(root.join("assets/photos"), 64).unwrap();
    let new = reconstruction_psnr(&v2, &photos, 8, &device).unwrap();
    // the baseline: every photo as its 8×8 grid of block means (a 16× smaller picture), scored
    // by the same per-image PSNR as the reconstructions
    let all: Vec<usize> = (0..photos.len()).collect();
    let x = photos.batch::<B>(&all, &device).unwrap();
    let [n, c, h, w] = x.dims();
    let cells = [n, c, h / 8, 8, w / 8, 8];
    let means = x.clone().reshape(cells).mean_dim(5).mean_dim(3).expand(cells);
    let blocks = ar_refine::eval::psnr(x, means.reshape([n, c, h, w])).unwrap();
    eprintln!("bundled photos: v2 tokenizer {new:.2} dB, 8×8 block means {blocks:.2} dB");
    assert!(
        new > 20.0 && new > blocks + 5.0,
        "v2 {new:.2} dB, block means {blocks:.2} dB"
    );
}
