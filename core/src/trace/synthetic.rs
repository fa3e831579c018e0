//! Synthetic routing with the structure real MoE routers show: skewed popularity, temporal
//! locality and phase changes. For tests, benchmarks and trace-driven what-if studies; runs on
//! the device as well (no_std).
//!
//! Parameters:
//! - **Zipf popularity** with exponent `zipf_s`: the expert of popularity rank `r` (0-based) is
//!   drawn with weight `1 / (r + 1)^zipf_s` (`0` is uniform, `1` is classic Zipf).
//! - **Reuse probability** `reuse`: each of a token's `top_k` choices repeats the previous token's
//!   choice in the same position with this probability (locality between consecutive tokens), and
//!   is drawn from the popularity otherwise. A token never names an expert twice: a choice that
//!   repeats one of the token's earlier choices is redrawn, up to [`MAX_REDRAWS`] times, and then
//!   drawn from the popularity of the experts the token has not chosen yet (so steep curves,
//!   where redrawing would practically never end, finish too).
//! - **Phase length** `phase_steps`: every this many steps the popularity ranking is reshuffled
//!   (a topic change); `0` never reshuffles.
//! - **Layer correlation** ([`SyntheticTrace::correlation`], for traces of several layers): each
//!   choice of layer `l ≥ 1` follows layer `l − 1`'s choice in the same position with this
//!   probability, through a fixed one-to-one map of the experts drawn once per pair of layers,
//!   as real routers' layers follow each other (so a next-layer guess can be right).
//!
//! The generator is [`SplitMix64`], so a seed gives the same stream on every target.

use alloc::vec::Vec;
use core::fmt;

/// Redraws one choice may take before it is drawn from the experts the token has not chosen yet.
/// Settings whose redraws finish reach it with a vanishing probability (one choice in a billion
/// gets there only when the token's earlier choices hold over 99.5 % of the popularity mass), so
/// their streams are those of plain rejection sampling.
pub const MAX_REDRAWS: u32 = 4096;

/// A [`RoutingShape`] that cannot generate routing, refused by [`SyntheticRouting::try_new`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ShapeError {
    /// `top_k` is zero or above the expert count.
    TopK {
        /// The experts per token asked for.
        top_k: u32,
        /// The expert count.
        experts: u32,
    },
    /// A Zipf exponent that is negative or not finite.
    Zipf(f64),
    /// A reuse probability outside `0..=1` (or NaN).
    Reuse(f64),
    /// A layer correlation outside `0..=1` (or NaN).
    Correlation(f64),
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TopK { top_k, experts: 0 } => write!(f, "top-{top_k} routing needs at least one expert (0 given)"),
            Self::TopK { top_k, experts } => write!(f, "top-{top_k} routing needs 1 ..= {experts} experts per token"),
            Self::Zipf(s) => write!(f, "Zipf exponent {s} is not a finite number of at least 0"),
            Self::Reuse(p) => write!(f, "reuse probability {p} is not within 0 ..= 1"),
            Self::Correlation(p) => write!(f, "layer correlation {p} is not within 0 ..= 1"),
        }
    }
}

impl core::error::Error for ShapeError {}

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

    /// Checks that the shape can generate routing as given, without clamping.
    ///
    /// # Errors
    /// [`ShapeError::TopK`] unless `1 <= top_k <= experts`, [`ShapeError::Zipf`] unless `zipf_s`
    /// is finite and at least 0, [`ShapeError::Reuse`] unless `reuse` is within `0..=1`.
    pub fn check(&self) -> Result<(), ShapeError> {
        if self.top_k == 0 || self.top_k > self.experts {
            return Err(ShapeError::TopK { top_k: self.top_k, experts: self.experts });
        }
        if !(self.zipf_s.is_finite() && self.zipf_s >= 0.0) {
            return Err(ShapeError::Zipf(self.zipf_s));
        }
        if !(0.0..=1.0).contains(&self.reuse) {
            return Err(ShapeError::Reuse(self.reuse));
        }
        Ok(())
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
    /// A generator of `shape` seeded with `seed`, refusing a shape that [`RoutingShape::check`]
    /// refuses.
    ///
    /// # Errors
    /// As [`RoutingShape::check`].
    pub fn try_new(shape: RoutingShape, seed: u64) -> Result<Self, ShapeError> {
        shape.check()?;
        Ok(Self::new(shape, seed))
    }

    /// A generator of `shape` seeded with `seed`. `top_k` is clamped to the expert count and
    /// `reuse` to `0..=1`, a Zipf exponent that is negative or not finite counts as 0 (uniform);
    /// zero experts give empty steps. [`SyntheticRouting::try_new`] refuses such shapes instead.
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
        shuffle(&mut self.rng, &mut self.ranking);
    }

    fn draw(&mut self) -> u32 {
        let u = self.rng.next_f64();
        let rank = self.cdf.partition_point(|&c| c <= u).min(self.ranking.len().saturating_sub(1));
        self.ranking.get(rank).copied().unwrap_or(0)
    }

    /// Draws from the popularity of the experts not in `chosen`, exactly: each with its weight
    /// over their total. With none left (or every weight left rounded to zero), the most popular
    /// one not chosen, or 0 when every expert is chosen.
    fn draw_excluding(&mut self, chosen: &[u32]) -> u32 {
        let ranks = self.ranking.len();
        let weight = rank_weight;
        let free = |ranking: &[u32], rank: usize| ranking.get(rank).is_some_and(|e| !chosen.contains(e));
        let total: f64 = (0..ranks).filter(|&r| free(&self.ranking, r)).map(|r| weight(&self.cdf, r)).sum();
        let mut u = self.rng.next_f64() * total;
        let mut pick = None;
        for rank in (0..ranks).filter(|&r| free(&self.ranking, r)) {
            let w = weight(&self.cdf, rank);
            if pick.is_none() || w > 0.0 {
                pick = Some(rank); // the last rank with weight, should rounding leave `u` past it
            }
            if u < w {
                break;
            }
            u -= w;
        }
        pick.and_then(|rank| self.ranking.get(rank)).copied().unwrap_or(0)
    }

    /// The probability that a fresh draw (a choice that does not repeat the previous token's)
    /// picks `expert`, under the popularity of the phase the last step was drawn in (the first
    /// phase's before any step): the Zipf weight of its rank over the total. Redraws of an expert
    /// the token has already chosen are not accounted for; 0 for an expert out of range.
    ///
    /// The routing alone shows this distribution only through its samples; studies of online
    /// placement use it to tell estimation apart from decision (how well a policy that knew it
    /// would do).
    pub fn draw_probability(&self, expert: u32) -> f64 {
        self.ranking.iter().position(|&e| e == expert).map_or(0.0, |rank| rank_weight(&self.cdf, rank))
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
                let mut redraws = 0u32;
                while let Some(token) = out.get(start..).filter(|token| token.contains(&expert)) {
                    expert = if redraws < MAX_REDRAWS { self.draw() } else { self.draw_excluding(token) };
                    redraws = redraws.saturating_add(1);
                }
                out.push(expert);
            }
            self.previous.clear();
            self.previous.extend_from_slice(out.get(start..).unwrap_or(&[]));
        }
    }
}

/// `v` in a uniformly random order (Fisher–Yates, from the back), drawing from `rng`.
fn shuffle(rng: &mut SplitMix64, v: &mut [u32]) {
    for i in (1..v.len()).rev() {
        // i < v.len(), at most the expert count (a u32), so i + 1 fits.
        let j = rng.below((i as u32).saturating_add(1)) as usize;
        v.swap(i, j);
    }
}

/// The popularity weight of `rank` out of the cumulative weights `cdf` (0 past the end).
fn rank_weight(cdf: &[f64], rank: usize) -> f64 {
    let below = rank.checked_sub(1).and_then(|r| cdf.get(r)).copied().unwrap_or(0.0);
    cdf.get(rank).copied().unwrap_or(0.0) - below
}

/// A multi-layer synthetic trace, as `expertslab synth` writes it: `sequences` sequences, each a
/// prefill block of `prefill_tokens` tokens (none when 0) and then `steps` decode steps of
/// `tokens` tokens, numbered on from one sequence to the next; layer `l` routed by a
/// [`SyntheticRouting`] of the shape seeded with `seed + l`, drawing on across sequences.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SyntheticTrace {
    /// Experts per layer.
    pub experts: u32,
    /// Layers.
    pub layers: u32,
    /// Experts per token.
    pub top_k: u32,
    /// Decode steps after each prefill block.
    pub steps: u64,
    /// Sequences (0 counts as 1): a prompt-heavy trace has many, each with a long prefill.
    pub sequences: u32,
    /// Tokens per decode step.
    pub tokens: usize,
    /// Tokens of each sequence's prefill block (its first step); 0 for none.
    pub prefill_tokens: usize,
    /// Zipf exponent of expert popularity (0: uniform).
    pub zipf: f64,
    /// Probability that a token repeats the previous token's choice in the same position.
    pub reuse: f64,
    /// Steps between reshuffles of the popularity (0: never).
    pub phase: u64,
    /// Seed; layer `l` uses `seed + l`.
    pub seed: u64,
    /// Probability that each choice of layer `l ≥ 1` is layer `l − 1`'s choice in the same
    /// position mapped through a fixed one-to-one map of the experts (one per pair of layers,
    /// drawn once), instead of its layer's own draw; a mapped expert the token already holds
    /// leaves the draw in place. Each layer's reuse and phases act on its own draws. 0: the layers
    /// are independent, and the trace is the one of settings without this field.
    pub correlation: f64,
}

/// What keeps a [`SyntheticTrace`] from being made.
#[derive(Debug, Clone, PartialEq)]
pub enum SyntheticTraceError {
    /// A routing shape no draw can meet.
    Shape(ShapeError),
    /// The trace refused a record (a header of no experts or layers).
    Trace(super::TraceError),
}

impl fmt::Display for SyntheticTraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shape(e) => write!(f, "{e}"),
            Self::Trace(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for SyntheticTraceError {}

impl SyntheticTrace {
    /// `expertslab synth`'s defaults: 64 experts, 4 layers, top-8, 1000 one-token decode steps
    /// after a prefill block of 64 tokens (one sequence), Zipf 0.9, reuse 0.5, a reshuffle every
    /// 256 steps,
    /// seed 1.
    pub const DEFAULT: Self = Self {
        experts: 64,
        layers: 4,
        top_k: 8,
        steps: 1000,
        sequences: 1,
        tokens: 1,
        prefill_tokens: 64,
        zipf: 0.9,
        reuse: 0.5,
        phase: 256,
        seed: 1,
        correlation: 0.0,
    };

    /// The locality family of the GPU benchmarks: 128 experts, 4 layers, top-8, 512 steps, Zipf
    /// 0.9, reuse 0.5 (the other settings [`SyntheticTrace::DEFAULT`]'s).
    pub const LOCALITY: Self = Self { experts: 128, steps: 512, ..Self::DEFAULT };

    /// The near-uniform family: [`SyntheticTrace::LOCALITY`] with Zipf 0 and reuse 0.
    pub const NEAR_UNIFORM: Self = Self { zipf: 0.0, reuse: 0.0, ..Self::LOCALITY };

    /// The routing shape every layer draws from.
    pub const fn shape(&self) -> RoutingShape {
        RoutingShape {
            experts: self.experts,
            top_k: self.top_k,
            zipf_s: self.zipf,
            reuse: self.reuse,
            phase_steps: self.phase,
        }
    }

    /// The steps, one at a time ([`SyntheticSteps::next_step`]).
    ///
    /// # Errors
    /// [`ShapeError`] for a shape no draw can meet.
    pub fn steps(&self) -> Result<SyntheticSteps, ShapeError> {
        if !(0.0..=1.0).contains(&self.correlation) {
            return Err(ShapeError::Correlation(self.correlation));
        }
        let layers = (0..self.layers)
            .map(|l| SyntheticRouting::try_new(self.shape(), self.seed.wrapping_add(u64::from(l))))
            .collect::<Result<Vec<_>, _>>()?;
        let ids = (0..self.layers).map(|_| Vec::new()).collect();
        // The correlation's own stream, so the layers' draws are those of independent layers.
        let mut rng = SplitMix64::new(self.seed ^ CORRELATION_SEED);
        let maps = if self.correlation > 0.0 {
            (1..self.layers)
                .map(|_| {
                    let mut map: Vec<u32> = (0..self.experts).collect();
                    shuffle(&mut rng, &mut map);
                    map
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(SyntheticSteps { settings: *self, layers, ids, next: 0, maps, rng })
    }

    /// The whole trace in memory.
    ///
    /// # Errors
    /// [`SyntheticTraceError`].
    pub fn trace(&self) -> Result<super::Trace, SyntheticTraceError> {
        let mut steps = self.steps().map_err(SyntheticTraceError::Shape)?;
        let header = super::TraceHeader { experts: self.experts, layers: self.layers, top_k: self.top_k };
        let mut trace = super::Trace::new(header).map_err(SyntheticTraceError::Trace)?;
        while let Some((step, prefill, layers)) = steps.next_step() {
            for (layer, ids) in (0u32..).zip(layers) {
                trace.push(layer, step, prefill, ids).map_err(SyntheticTraceError::Trace)?;
            }
        }
        Ok(trace)
    }
}

/// The steps of a [`SyntheticTrace`], drawn one at a time.
#[derive(Debug, Clone)]
pub struct SyntheticSteps {
    settings: SyntheticTrace,
    layers: Vec<SyntheticRouting>,
    ids: Vec<Vec<u32>>,
    next: u64,
    /// Layer `l`'s map from layer `l − 1`'s experts (at `l − 1`; empty without correlation).
    maps: Vec<Vec<u32>>,
    /// The correlation's draws.
    rng: SplitMix64,
}

/// Mixed into the seed of the layer correlation's stream.
const CORRELATION_SEED: u64 = 0x5EED_C0DE_1A7E_2C0F;

impl SyntheticSteps {
    /// The next step: its index, whether it is a prefill block, and each layer's ids
    /// (`tokens × top_k`, token-major); `None` after the last.
    pub fn next_step(&mut self) -> Option<(u64, bool, &[Vec<u32>])> {
        let s = &self.settings;
        let prefill = s.prefill_tokens > 0;
        let per_sequence = s.steps.saturating_add(u64::from(prefill));
        if self.next >= per_sequence.saturating_mul(u64::from(s.sequences.max(1))) {
            return None;
        }
        let step = self.next;
        self.next = step.saturating_add(1);
        let starts_sequence = step.is_multiple_of(per_sequence);
        let (tokens, is_prefill) =
            if prefill && starts_sequence { (s.prefill_tokens, true) } else { (s.tokens, false) };
        for (routing, ids) in self.layers.iter_mut().zip(self.ids.iter_mut()) {
            ids.clear();
            routing.step(tokens, ids);
        }
        self.correlate();
        Some((step, is_prefill, &self.ids))
    }

    /// Layer by layer from the second, each choice replaced by the previous layer's choice in
    /// the same position through the pair's map, with the settings' probability, unless the
    /// token already holds that expert.
    fn correlate(&mut self) {
        let (p, k) = (self.settings.correlation, self.settings.top_k as usize);
        for (l, map) in self.maps.iter().enumerate() {
            let Some((before, after)) = self.ids.split_at_mut_checked(l.saturating_add(1)) else { continue };
            let (Some(previous), Some(current)) = (before.last(), after.first_mut()) else { continue };
            for (token, from) in current.chunks_mut(k.max(1)).zip(previous.chunks(k.max(1))) {
                for (position, &e) in from.iter().enumerate() {
                    if self.rng.next_f64() >= p {
                        continue;
                    }
                    let Some(&mapped) = map.get(e as usize) else { continue };
                    if !token.contains(&mapped) {
                        if let Some(slot) = token.get_mut(position) {
                            *slot = mapped;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
