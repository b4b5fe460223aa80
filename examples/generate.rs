//! Generates tokens with a LLaMA backbone in Hugging Face format (LVM's `Emma02/LVM_ckpts`
//! layout).
//!
//! ```text
//! cargo run --release --example generate -- --model DIR --prompt-tokens FILE --max-new-tokens N \
//!     [--temperature T --top-p P --top-k K --seed S] --out FILE
//! cargo run --release --example generate -- --model DIR --images a.png,b.png,c.png \
//!     --tokenizer CKPT [--tokenizer-config config.json] --max-new-tokens 256 --out FILE
//! ```
//!
//! - `DIR`: `config.json` + `model.safetensors` or sharded `model.safetensors.index.json`.
//! - `--prompt-tokens FILE`: whitespace-separated vocabulary ids; each non-empty line is one
//!   prompt of the batch (all lines the same length).
//! - `--images` + `--tokenizer`: builds LVM's visual sentence instead: every image is resized
//!   to the tokenizer's resolution, encoded, and the code blocks are concatenated in order (no
//!   separators), code `c` being vocabulary id `image_token_start + c`. The generated image
//!   tokens are also decoded: `FILE` with its extension replaced by `.png` (one image) or
//!   `_0.png`, `_1.png`, ... (several).
//! - Sampling: greedy unless `--temperature` > 0; `--top-k`, `--top-p`, `--seed` as usual;
//!   only image-token ids are ever sampled, and the prompt keeps its last 15 images of context
//!   when it holds more (as LVM's inference does) if the tokenizer is given.
//! - `--out FILE`: the new ids, whitespace-separated, one line per prompt.
//!
//! Runs on the CPU (NdArray backend).

#[path = "common/args.rs"]
mod args;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use ar_refine::backbone::{GenerateOptions, Llama};
use ar_refine::io::{load_image, read_token_rows, save_image, write_atomic};
use ar_refine::tokenizer::Vqgan;
use ar_refine::{ArBackbone, Sampling, Tokenizer};
use args::{AnyResult, Args};
use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};

type B = NdArray;

const USAGE: &str = "cargo run --release --example generate -- --model DIR (--prompt-tokens FILE | --images a.png,b.png,... --tokenizer CKPT [--tokenizer-config config.json]) --max-new-tokens N [--temperature T --top-p P --top-k K --seed S] --out FILE";

fn main() -> AnyResult<()> {
    let args = Args::parse(USAGE, &[])?;
    args.only(&[
        "model",
        "prompt-tokens",
        "images",
        "tokenizer",
        "tokenizer-config",
        "max-new-tokens",
        "temperature",
        "top-p",
        "top-k",
        "seed",
        "out",
    ])?;
    let model_dir: PathBuf = args.required::<String>("model")?.into();
    let n_new: usize = args.required("max-new-tokens")?;
    let out: PathBuf = args.required::<String>("out")?.into();
    let mut sampling = Sampling::temperature(args.get("temperature", 0.0)?).with_seed(args.get("seed", 0)?);
    sampling.top_k = args.opt("top-k")?;
    sampling.top_p = args.opt("top-p")?;
    let device = Default::default();

    let t = Instant::now();
    let model = Llama::<B>::from_pretrained(&model_dir, &device)?;
    let c = model.config();
    eprintln!(
        "model: {} layers, hidden {}, vocab {} (image ids {:?}), loaded in {:.1} s",
        c.num_hidden_layers,
        c.hidden_size,
        c.vocab_size,
        model.image_token_ids(),
        t.elapsed().as_secs_f64()
    );

    let tokenizer = match args.path("tokenizer") {
        Some(ckpt) => Some(Vqgan::<B>::load(
            &ckpt,
            args.path("tokenizer-config").as_deref(),
            &device,
        )?),
        None => None,
    };
    let image_ids = model.image_token_ids();
    let (prompt, context_images) = match (
        args.path("prompt-tokens"),
        args.opt::<String>("images")?,
        &tokenizer,
    ) {
        (Some(_), Some(_), _) => return Err("give either --prompt-tokens or --images, not both".into()),
        (Some(file), None, _) => {
            let rows = read_token_rows(&file)?;
            let (b, p) = (rows.len(), rows[0].len());
            let flat: Vec<i64> = rows.into_iter().flatten().collect();
            (
                Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [b, p]), &device),
                None,
            )
        }
        (None, Some(list), Some(vq)) => {
            if vq.codebook_size() != image_ids.len() {
                return Err(format!(
                    "the tokenizer has {} codes but the model has {} image ids",
                    vq.codebook_size(),
                    image_ids.len()
                )
                .into());
            }
            let mut blocks = Vec::new();
            for path in list.split(',').filter(|s| !s.is_empty()) {
                let x = load_image::<B>(path, vq.image_size(), &device)?.unsqueeze::<4>();
                blocks.push(vq.encode(x)?.add_scalar(image_ids.start as i64));
            }
            eprintln!(
                "visual sentence: {} images × {} tokens",
                blocks.len(),
                vq.grid().len()
            );
            (Tensor::cat(blocks, 1), Some((vq.grid().len(), 15)))
        }
        (None, Some(_), None) => return Err("--images needs --tokenizer".into()),
        (None, None, _) => return Err(format!("give --prompt-tokens or --images\n\n{USAGE}").into()),
    };

    let [b, p] = prompt.dims();
    let t = Instant::now();
    let mut progress = |step: usize, _: &[i64]| {
        if step % 16 == 15 || step + 1 == n_new {
            eprint!(
                "\rtoken {}/{n_new} ({:.1} tokens/s)",
                step + 1,
                (step + 1) as f64 / t.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    };
    let opts = GenerateOptions {
        context_images,
        on_token: Some(&mut progress),
        ..Default::default()
    };
    let generated = model.generate_with(prompt, n_new, &sampling, opts)?.tokens;
    eprintln!(
        "\ngenerated {b} × {n_new} tokens after a {p}-token prompt in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    let ids: Vec<i64> = generated.clone().into_data().iter::<i64>().collect();
    let text: String = ids
        .chunks(n_new)
        .map(|r| r.iter().map(i64::to_string).collect::<Vec<_>>().join(" ") + "\n")
        .collect();
    write_atomic(&out, text.as_bytes())?;
    println!("wrote {}", out.display());

    if let Some(vq) = &tokenizer {
        let per = vq.grid().len();
        let images = n_new / per;
        if !n_new.is_multiple_of(per) {
            eprintln!("note: {n_new} tokens are not a whole number of {per}-token images; decoding {images}");
        }
        for k in 0..images {
            let codes = generated
                .clone()
                .narrow(1, k * per, per)
                .sub_scalar(image_ids.start as i64);
            let img = vq.decode(codes)?;
            for row in 0..b {
                let suffix = match (images, b) {
                    (1, 1) => String::new(),
                    (_, 1) => format!("_{k}"),
                    _ => format!("_{row}_{k}"),
                };
                let path = out.with_file_name(format!(
                    "{}{suffix}.png",
                    out.file_stem().and_then(|s| s.to_str()).unwrap_or("generated")
                ));
                save_image(img.clone().narrow(0, row, 1).squeeze_dim::<3>(0), &path)?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
