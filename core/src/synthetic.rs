//! Synthetic routing with the structure real MoE routers show: skewed popularity, temporal
//! locality and phase changes. For tests, benchmarks and trace-driven what-if studies; runs on
//! the device as well (no_std).
//!
//! Parameters:
//! - **Zipf popularity** with exponent `zipf_s`: the expert of popularity rank `r` (0-based) is
//!   drawn with weight `1 / (r + 1)^zipf_s` (`0` is uniform, `1` is classic Zipf).
//! - **Reuse probability** `reuse`: each of a token's `top_k` choices repeats the previous token's
//!   choice in the same position with this probability (locality between consecutive tokens), and
//!   is drawn from the popularity otherwise. A token never names an expert twice.
//! - **Phase length** `phase_steps`: every this many steps the popularity ranking is reshuffled
//!   (a topic change); `0` never reshuffles.
//!
//! The generator is [`SplitMix64`], so a seed gives the same stream on every target.

use alloc::vec::Vec;

/// A small, fast, seedable generator (SplitMix64, Steele, Lea and Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform value in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u32) -> u32 {
        #[allow(clippy::arithmetic_side_effects, reason = "both factors are below 2^32, so the product fits 64 bits")]
        let scaled = (self.next_u64() >> 32) * u64::from(n);
        (scaled >> 32) as u32
    }
}

/// Settings of [`SyntheticRouting`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RoutingShape {
    /// Experts to choose from (at least `top_k`).
    pub experts: u32,
    /// Experts per token.
    pub top_k: u32,
    /// Zipf exponent of the popularity (0 = uniform).
    pub zipf_s: f64,
    /// Probability that a choice repeats the previous token's (0..=1).
    pub reuse: f64,
    /// Steps between reshuffles of the popularity (0 = never).
    pub phase_steps: u64,
}

impl RoutingShape {
    /// A moderately skewed, local shape: Zipf 0.9, reuse 0.5, a new phase every 64 steps.
    pub const fn new(experts: u32, top_k: u32) -> Self {
        Self { experts, top_k, zipf_s: 0.9, reuse: 0.5, phase_steps: 64 }
    }
}

/// A routing generator for one layer. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct SyntheticRouting {
    shape: RoutingShape,
    rng: SplitMix64,
    /// Cumulative popularity weights by rank, normalised to end at 1.
    cdf: Vec<f64>,
    /// The expert of each popularity rank.
    ranking: Vec<u32>,
    previous: Vec<u32>,
    step: u64,
}

impl SyntheticRouting {
    /// A generator of `shape` seeded with `seed`. `top_k` is clamped to the expert count and
    /// `reuse` to `0..=1`; zero experts give empty steps.
    pub fn new(mut shape: RoutingShape, seed: u64) -> Self {
        shape.top_k = shape.top_k.min(shape.experts);
        shape.reuse = if shape.reuse.is_nan() { 0.0 } else { shape.reuse.clamp(0.0, 1.0) };
        let s = if shape.zipf_s.is_finite() { shape.zipf_s.max(0.0) } else { 0.0 };
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (0..shape.experts)
            .map(|r| {
                total += 1.0 / libm::pow(f64::from(r) + 1.0, s);
                total
            })
            .collect();
        cdf.iter_mut().for_each(|c| *c /= total);
        let mut routing = Self {
            shape,
            rng: SplitMix64::new(seed),
            cdf,
            ranking: (0..shape.experts).collect(),
            previous: Vec::new(),
            step: 0,
        };
        routing.reshuffle();
        routing
    }

    /// The shape, after clamping.
    pub const fn shape(&self) -> RoutingShape {
        self.shape
    }

    fn reshuffle(&mut self) {
        for i in (1..self.ranking.len()).rev() {
            // i < ranking.len() = experts <= u32::MAX, so i + 1 fits.
            let j = self.rng.below((i as u32).saturating_add(1)) as usize;
            self.ranking.swap(i, j);
        }
    }

    fn draw(&mut self) -> u32 {
        let u = self.rng.next_f64();
        let rank = self.cdf.partition_point(|&c| c <= u).min(self.ranking.len().saturating_sub(1));
        self.ranking.get(rank).copied().unwrap_or(0)
    }

    /// Appends one step of `tokens` tokens (`tokens × top_k` ids, token-major) to `out`.
    pub fn step(&mut self, tokens: usize, out: &mut Vec<u32>) {
        let phase = self.shape.phase_steps;
        if phase > 0 && self.step > 0 && self.step.is_multiple_of(phase) {
            self.reshuffle();
        }
        self.step = self.step.saturating_add(1);
        let k = self.shape.top_k as usize;
        for _ in 0..tokens {
            let start = out.len();
            for position in 0..k {
                let reused = self.previous.get(position).copied().filter(|_| self.rng.next_f64() < self.shape.reuse);
                let mut expert = reused.unwrap_or_else(|| self.draw());
                while out.get(start..).is_some_and(|token| token.contains(&expert)) {
                    expert = self.draw();
                }
                out.push(expert);
            }
            self.previous.clear();
            self.previous.extend_from_slice(out.get(start..).unwrap_or(&[]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_distinct_per_token_skewed_and_reproducible() {
        let shape = RoutingShape { experts: 32, top_k: 4, zipf_s: 1.2, reuse: 0.0, phase_steps: 0 };
        let mut a = SyntheticRouting::new(shape, 7);
        let mut b = SyntheticRouting::new(shape, 7);
        let (mut ids_a, mut ids_b) = (Vec::new(), Vec::new());
        for _ in 0..200 {
            a.step(4, &mut ids_a);
            b.step(4, &mut ids_b);
        }
        assert_eq!(ids_a, ids_b);
        assert_eq!(ids_a.len(), 200 * 4 * 4);
        for token in ids_a.chunks(4) {
            for (i, e) in token.iter().enumerate() {
                assert!(*e < 32 && !token[i + 1..].contains(e));
            }
        }
        let mut counts = [0u32; 32];
        ids_a.iter().for_each(|&e| counts[e as usize] += 1);
        counts.sort_unstable();
        assert!(counts[31] > 4 * counts[16], "the head must dominate: {counts:?}");
    }

    #[test]
    fn reuse_repeats_the_previous_token() {
        let shape = RoutingShape { experts: 64, top_k: 2, zipf_s: 0.0, reuse: 1.0, phase_steps: 0 };
        let mut r = SyntheticRouting::new(shape, 1);
        let mut ids = Vec::new();
        r.step(10, &mut ids);
        assert!(ids.chunks(2).all(|t| t == &ids[..2]));
        let tiny = SyntheticRouting::new(RoutingShape { experts: 0, top_k: 3, ..shape }, 1);
        assert_eq!(tiny.shape().top_k, 0);
    }
}
