//! Prefetch into a demand cache, and its staging slots.
//!
//! Without staging slots a guess may take the slot of the policy's demotion candidate when it
//! outranks it. With `n` staging slots ([`crate::PoolConfig::staging`]) the policy's own
//! residents keep at most `slots − n` slots, and a guess goes only into a free slot or a staging
//! slot: it never takes the slot of one of the policy's residents. A staged expert the next step
//! uses is a hit and joins the policy's residents; when they then number more than their share,
//! the one the policy ranks lowest becomes a staging slot's occupant in its place, without a copy
//! (it stays resident until a later guess or miss takes its slot).

use super::{DemandCache, Uses};
use crate::plan::{MigrationPlan, Promotion};
use crate::policy::AdmitState;
use crate::slot_table::{admitted, EMPTY_SLOT, NOT_RESIDENT};

impl DemandCache {
    /// Holds `staging` of the slots for prefetch from the next step on (0: none).
    pub(crate) fn set_staging(&mut self, staging: usize) {
        self.staging = staging;
    }

    /// Slots the policy's own residents may hold: the slots less the staging slots.
    pub(super) fn share(&self) -> usize {
        self.uses.len().saturating_sub(self.staging)
    }

    /// The unpinned staging slot whose occupant the policy ranks lowest.
    pub(super) fn coldest_staged(&self, slot_expert: &[u16]) -> Option<usize> {
        let mut candidates = self.unpinned_in(slot_expert, true);
        let first = candidates.next()?;
        let best = candidates.fold(first, |best, c| if c.before(&best) { c } else { best });
        Some(usize::from(best.slot))
    }

    /// With `regular` slots holding the policy's residents (committed or admitted this step),
    /// moves the lowest ranked of them to staging slots until they fit the policy's share. Labels
    /// only: nothing is copied or demoted.
    pub(super) fn rebalance(&mut self, slot_expert: &[u16], mut regular: usize) {
        if self.staging == 0 {
            return;
        }
        while regular > self.share() {
            let occupant = |slot: usize| {
                let committed = slot_expert.get(slot).copied().unwrap_or(EMPTY_SLOT);
                let admitted = self.admitted.get(slot).copied().unwrap_or(EMPTY_SLOT);
                if committed == EMPTY_SLOT {
                    admitted
                } else {
                    committed
                }
            };
            let lowest = (0..self.uses.len())
                .filter(|&slot| occupant(slot) != EMPTY_SLOT && !self.staged.get(slot).copied().unwrap_or(true))
                .filter_map(|slot| Some((self.key(self.uses.get(slot)?, occupant(slot)), occupant(slot), slot)))
                .min();
            let Some((_, _, slot)) = lowest else { return };
            if let Some(staged) = self.staged.get_mut(slot) {
                *staged = true;
            }
            regular = regular.saturating_sub(1);
        }
    }

    /// Prefetch (see [`crate::ExpertPool::prefetch`]): until `limit` are placed, each expert of
    /// `experts` that is neither resident nor already placed goes into a free slot; else, with
    /// staging slots, into the staging slot whose occupant ranks lowest (never one of the
    /// policy's own residents), and without, into the slot of the policy's demotion candidate
    /// when `outranked(candidate, expert)`. Each prefetched slot is pinned for the next step and
    /// then ranks as never used, so a wrong guess is the first to go. Returns the number of
    /// demotions.
    pub(crate) fn prefetch(
        &mut self,
        state: AdmitState<'_>,
        experts: &[u16],
        limit: usize,
        outranked: &dyn Fn(usize, usize) -> bool,
        plan: &mut MigrationPlan,
    ) -> usize {
        let AdmitState { expert_slot, slot_expert } = state;
        // A slot prefetched for the step just served that the step did not use (never used since
        // its copy) is pinned no longer: only what that step used or admitted stays.
        for u in self.uses.iter_mut().filter(|u| u.step == self.step && u.last == 0) {
            u.step = u64::MAX;
        }
        let mut demotions = 0usize;
        for &expert in experts {
            if plan.len() >= limit {
                break;
            }
            if expert_slot.get(usize::from(expert)) != Some(&NOT_RESIDENT) {
                continue; // out of range, resident or placed by this call
            }
            let staging = self.staging > 0;
            let candidate = if staging { self.coldest_staged(slot_expert) } else { self.coldest(slot_expert) };
            let Some(slot) = self.free_slot(slot_expert).or(candidate) else {
                break; // every slot this may take is pinned
            };
            let demoted = slot_expert.get(slot).copied().filter(|&e| e != EMPTY_SLOT);
            if let Some(victim) = demoted {
                if !staging && !outranked(usize::from(victim), usize::from(expert)) {
                    continue; // the candidate outranks this guess
                }
                if let Some(w) = expert_slot.get_mut(usize::from(victim)) {
                    *w = NOT_RESIDENT;
                }
                if let Some(s) = slot_expert.get_mut(slot) {
                    *s = EMPTY_SLOT;
                }
                demotions = demotions.saturating_add(1);
            }
            // slot < slots <= u16::MAX, checked at build time.
            plan.push(Promotion { expert, slot: slot as u16, demoted });
            if let Some(a) = self.admitted.get_mut(slot) {
                *a = expert;
            }
            if let Some(u) = self.uses.get_mut(slot) {
                *u = Uses { prev: 0, last: 0, step: self.step.saturating_add(1) };
            }
            if let Some(staged) = self.staged.get_mut(slot) {
                *staged = staging;
            }
            if let Some(w) = expert_slot.get_mut(usize::from(expert)) {
                *w = admitted(slot);
            }
        }
        for a in self.admitted.iter_mut() {
            if let Some(w) = expert_slot.get_mut(usize::from(*a)) {
                *w = NOT_RESIDENT;
            }
            *a = EMPTY_SLOT;
        }
        demotions
    }
}
