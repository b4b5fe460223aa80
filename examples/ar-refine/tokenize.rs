//! `ar-refine tokenize`: an image through a VQGAN checkpoint and back.

use std::path::PathBuf;

use ar_refine::io::{load_image, save_image, write_token_rows};
use ar_refine::metrics::psnr;
use ar_refine::tokenizer::Vqgan;
use ar_refine::Tokenizer;

use crate::common::{device, AnyResult, B};

/// The arguments of `ar-refine tokenize` (its help text is the doc comment of
/// `Command::Tokenize` in `main.rs`).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// VQGAN checkpoint: an open-MUSE `pytorch_model.bin` (LVM's `Emma02/vqvae_ckpts`), a
    /// diffusers `diffusion_pytorch_model.safetensors` (`amused/amused-256` `vqvae/`), a taming
    /// `.ckpt`, or a directory holding one.
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// The checkpoint's configuration (default: the `config.json` beside it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The image to round-trip (PNG or JPEG).
    #[arg(long, value_name = "FILE")]
    image: PathBuf,
    /// Where to write the decoded image (PNG).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Also write the token ids, one grid row per line.
    #[arg(long, value_name = "FILE")]
    tokens_out: Option<PathBuf>,
}

pub fn run(args: Args) -> AnyResult<()> {
    let device = device();
    let vq = Vqgan::<B>::load(&args.checkpoint, args.config.as_deref(), &device)?;
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
    let x = load_image::<B>(&args.image, vq.image_size(), &device)?.unsqueeze::<4>();
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
    save_image(y.squeeze_dim::<3>(0), &args.out)?;
    println!("wrote {}", args.out.display());
    if let Some(path) = &args.tokens_out {
        let rows: Vec<Vec<i64>> = flat.chunks(grid.cols).map(<[i64]>::to_vec).collect();
        write_token_rows(path, &rows)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
