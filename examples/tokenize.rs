//! Round-trips an image through a VQGAN checkpoint.
//!
//! ```text
//! cargo run --release --example tokenize -- --checkpoint FILE [--config config.json] \
//!     --image in.png --out roundtrip.png [--tokens-out tokens.txt]
//! ```
//!
//! `FILE` is an open-MUSE `pytorch_model.bin` (LVM's `Emma02/vqvae_ckpts`), a diffusers
//! `diffusion_pytorch_model.safetensors` (`amused/amused-256` `vqvae/`), a taming `.ckpt`, or a
//! directory holding one; the configuration is `--config` or the `config.json` beside it. The
//! image is resized to the model's resolution as LVM does (a plain resize of the whole image to
//! a square, no crop), encoded, printed as a token grid, decoded and written to `--out`; the
//! round-trip PSNR against the resized input is printed. `--tokens-out` writes the ids, one grid
//! row per line.

#[path = "common/args.rs"]
mod args;

use ar_refine::eval::psnr;
use ar_refine::io::{load_image, save_image, write_token_rows};
use ar_refine::tokenizer::Vqgan;
use ar_refine::Tokenizer;
use args::{AnyResult, Args};
use burn::backend::NdArray;

type B = NdArray;

const USAGE: &str = "cargo run --release --example tokenize -- --checkpoint FILE [--config config.json] --image in.png --out roundtrip.png [--tokens-out tokens.txt]";

fn main() -> AnyResult<()> {
    let args = Args::parse(USAGE, &[])?;
    args.only(&["checkpoint", "config", "image", "out", "tokens-out"])?;
    let checkpoint: String = args.required("checkpoint")?;
    let image: String = args.required("image")?;
    let out: String = args.required("out")?;
    let device = Default::default();

    let vq = Vqgan::<B>::load(&checkpoint, args.path("config").as_deref(), &device)?;
    let c = vq.config();
    println!(
        "tokenizer: {} parameters, {}×{} px → {}×{} tokens, codebook {} × {}",
        vq.num_params(),
        c.resolution,
        c.resolution,
        c.grid_size(),
        c.grid_size(),
        c.num_embeddings,
        c.embed_dim
    );
    let x = load_image::<B>(&image, vq.image_size(), &device)?.unsqueeze::<4>();
    let ids = vq.encode(x.clone())?;
    let grid = vq.grid();
    let flat: Vec<i64> = ids.clone().into_data().iter::<i64>().collect();
    let width = flat.iter().map(|i| i.to_string().len()).max().unwrap_or(1);
    let rows: Vec<String> = flat
        .chunks(grid.cols)
        .map(|r| {
            r.iter()
                .map(|i| format!("{i:>width$}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    println!("tokens ({}×{}):\n{}", grid.rows, grid.cols, rows.join("\n"));
    let y = vq.decode(ids)?;
    println!("round-trip PSNR: {:.2} dB", psnr(x, y.clone())?);
    save_image(y.squeeze_dim::<3>(0), &out)?;
    println!("wrote {out}");
    if let Some(path) = args.path("tokens-out") {
        let rows: Vec<Vec<i64>> = flat.chunks(grid.cols).map(<[i64]>::to_vec).collect();
        write_token_rows(&path, &rows)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
