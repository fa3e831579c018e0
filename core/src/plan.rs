//! Migration plans: the promotions a refresh decided, for `migrate` to copy and commit.

use alloc::vec::Vec;

use crate::count::{CountBanks, EXPERTS_PER_SLOT};
use crate::slot_table::MAX_EXPERTS;

/// One promotion: copy `expert`'s bytes into `slot`, then mark it resident there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Promotion {
    /// The expert to make resident.
    pub expert: u16,
    /// The slot to copy it into (free when the plan was made).
    pub slot: u16,
    /// The expert the refresh demoted from this slot to make room, if any. Demotion copies
    /// nothing: the slot was freed when the plan was made.
    pub demoted: Option<u16>,
}

/// The promotions of one layer's refresh, in the order they should be copied (hottest first).
///
/// Build one per layer with [`MigrationPlan::new`] and reuse it: a refresh clears and refills it,
/// allocating only when its capacity is below the pool's slot count (so at most once per pool).
///
/// A plan also lends the refresh its scratch for counting long steps (banks of counters that
/// break the chain of increments of a hot expert; see [`MigrationPlan::new`]), so pools keep
/// only their 4 bytes per expert and one plan's scratch serves every pool it plans for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigrationPlan {
    layer: usize,
    /// The pool's slot-count generation when the plan was made (see [`crate::ExpertPool::set_slots`]).
    slots_generation: u32,
    promotions: Vec<Promotion>,
    /// Counting scratch for the refresh; zero between refreshes.
    banks: CountBanks,
}

impl MigrationPlan {
    /// An empty plan with room for `capacity` promotions (the pool's slot count avoids any later
    /// allocation). A plan holds at most one promotion per slot and no pool has more than
    /// [`crate::MAX_EXPERTS`] slots, so a larger `capacity` is clamped to that.
    ///
    /// The plan also holds counting banks for pools of up to four experts per slot of `capacity`
    /// (32 bytes per slot): a refresh of a long step counts faster with them. Pools with more
    /// experts count in one pass, with the same result; [`MigrationPlan::with_experts`] sizes the
    /// banks for them.
    pub fn new(capacity: usize) -> Self {
        Self::with_experts(capacity, capacity.saturating_mul(EXPERTS_PER_SLOT))
    }

    /// As [`MigrationPlan::new`], with counting banks for pools of up to `experts` experts
    /// (clamped to [`crate::MAX_EXPERTS`]; 8 bytes per expert).
    pub fn with_experts(capacity: usize, experts: usize) -> Self {
        Self {
            layer: 0,
            slots_generation: 0,
            promotions: Vec::with_capacity(capacity.min(MAX_EXPERTS)),
            banks: CountBanks::new(experts.min(MAX_EXPERTS)),
        }
    }

    /// The layer the plan was made for.
    pub const fn layer(&self) -> usize {
        self.layer
    }

    /// The pool's slot-count generation when the plan was made: plans from before a slot-count change
    /// are refused by [`crate::ExpertPool::check_planned`].
    pub const fn slots_generation(&self) -> u32 {
        self.slots_generation
    }

    /// The promotions, in copy order.
    pub fn promotions(&self) -> &[Promotion] {
        &self.promotions
    }

    /// Whether nothing is to be copied.
    pub fn is_empty(&self) -> bool {
        self.promotions.is_empty()
    }

    /// Number of promotions.
    pub fn len(&self) -> usize {
        self.promotions.len()
    }

    /// Starts a new plan for `layer` at slot-count generation `slots_generation`, keeping the
    /// storage and making room for `capacity` promotions (clamped as in [`MigrationPlan::new`]).
    pub(crate) fn reset(&mut self, layer: usize, slots_generation: u32, capacity: usize) {
        self.layer = layer;
        self.slots_generation = slots_generation;
        self.promotions.clear();
        self.promotions.reserve(capacity.min(MAX_EXPERTS));
    }

    pub(crate) fn push(&mut self, promotion: Promotion) {
        self.promotions.push(promotion);
    }

    /// The counting scratch, for the refresh that fills this plan.
    pub(crate) fn banks(&mut self) -> &mut CountBanks {
        &mut self.banks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_past_the_slot_limit_are_clamped() {
        let mut plan = MigrationPlan::with_experts(usize::MAX, 4);
        assert!(plan.is_empty());
        assert!(plan.promotions.capacity() >= MAX_EXPERTS);
        plan.reset(3, 1, usize::MAX);
        assert_eq!((plan.layer(), plan.slots_generation(), plan.len()), (3, 1, 0));
        plan.push(Promotion { expert: 1, slot: 0, demoted: None });
        plan.reset(0, 0, usize::MAX - 1);
        assert!(plan.is_empty());
    }
}
