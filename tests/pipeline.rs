//! `SelfRefinement` end to end with a real (tiny) tokenizer, backbone and refiner.

mod common;
#[path = "../examples/custom_backbone/models.rs"]
mod models;

use ar_refine::ArBackend;
use ar_refine::{
    ArBackbone, Error, ForwardOutput, Refiner, Result, Sampling, SelfRefinement, TokenGrid, Tokenizer,
    TransformerRefinerConfig,
};
use burn::tensor::{Int, Tensor};
use common::{tensor, to_vec, uniform_vec, SplitMix64};
use models::{PatchTokenizer, TinyCausalLm, SPECIALS};

const SIZE: usize = 16;

fn images<B: ArBackend>(rng: &mut SplitMix64, b: usize, device: &B::Device) -> Tensor<B, 4> {
    let v: Vec<f32> = uniform_vec(rng, b * 3 * SIZE * SIZE)
        .iter()
        .map(|x| 0.5 + 0.5 * x)
        .collect();
    tensor::<B, 4>(v, [b, 3, SIZE, SIZE], device)
}

fn parts<B: ArBackend>(
    device: &B::Device,
) -> (
    PatchTokenizer<B>,
    TinyCausalLm<B>,
    ar_refine::TransformerRefiner<B>,
) {
    let mut rng = SplitMix64::new(6);
    let tok = PatchTokenizer::fit(images(&mut rng, 8, device), 4, 16, 2).unwrap();
    let n = tok.grid().len();
    let lm = TinyCausalLm::new(16, 3 * n, 16, 1, device);
    let refiner = TransformerRefinerConfig::new(tok.code_dim())
        .with_d_model(16)
        .with_n_heads(2)
        .with_n_layers(1)
        .init(device)
        .unwrap();
    (tok, lm, refiner)
}

fn ids<B: ArBackend>(t: Tensor<B, 2, Int>) -> Vec<i64> {
    t.into_data().iter::<i64>().collect()
}

fn runs_end_to_end<B: ArBackend>(device: &B::Device) {
    let (tok, lm, refiner) = parts::<B>(device);
    let n = tok.grid().len();
    let mut rng = SplitMix64::new(7);
    let prompt_images: Vec<_> = (0..2).map(|_| images::<B>(&mut rng, 2, device)).collect();
    let pipeline = SelfRefinement::new(&lm, &tok, &refiner).unwrap();
    let out = pipeline.run_images(&prompt_images).unwrap();
    assert_eq!(out.generated_tokens.dims(), [2, n]);
    assert_eq!(out.refined_tokens.dims(), [2, n]);
    assert_eq!(out.refined.embeddings.dims(), [2, n, tok.code_dim()]);
    assert_eq!(out.generated_images.dims(), [2, 3, SIZE, SIZE]);
    assert_eq!(out.refined_images.dims(), [2, 3, SIZE, SIZE]);

    // The generated tokens are the backbone's own greedy output on the visual sentence.
    let prompt = pipeline.visual_sentence(&prompt_images).unwrap();
    assert_eq!(prompt.dims(), [2, 2 * n]);
    let direct = lm
        .generate(prompt, n, &Sampling::greedy())
        .unwrap()
        .sub_scalar(SPECIALS as i64);
    assert_eq!(ids(out.generated_tokens.clone()), ids(direct));

    // The refiner is the identity at init, so refinement snaps back to the same code vectors.
    let a = to_vec(tok.embed(out.generated_tokens).unwrap());
    let b = to_vec(tok.embed(out.refined_tokens).unwrap());
    assert_eq!(a, b);
    assert_eq!(to_vec(out.generated_images), to_vec(out.refined_images));
}

fn sampling_is_seeded<B: ArBackend>(device: &B::Device) {
    let (tok, lm, refiner) = parts::<B>(device);
    let mut rng = SplitMix64::new(8);
    let prompt = SelfRefinement::new(&lm, &tok, &refiner)
        .unwrap()
        .visual_sentence(&[images::<B>(&mut rng, 1, device)])
        .unwrap();
    let run = |seed| {
        let s = Sampling::temperature(1.5)
            .with_top_k(8)
            .with_top_p(0.95)
            .with_seed(seed);
        let p = SelfRefinement::new(&lm, &tok, &refiner).unwrap().with_sampling(s);
        ids(p.run_tokens(prompt.clone()).unwrap().generated_tokens)
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

/// A backbone whose `generate` breaks the contract by emitting a special token.
struct EmitsSpecials<'a, B: ArBackend>(&'a TinyCausalLm<B>);

impl<B: ArBackend> ArBackbone<B> for EmitsSpecials<'_, B> {
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn image_token_ids(&self) -> std::ops::Range<usize> {
        self.0.image_token_ids()
    }
    fn context_len(&self) -> usize {
        self.0.context_len()
    }
    fn forward(&self, tokens: Tensor<B, 2, Int>, h: bool) -> Result<ForwardOutput<B>> {
        self.0.forward(tokens, h)
    }
    fn generate(&self, prompt: Tensor<B, 2, Int>, n: usize, _: &Sampling) -> Result<Tensor<B, 2, Int>> {
        Ok(Tensor::zeros([prompt.dims()[0], n], &prompt.device()))
    }
}

fn bad_input_is_an_error<B: ArBackend>(device: &B::Device) {
    let (tok, lm, refiner) = parts::<B>(device);
    let mut rng = SplitMix64::new(9);
    let pipeline = SelfRefinement::new(&lm, &tok, &refiner).unwrap();
    // Image of the wrong size.
    let wrong = tensor::<B, 4>(vec![0.5; 3 * 8 * 8], [1, 3, 8, 8], device);
    assert!(matches!(pipeline.run_images(&[wrong]), Err(Error::Shape { .. })));
    // NaN pixels.
    let mut v = vec![0.5; 3 * SIZE * SIZE];
    v[7] = f32::NAN;
    let nan = tensor::<B, 4>(v, [1, 3, SIZE, SIZE], device);
    assert!(matches!(
        pipeline.run_images(&[nan]),
        Err(Error::NonFinite { .. })
    ));
    // Prompt ids outside the vocabulary.
    let bad = Tensor::<B, 2, Int>::from_ints([[1, 2, 999]], device);
    assert!(matches!(
        pipeline.run_tokens(bad),
        Err(Error::TokenOutOfRange { id: 999, .. })
    ));
    // A backbone that emits non-image ids.
    let rogue = EmitsSpecials(&lm);
    let p = SelfRefinement::new(&rogue, &tok, &refiner).unwrap();
    let prompt = p.visual_sentence(&[images::<B>(&mut rng, 1, device)]).unwrap();
    assert!(matches!(
        p.run_tokens(prompt),
        Err(Error::TokenOutOfRange { id: 0, .. })
    ));
    // Backbone and tokenizer that disagree on the number of codes.
    let other = TinyCausalLm::<B>::new(17, 64, 16, 1, device);
    assert!(matches!(
        SelfRefinement::new(&other, &tok, &refiner),
        Err(Error::Config(_))
    ));
    // Invalid sampling settings.
    let p = SelfRefinement::new(&lm, &tok, &refiner)
        .unwrap()
        .with_sampling(Sampling::temperature(-1.0));
    let prompt = p.visual_sentence(&[images::<B>(&mut rng, 1, device)]).unwrap();
    assert!(matches!(p.run_tokens(prompt), Err(Error::Config(_))));
}

fn a_trained_refiner_changes_tokens<B: ArBackend>(device: &B::Device) {
    // A refiner that maps every embedding to code 0's vector must yield code 0 everywhere
    // (or an identical duplicate at a lower id): the refine → nearest path is wired up.
    struct ToFirstCode<B: ArBackend>(Tensor<B, 1>);
    impl<B: ArBackend> Refiner<B> for ToFirstCode<B> {
        fn refine_embeddings(&self, e: Tensor<B, 3>, _: TokenGrid) -> Result<Tensor<B, 3>> {
            let [b, n, d] = e.dims();
            Ok(self.0.clone().reshape([1, 1, d]).expand([b, n, d]))
        }
    }
    let (tok, lm, _) = parts::<B>(device);
    let first = tok
        .codebook()
        .codes()
        .clone()
        .narrow(0, 0, 1)
        .reshape([tok.code_dim()]);
    let refiner = ToFirstCode(first);
    let mut rng = SplitMix64::new(10);
    let out = SelfRefinement::new(&lm, &tok, &refiner)
        .unwrap()
        .run_images(&[images::<B>(&mut rng, 2, device)])
        .unwrap();
    assert!(ids(out.refined_tokens).iter().all(|&i| i == 0));
}

backend_tests!(
    runs_end_to_end,
    sampling_is_seeded,
    bad_input_is_an_error,
    a_trained_refiner_changes_tokens
);
