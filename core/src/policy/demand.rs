//! Demand caching: a step's ids are served in order; a resident id is a hit and updates the
//! policy's state; a non-resident id is a miss and is admitted at once (one promotion), evicting
//! the policy's victim when every slot is taken (one demotion), so later ids of the same step hit
//! it. Victims (ties always to the lower expert id):
//!
//! - LRU: the least recently used; residents never used since a warm start count as used at
//!   time 0.
//! - LFU: the least frequently used, counting every access to the expert since the pool was built
//!   (resident or not).
//! - LRU-2 (O'Neil, O'Neil and Weikum, 1993): the resident whose second-to-last use is oldest;
//!   residents used once since admission count as oldest, ordered among themselves by last use.
//!   Resists scans, which plain LRU does not. History is kept while the expert is resident.
//! - Belady's offline optimum: the resident whose next use in this layer's id stream is farthest
//!   (never used again is farthest). Needs the stream in advance
//!   ([`crate::ExpertPool::load_future`]); for evaluation only.
//!
//! Admissions of one step are promotions of that step's plan: an expert admitted and then evicted
//! within the same step is dropped from the plan (its slot goes to the later admission), so the
//! plan holds one promotion per slot and never copies twice.

use alloc::vec;
use alloc::vec::Vec;

use crate::plan::{MigrationPlan, Promotion};
use crate::pool::{ServeCounts, EMPTY_SLOT};

/// Which demand policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DemandKind {
    Lru,
    Lfu,
    Lru2,
    Belady,
}

/// The last two uses of a slot's occupant (clock ticks; 0 = never).
#[derive(Debug, Clone, Copy, Default)]
struct Uses {
    last: u64,
    prev: u64,
}

/// Position in the stream meaning "never again".
const NEVER: u32 = u32::MAX;

/// Belady's knowledge of the future: for every position of the layer's id stream, the position
/// of the next id naming the same expert.
#[derive(Debug, Clone, Default)]
struct Future {
    next: Vec<u32>,
    /// Per expert: the position of its next use from the cursor on.
    next_use: Vec<u32>,
    cursor: usize,
}

/// A demand cache's state: per slot use history, per expert frequencies (LFU) or next uses
/// (Belady), and the step's admissions.
#[derive(Debug, Clone)]
pub(crate) struct DemandCache {
    kind: DemandKind,
    clock: u64,
    uses: Vec<Uses>,
    /// Per slot: the expert admitted into it during the current step, or `EMPTY_SLOT`.
    admitted: Vec<u16>,
    frequency: Vec<u32>,
    future: Future,
}

/// What an admission step reads and changes in the pool.
pub(crate) struct AdmitState<'a> {
    /// Per expert: its slot while resident, the pool's not-resident marker otherwise.
    pub expert_slot: &'a mut [u32],
    /// Per slot: the expert it holds, or `EMPTY_SLOT`.
    pub slot_expert: &'a mut [u16],
    /// The pool's marker of a non-resident expert.
    pub not_resident: u32,
}

/// Flag on a per-expert word during a step: admitted into slot `word & !ADMITTED`.
const ADMITTED: u32 = 1 << 31;

impl DemandCache {
    pub(crate) fn new(kind: DemandKind, experts: usize, slots: usize) -> Self {
        Self {
            kind,
            clock: 0,
            uses: vec![Uses::default(); slots],
            admitted: vec![EMPTY_SLOT; slots],
            frequency: if kind == DemandKind::Lfu { vec![0; experts] } else { Vec::new() },
            future: Future::default(),
        }
    }

    /// Whether this is Belady's policy.
    pub(crate) fn is_belady(&self) -> bool {
        self.kind == DemandKind::Belady
    }

    /// Gives Belady the layer's whole id stream, in serving order.
    pub(crate) fn load_future(&mut self, experts: usize, stream: &[u32]) {
        let mut next_use = vec![NEVER; experts];
        let mut next = vec![NEVER; stream.len()];
        for (position, &id) in stream.iter().enumerate().rev() {
            if let (Some(slot), Some(n)) = (next_use.get_mut(id as usize), next.get_mut(position)) {
                *n = *slot;
                // Streams longer than u32::MAX positions are cut there by the pool.
                *slot = position as u32;
            }
        }
        self.future = Future { next, next_use, cursor: 0 };
    }

    /// Serves `ids` in order, admitting misses; fills `plan` and returns the step's counts and
    /// the number of demotions.
    pub(crate) fn admit(
        &mut self,
        state: AdmitState<'_>,
        ids: &[u32],
        plan: &mut MigrationPlan,
    ) -> (ServeCounts, usize) {
        let AdmitState { expert_slot, slot_expert, not_resident } = state;
        let mut counts = ServeCounts::default();
        let mut demotions = 0;
        // Slots holding an expert, committed or admitted: while every slot does, no search for a
        // free one is needed.
        let mut occupied = slot_expert.iter().filter(|&&e| e != EMPTY_SLOT).count();
        for &id in ids {
            let position = self.future.cursor;
            self.future.cursor += 1;
            let expert = id as usize;
            let Some(&word) = expert_slot.get(expert) else {
                counts.invalid += 1;
                continue;
            };
            self.clock += 1;
            if let Some(f) = self.frequency.get_mut(expert) {
                *f = f.saturating_add(1);
            }
            let next = self.future.next.get(position).copied().unwrap_or(NEVER);
            if let Some(n) = self.future.next_use.get_mut(expert) {
                *n = next;
            }
            if word != not_resident {
                counts.hits += 1;
                if let Some(u) = self.uses.get_mut((word & !ADMITTED) as usize) {
                    *u = Uses { prev: u.last, last: self.clock };
                }
                continue;
            }
            counts.misses += 1;
            let free = if occupied < slot_expert.len() { self.free_slot(slot_expert) } else { None };
            let Some(slot) = free.or_else(|| self.victim(slot_expert)) else {
                continue; // no slot at all: served from slow memory
            };
            occupied += usize::from(free.is_some());
            // Evict the slot's occupant: a committed resident is demoted, an expert admitted
            // earlier in this step loses its place in the plan.
            let admitted_before = self.admitted.get(slot).copied().unwrap_or(EMPTY_SLOT);
            let committed = slot_expert.get(slot).copied().unwrap_or(EMPTY_SLOT);
            let evicted = if admitted_before != EMPTY_SLOT { admitted_before } else { committed };
            if let Some(w) = expert_slot.get_mut(usize::from(evicted)) {
                *w = not_resident;
            }
            if admitted_before == EMPTY_SLOT && committed != EMPTY_SLOT {
                if let Some(s) = slot_expert.get_mut(slot) {
                    *s = EMPTY_SLOT;
                }
                demotions += 1;
            }
            // slot < slots <= u16::MAX and expert < experts <= u16::MAX, checked at build time.
            let promotion = Promotion {
                expert: expert as u16,
                slot: slot as u16,
                evicted: (committed != EMPTY_SLOT).then_some(committed),
            };
            match plan.promotions_mut().iter_mut().find(|p| usize::from(p.slot) == slot) {
                Some(p) => p.expert = promotion.expert,
                None => plan.push(promotion),
            }
            if let Some(a) = self.admitted.get_mut(slot) {
                *a = expert as u16;
            }
            if let Some(u) = self.uses.get_mut(slot) {
                *u = Uses { prev: 0, last: self.clock };
            }
            if let Some(w) = expert_slot.get_mut(expert) {
                *w = ADMITTED | slot as u32;
            }
        }
        // Admitted experts become resident only when their copy is committed.
        for a in self.admitted.iter_mut() {
            if let Some(w) = expert_slot.get_mut(usize::from(*a)) {
                *w = not_resident;
            }
            *a = EMPTY_SLOT;
        }
        (counts, demotions)
    }

    /// The first slot holding no expert, committed or admitted.
    fn free_slot(&self, slot_expert: &[u16]) -> Option<usize> {
        slot_expert.iter().zip(&self.admitted).position(|(&c, &a)| c == EMPTY_SLOT && a == EMPTY_SLOT)
    }

    /// The slot of the policy's victim among every occupied slot.
    fn victim(&self, slot_expert: &[u16]) -> Option<usize> {
        let occupant = |slot: usize| {
            let a = self.admitted.get(slot).copied().unwrap_or(EMPTY_SLOT);
            if a != EMPTY_SLOT {
                a
            } else {
                slot_expert.get(slot).copied().unwrap_or(EMPTY_SLOT)
            }
        };
        (0..slot_expert.len()).min_by_key(|&slot| {
            let expert = occupant(slot);
            let uses = self.uses.get(slot).copied().unwrap_or_default();
            let key = match self.kind {
                DemandKind::Lru => (uses.last, 0),
                DemandKind::Lfu => (u64::from(self.frequency.get(usize::from(expert)).copied().unwrap_or(0)), 0),
                DemandKind::Lru2 => (uses.prev, uses.last),
                DemandKind::Belady => {
                    let next = self.future.next_use.get(usize::from(expert)).copied().unwrap_or(NEVER);
                    (u64::from(NEVER - next), 0)
                }
            };
            (key, expert)
        })
    }
}
