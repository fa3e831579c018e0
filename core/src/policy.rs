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
    /// Ranks `self` above `other` as a target: more hits, or as many hits and a lower id.
    fn hotter_than(&self, other: &Candidate) -> bool {
        self.count > other.count || (self.count == other.count && self.expert < other.expert)
    }
}

/// A resident that may be demoted, with the slot it frees.
#[derive(Debug, Clone, Copy)]
struct Victim {
    count: u32,
    expert: u16,
    slot: u16,
}

impl Victim {
    /// Ranks `self` before `other` for demotion: fewer hits, or as many hits and a lower id.
    fn colder_than(&self, other: &Victim) -> bool {
        (self.count, self.expert) < (other.count, other.expert)
    }
}

/// TIDE's hit-count placement with its scratch space.
#[derive(Debug, Clone)]
pub(crate) struct HitCount {
    /// Targets; a heap with the coldest kept target at the root while selecting, then sorted
    /// hottest first.
    targets: Vec<Candidate>,
    /// Victims; a heap with the hottest kept victim at the root while selecting, then sorted
    /// coldest first.
    victims: Vec<Victim>,
    free: Vec<u16>,
}

/// The slot table a refresh reads and changes, with per-expert words that hold hit counts for the
/// duration of the refresh (see [`crate::ExpertPool`]).
pub(crate) struct RefreshState<'a> {
    /// Per expert: the step's hit count, with [`RESIDENT`] set for residents; the policy sets
    /// more flag bits. Valid for every resident expert and every expert in `candidates`.
    pub counts: &'a mut [u32],
    /// Number of occupied slots.
    pub resident: usize,
    /// Per slot: the expert it holds, or [`crate::pool::EMPTY_SLOT`].
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

/// Flag on a count word: the expert is a target of this refresh.
const TARGET: u32 = 1 << 31;
/// Flag on a count word: the expert is resident (set by the pool before the refresh).
pub(crate) const RESIDENT: u32 = 1 << 30;
/// Flag on a count word: the expert was already offered as a candidate.
const SEEN: u32 = 1 << 29;
/// Counts stay below the flag bits.
pub(crate) const COUNT_MASK: u32 = SEEN - 1;

impl HitCount {
    pub(crate) fn new(slots: usize) -> Self {
        Self { targets: Vec::with_capacity(slots), victims: Vec::with_capacity(slots), free: Vec::with_capacity(slots) }
    }

    /// Decides the placement from `state.counts`, frees the slots of demoted experts in
    /// `state.slot_expert`, and fills `plan` with the promotions. Returns the number of demotions.
    pub(crate) fn refresh(&mut self, state: RefreshState<'_>, plan: &mut MigrationPlan) -> usize {
        let RefreshState { counts, resident, slot_expert, candidates } = state;
        let slots = slot_expert.len();
        self.select_targets(counts, candidates, slots);
        let mut staying = 0;
        for t in &self.targets {
            if let Some(word) = counts.get_mut(usize::from(t.expert)) {
                *word |= TARGET;
                staying += usize::from(*word & RESIDENT != 0);
            }
        }
        // Promotions that find no free slot each need a victim.
        let needed = (self.targets.len() - staying).saturating_sub(slots - resident);

        // Free slots in ascending order; the `needed` coldest residents that are not targets.
        self.victims.clear();
        self.free.clear();
        for (slot, &expert) in slot_expert.iter().enumerate() {
            let slot = slot as u16; // slots <= u16::MAX, checked when the pool is built
            match counts.get(usize::from(expert)) {
                None => self.free.push(slot),
                Some(&word) if word & TARGET != 0 || needed == 0 => {}
                Some(&word) => {
                    let victim = Victim { count: word & COUNT_MASK, expert, slot };
                    keep_best(&mut self.victims, needed, victim, Victim::colder_than);
                }
            }
        }
        sort_best_first(&mut self.victims, Victim::colder_than);

        let mut free = self.free.iter();
        let mut victims = self.victims.iter();
        let mut demotions = 0;
        for t in &self.targets {
            let stays = counts.get(usize::from(t.expert)).is_some_and(|w| w & RESIDENT != 0);
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
    fn select_targets(&mut self, counts: &mut [u32], candidates: Candidates<'_>, slots: usize) {
        self.targets.clear();
        if slots == 0 {
            return;
        }
        match candidates {
            Candidates::All => {
                for (expert, &word) in counts.iter().enumerate() {
                    // Experts number at most u16::MAX, checked when the pool is built.
                    self.offer(Candidate { count: word & COUNT_MASK, expert: expert as u16 }, slots);
                }
            }
            Candidates::Ids(ids) => {
                for &id in ids {
                    if let Some(word) = counts.get_mut(id as usize) {
                        if *word & SEEN == 0 {
                            *word |= SEEN;
                            // A valid id is below the expert count, at most u16::MAX.
                            self.offer(Candidate { count: *word & COUNT_MASK, expert: id as u16 }, slots);
                        }
                    }
                }
            }
        }
        sort_best_first(&mut self.targets, Candidate::hotter_than);
    }

    /// Keeps `c` among the `slots` hottest candidates offered so far.
    fn offer(&mut self, c: Candidate, slots: usize) {
        if c.count != 0 {
            keep_best(&mut self.targets, slots, c, Candidate::hotter_than);
        }
    }
}

/// Keeps the `cap` best items offered to `kept` so far, `better(a, b)` saying whether `a` ranks
/// above `b`. While filling, `kept` is a plain list; once full it is a binary heap with the worst
/// kept item at the root, which a better offer replaces.
fn keep_best<T: Copy>(kept: &mut Vec<T>, cap: usize, item: T, better: impl Fn(&T, &T) -> bool) {
    if kept.len() < cap {
        kept.push(item);
        if kept.len() == cap {
            heapify(kept, &better);
        }
    } else if let Some(root) = kept.first_mut() {
        if better(&item, root) {
            *root = item;
            sift_down(kept, 0, &better);
        }
    }
}

/// Sorts `items` best first, in place, without allocating: a heap sort on the same sift as
/// [`keep_best`] (small code, which matters on a microcontroller more than the constant factor).
fn sort_best_first<T: Copy>(items: &mut [T], better: impl Fn(&T, &T) -> bool) {
    heapify(items, &better);
    for end in (1..items.len()).rev() {
        // The worst remaining item is at the root: move it behind the shrinking heap.
        items.swap(0, end);
        if let Some(heap) = items.get_mut(..end) {
            sift_down(heap, 0, &better);
        }
    }
}

/// Arranges `heap` with the worst item at the root.
fn heapify<T: Copy>(heap: &mut [T], better: &impl Fn(&T, &T) -> bool) {
    for i in (0..heap.len() / 2).rev() {
        sift_down(heap, i, better);
    }
}

/// Moves the item at `i` down until no child ranks below it (`better(parent, child)` holds).
fn sift_down<T: Copy>(heap: &mut [T], mut i: usize, better: &impl Fn(&T, &T) -> bool) {
    loop {
        let mut worst = i;
        for child in [2 * i + 1, 2 * i + 2] {
            if let (Some(c), Some(w)) = (heap.get(child), heap.get(worst)) {
                if better(w, c) {
                    worst = child;
                }
            }
        }
        if worst == i {
            return;
        }
        heap.swap(i, worst);
        i = worst;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_hottest_with_ties_to_the_lower_id() {
        let mut p = HitCount::new(3);
        let mut counts = [0, 5, 2, 5, 0, 2, 9, 1];
        p.select_targets(&mut counts, Candidates::All, 3);
        let got: Vec<_> = p.targets.iter().map(|t| (t.expert, t.count)).collect();
        assert_eq!(got, [(6, 9), (1, 5), (3, 5)]);
        p.select_targets(&mut counts, Candidates::All, 5);
        let got: Vec<_> = p.targets.iter().map(|t| t.expert).collect();
        assert_eq!(got, [6, 1, 3, 2, 5]);
        // From ids, in any order and repeated: the same targets.
        p.select_targets(&mut counts, Candidates::Ids(&[5, 3, 5, 9, 1, 6, 2, 3]), 3);
        let got: Vec<_> = p.targets.iter().map(|t| t.expert).collect();
        assert_eq!(got, [6, 1, 3]);
        p.select_targets(&mut counts, Candidates::All, 0);
        assert!(p.targets.is_empty());
        p.select_targets(&mut [0, 0, 1], Candidates::All, 8);
        assert_eq!(p.targets.len(), 1);
    }
}
