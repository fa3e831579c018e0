//! Prefetch prediction: once layer `l`'s router has chosen, guess which experts layer `l + 1`
//! will choose, so their copies can start while layer `l` computes
//! ([`crate::ExpertPool::prefetch`] is the hook that places them).
//!
//! A [`Prefetcher`] learns online, from the routing it observes:
//! - **transitions**: how often a token that chose expert `a` at layer `l` chose `b` at layer
//!   `l + 1`; the guess for `b` is the sum over the step's choices `a` of `P(b | a)`, per token;
//! - **previous**: the share of the previous step's tokens that chose `b` at layer `l + 1`;
//! - **both**: the mean of the two.
//!
//! It also keeps, per layer and expert, the scores a demand policy ranks by (the tick of the last
//! use for LRU, the use count for LFU, counted as the pool counts them), so a prefetch can be
//! refused when the policy's demotion candidate outranks the guess.
//!
//! Everything is allocated at construction: `layers × experts²` transition counters (4 bytes
//! each) and a few words per layer and expert; observing and predicting allocate nothing.

use alloc::vec;
use alloc::vec::Vec;

use crate::error::PoolError;
use crate::policy::select::{keep_best, sort_best_first};
use crate::policy::{Policy, PolicyError};

/// The default half-life of transition counts, in steps: long enough to learn from, short enough
/// to follow a change of the routing's popularity.
pub const DEFAULT_HALF_LIFE: f32 = 16.0;

/// Weight past which a layer's transition counts are rescaled (well inside `f32`).
const RESCALE_AT: f32 = 1e18;

/// Where a guess comes from. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Predictor {
    /// Transition counts between consecutive layers.
    Transitions,
    /// The previous step's choice at the predicted layer.
    Previous,
    /// The mean of both.
    Both,
}

impl Predictor {
    /// Every name [`Predictor::from_name`] knows.
    pub const NAMES: [&'static str; 3] = ["transitions", "previous", "both"];

    /// The name.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Transitions => "transitions",
            Self::Previous => "previous",
            Self::Both => "both",
        }
    }

    /// The predictor named `name`.
    ///
    /// # Errors
    /// [`PolicyError::UnknownName`].
    pub fn from_name(name: &str) -> Result<Self, PolicyError> {
        match name {
            "transitions" => Ok(Self::Transitions),
            "previous" => Ok(Self::Previous),
            "both" => Ok(Self::Both),
            _ => Err(PolicyError::UnknownName),
        }
    }
}

/// Which policy score the prefetcher mirrors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Score {
    Recency,
    Frequency,
}

/// An online predictor of the next layer's experts, with the policy scores a prefetch is weighed
/// by. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Prefetcher {
    layers: usize,
    experts: usize,
    top_k: usize,
    predictor: Predictor,
    score: Score,
    /// One clock for all layers (a shared pool) or one per layer.
    shared_clock: bool,
    /// `transitions[(l × experts + a) × experts + b]`: tokens that chose `a` at `l`, `b` at `l + 1`,
    /// each weighted by `gains[l]` at the time (older tokens weigh less).
    transitions: Vec<f32>,
    /// `rows[l × experts + a]`: the sum of `a`'s transition row.
    rows: Vec<f32>,
    /// Per layer pair: the weight of the next token; grows by `1 / alpha` per step, so counts decay
    /// by `alpha` per step relative to new ones, and rescales everything before it overflows.
    gains: Vec<f32>,
    /// The per-step decay of transition counts.
    alpha: f32,
    /// `previous[l × experts + b]`: tokens of layer `l`'s latest step that chose `b`.
    previous: Vec<u32>,
    /// Tokens of each layer's latest step.
    previous_tokens: Vec<u32>,
    /// The latest observed ids and their layer, to learn the next layer's transitions from.
    last_ids: Vec<u32>,
    last_layer: Option<usize>,
    /// Per layer and expert: the tick of the last use, and the number of uses.
    last_use: Vec<u64>,
    uses: Vec<u64>,
    clocks: Vec<u64>,
    /// Scratch: per expert guess weights, and the guesses.
    weights: Vec<f32>,
    picks: Vec<(f32, u16)>,
    guesses: Vec<u16>,
}

impl Prefetcher {
    /// A prefetcher for `layers` layers of `experts` experts, `top_k` experts per token, steps
    /// of at most `max_step_ids` ids, weighing prefetches by `policy`'s score (LRU or LFU). With
    /// `shared_clock`, recency is counted over all layers together, as a
    /// [`crate::SharedSlotPool`] counts it; otherwise per layer, as per-layer pools do.
    ///
    /// # Errors
    /// [`PoolError::NoExperts`] for a zero count, [`PoolError::TooManyExperts`] above
    /// [`crate::MAX_EXPERTS`] experts, [`PoolError::TooManyIds`] above [`crate::MAX_STEP_IDS`],
    /// [`PoolError::PolicyMismatch`] for a policy other than LRU or LFU,
    /// [`PoolError::OutOfMemory`] when the transition counts (`layers × experts²` of them) cannot
    /// be allocated.
    pub fn new(
        layers: usize,
        experts: usize,
        top_k: usize,
        predictor: Predictor,
        policy: Policy,
        shared_clock: bool,
        max_step_ids: usize,
    ) -> Result<Self, PoolError> {
        if layers == 0 || experts == 0 || top_k == 0 {
            return Err(PoolError::NoExperts);
        }
        if experts > crate::MAX_EXPERTS {
            return Err(PoolError::TooManyExperts { experts, max: crate::MAX_EXPERTS });
        }
        crate::pool::check_step(max_step_ids)?;
        let score = match policy {
            Policy::Lru => Score::Recency,
            Policy::Lfu => Score::Frequency,
            _ => return Err(PoolError::PolicyMismatch),
        };
        let too_many = PoolError::TooManyExperts { experts: usize::MAX, max: crate::MAX_EXPERTS };
        let keys = layers.checked_mul(experts).ok_or(too_many)?;
        let pairs =
            layers.saturating_sub(1).checked_mul(experts).and_then(|r| r.checked_mul(experts)).ok_or(too_many)?;
        // layers × experts² counts: refuse rather than abort when the allocator cannot give them.
        let mut transitions = Vec::new();
        transitions
            .try_reserve_exact(pairs)
            .map_err(|_| PoolError::OutOfMemory { bytes: pairs.saturating_mul(core::mem::size_of::<f32>()) })?;
        transitions.resize(pairs, 0.0);
        Ok(Self {
            layers,
            experts,
            top_k,
            predictor,
            score,
            shared_clock,
            transitions,
            rows: vec![0.0; keys],
            gains: vec![1.0; layers],
            alpha: libm::powf(0.5, 1.0 / DEFAULT_HALF_LIFE),
            previous: vec![0; keys],
            previous_tokens: vec![0; layers],
            last_ids: Vec::with_capacity(max_step_ids),
            last_layer: None,
            last_use: vec![0; keys],
            uses: vec![0; keys],
            clocks: vec![0; layers],
            weights: vec![0.0; experts],
            picks: Vec::with_capacity(experts),
            guesses: Vec::with_capacity(experts),
        })
    }

    /// The predictor.
    pub const fn predictor(&self) -> Predictor {
        self.predictor
    }

    fn key(&self, layer: usize, expert: usize) -> Option<usize> {
        (layer < self.layers && expert < self.experts)
            .then(|| layer.checked_mul(self.experts).and_then(|k| k.checked_add(expert)))
            .flatten()
    }

    /// Learns from `layer`'s routing `ids` (token-major, `top_k` per token) once they are known:
    /// the transitions from the previous observed layer when it is `layer - 1` with as many ids,
    /// the layer's latest choice, and the policy scores. Observe every step of every layer, in
    /// serving order. Ids out of range are skipped; a layer out of range or more ids than the
    /// prefetcher was built for are ignored.
    pub fn observe(&mut self, layer: usize, ids: &[u32]) {
        if layer >= self.layers || ids.len() > self.last_ids.capacity() {
            return;
        }
        let experts = self.experts;
        let k = self.top_k;
        if let Some(from) = self.last_layer.filter(|&l| l.checked_add(1) == Some(layer)) {
            if self.last_ids.len() == ids.len() {
                let gain = self.gains.get(from).copied().unwrap_or(1.0);
                for (before, after) in self.last_ids.chunks(k).zip(ids.chunks(k)) {
                    for &a in before.iter().filter(|&&a| (a as usize) < experts) {
                        let row = from.saturating_mul(experts).saturating_add(a as usize);
                        for &b in after.iter().filter(|&&b| (b as usize) < experts) {
                            let at = row.saturating_mul(experts).saturating_add(b as usize);
                            if let Some(t) = self.transitions.get_mut(at) {
                                *t += gain;
                            }
                            if let Some(r) = self.rows.get_mut(row) {
                                *r += gain;
                            }
                        }
                    }
                }
                self.decay(from);
            }
        }
        let base = layer.saturating_mul(experts);
        if let Some(previous) = self.previous.get_mut(base..base.saturating_add(experts)) {
            previous.fill(0);
        }
        if let Some(t) = self.previous_tokens.get_mut(layer) {
            *t = u32::try_from(ids.len().div_ceil(k)).unwrap_or(u32::MAX);
        }
        let clock = if self.shared_clock { 0 } else { layer };
        for &id in ids {
            let Some(key) = self.key(layer, id as usize) else { continue };
            if let Some(p) = self.previous.get_mut(key) {
                *p = p.saturating_add(1);
            }
            if let Some(c) = self.clocks.get_mut(clock) {
                *c = c.saturating_add(1);
                if let Some(l) = self.last_use.get_mut(key) {
                    *l = *c;
                }
            }
            if let Some(u) = self.uses.get_mut(key) {
                *u = u.saturating_add(1);
            }
        }
        self.last_ids.clear();
        self.last_ids.extend_from_slice(ids);
        self.last_layer = Some(layer);
    }

    /// Makes the next token's transitions from `layer` weigh `1 / alpha` times the last one's,
    /// rescaling the layer's counts once the weight gets large.
    fn decay(&mut self, layer: usize) {
        let Some(gain) = self.gains.get_mut(layer) else { return };
        *gain /= self.alpha;
        if *gain < RESCALE_AT {
            return;
        }
        let scale = 1.0 / *gain;
        *gain = 1.0;
        let experts = self.experts;
        let rows = layer.saturating_mul(experts)..layer.saturating_add(1).saturating_mul(experts);
        let cells = rows.start.saturating_mul(experts)..rows.end.saturating_mul(experts);
        self.rows.get_mut(rows).into_iter().flatten().for_each(|r| *r *= scale);
        self.transitions.get_mut(cells).into_iter().flatten().for_each(|t| *t *= scale);
    }

    /// Sets the half-life of the transition counts, in steps (default [`DEFAULT_HALF_LIFE`]);
    /// infinity never forgets.
    ///
    /// # Errors
    /// [`PolicyError::HalfLife`] unless `steps` is positive (infinity allowed).
    pub fn half_life(mut self, steps: f32) -> Result<Self, PolicyError> {
        if steps.is_nan() || steps <= 0.0 {
            return Err(PolicyError::HalfLife(steps));
        }
        self.alpha = libm::powf(0.5, 1.0 / steps);
        Ok(self)
    }

    /// Guesses layer `layer + 1`'s experts from layer `layer`'s `ids`: at most `max` experts
    /// with a positive weight, best first (ties to the lower id). Empty for the last layer.
    pub fn predict(&mut self, layer: usize, ids: &[u32], max: usize) -> &[u16] {
        self.guesses.clear();
        let Some(next) = layer.checked_add(1).filter(|&n| n < self.layers) else {
            return &self.guesses;
        };
        let experts = self.experts;
        self.weights.fill(0.0);
        let tokens = ids.len().div_ceil(self.top_k).max(1) as f32;
        if self.predictor != Predictor::Previous {
            for &a in ids.iter().filter(|&&a| (a as usize) < experts) {
                let row = layer.saturating_mul(experts).saturating_add(a as usize);
                let total = self.rows.get(row).copied().unwrap_or(0.0);
                if total.is_nan() || total <= 0.0 {
                    continue;
                }
                let start = row.saturating_mul(experts);
                let counts = self.transitions.get(start..start.saturating_add(experts)).unwrap_or(&[]);
                for (w, &c) in self.weights.iter_mut().zip(counts) {
                    *w += c / total / tokens;
                }
            }
        }
        if self.predictor != Predictor::Transitions {
            let base = next.saturating_mul(experts);
            let previous = self.previous.get(base..base.saturating_add(experts)).unwrap_or(&[]);
            let tokens = self.previous_tokens.get(next).copied().unwrap_or(0).max(1) as f32;
            for (w, &p) in self.weights.iter_mut().zip(previous) {
                *w += p as f32 / tokens;
            }
        }
        if self.predictor == Predictor::Both {
            self.weights.iter_mut().for_each(|w| *w *= 0.5);
        }
        let better = |a: &(f32, u16), b: &(f32, u16)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);
        self.picks.clear();
        let cap = max.min(experts);
        for (expert, &w) in self.weights.iter().enumerate() {
            if w > 0.0 {
                // expert < experts <= MAX_EXPERTS
                keep_best(&mut self.picks, cap, (w, expert as u16), better);
            }
        }
        sort_best_first(&mut self.picks, better);
        self.guesses.extend(self.picks.iter().map(|p| p.1));
        &self.guesses
    }

    /// The guesses of the last [`Prefetcher::predict`].
    pub fn guesses(&self) -> &[u16] {
        &self.guesses
    }

    /// Whether the policy scores `victim` of `victim_layer` strictly below `guess` of
    /// `guess_layer` once the guess's predicted use has happened: for LRU the guess would be
    /// the most recent use, for LFU its uses grow by one.
    pub fn outranked(&self, victim_layer: usize, victim: usize, guess_layer: usize, guess: usize) -> bool {
        let predicted = match self.score {
            Score::Recency => {
                let clock = if self.shared_clock { 0 } else { guess_layer };
                self.clocks.get(clock).copied().unwrap_or(0)
            }
            Score::Frequency => self.score(guess_layer, guess),
        };
        self.score(victim_layer, victim) < predicted.saturating_add(1)
    }

    /// The score the policy ranks `expert` of `layer` by: the tick of its last use (LRU) or its
    /// number of uses (LFU); 0 when never used or out of range.
    pub fn score(&self, layer: usize, expert: usize) -> u64 {
        let Some(key) = self.key(layer, expert) else { return 0 };
        let table = match self.score {
            Score::Recency => &self.last_use,
            Score::Frequency => &self.uses,
        };
        table.get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "asks the allocator for 18 PB; Miri reports that as resource exhaustion, not a refusal")]
    fn a_prefetcher_too_big_for_memory_is_refused() {
        // A million layers of 65 535 experts: 18 PB of transition counts, refused, not aborted.
        let huge = Prefetcher::new(1 << 20, 65_535, 8, Predictor::Both, Policy::Lru, false, 8);
        assert!(matches!(huge, Err(PoolError::OutOfMemory { .. })), "{huge:?}");
    }

    #[test]
    fn learns_transitions_and_the_previous_choice() {
        let mut p = Prefetcher::new(2, 8, 2, Predictor::Transitions, Policy::Lru, false, 8).unwrap();
        // Tokens choosing {1, 2} at layer 0 choose {5, 6} at layer 1.
        for _ in 0..3 {
            p.observe(0, &[1, 2, 3, 4]);
            p.observe(1, &[5, 6, 7, 0]);
        }
        assert_eq!(p.predict(0, &[1, 2], 8), [5, 6]);
        assert_eq!(p.predict(0, &[3, 9], 1), [0]); // ties to the lower id; 9 is out of range
        assert!(p.predict(1, &[1, 2], 8).is_empty()); // no layer after the last
        assert!(p.predict(0, &[6, 6], 8).is_empty()); // nothing learned from 6
        let mut previous = Prefetcher::new(2, 8, 2, Predictor::Previous, Policy::Lfu, false, 8).unwrap();
        previous.observe(1, &[3, 4, 3, 7]);
        assert_eq!(previous.predict(0, &[1, 2], 8), [3, 4, 7]);
        assert_eq!((previous.score(1, 3), previous.score(1, 4), previous.score(0, 3)), (2, 1, 0));
        // LRU scores are ticks of the layer's own clock.
        assert_eq!((p.score(1, 0), p.score(1, 5), p.score(9, 0)), (12, 9, 0));
        assert_eq!(
            Prefetcher::new(2, 8, 2, Predictor::Both, Policy::Tide, false, 8).unwrap_err(),
            PoolError::PolicyMismatch
        );
        for name in Predictor::NAMES {
            assert_eq!(Predictor::from_name(name).unwrap().name(), name);
        }
    }
}
