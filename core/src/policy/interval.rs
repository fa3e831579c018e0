//! Interval placement: the resident set is re-decided on refresh steps only (between refreshes,
//! misses are served from slow memory).
//!
//! Each expert has a score; the targets are the experts with a score above zero, highest first
//! (ties to the lower id), at most one per slot. Targets already resident stay where they are;
//! each other target is promoted into a free slot while one exists, then into the slot of a
//! demoted resident; only residents that are not targets are demoted, as many as the promotions
//! that found no free slot, coldest first (lowest score, ties to the lower id). Unlike the
//! reference implementations, which pick demotion candidates in hash-set order, every choice is deterministic.
//!
//! - TIDE's hit count: the score is the expert's number of valid ids in the refresh step.
//! - Decayed frequency: the score is `Σ α^(now − step) × hits(step)` over every step seen, kept
//!   up to date on every step, with `α = 0.5^(1 / half_life)`. A target replaces a resident only
//!   when its score exceeds the resident's by the swap margin, and a refresh may promote at most a
//!   given number of experts (a cap on the bytes one refresh moves).
//!
//! Scratch buffers are sized to the slot count when the pool is built: a refresh allocates
//! nothing.

use alloc::vec;
use alloc::vec::Vec;

use super::select::{keep_best, sort_best_first, threshold};
use super::DecayConfig;
use crate::plan::{MigrationPlan, Promotion};
use crate::slot_table::{COUNT_MASK, EMPTY_SLOT, RESIDENT, SEEN, TARGET};

/// An expert and its score key (a count, or the bits of a non-negative float, which order the
/// same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    key: u32,
    expert: u16,
}

impl Candidate {
    /// Ranks `self` above `other` as a target: a higher score, or as high and a lower id.
    fn hotter_than(&self, other: &Candidate) -> bool {
        self.key > other.key || (self.key == other.key && self.expert < other.expert)
    }
}

/// A resident that may be demoted, with the slot it frees.
#[derive(Debug, Clone, Copy)]
struct Demotable {
    key: u32,
    expert: u16,
    slot: u16,
}

impl Demotable {
    /// Ranks `self` before `other` for demotion: a lower score, or as low and a lower id.
    fn colder_than(&self, other: &Demotable) -> bool {
        (self.key, self.expert) < (other.key, other.expert)
    }
}

/// Where a score comes from.
#[derive(Debug, Clone)]
enum Scoring {
    /// The refresh step's hit count (TIDE).
    HitCount,
    /// Decayed hit frequency, per expert.
    Decay { alpha: f32, margin: f32, max_promotions: Option<u16>, scores: Vec<f32> },
}

/// An interval placement policy with its scratch space.
#[derive(Debug, Clone)]
pub(crate) struct IntervalPlacement {
    scoring: Scoring,
    /// Targets; a heap with the coldest kept target at the root while selecting, then the
    /// targets to promote (those not resident), sorted hottest first.
    targets: Vec<Candidate>,
    /// Demotion candidates; a heap with the hottest kept demotion candidate at the root while selecting, then sorted
    /// coldest first.
    demotables: Vec<Demotable>,
    free: Vec<u16>,
}

/// The slot table a refresh reads and changes, with per-expert words that hold hit counts for the
/// duration of the refresh (the interval-refresh phase of [`crate::slot_table`]).
pub(crate) struct RefreshState<'a> {
    /// Per expert: the step's hit count, with [`RESIDENT`] set for residents; the policy sets
    /// more flag bits. Valid for every resident expert and every expert in `candidates`.
    pub counts: &'a mut [u32],
    /// Number of occupied slots.
    pub resident: usize,
    /// Per slot: the expert it holds, or [`EMPTY_SLOT`].
    pub slot_expert: &'a mut [u16],
    /// The experts that may have a count above zero.
    pub candidates: Candidates<'a>,
}

/// Where a refresh looks for experts with hits.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Candidates<'a> {
    /// Every expert: `counts` holds a count for each (best when the step has many ids).
    All,
    /// The experts named by these ids (best when the step has fewer ids than there are experts):
    /// only their words, and the residents', hold counts.
    Ids(&'a [u32]),
}

impl IntervalPlacement {
    /// TIDE's hit-count placement for `slots` slots.
    pub(crate) fn hit_count(slots: usize) -> Self {
        Self::with_scoring(slots, Scoring::HitCount)
    }

    /// Decayed-frequency placement for `experts` experts and `slots` slots.
    pub(crate) fn decay(slots: usize, experts: usize, config: DecayConfig) -> Self {
        let scoring = Scoring::Decay {
            alpha: config.alpha(),
            margin: config.margin(),
            max_promotions: config.max_promotions(),
            scores: vec![0.0; experts],
        };
        Self::with_scoring(slots, scoring)
    }

    fn with_scoring(slots: usize, scoring: Scoring) -> Self {
        Self {
            scoring,
            targets: Vec::with_capacity(slots),
            demotables: Vec::with_capacity(slots),
            free: Vec::with_capacity(slots),
        }
    }

    /// Reserves scratch space for `slots` slots, so refreshes keep from allocating.
    pub(crate) fn set_slots(&mut self, slots: usize) {
        self.targets.reserve(slots.saturating_sub(self.targets.len()));
        self.demotables.reserve(slots.saturating_sub(self.demotables.len()));
        self.free.reserve(slots.saturating_sub(self.free.len()));
    }

    /// Whether the policy reads every expert's score on a refresh (rather than only the step's
    /// and the residents').
    pub(crate) fn scans_all_experts(&self) -> bool {
        matches!(self.scoring, Scoring::Decay { .. })
    }

    /// Folds one step's ids into the scores (every step, refresh or not). Ids out of range are
    /// ignored.
    pub(crate) fn observe(&mut self, ids: &[u32]) {
        if let Scoring::Decay { alpha, scores, .. } = &mut self.scoring {
            for score in scores.iter_mut() {
                *score *= *alpha;
            }
            for &id in ids {
                if let Some(score) = scores.get_mut(id as usize) {
                    *score += 1.0;
                }
            }
        }
    }

    /// The score key of `expert` whose count word is `word`.
    fn key(&self, expert: usize, word: u32) -> u32 {
        match &self.scoring {
            Scoring::HitCount => word & COUNT_MASK,
            // Non-negative finite floats order like their bit patterns.
            Scoring::Decay { scores, .. } => scores.get(expert).map_or(0, |s| s.to_bits()),
        }
    }

    /// Whether a target of score key `challenger` may replace a resident of score key `demotion candidate`.
    fn may_replace(&self, challenger: u32, demotable: u32) -> bool {
        match self.scoring {
            Scoring::HitCount => true,
            Scoring::Decay { margin, .. } => f32::from_bits(challenger) > margin * f32::from_bits(demotable),
        }
    }

    fn max_promotions(&self) -> usize {
        match self.scoring {
            Scoring::Decay { max_promotions: Some(cap), .. } => usize::from(cap),
            _ => usize::MAX,
        }
    }

    /// Decides the placement, frees the slots of demoted experts in `state.slot_expert`, and
    /// fills `plan` with at most `limit` promotions (hottest first). Returns the number of
    /// demotions.
    pub(crate) fn refresh(&mut self, state: RefreshState<'_>, limit: usize, plan: &mut MigrationPlan) -> usize {
        let RefreshState { counts, resident, slot_expert, candidates } = state;
        let slots = slot_expert.len();
        self.select_targets(counts, candidates, slots);
        // Promotions that find no free slot each need a demotion candidate.
        #[allow(clippy::arithmetic_side_effects, reason = "resident <= slots")]
        let needed = self.targets.len().saturating_sub(slots - resident);

        // Free slots in ascending order; the `needed` coldest residents that are not targets.
        self.demotables.clear();
        self.free.clear();
        for (slot, &expert) in slot_expert.iter().enumerate() {
            let slot = slot as u16; // slots <= u16::MAX, checked when the pool is built
            match counts.get(usize::from(expert)) {
                None => self.free.push(slot),
                Some(&word) if word & TARGET != 0 || needed == 0 => {}
                Some(&word) => {
                    let demotable = Demotable { key: self.key(usize::from(expert), word), expert, slot };
                    keep_best(&mut self.demotables, needed, demotable, Demotable::colder_than);
                }
            }
        }
        sort_best_first(&mut self.demotables, Demotable::colder_than);

        let mut free = self.free.iter();
        let mut demotables = self.demotables.iter();
        let mut demotions = 0usize;
        let cap = self.max_promotions().min(limit);
        for t in &self.targets {
            if plan.len() >= cap {
                break;
            }
            let (slot, demoted) = match free.next() {
                Some(&slot) => (slot, None),
                // Targets come hottest first and demotion candidates coldest first: once a target may not
                // replace the next demotion candidate, no later one may.
                None => match demotables.next() {
                    Some(v) if self.may_replace(t.key, v.key) => (v.slot, Some(v.expert)),
                    _ => break,
                },
            };
            if let Some(entry) = slot_expert.get_mut(usize::from(slot)) {
                *entry = EMPTY_SLOT;
            }
            demotions = demotions.saturating_add(usize::from(demoted.is_some()));
            plan.push(Promotion { expert: t.expert, slot, demoted });
        }
        debug_assert!(plan.len() <= slots);
        demotions
    }

    /// Marks the (at most `slots`) highest-scoring experts with [`TARGET`] and fills
    /// `self.targets` with those that are not resident (the promotions to make), hottest first.
    fn select_targets(&mut self, counts: &mut [u32], candidates: Candidates<'_>, slots: usize) {
        self.targets.clear();
        if slots == 0 {
            return;
        }
        match candidates {
            Candidates::All if matches!(self.scoring, Scoring::HitCount) && !cfg!(feature = "heap-select") => {
                // Linear: bucket passes find the slots-th largest count, one more pass marks.
                let sum = counts.iter().fold(0usize, |s, &w| s.saturating_add((w & COUNT_MASK) as usize));
                let found = threshold(|| counts.iter().map(|&w| w & COUNT_MASK), slots, sum);
                let (t, mut at_t) = found.unwrap_or((1, usize::MAX));
                for (expert, word) in counts.iter_mut().enumerate() {
                    let key = *word & COUNT_MASK;
                    if key > t || (key == t && at_t > 0) {
                        at_t = at_t.saturating_sub(usize::from(key == t));
                        *word |= TARGET;
                        if *word & RESIDENT == 0 {
                            // Experts number at most u16::MAX, checked when the pool is built.
                            self.targets.push(Candidate { key, expert: expert as u16 });
                        }
                    }
                }
                sort_best_first(&mut self.targets, Candidate::hotter_than);
                return;
            }
            Candidates::All => {
                for (expert, &word) in counts.iter().enumerate() {
                    // Experts number at most u16::MAX, checked when the pool is built.
                    let c = Candidate { key: self.key(expert, word), expert: expert as u16 };
                    offer(&mut self.targets, c, slots);
                }
            }
            Candidates::Ids(ids) => {
                for &id in ids {
                    if let Some(word) = counts.get_mut(id as usize) {
                        if *word & SEEN == 0 {
                            *word |= SEEN;
                            // A valid id is below the expert count, at most u16::MAX.
                            let c = Candidate { key: *word & COUNT_MASK, expert: id as u16 };
                            offer(&mut self.targets, c, slots);
                        }
                    }
                }
            }
        }
        // Mark the targets; only those not resident are promoted.
        self.targets.retain(|t| match counts.get_mut(usize::from(t.expert)) {
            Some(word) => {
                *word |= TARGET;
                *word & RESIDENT == 0
            }
            None => false,
        });
        sort_best_first(&mut self.targets, Candidate::hotter_than);
    }
}

/// Keeps `c` among the `slots` hottest candidates offered so far, if it scored at all.
fn offer(targets: &mut Vec<Candidate>, c: Candidate, slots: usize) {
    if c.key != 0 {
        keep_best(targets, slots, c, Candidate::hotter_than);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experts(p: &IntervalPlacement) -> Vec<u16> {
        p.targets.iter().map(|t| t.expert).collect()
    }

    #[test]
    fn targets_are_the_hottest_with_ties_to_the_lower_id() {
        let mut p = IntervalPlacement::hit_count(3);
        let mut counts = [0, 5, 2, 5, 0, 2, 9, 1];
        p.select_targets(&mut counts, Candidates::All, 3);
        let got: Vec<_> = p.targets.iter().map(|t| (t.expert, t.key)).collect();
        assert_eq!(got, [(6, 9), (1, 5), (3, 5)]);
        p.select_targets(&mut counts, Candidates::All, 5);
        assert_eq!(experts(&p), [6, 1, 3, 2, 5]);
        // From ids, in any order and repeated: the same targets.
        p.select_targets(&mut counts, Candidates::Ids(&[5, 3, 5, 9, 1, 6, 2, 3]), 3);
        assert_eq!(experts(&p), [6, 1, 3]);
        p.select_targets(&mut counts, Candidates::All, 0);
        assert!(p.targets.is_empty());
        p.select_targets(&mut [0, 0, 1], Candidates::All, 8);
        assert_eq!(p.targets.len(), 1);
    }

    #[test]
    fn decayed_scores_fold_every_step() {
        let config = DecayConfig::new(1.0, 1.0, None).unwrap(); // α = 0.5
        let mut p = IntervalPlacement::decay(2, 4, config);
        p.observe(&[1, 1, 2]);
        p.observe(&[2, 9]);
        let Scoring::Decay { scores, .. } = &p.scoring else { panic!("decay") };
        assert_eq!(scores.as_slice(), &[0.0, 1.0, 1.5, 0.0]);
        let mut counts = [0u32; 4];
        p.select_targets(&mut counts, Candidates::All, 2);
        assert_eq!(experts(&p), [2, 1]);
        assert!(p.may_replace(3.0f32.to_bits(), 2.0f32.to_bits()));
    }
}
