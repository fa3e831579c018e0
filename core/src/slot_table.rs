//! The slot table of one pool: per expert one `u32` word, per slot the `u16` expert it holds, and
//! every sentinel and flag bit those words carry. The pool and the policies both read and change
//! the table; this module is the one place that says what its bits mean.
//!
//! # The per-expert word
//! Its meaning depends on the phase of the pool call that is running. Each phase starts from the
//! resting meaning and restores it before the call returns; nothing else reads the word meanwhile.
//!
//! | phase | meaning of the word | bit 31 |
//! |---|---|---|
//! | resting (between pool calls) | the expert's slot, or [`NOT_RESIDENT`] | clear (slots are 16-bit), set only in [`NOT_RESIDENT`] |
//! | interval refresh | the step's hit count ([`COUNT_MASK`]) with [`RESIDENT`], [`SEEN`] and [`TARGET`] | [`TARGET`] |
//! | demand step | resting, except experts admitted in this step: [`admitted`]`(slot)` | [`ADMITTED`] |
//! | serve | resting, except residents copied in for the planned step: slot with [`COPIED`] | [`COPIED`] |
//!
//! # The slot table
//! Per slot: the expert it holds, or [`EMPTY_SLOT`]. It is the truth about residency in every
//! phase; the resting per-expert words are rebuilt from it after a refresh.

use alloc::vec;
use alloc::vec::Vec;

use crate::count::CountBanks;

/// Slot-table entry of a slot that holds no expert (experts are numbered below it).
pub(crate) const EMPTY_SLOT: u16 = u16::MAX;

/// The most experts one pool indexes (ids are 16-bit, one value marks an empty slot). Slots never
/// outnumber experts, so it bounds the slot count too.
pub const MAX_EXPERTS: usize = EMPTY_SLOT as usize;

/// Resting per-expert word of an expert that is not resident (every bit set: no slot reaches it).
pub(crate) const NOT_RESIDENT: u32 = u32::MAX;

/// Interval refresh, bit 31: the expert is a target of this refresh (set by the policy).
pub(crate) const TARGET: u32 = 1 << 31;
/// Interval refresh, bit 30: the expert is resident (set by the pool before the policy runs).
pub(crate) const RESIDENT: u32 = 1 << 30;
/// Interval refresh, bit 29: the expert was already offered as a candidate (set by the policy).
pub(crate) const SEEN: u32 = 1 << 29;
/// Interval refresh: the hit count, below every flag bit.
pub(crate) const COUNT_MASK: u32 = SEEN - 1;

/// Demand step, bit 31: the expert was admitted in this step into slot `word & !ADMITTED` (its
/// copy is not committed yet). Reset to [`NOT_RESIDENT`] before the step returns.
#[cfg(feature = "demand")]
pub(crate) const ADMITTED: u32 = 1 << 31;

/// Serve, bit 31: on a resident's slot word, the expert was copied in for the step being served
/// (by its refresh or a demand admission), so each of its ids is a miss served by copy.
pub(crate) const COPIED: u32 = 1 << 31;

// A step's largest hit count stays clear of every flag bit a per-expert word carries.
const _: () = assert!(COUNT_MASK & (TARGET | RESIDENT | SEEN | COPIED) == 0);

/// Demand-step word of an expert admitted into `slot` (a slot index, below `u16::MAX`).
#[cfg(feature = "demand")]
#[inline]
pub(crate) const fn admitted(slot: usize) -> u32 {
    ADMITTED | slot as u32
}

/// The slot a demand-step word names: the resting slot of a resident, or the slot an expert was
/// admitted into. Not meaningful for [`NOT_RESIDENT`].
#[cfg(feature = "demand")]
#[inline]
pub(crate) const fn slot_in(word: u32) -> usize {
    (word & !ADMITTED) as usize
}

/// How [`SlotTable::serve_id`] classified one routing id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// The id is at or past the expert count.
    Invalid,
    /// A miss: the expert is not resident, its pair is computed in slow memory.
    InPlace,
    /// A miss: the expert was copied in for this step and serves it from its slot.
    ByCopy,
    /// The expert was resident before the step.
    Hit,
}

/// Per expert its word, per slot its expert. See the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct SlotTable {
    expert_slot: Vec<u32>,
    slot_expert: Vec<u16>,
}

impl SlotTable {
    /// `experts` experts, none resident, and `slots` empty slots.
    pub(crate) fn new(experts: usize, slots: usize) -> Self {
        Self { expert_slot: vec![NOT_RESIDENT; experts], slot_expert: vec![EMPTY_SLOT; slots] }
    }

    /// Number of experts.
    #[inline]
    pub(crate) fn experts(&self) -> usize {
        self.expert_slot.len()
    }

    /// Number of slots.
    #[inline]
    pub(crate) fn slots(&self) -> usize {
        self.slot_expert.len()
    }

    /// The slot `expert` is resident in, if any (resting phase).
    pub(crate) fn slot_of(&self, expert: usize) -> Option<usize> {
        match self.expert_slot.get(expert) {
            Some(&slot) if slot != NOT_RESIDENT => Some(slot as usize),
            _ => None,
        }
    }

    /// The expert resident in `slot`, if any.
    pub(crate) fn expert_in(&self, slot: usize) -> Option<usize> {
        match self.slot_expert.get(slot) {
            Some(&e) if e != EMPTY_SLOT => Some(usize::from(e)),
            _ => None,
        }
    }

    /// `(slot, expert)` of every occupied slot, in slot order.
    pub(crate) fn residents(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.slot_expert.iter().enumerate().filter(|(_, &e)| e != EMPTY_SLOT).map(|(s, &e)| (s, usize::from(e)))
    }

    /// Per expert, in order: whether it is resident (resting phase).
    pub(crate) fn residency(&self) -> impl Iterator<Item = bool> + '_ {
        self.expert_slot.iter().map(|&slot| slot != NOT_RESIDENT)
    }

    /// Resizes to `slots` slots: the experts in slots `slots..` stop being resident, new slots are
    /// empty. Returns how many experts stopped being resident.
    pub(crate) fn set_slots(&mut self, slots: usize) -> usize {
        let mut demoted = 0usize;
        for &expert in self.slot_expert.get(slots..).unwrap_or(&[]) {
            if let Some(word) = self.expert_slot.get_mut(usize::from(expert)) {
                *word = NOT_RESIDENT;
                demoted = demoted.saturating_add(1);
            }
        }
        self.slot_expert.resize(slots, EMPTY_SLOT);
        demoted
    }

    /// Makes `expert` resident in `slot` (both in range, the slot empty, the expert not resident).
    pub(crate) fn place(&mut self, expert: u16, slot: u16) {
        if let (Some(s), Some(e)) =
            (self.slot_expert.get_mut(usize::from(slot)), self.expert_slot.get_mut(usize::from(expert)))
        {
            *s = expert;
            *e = u32::from(slot);
        }
    }

    /// Empties `slot` and makes its expert not resident; returns that expert, or `None` when the
    /// slot is out of range or already empty (nothing changes).
    pub(crate) fn vacate(&mut self, slot: usize) -> Option<usize> {
        let entry = self.slot_expert.get_mut(slot)?;
        let expert = usize::from(*entry);
        let word = self.expert_slot.get_mut(expert)?;
        *entry = EMPTY_SLOT;
        *word = NOT_RESIDENT;
        Some(expert)
    }

    /// The per-expert words and the slot table, for a policy to work on in its phase.
    #[inline]
    pub(crate) fn parts_mut(&mut self) -> (&mut [u32], &mut [u16]) {
        (&mut self.expert_slot, &mut self.slot_expert)
    }

    /// Enters the interval-refresh phase: the words become `ids`' hit counts, with [`RESIDENT`]
    /// on every resident. With `sparse`, only the words of `ids` and of the residents are
    /// written (the others keep [`NOT_RESIDENT`] and must not be read as counts), so a short
    /// step's cost follows its ids and the slots rather than the expert count.
    ///
    /// A long dense step counts in `banks` when they cover the experts (see [`crate::count`]).
    ///
    /// `ids` holds at most [`COUNT_MASK`] ids.
    #[inline]
    pub(crate) fn begin_counts(&mut self, ids: &[u32], sparse: bool, banks: &mut CountBanks) {
        if !sparse && banks.count(ids, &mut self.expert_slot) {
            self.mark_residents(true);
            return;
        }
        if sparse {
            for &id in ids {
                if let Some(word) = self.expert_slot.get_mut(id as usize) {
                    *word = 0;
                }
            }
        } else {
            self.expert_slot.fill(0);
        }
        self.mark_residents(false);
        for &id in ids {
            if let Some(count) = self.expert_slot.get_mut(id as usize) {
                #[allow(
                    clippy::arithmetic_side_effects,
                    reason = "at most COUNT_MASK ids (checked by the pool), below the flag bits"
                )]
                let counted = *count + 1;
                *count = counted;
            }
        }
    }

    /// Sets [`RESIDENT`] on the word of every resident: added to the count it holds with
    /// `counted`, otherwise in place of its resting slot (a count of zero).
    fn mark_residents(&mut self, counted: bool) {
        for &expert in &self.slot_expert {
            if let Some(word) = self.expert_slot.get_mut(usize::from(expert)) {
                *word = if counted { *word | RESIDENT } else { RESIDENT };
            }
        }
    }

    /// Leaves the interval-refresh phase begun by [`SlotTable::begin_counts`] with the same `ids`
    /// and `sparse`: every word rests again, rebuilt from the slot table. `demoted` names the
    /// experts the refresh demoted (their words were written as residents).
    #[inline]
    pub(crate) fn end_counts(&mut self, ids: &[u32], demoted: impl Iterator<Item = u16>, sparse: bool) {
        if sparse {
            for id in ids.iter().copied().chain(demoted.map(u32::from)) {
                if let Some(word) = self.expert_slot.get_mut(id as usize) {
                    *word = NOT_RESIDENT;
                }
            }
        } else {
            self.expert_slot.fill(NOT_RESIDENT);
        }
        for (slot, &expert) in self.slot_expert.iter().enumerate() {
            if let Some(word) = self.expert_slot.get_mut(usize::from(expert)) {
                *word = slot as u32;
            }
        }
    }

    /// Enters (`on`) or leaves the serve phase: sets or clears [`COPIED`] on the words of the
    /// `copied` experts that are resident.
    pub(crate) fn mark_copied(&mut self, copied: &[u16], on: bool) {
        for &expert in copied {
            if let Some(word) = self.expert_slot.get_mut(usize::from(expert)).filter(|w| **w != NOT_RESIDENT) {
                if on {
                    *word |= COPIED;
                } else {
                    *word &= !COPIED;
                }
            }
        }
    }

    /// Serve phase: classifies one id. A marked expert stays marked for the whole step: every id
    /// of an expert copied in for the step is served by copy.
    #[inline]
    pub(crate) fn serve_id(&self, id: u32) -> Served {
        match self.expert_slot.get(id as usize) {
            None => Served::Invalid,
            Some(&NOT_RESIDENT) => Served::InPlace,
            Some(word) if word & COPIED != 0 => Served::ByCopy,
            Some(_) => Served::Hit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_marks_return_to_rest() {
        for sparse in [false, true] {
            let mut t = SlotTable::new(6, 2);
            t.place(4, 1);
            t.begin_counts(&[4, 2, 2], sparse, &mut CountBanks::default());
            let (words, _) = t.parts_mut();
            assert_eq!((words[2], words[4]), (2, RESIDENT | 1));
            t.end_counts(&[4, 2, 2], core::iter::empty(), sparse);
            assert_eq!(t.residents().collect::<Vec<_>>(), [(1, 4)]);
            assert_eq!(t.residency().collect::<Vec<_>>(), [false, false, false, false, true, false]);
        }
        let mut t = SlotTable::new(3, 2);
        t.place(2, 0);
        t.place(0, 1);
        t.mark_copied(&[2, 1], true);
        assert_eq!(
            [t.serve_id(2), t.serve_id(2), t.serve_id(0), t.serve_id(1), t.serve_id(7)],
            [Served::ByCopy, Served::ByCopy, Served::Hit, Served::InPlace, Served::Invalid]
        );
        t.mark_copied(&[2, 1], false);
        assert_eq!(t.serve_id(2), Served::Hit);
        assert_eq!(t.slot_of(2), Some(0));
        #[cfg(feature = "demand")]
        assert_eq!(slot_in(admitted(5)), 5);
        assert_eq!(t.set_slots(0), 2);
        assert_eq!(t.slot_of(2), None);
    }
}
