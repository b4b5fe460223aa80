//! `ar-refine refine`: one prompt of images through the backbone and a trained refiner.

use std::path::PathBuf;
use std::time::Instant;

use ar_refine::io::{load_image, save_image, write_token_rows};
use ar_refine::pipeline::SelfRefinement;
use ar_refine::refiner::{load_refiner, Decision};
use ar_refine::Tokenizer;
use burn::tensor::Tensor;

use crate::common::{self, command_line, device, AnyResult, ModelArgs, SamplingArgs, B};

/// The arguments of `ar-refine refine` (its help text is the doc comment of
/// `Command::Refine` in `main.rs`).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    models: ModelArgs,
    /// A trained refiner: `train-refiner`'s `OUT/refiner` (`config.json` + `model.safetensors`).
    #[arg(long, value_name = "DIR")]
    refiner: PathBuf,
    /// The prompt's images in order: `x1,y1,...,xK,yK,query` (an odd count).
    #[arg(long, value_name = "X1,Y1,...,QUERY", value_delimiter = ',', required = true)]
    images: Vec<PathBuf>,
    /// Override the decision rule saved with the refiner (e.g. its calibrated gate).
    #[arg(long, value_enum)]
    rule: Option<Rule>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Output folder.
    #[arg(long, default_value = "target/refine")]
    out: PathBuf,
}

/// Decision rules that need no calibration.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Rule {
    /// The nearest code of the refined embedding (the paper's rule).
    Snap,
    /// The most likely code of the refiner's code logits.
    Argmax,
    /// The nearest code of the logits' expected embedding.
    ExpectedSnap,
}

pub fn run(args: Args) -> AnyResult<()> {
    if args.images.len().is_multiple_of(2) {
        return Err(format!(
            "--images takes K demonstration pairs and a query (an odd count), got {}",
            args.images.len()
        )
        .into());
    }
    let (vq, lm) = args.models.load()?;
    let device = device();
    let loaded = load_refiner::<B>(&args.refiner, &device)?;
    let decision = match args.rule {
        Some(Rule::Snap) => Decision::Snap,
        Some(Rule::Argmax) => Decision::Argmax,
        Some(Rule::ExpectedSnap) => Decision::ExpectedSnap,
        None => loaded.decision,
    };
    let pipeline = SelfRefinement::new(&lm, &vq, &loaded.refiner)?
        .with_sampling(args.sampling.sampling())
        .with_decision(decision)?;
    let images = args
        .images
        .iter()
        .map(|p| Ok(load_image::<B>(p, vq.image_size(), &device)?.unsqueeze::<4>()))
        .collect::<AnyResult<Vec<Tensor<B, 4>>>>()?;
    let start = Instant::now();
    let result = pipeline.run_images(&images)?;
    let seconds = start.elapsed().as_secs_f64();
    let ids = |t: &Tensor<B, 2, burn::tensor::Int>| t.clone().into_data().iter::<i64>().collect::<Vec<_>>();
    let (generated, refined) = (ids(&result.generated_tokens), ids(&result.refined_tokens));
    let changed = generated.iter().zip(&refined).filter(|(a, b)| a != b).count();
    let out = common::out_dir(&args.out)?;
    save_image(
        result.generated_images.squeeze_dim::<3>(0),
        out.join("backbone.png"),
    )?;
    save_image(result.refined_images.squeeze_dim::<3>(0), out.join("refined.png"))?;
    write_token_rows(out.join("tokens.txt"), &[generated.clone(), refined])?;
    println!(
        "{}",
        serde_json::json!({
            "tokens": generated.len(), "changed": changed, "decision": decision,
            "seconds": seconds, "out": out, "command": command_line(),
        })
    );
    Ok(())
}
