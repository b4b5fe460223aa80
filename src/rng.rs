//! A small seeded generator whose stream never changes between crate or dependency versions,
//! so that a seed reproduces the same samples, shuffles and test data forever.
//!
//! Functions that take randomness from the user ([`crate::tasks::Task::pair`]) accept any
//! [`rand_core::Rng`] (re-exported here as [`Rng`]); [`SplitMix64`] implements it, and the
//! helpers [`unit_f64`], [`uniform_f32`] and [`below`] draw from any such generator exactly as
//! [`SplitMix64`]'s own methods do.

pub use rand_core::{Rng, SeedableRng, TryRng};
use std::convert::Infallible;

/// Uniform in `[0, 1)` from the top 53 bits of one `next_u64` of `rng`.
pub fn unit_f64<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform in `[lo, hi)` as `f32` (one [`unit_f64`] draw).
pub fn uniform_f32<R: Rng + ?Sized>(rng: &mut R, lo: f32, hi: f32) -> f32 {
    (lo as f64 + (hi - lo) as f64 * unit_f64(rng)) as f32
}

/// Uniform integer in `0..n` (`n = 0` is treated as 1; modulo bias is below 2⁻⁴⁰ for `n < 2²⁴`).
pub fn below<R: Rng + ?Sized>(rng: &mut R, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// SplitMix64 (Steele, Lea & Flood, OOPSLA 2014): 64-bit state, full period.
///
/// ```
/// use ar_refine::rng::SplitMix64;
/// let mut a = SplitMix64::new(7);
/// let mut b = SplitMix64::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!((0.0..1.0).contains(&a.next_f64()));
/// ```
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The internal state: `SplitMix64::new(g.state())` continues exactly where `g` is (for
    /// checkpoints).
    pub fn state(&self) -> u64 {
        self.0
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        unit_f64(self)
    }

    /// Uniform in `[lo, hi)` as `f32`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        uniform_f32(self, lo, hi)
    }

    /// Uniform integer in `0..n` (`n >= 1`; modulo bias is below 2⁻⁴⁰ for `n < 2²⁴`).
    pub fn below(&mut self, n: usize) -> usize {
        below(self, n)
    }
}

/// `rand_core`'s generator interface: `next_u64` is [`SplitMix64::next_u64`], `next_u32` its
/// high half, bytes little-endian words.
impl TryRng for SplitMix64 {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((SplitMix64::next_u64(self) >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(SplitMix64::next_u64(self))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let word = SplitMix64::next_u64(self).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(())
    }
}

/// The seed is the initial state, little-endian: `from_seed(s.to_le_bytes())` is `new(s)`.
impl SeedableRng for SplitMix64 {
    type Seed = [u8; 8];

    fn from_seed(seed: [u8; 8]) -> Self {
        Self(u64::from_le_bytes(seed))
    }
}
