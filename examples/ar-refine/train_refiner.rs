//! `ar-refine train-refiner`: a refiner trained on the outputs of a frozen backbone.

use std::path::PathBuf;

use ar_refine::io::StoreDtype;
use ar_refine::refiner::{save_refiner, CodeHead, Decision, Preset};
use ar_refine::train::{
    calibrate_gate, train_refiner, validate_refiner, BackboneHidden, HiddenSource, Pairs, RefinerData,
    RefinerTrainConfig,
};
use ar_refine::{Codebook, Tokenizer};
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::common::{
    self, command_line, AnyResult, DataArgs, ModelArgs, PairArgs, PromptSet, TrainPromptArgs, B,
};
use crate::progress::Progress;

/// The arguments of `ar-refine train-refiner` (its help text is the doc comment of
/// `Command::TrainRefiner` in `main.rs`).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    models: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    prompts: TrainPromptArgs,
    /// Validation prompts (from the selection photos).
    #[arg(long, default_value_t = 128)]
    val_count: usize,
    #[command(flatten)]
    pairs: PairArgs,
    /// The refiner: `corrector` (query prefix, confidence, code logits with identity
    /// initialisation, critic; cross-entropy + critic loss; a gate calibrated on the validation
    /// pairs), `paper` (Wang et al. 2025: answer only, cosine loss, snap), or one of
    /// `cosine-query`, `ce-answer`, `ce-query`, `ce-query-confidence`, `prompt-only`.
    #[arg(long, default_value = "corrector")]
    preset: Preset,
    /// Also read the backbone's hidden states (one teacher-forced pass per batch).
    #[arg(long)]
    hidden: bool,
    /// Soft targets: spread the cross-entropy over this many nearest codes of the true one.
    #[arg(long, default_value_t = 0)]
    soft_neighbours: usize,
    /// Seed of the refiner's initial weights and batches.
    #[arg(long, default_value_t = 0)]
    refiner_seed: u64,
    /// Training steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Sentences per step (over all devices).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    /// Width of the refiner.
    #[arg(long, default_value_t = 256)]
    d_model: usize,
    /// Transformer layers of the refiner.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Attention heads of the refiner.
    #[arg(long, default_value_t = 8)]
    heads: usize,
    /// Save the refiner in f32 (default: f16).
    #[arg(long)]
    f32: bool,
    /// Output folder.
    #[arg(long, default_value = "target/refiner-run")]
    out: PathBuf,
}

pub fn run(args: Args) -> AnyResult<()> {
    let preset = args.preset;
    let (vq, lm) = args.models.load()?;
    let out = common::out_dir(&args.out)?;
    let images = args.data.images()?;
    let (task, k) = (args.prompts.task.task.as_str(), args.prompts.task.k);
    let identity = serde_json::json!({
        "tokenizer": args.models.tokenizer,
        "backbone": args.models.backbone,
        "images": images.describe,
    });
    let prompts = |images: &ar_refine::data::ImageSet, count, seed, cache: &str| {
        let set = PromptSet {
            images,
            task,
            k,
            count,
            seed,
            cache: out.join(cache),
        };
        common::pairs(&vq, &lm, set, &args.models, &args.pairs, identity.clone())
    };
    let (train, _) = prompts(&images.train, args.prompts.train_count, 1, "pairs-train")?;
    let (val, _) = prompts(&images.select, args.val_count, 2, "pairs-val")?;
    if args.pairs.pairs_only {
        println!(
            "pairs: {} train, {} validation in {}",
            train.len(),
            val.len(),
            out.display()
        );
        return Ok(());
    }

    let device = common::device();
    let devices = args.pairs.devices();
    let seed = args.refiner_seed;
    <Autodiff<B> as Backend>::seed(&device, seed);
    let mut rcfg = preset
        .config(vq.code_dim())
        .with_d_model(args.d_model)
        .with_n_layers(args.layers)
        .with_n_heads(args.heads)
        .with_max_grid(vq.grid().rows.max(vq.grid().cols));
    if args.hidden {
        rcfg.inputs.hidden_size = Some(lm.config().hidden_size);
    }
    let book = Codebook::<Autodiff<B>>::new(Tensor::from_inner(vq.codebook().codes().clone()), vq.metric())?;
    let refiner = rcfg.init_with_codebook(&book, &device)?;
    eprintln!("refiner ({}): {} parameters", preset.name(), refiner.num_params());
    let mut cfg = RefinerTrainConfig::new(args.steps, args.batch, args.lr);
    cfg.loss = preset.loss();
    cfg.loss.soft_neighbours = args.soft_neighbours;
    cfg.seed = seed;
    cfg.checkpoint_every = args.checkpoint_every;
    cfg.validate_every = (cfg.steps / 10).max(1);
    let hidden = BackboneHidden::new(&lm);
    let hidden_src: Option<&dyn HiddenSource<B>> = args.hidden.then_some(&hidden as _);
    let data = RefinerData {
        codebook: &book,
        grid: vq.grid(),
        train: &train,
        val: Some(&val),
        devices: &devices,
        hidden: hidden_src,
    };
    let bar = Progress::new("train", cfg.steps, "steps", 50);
    let (refiner, state) = train_refiner(refiner, data, &cfg, Some(&out.join("checkpoints")), &mut |r| {
        let status = format!("loss {:.4} lr {:.1e} {:.0} tok/s", r.loss, r.lr, r.tokens_per_sec);
        if let (Some(l), Some(a)) = (r.val_loss, r.val_accuracy) {
            bar.println(format!(
                "step {}/{}: {status}, val loss {l:.4} acc {a:.4}",
                r.step, r.steps
            ));
        }
        bar.step(r.step, r.steps, &status);
    })?;
    bar.finish();
    let refiner = refiner.valid();
    let inner_book = vq.codebook().clone();
    // the decision rule: the preset's, with the gate calibrated on the validation pairs
    let (decision, calibration) = match preset.decision() {
        Decision::Gate { .. } => {
            let (rule, point) = calibrate_gate(&refiner, &inner_book, vq.grid(), &val, 32, hidden_src)?;
            eprintln!(
                "gate calibrated on {} validation pairs: margin {}, threshold {:.3} -> accuracy {:.4} (backbone {:.4}), edit rate {:.4}",
                val.len(),
                point.margin,
                point.threshold,
                point.accuracy,
                backbone_accuracy(&val),
                point.edit_rate
            );
            (rule, serde_json::to_value(point)?)
        }
        rule => (rule, serde_json::Value::Null),
    };
    let mut by_rule = serde_json::Map::new();
    for rule in [Decision::Snap, Decision::Argmax, Decision::ExpectedSnap, decision] {
        let logits = refiner.config().heads.logits != CodeHead::None;
        if !logits && matches!(rule, Decision::Argmax | Decision::ExpectedSnap) {
            continue;
        }
        let v = validate_refiner(
            &refiner,
            &inner_book,
            vq.grid(),
            &val,
            &cfg.loss,
            Some(rule),
            cfg.batch_size,
            hidden_src,
        )?;
        by_rule.insert(rule.name().into(), serde_json::json!(v.accuracy));
    }
    let backbone_acc = backbone_accuracy(&val);
    let training = serde_json::json!({
        "preset": preset.name(), "task": task, "k": k, "loss": cfg.loss, "steps": state.step,
        "batch": cfg.batch_size, "lr": cfg.schedule, "seed": seed, "train_pairs": train.len(),
        "val_pairs": val.len(), "best": state.extra.get("best"), "val": state.extra.get("val"),
        "val_accuracy_by_rule": by_rule, "val_backbone_accuracy": backbone_acc,
        "gate_calibration": calibration, "command": command_line(),
    });
    let dtype = match args.f32 {
        true => StoreDtype::F32,
        false => StoreDtype::F16,
    };
    save_refiner(&refiner, decision, training.clone(), out.join("refiner"), dtype)?;
    let (first, last) = common::first_last(&state.losses, 20);
    println!(
        "{}",
        serde_json::json!({
            "preset": preset.name(), "task": task, "steps": state.step,
            "loss_first": first, "loss_last": last,
            "best": state.extra.get("best"), "decision": decision, "val_accuracy_by_rule": training["val_accuracy_by_rule"],
            "val_backbone_accuracy": backbone_acc, "refiner": out.join("refiner"),
        })
    );
    Ok(())
}

/// The backbone's token accuracy on `pairs`.
fn backbone_accuracy(pairs: &Pairs) -> f64 {
    let (mut right, mut all) = (0usize, 0usize);
    for (g, t) in pairs.generated.iter().zip(&pairs.truth) {
        right += g.iter().zip(t).filter(|(a, b)| a == b).count();
        all += t.len();
    }
    right as f64 / all.max(1) as f64
}
