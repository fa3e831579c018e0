//! Placement policies: how observed routing becomes a target set of resident experts.
//!
//! TIDE's hit-count placement decides on refresh steps: count each expert's valid ids; the
//! targets are the experts with a count above zero, hottest first (ties to the lower id), at
//! most one per slot. Targets already resident stay where they are; each other target is promoted
//! into a free slot while one exists, then into the slot of a demoted resident; only residents
//! that are not targets are demoted, as many as the promotions that found no free slot, coldest
//! first (lowest count, ties to the lower id). Unlike the reference implementations, which pick
//! victims in hash-set order, every choice here is deterministic.
//!
//! The policy owns its scratch buffers, sized to the slot count when the pool is built, so a
//! refresh allocates nothing.

use alloc::vec::Vec;

use crate::plan::{MigrationPlan, Promotion};

/// An expert and its score (hit count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    count: u32,
    expert: u16,
}

impl Candidate {
    /// Ranks `self` below `other`: fewer hits, or as many hits and a higher id.
    fn colder_than(self, other: Candidate) -> bool {
        self.count < other.count || (self.count == other.count && self.expert > other.expert)
    }
}

/// A resident that may be demoted, with the slot it frees.
#[derive(Debug, Clone, Copy)]
struct Victim {
    count: u32,
    expert: u16,
    slot: u16,
}

/// TIDE's hit-count placement with its scratch space.
#[derive(Debug, Clone)]
pub(crate) struct HitCount {
    /// Targets; a min-heap on (count, reversed id) while selecting, then sorted hottest first.
    targets: Vec<Candidate>,
    victims: Vec<Victim>,
    free: Vec<u16>,
}

/// The slot table a refresh reads and changes, with per-expert words that hold hit counts for the
/// duration of the refresh (see [`crate::ExpertPool`]).
pub(crate) struct RefreshState<'a> {
    /// Per expert: the step's hit count; the policy sets flag bits on it.
    pub counts: &'a mut [u32],
    /// Per slot: the expert it holds, or [`crate::pool::EMPTY_SLOT`].
    pub slot_expert: &'a mut [u16],
}

/// Flag on a count word: the expert is a target of this refresh.
const TARGET: u32 = 1 << 31;
/// Flag on a count word: the expert is a target and already resident.
const STAYS: u32 = 1 << 30;
/// Counts stay below the flag bits.
pub(crate) const COUNT_MASK: u32 = STAYS - 1;

impl HitCount {
    pub(crate) fn new(slots: usize) -> Self {
        Self { targets: Vec::with_capacity(slots), victims: Vec::with_capacity(slots), free: Vec::with_capacity(slots) }
    }

    /// Decides the placement from `state.counts`, frees the slots of demoted experts in
    /// `state.slot_expert`, and fills `plan` with the promotions. Returns the number of demotions.
    pub(crate) fn refresh(&mut self, state: RefreshState<'_>, plan: &mut MigrationPlan) -> usize {
        let RefreshState { counts, slot_expert } = state;
        let slots = slot_expert.len();
        self.select_targets(counts, slots);
        for t in &self.targets {
            if let Some(word) = counts.get_mut(usize::from(t.expert)) {
                *word |= TARGET;
            }
        }

        // Residents: targets stay, the others may be demoted. Free slots in ascending order.
        self.victims.clear();
        self.free.clear();
        let mut staying = 0;
        for (slot, &expert) in slot_expert.iter().enumerate() {
            let slot = slot as u16; // slots <= u16::MAX, checked when the pool is built
            match counts.get_mut(usize::from(expert)) {
                None => self.free.push(slot),
                Some(word) if *word & TARGET != 0 => {
                    *word |= STAYS;
                    staying += 1;
                }
                Some(word) => self.victims.push(Victim { count: *word & COUNT_MASK, expert, slot }),
            }
        }
        // Only the coldest `needed` victims are used: select them, then order just those.
        let promotions = self.targets.len() - staying;
        let needed = promotions.saturating_sub(self.free.len()).min(self.victims.len());
        let coldest = |v: &Victim| (v.count, v.expert);
        if needed > 0 && needed < self.victims.len() {
            self.victims.select_nth_unstable_by_key(needed - 1, coldest);
        }
        if let Some(chosen) = self.victims.get_mut(..needed) {
            chosen.sort_unstable_by_key(coldest);
        }

        let mut free = self.free.iter();
        let mut victims = self.victims.iter();
        let mut demotions = 0;
        for t in &self.targets {
            let stays = counts.get(usize::from(t.expert)).is_some_and(|w| w & STAYS != 0);
            if stays {
                continue;
            }
            let (slot, evicted) = match free.next() {
                Some(&slot) => (slot, None),
                // There are at most `slots` targets, and each staying target holds a slot, so the
                // free slots and the victims together cover every promotion.
                None => match victims.next() {
                    Some(v) => (v.slot, Some(v.expert)),
                    None => break,
                },
            };
            if let Some(entry) = slot_expert.get_mut(usize::from(slot)) {
                *entry = crate::pool::EMPTY_SLOT;
            }
            demotions += usize::from(evicted.is_some());
            plan.push(Promotion { expert: t.expert, slot, evicted });
        }
        debug_assert!(plan.len() <= slots);
        demotions
    }

    /// Fills `self.targets` with the (at most `slots`) hottest experts of `counts`, hottest first.
    fn select_targets(&mut self, counts: &[u32], slots: usize) {
        self.targets.clear();
        if slots == 0 {
            return;
        }
        for (expert, &count) in counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            // Experts number at most u16::MAX, checked when the pool is built.
            let c = Candidate { count, expert: expert as u16 };
            if self.targets.len() < slots {
                self.targets.push(c);
                if self.targets.len() == slots {
                    heapify(&mut self.targets);
                }
            } else if let Some(root) = self.targets.first_mut() {
                // Experts arrive in ascending id order, so a later one with an equal count ranks
                // below the root: only a strictly larger count displaces it.
                if c.count > root.count {
                    *root = c;
                    sift_down(&mut self.targets, 0);
                }
            }
        }
        self.targets.sort_unstable_by(|a, b| b.count.cmp(&a.count).then(a.expert.cmp(&b.expert)));
    }
}

/// Arranges `heap` as a binary min-heap with the coldest candidate at the root.
fn heapify(heap: &mut [Candidate]) {
    for i in (0..heap.len() / 2).rev() {
        sift_down(heap, i);
    }
}

fn sift_down(heap: &mut [Candidate], mut i: usize) {
    loop {
        let mut coldest = i;
        for child in [2 * i + 1, 2 * i + 2] {
            if let (Some(&c), Some(&best)) = (heap.get(child), heap.get(coldest)) {
                if c.colder_than(best) {
                    coldest = child;
                }
            }
        }
        if coldest == i {
            return;
        }
        heap.swap(i, coldest);
        i = coldest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_hottest_with_ties_to_the_lower_id() {
        let mut p = HitCount::new(3);
        let counts = [0, 5, 2, 5, 0, 2, 9, 1];
        p.select_targets(&counts, 3);
        let got: Vec<_> = p.targets.iter().map(|t| (t.expert, t.count)).collect();
        assert_eq!(got, [(6, 9), (1, 5), (3, 5)]);
        p.select_targets(&counts, 5);
        let got: Vec<_> = p.targets.iter().map(|t| t.expert).collect();
        assert_eq!(got, [6, 1, 3, 2, 5]);
        p.select_targets(&counts, 0);
        assert!(p.targets.is_empty());
        p.select_targets(&[0, 0, 1], 8);
        assert_eq!(p.targets.len(), 1);
    }
}
