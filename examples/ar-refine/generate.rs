//! `ar-refine generate`: tokens from a LLaMA backbone.

use std::path::PathBuf;
use std::time::Instant;

use ar_refine::backbone::{GenerateOptions, Llama};
use ar_refine::io::{load_image, read_token_rows, save_image, write_atomic};
use ar_refine::tokenizer::Vqgan;
use ar_refine::{ArBackbone, Tokenizer};
use burn::tensor::{Int, Tensor, TensorData};

use crate::common::{device, AnyResult, SamplingArgs, B};
use crate::progress::Progress;

/// The arguments of `ar-refine generate` (its help text is the doc comment of
/// `Command::Generate` in `main.rs`).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// LLaMA backbone in Hugging Face layout (LVM's `Emma02/LVM_ckpts`): `config.json` +
    /// `model.safetensors` or sharded `model.safetensors.index.json`.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Prompts as whitespace-separated vocabulary ids, one prompt per non-empty line (all lines
    /// the same length).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "images",
        required_unless_present = "images"
    )]
    prompt_tokens: Option<PathBuf>,
    /// A visual sentence of images, in order (needs `--tokenizer`).
    #[arg(
        long,
        value_name = "A.png,B.png,...",
        value_delimiter = ',',
        requires = "tokenizer"
    )]
    images: Vec<PathBuf>,
    /// VQGAN checkpoint whose codes are the backbone's image tokens.
    #[arg(long, value_name = "CKPT")]
    tokenizer: Option<PathBuf>,
    /// The tokenizer's configuration (default: the `config.json` beside the checkpoint).
    #[arg(long, value_name = "FILE")]
    tokenizer_config: Option<PathBuf>,
    /// Tokens to generate per prompt.
    #[arg(long, value_name = "N")]
    max_new_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Where to write the new ids, whitespace-separated, one line per prompt.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn run(args: Args) -> AnyResult<()> {
    let n_new = args.max_new_tokens;
    let device = device();
    let t = Instant::now();
    let model = Llama::<B>::from_pretrained(&args.model, &device)?;
    let c = model.config();
    eprintln!(
        "model: {} layers, hidden {}, vocab {} (image ids {:?}), loaded in {:.1} s",
        c.num_hidden_layers,
        c.hidden_size,
        c.vocab_size,
        model.image_token_ids(),
        t.elapsed().as_secs_f64()
    );
    let tokenizer = match &args.tokenizer {
        Some(ckpt) => Some(Vqgan::<B>::load(ckpt, args.tokenizer_config.as_deref(), &device)?),
        None => None,
    };
    let image_ids = model.image_token_ids();
    let (prompt, context_images) = match (&args.prompt_tokens, &tokenizer) {
        (Some(file), _) => {
            let rows = read_token_rows(file)?;
            let (b, p) = (rows.len(), rows[0].len());
            let flat: Vec<i64> = rows.into_iter().flatten().collect();
            (
                Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [b, p]), &device),
                None,
            )
        }
        (None, Some(vq)) => {
            if vq.codebook_size() != image_ids.len() {
                return Err(format!(
                    "the tokenizer has {} codes but the model has {} image ids",
                    vq.codebook_size(),
                    image_ids.len()
                )
                .into());
            }
            let mut blocks = Vec::new();
            for path in &args.images {
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
        (None, None) => return Err("--images needs --tokenizer".into()),
    };
    let [b, p] = prompt.dims();
    let t = Instant::now();
    let bar = Progress::new("generate", n_new, "tokens", 16);
    let mut progress = |step: usize, _: &[i64]| {
        bar.set(step + 1, n_new, String::new, || {
            format!(
                "token {}/{n_new} ({:.1} tokens/s)",
                step + 1,
                (step + 1) as f64 / t.elapsed().as_secs_f64()
            )
        })
    };
    let opts = GenerateOptions {
        context_images,
        on_token: Some(&mut progress),
        ..Default::default()
    };
    let generated = model
        .generate_with(prompt, n_new, &args.sampling.sampling(), opts)?
        .tokens;
    bar.finish();
    eprintln!(
        "generated {b} × {n_new} tokens after a {p}-token prompt in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let ids: Vec<i64> = generated.clone().into_data().iter::<i64>().collect();
    let text: String = ids
        .chunks(n_new.max(1))
        .map(|r| r.iter().map(i64::to_string).collect::<Vec<_>>().join(" ") + "\n")
        .collect();
    write_atomic(&args.out, text.as_bytes())?;
    println!("wrote {}", args.out.display());
    if let Some(vq) = &tokenizer {
        let per = vq.grid().len();
        let images = n_new / per;
        if !n_new.is_multiple_of(per) {
            eprintln!("note: {n_new} tokens are not a whole number of {per}-token images; decoding {images}");
        }
        let out = &args.out;
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
