//! Cost-aware admission: whether a demand miss is worth a copy.
//!
//! A miss can be served two ways: **copy** the expert into a slot (one expert's bytes over the
//! link, after which its later uses hit), or **serve it in place** (compute the pair from slow
//! memory, and move nothing). With a link only a little faster than computing from slow memory,
//! a copy pays only when the expert is used again soon, and more than the resident it displaces.
//!
//! [`Policy::Tinylfu`](crate::Policy::Tinylfu) weighs that in the manner of the TinyLFU admission
//! filter (Einziger, Friedman and Manes, 2017): each expert has a **score**, its expected further
//! uses, and a miss is copied only when the missing expert scores higher than the resident it
//! would displace. A layer has few experts, so the counts behind the score are exact rather than a
//! sketch. The score of expert `e` at a step is
//!
//! - `horizon × rate(e)`, where `rate(e)` is its use rate per step, from a count of its uses that
//!   halves every `half_life` steps (popularity);
//! - plus, when the current step uses `e`, its further ids in this step (served by the slot once
//!   copied) and the stream's **continuation** `p / (1 − p)`, where `p` is the measured share of
//!   ids whose expert the step before also used (decayed over the same half-life; an expert counts
//!   once per step however many of its ids the step has, so for steps of several tokens `p` is a
//!   lower share): routing repeats between consecutive tokens, and this is the expected length of
//!   such a run. The policy adapts it to the stream as it goes.
//!
//! In a pool shared by several layers ([`crate::SharedSlotPool`]), which take turns, "the step
//! before" is the expert's layer's previous step, and an expert of another layer that its layer's
//! latest step used is still in its run: it keeps the continuation until that layer steps again.
//!
//! On a miss the demotion candidate is the unpinned resident with the lowest score (ties to the
//! least recently used, then the lower id), and the miss's [`Admission`] is a copy only when
//! the missing expert's score exceeds the candidate's by more than `threshold` (a free slot counts
//! as a candidate of score 0); otherwise the pair is served in place and nothing moves. A step's
//! ids are counted before its misses are decided (the step's routing is known when it is
//! planned), and when a step names more experts than there are slots (a prefill), the slots go to
//! the slot count's best of the step: only misses among them are copied, and a resident the step
//! uses but ranks below them may give its slot up (its ids are then served in place).
//!
//! `threshold` trades copies against slow pairs: 0 is TinyLFU's own rule; a larger threshold
//! asks the expected reuse to pay for the copy's bytes too; a threshold no score reaches never
//! moves anything after the initial placement (never slower than not moving, when that is best).
//!
//! Counts are kept relative to a growing scale, so a step costs its ids, not the expert count
//! (all counts are rescaled together once the scale nears the range of `f32`); only a step with
//! more ids than slots also ranks its experts. Nothing is allocated after the pool is built.

#[cfg(feature = "demand")]
use alloc::{vec, vec::Vec};

use super::PolicyError;

/// The admission filter's verdict on one miss of a demand policy: admit it into a slot or serve
/// it in place. (How a miss served in place is computed, read over the bus or on the host, is
/// the runtime's choice: `expertslab-cuda`'s `MissAction`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Admission {
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
    horizon: f32,
    /// `0.5^(1 / half_life)` and `2^(1 / half_life)`, computed once here so that a pool's steps
    /// (and a firmware that never builds a config) need no power function.
    decay: f32,
    growth: f32,
    /// Pool steps between two consecutive steps of one stream: 1, or the layer count of a shared
    /// pool whose layers take turns ([`AdmissionConfig::interleaved`]).
    stride: u32,
}

impl AdmissionConfig {
    /// The default: a half-life of 32 steps, a horizon of half a step, threshold 0 (the best of
    /// `expertslab tune`'s grid on the synthetic locality traces of BENCHMARKS.md).
    pub const DEFAULT: Self =
        Self { half_life: 32.0, horizon: 0.5, threshold: 0.0, decay: 0.978_572_1, growth: 1.021_897_2, stride: 1 };

    /// Use counts halve every `half_life` steps; an expert's use rate is credited over `horizon`
    /// steps; a miss is copied only when its expert's score exceeds the demotion candidate's by
    /// more than `threshold` uses.
    ///
    /// # Errors
    /// [`PolicyError::HalfLife`] unless `half_life` is positive and finite,
    /// [`PolicyError::Horizon`] unless `horizon` is finite and at least 0,
    /// [`PolicyError::Threshold`] unless `threshold` is finite and at least 0.
    pub fn new(half_life: f32, horizon: f32, threshold: f32) -> Result<Self, PolicyError> {
        if !(half_life.is_finite() && half_life > 0.0) {
            return Err(PolicyError::HalfLife(half_life));
        }
        if !(horizon.is_finite() && horizon >= 0.0) {
            return Err(PolicyError::Horizon(horizon));
        }
        if !(threshold.is_finite() && threshold >= 0.0) {
            return Err(PolicyError::Threshold(threshold));
        }
        let (decay, growth) = per_step(half_life);
        Ok(Self { half_life, threshold, horizon, decay, growth, stride: 1 })
    }

    /// The same settings for a pool that `streams` layers drive in turns, one step each per
    /// forward step ([`crate::SharedSlotPool`]): the pool counts a step per layer, so half-life
    /// and horizon stretch by `streams` pool steps (their meaning in forward steps is kept), and
    /// an expert's run continues when its layer's previous step, `streams` pool steps back, used
    /// it. Stretched half-lives past about 2 × 10⁷ pool steps round the per-step decay to 1, which
    /// drops the popularity term from the score (as for such half-lives per layer); horizons are
    /// capped at `f32::MAX`.
    #[cfg(feature = "demand")]
    #[must_use]
    pub(crate) fn interleaved(&self, streams: u32) -> Self {
        let stride = streams.max(1);
        let half_life = (self.half_life * stride as f32).min(f32::MAX);
        let horizon = (self.horizon * stride as f32).min(f32::MAX);
        let (decay, growth) = per_step(half_life);
        Self { half_life, horizon, decay, growth, stride, ..*self }
    }

    /// The steps over which an expert's use rate is credited in its score.
    pub const fn horizon(&self) -> f32 {
        self.horizon
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
    pub fn admission(&self, candidate: f32, victim: Option<f32>) -> Admission {
        if candidate > victim.unwrap_or(0.0) + self.threshold {
            Admission::Copy
        } else {
            Admission::InPlace
        }
    }
}

/// The per-step decay `0.5^(1 / half_life)` of a count, and its inverse.
fn per_step(half_life: f32) -> (f32, f32) {
    (libm::powf(0.5, 1.0 / half_life), libm::powf(2.0, 1.0 / half_life))
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Scale past which every count is divided down (2^100: far from `f32::MAX`, and an increment
/// of the scale still adds exactly).
#[cfg(feature = "demand")]
const RESCALE_AT: f32 = 1.267_650_6e30;

/// Per-expert use counts that decay geometrically, stored multiplied by a growing scale so a step
/// touches only its ids.
#[cfg(feature = "demand")]
#[derive(Debug, Clone)]
struct DecayedCounts {
    scaled: Vec<f32>,
    /// What one use adds now; grows by `growth` every step, which decays every older use.
    scale: f32,
    growth: f32,
}

#[cfg(feature = "demand")]
impl DecayedCounts {
    /// Counts that decay by `1 / growth` per step.
    fn new(growth: f32, experts: usize) -> Self {
        Self { scaled: vec![0.0; experts], scale: 1.0, growth }
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

/// The admission filter's state: per expert, its decayed uses, the last step that used it and
/// its uses in that step; over all ids, the decayed share that continued a use of the step
/// before; and the score an expert of the current step needs to be among the `slots` best of it.
#[cfg(feature = "demand")]
#[derive(Debug, Clone)]
pub(crate) struct AdmissionFilter {
    config: AdmissionConfig,
    uses: DecayedCounts,
    /// Per expert: the step that last used it (0 = never; steps count from 1).
    last: Vec<u64>,
    /// Per expert: its uses in the step `last` names.
    in_step: Vec<u32>,
    /// Per expert: the step whose cutoff already counted it.
    ranked: Vec<u64>,
    step: u64,
    /// Pool steps between consecutive steps of one stream (see [`AdmissionConfig::interleaved`]).
    stride: u64,
    /// Decayed ids that continued a use of the previous step, and decayed ids.
    continued: f32,
    ids: f32,
    /// The per-step decay of the counts (the per-step rate of a decayed count is `1 - decay`).
    decay: f32,
    /// Expected further uses of an expert used in the current step: `p / (1 - p)` for the
    /// continued share `p`.
    continuation: f32,
    /// The best scores among the current step's experts, descending, at most one per slot.
    best: Vec<f32>,
    /// The score a miss of the current step needs to be admitted: the slot count's best score
    /// among the step's experts when it has more experts than slots, else 0.
    cutoff: f32,
}

/// The most further uses a continuation is credited with (a stream that always repeats).
#[cfg(feature = "demand")]
const MAX_CONTINUATION: f32 = 1.0e6;

#[cfg(feature = "demand")]
impl AdmissionFilter {
    pub(crate) fn new(config: AdmissionConfig, experts: usize, slots: usize) -> Self {
        Self {
            config,
            uses: DecayedCounts::new(config.growth, experts),
            last: vec![0; experts],
            in_step: vec![0; experts],
            ranked: vec![0; experts],
            step: 0,
            stride: u64::from(config.stride),
            continued: 0.0,
            ids: 0.0,
            decay: config.decay,
            continuation: 0.0,
            best: Vec::with_capacity(slots),
            cutoff: 0.0,
        }
    }

    /// Makes room for `slots` best scores (allocates only past the most slots so far).
    pub(crate) fn set_slots(&mut self, slots: usize) {
        self.best.reserve(slots.saturating_sub(self.best.len()));
    }

    /// Starts a step of `slots` slots: older counts decay by one step, each of the step's ids
    /// counts one use (and its expert, once per step, a continuation when the step before used
    /// it), and the step's cutoff is found.
    pub(crate) fn begin_step(&mut self, ids: &[u32], slots: usize) {
        self.uses.tick();
        self.step = self.step.saturating_add(1);
        self.continued *= self.decay;
        self.ids *= self.decay;
        for &id in ids {
            let expert = id as usize;
            let (Some(last), Some(count)) = (self.last.get_mut(expert), self.in_step.get_mut(expert)) else {
                continue;
            };
            self.ids += 1.0;
            if *last == self.step {
                *count = count.saturating_add(1);
            } else {
                if *last != 0 && last.saturating_add(self.stride) == self.step {
                    self.continued += 1.0;
                }
                *last = self.step;
                *count = 1;
            }
            self.uses.add(expert);
        }
        let p = if self.ids > 0.0 { self.continued / self.ids } else { 0.0 };
        self.continuation = if p < 1.0 { (p / (1.0 - p)).min(MAX_CONTINUATION) } else { MAX_CONTINUATION };
        self.cutoff = 0.0;
        if ids.len() > slots {
            self.rank(ids, slots);
        }
    }

    /// Sets the cutoff to the `slots`-th best score among the step's experts (0 when it has
    /// `slots` experts or fewer).
    fn rank(&mut self, ids: &[u32], slots: usize) {
        self.best.clear();
        for &id in ids {
            let expert = id as usize;
            let Some(ranked) = self.ranked.get_mut(expert) else { continue };
            if *ranked == self.step {
                continue;
            }
            *ranked = self.step;
            let score = self.score(expert);
            let at = self.best.partition_point(|&b| b >= score);
            if at < slots {
                if self.best.len() == slots {
                    self.best.pop();
                }
                // Within the capacity reserved for `slots`; moved into place one swap at a time
                // (a bulk move would link `memmove` into small firmware).
                self.best.push(score);
                let mut i = self.best.len().saturating_sub(1);
                while i > at {
                    let j = i.saturating_sub(1);
                    self.best.swap(i, j);
                    i = j;
                }
            }
        }
        if self.best.len() == slots {
            self.cutoff = self.best.last().copied().unwrap_or(0.0);
        }
    }

    /// The expert's score, its expected further uses: `horizon × use rate`, plus, when the
    /// latest step of its stream used it, the continuation, and when that is the current step,
    /// its further uses in it (0 for ids out of range). Per layer the latest step is the current
    /// one; in a shared pool another layer's expert is still in its run until that layer's next
    /// step.
    pub(crate) fn score(&self, expert: usize) -> f32 {
        let rate = self.uses.get(expert) * (1.0 - self.decay);
        let now = match (self.last.get(expert), self.in_step.get(expert)) {
            (Some(&l), Some(&c)) if l == self.step => (c.saturating_sub(1)) as f32 + self.continuation,
            (Some(&l), _) if l != 0 && l.saturating_add(self.stride) > self.step => self.continuation,
            _ => 0.0,
        };
        self.config.horizon * rate + now
    }

    /// A demotion key ordered as the score (scores are never negative, so their bits order as
    /// they do).
    pub(crate) fn key(&self, expert: usize) -> u64 {
        u64::from(self.score(expert).to_bits())
    }

    /// Whether the current step has a cutoff and `expert` scores below it.
    pub(crate) fn below_cutoff(&self, expert: usize) -> bool {
        self.cutoff > 0.0 && self.score(expert) < self.cutoff
    }

    /// The action for a miss of `expert` that would displace `victim` (`None`: a free slot).
    pub(crate) fn admission(&self, expert: usize, victim: Option<usize>) -> Admission {
        let score = self.score(expert);
        if score < self.cutoff {
            return Admission::InPlace;
        }
        self.config.admission(score, victim.map(|v| self.score(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert_eq!(AdmissionConfig::new(0.0, 1.0, 1.0), Err(PolicyError::HalfLife(0.0)));
        assert!(AdmissionConfig::new(f32::INFINITY, 1.0, 1.0).is_err());
        assert_eq!(AdmissionConfig::new(4.0, -1.0, 0.0), Err(PolicyError::Horizon(-1.0)));
        assert_eq!(AdmissionConfig::new(4.0, 0.0, -0.5), Err(PolicyError::Threshold(-0.5)));
        assert!(AdmissionConfig::new(4.0, 0.0, f32::NAN).is_err());
        let c = AdmissionConfig::new(4.0, 3.0, 2.0).unwrap();
        assert_eq!((c.half_life(), c.horizon(), c.threshold()), (4.0, 3.0, 2.0));
        assert_eq!(AdmissionConfig::default(), AdmissionConfig::DEFAULT);
        let d = AdmissionConfig::DEFAULT;
        assert_eq!(AdmissionConfig::new(d.half_life(), d.horizon(), d.threshold()), Ok(d));
    }

    #[test]
    fn a_miss_is_copied_only_past_the_threshold() {
        let c = AdmissionConfig::new(8.0, 0.0, 1.0).unwrap();
        assert_eq!(c.admission(2.5, Some(1.0)), Admission::Copy);
        assert_eq!(c.admission(2.0, Some(1.0)), Admission::InPlace);
        assert_eq!(c.admission(1.5, None), Admission::Copy);
        assert_eq!(c.admission(1.0, None), Admission::InPlace);
        let tinylfu = AdmissionConfig::new(8.0, 0.0, 0.0).unwrap();
        assert_eq!(tinylfu.admission(1.0, None), Admission::Copy);
        assert_eq!(tinylfu.admission(1.0, Some(1.0)), Admission::InPlace);
    }

    #[cfg(feature = "demand")]
    #[test]
    fn decayed_counts_halve_and_survive_rescaling() {
        let mut c = DecayedCounts::new(libm::powf(2.0, 0.5), 3);
        c.add(1);
        c.add(1);
        c.add(7); // out of range: nothing
        c.tick();
        c.tick();
        assert!((c.get(1) - 1.0).abs() < 1e-5, "{}", c.get(1));
        assert_eq!((c.get(0), c.get(7)), (0.0, 0.0));
        // Thousands of steps rescale many times; a fresh use still counts 1.
        for _ in 0..5000 {
            c.tick();
            c.add(2);
        }
        let steady = 1.0 / (1.0 - libm::powf(0.5, 0.5));
        assert!((c.get(2) - steady).abs() < 1e-3, "{}", c.get(2));
        assert!(c.get(1) < 1e-6);
    }

    #[cfg(feature = "demand")]
    #[test]
    fn scores_count_the_step_the_rate_and_the_measured_continuation() {
        let config = AdmissionConfig::new(4.0, 2.0, 0.0).unwrap();
        let rate = 1.0 - libm::powf(0.5, 0.25);
        let mut f = AdmissionFilter::new(config, 8, 4);
        f.begin_step(&[1, 1, 1, 3], 4);
        // Expert 1: three uses (two further in this step), nothing continued yet.
        assert!((f.score(1) - (2.0 * 3.0 * rate + 2.0)).abs() < 1e-5, "{}", f.score(1));
        assert!((f.score(3) - 2.0 * rate).abs() < 1e-5);
        assert_eq!((f.score(0), f.score(9)), (0.0, 0.0));
        // Step 2 repeats expert 3: one of its two ids continued; the first step's four ids have
        // decayed by a step.
        f.begin_step(&[3, 5], 4);
        let p = 1.0 / (4.0 * libm::powf(0.5, 0.25) + 2.0);
        assert!((f.continuation - p / (1.0 - p)).abs() < 1e-5, "{}", f.continuation);
        assert!(f.score(3) > f.score(5) && f.score(5) > f.score(0));
        assert!(f.key(3) > f.key(5) && f.key(5) > f.key(0));
        // Expert 1, not used now, keeps only its decayed rate.
        let decayed = 2.0 * 3.0 * libm::powf(0.5, 0.25) * rate;
        assert!((f.score(1) - decayed).abs() < 1e-5, "{}", f.score(1));
        // A miss of 5 is worth displacing never-used 0, not the once-busy 1.
        assert!(f.score(1) > f.score(5));
        assert_eq!(f.admission(5, Some(0)), Admission::Copy);
        assert_eq!(f.admission(5, Some(1)), Admission::InPlace);
    }

    #[cfg(feature = "demand")]
    #[test]
    fn interleaved_streams_measure_their_own_runs_and_keep_their_settings() {
        // Two streams take turns: stream A (experts 0..4) repeats its expert, stream B (4..8)
        // never does. Per stream step, half the ids continue a run: p = 1/2, continuation 1.
        let config = AdmissionConfig::new(1e9, 0.5, 0.0).unwrap();
        let interleaved = config.interleaved(2);
        assert_eq!((interleaved.half_life(), interleaved.horizon()), (2e9, 1.0));
        let mut f = AdmissionFilter::new(interleaved, 8, 4);
        for step in 0..200u32 {
            f.begin_step(&[0], 4);
            f.begin_step(&[4 + step % 4], 4);
        }
        assert!((f.continuation - 1.0).abs() < 0.02, "{}", f.continuation);
        // Not interleaved, the same pool steps would count no run at all.
        let mut plain = AdmissionFilter::new(config, 8, 4);
        for step in 0..200u32 {
            plain.begin_step(&[0], 4);
            plain.begin_step(&[4 + step % 4], 4);
        }
        assert_eq!(plain.continuation, 0.0);
        // A half-life of 2 forward steps halves counts every 4 pool steps.
        let two = AdmissionConfig::new(2.0, 1.0, 0.0).unwrap().interleaved(2);
        assert!((libm::powf(two.decay, 4.0) - 0.5).abs() < 1e-6);
        assert_eq!(config.interleaved(0), config);
    }

    #[cfg(feature = "demand")]
    #[test]
    fn a_step_with_more_experts_than_slots_admits_only_its_best() {
        let config = AdmissionConfig::new(4.0, 1.0, 0.0).unwrap();
        let mut f = AdmissionFilter::new(config, 8, 2);
        // Expert 4 is used three times, 6 twice, 0 and 2 once: the two best are 4 and 6.
        f.begin_step(&[0, 4, 2, 4, 6, 4, 6], 2);
        assert_eq!(f.admission(4, None), Admission::Copy);
        assert_eq!(f.admission(6, None), Admission::Copy);
        assert_eq!(f.admission(0, None), Admission::InPlace);
        assert_eq!(f.admission(2, None), Admission::InPlace);
        // A step of no more ids than slots has no cutoff.
        f.begin_step(&[0, 2], 2);
        assert_eq!(f.admission(0, None), Admission::Copy);
    }
}
