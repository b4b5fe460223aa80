//! The built-in `TransformerRefiner` and its decision rules: identity at initialisation under
//! every rule, learning, finite gradients for every loss, the gate, the inputs it checks, files.

mod common;

use ar_refine::io::StoreDtype;
use ar_refine::refiner::{
    load_refiner, save_refiner, CodeHead, Decision, Preset, RefinerHeads, RefinerInputs,
};
use ar_refine::{
    cosine_loss, Codebook, Confidence, Error, Metric, PositionEncoding, PromptContext, RefineInput,
    RefinementLoss, Refiner, TokenGrid, TransformerRefiner, TransformerRefinerConfig,
};
use ar_refine::{ArAutodiffBackend, ArBackend};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData};
use common::{fixture_vqgan, tensor, to_vec, uniform_vec, SplitMix64};

const HIDDEN: usize = 12;

fn config(d: usize, position: PositionEncoding) -> TransformerRefinerConfig {
    TransformerRefinerConfig::new(d)
        .with_d_model(32)
        .with_n_heads(4)
        .with_n_layers(2)
        .with_position(position)
        .with_max_grid(8)
}

fn ids<B: ArBackend>(t: Tensor<B, 2, Int>) -> Vec<i64> {
    t.into_data().iter::<i64>().collect()
}

fn random_codes<B: ArBackend>(
    rng: &mut SplitMix64,
    b: usize,
    n: usize,
    k: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = (0..b * n).map(|_| rng.below(k) as i64).collect();
    Tensor::from_data(TensorData::new(v, [b, n]), device)
}

/// A full input for `codes` `[b, n]` on `grid`: two prompt images, confidence, hidden states.
fn full_input<B: ArBackend>(
    rng: &mut SplitMix64,
    book: &Codebook<B>,
    codes: Tensor<B, 2, Int>,
    grid: TokenGrid,
    device: &B::Device,
) -> RefineInput<B> {
    let [b, n] = codes.dims();
    let prompt = random_codes::<B>(rng, b, 2 * n, book.size(), device);
    let lp: Vec<f32> = (0..b * n).map(|_| -rng.uniform(0.0, 3.0)).collect();
    let ent: Vec<f32> = (0..b * n).map(|_| rng.uniform(0.0, 3.0)).collect();
    RefineInput::new(codes.clone(), book.embed(codes).unwrap(), grid)
        .with_prompt(PromptContext {
            embeddings: book.embed(prompt).unwrap(),
            images: 2,
        })
        .with_confidence(Confidence {
            log_prob: tensor::<B, 2>(lp, [b, n], device),
            entropy: tensor::<B, 2>(ent, [b, n], device),
        })
        .with_hidden(tensor::<B, 3>(
            uniform_vec(rng, b * n * HIDDEN),
            [b, n, HIDDEN],
            device,
        ))
}

/// Every rule that applies to the refiner's heads.
fn rules(cfg: &TransformerRefinerConfig) -> Vec<Decision> {
    let mut r = vec![
        Decision::Snap,
        Decision::Gate {
            margin: 0.0,
            threshold: 0.0,
        },
        Decision::Gate {
            margin: 0.5,
            threshold: 0.2,
        },
    ];
    if cfg.heads.logits != CodeHead::None {
        r.extend([Decision::Argmax, Decision::ExpectedSnap]);
    }
    r
}

fn identity_at_init<B: ArBackend>(device: &B::Device) {
    let mut rng = SplitMix64::new(4);
    let grid = TokenGrid::new(3, 4);
    // a random codebook and the fixture VQGAN's trained one
    let random = Codebook::new(
        tensor::<B, 2>(uniform_vec(&mut rng, 40 * 6), [40, 6], device),
        Metric::SquaredL2,
    )
    .unwrap();
    let vq = fixture_vqgan::<B>(device);
    for book in [random, ar_refine::Tokenizer::codebook(&vq).clone()] {
        let d = book.dim();
        let mut cfgs: Vec<TransformerRefinerConfig> = Preset::ALL
            .iter()
            .filter(|p| **p != Preset::PromptOnly)
            .map(|p| {
                p.config(d)
                    .with_d_model(32)
                    .with_n_heads(4)
                    .with_n_layers(2)
                    .with_max_grid(8)
            })
            .collect();
        cfgs.push(config(d, PositionEncoding::Sinusoidal));
        let mut linear = Preset::Corrector
            .config(d)
            .with_d_model(32)
            .with_n_heads(4)
            .with_max_grid(8);
        linear.heads.logits = CodeHead::Linear;
        linear.inputs.hidden_size = Some(HIDDEN);
        cfgs.push(linear);
        for cfg in cfgs {
            let refiner = cfg.init_with_codebook(&book, device).unwrap();
            let codes = random_codes::<B>(&mut rng, 2, 12, book.size(), device);
            let input = full_input(&mut rng, &book, codes.clone(), grid, device);
            let e = to_vec(input.embeddings.clone());
            let out = refiner.refine(input).unwrap();
            assert_eq!(to_vec(out.embeddings.clone()), e, "{cfg:?}");
            for rule in rules(&cfg) {
                let decided = rule.decide(&out, &codes, &book).unwrap();
                assert_eq!(ids(decided), ids(codes.clone()), "{rule:?} on {:?}", cfg.heads);
            }
        }
    }
}

fn changes_after_one_step<B: ArAutodiffBackend>(device: &B::Device) {
    let mut rng = SplitMix64::new(5);
    let grid = TokenGrid::new(4, 4);
    for position in [PositionEncoding::Learned, PositionEncoding::Sinusoidal] {
        let mut refiner = config(8, position).init::<B>(device).unwrap();
        let e = tensor::<B, 3>(uniform_vec(&mut rng, 2 * 16 * 8), [2, 16, 8], device);
        let target = tensor::<B, 3>(uniform_vec(&mut rng, 2 * 16 * 8), [2, 16, 8], device);
        let before = cosine_loss(
            refiner.refine_embeddings(e.clone(), grid).unwrap(),
            target.clone(),
            None,
        )
        .unwrap();
        let before_val = to_vec(before.clone())[0];
        let grads = GradientsParams::from_grads(before.backward(), &refiner);
        let mut opt = AdamWConfig::new().init();
        refiner = opt.step(1e-2, refiner, grads);
        let after = refiner
            .valid()
            .refine_embeddings(e.clone().inner(), grid)
            .unwrap();
        let moved: f32 = to_vec(after.clone() - e.clone().inner())
            .iter()
            .map(|v| v.abs())
            .sum();
        assert!(moved > 1e-3, "{position:?}: refiner did not move ({moved})");
        let after_loss = to_vec(cosine_loss(after, target.inner(), None).unwrap())[0];
        assert!(
            after_loss < before_val,
            "{position:?}: loss {before_val} -> {after_loss}"
        );
    }
}

/// A corrector with every input and both categorical heads, trained `steps` steps towards
/// random truths with `loss`: returns it and the last loss.
fn trained<B: ArAutodiffBackend>(
    rng: &mut SplitMix64,
    book: &Codebook<B>,
    head: CodeHead,
    loss: RefinementLoss,
    steps: usize,
    device: &B::Device,
) -> (TransformerRefiner<B>, RefineInput<B>, Tensor<B, 2, Int>) {
    let grid = TokenGrid::new(4, 4);
    let mut cfg = Preset::Corrector
        .config(book.dim())
        .with_d_model(32)
        .with_n_heads(4)
        .with_max_grid(8);
    cfg.heads.logits = head;
    cfg.inputs.hidden_size = Some(HIDDEN);
    let mut refiner = cfg.init_with_codebook(book, device).unwrap();
    let codes = random_codes::<B>(rng, 2, 16, book.size(), device);
    let input = full_input(rng, book, codes, grid, device);
    let truth = random_codes::<B>(rng, 2, 16, book.size(), device);
    let prepared = loss.prepare(book).unwrap();
    let mut opt = AdamWConfig::new().init();
    for _ in 0..steps {
        let out = refiner.refine(input.clone()).unwrap();
        let l = prepared.forward(&out, &input.codes, &truth).unwrap();
        let grads = l.backward();
        let params = GradientsParams::from_grads(grads, &refiner);
        refiner = opt.step(3e-2, refiner, params);
    }
    (refiner, input, truth)
}

fn finite_gradients_for_every_loss<B: ArAutodiffBackend>(device: &B::Device) {
    let mut rng = SplitMix64::new(9);
    let book = Codebook::new(
        tensor::<B, 2>(uniform_vec(&mut rng, 24 * 6), [24, 6], device),
        Metric::SquaredL2,
    )
    .unwrap();
    let base = RefinementLoss::none();
    let losses = [
        RefinementLoss::default(),
        RefinementLoss {
            mse_weight: 0.5,
            ..RefinementLoss::default()
        },
        RefinementLoss {
            cross_entropy: 1.0,
            ..base
        },
        RefinementLoss {
            cross_entropy: 1.0,
            soft_neighbours: 4,
            ..base
        },
        RefinementLoss { critic: 1.0, ..base },
        Preset::Corrector.loss(),
        RefinementLoss {
            cosine: 0.3,
            mse_weight: 0.1,
            cross_entropy: 1.0,
            soft_neighbours: 3,
            critic: 0.5,
            ..base
        },
    ];
    for head in [CodeHead::Cosine, CodeHead::Linear] {
        for loss in losses {
            let (refiner, input, truth) = trained(&mut rng, &book, head, loss, 0, device);
            let out = refiner.refine(input.clone()).unwrap();
            let l = loss
                .prepare(&book)
                .unwrap()
                .forward(&out, &input.codes, &truth)
                .unwrap();
            assert!(to_vec(l.clone())[0].is_finite(), "{loss:?}");
            let (finite, total) = gradient_norm(&refiner, l);
            assert!(
                finite && total > 0.0,
                "{head:?} {loss:?}: gradients finite {finite}, |g| {total}"
            );
        }
    }
    // every preset at initialisation with its own loss (the prompt-only control's output starts
    // from its trunk alone, not from an answer)
    for preset in Preset::ALL {
        let cfg = preset
            .config(book.dim())
            .with_d_model(32)
            .with_n_heads(4)
            .with_max_grid(8);
        let refiner = cfg.init_with_codebook(&book, device).unwrap();
        let codes = random_codes::<B>(&mut rng, 2, 16, book.size(), device);
        let input = full_input(&mut rng, &book, codes, TokenGrid::new(4, 4), device);
        let truth = random_codes::<B>(&mut rng, 2, 16, book.size(), device);
        let out = refiner.refine(input.clone()).unwrap();
        let l = preset
            .loss()
            .prepare(&book)
            .unwrap()
            .forward(&out, &input.codes, &truth)
            .unwrap();
        let (finite, total) = gradient_norm(&refiner, l);
        assert!(
            finite && total > 0.0,
            "{preset:?}: gradients finite {finite}, |g| {total}"
        );
    }
}

/// Backpropagates `loss` into `refiner`: (every gradient finite, Σ |g|).
fn gradient_norm<B: ArAutodiffBackend>(refiner: &TransformerRefiner<B>, loss: Tensor<B, 1>) -> (bool, f64) {
    let grads = GradientsParams::from_grads(loss.backward(), refiner);
    let mut total = 0.0f64;
    let mut finite = true;
    struct Norms<'a, B: ArAutodiffBackend>(
        &'a GradientsParams,
        &'a mut f64,
        &'a mut bool,
        std::marker::PhantomData<B>,
    );
    impl<B: ArAutodiffBackend> burn::module::ModuleVisitor<B> for Norms<'_, B> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<B, D>>) {
            if let Some(g) = self.0.get::<B::InnerBackend, D>(p.id) {
                for v in g.into_data().iter::<f32>() {
                    *self.2 &= v.is_finite();
                    *self.1 += (v as f64).abs();
                }
            }
        }
    }
    burn::module::Module::visit(
        refiner,
        &mut Norms::<B>(&grads, &mut total, &mut finite, Default::default()),
    );
    (finite, total)
}

fn gate_at_threshold_one_returns_the_backbone<B: ArAutodiffBackend>(device: &B::Device) {
    let mut rng = SplitMix64::new(11);
    let book = Codebook::new(
        tensor::<B, 2>(uniform_vec(&mut rng, 24 * 6), [24, 6], device),
        Metric::SquaredL2,
    )
    .unwrap();
    // a few steps towards random truths make the refiner propose other codes
    let (refiner, input, _) = trained(
        &mut rng,
        &book,
        CodeHead::Cosine,
        Preset::Corrector.loss(),
        30,
        device,
    );
    let refiner = refiner.valid();
    let inner = Codebook::new(book.codes().clone().inner(), Metric::SquaredL2).unwrap();
    let input = RefineInput {
        codes: input.codes.inner(),
        embeddings: input.embeddings.inner(),
        grid: input.grid,
        prompt: input.prompt.map(|p| PromptContext {
            embeddings: p.embeddings.inner(),
            images: p.images,
        }),
        confidence: input.confidence.map(|c| Confidence {
            log_prob: c.log_prob.inner(),
            entropy: c.entropy.inner(),
        }),
        hidden: input.hidden.map(|h| h.inner()),
    };
    let own = input.codes.clone();
    let out = refiner.refine(input).unwrap();
    let argmax = ids(Decision::Argmax.decide(&out, &own, &inner).unwrap());
    assert_ne!(argmax, ids(own.clone()), "the trained refiner proposes changes");
    let closed = Decision::Gate {
        margin: 0.0,
        threshold: 1.0,
    };
    assert_eq!(ids(closed.decide(&out, &own, &inner).unwrap()), ids(own.clone()));
    // fully open, the gate is the argmax
    let open = Decision::Gate {
        margin: 0.0,
        threshold: 0.0,
    };
    let opened = ids(open.decide(&out, &own, &inner).unwrap());
    let p_wrong: Vec<f32> = to_vec(burn::tensor::activation::sigmoid(
        out.wrong_logit.clone().unwrap(),
    ));
    for (i, (&a, &o)) in argmax.iter().zip(&opened).enumerate() {
        assert_eq!(o, if p_wrong[i] > 0.0 { a } else { ids(own.clone())[i] });
    }
    // invalid gates are typed errors
    for bad in [
        Decision::Gate {
            margin: -1.0,
            threshold: 0.5,
        },
        Decision::Gate {
            margin: 0.0,
            threshold: 1.5,
        },
    ] {
        assert!(matches!(bad.decide(&out, &own, &inner), Err(Error::Config(_))));
    }
}

fn rejects_bad_input<B: ArBackend>(device: &B::Device) {
    let refiner = config(4, PositionEncoding::Learned).init::<B>(device).unwrap();
    let e = tensor::<B, 3>(vec![0.0; 16 * 4], [1, 16, 4], device);
    // n does not match the grid.
    let err = refiner
        .refine_embeddings(e.clone(), TokenGrid::new(3, 5))
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    // Grid larger than the learned tables.
    let big = tensor::<B, 3>(vec![0.0; 9 * 4 * 4], [1, 36, 4], device);
    let err = refiner.refine_embeddings(big, TokenGrid::new(9, 4)).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    // Wrong code dimension.
    let wrong = tensor::<B, 3>(vec![0.0; 16 * 5], [1, 16, 5], device);
    assert!(matches!(
        refiner.refine_embeddings(wrong, TokenGrid::new(4, 4)),
        Err(Error::Shape { .. })
    ));
    // A refiner that reads the prompt, the confidence or hidden states, given less.
    let mut rng = SplitMix64::new(3);
    let book = Codebook::new(
        tensor::<B, 2>(uniform_vec(&mut rng, 16 * 4), [16, 4], device),
        Metric::SquaredL2,
    )
    .unwrap();
    let mut cfg = Preset::Corrector
        .config(4)
        .with_d_model(16)
        .with_n_heads(2)
        .with_max_grid(8);
    cfg.inputs.hidden_size = Some(HIDDEN);
    let corrector = cfg.init_with_codebook(&book, device).unwrap();
    let grid = TokenGrid::new(4, 4);
    let codes = random_codes::<B>(&mut rng, 1, 16, 16, device);
    let full = full_input(&mut rng, &book, codes.clone(), grid, device);
    assert!(corrector.refine(full.clone()).is_ok());
    let cases = [
        RefineInput {
            prompt: None,
            ..full.clone()
        },
        RefineInput {
            confidence: None,
            ..full.clone()
        },
        RefineInput {
            hidden: None,
            ..full.clone()
        },
        RefineInput {
            hidden: Some(tensor::<B, 3>(vec![0.0; 16 * 3], [1, 16, 3], device)),
            ..full.clone()
        },
        RefineInput {
            codes: random_codes::<B>(&mut rng, 1, 15, 16, device),
            ..full.clone()
        },
        RefineInput {
            prompt: Some(PromptContext {
                embeddings: tensor::<B, 3>(vec![0.0; 20 * 4], [1, 20, 4], device),
                images: 1,
            }),
            ..full.clone()
        },
    ];
    for input in cases {
        let err = corrector.refine(input).unwrap_err();
        assert!(matches!(err, Error::Config(_) | Error::Shape { .. }), "{err}");
    }
    // Rules that need logits on a refiner without them.
    let out = refiner
        .refine(RefineInput::new(
            codes.clone(),
            book.embed(codes.clone()).unwrap(),
            grid,
        ))
        .unwrap();
    assert!(matches!(
        Decision::Argmax.decide(&out, &codes, &book),
        Err(Error::Config(_))
    ));
    // Invalid configurations.
    let logits = RefinerHeads::new().with_logits(CodeHead::Cosine);
    for cfg in [
        TransformerRefinerConfig::new(4).with_d_model(30).with_n_heads(4),
        TransformerRefinerConfig::new(0),
        TransformerRefinerConfig::new(4).with_dropout(1.0),
        TransformerRefinerConfig::new(4)
            .with_d_model(6)
            .with_n_heads(2)
            .with_position(PositionEncoding::Sinusoidal),
        // code logits without a codebook
        TransformerRefinerConfig::new(4).with_heads(logits.clone()),
        // the prompt-only control cannot read the backbone's confidence
        TransformerRefinerConfig::new(4).with_inputs(
            RefinerInputs::new()
                .with_answer(false)
                .with_prompt_images(1)
                .with_confidence(true),
        ),
        // no input at all
        TransformerRefinerConfig::new(4).with_inputs(RefinerInputs::new().with_answer(false)),
        TransformerRefinerConfig::new(4).with_heads(logits.with_temperature(0.0)),
    ] {
        assert!(matches!(cfg.init::<B>(device), Err(Error::Config(_))), "{cfg:?}");
    }
    // A codebook of another width.
    assert!(matches!(
        Preset::CeAnswer.config(5).init_with_codebook(&book, device),
        Err(Error::Config(_))
    ));
}

fn files_round_trip<B: ArBackend>(device: &B::Device) {
    let mut rng = SplitMix64::new(12);
    let book = Codebook::new(
        tensor::<B, 2>(uniform_vec(&mut rng, 16 * 4), [16, 4], device),
        Metric::SquaredL2,
    )
    .unwrap();
    let cfg = Preset::Corrector
        .config(4)
        .with_d_model(16)
        .with_n_heads(2)
        .with_max_grid(8);
    let refiner = cfg.init_with_codebook(&book, device).unwrap();
    // perturb every weight so that a wrong or missing load shows
    let mut params = ar_refine::io::module_tensors(&refiner).unwrap();
    for (_, _, v) in &mut params {
        for x in v.iter_mut() {
            *x += rng.uniform(-0.1, 0.1);
        }
    }
    let dir = std::env::temp_dir().join(format!("ar_refine_refiner_files_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    ar_refine::io::save_safetensors(dir.join("model.safetensors"), &params, StoreDtype::F32).unwrap();
    let source = ar_refine::io::SafetensorsFile::open(dir.join("model.safetensors")).unwrap();
    let refiner = ar_refine::io::load_module_tensors(refiner, &source, device).unwrap();
    let gate = Decision::Gate {
        margin: 0.5,
        threshold: 0.25,
    };
    let codes = random_codes::<B>(&mut rng, 1, 16, 16, device);
    let input = full_input(&mut rng, &book, codes, TokenGrid::new(4, 4), device);
    let input = RefineInput {
        hidden: None,
        ..input
    };
    let before = refiner.refine(input.clone()).unwrap();
    for (dtype, tol) in [(StoreDtype::F32, 0.0f32), (StoreDtype::F16, 2e-2)] {
        save_refiner(&refiner, gate, serde_json::json!({"note": 1}), &dir, dtype).unwrap();
        let back = load_refiner::<B>(&dir, device).unwrap();
        assert_eq!((back.decision, back.training["note"].as_i64()), (gate, Some(1)));
        let after = back.refiner.refine(input.clone()).unwrap();
        for (a, b) in [
            (to_vec(before.embeddings.clone()), to_vec(after.embeddings)),
            (
                to_vec(before.logits.clone().unwrap()),
                to_vec(after.logits.unwrap()),
            ),
        ] {
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs() / x.abs().max(1.0))
                .fold(0.0f32, f32::max);
            assert!(worst <= tol, "{dtype:?}: {worst}");
        }
    }
    // a config that does not match the weights, a missing weights file, an 0.1 refiner
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        text.replace("\"d_model\": 16", "\"d_model\": 8"),
    )
    .unwrap();
    let err = load_refiner::<B>(&dir, device).unwrap_err().to_string();
    assert!(err.contains("shape") || err.contains("mismatch"), "{err}");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    std::fs::write(dir.join("refiner.mpk"), b"old").unwrap();
    let err = load_refiner::<B>(&dir, device).unwrap_err().to_string();
    assert!(err.contains("0.1"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

fn config_round_trips_through_json<B: ArBackend>(_device: &B::Device) {
    let mut cfg = Preset::Corrector
        .config(64)
        .with_dropout(0.1)
        .with_codebook_size(512);
    cfg.inputs.hidden_size = Some(4096);
    let json = serde_json::to_string(&cfg).unwrap();
    let back: TransformerRefinerConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
}

backend_tests!(
    identity_at_init,
    rejects_bad_input,
    files_round_trip,
    config_round_trips_through_json
);
autodiff_tests!(
    changes_after_one_step,
    finite_gradients_for_every_loss,
    gate_at_threshold_one_returns_the_backbone
);
