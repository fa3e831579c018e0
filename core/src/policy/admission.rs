//! Cost-aware admission: whether a demand miss is worth a copy.
//!
//! A miss can be served two ways: **copy** the expert into a slot (one expert's bytes over the
//! link, after which its later uses hit), or **serve it in place** (compute the pair from slow
//! memory, and move nothing). With a link only a little faster than computing from slow memory,
//! a copy pays only when the expert is used again soon, and more than the resident it displaces.
//!
//! [`Policy::Tinylfu`](crate::Policy::Tinylfu) weighs that in the manner of the TinyLFU admission
//! filter (Einziger, Friedman and Manes, 2017), with two decayed use counts per expert: a
//! **frequency** count that halves every `half_life` steps (how popular the expert is lately) and
//! a **recency** count that halves every step (whether it was just used: routing repeats between
//! consecutive tokens). An expert's score is `frequency + recency_weight × recency`, an estimate of
//! its uses in the near future. A layer has few experts, so the counts are exact rather than a
//! sketch. On a miss the demotion candidate is the unpinned resident with the lowest score (ties
//! to the least recently used, then the lower id), and the miss is copied only when the missing
//! expert's score exceeds the candidate's by more than `threshold` (a free slot counts as a
//! candidate of score 0); otherwise it is served in place and nothing moves. A step's ids are
//! counted before its misses are decided: the routing of the step is known when it is planned.
//!
//! `threshold` trades copies against slow pairs: 0 is TinyLFU's own rule (admit when the expert
//! scores higher than the resident it displaces); a larger threshold asks the expected reuse to
//! pay for the copy's bytes too; a threshold no score reaches never moves anything after the
//! initial placement (never slower than not moving, when that is best).
//!
//! Counts are kept relative to a growing scale, so a step costs its ids, not the expert count
//! (all counts are rescaled together once the scale nears the range of `f32`). Nothing is
//! allocated after the pool is built.

use alloc::vec;
use alloc::vec::Vec;

use super::PolicyError;

/// What a demand policy does with one miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MissAction {
    /// Copy the expert into a slot (demoting the policy's candidate when the slots are full); the
    /// pair is paid by the copy, and the expert's later ids hit.
    Copy,
    /// Compute the pair from slow memory; nothing moves.
    InPlace,
}

/// Settings of the cost-aware admission filter ([`Policy::Tinylfu`](crate::Policy::Tinylfu)).
/// See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AdmissionConfig {
    half_life: f32,
    threshold: f32,
    recency: f32,
}

impl AdmissionConfig {
    /// The default: a frequency half-life of 32 steps, a recency weight of 8, threshold 0 (the
    /// best of `expertslab tune`'s grid on the synthetic locality traces of BENCHMARKS.md).
    pub const DEFAULT: Self = Self { half_life: 32.0, recency: 8.0, threshold: 0.0 };

    /// Frequency counts halve every `half_life` steps; recency counts (weighted by `recency`)
    /// halve every step; a miss is copied only when its expert's score exceeds the demotion
    /// candidate's by more than `threshold`.
    ///
    /// # Errors
    /// [`PolicyError::HalfLife`] unless `half_life` is positive and finite,
    /// [`PolicyError::Weight`] unless `recency` is finite and at least 0,
    /// [`PolicyError::Threshold`] unless `threshold` is finite and at least 0.
    pub fn new(half_life: f32, recency: f32, threshold: f32) -> Result<Self, PolicyError> {
        if !(half_life.is_finite() && half_life > 0.0) {
            return Err(PolicyError::HalfLife(half_life));
        }
        if !(recency.is_finite() && recency >= 0.0) {
            return Err(PolicyError::Weight(recency));
        }
        if !(threshold.is_finite() && threshold >= 0.0) {
            return Err(PolicyError::Threshold(threshold));
        }
        Ok(Self { half_life, threshold, recency })
    }

    /// The weight of an expert's recency count in its score.
    pub const fn recency(&self) -> f32 {
        self.recency
    }

    /// The half-life of a score, in steps.
    pub const fn half_life(&self) -> f32 {
        self.half_life
    }

    /// The margin, in uses, by which a missing expert's score must exceed the demotion
    /// candidate's to be copied.
    pub const fn threshold(&self) -> f32 {
        self.threshold
    }

    /// The action for a miss whose expert scores `candidate`, when admitting it would displace a
    /// resident scoring `victim` (`None`: a free slot, which counts as 0).
    pub fn miss_action(&self, candidate: f32, victim: Option<f32>) -> MissAction {
        if candidate > victim.unwrap_or(0.0) + self.threshold {
            MissAction::Copy
        } else {
            MissAction::InPlace
        }
    }
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Scale past which every count is divided down (2^100: far from `f32::MAX`, and an increment
/// of the scale still adds exactly).
const RESCALE_AT: f32 = 1.267_650_6e30;

/// Per-expert use counts that decay geometrically, stored multiplied by a growing scale so a step
/// touches only its ids.
#[derive(Debug, Clone)]
struct DecayedCounts {
    scaled: Vec<f32>,
    /// What one use adds now; grows by `growth` every step, which decays every older use.
    scale: f32,
    growth: f32,
}

impl DecayedCounts {
    /// Counts that halve every `half_life` steps.
    fn new(half_life: f32, experts: usize) -> Self {
        // Counts decay by 0.5^(1 / half_life) per step; the scale grows by the inverse.
        Self { scaled: vec![0.0; experts], scale: 1.0, growth: libm::powf(2.0, 1.0 / half_life) }
    }

    /// Decays every count by one step.
    fn tick(&mut self) {
        self.scale *= self.growth;
        if self.scale > RESCALE_AT {
            let scale = self.scale;
            self.scaled.iter_mut().for_each(|s| *s /= scale);
            self.scale = 1.0;
        }
    }

    /// Counts one use of `expert` (ids out of range count nothing).
    fn add(&mut self, expert: usize) {
        if let Some(s) = self.scaled.get_mut(expert) {
            *s += self.scale;
        }
    }

    fn get(&self, expert: usize) -> f32 {
        self.scaled.get(expert).map_or(0.0, |s| s / self.scale)
    }
}

/// The admission filter's state: per expert, a frequency count (halving every `half_life`
/// steps) and a recency count (halving every step).
#[derive(Debug, Clone)]
pub(crate) struct AdmissionFilter {
    config: AdmissionConfig,
    frequency: DecayedCounts,
    recency: DecayedCounts,
}

impl AdmissionFilter {
    pub(crate) fn new(config: AdmissionConfig, experts: usize) -> Self {
        Self {
            config,
            frequency: DecayedCounts::new(config.half_life, experts),
            recency: DecayedCounts::new(1.0, experts),
        }
    }

    /// Starts a step: older uses decay by one step, and each of the step's ids counts one use.
    pub(crate) fn begin_step(&mut self, ids: &[u32]) {
        self.frequency.tick();
        self.recency.tick();
        for &id in ids {
            self.frequency.add(id as usize);
            self.recency.add(id as usize);
        }
    }

    /// The expert's score: its frequency count plus `recency` times its recency count (0 for ids
    /// out of range).
    pub(crate) fn score(&self, expert: usize) -> f32 {
        self.frequency.get(expert) + self.config.recency * self.recency.get(expert)
    }

    /// A demotion key ordered as the score (scores are never negative, so their bits order as
    /// they do).
    pub(crate) fn key(&self, expert: usize) -> u64 {
        u64::from(self.score(expert).to_bits())
    }

    /// The action for a miss of `expert` that would displace `victim` (`None`: a free slot).
    pub(crate) fn miss_action(&self, expert: usize, victim: Option<usize>) -> MissAction {
        self.config.miss_action(self.score(expert), victim.map(|v| self.score(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert_eq!(AdmissionConfig::new(0.0, 1.0, 1.0), Err(PolicyError::HalfLife(0.0)));
        assert!(AdmissionConfig::new(f32::INFINITY, 1.0, 1.0).is_err());
        assert_eq!(AdmissionConfig::new(4.0, -1.0, 0.0), Err(PolicyError::Weight(-1.0)));
        assert_eq!(AdmissionConfig::new(4.0, 0.0, -0.5), Err(PolicyError::Threshold(-0.5)));
        assert!(AdmissionConfig::new(4.0, 0.0, f32::NAN).is_err());
        let c = AdmissionConfig::new(4.0, 3.0, 2.0).unwrap();
        assert_eq!((c.half_life(), c.recency(), c.threshold()), (4.0, 3.0, 2.0));
        assert_eq!(AdmissionConfig::default(), AdmissionConfig::DEFAULT);
        let d = AdmissionConfig::DEFAULT;
        assert_eq!(AdmissionConfig::new(d.half_life(), d.recency(), d.threshold()), Ok(d));
    }

    #[test]
    fn a_miss_is_copied_only_past_the_threshold() {
        let c = AdmissionConfig::new(8.0, 0.0, 1.0).unwrap();
        assert_eq!(c.miss_action(2.5, Some(1.0)), MissAction::Copy);
        assert_eq!(c.miss_action(2.0, Some(1.0)), MissAction::InPlace);
        assert_eq!(c.miss_action(1.5, None), MissAction::Copy);
        assert_eq!(c.miss_action(1.0, None), MissAction::InPlace);
        let tinylfu = AdmissionConfig::new(8.0, 0.0, 0.0).unwrap();
        assert_eq!(tinylfu.miss_action(1.0, None), MissAction::Copy);
        assert_eq!(tinylfu.miss_action(1.0, Some(1.0)), MissAction::InPlace);
    }

    #[test]
    fn counts_halve_at_their_rates_and_survive_rescaling() {
        let mut f = AdmissionFilter::new(AdmissionConfig::new(2.0, 4.0, 0.0).unwrap(), 4);
        f.begin_step(&[1, 1, 3, 9]);
        // Frequency 2 and recency 2 (weighted 4) for expert 1; 1 and 1 for expert 3.
        assert!((f.score(1) - 10.0).abs() < 1e-4 && (f.score(3) - 5.0).abs() < 1e-4);
        assert_eq!((f.score(0), f.score(9)), (0.0, 0.0));
        f.begin_step(&[]);
        f.begin_step(&[]);
        // Two steps later: frequency halved once (half-life 2), recency twice.
        assert!((f.score(1) - (1.0 + 4.0 * 0.5)).abs() < 1e-4, "{}", f.score(1));
        assert!(f.key(1) > f.key(3) && f.key(3) > f.key(0));
        // Thousands of steps rescale both counts many times; a fresh use still counts 1.
        for _ in 0..5000 {
            f.begin_step(&[2]);
        }
        let steady = 1.0 / (1.0 - libm::powf(0.5, 0.5)) + 4.0 * 2.0;
        assert!((f.score(2) - steady).abs() < 1e-3, "{}", f.score(2));
        assert!(f.score(1) < 1e-6);
        assert_eq!(f.miss_action(2, Some(1)), MissAction::Copy);
        assert_eq!(f.miss_action(1, Some(2)), MissAction::InPlace);
    }
}
