//! Pair generation sharded over several devices: one backbone replica per device, batches handed
//! out as devices free up, the cache written in prompt order by the calling thread.

use crate::backend::ArBackend;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use super::{check_ids, run_backbone, target_len, Cache, PairOptions, Pairs, Scored};
use crate::data::TokenSentence;
use crate::error::{Error, Result};
use crate::traits::ArBackbone;

/// [`generate_pairs`](super::generate_pairs) on several devices at once: `load(device)` makes
/// one backbone replica per device (each in its own thread, e.g. `Llama::from_pretrained(dir,
/// device)`), every replica takes the next batch of `opts.batch` sentences when it is free, and
/// the calling thread writes the results to the cache in prompt order.
///
/// The batches, the chunks, `meta.json` and its checksums are the ones a one-device run writes
/// (with the same `opts`), so a cache can be started on one machine and finished on another, or
/// read with [`load_pairs`](super::load_pairs); with greedy decoding, or seeded sampling (seeded
/// per batch), the pairs equal the one-device pairs up to the devices' arithmetic.
/// `progress(done, total)` is called after every batch written. The first error (from any
/// device) stops every replica after its current batch and is returned; what was written stays
/// valid for a resume.
///
/// ```no_run
/// # #[cfg(feature = "cuda")] {
/// use ar_refine::backbone::Llama;
/// use ar_refine::train::{generate_pairs_sharded, PairMode, PairOptions};
/// use burn::backend::Cuda;
/// # let tokens = vec![];
/// let devices = [Default::default(), burn::backend::cuda::CudaDevice::new(1)];
/// let opts = PairOptions {
///     mode: PairMode::TeacherForced,
///     batch: 64,
///     cache: Some(std::path::Path::new("pairs")),
///     config: serde_json::json!({ "task": "colorization" }),
/// };
/// let pairs = generate_pairs_sharded::<Cuda, _, _>(
///     &devices,
///     |d| Llama::<Cuda>::from_pretrained("lvm-7b", d),
///     &tokens,
///     &opts,
///     &mut |done, total| eprintln!("{done}/{total}"),
/// )
/// .unwrap();
/// # }
/// ```
pub fn generate_pairs_sharded<B, A, F>(
    devices: &[B::Device],
    load: F,
    sentences: &[TokenSentence],
    opts: &PairOptions<'_>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Pairs>
where
    B: ArBackend,
    A: ArBackbone<B>,
    F: Fn(&B::Device) -> Result<A> + Sync,
{
    if devices.is_empty() {
        return Err(Error::Config("pair generation needs at least one device".into()));
    }
    let n = target_len(sentences)?;
    let total = sentences.len();
    let (mut pairs, mut cache) = Cache::open(opts, sentences, n)?;
    progress(pairs.len(), total);
    let batch = opts.batch.max(1);
    let batches: Vec<Range<usize>> = (pairs.len()..total)
        .step_by(batch)
        .map(|s| s..(s + batch).min(total))
        .collect();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(usize, usize, Result<Scored>)>();
    let mut first_error: Option<Error> = None;
    std::thread::scope(|s| {
        let (next, stop, batches, load) = (&next, &stop, &batches, &load);
        let workers: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(rank, device)| {
                let tx = tx.clone();
                s.spawn(move || {
                    let replica = load(device).and_then(|lm| check_ids(&lm, sentences).map(|_| lm));
                    let lm = match replica {
                        Ok(lm) => lm,
                        Err(e) => {
                            let _ = tx.send((usize::MAX, rank, Err(e)));
                            return;
                        }
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let j = next.fetch_add(1, Ordering::Relaxed);
                        let Some(range) = batches.get(j) else { break };
                        let out = run_backbone(&lm, &sentences[range.clone()], &opts.mode, device);
                        let failed = out.is_err();
                        if tx.send((j, rank, out)).is_err() || failed {
                            break;
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        // results arrive in any order; chunks are written in batch order
        let mut waiting = BTreeMap::new();
        let mut written = 0;
        for (j, rank, out) in rx {
            match out {
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(Error::Parallel {
                        rank,
                        reason: e.to_string(),
                    });
                }
                Ok(generated) if first_error.is_none() => {
                    waiting.insert(j, generated);
                    while let Some(generated) = waiting.remove(&written) {
                        let part = &sentences[batches[written].clone()];
                        if let Err(e) = cache.append(part, generated, &mut pairs) {
                            stop.store(true, Ordering::Relaxed);
                            first_error = Some(e);
                            break;
                        }
                        written += 1;
                        progress(pairs.len(), total);
                    }
                }
                Ok(_) => {}
            }
        }
        for (rank, w) in workers.into_iter().enumerate() {
            if w.join().is_err() {
                first_error.get_or_insert(Error::Parallel {
                    rank,
                    reason: "the pair-generation thread panicked".into(),
                });
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(pairs)
}
